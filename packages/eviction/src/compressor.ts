import {
  type EvictionSelection,
  InvalidArgumentError,
  InvalidPlanError,
  SELECTION_GROUP_FIELDS,
  SELECTION_ROW_FIELDS,
  type SlotMoveList,
} from '@kvcompress/core';
import type { MetricStore, Scorer } from '@kvcompress/metrics';
import { kvCompressScorer } from '@kvcompress/metrics';
import type { CompactionResult, PageAllocator } from '@kvcompress/page-allocator';
import { type CompressionConfig, type ResolvedCompressionConfig, resolveCompressionConfig } from './budget.ts';
import { type CheapestBlocksPlan, cheapestBlocksShape } from './cheapest-blocks.ts';
import { CompressionContext } from './context.ts';
import type { EvictionPolicy } from './policy.ts';

/** What one compression of one sequence did. */
export interface CompressionOutcome extends CompactionResult {
  readonly sequence: number;
  readonly blocksBefore: number;
  readonly blocksAfter: number;
  readonly targetBlocks: number;
  /** blocksAfter <= targetBlocks. */
  readonly budgetMet: boolean;
  /** Milliseconds in policy.plan() and in the allocator's compaction. */
  readonly planMs: number;
  readonly compactMs: number;
}

export interface CompressorOptions {
  readonly allocator: PageAllocator;
  readonly metrics: MetricStore;
  readonly policy: EvictionPolicy;
  readonly config: CompressionConfig;
  /** The policy's scorer, when the caller already made it (one per policy). Default: a new one. */
  readonly scorer?: Scorer;
  /**
   * Planner scratch to share with other compressors of the same allocator and metric store
   * (an engine with one compressor per policy: one compression runs at a time). Default: its own.
   */
  readonly context?: CompressionContext;
}

/**
 * Runs a policy against one allocator: plan -> compaction -> metric moves. The caller
 * executes the returned moves on its Backend's K/V (positions and metrics are done here).
 * One per policy an engine runs; all planning scratch is allocated once (and may be shared).
 */
export class Compressor {
  readonly allocator: PageAllocator;
  readonly metrics: MetricStore;
  readonly policy: EvictionPolicy;
  readonly config: ResolvedCompressionConfig;
  readonly scorer: Scorer;
  readonly context: CompressionContext;

  constructor(options: CompressorOptions) {
    this.allocator = options.allocator;
    this.metrics = options.metrics;
    this.policy = options.policy;
    this.config = resolveCompressionConfig(options.config);
    this.scorer = options.scorer ?? options.policy.createScorer?.() ?? kvCompressScorer();
    const shared = options.context;
    if (shared !== undefined && (shared.allocator !== options.allocator || shared.metrics !== options.metrics.values)) {
      throw new InvalidArgumentError('A shared CompressionContext must be of the same allocator and metric store as the compressor.');
    }
    this.context = shared ?? new CompressionContext(options.allocator, options.metrics.values);
    this.#newLengths = new Int32Array(options.allocator.headsPerSequence);
  }

  /** Blocks this sequence may hold under the budget (default: the compressor's) right now. */
  targetBlocks(sequence: number, config: ResolvedCompressionConfig = this.config): number {
    this.context.begin(sequence, config);
    return this.context.targetBlocks;
  }

  /**
   * Compresses one sequence to its budget (`config`: a per-sequence budget and window; by
   * default the compressor's). `moves` is cleared, then receives the K/V copies the Backend
   * must execute before the sequence's next attention.
   */
  compress(sequence: number, moves: SlotMoveList, config: ResolvedCompressionConfig = this.config): CompressionOutcome {
    this.#checkMoves(moves);
    const ctx = this.context;
    const t0 = performance.now();
    ctx.begin(sequence, config);
    const blocksBefore = this.allocator.sequenceBlocks(sequence);
    this.policy.plan(ctx);
    return this.#compact(sequence, moves, blocksBefore, t0);
  }

