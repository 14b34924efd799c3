/**
 * Conversion of stored weight tensors to float32, following ggml's block layouts exactly
 * (ggml-common.h, ggml-quants.c `dequantize_row_*`). Every value these formats can hold is
 * exactly representable in float32, so the results are bit-identical to ggml's.
 */
import { InvalidArgumentError, ModelFormatError } from './errors.ts';
import { elementCount, type Tensor, type TensorDtype } from './model.ts';

/** Values per block and bytes per block of each dtype. */
export const DTYPE_BLOCK: Readonly<Record<TensorDtype, { readonly values: number; readonly bytes: number }>> = {
  f32: { values: 1, bytes: 4 },
  f16: { values: 1, bytes: 2 },
  bf16: { values: 1, bytes: 2 },
  q8_0: { values: 32, bytes: 34 }, // f16 d, int8 qs[32]
  q4_0: { values: 32, bytes: 18 }, // f16 d, uint8 qs[16]
  q4_k: { values: 256, bytes: 144 }, // f16 d, f16 dmin, uint8 scales[12], uint8 qs[128]
  q6_k: { values: 256, bytes: 210 }, // uint8 ql[128], uint8 qh[64], int8 scales[16], f16 d
};

// ---------------------------------------------------------------------------------------
// Half and bfloat16 scalars
// ---------------------------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

let f16Table: Float32Array | null = null;

function computeF16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** All 65536 half values as float32 (built once, 256 KiB). */
export function f16Table32(): Float32Array {
  if (f16Table === null) {
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = computeF16(h);
    f16Table = t;
  }
  return f16Table;
}

/** IEEE half (as its 16 bits) to a number. Exact. */
export function f16ToF32(bits: number): number {
  return f16Table32()[bits & 0xffff]!;
}

/** A number to IEEE half bits, rounding to nearest even (what ggml's `GGML_FP32_TO_FP16` does). */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0); // inf / nan
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow to inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow to zero
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let m = mant >>> shift;
    if (rest > half || (rest === half && (m & 1) === 1)) m++;
    return sign | m; // may carry into the smallest normal, which is the right encoding
  }
  const rest = mant & 0x1fff;
  let h = sign | (e << 10) | (mant >>> 13);
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // may carry into exponent / inf: correct
  return h;
}

/** bfloat16 (as its 16 bits) to a number. Exact. */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** Half values (little-endian bytes or a Uint16Array) to float32. */
export function f16ArrayToF32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const t = f16Table32();
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]!]!;
  return out;
}

// ---------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------

/**
 * Bytes a tensor of `dtype` and row-major `shape` occupies. For block formats the last
 * dimension (the row length) must be a multiple of the block size, as in ggml.
 */
export function bytesForTensor(dtype: TensorDtype, shape: readonly number[]): number {
  const block = DTYPE_BLOCK[dtype];
  if (block === undefined) throw new InvalidArgumentError(`Unknown tensor dtype "${String(dtype)}".`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new InvalidArgumentError(`Tensor dimension must be a non-negative integer, got ${d}.`);
  }
  const n = elementCount(shape);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`Tensor shape [${shape.join(', ')}] has too many elements.`);
  const rowLength = shape.length === 0 ? 1 : shape[shape.length - 1]!;
  if (block.values > 1 && rowLength % block.values !== 0) {
    throw new InvalidArgumentError(
      `A ${dtype} tensor's row length must be a multiple of ${block.values}, got shape [${shape.join(', ')}].`,
    );
  }
  const bytes = (n / block.values) * block.bytes;
  if (!Number.isSafeInteger(bytes)) throw new InvalidArgumentError(`Tensor shape [${shape.join(', ')}] is too large.`);
  return bytes;
}

// ---------------------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------------------

/**
 * Decodes `count` values of `dtype` starting at byte `byteOffset` of `src` into
 * `out[outOffset ..]`. `count` must be a whole number of blocks. No bounds checks beyond
 * what the callers did; use `dequantize` / `dequantizeRows`.
 */
function decode(dtype: TensorDtype, src: Uint8Array, byteOffset: number, count: number, out: Float32Array, outOffset: number): void {
  switch (dtype) {
    case 'f32':
      decodeF32(src, byteOffset, count, out, outOffset);
      break;
    case 'f16':
      decodeF16(src, byteOffset, count, out, outOffset);
      break;
    case 'bf16':
      decodeBf16(src, byteOffset, count, out, outOffset);
      break;
    case 'q8_0':
      decodeQ8_0(src, byteOffset, count >>> 5, out, outOffset);
      break;
    case 'q4_0':
      decodeQ4_0(src, byteOffset, count >>> 5, out, outOffset);
      break;
    case 'q4_k':
      decodeQ4K(src, byteOffset, count / 256, out, outOffset);
      break;
    case 'q6_k':
      decodeQ6K(src, byteOffset, count / 256, out, outOffset);
      break;
  }
}

