import { DuplicatePolicyError, InvalidArgumentError, InvalidBudgetError, UnknownPolicyError } from '@kvcompress/core';
import { MetricStore } from '@kvcompress/metrics';
import { PageAllocator } from '@kvcompress/page-allocator';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { CompressionConfig } from './budget.ts';
import { getPolicy, policies, registerBuiltinPolicies } from './builtins.ts';
import { Compressor } from './compressor.ts';
import { CompressionContext } from './context.ts';
import { createKvCompressPolicy } from './policies/kv-compress.ts';
import { createAdaKvPolicy, pyramidBlocksPerLayer } from './policies/layered.ts';
import { createStreamingLlmPolicy } from './policies/uniform.ts';
import { type EvictionPolicy, PolicyRegistry } from './policy.ts';

interface Setup {
  allocator: PageAllocator;
  store: MetricStore;
  seq: number;
}

/**
 * One sequence of `tokens` tokens; metric of (unit, position) from `metricOf`.
 * Units are layer * kvHeads + kvHead.
 */
function setup(
  layers: number,
  kvHeads: number,
  blockSize: number,
  tokens: number,
  metricOf: (unit: number, position: number) => number,
): Setup {
  const shape = { layers, kvHeads, headDim: 4, queryHeadsPerKvHead: 2 };
  const units = layers * kvHeads;
  const allocator = new PageAllocator({
    shape,
    numBlocks: units * Math.ceil(tokens / blockSize) + 4,
    blockSize,
    maxSequences: 2,
    maxContext: tokens,
  });
  const seq = allocator.addSequence();
  const slots = new Int32Array(units * tokens);
  allocator.appendTokens(seq, tokens, slots);
  const store = new MetricStore(allocator.numSlots);
  for (let u = 0; u < units; u++) for (let t = 0; t < tokens; t++) store.values[slots[u * tokens + t] as number] = metricOf(u, t);
  return { allocator, store, seq };
}

/** Positions each unit holds, sorted. */
function positionsByUnit(s: Setup): number[][] {
  const { layers, kvHeads } = s.allocator.shape;
  const out: number[][] = [];
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < kvHeads; h++) {
      const n = s.allocator.length(s.seq, l, h);
      out.push(
        Array.from({ length: n }, (_, i) => s.allocator.slotPositions[s.allocator.slot(s.seq, l, h, i)] as number).sort((a, b) => a - b),
      );
    }
  }
  return out;
}

function compress(s: Setup, policy: EvictionPolicy, config: CompressionConfig) {
  const c = new Compressor({ allocator: s.allocator, metrics: s.store, policy, config });
  const outcome = c.compress(s.seq, s.allocator.createMoveList());
  s.allocator.checkInvariants();
  return outcome;
}

