import { h2oScorer, RandomScorer, RecencyScorer, type Scorer, snapKvScorer } from '@kvcompress/metrics';
import type { PolicyContext } from '../context.ts';
import type { EvictionPolicy } from '../policy.ts';

/** Every head keeps the same number of tokens, `keepPerHead`, chosen by the scorer's metric. */
function planUniform(ctx: PolicyContext): void {
  for (let u = 0; u < ctx.units; u++) {
    const excess = ctx.length(u) - ctx.keepPerHead;
    if (excess > 0) ctx.evictLowest(u, excess);
  }
}

function uniformPolicy(name: string, description: string, createScorer: () => Scorer): EvictionPolicy {
  return { name, description, createScorer, plan: planUniform };
}

export function createSnapKvPolicy(options: { observationWindow?: number; poolKernel?: number } = {}): EvictionPolicy {
  return uniformPolicy(
    'snapkv',
    'SnapKV: the same budget for every head, keeping the keys the last window attended to most (avg-pooled).',
    () => snapKvScorer(options),
  );
}

export function createH2oPolicy(): EvictionPolicy {
  return uniformPolicy('h2o', 'H2O: heavy hitters by accumulated attention plus the recent window, uniform per head.', h2oScorer);
}

export function createStreamingLlmPolicy(options: { sinks?: number } = {}): EvictionPolicy {
  const sinks = options.sinks ?? 4;
  return uniformPolicy(
    'streaming-llm',
    `StreamingLLM: the first ${sinks} tokens (attention sinks) and the most recent ones.`,
    () => new RecencyScorer({ sinks }),
  );
}

export function createRandomPolicy(options: { seed?: number } = {}): EvictionPolicy {
  return uniformPolicy(
    'random',
    'Random eviction, uniform per head: the floor any policy should beat.',
    () => new RandomScorer(options.seed),
  );
}

export const nonePolicy: EvictionPolicy = {
  name: 'none',
  description: 'Full cache: evicts nothing.',
  plan() {},
};
