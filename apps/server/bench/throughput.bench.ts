// Server throughput at a fixed KV memory budget: the same pool of KV blocks, the same stream
// of requests through the HTTP API, at compression 1x, 4x, 16x and 64x (KV-Compress,
// protected window 16). More compression lets more sequences share the pool.
//   node --conditions=source apps/server/bench/throughput.bench.ts [--requests 96] [--concurrency 32] [--json]
//     [--backend cpu|webgpu] [--model <path>] [--text <path>] [--prompt-tokens 400] [--max-tokens 48]
//     [--pool-sequences 4] [--pool-context 512] [--max-sequences 64] [--pressure-headroom 1]
//
// Default (`pnpm bench`): stories260K (GGUF) on the CPU backend. Each request: a
// --prompt-tokens excerpt of --text (a different one per request), then up to --max-tokens
// sampled tokens (temperature 0.8, seeded; EOS ends a request early: tokens/s counts what was
// generated). The pool holds --pool-sequences sequences of --pool-context tokens: at 1x
// that bounds the batch, the compressed runs fit more. Prints tokens/s and completed requests
// per minute, and the ratios to 1x. On the GPU machine (run-gpu.sh bundles it):
//   --backend webgpu --model models/kvc-20m-4k --text <Alice> --prompt-tokens 1800 --max-tokens 64 --pool-context 4096
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Backend } from '@kvcompress/core';
import { Engine } from '@kvcompress/engine';
import { loadModel } from '@kvcompress/models';
import { createServer } from '../src/server.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
function argText(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}
const REQUESTS = arg('--requests', 96);
const CONCURRENCY = arg('--concurrency', 32);
const PROMPT_TOKENS = arg('--prompt-tokens', 400);
const MAX_TOKENS = arg('--max-tokens', 48);
const POOL_SEQUENCES = arg('--pool-sequences', 4);
// Context length the pool is sized by (stories260K is trained on 512 tokens; its GGUF says 2048).
const POOL_CONTEXT = arg('--pool-context', 512);
const MAX_SEQUENCES = arg('--max-sequences', 64);
// Blocks per head freed beyond the budget under memory pressure (EngineOptions.pressureHeadroom).
const PRESSURE_HEADROOM = arg('--pressure-headroom', 1);
const BACKEND = argText('--backend', 'cpu');
const shared = process.env['KVC_SHARED_DIR'] ?? path.resolve(import.meta.dirname, '../../../../shared');
const modelPath = argText('--model', path.join(shared, 'models/stories260K/stories260K.gguf'));
const textPath = argText('--text', path.join(shared, 'data/tinystories-valid/TinyStories-valid-first1000.txt'));
const model = await loadModel(modelPath);
const modelId = path.basename(modelPath);
const tokenizer = model.tokenizer;
if (tokenizer === null) throw new Error(`${modelPath} has no tokenizer`);
const bos = tokenizer.bosTokenId === null ? [] : [tokenizer.bosTokenId];
const text = tokenizer.encode(readFileSync(textPath, 'utf8'), { addBos: false });
if (text.length <= PROMPT_TOKENS) throw new Error(`${textPath} has ${text.length} tokens, fewer than --prompt-tokens ${PROMPT_TOKENS}`);
const blockSize = 16;
const units = model.config.numLayers * model.config.numKvHeads;
const kvBlocks = POOL_SEQUENCES * units * Math.ceil(POOL_CONTEXT / blockSize);
let makeBackend: () => Backend | undefined = () => undefined;
if (BACKEND === 'webgpu') {
  const { requestWebGpuDevice, WebGpuBackend } = await import('@kvcompress/webgpu');
  const device = await requestWebGpuDevice();
  makeBackend = () => new WebGpuBackend(device);
} else if (BACKEND !== 'cpu') throw new Error(`--backend must be cpu or webgpu, got ${BACKEND}`);

const rows: {
  rate: number;
  seconds: number;
  tokens: number;
  tokensPerSecond: number;
  requestsPerMinute: number;
  peakRunning: number;
  compressions: number;
}[] = [];
for (const rate of [1, 4, 16, 64]) {
  const engine = new Engine({
    model,
    backend: makeBackend(),
    maxSequences: MAX_SEQUENCES,
    pressureHeadroom: PRESSURE_HEADROOM,
    kvBlocks,
    blockSize,
    ...(rate > 1 ? { policy: 'kv-compress', budget: { targetCompressionRate: rate }, protectedWindow: 16 } : {}),
  });
  let peakRunning = 0;
  engine.onStep((s) => {
    peakRunning = Math.max(peakRunning, s.running);
  });
  const app = createServer({ engine, modelId, maxQueue: 1024 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1/completions`;
  let next = 0;
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < REQUESTS; i = next++) {
        const start = (i * 997) % (text.length - PROMPT_TOKENS);
        const prompt = [...bos, ...text.slice(start, start + PROMPT_TOKENS - bos.length)];
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: modelId, prompt, max_tokens: MAX_TOKENS, temperature: 0.8, seed: i, stop: [] }),
        });
        const body = (await res.json()) as { usage?: { completion_tokens: number }; error?: { message: string } };
        if (res.status !== 200 || body.usage === undefined) throw new Error(`request ${i}: ${res.status} ${body.error?.message}`);
        tokens += body.usage.completion_tokens;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  rows.push({
    rate,
    seconds,
    tokens,
    tokensPerSecond: tokens / seconds,
    requestsPerMinute: (REQUESTS * 60) / seconds,
    peakRunning,
    compressions: engine.stats().compressions,
  });
  // Progress on stderr, so a run cut off by a time limit still leaves its finished rates.
  console.error(JSON.stringify(rows[rows.length - 1]));
  await app.close();
  // Frees this rate's GPU buffers before the next engine allocates its own (no-op on the CPU).
  (engine.backend as { destroyBuffers?: () => void }).destroyBuffers?.();
}
const base = rows[0] as (typeof rows)[number];
if (process.argv.includes('--json'))
  console.log(
    JSON.stringify({
      model: modelId,
      backend: BACKEND,
      requests: REQUESTS,
      concurrency: CONCURRENCY,
      promptTokens: PROMPT_TOKENS,
      maxTokens: MAX_TOKENS,
      kvBlocks,
      rows,
    }),
  );
else {
  console.log(
    `server throughput, ${modelId} ${BACKEND}, ${REQUESTS} requests x (${PROMPT_TOKENS} prompt + ${MAX_TOKENS} generated), concurrency ${CONCURRENCY}, ${kvBlocks} KV blocks`,
  );
  console.log('| rate | peak running | tokens/s | requests/min | vs 1x | compressions |');
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    console.log(
      `| ${r.rate}x | ${r.peakRunning} | ${r.tokensPerSecond.toFixed(0)} | ${r.requestsPerMinute.toFixed(0)} | ${(r.tokensPerSecond / base.tokensPerSecond).toFixed(2)}x | ${r.compressions} |`,
    );
  }
}
