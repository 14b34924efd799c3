import { ropeInverseFrequencies, SlotMoveList } from '@kvcompress/core';
import { PageAllocator } from '@kvcompress/page-allocator';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CpuBackend, type CpuBuffer } from './cpu-backend.ts';

function rng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) | 0;
    return (s >>> 0) / 2 ** 32 - 0.5;
  };
}

function f32Tensor(name: string, shape: number[], values: Float32Array) {
  return { name, shape, dtype: 'f32' as const, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

describe('CpuBackend dense ops', () => {
  it('matmul computes x·Wᵀ + b', () => {
    const b = new CpuBackend();
    const w = b.uploadWeight(f32Tensor('w', [3, 2], new Float32Array([1, 2, 3, 4, 5, 6])));
    const bias = b.uploadWeight(f32Tensor('b', [3], new Float32Array([0.5, 0, -1])));
    const x = b.createBuffer(4);
    b.write(x, new Float32Array([1, 1, 2, -1]));
    const out = b.createBuffer(6);
    b.matmul(out, x, w, 2, bias);
    expect(Array.from((out as CpuBuffer).f32)).toEqual([3.5, 7, 10, 0.5, 2, 3]);
  });

  it('matmul: the 4x4-blocked prefill path equals a plain f64 dot for every row/output remainder', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 11 }),
        fc.integer({ min: 1, max: 11 }),
        fc.integer({ min: 1, max: 37 }),
        fc.boolean(),
        fc.integer(),
        (rows, outDim, inDim, withBias, seed) => {
          const r = rng(seed);
          const b = new CpuBackend();
          const wv = Float32Array.from({ length: outDim * inDim }, r);
          const bv = Float32Array.from({ length: outDim }, r);
          const xv = Float32Array.from({ length: rows * inDim }, r);
          const w = b.uploadWeight(f32Tensor('w', [outDim, inDim], wv));
          const bias = withBias ? b.uploadWeight(f32Tensor('b', [outDim], bv)) : undefined;
          const x = b.createBuffer(rows * inDim);
          b.write(x, xv);
          const out = b.createBuffer(rows * outDim);
          b.matmul(out, x, w, rows, bias);
          const o = (out as CpuBuffer).f32;
          for (let i = 0; i < rows; i++) {
            for (let j = 0; j < outDim; j++) {
              let want = withBias ? (bv[j] as number) : 0;
              for (let k = 0; k < inDim; k++) want += (xv[i * inDim + k] as number) * (wv[j * inDim + k] as number);
              expect(Math.abs((o[i * outDim + j] as number) - want)).toBeLessThan(1e-5);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rmsNorm, siluMul, add, embed and gatherRows', () => {
    const b = new CpuBackend();
    const x = b.createBuffer(4);
    b.write(x, new Float32Array([3, 4, 0, 0]));
    const w = b.uploadWeight(f32Tensor('n', [2], new Float32Array([1, 2])));
    const out = b.createBuffer(4);
    b.rmsNorm(out, x, w, 2, 2, 0);
    const o = (out as CpuBuffer).f32;
    expect(o[0]).toBeCloseTo(3 / Math.sqrt(12.5), 6);
    expect(o[1]).toBeCloseTo((4 / Math.sqrt(12.5)) * 2, 6);
    const g = b.createBuffer(2);
    const u = b.createBuffer(2);
    b.write(g, new Float32Array([1, -2]));
    b.write(u, new Float32Array([2, 3]));
    b.siluMul(out, g, u, 2);
    expect(o[0]).toBeCloseTo((1 / (1 + Math.exp(-1))) * 2, 6);
    expect(o[1]).toBeCloseTo((-2 / (1 + Math.exp(2))) * 3, 6);
    b.add(out, g, u, 2);
    expect(Array.from(o.subarray(0, 2))).toEqual([3, 1]);
    const table = b.uploadWeight(f32Tensor('e', [3, 2], new Float32Array([0, 1, 10, 11, 20, 21])));
    const ids = b.createBuffer(2, 'i32');
    b.write(ids, new Int32Array([2, 0]));
    b.embed(out, table, ids, 2);
    expect(Array.from(o)).toEqual([20, 21, 0, 1]);
    const rows = b.createBuffer(1, 'i32');
    b.write(rows, new Int32Array([1]));
    const gathered = b.createBuffer(2);
    b.gatherRows(gathered, out, rows, 1, 2);
    expect(Array.from((gathered as CpuBuffer).f32)).toEqual([0, 1]);
  });

  it('rope rotates (2i, 2i+1) pairs or (i, i+d/2) pairs by position * theta^(-2i/d)', () => {
    for (const layout of ['interleaved', 'rotate-half'] as const) {
      const b = new CpuBackend();
      const rope = { headDim: 4, ropeDim: 4, theta: 10000, layout, scaling: null };
      const x = b.createBuffer(4);
      const v = new Float32Array([1, 2, 3, 4]);
      b.write(x, v);
      const pos = b.createBuffer(1, 'i32');
      b.write(pos, new Int32Array([3]));
      b.rope(x, pos, 1, 1, rope);
      const pairs =
        layout === 'interleaved'
          ? [
              [0, 1],
              [2, 3],
            ]
          : [
              [0, 2],
              [1, 3],
            ];
      const out = (x as CpuBuffer).f32;
      pairs.forEach(([a, c], i) => {
        const angle = 3 * 10000 ** ((-2 * i) / 4);
        const x0 = v[a as number] as number;
        const x1 = v[c as number] as number;
        expect(out[a as number]).toBeCloseTo(x0 * Math.cos(angle) - x1 * Math.sin(angle), 5);
        expect(out[c as number]).toBeCloseTo(x0 * Math.sin(angle) + x1 * Math.cos(angle), 5);
      });
    }
  });

  it('llama3 rope scaling keeps high frequencies and divides low ones by the factor', () => {
    const scaling = { type: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
    const base = ropeInverseFrequencies({ headDim: 128, ropeDim: 128, theta: 500000, layout: 'rotate-half', scaling: null });
    const scaled = ropeInverseFrequencies({ headDim: 128, ropeDim: 128, theta: 500000, layout: 'rotate-half', scaling });
    expect(scaled[0]).toBe(base[0]); // wavelength 2π < 8192/4
    expect(scaled[63]).toBeCloseTo((base[63] as number) / 8, 12); // wavelength > 8192
    const mid = scaled.findIndex((f, i) => f !== base[i] && Math.abs(f - (base[i] as number) / 8) > 1e-15);
    expect(mid).toBeGreaterThan(0); // a smoothly blended band exists between the two
  });
});

/**
 * Paged attention against dense attention written out directly, on random inputs with
 * ragged per-head lengths and slots in shuffled order (as after compaction).
 */
describe('CpuBackend paged attention', () => {
  it('matches dense causal attention and records the metric with each row its own settings', () => {
    fc.assert(
      fc.property(
        fc.record({
          kvHeads: fc.integer({ min: 1, max: 3 }),
          group: fc.integer({ min: 1, max: 3 }),
          headDim: fc.constantFrom(1, 4, 8),
          blockSize: fc.constantFrom(1, 4, 16),
          tokens: fc.integer({ min: 1, max: 40 }),
          evictFrac: fc.double({ min: 0, max: 0.7, noNaN: true }),
          seed: fc.integer(),
          square: fc.boolean(),
          metricBuffer: fc.integer({ min: 0, max: 3 }),
          // The second row: recorded or not, with its own aggregation and buffer (another policy).
          recordSecond: fc.boolean(),
          secondSquare: fc.boolean(),
          secondMetricBuffer: fc.integer({ min: 0, max: 3 }),
        }),
        (c) => {
          const rand = rng(c.seed);
          const heads = c.kvHeads * c.group;
          const d = c.headDim;
          const shape = { layers: 1, kvHeads: c.kvHeads, headDim: d, queryHeadsPerKvHead: c.group };
          const a = new PageAllocator({
            shape,
            numBlocks: c.kvHeads * Math.ceil(c.tokens / c.blockSize) + 2,
            blockSize: c.blockSize,
            maxSequences: 2,
            maxContext: c.tokens,
          });
          const seq = a.addSequence();
          const slots = new Int32Array(c.kvHeads * c.tokens);
          a.appendTokens(seq, c.tokens, slots);
          const b = new CpuBackend();
          b.createKvCache(a.numSlots, d, 'f32');
          const k = b.createBuffer(c.tokens * c.kvHeads * d);
          const v = b.createBuffer(c.tokens * c.kvHeads * d);
          const K = Float32Array.from({ length: c.tokens * c.kvHeads * d }, rand);
          const V = Float32Array.from({ length: c.tokens * c.kvHeads * d }, rand);
          b.write(k, K);
          b.write(v, V);
          const slotBuf = b.createBuffer(slots.length, 'i32');
          b.write(slotBuf, slots);
          b.appendKv(0, k, v, slotBuf, c.tokens, c.kvHeads);
          // Evict a random subset per head (ragged lengths) and compact (shuffles slots).
          const plan = a.createEvictionPlan();
          plan.reset(seq);
          const kept: boolean[][] = [];
          for (let g = 0; g < c.kvHeads; g++) {
            kept.push([]);
            for (let t = 0; t < c.tokens; t++) {
              const evict = t < c.tokens - 1 && rand() + 0.5 < c.evictFrac;
              (kept[g] as boolean[]).push(!evict);
              if (evict) plan.add(g, slots[g * c.tokens + t] as number);
            }
          }
          const moves = new SlotMoveList(a.maxSlotsPerSequence);
          a.compact(plan, moves);
          b.executeMoves(moves);
          // One query row at the last position, one at a middle position.
          const qPositions = [c.tokens - 1, Math.floor((c.tokens - 1) / 2)];
          const rows = qPositions.length;
          const Q = Float32Array.from({ length: rows * heads * d }, rand);
          const q = b.createBuffer(Q.length);
          b.write(q, Q);
          const out = b.createBuffer(Q.length);
          const seqBuf = b.createBuffer(rows, 'i32');
          b.write(seqBuf, new Int32Array(rows).fill(seq));
          const posBuf = b.createBuffer(rows, 'i32');
          b.write(posBuf, Int32Array.from(qPositions));
          const metrics = new Float32Array(a.numSlots);
          // Row 0: mean over the group; row 1: sum.
          const rowSquare = [c.square, c.secondSquare];
          const rowGroupScale = [1 / c.group, 1];
          const rowMetricBuffer = [c.metricBuffer, c.secondMetricBuffer];
          const recorded = [true, c.recordSecond];
          b.attention(out, q, 0, { rows, sequences: seqBuf, positions: posBuf }, a, heads, c.kvHeads, {
            values: metrics,
            rowFlags: Uint8Array.from(recorded, (x) => (x ? 1 : 0)),
            rowSquare: Uint8Array.from(rowSquare, (x) => (x ? 1 : 0)),
            rowGroupScale: Float32Array.from(rowGroupScale),
            rowMetricBuffer: Int32Array.from(rowMetricBuffer),
          });
          // Dense reference over the kept tokens, by position.
          const expectedMetric = new Float64Array(c.kvHeads * c.tokens);
          for (let r = 0; r < rows; r++) {
            const p = qPositions[r] as number;
            for (let h = 0; h < heads; h++) {
              const g = Math.floor(h / c.group);
              const keys: number[] = [];
              for (let t = 0; t <= p; t++) if ((kept[g] as boolean[])[t]) keys.push(t);
              const scores = keys.map((t) => {
                let s = 0;
                for (let i = 0; i < d; i++) s += (Q[(r * heads + h) * d + i] as number) * (K[(t * c.kvHeads + g) * d + i] as number);
                return s / Math.sqrt(d);
              });
              const max = Math.max(...scores);
              const e = scores.map((s) => Math.exp(s - max));
              const sum = e.reduce((x, y) => x + y, 0);
              for (let i = 0; i < d; i++) {
                let acc = 0;
                keys.forEach((t, j) => {
                  acc += ((e[j] as number) / sum) * (V[(t * c.kvHeads + g) * d + i] as number);
                });
                expect(Math.abs(((out as CpuBuffer).f32[(r * heads + h) * d + i] as number) - acc)).toBeLessThan(1e-5);
              }
              if (recorded[r] === true) {
                keys.forEach((t, j) => {
                  const prob = (e[j] as number) / sum;
                  if (p - t >= (rowMetricBuffer[r] as number))
                    expectedMetric[g * c.tokens + t] =
                      (expectedMetric[g * c.tokens + t] as number) + (rowSquare[r] ? prob * prob : prob) * (rowGroupScale[r] as number);
                });
              }
            }
          }
          for (let g = 0; g < c.kvHeads; g++) {
            for (let i = 0; i < a.length(seq, 0, g); i++) {
              const slot = a.slot(seq, 0, g, i);
              const t = a.slotPositions[slot] as number;
              expect(Math.abs((metrics[slot] as number) - (expectedMetric[g * c.tokens + t] as number))).toBeLessThan(1e-5);
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('f16 cache storage rounds K and V to half precision', () => {
    const b = new CpuBackend();
    b.createKvCache(4, 1, 'f16');
    const k = b.createBuffer(1);
    b.write(k, new Float32Array([0.1]));
    const slots = b.createBuffer(1, 'i32');
    b.write(slots, new Int32Array([2]));
    b.appendKv(0, k, k, slots, 1, 1);
    expect(b.k[2]).toBe(0.0999755859375);
  });
});
