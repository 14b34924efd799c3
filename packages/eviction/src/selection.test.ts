// KV-Compress's block rule as EvictionSelection documents it, written the slow, obvious way
// (sort every candidate), against the planner's freeCheapestBlocks; and the host half of a
// device selection (addSelection, compressSelected) against compress().
import {
  EvictionSelection,
  InvalidPlanError,
  SELECTION_GROUP_FIELDS,
  SELECTION_ROW_FIELDS,
  type SlotMoveList,
  StalePositionsError,
} from '@kvcompress/core';
import { MetricStore } from '@kvcompress/metrics';
import { PageAllocator } from '@kvcompress/page-allocator';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ResolvedCompressionConfig, resolveCompressionConfig } from './budget.ts';
import { Compressor } from './compressor.ts';
import { CompressionContext } from './context.ts';
import { createKvCompressPolicy } from './policies/kv-compress.ts';
import { createAdaKvPolicy } from './policies/layered.ts';
import type { EvictionPolicy } from './policy.ts';

const view = new DataView(new ArrayBuffer(4));
/** The selection's key: the f32 bits as an order-preserving u32, NaN lowest. */
function orderedKey(v: number): number {
  view.setFloat32(0, v);
  const u = view.getUint32(0);
  if ((u & 0x7fffffff) > 0x7f800000) return 0;
  return u >>> 31 === 0 ? (u | 0x80000000) >>> 0 : ~u >>> 0;
}

interface Scene {
  allocator: PageAllocator;
  store: MetricStore;
  sequences: number[];
  configs: ResolvedCompressionConfig[];
}

interface SceneParams {
  seed: number;
  layers: number;
  kvHeads: number;
  blockSize: number;
  tokens: number[];
  /** Metric values drawn from this many (few: many ties), plus NaN, ±0, ±Inf, negatives. */
  distinct: number;
}

function lcg(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) | 0;
    return (s >>> 0) / 2 ** 32;
  };
}

/** Sequences with ragged heads (random evictions compacted), metrics with ties and specials. */
function buildScene(q: SceneParams): Scene {
  const rand = lcg(q.seed);
  const units = q.layers * q.kvHeads;
  const allocator = new PageAllocator({
    shape: { layers: q.layers, kvHeads: q.kvHeads, headDim: 2, queryHeadsPerKvHead: 1 },
    numBlocks: q.tokens.reduce((a, t) => a + units * Math.ceil(t / q.blockSize), 0) + 4,
    blockSize: q.blockSize,
    maxSequences: q.tokens.length,
    maxContext: Math.max(...q.tokens),
  });
  const moves = allocator.createMoveList();
  const sequences: number[] = [];
  for (const tokens of q.tokens) {
    const seq = allocator.addSequence();
    sequences.push(seq);
    const slots = new Int32Array(units * tokens);
    allocator.appendTokens(seq, tokens, slots);
    const plan = allocator.createEvictionPlan();
    plan.reset(seq);
    for (let u = 0; u < units; u++) {
      const p = rand() * 0.6;
      for (let t = 0; t < tokens - 1; t++) if (rand() < p) plan.add(u, slots[u * tokens + t] as number);
    }
    allocator.compact(plan, moves);
    moves.clear();
  }
  const store = new MetricStore(allocator.numSlots);
  const specials = [Number.NaN, -0, 0, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, -2];
  for (let i = 0; i < store.values.length; i++) {
    store.values[i] = rand() < 0.1 ? (specials[Math.floor(rand() * specials.length)] as number) : Math.floor(rand() * q.distinct) / 8;
  }
  const configs = q.tokens.map((tokens) => {
    const protectedWindow = Math.floor(rand() * 24);
    const sinks = Math.floor(rand() * 4);
    const budget =
      rand() < 0.5
        ? { targetCompressionRate: [1.5, 2, 4, 8, 64][Math.floor(rand() * 5)] as number }
        : { maxCacheTokens: protectedWindow + sinks + 1 + Math.floor(rand() * tokens) };
    return resolveCompressionConfig({ budget, protectedWindow, sinks });
  });
  return { allocator, store, sequences, configs };
}

/**
 * The rule, literally: candidates (unit, k) cost the key at rank (k - 1) * B + hanging - 1 of
 * the unit's ascending (key, logical index); the `blocks` cheapest by (cost, unit, k) go; a
 * unit freeing k blocks evicts its first (k - 1) * B + hanging slots in that order.
 */
