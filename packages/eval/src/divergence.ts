/**
 * Per-position measures between next-token distributions given as logits, in float64.
 * logits rows are Float32 [vocab].
 */

/** log softmax of a logits row into `out` (float64). */
export function logSoftmax(logits: Float32Array, out: Float64Array): Float64Array {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i] as number);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i] as number) - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < logits.length; i++) out[i] = (logits[i] as number) - lse;
  return out;
}

/** KL(P || Q) in nats, P the reference (full cache) and Q the compressed cache's distribution. */
export function klDivergence(reference: Float32Array, compressed: Float32Array): number {
  const p = logSoftmax(reference, new Float64Array(reference.length));
  const q = logSoftmax(compressed, new Float64Array(compressed.length));
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const lp = p[i] as number;
    if (lp > -745) kl += Math.exp(lp) * (lp - (q[i] as number));
  }
  return Math.max(0, kl);
}