describe('KV-Compress block choice (hand-computed)', () => {
  // B = 2, one layer, two kv-heads, 5 tokens: three blocks per head, one slot hanging.
  const h0 = [5, 1, 4, 2, 3];
  const h1 = [0.5, 9, 8, 7, 6];

  it('ranks (head, k) candidates globally with the hanging-block rule', () => {
    // Candidate costs: head 0 frees 1/2/3 blocks at metric ranks 0/2/4 = 1, 3, 5;
    // head 1 at 0.5, 7, 9. Budget 2 tokens/head -> 2 blocks in all; free 4: 0.5, 1, 3, 5.
    const s = setup(1, 2, 2, 5, (u, t) => (u === 0 ? h0 : h1)[t] as number);
    const r = compress(s, createKvCompressPolicy(), { budget: { maxCacheTokens: 2 }, protectedWindow: 0 });
    expect(positionsByUnit(s)).toEqual([[], [1, 2, 3, 4]]);
    expect(r).toMatchObject({ blocksBefore: 6, blocksAfter: 2, targetBlocks: 2, budgetMet: true, evictedSlots: 6, freedBlocks: 4 });
  });

  it('frees one block from a head by evicting only its hanging slot, and gives heads different rates', () => {
    // Protected window 1 makes position 4 untouchable. Head 1's costs: 0.5 (its hanging slot
    // alone), 0.7, then infeasible; head 0's: 1, 4. Budget 3 tokens/head -> 4 blocks: free 2.
    const s = setup(1, 2, 2, 5, (u, t) => (u === 0 ? h0 : [0.5, 0.6, 0.7, 0.8, 0.9])[t] as number);
    const r = compress(s, createKvCompressPolicy(), { budget: { maxCacheTokens: 3 }, protectedWindow: 1 });
    expect(positionsByUnit(s)).toEqual([
      [0, 1, 2, 3, 4],
      [3, 4],
    ]);
    expect(r.blocksAfter).toBe(4);
  });

  it('with full last blocks (6 tokens), freeing one block costs the B-th lowest slot', () => {
    // head 0 sorted [1, 2, 3, 4, 5, 6] -> costs 2, 4, 6; head 1 [1.5, 1.6, 10, 11, 12, 13] -> 1.6, 11, 13.
    const a = [6, 5, 4, 3, 2, 1];
    const b = [1.5, 10, 1.6, 11, 12, 13];
    const s = setup(1, 2, 2, 6, (u, t) => (u === 0 ? a : b)[t] as number);
    // Budget 4 tokens/head -> 4 blocks; free 2: 1.6 (head 1), then 2 (head 0).
    compress(s, createKvCompressPolicy(), { budget: { maxCacheTokens: 4 }, protectedWindow: 0 });
    expect(positionsByUnit(s)).toEqual([
      [0, 1, 2, 3],
      [1, 3, 4, 5],
    ]);
  });

  it('chooses across layers too', () => {
    // Two layers, one head each; layer 1 is cheap everywhere, so it gives up every block it can.
    const s = setup(2, 1, 2, 6, (u, t) => (u === 0 ? 100 + t : t));
    compress(s, createKvCompressPolicy(), { budget: { maxCacheTokens: 4 }, protectedWindow: 2 });
    expect(positionsByUnit(s)).toEqual([
      [0, 1, 2, 3, 4, 5],
      [4, 5],
    ]);
  });

  it('rate budgets apply to the positions outside the protected window', () => {
    // 20 tokens, window 4: keep 4 + 16/4 = 8 per head -> 4 blocks of 2 per head, 8 in all.
    const s = setup(1, 2, 2, 20, (u, t) => (u === 0 ? t : 20 - t));
    const r = compress(s, createKvCompressPolicy(), { budget: { targetCompressionRate: 4 }, protectedWindow: 4 });
    expect(r.targetBlocks).toBe(8);
    expect(r.blocksAfter).toBe(8);
    const [p0, p1] = positionsByUnit(s);
    for (const p of [16, 17, 18, 19]) {
      expect(p0).toContain(p);
      expect(p1).toContain(p);
    }
  });
});

