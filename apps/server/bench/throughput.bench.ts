// Server throughput at a fixed KV memory budget: the same pool of KV blocks, the same stream
// of requests through the HTTP API, at compression 1x, 4x, 16x and 64x (KV-Compress,
// protected window 16). More compression lets more sequences share the pool.
//   node --conditions=source apps/server/bench/throughput.bench.ts [--requests 96] [--concurrency 32] [--json]
//
// Model: stories260K (GGUF) on the CPU backend. Each request: a 400-token TinyStories
// excerpt (a different one per request), then up to 48 sampled tokens (temperature 0.8,
// seeded; EOS ends a request early: tokens/s counts what was generated). The pool holds 4 sequences at
// full length (4 x 512 tokens per head): at 1x that bounds the batch to 4, the compressed
// runs fit more. Prints tokens/s and completed requests per minute, and the ratios to 1x.
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Engine } from '@kvcompress/engine';
import { loadModel } from '@kvcompress/models';
import { createServer } from '../src/server.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const REQUESTS = arg('--requests', 96);
const CONCURRENCY = arg('--concurrency', 32);
const PROMPT_TOKENS = 400;
const MAX_TOKENS = 48;
const shared = process.env['KVC_SHARED_DIR'] ?? path.resolve(import.meta.dirname, '../../../../shared');
const model = await loadModel(path.join(shared, 'models/stories260K/stories260K.gguf'));
const tokenizer = model.tokenizer;
if (tokenizer === null) throw new Error('stories260K.gguf has no tokenizer');
const text = tokenizer.encode(readFileSync(path.join(shared, 'data/tinystories-valid/TinyStories-valid-first1000.txt'), 'utf8'), {
  addBos: false,
});
const blockSize = 16;
const units = model.config.numLayers * model.config.numKvHeads;
const kvBlocks = 4 * units * Math.ceil(512 / blockSize);

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
    maxSequences: 64,
    kvBlocks,
    blockSize,
    ...(rate > 1 ? { policy: 'kv-compress', budget: { targetCompressionRate: rate }, protectedWindow: 16 } : {}),
  });
  let peakRunning = 0;
  engine.onStep((s) => {
    peakRunning = Math.max(peakRunning, s.running);
  });
  const app = createServer({ engine, modelId: 'stories260K', maxQueue: 1024 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1/completions`;
  let next = 0;
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < REQUESTS; i = next++) {
        const start = (i * 997) % (text.length - PROMPT_TOKENS);
        const prompt = [1, ...text.slice(start, start + PROMPT_TOKENS - 1)];
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'stories260K', prompt, max_tokens: MAX_TOKENS, temperature: 0.8, seed: i, stop: [] }),
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
  await app.close();
}
const base = rows[0] as (typeof rows)[number];
if (process.argv.includes('--json')) console.log(JSON.stringify({ requests: REQUESTS, concurrency: CONCURRENCY, kvBlocks, rows }));
else {
  console.log(
    `server throughput, stories260K CPU, ${REQUESTS} requests x (${PROMPT_TOKENS} prompt + ${MAX_TOKENS} generated), concurrency ${CONCURRENCY}, ${kvBlocks} KV blocks`,
  );
  console.log('| rate | peak running | tokens/s | requests/min | vs 1x | compressions |');
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    console.log(
      `| ${r.rate}x | ${r.peakRunning} | ${r.tokensPerSecond.toFixed(0)} | ${r.requestsPerMinute.toFixed(0)} | ${(r.tokensPerSecond / base.tokensPerSecond).toFixed(2)}x | ${r.compressions} |`,
    );
  }
}
