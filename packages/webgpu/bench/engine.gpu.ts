// The engine's decode loop on a real GPU through Dawn: SEQS greedy requests of PROMPT random
// tokens and TOKENS new tokens each, on a Llama-3.2-1B- or 3.1-8B-shaped model with random f16
// weights (synthetic-llama.ts), full cache, run with and without the pipelined decode
// (EngineOptions.pipelineDecode), alternating, REPEATS times each. Prints one JSON line per run:
// decode tokens/s over the wall time from the first decode step to the last token, the engine's
// steps recorded ahead, and host/GPU overlap.
// Env: SHAPE (1b), SEQS (64), PROMPT (256), TOKENS (64), REPEATS (2), ROBUSTNESS (1).
/// <reference types="@webgpu/types" />
import { Engine } from '@kvcompress/engine';
import { requestWebGpuDevice } from '../src/device.ts';
import { randomWeightBackend, shapeNamed, syntheticModel } from './synthetic-llama.ts';

const env = (name: string, fallback: string): string => process.env[name] ?? fallback;
const SHAPE = env('SHAPE', '1b');
const SEQS = Number(env('SEQS', '64'));
const PROMPT = Number(env('PROMPT', '256'));
const TOKENS = Number(env('TOKENS', '64'));
const REPEATS = Number(env('REPEATS', '2'));

const device = await requestWebGpuDevice({ robustness: env('ROBUSTNESS', '1') !== '0' });
// Dawn's Node binding resolves promises from its own polling: keep the event loop alive.
setInterval(() => {}, 1000);
const config = shapeNamed(SHAPE);
const backend = randomWeightBackend(device);
const model = syntheticModel(config);
const prompts = Array.from({ length: SEQS }, (_, s) =>
  Array.from({ length: PROMPT }, (_, i) => ((s * 7919 + i * 104729) % (config.vocabSize - 2)) + 2),
);

for (let rep = 0; rep < REPEATS; rep++) {
  for (const pipelineDecode of [false, true]) {
    const engine = new Engine({ model, backend, maxSequences: SEQS, maxContext: PROMPT + TOKENS + 16, pipelineDecode });
    let firstDecode = 0;
    let lastToken = 0;
    engine.onStep((s) => {
      if (s.kind === 'decode' && firstDecode === 0) firstDecode = performance.now() - s.ms;
      if (s.kind === 'decode') lastToken = performance.now();
    });
    const t0 = performance.now();
    const done = await Promise.all(prompts.map((p) => engine.complete(p, { maxTokens: TOKENS, stopTokens: [] })));
    for (const d of done) if (d.error !== undefined) throw d.error;
    const stats = engine.stats();
    const decodeTokens = stats.decodeTokens;
    const wallMs = lastToken - firstDecode;
    console.log(
      JSON.stringify({
        kind: 'engine-decode',
        shape: SHAPE,
        seqs: SEQS,
        prompt: PROMPT,
        tokens: TOKENS,
        pipelineDecode,
        pipelinedSteps: stats.pipelinedSteps,
        decodeSteps: stats.steps - SEQS,
        decodeTokens,
        wallMs,
        tokensPerSecond: (decodeTokens / wallMs) * 1000,
        totalMs: performance.now() - t0,
      }),
    );
  }
}
process.exit(0);
