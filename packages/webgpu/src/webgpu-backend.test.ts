// WebGPU kernels and the whole model against the CPU reference, in headless Chromium (WebGPU
// on SwiftShader on CPU-only machines, Debian's chromium driven by playwright-core).
//
// Why a browser and not Dawn in Node: on this project's CI machines (Firecracker VMs),
// SwiftShader loaded into a Node process crashes intermittently while running compute
// shaders that contain loops ("The futex facility returned an unexpected error code",
// pthread mutex assertions), more often once the process holds large WebAssembly
// reservations. The same SwiftShader inside Chromium's GPU process runs them reliably. Node +
// Dawn remains the path on real GPUs (see bench/), and `requestWebGpuDevice` supports both.
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromiumPath, chromiumWebGpuArgs, hasShared, sharedDir } from '@kvcompress/test-support';
import { build } from 'esbuild';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kvc } from '../test/browser-entry.ts';
import { cases } from '../test/conformance-cases.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = chromiumPath;
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env['CI'] === 'true')
  throw new Error(`CI needs Chromium at ${CHROMIUM} (apt-get install chromium) for the WebGPU tests.`);

let browser: Browser | undefined;
let page: Page;
let server: http.Server | undefined;

/** Bundles test/browser-entry.ts for the browser; Node-only modules are stubbed out. */
async function bundle(): Promise<string> {
  const result = await build({
    entryPoints: [path.join(here, '../test/browser-entry.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2023',
    conditions: ['source'],
    write: false,
    logLevel: 'silent',
    plugins: [
      {
        name: 'stub-node-and-ort',
        setup(b) {
          b.onResolve({ filter: /^(node:.*|onnxruntime-web|webgpu)$/ }, (args) => ({ path: args.path, namespace: 'stub' }));
          b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({
            contents: 'export default {}; export const InferenceSession = {}, Tensor = class {}, env = { wasm: {} };',
            loader: 'js',
          }));
        },
      },
    ],
  });
  return result.outputFiles[0]?.text ?? '';
}

beforeAll(async () => {
  if (!haveChromium) return;
  const js = await bundle();
  const shared = sharedDir();
  server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/') {
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><meta charset="utf-8"><script type="module" src="/entry.js"></script>');
    } else if (url === '/entry.js') {
      res.setHeader('content-type', 'text/javascript');
      res.end(js);
    } else if (url.startsWith('/shared/models/') && !url.includes('..')) {
      const file = path.join(shared, url.slice('/shared/'.length));
      if (existsSync(file)) res.end(readFileSync(file));
      else res.writeHead(404).end();
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...chromiumWebGpuArgs],
  });
  page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page
    .waitForFunction(() => 'kvc' in globalThis, null, { timeout: 60_000 })
    .catch(() => {
      throw new Error(`The WebGPU test page did not start: ${errors.join('; ')}`);
    });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  server?.close();
});

describe.skipIf(!haveChromium)('WebGPU kernels against the CPU reference (headless Chromium)', () => {
  it.each(cases.map((c) => c.name))('%s', async (name) => {
    const r = await page.evaluate((n) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n), name);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
    // Prefill chunks on one KV buffer take the tiled prefill kernel; other cases do not.
    expect(r.prefillDispatches > 0).toBe(name.startsWith('prefill attention'));
    // Decode/mixed attention takes the stream kernel where it applies (subgroups, D % 8 == 0,
    // G <= 8): not the group-16 or D=20 cases, which keep the wide and tiled kernels.
    expect(r.streamDispatches > 0).toBe(/^(paged|decode) attention/.test(name) && !/x 16 queries|D=20/.test(name));
  });
  // The stream kernel one key per key group and step: on SwiftShader's 4-wide subgroups a
  // step covers 64 keys, so splits take several steps and the online-softmax rescale runs.
  const streamCases = cases.map((c) => c.name).filter((n) => /^(paged|decode) attention/.test(n) && !/x 16 queries|D=20/.test(n));
  it.each(streamCases)('%s (stream kernel, 1 key per step)', async (name) => {
    const r = await page.evaluate((n) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, true, 1, 1), name);
    expect(r.streamDispatches).toBeGreaterThan(0);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
  });
  // The fewest splits (attentionSplitTarget 1): on a pool in one binding each workgroup of the
  // stream kernel walks up to 2048 keys (the 2100- and 3000-token heads: two splits each).
  const longStreamCases = streamCases.filter((n) => /\b(1300|2100|3000) tokens/.test(n));
  it('has long stream cases', () => expect(longStreamCases.length).toBeGreaterThanOrEqual(3));
  it.each(longStreamCases)('%s (stream kernel, fewest splits)', async (name) => {
    const r = await page.evaluate((n) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, true, 1, undefined, 1), name);
    expect(r.streamDispatches).toBeGreaterThan(0);
    expect(r.streamMaxKeys).toBe(2048);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
  });
  // The stream kernel's previous layout, kept as options: 256-thread workgroups whose final
  // merge has a buffer of its own (the default reuses the key slots; BENCHMARKS.md).
  it.each(longStreamCases)('%s (stream kernel, 256 threads, merge buffer of its own)', async (name) => {
    const r = await page.evaluate(
      (n) =>
        (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, true, 1, undefined, 1, {
          streamWorkgroupSize: 256,
          streamMergeInSlots: false,
        }),
      name,
    );
    expect(r.streamDispatches).toBeGreaterThan(0);
    expect(r.streamMaxKeys).toBe(2048);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
  });
  // The same cases with the subgroup kernels turned off (the path for devices without them).
  it.each(cases.map((c) => c.name))('%s (no subgroups)', async (name) => {
    const r = await page.evaluate((n) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, false), name);
    expect(r.subgroups).toBe(false);
    expect(r.streamDispatches).toBe(0);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
  });
});

