import { InvalidArgumentError, SlotMoveList } from '@kvcompress/core';
import { PageAllocator } from '@kvcompress/page-allocator';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { windowAttentionProbs } from './attention.ts';
import { DecodeMetricAccumulator, MetricStore } from './metric-store.ts';
import {
  AttentionScorer,
  type AttentionScorerOptions,
  h2oScorer,
  KeyNormScorer,
  kvCompressScorer,
  RandomScorer,
  RecencyScorer,
  snapKvScorer,
} from './scorers.ts';
import { summarizeHeads } from './summaries.ts';

// Two query heads sharing one kv-head, three keys, the last two prompt positions observed.
// probs [queryHeads = 2][window = 2][keys = 3]; query w = 0 is at position 1, w = 1 at 2.
const probs = new Float32Array([0.5, 0.5, 0, 0.2, 0.3, 0.5, 1, 0, 0, 0.1, 0.1, 0.8]);
const input = { queryHeads: 2, kvHeads: 1, keyCount: 3, window: 2, probs };

function score(scorer: { scorePrefill(i: typeof input, o: Float32Array): void }, inp = input): number[] {
  const out = new Float32Array(inp.kvHeads * inp.keyCount);
  scorer.scorePrefill(inp, out);
  return Array.from(out);
}

function closeTo(actual: number[], expected: number[]): void {
  expect(actual).toHaveLength(expected.length);
  for (const [i, v] of actual.entries()) expect(v).toBeCloseTo(expected[i] as number, 6);
}

describe('KV-Compress prefill metric (hand-computed)', () => {
  it('L2, summed over the window and over the query group', () => {
    // key0: .5^2 + .2^2 + 1^2 + .1^2; key1: .5^2 + .3^2 + 0 + .1^2; key2: .5^2 + .8^2
    closeTo(score(kvCompressScorer({ observationWindow: 2 })), [1.3, 0.35, 0.89]);
  });

  it('L1 avg divides by how many queries saw the key', () => {
    // sums over window and group: 1.8, 0.9, 1.3; key2 was seen by one query only.
    closeTo(score(kvCompressScorer({ observationWindow: 2, aggregation: 'L1', reduction: 'avg' })), [0.9, 0.45, 1.3]);
  });

  it('metric buffer: keys within the buffer of a query are not scored by it', () => {
    // buffer 1: the query at position 1 scores key 0 only; the one at 2 scores keys 0 and 1.
    closeTo(score(kvCompressScorer({ observationWindow: 2, metricBuffer: 1 })), [1.3, 0.1, 0]);
  });

  it('max-pool along keys', () => {
    closeTo(score(kvCompressScorer({ observationWindow: 2, maxPoolKernel: 3 })), [1.3, 1.3, 0.89]);
  });

  it('trailing max-pool: importance flows from a key to the keys after it, never before', () => {
    // Unpooled: [1.3, 0.35, 0.89].
    closeTo(score(kvCompressScorer({ observationWindow: 2, maxPoolKernel: 2, maxPoolAlign: 'trailing' })), [1.3, 1.3, 0.89]);
    closeTo(score(kvCompressScorer({ observationWindow: 2, maxPoolKernel: 3, maxPoolAlign: 'trailing' })), [1.3, 1.3, 1.3]);
    expect(() => kvCompressScorer({ maxPoolKernel: 4 })).toThrow(/must be odd when centred/);
  });

  it('GQA: each kv-head aggregates only its own query group', () => {
    // Four query heads, two kv-heads: heads 0,1 -> kv 0 and heads 2,3 -> kv 1.
    const p = new Float32Array(4 * 2 * 3);
    p.set(probs, 0); // group of kv-head 0: the same as above
    p.set([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], 12); // group of kv-head 1
    const out = score(kvCompressScorer({ observationWindow: 2 }), { ...input, queryHeads: 4, kvHeads: 2, probs: p });
    closeTo(out, [1.3, 0.35, 0.89, 1, 1, 1]);
  });
});

