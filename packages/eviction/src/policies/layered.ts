import { InvalidArgumentError } from '@kvcompress/core';
import { type Scorer, snapKvScorer } from '@kvcompress/metrics';
import { type CheapestBlocksPlan, planCheapestBlocks } from '../cheapest-blocks.ts';
import type { PolicyContext } from '../context.ts';
import type { EvictionPolicy } from '../policy.ts';

/**
 * Blocks per head for each layer under PyramidKV's schedule: the compressible part of the
 * budget falls linearly with depth from (2 - 1/beta) to 1/beta times its mean. Whole blocks,
 * at least enough for the protected positions, summing to at most the uniform split's blocks.
 */
export function pyramidBlocksPerLayer(
  layers: number,
  keepPerHead: number,
  protectedTokens: number,
  blockSize: number,
  beta: number,
  out: Int32Array,
): Int32Array {
  const meanBlocks = Math.ceil(keepPerHead / blockSize);
  const floorBlocks = Math.ceil(protectedTokens / blockSize);
  const compressible = keepPerHead - protectedTokens;
  const minC = compressible / beta;
  const maxC = 2 * compressible - minC;
  const ideal = new Float64Array(layers);
  let assigned = 0;
  for (let l = 0; l < layers; l++) {
    const c = layers === 1 ? compressible : maxC - ((maxC - minC) * l) / (layers - 1);
    ideal[l] = (protectedTokens + c) / blockSize;
    out[l] = Math.max(floorBlocks, Math.floor(ideal[l] as number));
    assigned += out[l] as number;
  }
  // Largest remainders get the blocks still unassigned; over budget, the largest layers give back.
  let left = layers * meanBlocks - assigned;
  while (left > 0) {
    let best = -1;
    let bestGap = Number.NEGATIVE_INFINITY;
    for (let l = 0; l < layers; l++) {
      const gap = (ideal[l] as number) - (out[l] as number);
      if (gap > bestGap) {
        bestGap = gap;
        best = l;
      }
    }
    out[best] = (out[best] as number) + 1;
    left--;
  }
  while (left < 0) {
    let best = -1;
    for (let l = 0; l < layers; l++)
      if ((out[l] as number) > floorBlocks && (best < 0 || (out[l] as number) > (out[best] as number))) best = l;
    if (best < 0) break;
    out[best] = (out[best] as number) - 1;
    left++;
  }
  return out;
}

/** PyramidKV (Cai et al., 2024): more cache in lower layers, less in higher ones; uniform across the heads of a layer. */
export function createPyramidKvPolicy(options: { beta?: number; observationWindow?: number } = {}): EvictionPolicy {
  const beta = options.beta ?? 20;
  if (!Number.isFinite(beta) || beta < 1) throw new InvalidArgumentError(`beta must be >= 1, got ${beta}.`);
  let perLayer = new Int32Array(0);
  return {
    name: 'pyramidkv',
    description: `PyramidKV: per-layer budgets decreasing with depth (beta ${beta}), SnapKV scores within a layer.`,
    createScorer: (): Scorer => snapKvScorer({ observationWindow: options.observationWindow }),
    plan(ctx: PolicyContext) {
      if (ctx.plannedBlocks() <= ctx.targetBlocks) return;
      if (perLayer.length !== ctx.layers) perLayer = new Int32Array(ctx.layers);
      pyramidBlocksPerLayer(ctx.layers, ctx.keepPerHead, ctx.protectedTokens, ctx.blockSize, beta, perLayer);
      for (let layer = 0; layer < ctx.layers; layer++) {
        const keep = (perLayer[layer] as number) * ctx.blockSize;
        for (let h = 0; h < ctx.kvHeads; h++) {
          const u = ctx.unit(layer, h);
          const excess = ctx.length(u) - keep;
          if (excess > 0) ctx.evictLowest(u, excess);
        }
      }
    },
  };
}

/**
 * Ada-KV (Feng et al., 2024) on paged memory: within each layer, the heads compete for the
 * layer's blocks (the cheapest blocks across the layer's heads go first, by the same block
 * rule as KV-Compress), and every head keeps at least `alpha` of the uniform share.
 */
export function createAdaKvPolicy(options: { alpha?: number; observationWindow?: number } = {}): EvictionPolicy {
  const alpha = options.alpha ?? 0.2;
  if (!Number.isFinite(alpha) || alpha < 0 || alpha > 1) throw new InvalidArgumentError(`alpha must be in [0, 1], got ${alpha}.`);
  // One group per layer (its kv-heads are consecutive units): the blocks over the layer's
  // uniform share, with a floor of alpha times the share per head.
  const perLayer: CheapestBlocksPlan = {
    groupUnits: (ctx) => ctx.kvHeads,
    blocks(ctx, layer) {
      let blocks = 0;
      for (let h = 0; h < ctx.kvHeads; h++) blocks += ctx.blocks(ctx.unit(layer, h));
      return blocks - ctx.kvHeads * Math.ceil(ctx.keepPerHead / ctx.blockSize);
    },
    minBlocks: (ctx) => Math.floor(alpha * Math.ceil(ctx.keepPerHead / ctx.blockSize)),
  };
  return {
    name: 'ada-kv',
    description: `Ada-KV: adaptive budgets across the heads of each layer, with a per-head floor (alpha ${alpha}).`,
    createScorer: (): Scorer => snapKvScorer({ observationWindow: options.observationWindow }),
    cheapestBlocks: perLayer,
    plan: (ctx: PolicyContext) => planCheapestBlocks(perLayer, ctx),
  };
}
