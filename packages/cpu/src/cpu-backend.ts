import {
  type AttentionRows,
  argmax,
  assertInteger,
  type Backend,
  type DeviceBuffer,
  type DeviceWeight,
  dequantize,
  elementCount,
  InvalidArgumentError,
  type KvDtype,
  type MetricRecording,
  matmulEachInTurn,
  type PagedCacheView,
  type RopeSettings,
  ropeInverseFrequencies,
  type SlotMoveList,
  type Tensor,
  UnsupportedModelError,
} from '@kvcompress/core';

/** A host buffer: the TypedArray itself. */
export class CpuBuffer implements DeviceBuffer {
  readonly kind: 'f32' | 'i32';
  readonly data: Float32Array | Int32Array;

  constructor(length: number, kind: 'f32' | 'i32') {
    this.kind = kind;
    this.data = kind === 'f32' ? new Float32Array(length) : new Int32Array(length);
  }

  get length(): number {
    return this.data.length;
  }

  get f32(): Float32Array {
    return this.data as Float32Array;
  }

  get i32(): Int32Array {
    return this.data as Int32Array;
  }
}

/** A weight, dequantised to f32 on upload: [rows][cols] row-major (a vector is one row). */
export class CpuWeight implements DeviceWeight {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
  readonly rows: number;
  readonly cols: number;

  constructor(name: string, shape: readonly number[], data: Float32Array) {
    this.name = name;
    this.shape = shape;
    this.data = data;
    this.cols = shape[shape.length - 1] ?? 1;
    this.rows = data.length / this.cols;
  }
}

/** Rounds to the nearest f16 value (what an f16 cache would store), returned as f32. */
const f16Scratch = new Float32Array(1);
function roundToF16(x: number): number {
  // Math.f16round is in Node >= 22 (ES2025); fall back to f32 where it is missing.
  const f16round = (Math as { f16round?: (v: number) => number }).f16round;
  if (f16round !== undefined) return f16round(x);
  f16Scratch[0] = x;
  return f16Scratch[0] as number;
}

/**
 * The reference Backend: plain loops over TypedArrays, written to be read. Every WebGPU
 * kernel is tested against it. Scratch grows only when a step needs more than any before,
 * so steady-state decode allocates nothing.
 */
export class CpuBackend implements Backend {
  readonly name = 'cpu';
  /** K and V of every slot: Float32 [numSlots][headDim]. */
  k = new Float32Array(0);
  v = new Float32Array(0);
  headDim = 0;
  kvDtype: KvDtype = 'f32';
  #scores = new Float64Array(0);
  #acc = new Float64Array(0);
  #ropeCos = new Float64Array(0);
  #ropeSin = new Float64Array(0);
  #ropeInv = new WeakMap<RopeSettings, Float64Array>();

  uploadWeight(tensor: Tensor): DeviceWeight {
    if (tensor.shape.length < 1 || tensor.shape.length > 2) {
      throw new UnsupportedModelError(`Weight ${tensor.name} has ${tensor.shape.length} dimensions; expected a vector or a matrix.`);
    }
    const n = elementCount(tensor.shape);
    const data = dequantize(tensor, new Float32Array(n));
    return new CpuWeight(tensor.name, tensor.shape, data);
  }

  createBuffer(length: number, kind: 'f32' | 'i32' = 'f32'): DeviceBuffer {
    assertInteger('buffer length', length, 0);
    return new CpuBuffer(length, kind);
  }

  write(buffer: DeviceBuffer, data: Float32Array | Int32Array, offset = 0, length = data.length): void {
    const b = buffer as CpuBuffer;
    if (offset < 0 || length > data.length || offset + length > b.length) throw new InvalidArgumentError('write out of range');
    const dst = b.data;
    // Element loop rather than set(subarray): no view object per call on the decode path.
    for (let i = 0; i < length; i++) dst[offset + i] = data[i] as number;
  }

  async read(buffer: DeviceBuffer, out: Float32Array | Int32Array, offset = 0, length = out.length): Promise<void> {
    this.readSync(buffer, out, offset, length);
  }

  readSync(buffer: DeviceBuffer, out: Float32Array | Int32Array, offset = 0, length = out.length): void {
    const b = buffer as CpuBuffer;
    if (offset < 0 || length > out.length || offset + length > b.length) throw new InvalidArgumentError('read out of range');
    const src = b.data;
    for (let i = 0; i < length; i++) out[i] = src[offset + i] as number;
  }

