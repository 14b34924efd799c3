import type { PageAllocator } from '@kvcompress/page-allocator';

/** How one (layer, kv-head) of a sequence spreads its importance, for reports and visualisation. */
export interface HeadSummary {
  readonly layer: number;
  readonly kvHead: number;
  /** Slots held. */
  readonly length: number;
  readonly blocks: number;
  /** Sum and maximum of the finite, non-negative metrics. */
  readonly total: number;
  readonly max: number;
  /** exp(entropy) of metric / total: how many tokens the head effectively attends to. */
  readonly effectiveTokens: number;
  /** Share of the metric mass held by the top 10% of slots (1 = very concentrated). */
  readonly top10Share: number;
}

/**
 * Per-head concentration of a sequence's metrics. Metrics must be non-negative importance
 * masses (attention-based scorers); negative or infinite values are ignored.
 * O(slots of the sequence); allocates its result.
 */
export function summarizeHeads(allocator: PageAllocator, metrics: Float32Array, sequence: number): HeadSummary[] {
  const { layers, kvHeads } = allocator.shape;
  const summaries: HeadSummary[] = [];
  for (let layer = 0; layer < layers; layer++) {
    for (let kvHead = 0; kvHead < kvHeads; kvHead++) {
      const length = allocator.length(sequence, layer, kvHead);
      const values: number[] = [];
      let total = 0;
      let max = 0;
      for (let i = 0; i < length; i++) {
        const m = metrics[allocator.slot(sequence, layer, kvHead, i)] as number;
        if (!Number.isFinite(m) || m < 0) continue;
        values.push(m);
        total += m;
        if (m > max) max = m;
      }
      let entropy = 0;
      if (total > 0) {
        for (const m of values) {
          if (m > 0) {
            const p = m / total;
            entropy -= p * Math.log(p);
          }
        }
      }
      values.sort((a, b) => b - a);
      const top = Math.max(1, Math.ceil(values.length * 0.1));
      let topMass = 0;
      for (let i = 0; i < Math.min(top, values.length); i++) topMass += values[i] as number;
      summaries.push({
        layer,
        kvHead,
        length,
        blocks: Math.ceil(length / allocator.blockSize),
        total,
        max,
        effectiveTokens: total > 0 ? Math.exp(entropy) : 0,
        top10Share: total > 0 ? topMass / total : 0,
      });
    }
  }
  return summaries;
}