// KV pools larger than one storage binding: the pool forced into 2-4 chunk buffers (slots of
// every case spread across the chunk boundaries), for every case that touches K/V.
describe.skipIf(!haveChromium)('WebGPU KV cache split into chunk buffers = the CPU reference (headless Chromium)', () => {
  const kvCases = cases.map((c) => c.name).filter((n) => /attention|cache moves|append/.test(n));
  it('chunked kernels with windows of 2-4 chunks compile (wider than SwiftShader binds)', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.compileChunkedKernels());
    expect(r.errors).toEqual([]);
    expect(r.kernels).toBe(66);
  });
  it('covers append, attention and moves cases', () => {
    expect(kvCases.length).toBeGreaterThanOrEqual(12);
  });
  it.each(kvCases.map((n, i) => [n, 2 + (i % 3)] as const))('%s (about %i chunks)', async (name, target) => {
    const r = await page.evaluate(([n, t]) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, true, t), [name, target] as const);
    expect(r.validation).toBeNull();
    expect(r.kvChunks).toBeGreaterThanOrEqual(2);
    expect(r.kvChunks).toBeLessThanOrEqual(4);
    // A chunked pool falls back to the split-K kernels.
    expect(r.prefillDispatches).toBe(0);
    expect(r.worst).toBeLessThan(r.tolerance);
  });
});

describe.skipIf(!haveChromium || !hasShared('models/stories260K/stories260K.bin'))('stories260K on WebGPU', () => {
  it.each([2, 4])(
    'greedy ids equal the CPU backend for 256 tokens with KV-Compress 4x and the KV pool in about %i chunk buffers',
    async (chunks) => {
      const r = await page.evaluate((c) => (globalThis as unknown as { kvc: Kvc }).kvc.greedy(true, 256, c), chunks);
      expect(r.validation).toBeNull();
      expect(r.gpuKvChunks).toBeGreaterThanOrEqual(2);
      expect(r.gpu).toHaveLength(256);
      expect(r.gpu).toEqual(r.cpu);
    },
    300_000,
  );

  it.each([false, true])(
    'greedy ids equal the CPU backend for 256 tokens (KV-Compress 4x: %s)',
    async (compress) => {
      const r = await page.evaluate((c) => (globalThis as unknown as { kvc: Kvc }).kvc.greedy(c, 256), compress);
      expect(r.validation).toBeNull();
      expect(r.gpu).toHaveLength(256);
      expect(r.gpu).toEqual(r.cpu);
    },
    300_000,
  );

  it('a 200-token prompt prefilled in 64-row chunks takes the tiled prefill kernel; greedy ids equal the CPU backend with KV-Compress 4x', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.greedy(true, 64, 1, 200, 64));
    expect(r.validation).toBeNull();
    // 4 prefill chunks (64, 64, 64, 8 rows): the first three (>= 16 rows) x 5 layers.
    expect(r.prefillDispatches).toBe(3 * 5);
    expect(r.gpu).toHaveLength(64);
    expect(r.gpu).toEqual(r.cpu);
  }, 300_000);

  it('a batch of requests under different policies gives each the same ids and per-head blocks as the CPU backend', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.mixedPolicies(24));
    expect(r.validation).toBeNull();
    expect(r.gpu.map((d) => d.policy)).toEqual(r.policies);
    for (const d of r.gpu) expect(d.ids).toHaveLength(24);
    expect(r.gpu).toEqual(r.cpu);
  }, 300_000);

  it('a lost device ends the request with DeviceLostError, frees its blocks, and a new engine recovers', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.deviceLoss());
    expect(r.reason).toBe('error');
    expect(r.code).toBe('DEVICE_LOST');
    expect(r.message).toMatch(/Create a new engine/);
    expect(r.tokensBefore).toBeGreaterThanOrEqual(11);
    expect(r.tokensBefore).toBeLessThan(200);
    expect(r.freeBlocks).toBe(r.totalBlocks);
    expect(r.recovered).toBe(true);
  }, 300_000);
});

