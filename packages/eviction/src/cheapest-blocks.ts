import { assertInteger } from '@kvcompress/core';
import type { PolicyContext } from './context.ts';

/**
 * A plan that is KV-Compress's block rule over groups of consecutive head units: for each
 * group g, `ctx.freeCheapestBlocks(blocks(ctx, g), { units: group g, minBlocks })`.
 * KV-Compress is one group of every unit; Ada-KV one group per layer with a floor.
 *
 * A policy that declares it (`EvictionPolicy.cheapestBlocks`) and plans with
 * `planCheapestBlocks` lets a backend that keeps the metrics on the device make the same
 * decision there (`Backend.selectEvictions`) instead of downloading every metric: the
 * functions below see only lengths and budgets, never metrics, so the host can evaluate
 * them without the metrics.
 */
export interface CheapestBlocksPlan {
  /** Units per group: group g is units [g * n, min((g + 1) * n, units)). Default: all units, one group. */
  groupUnits?(ctx: PolicyContext): number;
  /** Blocks to free from group g (<= 0: none). Must not read metrics. */
  blocks(ctx: PolicyContext, group: number): number;
  /** Blocks every unit keeps at least. Default 0. */
  minBlocks?(ctx: PolicyContext): number;
}

/** Units per group and the floor of a plan, checked. */
export function cheapestBlocksShape(spec: CheapestBlocksPlan, ctx: PolicyContext): { groupUnits: number; minBlocks: number } {
  const groupUnits = spec.groupUnits?.(ctx) ?? ctx.units;
  assertInteger('groupUnits', groupUnits, 1);
  const minBlocks = spec.minBlocks?.(ctx) ?? 0;
  assertInteger('minBlocks', minBlocks, 0);
  return { groupUnits, minBlocks };
}

/** Scratch list of a group's units (consecutive), reused across calls. */
let groupScratch = new Int32Array(0);

/** Plans a CheapestBlocksPlan on the host metrics: what a declaring policy's `plan` does. */
export function planCheapestBlocks(spec: CheapestBlocksPlan, ctx: PolicyContext): void {
  const { groupUnits, minBlocks } = cheapestBlocksShape(spec, ctx);
  for (let g = 0; g * groupUnits < ctx.units; g++) {
    const blocks = spec.blocks(ctx, g);
    if (blocks <= 0) continue;
    if (groupUnits >= ctx.units) {
      ctx.freeCheapestBlocks(blocks, { minBlocks });
      continue;
    }
    const first = g * groupUnits;
    const n = Math.min(groupUnits, ctx.units - first);
    if (groupScratch.length !== n) groupScratch = new Int32Array(n);
    for (let i = 0; i < n; i++) groupScratch[i] = first + i;
    ctx.freeCheapestBlocks(blocks, { units: groupScratch, minBlocks });
  }
}
