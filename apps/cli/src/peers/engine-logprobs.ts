import type { Engine } from '@kvcompress/engine';

/**
 * Teacher-forced next-token log-probabilities from our engine, full vocabulary: row t of the
 * result is log softmax(logits after ids[0..t]), Float64 [ids.length - 1][vocab], from
 * `Engine.forwardLogits` (full cache) with the log-softmax taken in float64.
 */
export async function engineTeacherForcedLogProbs(engine: Engine, ids: readonly number[]): Promise<Float64Array> {
  if (ids.length < 2) throw new RangeError('Teacher forcing needs at least two tokens.');
  const vocab = engine.model.config.vocabSize;
  const positions = ids.length - 1;
  // The last id is only a target: its own row would predict past the text.
  const logits = await engine.forwardLogits(ids.slice(0, positions));
  const out = new Float64Array(positions * vocab);
  for (let t = 0; t < positions; t++) logSoftmax(logits, t * vocab, vocab, out, t * vocab);
  return out;
}

/** out[o..o+n) = log softmax(x[offset..offset+n)), in float64. */
export function logSoftmax(x: Float32Array, offset: number, n: number, out: Float64Array, o: number): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) max = Math.max(max, x[offset + i] as number);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((x[offset + i] as number) - max);
  const lse = Math.log(sum) + max;
  for (let i = 0; i < n; i++) out[o + i] = (x[offset + i] as number) - lse;
}