function naiveFreeCheapest(ctx: CompressionContext, units: number[], blocks: number, minBlocks: number): Map<number, number[]> {
  const B = ctx.blockSize;
  const order = new Map<number, { key: number; i: number }[]>();
  const candidates: { cost: number; unit: number; k: number }[] = [];
  for (const u of units) {
    const len = ctx.length(u);
    const keys: { key: number; i: number }[] = [];
    for (let i = 0; i < len; i++) if (!ctx.isProtected(u, i)) keys.push({ key: orderedKey(ctx.metric(u, i)), i });
    keys.sort((a, b) => a.key - b.key || a.i - b.i);
    order.set(u, keys);
    const hanging = len - (Math.ceil(len / B) - 1) * B;
    for (let k = 1; k <= Math.ceil(len / B) - minBlocks; k++) {
      const at = keys[(k - 1) * B + hanging - 1];
      if (at === undefined) break;
      candidates.push({ cost: at.key, unit: u, k });
    }
  }
  candidates.sort((a, b) => a.cost - b.cost || a.unit - b.unit || a.k - b.k);
  const out = new Map<number, number[]>();
  for (const u of units) {
    const k = candidates.slice(0, blocks).filter((c) => c.unit === u).length;
    if (k === 0) continue;
    const len = ctx.length(u);
    const hanging = len - (Math.ceil(len / B) - 1) * B;
    out.set(
      u,
      (order.get(u) ?? [])
        .slice(0, (k - 1) * B + hanging)
        .map((x) => x.i)
        .sort((a, b) => a - b),
    );
  }
  return out;
}

/** The naive rule over a policy's groups (what planCheapestBlocks asks freeCheapestBlocks for). */
function naivePlan(policy: EvictionPolicy, ctx: CompressionContext): Map<number, number[]> {
  const spec = policy.cheapestBlocks;
  if (spec === undefined) throw new Error('not a block-rule policy');
  const size = spec.groupUnits?.(ctx) ?? ctx.units;
  const minBlocks = spec.minBlocks?.(ctx) ?? 0;
  const out = new Map<number, number[]>();
  for (let g = 0; g * size < ctx.units; g++) {
    const blocks = spec.blocks(ctx, g);
    if (blocks <= 0) continue;
    const units = Array.from({ length: Math.min(size, ctx.units - g * size) }, (_, i) => g * size + i);
    for (const [u, list] of naiveFreeCheapest(ctx, units, blocks, minBlocks)) out.set(u, list);
  }
  return out;
}

/** The planner's decision as logical indices per unit. */
function planned(ctx: CompressionContext): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (let u = 0; u < ctx.units; u++) {
    const list: number[] = [];
    for (let i = 0; i < ctx.length(u); i++) if (ctx.isEvicted(u, i)) list.push(i);
    if (list.length > 0) out.set(u, list);
  }
  return out;
}

/** Writes the naive decision into a selection's result, as a backend would. */
function fillResult(selection: EvictionSelection, scene: Scene, policy: EvictionPolicy): void {
  const ctx = new CompressionContext(scene.allocator, scene.store.values);
  const B = scene.allocator.blockSize;
  selection.result.fill(0);
  for (let g = 0; g < selection.groupCount; g++) {
    const seq = selection.groups[g * SELECTION_GROUP_FIELDS] as number;
    ctx.begin(seq, scene.configs[scene.sequences.indexOf(seq)] as ResolvedCompressionConfig);
    const decision = naivePlan(policy, ctx);
    const first = selection.groups[g * SELECTION_GROUP_FIELDS + 1] as number;
    for (let r = first; r < first + (selection.groups[g * SELECTION_GROUP_FIELDS + 2] as number); r++) {
      const o = r * SELECTION_ROW_FIELDS;
      const unit = selection.rows[o + 1] as number;
      const len = selection.rows[o + 3] as number;
      const evicted = decision.get(unit) ?? [];
      selection.result[r] = Math.ceil(len / B) - Math.ceil((len - evicted.length) / B);
      for (const i of evicted) {
        const w = selection.rowCount + (selection.rows[o + 6] as number) + (i >>> 5);
        selection.result[w] = (selection.result[w] as number) | (1 << (i & 31));
      }
    }
  }
}

const sceneParams = fc.record({
  seed: fc.integer(),
  layers: fc.integer({ min: 1, max: 3 }),
  kvHeads: fc.integer({ min: 1, max: 4 }),
  blockSize: fc.constantFrom(1, 2, 4, 16),
  tokens: fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 3 }),
  distinct: fc.constantFrom(2, 5, 1000),
});
const policies = [createKvCompressPolicy(), createAdaKvPolicy({ alpha: 0.5 })];

