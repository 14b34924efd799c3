import { UnsupportedModelError } from './errors.ts';
import { type Tensor, elementCount } from './model.ts';

/** IEEE half (as its 16 bits) to a number. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Weights as f32 (row-major), whatever their stored type. */
export function dequantize(tensor: Tensor, out: Float32Array = new Float32Array(elementCount(tensor.shape))): Float32Array {
  const n = elementCount(tensor.shape);
  const { data } = tensor;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (tensor.dtype) {
    case 'f32':
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    case 'f16':
      for (let i = 0; i < n; i++) out[i] = f16ToF32(view.getUint16(2 * i, true));
      return out;
    case 'bf16': {
      const bits = new Uint32Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    default:
      throw new UnsupportedModelError(`Tensor ${tensor.name} is ${tensor.dtype}, which this build cannot dequantize yet.`);
  }
}
