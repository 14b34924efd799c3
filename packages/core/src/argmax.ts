/** Index of the largest of values[offset .. offset + n) (the first on ties), as llama2.c's argmax. */
export function argmax(logits: Float32Array, offset: number, n: number): number {
  let best = 0;
  let max = logits[offset] as number;
  for (let i = 1; i < n; i++) {
    const v = logits[offset + i] as number;
    if (v > max) {
      max = v;
      best = i;
    }
  }
  return best;
}
