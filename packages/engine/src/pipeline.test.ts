// The pipelined decode (EngineOptions.pipelineDecode): a step recorded before the previous
// step's ids reach the host, fed by them on the device. Checked on the CPU backend behind a
// proxy that hides readSync, so the engine takes its asynchronous path (device argmax, ids read
// back) as on WebGPU: the same outputs as without pipelining, for every kind of batch change.
import { readFileSync } from 'node:fs';
import type { Backend } from '@kvcompress/core';
import { CpuBackend } from '@kvcompress/cpu';
import { loadLlama2cModel } from '@kvcompress/models';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';
import { type DoneEvent, Engine, type EngineOptions, type GenerateOptions } from './engine.ts';

const STORIES = 'models/stories260K/stories260K.bin';
const REFERENCE = 'models/stories260K/reference_greedy.json';
const haveStories = hasShared(STORIES, REFERENCE);

/** A CPU backend read only asynchronously, as a GPU backend is. */
function asyncCpu(): Backend {
  const cpu = new CpuBackend();
  return new Proxy(cpu, {
    get(target, key) {
      if (key === 'readSync') return undefined;
      const value = Reflect.get(target, key) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

interface Job {
  readonly prompt: number[];
  readonly options: GenerateOptions;
}

/** Runs the jobs at once on a new engine; the outcomes in job order, and the engine's stats. */
async function run(options: Partial<EngineOptions>, jobs: readonly Job[]) {
  const model = loadLlama2cModel(new Uint8Array(readFileSync(sharedPath(STORIES))));
  const engine = new Engine({ model, backend: asyncCpu(), ...options });
  const done: DoneEvent[] = await Promise.all(jobs.map((j) => engine.complete(j.prompt, j.options)));
  for (const d of done) if (d.error !== undefined) throw d.error;
  return { outcomes: done.map((d) => ({ tokens: d.tokens, reason: d.reason, text: d.text })), stats: engine.stats(), engine };
}

describe.skipIf(!haveStories)('pipelined decode = sequential decode (stories260K, asynchronous CPU backend)', () => {
  it('reproduces the published greedy output, nearly every step recorded ahead', async () => {
    const reference = (JSON.parse(readFileSync(sharedPath(REFERENCE), 'utf8')) as { token_ids: number[] }).token_ids;
    const { outcomes, stats, engine } = await run({ maxSequences: 1 }, [{ prompt: [1], options: { maxTokens: 256, stopTokens: [] } }]);
    expect(outcomes[0]?.tokens).toEqual(reference);
    // 255 decode steps (the prefill gives the first token): all but the first are recorded
    // before their predecessor's ids arrive.
    expect(stats.pipelinedSteps).toBe(254);
    expect(engine.allocator.usedBlocks).toBe(0);
  });

  it('gives the same outputs with stop tokens, token limits, admissions, and compression rounds', async () => {
    const reference = (JSON.parse(readFileSync(sharedPath(REFERENCE), 'utf8')) as { token_ids: number[] }).token_ids;
    // A token the stories use often, so some requests stop on it early, others later.
    const stop = reference[12] as number;
    const jobs: Job[] = Array.from({ length: 7 }, (_, i) => ({
      prompt: [1, ...reference.slice(0, 3 + 5 * i)],
      options: { maxTokens: 12 + 17 * i, stopTokens: i % 2 === 0 ? [stop] : [] },
    }));
    for (const options of [
      { maxSequences: 3 },
      { maxSequences: 4, budget: { targetCompressionRate: 2 }, protectedWindow: 8, compressionInterval: 8 },
    ] as Partial<EngineOptions>[]) {
      const sequential = await run({ ...options, pipelineDecode: false }, jobs);
      const pipelined = await run(options, jobs);
      expect(sequential.stats.pipelinedSteps).toBe(0);
      expect(pipelined.stats.pipelinedSteps).toBeGreaterThan(20);
      expect(pipelined.outcomes).toEqual(sequential.outcomes);
      expect(pipelined.outcomes.some((o) => o.reason === 'stop')).toBe(true);
      expect(pipelined.stats.decodeTokens).toBe(sequential.stats.decodeTokens);
      expect(pipelined.engine.allocator.usedBlocks).toBe(0);
      pipelined.engine.allocator.checkInvariants();
    }
  });
});
