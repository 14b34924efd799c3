import { InvalidArgumentError } from '@kvcompress/core';

/**
 * Reference causal softmax attention probabilities of the last `window` queries of a prompt,
 * the input every attention-based scorer reads. For tests and the CPU backend.
 *
 * @param q Float32 [queryHeads][window][headDim]: queries at positions keyCount-window .. keyCount-1
 * @param k Float32 [kvHeads][keyCount][headDim]: keys at positions 0 .. keyCount-1
 * @param out Float32 [queryHeads][window][keyCount], zero beyond the causal edge
 */
export function windowAttentionProbs(
  q: Float32Array,
  k: Float32Array,
  queryHeads: number,
  kvHeads: number,
  headDim: number,
  window: number,
  keyCount: number,
  out: Float32Array,
): void {
  if (queryHeads % kvHeads !== 0) throw new InvalidArgumentError('queryHeads must be a multiple of kvHeads.');
  if (q.length < queryHeads * window * headDim || k.length < kvHeads * keyCount * headDim) {
    throw new InvalidArgumentError('q must be [queryHeads][window][headDim] and k [kvHeads][keyCount][headDim].');
  }
  if (out.length < queryHeads * window * keyCount) throw new InvalidArgumentError('out is too small.');
  const group = queryHeads / kvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const queryStart = keyCount - window;
  for (let h = 0; h < queryHeads; h++) {
    const g = (h / group) | 0;
    for (let w = 0; w < window; w++) {
      const row = (h * window + w) * keyCount;
      const qo = (h * window + w) * headDim;
      const last = queryStart + w;
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j <= last; j++) {
        const ko = (g * keyCount + j) * headDim;
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += (q[qo + d] as number) * (k[ko + d] as number);
        const s = dot * scale;
        out[row + j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j <= last; j++) {
        const e = Math.exp((out[row + j] as number) - max);
        out[row + j] = e;
        sum += e;
      }
      for (let j = 0; j <= last; j++) out[row + j] = (out[row + j] as number) / sum;
      for (let j = last + 1; j < keyCount; j++) out[row + j] = 0;
    }
  }
}
