// Declarative kernel conformance cases: each performs the same calls on a backend and returns
// the outputs; the harness runs it on the CPU reference and on WebGPU (with fresh random
// inputs from a fixed seed) and compares. Runs in the browser (see browser-entry.ts).
import { type Backend, type DeviceBuffer, quantizeQ8_0, SlotMoveList, type Tensor } from '@kvcompress/core';
import { PageAllocator } from '@kvcompress/page-allocator';
import type { WebGpuBackendOptions } from '../src/webgpu-backend.ts';

export interface ConformanceCase {
  readonly name: string;
  /** Largest allowed max|gpu - cpu| / max|cpu| over every output. */
  readonly tolerance: number;
  /** How the WebGPU backend stores matrices for this case. */
  readonly weightStore?: 'f32' | 'f16' | 'q8' | 'auto';
  /** More WebGPU backend options (which matmul kernel, its tile), besides weightStore and subgroups. */
  readonly webgpu?: WebGpuBackendOptions;
  run(b: Backend): Promise<Float32Array[]>;
}

/** max|a - b| / max|b|: how far a backend's output is from the reference's. */
export function maxRelError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let diff = 0;
  let scale = 1e-6;
  for (let i = 0; i < b.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    diff = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(diff, d);
    scale = Math.max(scale, Math.abs(b[i] as number));
  }
  return diff / scale;
}

function rng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) | 0;
    return (s >>> 0) / 2 ** 32 - 0.5;
  };
}

function tensor(name: string, shape: number[], rand: () => number, dtype: 'f32' | 'f16' | 'q8_0' = 'f32'): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === 'q8_0') return { name, shape, dtype, data: quantizeQ8_0(Float32Array.from({ length: n }, rand)) };
  if (dtype === 'f32') {
    const values = Float32Array.from({ length: n }, rand);
    return { name, shape, dtype, data: new Uint8Array(values.buffer) };
  }
  const bits = new DataView(new ArrayBuffer(2 * n));
  for (let i = 0; i < n; i++) bits.setFloat16(2 * i, rand(), true);
  return { name, shape, dtype, data: new Uint8Array(bits.buffer) };
}

function upload(b: Backend, data: Float32Array | Int32Array, kind: 'f32' | 'i32' = 'f32'): DeviceBuffer {
  const buf = b.createBuffer(data.length, kind);
  b.write(buf, data);
  return buf;
}

async function read(b: Backend, buf: DeviceBuffer, n: number): Promise<Float32Array> {
  const out = new Float32Array(n);
  await b.read(buf, out);
  return out;
}

/** `kernel`: a label for `webgpu`, the WebGPU options that pick the matmul kernel. */
function matmulCase(
  rows: number,
  inDim: number,
  outDim: number,
  bias: boolean,
  dtype: 'f32' | 'f16' | 'q8_0',
  kernel?: { readonly label: string; readonly webgpu: WebGpuBackendOptions },
): ConformanceCase {
  return {
    name: `matmul ${rows}x${inDim}->${outDim}${bias ? ' +bias' : ''} (${dtype} weights${kernel === undefined ? '' : `, ${kernel.label}`})`,
    tolerance: 1e-5,
    // Q8_0 tensors stay Q8_0 under 'auto'.
    weightStore: dtype === 'q8_0' ? 'auto' : dtype,
    ...(kernel === undefined ? {} : { webgpu: kernel.webgpu }),
    async run(b) {
      const rand = rng(rows * 31 + inDim + outDim);
      const w = tensor('w', [outDim, inDim], rand, dtype);
      const bv = tensor('b', [outDim], rand);
      const x = Float32Array.from({ length: rows * inDim }, rand);
      const out = b.createBuffer(rows * outDim);
      b.matmul(out, upload(b, x), b.uploadWeight(w), rows, bias ? b.uploadWeight(bv) : undefined);
      return [await read(b, out, rows * outDim)];
    },
  };
}