describe('baseline policies (hand-computed)', () => {
  const metric = (u: number, t: number) => [[3, 1, 4, 1.5, 5, 9, 2, 6][t] as number, [8, 7, 6, 5, 4, 3, 2, 1][t] as number][u] as number;

  it('SnapKV and H2O keep the same number of tokens in every head, by metric', () => {
    for (const name of ['snapkv', 'h2o']) {
      const s = setup(1, 2, 2, 8, metric);
      compress(s, getPolicy(name), { budget: { maxCacheTokens: 4 }, protectedWindow: 1 });
      // Head 0: position 7 protected, keep the 3 best of the rest: 9 (5), 5 (4), 4 (2).
      // Head 1: position 7 protected, then 8, 7, 6 (positions 0, 1, 2).
      expect(positionsByUnit(s)).toEqual([
        [2, 4, 5, 7],
        [0, 1, 2, 7],
      ]);
    }
  });

  it('StreamingLLM keeps the sinks and the most recent tokens', () => {
    const policy = createStreamingLlmPolicy({ sinks: 1 });
    const scorer = policy.createScorer?.();
    const s = setup(1, 2, 2, 8, (_u, t) => scorer?.initialMetric(undefined, 0, 0, t) ?? Number.NaN);
    compress(s, policy, { budget: { maxCacheTokens: 4 }, protectedWindow: 1 });
    expect(positionsByUnit(s)).toEqual([
      [0, 5, 6, 7],
      [0, 5, 6, 7],
    ]);
  });

  it('random keeps the budget and never a protected position', () => {
    const s = setup(1, 2, 2, 8, metric);
    const scorer = getPolicy('random').createScorer?.();
    expect(scorer?.name).toBe('random');
    for (let u = 0; u < 2; u++)
      for (let i = 0; i < 8; i++) s.store.values[s.allocator.slot(s.seq, 0, u, i)] = scorer?.initialMetric(undefined, 0, 0, i) ?? 0;
    compress(s, getPolicy('random'), { budget: { maxCacheTokens: 4 }, sinks: 1, protectedWindow: 2 });
    for (const p of positionsByUnit(s)) {
      expect(p).toHaveLength(4);
      expect(p).toEqual(expect.arrayContaining([0, 6, 7]));
    }
  });

  it('none evicts nothing', () => {
    const s = setup(1, 2, 2, 8, metric);
    const r = compress(s, getPolicy('none'), { budget: { maxCacheTokens: 2 }, protectedWindow: 0 });
    expect(r.evictedSlots).toBe(0);
    expect(r.budgetMet).toBe(false);
  });

  it('PyramidKV budgets fall linearly with depth, in whole blocks summing to the uniform memory', () => {
    // 4 layers, 64 tokens/head, B = 16, beta 20: ideal blocks 7.8, 5.27, 2.73, 0.2 -> floors
    // 7, 5, 2, 0 plus the two spare blocks by largest remainder: 8, 5, 3, 0.
    expect(Array.from(pyramidBlocksPerLayer(4, 64, 0, 16, 20, new Int32Array(4)))).toEqual([8, 5, 3, 0]);
    // Protected positions set a floor of ceil(20 / 16) = 2 blocks per layer.
    const withFloor = Array.from(pyramidBlocksPerLayer(4, 64, 20, 16, 20, new Int32Array(4)));
    expect(withFloor.every((b) => b >= 2)).toBe(true);
    expect(withFloor.reduce((x, y) => x + y, 0)).toBe(16);
  });

  it('PyramidKV end to end: lower layers keep more', () => {
    const s = setup(4, 1, 2, 32, (u, t) => t * (u + 1));
    const r = compress(s, getPolicy('pyramidkv'), { budget: { maxCacheTokens: 8 }, protectedWindow: 0 });
    const lengths = positionsByUnit(s).map((p) => p.length);
    expect(lengths[0]).toBeGreaterThan(lengths[3] as number);
    expect(r.blocksAfter).toBeLessThanOrEqual(r.targetBlocks);
  });

  it('Ada-KV moves budget between the heads of a layer but not across layers, with a floor', () => {
    // Layer 0: head 0 cheap, head 1 expensive. Layer 1: both equal. B = 2, 8 tokens, keep 4.
    const m = (u: number, t: number) => [t, 100 + t, 50 + t, 50 + t][u] as number;
    const s = setup(2, 2, 2, 8, m);
    compress(s, createAdaKvPolicy({ alpha: 0.5 }), { budget: { maxCacheTokens: 4 }, protectedWindow: 0 });
    // Layer 0 may hold 4 blocks: head 0 keeps its floor (1 block: positions 6, 7), head 1 keeps 3.
    // Layer 1: 2 blocks each (ties split as evenly as the cheapest-first order gives).
    const p = positionsByUnit(s);
    expect(p[0]).toEqual([6, 7]);
    expect(p[1]).toEqual([2, 3, 4, 5, 6, 7]);
    expect((p[2]?.length ?? 0) + (p[3]?.length ?? 0)).toBe(8);
  });
});

describe('headroom (memory-pressure rounds)', () => {
  it('frees headroomBlocks beyond the budget, never below the protected positions', () => {
    for (const headroom of [0, 1, 3, 100]) {
      const s = setup(2, 2, 4, 64, (u, t) => ((u * 31 + t * 17) % 23) / 23);
      const compressor = new Compressor({
        allocator: s.allocator,
        metrics: s.store,
        policy: getPolicy('kv-compress'),
        config: { budget: { targetCompressionRate: 4 }, protectedWindow: 8 },
      });
      const budget = compressor.targetBlocks(s.seq);
      const config = { ...compressor.config, headroomBlocks: headroom };
      // 4 heads x ceil(8 protected / 4) blocks: the floor.
      const target = Math.max(budget - headroom, 4 * 2);
      expect(compressor.targetBlocks(s.seq, config)).toBe(target);
      const r = compressor.compress(s.seq, s.allocator.createMoveList(), config);
      expect(r.blocksAfter).toBe(target);
      s.allocator.checkInvariants();
    }
  });
});

