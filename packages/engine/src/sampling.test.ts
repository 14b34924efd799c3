import { describe, expect, it } from 'vitest';
import { Rng, resolveSampling, Sampler } from './sampling.ts';

/** Tokens drawn from `logits` with 200 seeds. */
function draws(logits: number[], options: Parameters<typeof resolveSampling>[0]): Set<number> {
  const sampler = new Sampler(logits.length);
  const s = resolveSampling(options);
  const seen = new Set<number>();
  for (let seed = 0; seed < 200; seed++) seen.add(sampler.sample(Float32Array.from(logits), 0, s, new Rng(seed)));
  return seen;
}

describe('Sampler rank order (what WebGpuBackend.sample reproduces)', () => {
  it('top-k keeps the first k ranks, equal probabilities ranked by id', () => {
    const logits = [1, 3, 0, 3, 3, 2];
    expect(draws(logits, { temperature: 1, topK: 1 })).toEqual(new Set([1]));
    expect(draws(logits, { temperature: 1, topK: 2 })).toEqual(new Set([1, 3]));
    expect(draws(logits, { temperature: 1, topK: 4 })).toEqual(new Set([1, 3, 4, 5]));
  });

  it('top-p keeps the shortest rank prefix reaching p of the mass, ties by id', () => {
    // Four equal tokens and a negligible one: half the mass is the first two ids.
    const logits = [0, 0, -40, 0, 0];
    expect(draws(logits, { temperature: 1, topP: 0.5 })).toEqual(new Set([0, 1]));
    expect(draws(logits, { temperature: 1, topP: 0.51 })).toEqual(new Set([0, 1, 3]));
  });

  it('without top-k and top-p, every token with probability can come, and a seed repeats its draw', () => {
    expect(draws([0, 0, 0], { temperature: 1 })).toEqual(new Set([0, 1, 2]));
    const sampler = new Sampler(3);
    const s = resolveSampling({ temperature: 1, seed: 5 });
    const logits = Float32Array.from([0.1, 0.2, 0.3]);
    expect(sampler.sample(logits, 0, s, new Rng(5))).toBe(sampler.sample(logits, 0, s, new Rng(5)));
  });
});