  /**
   * The policy's block rule when it declares one (KV-Compress, Ada-KV): then
   * `addSelection` / `compressSelected` can replace `compress` with a backend's
   * `selectEvictions`, with the same outcome.
   */
  get cheapestBlocks(): CheapestBlocksPlan | null {
    return this.policy.cheapestBlocks ?? null;
  }

  /**
   * Adds one sequence's block selection to `selection`, for `Backend.selectEvictions`: one
   * group per set of competing units with blocks to free, as the policy's `cheapestBlocks`
   * says (metrics are not read). Returns false, adding nothing, when nothing is to be freed.
   */
  addSelection(selection: EvictionSelection, sequence: number, config: ResolvedCompressionConfig = this.config): boolean {
    const spec = this.policy.cheapestBlocks;
    if (spec === undefined) throw new InvalidArgumentError(`Policy "${this.policy.name}" declares no cheapestBlocks plan.`);
    const ctx = this.context;
    const a = this.allocator;
    const B = a.blockSize;
    ctx.begin(sequence, config);
    const { groupUnits, minBlocks } = cheapestBlocksShape(spec, ctx);
    let added = false;
    for (let g = 0; g * groupUnits < ctx.units; g++) {
      const blocks = spec.blocks(ctx, g);
      if (blocks <= 0) continue;
      selection.addGroup(sequence, blocks, ctx.tokens - ctx.protectedWindow, ctx.sinks);
      const end = Math.min(ctx.units, (g + 1) * groupUnits);
      const lengths = a.headLengths;
      const maxBlocks = a.maxBlocksPerHead;
      for (let u = g * groupUnits; u < end; u++) {
        const h = a.unitHeadIndex(sequence, u);
        const len = lengths[h] as number;
        selection.addRow(u, h * maxBlocks, len, B, Math.max(0, Math.ceil(len / B) - minBlocks));
      }
      added = true;
    }
    return added;
  }

  /**
   * Compresses one sequence by the slots a backend's `selectEvictions` chose for it in
   * `selection` (filled by `addSelection` for this sequence and this cache state; a sequence
   * with no group there keeps everything). Otherwise as `compress`.
   */
  compressSelected(
    sequence: number,
    moves: SlotMoveList,
    selection: EvictionSelection,
    config: ResolvedCompressionConfig = this.config,
  ): CompressionOutcome {
    this.#checkMoves(moves);
    const ctx = this.context;
    const B = this.allocator.blockSize;
    const t0 = performance.now();
    ctx.begin(sequence, config);
    const blocksBefore = this.allocator.sequenceBlocks(sequence);
    for (let g = 0; g < selection.groupCount; g++) {
      const go = g * SELECTION_GROUP_FIELDS;
      if (selection.groups[go] !== sequence) continue;
      const first = selection.groups[go + 1] as number;
      const end = first + (selection.groups[go + 2] as number);
      for (let r = first; r < end; r++) {
        const ro = r * SELECTION_ROW_FIELDS;
        const unit = selection.rows[ro + 1] as number;
        const k = selection.freed(r);
        const evicted = ctx.evictSelected(unit, selection, r);
        // Freeing k blocks evicts the (k - 1) * B + hanging cheapest slots, no more, no less.
        const expected = k > 0 ? (k - 1) * B + (selection.rows[ro + 4] as number) : 0;
        if (evicted !== expected || selection.rows[ro + 3] !== ctx.length(unit)) {
          throw new InvalidPlanError(
            `The device selection evicts ${evicted} slots of unit ${unit} for ${k} blocks (expected ${expected}), or was made for another length.`,
          );
        }
      }
    }
    return this.#compact(sequence, moves, blocksBefore, t0);
  }