describe('registry and configuration errors', () => {
  it('has the built-ins, registered like user policies', () => {
    expect(policies.names()).toEqual([
      'kv-compress',
      'kv-compress-trailing',
      'snapkv',
      'pyramidkv',
      'ada-kv',
      'h2o',
      'streaming-llm',
      'random',
      'none',
    ]);
    const r = new PolicyRegistry();
    registerBuiltinPolicies(r);
    expect(() => r.register(createKvCompressPolicy())).toThrow(DuplicatePolicyError);
    r.register({ ...createKvCompressPolicy(), description: 'mine' }, { replace: true });
    expect(r.get('kv-compress').description).toBe('mine');
    expect(() => r.get('nope')).toThrow(UnknownPolicyError);
    expect(() => r.register({ name: 'bad name', plan() {} })).toThrow(InvalidArgumentError);
    expect(() => r.register({ name: 'x' } as unknown as EvictionPolicy)).toThrow(InvalidArgumentError);
  });

  it('a custom policy in a few lines frees real blocks through the same path', () => {
    const r = new PolicyRegistry();
    r.register({
      name: 'oldest-first',
      plan(ctx) {
        for (let u = 0; u < ctx.units; u++) {
          const excess = ctx.length(u) - ctx.keepPerHead;
          for (let i = 0, n = 0; n < excess && i < ctx.length(u); i++) {
            if (!ctx.isProtected(u, i)) {
              ctx.evict(u, i);
              n++;
            }
          }
        }
      },
    });
    const s = setup(1, 2, 2, 10, () => 0);
    const out = compress(s, r.get('oldest-first'), { budget: { maxCacheTokens: 4 }, protectedWindow: 2 });
    expect(positionsByUnit(s)).toEqual([
      [6, 7, 8, 9],
      [6, 7, 8, 9],
    ]);
    expect(out.freedBlocks).toBe(6);
  });

  it('a policy cannot evict protected positions', () => {
    const s = setup(1, 1, 2, 4, () => 0);
    const bad: EvictionPolicy = { name: 'bad', plan: (ctx) => ctx.evict(0, 3) };
    expect(() => compress(s, bad, { budget: { maxCacheTokens: 2 }, protectedWindow: 1 })).toThrow(InvalidArgumentError);
    expect(s.allocator.length(s.seq, 0, 0)).toBe(4);
  });

  it('compressors of different policies can share one planner context and plan as with their own', () => {
    // Pseudo-random metrics with a different scale per unit, so the policies choose differently.
    const metricOf = (u: number, t: number) => ((t * 7919 + u * 104729) % 101) * (u + 1);
    const steps: [string, CompressionConfig][] = [
      ['h2o', { budget: { targetCompressionRate: 2 }, protectedWindow: 4 }],
      ['kv-compress', { budget: { targetCompressionRate: 4 }, protectedWindow: 4 }],
      ['snapkv', { budget: { maxCacheTokens: 8 }, protectedWindow: 4 }],
    ];
    const run = (share: boolean) => {
      const s = setup(2, 2, 2, 40, metricOf);
      const context = share ? new CompressionContext(s.allocator, s.store.values) : undefined;
      const blocks: number[] = [];
      for (const [name, config] of steps) {
        const c = new Compressor({
          allocator: s.allocator,
          metrics: s.store,
          policy: getPolicy(name),
          config,
          ...(context ? { context } : {}),
        });
        if (share) expect(c.context).toBe(context);
        blocks.push(c.compress(s.seq, s.allocator.createMoveList()).blocksAfter);
        s.allocator.checkInvariants();
      }
      return { positions: positionsByUnit(s), blocks };
    };
    const own = run(false);
    expect(run(true)).toEqual(own);
    expect(new Set(own.blocks).size).toBe(3);
    const s = setup(1, 1, 2, 4, () => 0);
    const other = setup(1, 1, 2, 4, () => 0);
    expect(
      () =>
        new Compressor({
          allocator: s.allocator,
          metrics: s.store,
          policy: getPolicy('kv-compress'),
          config: { budget: { maxCacheTokens: 2 }, protectedWindow: 0 },
          context: new CompressionContext(other.allocator, other.store.values),
        }),
    ).toThrow(/same allocator/);
  });

  it('impossible or malformed budgets get InvalidBudgetError', () => {
    const s = setup(1, 1, 2, 4, () => 0);
    const bad: unknown[] = [
      { budget: { maxCacheTokens: -1 } },
      { budget: { maxCacheTokens: 0 } },
      { budget: { maxCacheTokens: 1.5 } },
      { budget: { maxCacheTokens: 10 }, protectedWindow: 64 },
      { budget: { targetCompressionRate: 0.5 } },
      { budget: { targetCompressionRate: Number.NaN } },
      { budget: { targetCompressionRate: Number.POSITIVE_INFINITY } },
      { budget: {} },
      { budget: { maxCacheTokens: 100, targetCompressionRate: 2 } },
      { budget: { maxCacheTokens: 100 }, protectedWindow: -1 },
      { budget: { maxCacheTokens: 100 }, sinks: 0.5 },
    ];
    for (const config of bad) {
      expect(
        () =>
          new Compressor({
            allocator: s.allocator,
            metrics: s.store,
            policy: getPolicy('kv-compress'),
            config: config as CompressionConfig,
          }),
      ).toThrow(InvalidBudgetError);
    }
  });
});