describe('baseline scorers (hand-computed)', () => {
  it('SnapKV: mean over the window and the group, avg-pooled with zero padding', () => {
    // L1 avg over queries, mean over group: 0.45, 0.225, 0.65; avg-pool k=3 divides by 3.
    const s = snapKvScorer({ observationWindow: 2, poolKernel: 3 });
    closeTo(score(s), [(0.45 + 0.225) / 3, (0.45 + 0.225 + 0.65) / 3, (0.225 + 0.65) / 3]);
  });

  it('H2O: accumulated attention summed over queries and group', () => {
    closeTo(score(h2oScorer()), [1.8, 0.9, 1.3]);
  });

  it('key norm: minus the L2 norm of each key', () => {
    const keys = new Float32Array([3, 4, 0, 1, 1, 1]);
    const out = new Float32Array(2);
    new KeyNormScorer().scorePrefill({ queryHeads: 1, kvHeads: 1, keyCount: 2, window: 1, keys, headDim: 3 }, out);
    closeTo(Array.from(out), [-5, -Math.sqrt(3)]);
  });

  it('random: seeded, in [0, 1), reproducible', () => {
    const a = score(new RandomScorer(7), { ...input, keyCount: 3 });
    const b = score(new RandomScorer(7), { ...input, keyCount: 3 });
    expect(a).toEqual(b);
    for (const v of a) expect(v >= 0 && v < 1).toBe(true);
    expect(new Set(a).size).toBe(3);
  });

  it('recency scores positions', () => {
    expect(score(new RecencyScorer())).toEqual([0, 1, 2]);
    expect(new RecencyScorer().initialMetric(undefined, 0, 0, 41)).toBe(41);
    expect(score(new RecencyScorer({ sinks: 2 }))).toEqual([Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY, 2]);
  });

  it('rejects bad shapes and options with named errors', () => {
    expect(() => score(kvCompressScorer(), { ...input, window: 4 })).toThrow(InvalidArgumentError);
    expect(() => score(kvCompressScorer(), { ...input, probs: new Float32Array(3) })).toThrow(InvalidArgumentError);
    expect(() => kvCompressScorer({ maxPoolKernel: 4 })).toThrow(InvalidArgumentError);
    expect(() => kvCompressScorer({ observationWindow: 0 })).toThrow(InvalidArgumentError);
    expect(() => kvCompressScorer({ metricBuffer: -1 })).toThrow(InvalidArgumentError);
    expect(() => new DecodeMetricAccumulator(snapKvScorer())).toThrow(InvalidArgumentError);
  });
});

/** The definition, written as plainly as possible, to check the scorer on random inputs. */
function directScore(o: AttentionScorerOptions, qh: number, kh: number, n: number, win: number, p: Float32Array): number[] {
  const group = qh / kh;
  const out: number[] = [];
  for (let g = 0; g < kh; g++) {
    const raw: number[] = [];
    for (let j = 0; j < n; j++) {
      let s = 0;
      let seen = 0;
      for (let w = 0; w < win; w++) {
        const pos = n - win + w;
        if (pos - j < o.metricBuffer) continue;
        seen++;
        for (let qi = 0; qi < group; qi++) {
          const v = p[((g * group + qi) * win + w) * n + j] as number;
          s += o.aggregation === 'L2' ? v * v : v;
        }
      }
      if (o.groupReduction === 'mean') s /= group;
      if (o.reduction === 'avg') s = seen > 0 ? s / seen : 0;
      raw.push(s);
    }
    for (let j = 0; j < n; j++) {
      if (o.pooling === null) {
        out.push(raw[j] as number);
        continue;
      }
      const half = (o.pooling.kernel - 1) / 2;
      const window =
        o.pooling.align === 'trailing'
          ? raw.slice(Math.max(0, j - o.pooling.kernel + 1), j + 1)
          : raw.slice(Math.max(0, j - half), Math.min(n, j + half + 1));
      out.push(o.pooling.kind === 'max' ? Math.max(...window) : window.reduce((a, b) => a + b, 0) / o.pooling.kernel);
    }
  }
  return out;
}

describe('attention scorer on random inputs', () => {
  it('matches the direct definition for every option combination', () => {
    fc.assert(
      fc.property(
        fc.record({
          kvHeads: fc.integer({ min: 1, max: 3 }),
          group: fc.integer({ min: 1, max: 4 }),
          headDim: fc.integer({ min: 1, max: 8 }),
          keyCount: fc.integer({ min: 1, max: 24 }),
          windowFrac: fc.double({ min: 0, max: 1, noNaN: true }),
          aggregation: fc.constantFrom('L1' as const, 'L2' as const),
          reduction: fc.constantFrom('sum' as const, 'avg' as const),
          groupReduction: fc.constantFrom('sum' as const, 'mean' as const),
          metricBuffer: fc.integer({ min: 0, max: 5 }),
          pooling: fc.constantFrom(
            null,
            { kind: 'max' as const, kernel: 3 },
            { kind: 'avg' as const, kernel: 5 },
            { kind: 'max' as const, kernel: 4, align: 'trailing' as const },
          ),
          seed: fc.integer(),
        }),
        (c) => {
          const queryHeads = c.kvHeads * c.group;
          const window = Math.max(1, Math.round(c.windowFrac * c.keyCount));
          let state = c.seed;
          const rand = () => {
            state = (Math.imul(state, 1664525) + 1013904223) | 0;
            return (state >>> 0) / 2 ** 32 - 0.5;
          };
          const q = Float32Array.from({ length: queryHeads * window * c.headDim }, rand);
          const k = Float32Array.from({ length: c.kvHeads * c.keyCount * c.headDim }, rand);
          const p = new Float32Array(queryHeads * window * c.keyCount);
          windowAttentionProbs(q, k, queryHeads, c.kvHeads, c.headDim, window, c.keyCount, p);
          const options: AttentionScorerOptions = { name: 't', observationWindow: window, accumulatesDuringDecode: true, ...c };
          const out = new Float32Array(c.kvHeads * c.keyCount);
          new AttentionScorer(options).scorePrefill({ queryHeads, kvHeads: c.kvHeads, keyCount: c.keyCount, window, probs: p }, out);
          const expected = directScore(options, queryHeads, c.kvHeads, c.keyCount, window, p);
          for (const [i, v] of expected.entries()) expect(Math.abs((out[i] as number) - v)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(v)));
        },
      ),
      { numRuns: 400 },
    );
  });

  it('attention rows are causal probability distributions', () => {
    const q = Float32Array.from({ length: 2 * 3 * 4 }, (_, i) => Math.sin(i));
    const k = Float32Array.from({ length: 1 * 5 * 4 }, (_, i) => Math.cos(i));
    const p = new Float32Array(2 * 3 * 5);
    windowAttentionProbs(q, k, 2, 1, 4, 3, 5, p);
    for (let r = 0; r < 6; r++) {
      const row = Array.from(p.subarray(r * 5, r * 5 + 5));
      const pos = 2 + (r % 3);
      expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
      for (let j = pos + 1; j < 5; j++) expect(row[j]).toBe(0);
    }
  });
});

