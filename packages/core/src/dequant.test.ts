import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bf16ToF32,
  bytesForTensor,
  DTYPE_BLOCK,
  dequantize,
  dequantizeRows,
  f16ToF32,
  f32ToF16,
  quantizeQ4_0,
  quantizeQ8_0,
} from './dequant.ts';
import { InvalidArgumentError, ModelFormatError } from './errors.ts';
import type { Tensor, TensorDtype } from './model.ts';

// ---------------------------------------------------------------------------------------
// Independent reference: ggml-quants.c dequantize_row_* transcribed field by field, with
// every float operation rounded to float32 as C does.
// ---------------------------------------------------------------------------------------

const f = Math.fround;

/** Half to float by the textbook formula (not the table the implementation uses). */
function refHalf(h: number): number {
  const s = (h >> 15) & 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  let v: number;
  if (e === 0) v = (m / 1024) * 2 ** -14;
  else if (e === 31) v = m === 0 ? Number.POSITIVE_INFINITY : Number.NaN;
  else v = (1 + m / 1024) * 2 ** (e - 15);
  return s ? -v : v;
}

function refQ8_0(bytes: Uint8Array, nBlocks: number): Float32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const y = new Float32Array(nBlocks * 32);
  for (let i = 0; i < nBlocks; i++) {
    const base = i * 34;
    const d = refHalf(dv.getUint16(base, true));
    for (let j = 0; j < 32; j++) y[i * 32 + j] = f(dv.getInt8(base + 2 + j) * d);
  }
  return y;
}

function refQ4_0(bytes: Uint8Array, nBlocks: number): Float32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const y = new Float32Array(nBlocks * 32);
  const qk = 32;
  for (let i = 0; i < nBlocks; i++) {
    const base = i * 18;
    const d = refHalf(dv.getUint16(base, true));
    for (let j = 0; j < qk / 2; ++j) {
      const x0 = (dv.getUint8(base + 2 + j) & 0x0f) - 8;
      const x1 = (dv.getUint8(base + 2 + j) >> 4) - 8;
      y[i * qk + j + 0] = f(x0 * d);
      y[i * qk + j + qk / 2] = f(x1 * d);
    }
  }
  return y;
}

function getScaleMinK4(j: number, q: Uint8Array): [number, number] {
  if (j < 4) return [q[j]! & 63, q[j + 4]! & 63];
  return [(q[j + 4]! & 0xf) | ((q[j - 4]! >> 6) << 4), (q[j + 4]! >> 4) | ((q[j]! >> 6) << 4)];
}

function refQ4K(bytes: Uint8Array, nBlocks: number): Float32Array {
  const y = new Float32Array(nBlocks * 256);
  let yi = 0;
  for (let i = 0; i < nBlocks; i++) {
    const blk = bytes.subarray(i * 144, (i + 1) * 144);
    const dv = new DataView(blk.buffer, blk.byteOffset, 144);
    const d = refHalf(dv.getUint16(0, true));
    const min = refHalf(dv.getUint16(2, true));
    const scales = blk.subarray(4, 16);
    let q = blk.subarray(16, 144);
    let is = 0;
    for (let j = 0; j < 256; j += 64) {
      let [sc, m] = getScaleMinK4(is + 0, scales);
      const d1 = f(d * sc);
      const m1 = f(min * m);
      [sc, m] = getScaleMinK4(is + 1, scales);
      const d2 = f(d * sc);
      const m2 = f(min * m);
      for (let l = 0; l < 32; ++l) y[yi++] = f(f(d1 * (q[l]! & 0xf)) - m1);
      for (let l = 0; l < 32; ++l) y[yi++] = f(f(d2 * (q[l]! >> 4)) - m2);
      q = q.subarray(32);
      is += 2;
    }
  }
  return y;
}