  createKvCache(numSlots: number, headDim: number, dtype: KvDtype): void {
    assertInteger('numSlots', numSlots, 1);
    assertInteger('headDim', headDim, 1);
    this.k = new Float32Array(numSlots * headDim);
    this.v = new Float32Array(numSlots * headDim);
    this.headDim = headDim;
    this.kvDtype = dtype;
  }

  embed(out: DeviceBuffer, table: DeviceWeight, tokens: DeviceBuffer, rows: number): void {
    const o = (out as CpuBuffer).f32;
    const t = table as CpuWeight;
    const ids = (tokens as CpuBuffer).i32;
    const dim = t.cols;
    for (let r = 0; r < rows; r++) {
      const id = ids[r] as number;
      if (id < 0 || id >= t.rows) throw new InvalidArgumentError(`Token id ${id} is outside the vocabulary (${t.rows}).`);
      const src = id * dim;
      const dst = r * dim;
      for (let i = 0; i < dim; i++) o[dst + i] = t.data[src + i] as number;
    }
  }

  addRmsNorm(out: DeviceBuffer, x: DeviceBuffer, delta: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void {
    if (out === x || out === delta)
      throw new InvalidArgumentError('addRmsNorm writes x and out: give out a buffer of its own (not x or delta).');
    this.add(x, x, delta, rows * dim);
    this.rmsNorm(out, x, weight, rows, dim, eps);
  }

  rmsNorm(out: DeviceBuffer, x: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void {
    const o = (out as CpuBuffer).f32;
    const xs = (x as CpuBuffer).f32;
    const w = (weight as CpuWeight).data;
    for (let r = 0; r < rows; r++) {
      const base = r * dim;
      let ss = 0;
      for (let i = 0; i < dim; i++) {
        const v = xs[base + i] as number;
        ss += v * v;
      }
      const scale = 1 / Math.sqrt(ss / dim + eps);
      for (let i = 0; i < dim; i++) o[base + i] = (xs[base + i] as number) * scale * (w[i] as number);
    }
  }

  matmulEach(
    outs: readonly DeviceBuffer[],
    x: DeviceBuffer,
    ws: readonly DeviceWeight[],
    rows: number,
    biases?: readonly (DeviceWeight | undefined)[],
  ): void {
    matmulEachInTurn(this, outs, x, ws, rows, biases);
  }

  matmulSiluMul(out: DeviceBuffer, x: DeviceBuffer, gate: DeviceWeight, up: DeviceWeight, rows: number): void {
    if (out === x) throw new InvalidArgumentError('matmulSiluMul reads x while it writes out: give out a buffer of its own.');
    const n = rows * (up as CpuWeight).rows;
    // The up projection's scratch, grown (never per step once a batch size has been seen).
    if (this.#upScratch.length < n) this.#upScratch = new CpuBuffer(n, 'f32');
    this.matmul(out, x, gate, rows);
    this.matmul(this.#upScratch, x, up, rows);
    this.siluMul(out, out, this.#upScratch, n);
  }
  #upScratch = new CpuBuffer(0, 'f32');

  matmul(out: DeviceBuffer, x: DeviceBuffer, w: DeviceWeight, rows: number, bias?: DeviceWeight): void {
    const o = (out as CpuBuffer).f32;
    const xs = (x as CpuBuffer).f32;
    const wt = w as CpuWeight;
    const W = wt.data;
    const inDim = wt.cols;
    const outDim = wt.rows;
    const b = bias === undefined ? null : (bias as CpuWeight).data;
    // Prefill (many rows): 4 rows x 4 outputs at a time, so each loaded x and W value feeds
    // four products (a plain dot per output loads two values per product). JS sums in f64,
    // so the order change is invisible after rounding to f32.
    const rows4 = rows >= 4 ? rows - (rows % 4) : 0;
    if (rows4 > 0) this.#matmulRows4(o, xs, W, rows4, inDim, outDim, b);
    const n4 = inDim - (inDim % 4);
    for (let r = rows4; r < rows; r++) {
      const xb = r * inDim;
      const ob = r * outDim;
      for (let j = 0; j < outDim; j++) {
        const wb = j * inDim;
        // Four partial sums: shorter dependency chains, and the same order on every run.
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        let s3 = 0;
        let i = 0;
        for (; i < n4; i += 4) {
          s0 += (xs[xb + i] as number) * (W[wb + i] as number);
          s1 += (xs[xb + i + 1] as number) * (W[wb + i + 1] as number);
          s2 += (xs[xb + i + 2] as number) * (W[wb + i + 2] as number);
          s3 += (xs[xb + i + 3] as number) * (W[wb + i + 3] as number);
        }
        for (; i < inDim; i++) s0 += (xs[xb + i] as number) * (W[wb + i] as number);
        o[ob + j] = s0 + s1 + (s2 + s3) + (b === null ? 0 : (b[j] as number));
      }
    }
  }

  /** out[r][j] = x[r] . W[j] (+ bias[j]) for r < rows4 (a multiple of 4): the 4x4 register-blocked loop of matmul. */
  #matmulRows4(
    o: Float32Array,
    xs: Float32Array,
    W: Float32Array,
    rows4: number,
    inDim: number,
    outDim: number,
    b: Float32Array | null,
  ): void {
    const out4 = outDim - (outDim % 4);
    for (let r = 0; r < rows4; r += 4) {
      const x0 = r * inDim;
      const x1 = x0 + inDim;
      const x2 = x1 + inDim;
      const x3 = x2 + inDim;
      const o0 = r * outDim;
      for (let j = 0; j < outDim; j += 4) {
        if (j >= out4) {
          // The last outDim % 4 outputs, one at a time.
          for (let jj = j; jj < outDim; jj++) {
            const w = jj * inDim;
            let s0 = 0;
            let s1 = 0;
            let s2 = 0;
            let s3 = 0;
            for (let i = 0; i < inDim; i++) {
              const wv = W[w + i] as number;
              s0 += (xs[x0 + i] as number) * wv;
              s1 += (xs[x1 + i] as number) * wv;
              s2 += (xs[x2 + i] as number) * wv;
              s3 += (xs[x3 + i] as number) * wv;
            }
            const bj = b === null ? 0 : (b[jj] as number);
            o[o0 + jj] = s0 + bj;
            o[o0 + outDim + jj] = s1 + bj;
            o[o0 + 2 * outDim + jj] = s2 + bj;
            o[o0 + 3 * outDim + jj] = s3 + bj;
          }
          break;
        }
        const w0 = j * inDim;
        const w1 = w0 + inDim;
        const w2 = w1 + inDim;
        const w3 = w2 + inDim;
        let a00 = 0;
        let a01 = 0;
        let a02 = 0;
        let a03 = 0;
        let a10 = 0;
        let a11 = 0;
        let a12 = 0;
        let a13 = 0;
        let a20 = 0;
        let a21 = 0;
        let a22 = 0;
        let a23 = 0;
        let a30 = 0;
        let a31 = 0;
        let a32 = 0;
        let a33 = 0;
        for (let i = 0; i < inDim; i++) {
          const p = xs[x0 + i] as number;
          const q = xs[x1 + i] as number;
          const u = xs[x2 + i] as number;
          const v = xs[x3 + i] as number;
          const c0 = W[w0 + i] as number;
          const c1 = W[w1 + i] as number;
          const c2 = W[w2 + i] as number;
          const c3 = W[w3 + i] as number;
          a00 += p * c0;
          a01 += p * c1;
          a02 += p * c2;
          a03 += p * c3;
          a10 += q * c0;
          a11 += q * c1;
          a12 += q * c2;
          a13 += q * c3;
          a20 += u * c0;
          a21 += u * c1;
          a22 += u * c2;
          a23 += u * c3;
          a30 += v * c0;
          a31 += v * c1;
          a32 += v * c2;
          a33 += v * c3;
        }
        const b0 = b === null ? 0 : (b[j] as number);
        const b1 = b === null ? 0 : (b[j + 1] as number);
        const b2 = b === null ? 0 : (b[j + 2] as number);
        const b3 = b === null ? 0 : (b[j + 3] as number);
        let k = o0 + j;
        o[k] = a00 + b0;
        o[k + 1] = a01 + b1;
        o[k + 2] = a02 + b2;
        o[k + 3] = a03 + b3;
        k += outDim;
        o[k] = a10 + b0;
        o[k + 1] = a11 + b1;
        o[k + 2] = a12 + b2;
        o[k + 3] = a13 + b3;
        k += outDim;
        o[k] = a20 + b0;
        o[k + 1] = a21 + b1;
        o[k + 2] = a22 + b2;
        o[k + 3] = a23 + b3;
        k += outDim;
        o[k] = a30 + b0;
        o[k + 1] = a31 + b1;
        o[k + 2] = a32 + b2;
        o[k + 3] = a33 + b3;
      }
    }
  }

  rope(x: DeviceBuffer, positions: DeviceBuffer, rows: number, heads: number, rope: RopeSettings): void {
    const xs = (x as CpuBuffer).f32;
    const pos = (positions as CpuBuffer).i32;
    let inv = this.#ropeInv.get(rope);
    if (inv === undefined) {
      inv = ropeInverseFrequencies(rope);
      this.#ropeInv.set(rope, inv);
    }
    const half = rope.ropeDim / 2;
    if (this.#ropeCos.length < half) {
      this.#ropeCos = new Float64Array(half);
      this.#ropeSin = new Float64Array(half);
    }
    const cos = this.#ropeCos;
    const sin = this.#ropeSin;
    const { headDim } = rope;
    const interleaved = rope.layout === 'interleaved';
    for (let r = 0; r < rows; r++) {
      const p = pos[r] as number;
      for (let i = 0; i < half; i++) {
        const angle = p * (inv[i] as number);
        cos[i] = Math.cos(angle);
        sin[i] = Math.sin(angle);
      }
      for (let h = 0; h < heads; h++) {
        const base = (r * heads + h) * headDim;
        for (let i = 0; i < half; i++) {
          const a = interleaved ? base + 2 * i : base + i;
          const b = interleaved ? a + 1 : a + half;
          const x0 = xs[a] as number;
          const x1 = xs[b] as number;
          const c = cos[i] as number;
          const s = sin[i] as number;
          xs[a] = x0 * c - x1 * s;
          xs[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  siluMul(out: DeviceBuffer, gate: DeviceBuffer, up: DeviceBuffer, n: number): void {
    const o = (out as CpuBuffer).f32;
    const g = (gate as CpuBuffer).f32;
    const u = (up as CpuBuffer).f32;
    for (let i = 0; i < n; i++) {
      const x = g[i] as number;
      o[i] = (x / (1 + Math.exp(-x))) * (u[i] as number);
    }
  }

  add(out: DeviceBuffer, a: DeviceBuffer, b: DeviceBuffer, n: number): void {
    const o = (out as CpuBuffer).f32;
    const x = (a as CpuBuffer).f32;
    const y = (b as CpuBuffer).f32;
    for (let i = 0; i < n; i++) o[i] = (x[i] as number) + (y[i] as number);
  }

  gatherRows(out: DeviceBuffer, x: DeviceBuffer, rows: DeviceBuffer, count: number, dim: number): void {
    const o = (out as CpuBuffer).f32;
    const xs = (x as CpuBuffer).f32;
    const idx = (rows as CpuBuffer).i32;
    for (let i = 0; i < count; i++) {
      const src = (idx[i] as number) * dim;
      const dst = i * dim;
      for (let c = 0; c < dim; c++) o[dst + c] = xs[src + c] as number;
    }
  }

  argmax(out: DeviceBuffer, logits: DeviceBuffer, rows: number, vocab: number): void {
    const o = (out as CpuBuffer).i32;
    const x = (logits as CpuBuffer).f32;
    for (let r = 0; r < rows; r++) o[r] = argmax(x, r * vocab, vocab);
  }

  appendKv(layer: number, k: DeviceBuffer, v: DeviceBuffer, slots: DeviceBuffer, rows: number, kvHeads: number): void {
    const ks = (k as CpuBuffer).f32;
    const vs = (v as CpuBuffer).f32;
    const sl = (slots as CpuBuffer).i32;
    const d = this.headDim;
    const f16 = this.kvDtype === 'f16';
    for (let h = 0; h < kvHeads; h++) {
      const sBase = (layer * kvHeads + h) * rows;
      for (let r = 0; r < rows; r++) {
        const slot = sl[sBase + r] as number;
        const src = (r * kvHeads + h) * d;
        const dst = slot * d;
        for (let i = 0; i < d; i++) {
          const kv = ks[src + i] as number;
          const vv = vs[src + i] as number;
          this.k[dst + i] = f16 ? roundToF16(kv) : kv;
          this.v[dst + i] = f16 ? roundToF16(vv) : vv;
        }
      }
    }
  }

  attention(
    out: DeviceBuffer,
    q: DeviceBuffer,
    layer: number,
    batch: AttentionRows,
    cache: PagedCacheView,
    heads: number,
    kvHeads: number,
    metrics?: MetricRecording,
  ): void {
    const o = (out as CpuBuffer).f32;
    const qs = (q as CpuBuffer).f32;
    const seqs = (batch.sequences as CpuBuffer).i32;
    const positions = (batch.positions as CpuBuffer).i32;
    const d = this.headDim;
    const group = heads / kvHeads;
    const B = cache.blockSize;
    const scale = 1 / Math.sqrt(d);
    const K = this.k;
    const V = this.v;
    const slotPos = cache.slotPositions;
    const maxLen = cache.maxBlocksPerHead * B;
    if (this.#scores.length < maxLen) this.#scores = new Float64Array(maxLen);
    if (this.#acc.length < d) this.#acc = new Float64Array(d);
    const scores = this.#scores;
    const acc = this.#acc;
    for (let r = 0; r < batch.rows; r++) {
      const seq = seqs[r] as number;
      const qPos = positions[r] as number;
      const record = metrics !== undefined && metrics.rowFlags[r] === 1;
      // This row's metric settings (its sequence's policy); read only when recording.
      const square = record && metrics.rowSquare[r] === 1;
      const groupScale = record ? (metrics.rowGroupScale[r] as number) : 0;
      const metricBuffer = record ? (metrics.rowMetricBuffer[r] as number) : 0;
      for (let g = 0; g < kvHeads; g++) {
        const hi = (layer * cache.maxSequences + seq) * kvHeads + g;
        const len = cache.headLengths[hi] as number;
        const t0 = hi * cache.maxBlocksPerHead;
        for (let qi = 0; qi < group; qi++) {
          const h = g * group + qi;
          const qBase = (r * heads + h) * d;
          // Scores over this head's slots, in logical order; later positions are masked.
          let max = Number.NEGATIVE_INFINITY;
          for (let i = 0; i < len; i++) {
            const j = (i / B) | 0;
            const slot = (cache.blockTables[t0 + j] as number) * B + (i - j * B);
            if ((slotPos[slot] as number) > qPos) {
              scores[i] = Number.NEGATIVE_INFINITY;
              continue;
            }
            const kBase = slot * d;
            let dot = 0;
            for (let c = 0; c < d; c++) dot += (qs[qBase + c] as number) * (K[kBase + c] as number);
            const s = dot * scale;
            scores[i] = s;
            if (s > max) max = s;
          }
          let sum = 0;
          for (let i = 0; i < len; i++) {
            const e = scores[i] === Number.NEGATIVE_INFINITY ? 0 : Math.exp((scores[i] as number) - max);
            scores[i] = e;
            sum += e;
          }
          acc.fill(0, 0, d);
          const inv = sum > 0 ? 1 / sum : 0;
          for (let i = 0; i < len; i++) {
            const p = (scores[i] as number) * inv;
            if (p === 0) continue;
            const j = (i / B) | 0;
            const slot = (cache.blockTables[t0 + j] as number) * B + (i - j * B);
            const vBase = slot * d;
            for (let c = 0; c < d; c++) acc[c] = (acc[c] as number) + p * (V[vBase + c] as number);
            if (record && qPos - (slotPos[slot] as number) >= metricBuffer) {
              metrics.values[slot] = (metrics.values[slot] as number) + (square ? p * p : p) * groupScale;
            }
          }
          for (let c = 0; c < d; c++) o[qBase + c] = acc[c] as number;
        }
      }
    }
  }

  executeMoves(moves: SlotMoveList): void {
    const d = this.headDim;
    for (let m = 0; m < moves.count; m++) {
      const src = (moves.src[m] as number) * d;
      const dst = (moves.dst[m] as number) * d;
      this.k.copyWithin(dst, src, src + d);
      this.v.copyWithin(dst, src, src + d);
    }
  }
}
