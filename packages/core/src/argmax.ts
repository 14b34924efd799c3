/**
 * Index of the largest of values[offset .. offset + n) (the first on ties), as llama2.c's
 * argmax, except that NaN never wins (0 when no value is above -Infinity): the rule the WebGPU
 * kernels follow, so both backends pick the same token from a row with a NaN in it.
 */
export function argmax(logits: Float32Array, offset: number, n: number): number {
  let best = 0;
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    const v = logits[offset + i] as number;
    if (v > max) {
      max = v;
      best = i;
    }
  }
  return best;
}
