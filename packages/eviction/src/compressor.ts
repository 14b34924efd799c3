import { InvalidArgumentError, type SlotMoveList } from '@kvcompress/core';
import type { MetricStore, Scorer } from '@kvcompress/metrics';
import { kvCompressScorer } from '@kvcompress/metrics';
import type { CompactionResult, PageAllocator } from '@kvcompress/page-allocator';
import { type CompressionConfig, type ResolvedCompressionConfig, resolveCompressionConfig } from './budget.ts';
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
    if (moves.capacity < this.allocator.maxSlotsPerSequence) {
      throw new InvalidArgumentError('The move list is too small; create it with allocator.createMoveList().');
    }
    const ctx = this.context;
    const t0 = performance.now();
    ctx.begin(sequence, config);
    const blocksBefore = this.allocator.sequenceBlocks(sequence);
    this.policy.plan(ctx);
    const t1 = performance.now();
    moves.clear();
    const result = this.allocator.compact(ctx.plan, moves);
    this.metrics.applyMoves(moves);
    const t2 = performance.now();
    const blocksAfter = this.allocator.sequenceBlocks(sequence);
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