function refQ6K(bytes: Uint8Array, nBlocks: number): Float32Array {
  const y = new Float32Array(nBlocks * 256);
  let yo = 0;
  const i8 = (x: number) => (x > 127 ? x - 256 : x);
  for (let i = 0; i < nBlocks; i++) {
    const blk = bytes.subarray(i * 210, (i + 1) * 210);
    const dv = new DataView(blk.buffer, blk.byteOffset, 210);
    const d = refHalf(dv.getUint16(208, true));
    let ql = blk.subarray(0, 128);
    let qh = blk.subarray(128, 192);
    let sc = blk.subarray(192, 208);
    for (let n = 0; n < 256; n += 128) {
      for (let l = 0; l < 32; ++l) {
        const is = Math.floor(l / 16);
        const q1 = i8((ql[l + 0]! & 0xf) | (((qh[l]! >> 0) & 3) << 4)) - 32;
        const q2 = i8((ql[l + 32]! & 0xf) | (((qh[l]! >> 2) & 3) << 4)) - 32;
        const q3 = i8((ql[l + 0]! >> 4) | (((qh[l]! >> 4) & 3) << 4)) - 32;
        const q4 = i8((ql[l + 32]! >> 4) | (((qh[l]! >> 6) & 3) << 4)) - 32;
        y[yo + l + 0] = f(f(d * i8(sc[is + 0]!)) * q1);
        y[yo + l + 32] = f(f(d * i8(sc[is + 2]!)) * q2);
        y[yo + l + 64] = f(f(d * i8(sc[is + 4]!)) * q3);
        y[yo + l + 96] = f(f(d * i8(sc[is + 6]!)) * q4);
      }
      yo += 128;
      ql = ql.subarray(64);
      qh = qh.subarray(32);
      sc = sc.subarray(8);
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------

/** A random finite half (no inf / nan), as bits. */
const finiteHalf = fc.integer({ min: 0, max: 0xffff }).filter((h) => ((h >> 10) & 31) !== 31);

/** Random bytes for `nBlocks` blocks of `dtype`, with finite halves where the format has its f16 fields. */
function randomBlocks(dtype: TensorDtype, nBlocks: number) {
  const { bytes } = DTYPE_BLOCK[dtype];
  const halfOffsets: Record<string, number[]> = { q8_0: [0], q4_0: [0], q4_k: [0, 2], q6_k: [208] };
  return fc
    .tuple(
      fc.uint8Array({ minLength: nBlocks * bytes, maxLength: nBlocks * bytes }),
      fc.array(finiteHalf, { minLength: 2 * nBlocks, maxLength: 2 * nBlocks }),
    )
    .map(([raw, halves]) => {
      const data = raw.slice();
      for (let b = 0; b < nBlocks; b++) {
        (halfOffsets[dtype] ?? []).forEach((off, k) => {
          const h = halves[2 * b + k]!;
          data[b * bytes + off] = h & 0xff;
          data[b * bytes + off + 1] = h >> 8;
        });
      }
      return data;
    });
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

function tensor(dtype: TensorDtype, shape: number[], data: Uint8Array): Tensor {
  return { name: `t.${dtype}`, dtype, shape, data };
}

describe('half and bfloat16 scalars', () => {
  it('f16ToF32 matches the textbook formula for all 65536 halves', () => {
    for (let h = 0; h < 65536; h++) {
      const want = refHalf(h);
      const got = f16ToF32(h);
      if (!Object.is(got, want) && !(Number.isNaN(got) && Number.isNaN(want))) throw new Error(`half ${h}: ${got} != ${want}`);
    }
  });

  it('f32ToF16 inverts f16ToF32 for every non-NaN half', () => {
    for (let h = 0; h < 65536; h++) {
      if (((h >> 10) & 31) === 31 && (h & 1023) !== 0) continue;
      expect(f32ToF16(f16ToF32(h))).toBe(h);
    }
    expect(Number.isNaN(f16ToF32(f32ToF16(Number.NaN)))).toBe(true);
  });

  it('f32ToF16 rounds to nearest, ties to even', () => {
    const known: Array<[number, number]> = [
      [1 + 2 ** -11, 0x3c00], // tie, even stays
      [1 + 3 * 2 ** -11, 0x3c02], // tie, rounds up to even
      [65519.99, 0x7bff],
      [65520, 0x7c00], // rounds to infinity
      [1e9, 0x7c00],
      [-1e9, 0xfc00],
      [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal
      [2 ** -25 * 1.0001, 0x0001],
      [2 ** -24 * 1.5, 0x0002],
      [2 ** -24 * 2.5, 0x0002],
      [-0, 0x8000],
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half a step carries into the smallest normal
    ];
    for (const [x, h] of known) expect(f32ToF16(x), `x=${x}`).toBe(h);
    const f16round = (Math as unknown as { f16round?: (x: number) => number }).f16round;
    if (f16round === undefined) return;
    fc.assert(
      fc.property(fc.float({ noNaN: true }), (x) => {
        expect(Object.is(f16ToF32(f32ToF16(x)), f16round(x))).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });

  it('bf16 is the top half of a float32', () => {
    expect(bf16ToF32(0x3f80)).toBe(1);
    expect(bf16ToF32(0xc040)).toBe(-3);
    expect(bf16ToF32(0x7f80)).toBe(Number.POSITIVE_INFINITY);
    const data = new Uint8Array([0x80, 0x3f, 0x40, 0xc0, 0x49, 0x40]);
    expect(Array.from(dequantize(tensor('bf16', [3], data)))).toEqual([1, -3, Math.fround(3.140625)]);
  });
});

describe('dequantize matches the ggml reference bit for bit', () => {
  const refs: Record<string, (b: Uint8Array, n: number) => Float32Array> = { q8_0: refQ8_0, q4_0: refQ4_0, q4_k: refQ4K, q6_k: refQ6K };
  for (const dtype of ['q8_0', 'q4_0', 'q4_k', 'q6_k'] as const) {
    it(`${dtype} on random blocks`, () => {
      const { values } = DTYPE_BLOCK[dtype];
      fc.assert(
        fc.property(
          fc
            .integer({ min: 1, max: 3 })
            .chain((rows) =>
              fc
                .integer({ min: 1, max: 3 })
                .chain((blocksPerRow) => randomBlocks(dtype, rows * blocksPerRow).map((data) => ({ rows, blocksPerRow, data }))),
            ),
          ({ rows, blocksPerRow, data }) => {
            const t = tensor(dtype, [rows, blocksPerRow * values], data);
            const got = dequantize(t);
            const want = refs[dtype]!(data, rows * blocksPerRow);
            expect(bitsEqual(got, want)).toBe(true);
            // Row access agrees with the whole decode.
            for (let r = 0; r < rows; r++) {
              const row = dequantizeRows(t, r, 1);
              expect(bitsEqual(row, got.subarray(r * blocksPerRow * values, (r + 1) * blocksPerRow * values))).toBe(true);
            }
          },
        ),
        { numRuns: 200 },
      );
    });
  }

  it('q4_0 puts low nibbles first and high nibbles in the second half', () => {
    const data = new Uint8Array(18);
    data[0] = 0x00;
    data[1] = 0x3c; // d = 1
    for (let j = 0; j < 16; j++) data[2 + j] = (j & 0xf) | ((15 - j) << 4);
    const y = dequantize(tensor('q4_0', [32], data));
    expect(Array.from(y.subarray(0, 16))).toEqual(Array.from({ length: 16 }, (_, j) => j - 8));
    expect(Array.from(y.subarray(16))).toEqual(Array.from({ length: 16 }, (_, j) => 7 - j));
  });

  it('f32 and f16 decode from unaligned views', () => {
    const values = new Float32Array([1.5, -2, 3.25, 1e-8]);
    const backing = new Uint8Array(4 * values.length + 1);
    backing.set(new Uint8Array(values.buffer), 1);
    const unaligned = backing.subarray(1);
    expect(Array.from(dequantize(tensor('f32', [2, 2], unaligned)))).toEqual(Array.from(values));
    const halves = new Uint8Array([0, 0x3c, 0, 0xc0, 0xff, 0x7b]); // 1, -2, 65504
    expect(Array.from(dequantize(tensor('f16', [3], halves)))).toEqual([1, -2, 65504]);
  });

  it('writes into a caller buffer and rejects wrong sizes', () => {
    const data = new Uint8Array(34);
    const out = new Float32Array(40);
    expect(dequantize(tensor('q8_0', [32], data), out)).toBe(out);
    expect(() => dequantize(tensor('q8_0', [32], data), new Float32Array(31))).toThrow(InvalidArgumentError);
    expect(() => dequantize(tensor('q8_0', [32], new Uint8Array(33)))).toThrow(ModelFormatError);
    expect(() => dequantize(tensor('q8_0', [33], new Uint8Array(34)))).toThrow(InvalidArgumentError);
    expect(() => dequantizeRows(tensor('q8_0', [1, 32], data), 1, 1)).toThrow(InvalidArgumentError);
  });
});

describe('bytesForTensor', () => {
  it('follows the block sizes', () => {
    expect(bytesForTensor('f32', [3, 5])).toBe(60);
    expect(bytesForTensor('f16', [3, 5])).toBe(30);
    expect(bytesForTensor('bf16', [7])).toBe(14);
    expect(bytesForTensor('q8_0', [4, 64])).toBe(4 * 2 * 34);
    expect(bytesForTensor('q4_0', [4, 64])).toBe(4 * 2 * 18);
    expect(bytesForTensor('q4_k', [2, 512])).toBe(2 * 2 * 144);
    expect(bytesForTensor('q6_k', [3, 256])).toBe(3 * 210);
  });

  it('rejects rows that are not whole blocks and bad dimensions', () => {
    expect(() => bytesForTensor('q4_k', [256, 128])).toThrow(InvalidArgumentError);
    expect(() => bytesForTensor('f32', [-1])).toThrow(InvalidArgumentError);
    expect(() => bytesForTensor('f32', [1.5])).toThrow(InvalidArgumentError);
    expect(() => bytesForTensor('f32', [2 ** 40, 2 ** 20])).toThrow(InvalidArgumentError);
  });
});

describe('reference quantisers', () => {
  const block = fc
    .float32Array({ minLength: 32, maxLength: 32 * 4, noNaN: true, noDefaultInfinity: true, min: -1e4, max: 1e4 })
    .filter((a) => a.length % 32 === 0);

  it('q8_0 round trip error is at most half a step (plus the f16 rounding or underflow of the scale)', () => {
    fc.assert(
      fc.property(block, (x) => {
        const y = dequantize(tensor('q8_0', [x.length], quantizeQ8_0(x)));
        for (let b = 0; b < x.length; b += 32) {
          let amax = 0;
          for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]!));
          const step = amax / 127;
          for (let j = 0; j < 32; j++)
            expect(Math.abs(y[b + j]! - x[b + j]!)).toBeLessThanOrEqual(step * 0.5 + amax * 2 ** -10 + 127 * 2 ** -25);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('q4_0 round trip error is at most one step (the clamp at 15; plus the f16 rounding of the scale)', () => {
    fc.assert(
      fc.property(block, (x) => {
        const y = dequantize(tensor('q4_0', [x.length], quantizeQ4_0(x)));
        for (let b = 0; b < x.length; b += 32) {
          let amax = 0;
          for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]!));
          const step = amax / 8;
          for (let j = 0; j < 32; j++) expect(Math.abs(y[b + j]! - x[b + j]!)).toBeLessThanOrEqual(step + amax * 2 ** -10 + 8 * 2 ** -25);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('q4_0 and q8_0 reproduce exactly representable blocks', () => {
    const x = Float32Array.from({ length: 32 }, (_, j) => (j % 16) - 8); // max |x| = 8 at -8 => d = 1
    expect(Array.from(dequantize(tensor('q4_0', [32], quantizeQ4_0(x))))).toEqual(Array.from(x));
    const z = Float32Array.from({ length: 32 }, (_, j) => j * 4 - 64); // amax 64 -> d = 64/127
    const yz = dequantize(tensor('q8_0', [32], quantizeQ8_0(z)));
    for (let j = 0; j < 32; j++) expect(Math.abs(yz[j]! - z[j]!)).toBeLessThan(0.3);
    expect(Array.from(dequantize(tensor('q8_0', [32], quantizeQ8_0(new Float32Array(32)))))).toEqual(new Array(32).fill(0));
  });
});