  /**
   * Applies to the allocator the compaction a backend ran on the device for this sequence
   * (`Backend.compactEvictions` on `selection`, filled by `addSelection` for this sequence and
   * this cache state; a sequence with no group there keeps everything): each row's head keeps
   * length - e slots, e = (k - 1) * blockSize + hanging for the k blocks it freed, and releases
   * its tail blocks. The same tables, lengths and free blocks as `compressSelected` on the same
   * selection, in O(heads): the slots moved on the device (K, V, the device
   * metrics and positions), so the host copies of the moved positions are stale until
   * downloaded (`PageAllocator.stalePositions`) and the host metric store is not updated (a
   * backend with device metrics is downloaded from before any host planning). The released
   * blocks stay in the heads' tables as their reserved tails: no table entry is read.
   */
  applyDeviceCompaction(
    sequence: number,
    selection: EvictionSelection,
    config: ResolvedCompressionConfig = this.config,
  ): CompressionOutcome {
    const ctx = this.context;
    const a = this.allocator;
    const B = a.blockSize;
    const t0 = performance.now();
    ctx.begin(sequence, config);
    const blocksBefore = a.sequenceBlocks(sequence);
    const newLengths = this.#newLengths;
    newLengths.fill(-1);
    let moves = 0;
    for (let g = 0; g < selection.groupCount; g++) {
      const go = g * SELECTION_GROUP_FIELDS;
      if (selection.groups[go] !== sequence) continue;
      const first = selection.groups[go + 1] as number;
      const end = first + (selection.groups[go + 2] as number);
      for (let r = first; r < end; r++) {
        const ro = r * SELECTION_ROW_FIELDS;
        const unit = selection.rows[ro + 1] as number;
        const len = selection.rows[ro + 3] as number;
        const k = selection.freed(r);
        if (len !== ctx.length(unit) || k < 0 || k > (selection.rows[ro + 5] as number) || newLengths[unit] !== -1) {
          throw new InvalidPlanError(
            `The device compaction frees ${k} blocks of unit ${unit} (length ${len}, now ${ctx.length(unit)}), or was made for another cache state.`,
          );
        }
        // Freeing k blocks evicts the (k - 1) * B + hanging cheapest slots: k whole blocks go.
        if (k > 0) newLengths[unit] = len - ((k - 1) * B + (selection.rows[ro + 4] as number));
        moves += selection.rowMoves[r] as number;
      }
    }
    const t1 = performance.now();
    const result = a.compactedOnDevice(sequence, newLengths, moves);
    // No shared blocks on this path (compactedOnDevice checks): every released entry freed one.
    return this.#outcome(result, sequence, blocksBefore, t0, t1, blocksBefore - result.releasedBlocks);
  }

  /** Scratch of applyDeviceCompaction: new length per unit, -1 = unchanged. */
  readonly #newLengths: Int32Array;

  #checkMoves(moves: SlotMoveList): void {
    if (moves.capacity < this.allocator.maxSlotsPerSequence) {
      throw new InvalidArgumentError('The move list is too small; create it with allocator.createMoveList().');
    }
  }

  /** Compacts the planned context, applies the moves to the metric store, and reports. */
  #compact(sequence: number, moves: SlotMoveList, blocksBefore: number, t0: number): CompressionOutcome {
    const ctx = this.context;
    const t1 = performance.now();
    moves.clear();
    const result = this.allocator.compact(ctx.plan, moves);
    this.metrics.applyMoves(moves);
    return this.#outcome(result, sequence, blocksBefore, t0, t1);
  }

  /** The outcome of a compaction that planned from t0 and compacted from t1 until now. */
  #outcome(
    result: CompactionResult,
    sequence: number,
    blocksBefore: number,
    t0: number,
    t1: number,
    blocksAfter = this.allocator.sequenceBlocks(sequence),
  ): CompressionOutcome {
    const t2 = performance.now();
    const ctx = this.context;
    return {
      ...result,
      sequence,
      blocksBefore,
      blocksAfter,
      targetBlocks: ctx.targetBlocks,
      budgetMet: blocksAfter <= ctx.targetBlocks,
      planMs: t1 - t0,
      compactMs: t2 - t1,
    };
  }
}