describe('metric store and decode accumulation', () => {
  const shape = { layers: 1, kvHeads: 2, headDim: 2, queryHeadsPerKvHead: 2 };

  it('writes prefill scores to the allocated slots and moves them with compaction', () => {
    const a = new PageAllocator({ shape, numBlocks: 8, blockSize: 2, maxSequences: 1, maxContext: 8 });
    const s = a.addSequence();
    const slots = new Int32Array(2 * 4);
    a.appendTokens(s, 4, slots);
    const store = new MetricStore(a.numSlots);
    store.writePrefill(0, 2, 4, new Float32Array([10, 11, 12, 13, 20, 21, 22, 23]), slots);
    expect(store.values[a.slot(s, 0, 1, 2)]).toBe(22);
    const plan = a.createEvictionPlan();
    plan.reset(s);
    plan.add(1, a.slot(s, 0, 1, 0));
    const moves = a.createMoveList();
    a.compact(plan, moves);
    store.applyMoves(moves);
    const kept = [0, 1, 2].map((i) => store.values[a.slot(s, 0, 1, i)]).sort();
    expect(kept).toEqual([21, 22, 23]);
  });

  it('adds the squared, group-summed decode attention to keys older than the buffer', () => {
    const a = new PageAllocator({ shape, numBlocks: 8, blockSize: 2, maxSequences: 1, maxContext: 8 });
    const s = a.addSequence();
    a.appendTokens(s, 3);
    const store = new MetricStore(a.numSlots);
    const acc = new DecodeMetricAccumulator(kvCompressScorer({ metricBuffer: 1 }));
    // Group of 2 query heads over the 3 keys of kv-head 1; the query is at position 3.
    const p = new Float32Array([0.5, 0.25, 0.25, 0.1, 0.2, 0.7]);
    const h = a.headIndex(s, 0, 1);
    acc.accumulate(store.values, p, 0, 3, 2, a.blockTables, a.tableOffset(h), 2, 3, a.slotPositions, 3);
    acc.accumulate(store.values, p, 0, 3, 2, a.blockTables, a.tableOffset(h), 2, 3, a.slotPositions, 3);
    const m = [0, 1, 2].map((i) => store.values[a.slot(s, 0, 1, i)] as number);
    closeTo(m, [2 * (0.25 + 0.01), 2 * (0.0625 + 0.04), 2 * (0.0625 + 0.49)]);
    const buffered = new DecodeMetricAccumulator(kvCompressScorer({ metricBuffer: 2 }));
    store.values.fill(0);
    buffered.accumulate(store.values, p, 0, 3, 2, a.blockTables, a.tableOffset(h), 2, 3, a.slotPositions, 3);
    // Keys at positions 2 (1 before the query) is inside the buffer of 2 and is not scored.
    closeTo(
      [0, 1, 2].map((i) => store.values[a.slot(s, 0, 1, i)] as number),
      [0.26, 0.1025, 0],
    );
  });

  it('summarises how concentrated each head is', () => {
    const a = new PageAllocator({ shape, numBlocks: 40, blockSize: 4, maxSequences: 1, maxContext: 40 });
    const s = a.addSequence();
    const slots = new Int32Array(2 * 20);
    a.appendTokens(s, 20, slots);
    const store = new MetricStore(a.numSlots);
    const scores = new Float32Array(40);
    for (let j = 0; j < 20; j++) scores[j] = 1; // head 0: flat
    scores[20] = 1; // head 1: all mass on one key
    store.writePrefill(0, 2, 20, scores, slots);
    const [flat, peaked] = summarizeHeads(a, store.values, s);
    expect(flat?.effectiveTokens).toBeCloseTo(20, 6);
    expect(flat?.top10Share).toBeCloseTo(0.1, 6);
    expect(peaked?.effectiveTokens).toBeCloseTo(1, 6);
    expect(peaked?.top10Share).toBe(1);
    expect(peaked?.blocks).toBe(5);
  });

  it('move lists reject overflow', () => {
    const m = new SlotMoveList(1);
    m.push(0, 1);
    expect(() => m.push(1, 2)).toThrow(InvalidArgumentError);
  });
});
