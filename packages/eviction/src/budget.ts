import { InvalidBudgetError } from '@kvcompress/core';

/**
 * How much KV cache a sequence may keep.
 * - `maxCacheTokens`: at most this many tokens per (layer, kv-head) on average, so
 *   `maxCacheTokens * layers * kvHeads` slots in all (rounded up to whole blocks per head).
 * - `targetCompressionRate`: keep 1/rate of the tokens outside the protected positions.
 */
export type Budget = { readonly maxCacheTokens: number } | { readonly targetCompressionRate: number };

export interface CompressionConfig {
  readonly budget: Budget;
  /** The most recent positions, never evicted. Default 64. */
  readonly protectedWindow?: number;
  /** The first positions (attention sinks), never evicted. Default 0. */
  readonly sinks?: number;
}

export interface ResolvedCompressionConfig {
  readonly budget: Budget;
  readonly protectedWindow: number;
  readonly sinks: number;
  /**
   * Blocks to free beyond the budget (whole sequence; never below the protected positions'
   * blocks), for policies that plan by `targetBlocks`. An engine sets it when it compresses
   * under memory pressure, so that a sequence is not over budget again, and compressed again,
   * one step later. Default 0.
   */
  readonly headroomBlocks?: number;
}

/** Checks a configuration once, before any sequence runs. Throws `InvalidBudgetError`. */
export function resolveCompressionConfig(config: CompressionConfig): ResolvedCompressionConfig {
  const protectedWindow = config.protectedWindow ?? 64;
  const sinks = config.sinks ?? 0;
  if (!Number.isInteger(protectedWindow) || protectedWindow < 0) {
    throw new InvalidBudgetError(`protectedWindow must be a non-negative integer, got ${String(protectedWindow)}.`);
  }
  if (!Number.isInteger(sinks) || sinks < 0) {
    throw new InvalidBudgetError(`sinks must be a non-negative integer, got ${String(sinks)}.`);
  }
  const budget = config.budget as Partial<{ maxCacheTokens: number; targetCompressionRate: number }>;
  if (budget === null || typeof budget !== 'object')
    throw new InvalidBudgetError('budget must be { maxCacheTokens } or { targetCompressionRate }.');
  const hasMax = budget.maxCacheTokens !== undefined;
  const hasRate = budget.targetCompressionRate !== undefined;
  if (hasMax === hasRate) {
    throw new InvalidBudgetError('Give exactly one of budget.maxCacheTokens and budget.targetCompressionRate.');
  }
  if (hasMax) {
    const m = budget.maxCacheTokens as number;
    if (!Number.isInteger(m) || m < 1) throw new InvalidBudgetError(`maxCacheTokens must be a positive integer, got ${String(m)}.`);
    if (m < protectedWindow + sinks) {
      throw new InvalidBudgetError(
        `maxCacheTokens (${m}) is smaller than the protected positions (protectedWindow ${protectedWindow} + sinks ${sinks}), so it can never be met. Raise maxCacheTokens or shrink the protected window.`,
      );
    }
    return { budget: { maxCacheTokens: m }, protectedWindow, sinks };
  }
  const r = budget.targetCompressionRate as number;
  if (typeof r !== 'number' || !Number.isFinite(r) || r < 1) {
    throw new InvalidBudgetError(`targetCompressionRate must be a finite number >= 1 (1 = no compression), got ${String(r)}.`);
  }
  return { budget: { targetCompressionRate: r }, protectedWindow, sinks };
}

/** Positions protected in a sequence that has seen `tokens` tokens: the last window and the first sinks. */
export function protectedCount(tokens: number, protectedWindow: number, sinks: number): number {
  return Math.min(tokens, protectedWindow) + Math.min(sinks, Math.max(0, tokens - protectedWindow));
}

/**
 * Tokens each (layer, kv-head) keeps under a uniform split of the budget, for a sequence that
 * has seen `tokens` tokens. Rates apply to the uncompressed length, so compressing again
 * later does not compound the rate.
 */
export function keepPerHead(config: ResolvedCompressionConfig, tokens: number): number {
  const p = protectedCount(tokens, config.protectedWindow, config.sinks);
  if ('maxCacheTokens' in config.budget) return Math.min(tokens, config.budget.maxCacheTokens);
  return p + Math.floor((tokens - p) / config.budget.targetCompressionRate);
}