describe.skipIf(!haveChromium)('eviction selection on the device = the CPU planner (headless Chromium)', () => {
  const base = { layers: 2, kvHeads: 2, blockSize: 4, distinct: 0, specials: false, ragged: false, policy: 'kv-compress' as const };
  const named: [string, Parameters<Kvc['selection']>[0]][] = [
    ['continuous metrics, one sequence', { ...base, seed: 1, tokens: [97] }],
    [
      'ties everywhere (2 values), ragged heads, three sequences in one round',
      { ...base, seed: 2, tokens: [130, 41, 260], distinct: 2, ragged: true },
    ],
    ['NaN, -0, +0, -Inf, +Inf and negative metrics', { ...base, seed: 3, tokens: [200, 77], distinct: 5, specials: true, ragged: true }],
    [
      'ada-kv: a group per layer with per-head floors',
      { ...base, seed: 4, layers: 3, kvHeads: 4, tokens: [150, 220], distinct: 40, policy: 'ada-kv' },
    ],
    [
      'long heads: 3000 tokens, B = 16 (many chunks per row)',
      { ...base, seed: 5, blockSize: 16, tokens: [3000], distinct: 40, ragged: true },
    ],
    ['block size 1, 8 kv-heads', { ...base, seed: 6, blockSize: 1, kvHeads: 8, layers: 1, tokens: [90, 60], distinct: 5 }],
    [
      'no subgroups; compaction of f16 rows (head dim 8) in a pool of 16 chunk buffers (several windows), in two parts in flight at once',
      // Tokens appended 4 at a time in turns: heads' blocks lie all through the pool, so some
      // moves cross windows (a head's own released blocks come back to it, so in a pool filled
      // in one go they would not).
      {
        ...base,
        seed: 8,
        tokens: [180, 95],
        distinct: 5,
        ragged: true,
        subgroups: false,
        headDim: 8,
        f16: true,
        kvChunks: 16,
        interleave: 4,
        parts: 2,
      },
    ],
    [
      'short heads, a few blocks freed a row; a compaction per sequence, all in flight at once',
      { ...base, seed: 9, tokens: [22, 13, 30], distinct: 5, ragged: true, parts: 3 },
    ],
    [
      'four compactions in flight (the most), a fifth refused',
      { ...base, seed: 10, tokens: [40, 25, 60, 33], distinct: 0, ragged: true, parts: 4 },
    ],
  ];
  it.each(named)(
    '%s',
    async (_name, params) => {
      const r = await page.evaluate((q) => (globalThis as unknown as { kvc: Kvc }).kvc.selection(q), params);
      expect(r.validation).toBeNull();
      expect(r.mismatches).toEqual([]);
      expect(r.sameCompaction).toBe(true);
      expect(r.deviceCompaction).toEqual([]);
      expect(r.fifthRefused).toBe(params.parts === 4 ? true : null);
      if (params.kvChunks === undefined) expect(r.kvChunks).toBe(1);
      else {
        // Moves within a window of chunks and moves across windows (through scratch) both ran.
        expect(r.kvChunks).toBeGreaterThanOrEqual(2);
        expect(r.windowMoves).toBeGreaterThan(0);
        expect(r.crossWindowMoves).toBeGreaterThan(0);
      }
      expect(r.rows).toBeGreaterThan(0);
      expect(r.evicted).toBeGreaterThan(0);
    },
    120_000,
  );

  it('property: random shapes, budgets, windows, ties and specials decide as the CPU planner', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.selectionProperty(25, 20_241));
    expect(r.runs).toBe(25);
    expect(r.evicted).toBeGreaterThan(0);
    // Some rows were cut by the device's own select (keys below the group threshold kept).
    expect(r.partialRows).toBeGreaterThan(0);
  }, 300_000);
});