/** matmulEach over matrices of `outDims` rows (and biases with `bias`); `kernel` as matmulCase's. */
function matmulEachCase(
  rows: number,
  inDim: number,
  outDims: readonly number[],
  bias: boolean,
  dtype: 'f32' | 'f16' | 'q8_0',
  kernel?: { readonly label: string; readonly webgpu: WebGpuBackendOptions },
): ConformanceCase {
  return {
    name: `matmul-each ${rows}x${inDim}->${outDims.join('+')}${bias ? ' +bias' : ''} (${dtype} weights${kernel === undefined ? '' : `, ${kernel.label}`})`,
    tolerance: 1e-5,
    weightStore: dtype === 'q8_0' ? 'auto' : dtype,
    ...(kernel === undefined ? {} : { webgpu: kernel.webgpu }),
    async run(b) {
      const rand = rng(rows * 41 + inDim + outDims.length);
      const ws = outDims.map((o, i) => b.uploadWeight(tensor(`w${i}`, [o, inDim], rand, dtype)));
      const biases = bias ? outDims.map((o, i) => b.uploadWeight(tensor(`b${i}`, [o], rand))) : undefined;
      const x = upload(b, Float32Array.from({ length: rows * inDim }, rand));
      const outs = outDims.map((o) => b.createBuffer(rows * o));
      b.matmulEach(outs, x, ws, rows, biases);
      return Promise.all(outs.map((out, i) => read(b, out, rows * (outDims[i] as number))));
    },
  };
}

/** matmulSiluMul: silu(x · gateᵀ) * (x · upᵀ); `kernel` as matmulCase's. */
function matmulSiluMulCase(
  rows: number,
  inDim: number,
  outDim: number,
  dtype: 'f32' | 'f16' | 'q8_0',
  kernel?: { readonly label: string; readonly webgpu: WebGpuBackendOptions },
): ConformanceCase {
  return {
    name: `matmul-silu-mul ${rows}x${inDim}->${outDim} (${dtype} weights${kernel === undefined ? '' : `, ${kernel.label}`})`,
    tolerance: 1e-5,
    weightStore: dtype === 'q8_0' ? 'auto' : dtype,
    ...(kernel === undefined ? {} : { webgpu: kernel.webgpu }),
    async run(b) {
      const rand = rng(rows * 37 + inDim + outDim);
      const gate = b.uploadWeight(tensor('gate', [outDim, inDim], rand, dtype));
      const up = b.uploadWeight(tensor('up', [outDim, inDim], rand, dtype));
      const x = upload(b, Float32Array.from({ length: rows * inDim }, rand));
      const out = b.createBuffer(rows * outDim);
      b.matmulSiluMul(out, x, gate, up, rows);
      return [await read(b, out, rows * outDim)];
    },
  };
}