const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function decodeF32(src: Uint8Array, off: number, count: number, out: Float32Array, o: number): void {
  const start = src.byteOffset + off;
  if (littleEndian && start % 4 === 0) {
    out.set(new Float32Array(src.buffer, start, count), o);
    return;
  }
  const view = new DataView(src.buffer, start, count * 4);
  for (let i = 0; i < count; i++) out[o + i] = view.getFloat32(i * 4, true);
}

function decodeF16(src: Uint8Array, off: number, count: number, out: Float32Array, o: number): void {
  const t = f16Table32();
  for (let i = 0, p = off; i < count; i++, p += 2) out[o + i] = t[src[p]! | (src[p + 1]! << 8)]!;
}

function decodeBf16(src: Uint8Array, off: number, count: number, out: Float32Array, o: number): void {
  const u32 = new Uint32Array(out.buffer, out.byteOffset + o * 4, count);
  for (let i = 0, p = off; i < count; i++, p += 2) u32[i] = ((src[p]! | (src[p + 1]! << 8)) << 16) >>> 0;
}

function decodeQ8_0(src: Uint8Array, off: number, blocks: number, out: Float32Array, o: number): void {
  const t = f16Table32();
  for (let b = 0, p = off; b < blocks; b++, p += 34) {
    const d = t[src[p]! | (src[p + 1]! << 8)]!;
    const q = p + 2;
    for (let j = 0; j < 32; j++) out[o++] = ((src[q + j]! << 24) >> 24) * d;
  }
}

function decodeQ4_0(src: Uint8Array, off: number, blocks: number, out: Float32Array, o: number): void {
  const t = f16Table32();
  for (let b = 0, p = off; b < blocks; b++, p += 18, o += 32) {
    const d = t[src[p]! | (src[p + 1]! << 8)]!;
    const q = p + 2;
    for (let j = 0; j < 16; j++) {
      const x = src[q + j]!;
      out[o + j] = ((x & 0x0f) - 8) * d;
      out[o + j + 16] = ((x >> 4) - 8) * d;
    }
  }
}

function decodeQ4K(src: Uint8Array, off: number, blocks: number, out: Float32Array, o: number): void {
  const t = f16Table32();
  for (let b = 0, p = off; b < blocks; b++, p += 144) {
    const d = t[src[p]! | (src[p + 1]! << 8)]!;
    const dmin = t[src[p + 2]! | (src[p + 3]! << 8)]!;
    const s = p + 4; // scales[12]
    let q = p + 16; // qs[128]
    for (let is = 0; is < 8; is += 2) {
      // get_scale_min_k4(is, scales) and get_scale_min_k4(is + 1, scales)
      let sc1: number;
      let m1: number;
      let sc2: number;
      let m2: number;
      if (is < 4) {
        sc1 = src[s + is]! & 63;
        m1 = src[s + is + 4]! & 63;
        sc2 = src[s + is + 1]! & 63;
        m2 = src[s + is + 5]! & 63;
      } else {
        sc1 = (src[s + is + 4]! & 0xf) | ((src[s + is - 4]! >> 6) << 4);
        m1 = (src[s + is + 4]! >> 4) | ((src[s + is]! >> 6) << 4);
        sc2 = (src[s + is + 5]! & 0xf) | ((src[s + is - 3]! >> 6) << 4);
        m2 = (src[s + is + 5]! >> 4) | ((src[s + is + 1]! >> 6) << 4);
      }
      const d1 = d * sc1;
      const mm1 = dmin * m1;
      const d2 = d * sc2;
      const mm2 = dmin * m2;
      for (let l = 0; l < 32; l++) {
        const x = src[q + l]!;
        out[o + l] = d1 * (x & 0xf) - mm1;
        out[o + l + 32] = d2 * (x >> 4) - mm2;
      }
      q += 32;
      o += 64;
    }
  }
}