/** Two identical scenes of q, each with its own Compressor under policies[which]. */
function twinScenes(q: SceneParams, which: number) {
  const policy = policies[which] as EvictionPolicy;
  const a = buildScene(q);
  const b = buildScene(q);
  const config = a.configs[0] as ResolvedCompressionConfig;
  const ca = new Compressor({ allocator: a.allocator, metrics: a.store, policy, config });
  const cb = new Compressor({ allocator: b.allocator, metrics: b.store, policy, config });
  return { policy, a, b, config, ca, cb };
}

describe('the block rule of EvictionSelection', () => {
  it('property: freeCheapestBlocks (kv-compress, ada-kv) decides as the rule written naively, ties included', () => {
    fc.assert(
      fc.property(sceneParams, fc.constantFrom(0, 1), (q, which) => {
        const scene = buildScene(q);
        const policy = policies[which] as EvictionPolicy;
        const ctx = new CompressionContext(scene.allocator, scene.store.values);
        scene.sequences.forEach((seq, i) => {
          ctx.begin(seq, scene.configs[i] as ResolvedCompressionConfig);
          const want = naivePlan(policy, ctx);
          policy.plan(ctx);
          expect(planned(ctx)).toEqual(want);
        });
      }),
      { numRuns: 150 },
    );
  });

  it('property: compressSelected with the rule decided elsewhere = compress', () => {
    fc.assert(
      fc.property(sceneParams, fc.constantFrom(0, 1), (q, which) => {
        const { policy, a, b, ca, cb } = twinScenes(q, which);
        const units = a.allocator.headsPerSequence;
        const selection = new EvictionSelection(
          a.allocator.maxSequences * units,
          a.allocator.maxSlotsPerSequence * a.allocator.maxSequences,
        );
        a.sequences.forEach((seq, i) => {
          ca.addSelection(selection, seq, a.configs[i]);
        });
        fillResult(selection, a, policy);
        const ma: SlotMoveList = a.allocator.createMoveList();
        const mb: SlotMoveList = b.allocator.createMoveList();
        a.sequences.forEach((seq, i) => {
          const config = a.configs[i] as ResolvedCompressionConfig;
          const x = ca.compressSelected(seq, ma, selection, config);
          const y = cb.compress(seq, mb, config);
          expect({ ...x, planMs: 0, compactMs: 0 }).toEqual({ ...y, planMs: 0, compactMs: 0 });
          expect([...ma.src.subarray(0, ma.count)]).toEqual([...mb.src.subarray(0, mb.count)]);
          expect([...ma.dst.subarray(0, ma.count)]).toEqual([...mb.dst.subarray(0, mb.count)]);
        });
        a.allocator.checkInvariants();
        expect([...a.allocator.blockTables]).toEqual([...b.allocator.blockTables]);
        expect([...a.allocator.headLengths]).toEqual([...b.allocator.headLengths]);
      }),
      { numRuns: 100 },
    );
  });

  it('property: applyDeviceCompaction after the device moves (emulated) = compressSelected', () => {
    fc.assert(
      fc.property(sceneParams, fc.constantFrom(0, 1), (q, which) => {
        const { policy, a, b, config, ca, cb } = twinScenes(q, which);
        const A = a.allocator;
        const B = A.blockSize;
        const units = A.headsPerSequence;
        const selection = new EvictionSelection(A.maxSequences * units, A.maxSlotsPerSequence * A.maxSequences);
        a.sequences.forEach((seq, i) => {
          ca.addSelection(selection, seq, a.configs[i]);
        });
        fillResult(selection, a, policy);
        // The device: per row, holes below the new length <- survivors past it, both ascending;
        // positions and metrics move with the slots (on the device copies).
        const devPositions = A.slotPositions.slice();
        const devMetrics = a.store.values.slice();
        const pairs: [number, number][] = [];
        for (let r = 0; r < selection.rowCount; r++) {
          const o = r * SELECTION_ROW_FIELDS;
          const t0 = selection.rows[o + 2] as number;
          const len = selection.rows[o + 3] as number;
          const slotOf = (i: number) => (A.blockTables[t0 + Math.floor(i / B)] as number) * B + (i % B);
          const k = selection.freed(r);
          const survivors = k === 0 ? len : len - ((k - 1) * B + (selection.rows[o + 4] as number));
          const holes: number[] = [];
          const sources: number[] = [];
          for (let i = 0; i < len; i++) {
            if (i < survivors && selection.evicted(r, i)) holes.push(slotOf(i));
            if (i >= survivors && !selection.evicted(r, i)) sources.push(slotOf(i));
          }
          expect(sources.length).toBe(holes.length);
          selection.rowMoves[r] = holes.length;
          for (let n = 0; n < holes.length; n++) pairs.push([sources[n] as number, holes[n] as number]);
        }
        for (const [src, dst] of pairs) {
          devPositions[dst] = devPositions[src] as number;
          devMetrics[dst] = devMetrics[src] as number;
        }
        const mb: SlotMoveList = b.allocator.createMoveList();
        a.sequences.forEach((seq, i) => {
          const config = a.configs[i] as ResolvedCompressionConfig;
          const x = ca.applyDeviceCompaction(seq, selection, config);
          const y = cb.compressSelected(seq, mb, selection, config);
          expect({ ...x, planMs: 0, compactMs: 0 }).toEqual({ ...y, planMs: 0, compactMs: 0 });
        });
        A.checkInvariants();
        expect([...A.blockTables]).toEqual([...b.allocator.blockTables]);
        expect([...A.headLengths]).toEqual([...b.allocator.headLengths]);
        expect(A.freeBlocks).toBe(b.allocator.freeBlocks);
        for (let h = 0; h < A.headLengths.length; h++) {
          for (let i = 0; i < (A.headLengths[h] as number); i++) {
            const slot = (A.blockTables[h * A.maxBlocksPerHead + Math.floor(i / B)] as number) * B + (i % B);
            expect(devPositions[slot]).toBe(b.allocator.slotPositions[slot]);
            expect(Object.is(devMetrics[slot], b.store.values[slot])).toBe(true);
          }
        }
        // Host planning of a compacted sequence needs its positions from the device first.
        const moved = a.sequences.find((seq) => A.hasStalePositions(seq));
        if (moved !== undefined) {
          const ctx = ca.context;
          ctx.begin(moved, config);
          const unit = Array.from({ length: units }, (_, u) => u).find((u) => ctx.length(u) > 0) as number;
          expect(() => ctx.position(unit, 0)).toThrow(StalePositionsError);
          expect(() => ctx.evictLowest(unit, 1)).toThrow(StalePositionsError);
          A.slotPositions.set(devPositions);
          A.positionsSynced();
          ctx.begin(moved, config);
          expect(ctx.position(unit, 0)).toBe(devPositions[ctx.slot(unit, 0)]);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('a selection within budget adds nothing; one that marks a protected slot or miscounts is rejected', () => {
    const scene = buildScene({ seed: 7, layers: 1, kvHeads: 2, blockSize: 4, tokens: [40], distinct: 1000 });
    const seq = scene.sequences[0] as number;
    const policy = createKvCompressPolicy();
    const generous = resolveCompressionConfig({ budget: { maxCacheTokens: 64 }, protectedWindow: 8 });
    const c = new Compressor({ allocator: scene.allocator, metrics: scene.store, policy, config: generous });
    const selection = new EvictionSelection(2, 8);
    expect(c.addSelection(selection, seq)).toBe(false);
    expect(selection.rowCount).toBe(0);

    const tight = resolveCompressionConfig({ budget: { targetCompressionRate: 4 }, protectedWindow: 8 });
    expect(c.addSelection(selection, seq, tight)).toBe(true);
    expect(selection.rowCount).toBe(2);
    const moves = scene.allocator.createMoveList();
    // Mark the newest slot of row 0 (protected: position 39 is inside the window of 8).
    const len = selection.rows[3] as number;
    const newest = Array.from({ length: len }, (_, i) => i).find((i) => {
      const slot = (scene.allocator.blockTables[(selection.rows[2] as number) + Math.floor(i / 4)] as number) * 4 + (i % 4);
      return scene.allocator.slotPositions[slot] === 39;
    }) as number;
    selection.result.fill(0);
    selection.result[0] = 1;
    selection.result[selection.rowCount + (newest >>> 5)] = 1 << (newest & 31);
    expect(() => c.compressSelected(seq, moves, selection, tight)).toThrow(InvalidPlanError);
    // A decision that frees a block but marks nothing does not add up.
    selection.result.fill(0);
    selection.result[1] = 1;
    expect(() => c.compressSelected(seq, moves, selection, tight)).toThrow(InvalidPlanError);
    // Nothing changed.
    scene.allocator.checkInvariants();
    expect(scene.allocator.length(seq, 0, 0)).toBe(len);
  });
});
