import { type KvCompressScorerOptions, kvCompressScorer } from '@kvcompress/metrics';
import type { EvictionPolicy } from '../policy.ts';

/**
 * KV-Compress (Rehg, 2024): rank every "free one more block of head h" candidate of the
 * sequence, across all layers and heads, by the metric of the slot that would have to go,
 * and take the cheapest until the sequence fits its block budget. Heads whose attention is
 * concentrated give up many blocks, heads that need the whole context keep theirs: each
 * head ends with its own compression rate.
 */
export function createKvCompressPolicy(options: KvCompressScorerOptions = {}): EvictionPolicy {
  return {
    name: 'kv-compress',
    description: 'KV-Compress: per-head variable compression, evicting whole blocks globally across layers and heads.',
    createScorer: () => kvCompressScorer(options),
    plan(ctx) {
      const excess = ctx.plannedBlocks() - ctx.targetBlocks;
      if (excess > 0) ctx.freeCheapestBlocks(excess);
    },
  };
}