function decodeQ6K(src: Uint8Array, off: number, blocks: number, out: Float32Array, o: number): void {
  const t = f16Table32();
  for (let b = 0, p = off; b < blocks; b++, p += 210) {
    const d = t[src[p + 208]! | (src[p + 209]! << 8)]!;
    let ql = p;
    let qh = p + 128;
    let sc = p + 192;
    for (let n = 0; n < 2; n++) {
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = src[qh + l]!;
        const a = src[ql + l]!;
        const c = src[ql + l + 32]!;
        const q1 = ((a & 0xf) | ((h & 3) << 4)) - 32;
        const q2 = ((c & 0xf) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) - 32;
        out[o + l] = d * ((src[sc + is]! << 24) >> 24) * q1;
        out[o + l + 32] = d * ((src[sc + is + 2]! << 24) >> 24) * q2;
        out[o + l + 64] = d * ((src[sc + is + 4]! << 24) >> 24) * q3;
        out[o + l + 96] = d * ((src[sc + is + 6]! << 24) >> 24) * q4;
      }
      o += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

function checkTensor(tensor: Tensor): { rowLength: number; rows: number; rowBytes: number } {
  const bytes = bytesForTensor(tensor.dtype, tensor.shape);
  if (tensor.data.byteLength !== bytes) {
    throw new ModelFormatError(
      `Tensor ${tensor.name} (${tensor.dtype}, shape [${tensor.shape.join(', ')}]) needs ${bytes} bytes but has ${tensor.data.byteLength}.`,
    );
  }
  const rowLength = tensor.shape.length === 0 ? 1 : tensor.shape[tensor.shape.length - 1]!;
  const n = elementCount(tensor.shape);
  const rows = rowLength === 0 ? 0 : n / rowLength;
  const block = DTYPE_BLOCK[tensor.dtype];
  return { rowLength, rows, rowBytes: (rowLength / block.values) * block.bytes };
}

/** All values of `tensor` as float32, row-major. Writes into `out` when given (at least as long as the tensor). */
export function dequantize(tensor: Tensor, out?: Float32Array): Float32Array {
  checkTensor(tensor);
  const n = elementCount(tensor.shape);
  const dst = out ?? new Float32Array(n);
  if (dst.length < n) throw new InvalidArgumentError(`Output for ${tensor.name} holds ${dst.length} values but the tensor has ${n}.`);
  decode(tensor.dtype, tensor.data, 0, n, dst, 0);
  return dst;
}

/**
 * Rows `start .. start + count` of a tensor (rows are the last dimension), e.g. a few
 * token embeddings of a quantised embedding matrix, without decoding the rest.
 */
export function dequantizeRows(tensor: Tensor, start: number, count: number, out?: Float32Array): Float32Array {
  const { rowLength, rows, rowBytes } = checkTensor(tensor);
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > rows) {
    throw new InvalidArgumentError(`Rows ${start}..${start + count} are outside tensor ${tensor.name} with ${rows} rows.`);
  }
  const n = count * rowLength;
  const dst = out ?? new Float32Array(n);
  if (dst.length < n) throw new InvalidArgumentError(`Output holds ${dst.length} values but ${count} rows need ${n}.`);
  decode(tensor.dtype, tensor.data, start * rowBytes, n, dst, 0);
  return dst;
}

// ---------------------------------------------------------------------------------------
// Reference quantisers (ggml's quantize_row_*_ref), for tests and tools
// ---------------------------------------------------------------------------------------

function checkQuantInput(values: Float32Array): void {
  if (values.length % 32 !== 0) throw new InvalidArgumentError(`Quantising needs a multiple of 32 values, got ${values.length}.`);
}

/** ggml `quantize_row_q8_0_ref`. */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  checkQuantInput(values);
  const blocks = values.length / 32;
  const out = new Uint8Array(blocks * 34);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(values[b * 32 + j]!));
    const d = Math.fround(amax / 127);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const h = f32ToF16(d);
    const p = b * 34;
    out[p] = h & 0xff;
    out[p + 1] = h >> 8;
    for (let j = 0; j < 32; j++) {
      const x = Math.fround(values[b * 32 + j]! * id);
      out[p + 2 + j] = Math.sign(x) * Math.round(Math.abs(x)); // roundf: half away from zero; stored as int8
    }
  }
  return out;
}

/** ggml `quantize_row_q4_0_ref`. */
export function quantizeQ4_0(values: Float32Array): Uint8Array {
  checkQuantInput(values);
  const blocks = values.length / 32;
  const out = new Uint8Array(blocks * 18);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = values[b * 32 + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const h = f32ToF16(d);
    const p = b * 18;
    out[p] = h & 0xff;
    out[p + 1] = h >> 8;
    for (let j = 0; j < 16; j++) {
      const x0 = Math.fround(values[b * 32 + j]! * id);
      const x1 = Math.fround(values[b * 32 + 16 + j]! * id);
      const q0 = Math.min(15, Math.trunc(Math.fround(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(Math.fround(x1 + 8.5)));
      out[p + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}
