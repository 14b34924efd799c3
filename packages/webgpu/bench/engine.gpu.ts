// The engine's decode loop on a real GPU through Dawn: SEQS greedy requests of PROMPT random
// tokens and TOKENS new tokens each, on a Llama-3.2-1B- or 3.1-8B-shaped model with random f16
// weights (synthetic-llama.ts), full cache, run with and without the pipelined decode
// (EngineOptions.pipelineDecode), alternating, REPEATS times each. Prints one JSON line per run:
// decode tokens/s over the wall time from the first decode step to the last token, the engine's
// steps recorded ahead, and host/GPU overlap.
// COMPRESS=<policy> (e.g. kv-compress) instead runs the pipelined engine with a full cache
// against the same requests compressed at RATE (4) every INTERVAL (64) decode steps, and
// reports the compression rounds that ran while decoding: how many, their wall time (the
// engine's compressionMs, the pipeline's drain included) and its share of the decode wall time.
// Every request prefills first (and is compressed after its prefill), so the decode steps of
// all sequences are aligned: each interval round compresses every sequence at once.
// Env: SHAPE (1b), SEQS (64), PROMPT (256), TOKENS (64), REPEATS (2), ROBUSTNESS (1), COMPRESS,
// RATE (4), INTERVAL (64), ONLY_COMPRESSED (1: the compressed run alone), ROUND_PARTS (2:
// EngineOptions.roundParts).
/// <reference types="@webgpu/types" />
import { GCProfiler } from 'node:v8';
import { Engine } from '@kvcompress/engine';
import { requestWebGpuDevice } from '../src/device.ts';
import { randomWeightBackend, shapeNamed, syntheticModel } from './synthetic-llama.ts';

const env = (name: string, fallback: string): string => process.env[name] ?? fallback;
const SHAPE = env('SHAPE', '1b');
const SEQS = Number(env('SEQS', '64'));
const PROMPT = Number(env('PROMPT', '256'));
const TOKENS = Number(env('TOKENS', '64'));
const REPEATS = Number(env('REPEATS', '2'));
const COMPRESS = env('COMPRESS', '');
const RATE = Number(env('RATE', '4'));
const INTERVAL = Number(env('INTERVAL', '64'));
const ROUND_PARTS = Number(env('ROUND_PARTS', '2'));

const device = await requestWebGpuDevice({ robustness: env('ROBUSTNESS', '1') !== '0' });
// Dawn's Node binding resolves promises from its own polling: keep the event loop alive.
setInterval(() => {}, 1000);
const config = shapeNamed(SHAPE);
const backend = randomWeightBackend(device);
const model = syntheticModel(config);
const prompts = Array.from({ length: SEQS }, (_, s) =>
  Array.from({ length: PROMPT }, (_, i) => ((s * 7919 + i * 104729) % (config.vocabSize - 2)) + 2),
);

// (pipelineDecode, compressed) per run: sequential against pipelined, or full cache against compressed.
const modes: [boolean, boolean][] =
  process.env['ONLY_COMPRESSED'] === '1'
    ? [[true, true]]
    : COMPRESS === ''
      ? [
          [false, false],
          [true, false],
        ]
      : [
          [true, false],
          [true, true],
        ];
for (let rep = 0; rep < REPEATS; rep++) {
  for (const [pipelineDecode, compressed] of modes) {
    const engine = new Engine({
      model,
      backend,
      maxSequences: SEQS,
      maxContext: PROMPT + TOKENS + 16,
      pipelineDecode,
      compressionInterval: INTERVAL,
      roundParts: ROUND_PARTS,
    });
    let firstDecode = 0;
    let lastToken = 0;
    let decodeSteps = 0;
    // Wall ms of each compression round between decode steps (the engine's compressionMs grows).
    const roundMs: number[] = [];
    let compressionMsSeen = 0;
    // The engine's compression figures when decoding starts: what follows ran between decode steps.
    let atFirstDecode = { compressions: 0, compressionMs: 0, deviceCompactionRounds: 0 };
    // V8's collections from the first decode step to the end of the run.
    const gcProfiler = new GCProfiler();
    engine.onStep((s) => {
      if (s.kind === 'decode' && firstDecode === 0) {
        firstDecode = performance.now() - s.ms;
        atFirstDecode = engine.stats();
        gcProfiler.start();
      }
      if (s.kind === 'decode') {
        lastToken = performance.now();
        decodeSteps++;
        const ms = engine.stats().compressionMs;
        if (decodeSteps > 1 && ms > compressionMsSeen) roundMs.push(ms - compressionMsSeen);
        compressionMsSeen = ms;
      }
    });
    const t0 = performance.now();
    const compression = compressed ? { policy: COMPRESS, budget: { targetCompressionRate: RATE } } : undefined;
    const done = await Promise.all(
      prompts.map((p) => engine.complete(p, { maxTokens: TOKENS, stopTokens: [], ...(compression === undefined ? {} : { compression }) })),
    );
    for (const d of done) if (d.error !== undefined) throw d.error;
    const gcs = gcProfiler.stop()?.statistics ?? [];
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
        compress: compressed ? COMPRESS : 'none',
        rate: compressed ? RATE : 1,
        interval: INTERVAL,
        roundParts: ROUND_PARTS,
        // Compression while decoding (the interval rounds), and its share of the decode wall time.
        decodeCompressions: stats.compressions - atFirstDecode.compressions,
        decodeRounds: stats.deviceCompactionRounds - atFirstDecode.deviceCompactionRounds,
        decodeCompressionMs: stats.compressionMs - atFirstDecode.compressionMs,
        compressionShare: (stats.compressionMs - atFirstDecode.compressionMs) / wallMs,
        roundMs,
        // Collections while decoding: all kinds, the major ones, and their share of the wall time.
        gcCount: gcs.length,
        majorGcCount: gcs.filter((g) => g.gcType === 'MarkSweepCompact').length,
        gcShare: gcs.reduce((n, g) => n + g.cost, 0) / 1000 / wallMs,
        pipelinedSteps: stats.pipelinedSteps,
        decodeSteps,
        decodeTokens,
        wallMs,
        tokensPerSecond: (decodeTokens / wallMs) * 1000,
        totalMs: performance.now() - t0,
      }),
    );
  }
}
process.exit(0);