function ropeCase(layout: 'interleaved' | 'rotate-half'): ConformanceCase {
  return {
    name: `rope ${layout} with llama3 scaling`,
    tolerance: 1e-5,
    async run(b) {
      const rand = rng(11);
      const rows = 4;
      const heads = 3;
      const headDim = 16;
      const rope = {
        headDim,
        ropeDim: headDim,
        theta: 500000,
        layout,
        scaling: { type: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
      };
      const x = upload(b, Float32Array.from({ length: rows * heads * headDim }, rand));
      b.rope(x, upload(b, Int32Array.from([0, 1, 300, 1999]), 'i32'), rows, heads, rope);
      return [await read(b, x, rows * heads * headDim)];
    },
  };
}

function attentionCase(
  kvDtype: 'f32' | 'f16',
  kvHeads: number,
  group: number,
  headDim: number,
  tokens: number,
  blockSize: number,
): ConformanceCase {
  return {
    name: `paged attention ${kvDtype} KV, ${kvHeads} kv-heads x ${group} queries, D=${headDim}, ${tokens} tokens, B=${blockSize}, ragged after compaction, with metrics`,
    tolerance: kvDtype === 'f16' ? 2e-3 : 1e-5,
    async run(b) {
      const rand = rng(tokens * 7 + group);
      const heads = kvHeads * group;
      const shape = { layers: 2, kvHeads, headDim, queryHeadsPerKvHead: group };
      const units = 2 * kvHeads;
      const K = Float32Array.from({ length: tokens * kvHeads * headDim }, rand);
      const V = Float32Array.from({ length: tokens * kvHeads * headDim }, rand);
      const Q = Float32Array.from({ length: 5 * heads * headDim }, () => rand() * 3);
      const evictRand = rng(99);
      const evicted = Array.from({ length: units * tokens }, () => evictRand() < -0.2);
      const a = new PageAllocator({
        shape,
        numBlocks: 2 * units * Math.ceil(tokens / blockSize) + 4,
        blockSize,
        maxSequences: 3,
        maxContext: tokens,
      });
      b.createKvCache(a.numSlots, headDim, kvDtype);
      const seqs = [a.addSequence(), a.addSequence()];
      const moves = a.createMoveList();
      for (const seq of seqs) {
        const slots = new Int32Array(units * tokens);
        a.appendTokens(seq, tokens, slots);
        const slotBuf = upload(b, slots, 'i32');
        for (let layer = 0; layer < 2; layer++) b.appendKv(layer, upload(b, K), upload(b, V), slotBuf, tokens, kvHeads);
        const plan = a.createEvictionPlan();
        plan.reset(seq);
        for (let u = 0; u < units; u++) {
          for (let t = 0; t < tokens - 1; t++) if (evicted[u * tokens + t]) plan.add(u, slots[u * tokens + t] as number);
        }
        a.compact(plan, moves);
        b.executeMoves(moves);
        moves.clear();
      }
      // A prefill-like window of 3 rows of sequence 0, a decode row of sequence 1, and an
      // unrecorded row of sequence 0 at an earlier position.
      const rowsSeq = Int32Array.from([0, 0, 0, 1, 0]);
      const rowsPos = Int32Array.from([tokens - 3, tokens - 2, tokens - 1, tokens - 1, Math.floor(tokens / 2)]);
      const rows = 5;
      const metrics = new Float32Array(a.numSlots);
      const out = b.createBuffer(rows * heads * headDim);
      b.attention(
        out,
        upload(b, Q),
        1,
        { rows, sequences: upload(b, rowsSeq, 'i32'), positions: upload(b, rowsPos, 'i32') },
        a,
        heads,
        kvHeads,
        {
          values: metrics,
          rowFlags: Uint8Array.from([1, 1, 1, 1, 0]),
          rowSquare: Uint8Array.from([1, 1, 1, 1, 1]),
          rowGroupScale: Float32Array.from([1, 1, 1, 1, 1]),
          rowMetricBuffer: Int32Array.from([1, 1, 1, 1, 1]),
        },
      );
      const o = await read(b, out, rows * heads * headDim);
      if (b.deviceMetrics === true) await b.downloadMetrics?.(metrics);
      const m: number[] = [];
      for (const seq of seqs)
        for (let h = 0; h < kvHeads; h++) for (let i = 0; i < a.length(seq, 1, h); i++) m.push(metrics[a.slot(seq, 1, h, i)] as number);
      return [o, Float32Array.from(m)];
    },
  };
}

/**
 * A prefill chunk: `rows` consecutive rows of ONE sequence ending at position tokens - 1 (the
 * tiled prefill kernel's case on an unchunked pool), attending a head-ragged cache in which
 * random earlier slots were evicted by compaction, so key positions are not contiguous.
 * `record`: the last 5 rows record metrics (an observation window), else none.
 */
function prefillCase(
  kvDtype: 'f32' | 'f16',
  kvHeads: number,
  group: number,
  headDim: number,
  tokens: number,
  rows: number,
  record: boolean,
): ConformanceCase {
  return {
    name: `prefill attention ${kvDtype} KV, ${kvHeads} kv-heads x ${group} queries, D=${headDim}, ${rows} of ${tokens} tokens, ragged after compaction, ${record ? 'with' : 'no'} metrics`,
    tolerance: kvDtype === 'f16' ? 2e-3 : 1e-5,
    async run(b) {
      const rand = rng(tokens * 13 + group * 5 + headDim + rows);
      const heads = kvHeads * group;
      const shape = { layers: 2, kvHeads, headDim, queryHeadsPerKvHead: group };
      const units = 2 * kvHeads;
      const blockSize = 16;
      const K = Float32Array.from({ length: tokens * kvHeads * headDim }, rand);
      const V = Float32Array.from({ length: tokens * kvHeads * headDim }, rand);
      const Q = Float32Array.from({ length: rows * heads * headDim }, () => rand() * 3);
      const evictRand = rng(tokens + 7);
      const first = tokens - rows;
      const a = new PageAllocator({
        shape,
        numBlocks: units * Math.ceil(tokens / blockSize) + 4,
        blockSize,
        maxSequences: 2,
        maxContext: tokens,
      });
      b.createKvCache(a.numSlots, headDim, kvDtype);
      const seq = a.addSequence();
      const moves = a.createMoveList();
      const slots = new Int32Array(units * tokens);
      a.appendTokens(seq, tokens, slots);
      const slotBuf = upload(b, slots, 'i32');
      for (let layer = 0; layer < 2; layer++) b.appendKv(layer, upload(b, K), upload(b, V), slotBuf, tokens, kvHeads);
      // Evict about a third of each head's earlier slots (a different set per head), as
      // compaction of earlier chunks leaves them; the chunk's own keys stay.
      const plan = a.createEvictionPlan();
      plan.reset(seq);
      for (let u = 0; u < units; u++) {
        for (let t = 0; t < first; t++) if (evictRand() < -0.17) plan.add(u, slots[u * tokens + t] as number);
      }
      a.compact(plan, moves);
      b.executeMoves(moves);
      moves.clear();
      const rowsSeq = new Int32Array(rows).fill(seq);
      const rowsPos = Int32Array.from({ length: rows }, (_, r) => first + r);
      const metrics = new Float32Array(a.numSlots);
      const flags = Uint8Array.from({ length: rows }, (_, r) => (record && r >= rows - 5 ? 1 : 0));
      const out = b.createBuffer(rows * heads * headDim);
      b.attention(
        out,
        upload(b, Q),
        1,
        { rows, sequences: upload(b, rowsSeq, 'i32'), positions: upload(b, rowsPos, 'i32') },
        a,
        heads,
        kvHeads,
        {
          values: metrics,
          rowFlags: flags,
          rowSquare: new Uint8Array(rows).fill(1),
          rowGroupScale: new Float32Array(rows).fill(1),
          rowMetricBuffer: new Int32Array(rows).fill(1),
        },
      );
      const o = await read(b, out, rows * heads * headDim);
      if (b.deviceMetrics === true) await b.downloadMetrics?.(metrics);
      const m: number[] = [];
      for (let h = 0; h < kvHeads; h++) for (let i = 0; i < a.length(seq, 1, h); i++) m.push(metrics[a.slot(seq, 1, h, i)] as number);
      return [o, Float32Array.from(m)];
    },
  };
}

/** One row's metric settings in a per-row recording case. */
interface RowSettings {
  readonly record: boolean;
  readonly square: boolean;
  readonly groupScale: number;
  readonly metricBuffer: number;
}

/**
 * Decode attention where each row (each sequence, running its own policy) records its metric
 * its own way: L1 and L2 rows, group mean and group sum, different metric buffers, and an
 * unrecorded row with settings that would show if it were read. Three dispatches: layer 1,
 * layer 0 with the same settings (the backend may reuse its upload), then layer 1 with the
 * settings rotated between the rows (it must not).
 */
function perRowMetricCase(kvDtype: 'f32' | 'f16', kvHeads: number, group: number, headDim: number, tokens: number): ConformanceCase {
  const blockSize = 16;
  return {
    name: `decode attention ${kvDtype} KV, ${kvHeads} kv-heads x ${group} queries, D=${headDim}, ${tokens} tokens: per-row metric settings (L1/L2, sum/mean, metric buffers) in one dispatch`,
    tolerance: kvDtype === 'f16' ? 2e-3 : 1e-5,
    async run(b) {
      const rand = rng(tokens * 13 + group);
      const heads = kvHeads * group;
      const shape = { layers: 2, kvHeads, headDim, queryHeadsPerKvHead: group };
      const units = 2 * kvHeads;
      const sequences = 4;
      const a = new PageAllocator({
        shape,
        numBlocks: sequences * units * Math.ceil(tokens / blockSize) + 4,
        blockSize,
        maxSequences: sequences,
        maxContext: tokens,
      });
      b.createKvCache(a.numSlots, headDim, kvDtype);
      const moves = a.createMoveList();
      const evictRand = rng(7);
      for (let s = 0; s < sequences; s++) {
        const seq = a.addSequence();
        // Sequences of different lengths: tokens, tokens - 5, ...
        const length = tokens - 5 * s;
        const slots = new Int32Array(units * length);
        a.appendTokens(seq, length, slots);
        const slotBuf = upload(b, slots, 'i32');
        for (let layer = 0; layer < 2; layer++) {
          const K = Float32Array.from({ length: length * kvHeads * headDim }, rand);
          const V = Float32Array.from({ length: length * kvHeads * headDim }, rand);
          b.appendKv(layer, upload(b, K), upload(b, V), slotBuf, length, kvHeads);
        }
        const plan = a.createEvictionPlan();
        plan.reset(seq);
        for (let u = 0; u < units; u++) {
          for (let t = 0; t < length - 1; t++) if (evictRand() < -0.25) plan.add(u, slots[u * length + t] as number);
        }
        a.compact(plan, moves);
        b.executeMoves(moves);
        moves.clear();
      }
      // Sequence 0 has two rows (its last two positions, each recorded its own way), then one
      // decode row for each other sequence; sequence 3's row is not recorded.
      const rowsSeq = Int32Array.from([0, 0, 1, 2, 3]);
      const rowsPos = Int32Array.from([tokens - 2, tokens - 1, tokens - 6, tokens - 11, tokens - 16]);
      const rows = rowsSeq.length;
      const mean = 1 / group;
      const settings: RowSettings[] = [
        { record: true, square: true, groupScale: 1, metricBuffer: 0 },
        { record: true, square: false, groupScale: mean, metricBuffer: 2 },
        { record: true, square: true, groupScale: mean, metricBuffer: 1 },
        { record: true, square: false, groupScale: 1, metricBuffer: 3 },
        { record: false, square: true, groupScale: 100, metricBuffer: 0 },
      ];
      const recording = {
        values: new Float32Array(a.numSlots),
        // Sized for a larger step than this one, as the engine sizes them.
        rowFlags: new Uint8Array(8),
        rowSquare: new Uint8Array(8),
        rowGroupScale: new Float32Array(8),
        rowMetricBuffer: new Int32Array(8),
      };
      const fill = (rotate: number) => {
        for (let r = 0; r < rows; r++) {
          // The recorded rows trade settings; the unrecorded row stays unrecorded.
          const x = settings[r === rows - 1 ? r : (r + rotate) % (rows - 1)] as RowSettings;
          recording.rowFlags[r] = x.record ? 1 : 0;
          recording.rowSquare[r] = x.square ? 1 : 0;
          recording.rowGroupScale[r] = x.groupScale;
          recording.rowMetricBuffer[r] = x.metricBuffer;
        }
      };
      const Q = upload(
        b,
        Float32Array.from({ length: rows * heads * headDim }, () => rand() * 3),
      );
      const batch = { rows, sequences: upload(b, rowsSeq, 'i32'), positions: upload(b, rowsPos, 'i32') };
      const out = b.createBuffer(rows * heads * headDim);
      const outputs: Float32Array[] = [];
      for (const [layer, rotate] of [
        [1, 0],
        [0, 0],
        [1, 1],
      ] as const) {
        fill(rotate);
        b.attention(out, Q, layer, batch, a, heads, kvHeads, recording);
        outputs.push(await read(b, out, rows * heads * headDim));
      }
      if (b.deviceMetrics === true) await b.downloadMetrics?.(recording.values);
      const m: number[] = [];
      for (let seq = 0; seq < sequences; seq++)
        for (let layer = 0; layer < 2; layer++)
          for (let h = 0; h < kvHeads; h++)
            for (let i = 0; i < a.length(seq, layer, h); i++) m.push(recording.values[a.slot(seq, layer, h, i)] as number);
      return [...outputs, Float32Array.from(m)];
    },
  };
}

/** The blocked matmul off: the cases that cover the other kernels (matvec, tiled) at rows it would take. */
const BLOCKED_OFF = { label: 'blocked off', webgpu: { blockedMatmul: false } };

export const cases: readonly ConformanceCase[] = [
  matmulCase(1, 64, 96, false, 'f32'),
  // inDim a multiple of 8: the vectorised matvec kernel (R = 4, two row tiles).
  matmulCase(5, 24, 37, true, 'f32'),
  matmulCase(3, 172, 64, true, 'f32'),
  matmulCase(11, 30, 7, false, 'f32'),
  matmulCase(2, 64, 40, false, 'f16'),
  matmulCase(9, 128, 33, true, 'f16'),
  // inDim not a multiple of 8: the plain matmul kernel (any rows).
  matmulCase(33, 50, 64, false, 'f16'),
  // The blocked kernel off: the tiled kernel from 128 rows (256 with subgroups), matvec
  // below: partial row and column tiles, inDim not a multiple of 32.
  matmulCase(70, 96, 100, true, 'f32', BLOCKED_OFF),
  matmulCase(129, 256, 130, true, 'f16', BLOCKED_OFF),
  // Enough column tiles for the 64-row tile variant.
  matmulCase(65, 40, 16389, false, 'f16', BLOCKED_OFF),
  // Q8_0 weights: matvec (1, 5 and 9 rows), the tiled kernel (300 rows), with and without bias.
  matmulCase(1, 64, 96, false, 'q8_0'),
  matmulCase(5, 96, 36, true, 'q8_0'),
  matmulCase(9, 128, 40, false, 'q8_0'),
  matmulCase(300, 64, 70, true, 'q8_0', BLOCKED_OFF),
  // The blocked kernel: rows, outDim and inDim off the tile (inDim % 16 == 8: a half K step;
  // outDim % 4 != 0: a partial vec4 of columns), several tiles both ways, split K.
  matmulCase(131, 72, 200, true, 'f32', { label: 'blocked, 128-row tiles', webgpu: { blockedMatmulTileRows: 128 } }),
  matmulCase(100, 136, 250, true, 'f16', { label: 'blocked, 64-row tiles', webgpu: { blockedMatmulTileRows: 64 } }),
  matmulCase(257, 264, 96, false, 'f16', {
    label: 'blocked, 64-row tiles, K split in 3',
    webgpu: { blockedMatmulTileRows: 64, blockedMatmulSplitK: 3 },
  }),
  matmulCase(70, 96, 136, true, 'q8_0', { label: 'blocked, K split in 2', webgpu: { blockedMatmulSplitK: 2 } }),
  matmulCase(130, 160, 130, false, 'q8_0'),
  // The default split: one tile, K long enough for two ranges.
  matmulCase(64, 512, 64, false, 'f16'),
  // The default plan's row ranges: 128-row tiles, then a matvec tail or a 64-row tile.
  // 129 = 128 + a 1-row tail; 160 = 128 + a 64-row tile of 32 rows, K split in two in both
  // blocks (the second block's reduce starts at its first row); 136 = 128 + an 8-row tail
  // (outDim % 4 != 0: the tail on the plain matvec kernel); 132 with the tail capped at 4.
  matmulCase(129, 64, 72, true, 'f16'),
  matmulCase(160, 520, 36, false, 'f32'),
  matmulCase(136, 96, 130, true, 'q8_0'),
  matmulCase(132, 40, 64, true, 'f16', { label: 'tail of at most 4 rows', webgpu: { blockedMatmulTailRows: 4 } }),
  // The split matvec (with subgroups; the plain matvec without): K slices of uneven length
  // (65 steps in 8), rows past the batch dropped (6 of 8, 13 of 16), two row tiles of 16,
  // 8 outputs a subgroup, 1-4 strides together, and a 12-row tail after a 128-row tile.
  matmulCase(6, 520, 64, true, 'f16', {
    label: 'split matvec, K in 8, 4 strides, 8 outputs',
    webgpu: { matvecSplitK: 8, matvecUnroll: 4, matvecOutputs: 8 },
  }),
  matmulCase(16, 200, 36, false, 'f32', { label: 'split matvec, K in 2, 1 stride', webgpu: { matvecSplitK: 2, matvecUnroll: 1 } }),
  matmulCase(13, 96, 40, true, 'q8_0', { label: 'split matvec, K in 4', webgpu: { matvecSplitK: 4, matvecUnroll: 2 } }),
  matmulCase(20, 264, 48, true, 'f16', { label: 'split matvec, two tiles of 16 rows', webgpu: { blockedMatmul: false, matvecSplitK: 4 } }),
  matmulCase(140, 72, 64, false, 'f16', { label: 'a 12-row tail on the split matvec, K in 8', webgpu: { matvecSplitK: 8 } }),
  // The gated split matvec (gate and up read beside each other, silu-mul on the sums): K slices,
  // 8 outputs and 4 strides; Q8_0 (W2's scales at its own offset); a batch past the matvec
  // (two blocked matmuls and the silu-mul kernel); without subgroups all take the fallback.
  matmulSiluMulCase(6, 520, 64, 'f16', {
    label: 'K in 8, 4 strides, 8 outputs',
    webgpu: { matvecSplitK: 8, matvecUnroll: 4, matvecOutputs: 8 },
  }),
  matmulSiluMulCase(1, 96, 36, 'f32'),
  matmulSiluMulCase(5, 128, 40, 'q8_0', { label: 'K in 2', webgpu: { matvecSplitK: 2 } }),
  matmulSiluMulCase(40, 72, 48, 'f16'),
  // matmulEach: q, k and v stacked in one split-matvec dispatch (blocks of three matrices, uneven
  // sizes; two matrices; Q8_0; K split in 8 with 8 outputs a block), and the cases it leaves to
  // one matmul each (biases, a batch past the matvec, an outDim the block does not divide).
  matmulEachCase(6, 520, [64, 16, 16], false, 'f16'),
  matmulEachCase(3, 96, [40, 8], false, 'f32', { label: 'K in 4', webgpu: { matvecSplitK: 4 } }),
  matmulEachCase(5, 128, [32, 8, 8], false, 'q8_0'),
  matmulEachCase(13, 264, [96, 32, 32], false, 'f16', { label: 'K in 8, 8 outputs', webgpu: { matvecSplitK: 8, matvecOutputs: 8 } }),
  matmulEachCase(4, 64, [24, 8, 8], true, 'f32'),
  matmulEachCase(40, 72, [48, 16, 16], false, 'f16'),
  matmulEachCase(2, 64, [36, 8], false, 'f16', { label: '8 outputs asked, 36 rows', webgpu: { matvecOutputs: 8 } }),
  {
    name: 'embed, rmsnorm, silu-mul, add (in place and not), gather rows',
    tolerance: 1e-5,
    async run(b) {
      const rand = rng(9);
      const vocab = 50;
      const dim = 36;
      const rows = 5;
      const x = b.createBuffer(rows * dim);
      b.embed(x, b.uploadWeight(tensor('e', [vocab, dim], rand)), upload(b, Int32Array.from([3, 49, 0, 7, 3]), 'i32'), rows);
      const y = b.createBuffer(rows * dim);
      b.rmsNorm(y, x, b.uploadWeight(tensor('n', [dim], rand)), rows, dim, 1e-5);
      const o = upload(b, Float32Array.from({ length: rows * dim }, rand));
      const z = b.createBuffer(rows * dim);
      b.siluMul(z, y, o, rows * dim);
      b.add(z, z, o, rows * dim);
      const s = b.createBuffer(rows * dim);
      b.add(s, z, y, rows * dim);
      const g = b.createBuffer(2 * dim);
      b.gatherRows(g, s, upload(b, Int32Array.from([4, 1]), 'i32'), 2, dim);
      return [await read(b, x, rows * dim), await read(b, y, rows * dim), await read(b, z, rows * dim), await read(b, g, 2 * dim)];
    },
  },
  {
    name: 'add-rmsnorm (x += delta, then the norm) over rows of 300',
    tolerance: 1e-5,
    async run(b) {
      const rand = rng(23);
      const rows = 3;
      const dim = 300; // not a multiple of the 256 threads
      const x = upload(b, Float32Array.from({ length: rows * dim }, rand));
      const delta = upload(b, Float32Array.from({ length: rows * dim }, rand));
      const out = b.createBuffer(rows * dim);
      b.addRmsNorm(out, x, delta, b.uploadWeight(tensor('n', [dim], rand)), rows, dim, 1e-5);
      return [await read(b, out, rows * dim), await read(b, x, rows * dim)];
    },
  },
  {
    name: 'add-rmsnorm and matmul-silu-mul refuse an output that aliases an input (InvalidArgumentError)',
    tolerance: 1e-6,
    async run(b) {
      const x = b.createBuffer(8);
      const w = b.uploadWeight(tensor('w', [8, 8], rng(24)));
      const refused = (f: () => void) => {
        try {
          f();
        } catch (e) {
          if ((e as Error).name === 'InvalidArgumentError') return 1;
          throw e;
        }
        throw new Error('expected an InvalidArgumentError');
      };
      return [
        Float32Array.of(
          refused(() => b.addRmsNorm(x, x, b.createBuffer(8), w, 1, 8, 1e-5)),
          refused(() => b.matmulSiluMul(x, x, w, w, 1)),
        ),
      ];
    },
  },
  {
    name: 'argmax over 1000-wide rows, ties to the first index',
    // Ids compared as floats relative to the largest id: any differing id is >= 1e-3 off.
    tolerance: 1e-6,
    async run(b) {
      const rand = rng(21);
      const rows = 37;
      const vocab = 1000;
      const logits = Float32Array.from({ length: rows * vocab }, rand);
      // Row 1: a tie between indices 10 and 900; row 2: the maximum at the last index.
      logits[vocab + 10] = 5;
      logits[vocab + 900] = 5;
      logits[2 * vocab + vocab - 1] = 7;
      const out = b.createBuffer(rows, 'i32');
      b.argmax(out, upload(b, logits), rows, vocab);
      const ids = new Int32Array(rows);
      await b.read(out, ids);
      return [Float32Array.from(ids)];
    },
  },
  {
    name: 'argmax over 9001-wide rows (chunks in parallel, then reduced), ties to the first index',
    tolerance: 1e-6,
    async run(b) {
      const rand = rng(22);
      const rows = 5;
      const vocab = 9001; // three chunks of ARGMAX_CHUNK (4096), the last of 809
      const logits = Float32Array.from({ length: rows * vocab }, rand);
      // Row 0: a tie across chunks (100 and 5000) goes to 100; row 1: the maximum at the last
      // index; row 2: all equal (index 0); row 3: NaN at the front never wins; row 4: a tie
      // inside the last chunk (8200 and 9000).
      logits[100] = 5;
      logits[5000] = 5;
      logits[vocab + vocab - 1] = 7;
      logits.fill(-2, 2 * vocab, 3 * vocab);
      logits[3 * vocab] = Number.NaN;
      logits[3 * vocab + 4097] = 6;
      logits[4 * vocab + 8200] = 9;
      logits[4 * vocab + 9000] = 9;
      const out = b.createBuffer(rows, 'i32');
      b.argmax(out, upload(b, logits), rows, vocab);
      const ids = new Int32Array(rows);
      await b.read(out, ids);
      return [Float32Array.from(ids)];
    },
  },
  ropeCase('interleaved'),
  ropeCase('rotate-half'),
  attentionCase('f32', 2, 2, 8, 37, 4),
  attentionCase('f16', 3, 4, 16, 70, 16),
  attentionCase('f32', 1, 1, 32, 5, 2),
  attentionCase('f16', 2, 8, 64, 150, 16),
  // Longer than 1024 keys: the context is split across workgroups and reduced.
  attentionCase('f16', 2, 4, 16, 2100, 16),
  attentionCase('f32', 1, 2, 8, 3000, 4),
  // Head dim 128 (a 2 MiB pool), long enough for several wide-kernel splits.
  attentionCase('f16', 2, 4, 128, 1300, 16),
  // Group of 16 (the widest the wide kernel takes), and a head dim off the multiple of 8
  // (the tiled fallback kernel).
  attentionCase('f16', 1, 16, 32, 700, 16),
  attentionCase('f32', 2, 2, 20, 300, 16),
  perRowMetricCase('f32', 2, 4, 16, 70),
  // Prefill chunks (tiled prefill kernel): lengths not a multiple of the key or query tile.
  prefillCase('f32', 2, 1, 16, 37, 37, true),
  prefillCase('f16', 2, 4, 16, 37, 37, false),
  prefillCase('f16', 2, 4, 64, 150, 70, true),
  prefillCase('f32', 1, 4, 64, 150, 150, false),
  prefillCase('f32', 1, 4, 128, 300, 40, true),
  prefillCase('f16', 2, 1, 128, 300, 300, true),
  // Long enough for a split context and the wide kernel's several splits.
  perRowMetricCase('f16', 2, 2, 64, 1200),
  {
    name: 'cache moves carry K, V (f16) and metrics',
    tolerance: 1e-6,
    async run(b) {
      const rand = rng(3);
      b.createKvCache(8, 4, 'f16');
      const k = Float32Array.from({ length: 2 * 4 }, rand);
      b.appendKv(0, upload(b, k), upload(b, k), upload(b, Int32Array.from([1, 5]), 'i32'), 2, 1);
      const metrics = new Float32Array(8);
      metrics[1] = 0.25;
      metrics[5] = 0.5;
      b.uploadMetrics?.(Int32Array.from([1, 5]), Float32Array.from([0.25, 0.5]), 2);
      const moves = new SlotMoveList(2);
      moves.push(5, 2);
      b.executeMoves(moves);
      moves.applyTo(metrics); // the host store, for backends that keep metrics on the host
      if (b.deviceMetrics === true) await b.downloadMetrics?.(metrics);
      // Read the moved K back through attention with a one-hot query... simpler: attend with
      // a single slot: positions make slot 2 the only key, so out = V[2].
      const a = {
        blockSize: 8,
        maxSequences: 1,
        maxBlocksPerHead: 1,
        blockTables: Int32Array.from([0]),
        headLengths: Int32Array.from([3]),
        slotPositions: Int32Array.from([9, 9, 0, 9, 9, 9, 9, 9]),
      };
      const out = b.createBuffer(4);
      b.attention(
        out,
        upload(b, Float32Array.from([1, 0, 0, 0])),
        0,
        { rows: 1, sequences: upload(b, Int32Array.from([0]), 'i32'), positions: upload(b, Int32Array.from([0]), 'i32') },
        a,
        1,
        1,
      );
      return [await read(b, out, 4), metrics];
    },
  },
];