// ---------------------------------------------------------------------------------------
// Properties over random shapes, lengths, metrics (with ties) and configurations.

const builtinNames = ['kv-compress', 'kv-compress-trailing', 'snapkv', 'pyramidkv', 'ada-kv', 'h2o', 'streaming-llm', 'random'];

const scenario = fc.record({
  layers: fc.integer({ min: 1, max: 3 }),
  kvHeads: fc.integer({ min: 1, max: 3 }),
  blockSize: fc.constantFrom(1, 2, 4, 16),
  tokens: fc.integer({ min: 1, max: 120 }),
  protectedWindow: fc.integer({ min: 0, max: 24 }),
  sinks: fc.integer({ min: 0, max: 3 }),
  useRate: fc.boolean(),
  rate: fc.double({ min: 1, max: 64, noNaN: true }),
  extraTokens: fc.integer({ min: 0, max: 100 }),
  ties: fc.boolean(),
  preEvict: fc.double({ min: 0, max: 0.6, noNaN: true }),
  seed: fc.integer(),
});

describe('policy properties', () => {
  it('every built-in meets its budget to block granularity, never evicts a protected position, and metrics travel', () => {
    fc.assert(
      fc.property(scenario, fc.constantFrom(...builtinNames), (c, name) => {
        let state = c.seed;
        const rand = () => {
          state = (Math.imul(state, 1664525) + 1013904223) | 0;
          return (state >>> 0) / 2 ** 32;
        };
        const s = setup(c.layers, c.kvHeads, c.blockSize, c.tokens, () => (c.ties ? Math.floor(rand() * 4) : rand()));
        // Ragged heads, as after earlier compressions: evict a random share of each head.
        const units = c.layers * c.kvHeads;
        const plan = s.allocator.createEvictionPlan();
        plan.reset(s.seq);
        for (let u = 0; u < units; u++) {
          const l = Math.floor(u / c.kvHeads);
          const h = u % c.kvHeads;
          const n = s.allocator.length(s.seq, l, h);
          for (let i = 0; i < n; i++) if (rand() < c.preEvict * rand()) plan.add(u, s.allocator.slot(s.seq, l, h, i));
        }
        const moves = s.allocator.createMoveList();
        s.allocator.compact(plan, moves);
        s.store.applyMoves(moves);

        const budget = c.useRate ? { targetCompressionRate: c.rate } : { maxCacheTokens: c.protectedWindow + c.sinks + c.extraTokens + 1 };
        const config = { budget, protectedWindow: c.protectedWindow, sinks: c.sinks };
        const before = new Map<string, number>(); // "unit:position" -> metric
        for (let u = 0; u < units; u++) {
          const l = Math.floor(u / c.kvHeads);
          const h = u % c.kvHeads;
          for (let i = 0; i < s.allocator.length(s.seq, l, h); i++) {
            const slot = s.allocator.slot(s.seq, l, h, i);
            before.set(`${u}:${s.allocator.slotPositions[slot]}`, s.store.values[slot] as number);
          }
        }
        const compressor = new Compressor({ allocator: s.allocator, metrics: s.store, policy: getPolicy(name), config });
        const r = compressor.compress(s.seq, moves);
        s.allocator.checkInvariants();

        // Budget met to block granularity.
        expect(r.blocksAfter).toBeLessThanOrEqual(Math.max(r.targetBlocks, 0));
        expect(r.budgetMet || r.blocksBefore <= r.targetBlocks).toBe(true);
        if (name.startsWith('kv-compress')) expect(r.blocksAfter).toBe(Math.min(r.blocksBefore, r.targetBlocks));

        const tokens = c.tokens;
        const isProtected = (p: number) => p >= tokens - c.protectedWindow || p < c.sinks;
        for (let u = 0; u < units; u++) {
          const l = Math.floor(u / c.kvHeads);
          const h = u % c.kvHeads;
          const kept = new Map<number, number>();
          for (let i = 0; i < s.allocator.length(s.seq, l, h); i++) {
            const slot = s.allocator.slot(s.seq, l, h, i);
            const p = s.allocator.slotPositions[slot] as number;
            expect(kept.has(p)).toBe(false);
            kept.set(p, s.store.values[slot] as number);
            // Metrics travel with their slot.
            expect(Object.is(before.get(`${u}:${p}`), s.store.values[slot])).toBe(true);
          }
          // No protected position was evicted.
          for (const [key] of before) {
            const [uu, pp] = key.split(':').map(Number) as [number, number];
            if (uu === u && isProtected(pp)) expect(kept.has(pp)).toBe(true);
          }
          // Metric-driven policies evict lowest-first within a head (ties may go either way).
          if (name !== 'random' && name !== 'streaming-llm') {
            let maxEvicted = Number.NEGATIVE_INFINITY;
            let minKept = Number.POSITIVE_INFINITY;
            for (const [key, m] of before) {
              const [uu, pp] = key.split(':').map(Number) as [number, number];
              if (uu !== u || isProtected(pp)) continue;
              if (kept.has(pp)) minKept = Math.min(minKept, m);
              else maxEvicted = Math.max(maxEvicted, m);
            }
            expect(maxEvicted).toBeLessThanOrEqual(minKept);
          }
          if (name === 'snapkv' || name === 'h2o' || name === 'random' || name === 'streaming-llm') {
            const len = [...before.keys()].filter((k) => k.startsWith(`${u}:`)).length;
            expect(kept.size).toBe(Math.min(len, compressor.context.keepPerHead));
          }
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('KV-Compress frees the globally cheapest blocks (against a full-sort reference)', () => {
    fc.assert(
      fc.property(scenario, (c) => {
        let state = c.seed;
        const rand = () => {
          state = (Math.imul(state, 1664525) + 1013904223) | 0;
          return (state >>> 0) / 2 ** 32;
        };
        const s = setup(c.layers, c.kvHeads, c.blockSize, c.tokens, () => (c.ties ? Math.floor(rand() * 4) : rand() * 2 - 1));
        const units = c.layers * c.kvHeads;
        const config = {
          budget: c.useRate ? { targetCompressionRate: c.rate } : { maxCacheTokens: c.protectedWindow + c.sinks + c.extraTokens + 1 },
          protectedWindow: c.protectedWindow,
          sinks: c.sinks,
        };
        // Reference: sort each head, list every (head, k) candidate cost, take the cheapest.
        const B = c.blockSize;
        const isProtected = (p: number) => p >= c.tokens - c.protectedWindow || p < c.sinks;
        const costs: number[] = [];
        const sortedByUnit: number[][] = [];
        for (let u = 0; u < units; u++) {
          const l = Math.floor(u / c.kvHeads);
          const h = u % c.kvHeads;
          const len = s.allocator.length(s.seq, l, h);
          const ms: number[] = [];
          for (let i = 0; i < len; i++) {
            const slot = s.allocator.slot(s.seq, l, h, i);
            if (!isProtected(s.allocator.slotPositions[slot] as number)) ms.push(s.store.values[slot] as number);
          }
          ms.sort((a, b) => a - b);
          sortedByUnit.push(ms);
          const hanging = len - (Math.ceil(len / B) - 1) * B;
          for (let k = 0; k * B + hanging - 1 < ms.length; k++) costs.push(ms[k * B + hanging - 1] as number);
        }
        costs.sort((a, b) => a - b);
        const compressor = new Compressor({ allocator: s.allocator, metrics: s.store, policy: getPolicy('kv-compress'), config });
        const blocksBefore = s.allocator.sequenceBlocks(s.seq);
        const target = compressor.targetBlocks(s.seq);
        const r = compressor.compress(s.seq, s.allocator.createMoveList());
        const excess = Math.max(0, blocksBefore - target);
        expect(r.releasedBlocks).toBe(excess);
        // The chosen candidates' costs are exactly the `excess` cheapest costs.
        const chosen: number[] = [];
        for (let u = 0; u < units; u++) {
          const l = Math.floor(u / c.kvHeads);
          const h = u % c.kvHeads;
          const lenBefore = c.tokens;
          const freed = Math.ceil(lenBefore / B) - Math.ceil(s.allocator.length(s.seq, l, h) / B);
          const hanging = lenBefore - (Math.ceil(lenBefore / B) - 1) * B;
          for (let k = 0; k < freed; k++) chosen.push((sortedByUnit[u] as number[])[k * B + hanging - 1] as number);
        }
        chosen.sort((a, b) => a - b);
        expect(chosen).toEqual(costs.slice(0, excess));
      }),
      { numRuns: 3000 },
    );
  });
});
