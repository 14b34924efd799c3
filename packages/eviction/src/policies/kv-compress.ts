import { type KvCompressScorerOptions, kvCompressScorer } from '@kvcompress/metrics';
import { type CheapestBlocksPlan, planCheapestBlocks } from '../cheapest-blocks.ts';
import type { EvictionPolicy } from '../policy.ts';

/** One group of every head unit: free the blocks over the budget, cheapest first across all layers and heads. */
const kvCompressBlocks: CheapestBlocksPlan = {
  blocks: (ctx) => ctx.plannedBlocks() - ctx.targetBlocks,
};

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
    cheapestBlocks: kvCompressBlocks,
    plan: (ctx) => planCheapestBlocks(kvCompressBlocks, ctx),
  };
}