describe.skipIf(!haveChromium || !hasShared('models/stories260K/stories260K.bin'))('stories260K: device eviction selection', () => {
  it('KV-Compress 4x selected and compacted on the device, or compacted on the host: same greedy ids, compressions and per-head blocks as host planning', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.selectionEngine());
    expect(r.validation).toBeNull();
    expect(r.device.deviceSelection).toBe(true);
    expect(r.host.deviceSelection).toBe(false);
    expect(r.device.log.some((l) => l.startsWith('prefill'))).toBe(true);
    expect(r.device.log.some((l) => l.startsWith('interval'))).toBe(true);
    expect(r.device.log.some((l) => l.startsWith('memory-pressure'))).toBe(true);
    for (const run of [r.device, r.masks]) {
      expect(run?.log).toEqual(r.host.log);
      expect(run?.tokens).toEqual(r.host.tokens);
      expect(run?.blocksPerHead).toEqual(r.host.blocksPerHead);
      expect(run?.preemptions).toBe(r.host.preemptions);
      expect(run?.deviceSelectionRounds).toBeGreaterThan(0);
    }
    expect(r.device.deviceCompactionRounds).toBe(r.device.deviceSelectionRounds);
    // Interval rounds of several sequences ran in parts (roundParts, default 2).
    expect(r.device.deviceRoundsInParts).toBeGreaterThan(0);
    expect(r.masks?.deviceCompactionRounds).toBe(0);
    expect(r.host.deviceSelectionRounds).toBe(0);
  }, 300_000);

  it('per-request block-rule policies (kv-compress, kv-compress-trailing, ada-kv) select on the device as on the host', async () => {
    const r = await page.evaluate(() =>
      (globalThis as unknown as { kvc: Kvc }).kvc.selectionEngine(['kv-compress', 'kv-compress-trailing', 'ada-kv'], false),
    );
    expect(r.validation).toBeNull();
    expect(r.device.deviceCompactionRounds).toBeGreaterThan(0);
    expect(r.host.deviceSelectionRounds).toBe(0);
    expect(r.device.log.some((l) => l.startsWith('memory-pressure'))).toBe(true);
    expect(r.device.log).toEqual(r.host.log);
    expect(r.device.tokens).toEqual(r.host.tokens);
    expect(r.device.blocksPerHead).toEqual(r.host.blocksPerHead);
  }, 300_000);
});

describe.skipIf(!haveChromium)('sampled token selection on the device = the CPU Sampler (headless Chromium)', () => {
  const rows = (list: [number, number, number][]) =>
    list.map(([temperature, topK, topP], i) => ({ temperature, topK, topP, seed: 100 + i }));
  const mixed = rows([
    [0, 0, 1],
    [1, 0, 1],
    [0.8, 40, 1],
    [1, 0, 0.9],
    [0.7, 40, 0.9],
    [1.3, 1, 1],
    [1, 999, 0.5],
    [1, 5000, 1],
    [0.5, 3, 0.3],
  ]);
  const named: [string, Parameters<Kvc['sampling']>[0]][] = [
    ['temperature, top-k, top-p and greedy rows, continuous logits (vocab 1000)', { seed: 1, vocab: 1000, distinct: 0, rows: mixed }],
    ['many equal logits (4 values): ranks by id among ties', { seed: 2, vocab: 1000, distinct: 4, rows: mixed }],
    ['a 32000-token vocabulary', { seed: 3, vocab: 32000, distinct: 0, rows: mixed }],
    ['one-token vocabulary', { seed: 4, vocab: 1, distinct: 0, rows: mixed }],
  ];
  it.each(named)(
    '%s',
    async (_, params) => {
      const r = await page.evaluate((q) => (globalThis as unknown as { kvc: Kvc }).kvc.sampling(q), params);
      expect(r.validation).toBeNull();
      expect(r.gpu).toEqual(r.cpu);
    },
    120_000,
  );

  it('property: random vocabularies, ties and parameters pick the CPU Sampler ids', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.samplingProperty(25, 4242));
    expect(r.runs).toBe(25);
    expect(r.rows).toBeGreaterThan(25);
  }, 300_000);
});

describe.skipIf(!haveChromium || !hasShared('models/stories260K/stories260K.bin'))('stories260K: device sampling', () => {
  it('sampled requests (top-k, top-p, plain, greedy) give the same tokens picked on the device or the host', async () => {
    const r = await page.evaluate(() => (globalThis as unknown as { kvc: Kvc }).kvc.samplingEngine());
    expect(r.validation).toBeNull();
    expect(r.device).toEqual(r.host);
    expect(r.device.every((t) => t.length === 32)).toBe(true);
  }, 300_000);
});
