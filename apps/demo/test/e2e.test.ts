// End to end: builds the app with Vite, serves the build, and drives it in headless Debian
// Chromium (WebGPU on SwiftShader; playwright-core, never a downloaded browser). The default
// model generates under two policies (KV-Compress and the demo's custom one); the page must
// show the text, pages per head that differ after compression, and a memory gauge equal to
// the engine's own counts. Then, with the server gone, the page must open again offline.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromiumPath, chromiumWebGpuArgs, hasShared, sharedPath } from '@kvcompress/test-support';
import { type Browser, chromium, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CUSTOM_POLICY } from '../src/custom-policy.ts';
import { defaultModelDir } from './default-model.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const appDir = path.resolve(here, '..');
const artifacts = path.join(appDir, 'test-artifacts');
const CHROMIUM = chromiumPath;

type LastRun = {
  backend: string;
  layers: number;
  kvHeads: number;
  blockSize: number;
  promptTokens: number;
  engine: { bytesPerBlock: number; policy: string; compressions: number; usedBlocks: number };
  decodeSteps: number;
  decodeMs: number;
  compressionMs: number;
  compressionRounds: number;
  elapsedMs: number;
  sides: {
    role: 'full' | 'compressed';
    policy: string;
    text: string;
    tokens: number[];
    reason: string | null;
    error: string | null;
    blocksPerHead: number[] | null;
    blocks: number | null;
    tokensPerSecond: number | null;
    compressions: number;
  }[];
};
type Demo = { lastRun(): LastRun | null };

let outDir = '';
let server: http.Server | undefined;
let browser: Browser | undefined;
let page: Page;
let origin = '';
const pageErrors: string[] = [];
const timings: Record<string, number> = {};

const TYPES: Record<string, string> = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.map': 'application/json',
};

/** Serves the build like a static host. */
function serve(dir: string): Promise<http.Server> {
  const s = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    let file = path.join(dir, decodeURIComponent(url.pathname));
    if (!file.startsWith(dir)) return void res.writeHead(403).end();
    if (existsSync(file) && statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!existsSync(file)) return void res.writeHead(404).end();
    res.setHeader('content-type', TYPES[path.extname(file)] ?? 'application/octet-stream');
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}

async function waitForState(states: string[], timeout: number): Promise<string> {
  await page
    .waitForFunction((s) => s.includes(document.body.dataset['state'] ?? ''), states, { timeout, polling: 250 })
    .catch(async (error: Error) => {
      const banner = await page.textContent('#banner').catch(() => '');
      const status = await page.textContent('#status').catch(() => '');
      throw new Error(`${error.message}\nstatus: ${status}\nbanner: ${banner}\npage errors: ${pageErrors.join('; ')}`);
    });
  return page.evaluate(() => document.body.dataset['state'] ?? '');
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`The demo's end-to-end test needs Chromium at ${CHROMIUM} (apt-get install chromium).`);
  defaultModelDir(); // a missing default model fails here
  mkdirSync(artifacts, { recursive: true });
  let t = performance.now();
  outDir = mkdtempSync(path.join(os.tmpdir(), 'kvc-demo-'));
  // A production build (vitest sets NODE_ENV=test, which Vite would honour).
  const nodeEnv = process.env['NODE_ENV'];
  process.env['NODE_ENV'] = 'production';
  try {
    await build({
      root: appDir,
      configFile: path.join(appDir, 'vite.config.ts'),
      mode: 'production',
      logLevel: 'warn',
      build: { outDir, emptyOutDir: true },
    });
  } finally {
    if (nodeEnv === undefined) delete process.env['NODE_ENV'];
    else process.env['NODE_ENV'] = nodeEnv;
  }
  timings['build'] = performance.now() - t;
  server = await serve(outDir);
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  t = performance.now();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...chromiumWebGpuArgs],
  });
  // One context for all pages: they share the service worker and Cache Storage.
  const context = await browser.newContext({ viewport: { width: 1440, height: 1100 } });
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  await page.goto(`${origin}/`);
  timings['launch'] = performance.now() - t;
}, 180_000);

afterAll(async () => {
  await browser?.close();
  server?.close();
  if (outDir !== '') rmSync(outDir, { recursive: true, force: true });
  const shown = Object.entries(timings).map(([k, v]) => [k, Number(v.toFixed(k.startsWith('tokens/s') ? 2 : 0))]);
  console.log('demo e2e timings (ms; tokens/s per sequence):', JSON.stringify(Object.fromEntries(shown)));
});

/** Sets the controls, presses Generate and waits for the run to end; returns the engine's figures. */
async function generate(policy: string, compare: boolean): Promise<LastRun> {
  await page.selectOption('#preset', 'passkey-128');
  await page.selectOption('#policy', policy);
  await page.check('input[name="budget-kind"][value="rate"]');
  await page.fill('#rate', '4');
  await page.fill('#protected-window', '16');
  await page.fill('#interval', '8');
  await page.fill('#max-tokens', '24');
  await page.fill('#temperature', '0');
  await page.setChecked('#compare', compare);
  const t = performance.now();
  await page.click('#generate');
  expect(await waitForState(['done'], 150_000)).toBe('done');
  timings[`generate ${policy}`] = performance.now() - t;
  const run = await page.evaluate(() => (globalThis as unknown as { kvcDemo: Demo }).kvcDemo.lastRun());
  if (run === null) throw new Error('the page reports no run');
  return run;
}

type Side = LastRun['sides'][number];

/** Tokens a finished request's cache saw: its prompt and every token it fed back. */
const tokensSeen = (run: LastRun, side: Side) => run.promptTokens + side.tokens.length - (side.reason === 'length' ? 1 : 0);

/** What the page shows against what the engine reported, for one finished run. */
async function checkRun(run: LastRun, policy: string): Promise<{ full: Side | undefined; compressed: Side }> {
  expect(await page.isHidden('#banner')).toBe(true);
  expect(run.backend).toBe('webgpu');
  expect(run.engine.policy).toBe(policy);
  const units = run.layers * run.kvHeads;
  expect(units).toBe(24); // 6 layers x 4 kv-heads
  expect(run.engine.bytesPerBlock).toBe(2 * run.blockSize * 64 * 2); // K+V of 16 slots, head dim 64, f16
  expect(run.engine.usedBlocks).toBe(0); // every sequence gave its pages back
  const full = run.sides.find((s) => s.role === 'full');
  const compressed = run.sides.find((s) => s.role === 'compressed');
  if (compressed === undefined) throw new Error('expected the policy side');

  for (const side of run.sides) {
    expect(side.error).toBeNull();
    expect(side.reason).toMatch(/^(stop|length)$/);
    expect(side.tokens.length).toBeGreaterThan(0);
    // The streamed text is on the page.
    const shown = (await page.textContent(`.output[data-role="${side.role}"] .text`)) ?? '';
    expect(shown.trim().length).toBeGreaterThan(0);
    expect(side.text.startsWith(shown)).toBe(true);
    // The grid shows the engine's blocks per (layer, kv-head).
    const cells = await page.$$eval(`.grid.pages[data-role="${side.role}"] .cell`, (cs) =>
      cs.map((c) => Number((c as HTMLElement).dataset['blocks'])),
    );
    expect(cells).toEqual(side.blocksPerHead);
    // The gauge shows the engine's blocks times the engine's bytes per block.
    const gauge = await gaugeRow(side.role);
    expect(gauge.computed).toBe(false);
    expect(gauge.blocks).toBe(side.blocks);
    expect(gauge.bytes).toBe((side.blocks ?? -1) * run.engine.bytesPerBlock);
  }
  // The compressed side holds a different number of pages per head, and fewer in all than
  // the full cache, which keeps every token in every head.
  expect(new Set(compressed.blocksPerHead).size).toBeGreaterThan(1);
  expect(compressed.compressions).toBeGreaterThan(0);
  const fullBlocks = (side: Side) => Math.ceil(tokensSeen(run, side) / run.blockSize);
  if (full !== undefined) {
    expect(full.blocksPerHead).toEqual(new Array(units).fill(fullBlocks(full)));
  } else {
    const gauge = await gaugeRow('full');
    expect(gauge.computed).toBe(true);
    expect(gauge.bytes).toBe(units * fullBlocks(compressed) * run.engine.bytesPerBlock);
  }
  expect(compressed.blocks).toBeLessThan(units * fullBlocks(compressed) * 0.75);

  // The first divergence is where the token streams first differ, marked in both outputs.
  let d = -1;
  if (full !== undefined) {
    const n = Math.min(full.tokens.length, compressed.tokens.length);
    for (let i = 0; i < n && d < 0; i++) if (full.tokens[i] !== compressed.tokens[i]) d = i;
    if (d < 0 && full.tokens.length !== compressed.tokens.length) d = n;
    if (d >= 0 && d < n) expect(await page.locator('.tok.diverged').count()).toBe(2);
  }
  expect(Number(await page.getAttribute('#divergence', 'data-index'))).toBe(d);
  // Performance figures come from the run.
  const decode = Number(await page.getAttribute('#perf dd[data-key="decode"]', 'data-value'));
  expect(decode).toBeCloseTo((run.decodeSteps / run.decodeMs) * 1000, 2);
  expect(decode).toBeGreaterThan(0);
  expect(Number(await page.getAttribute('#perf dd[data-key="compression"]', 'data-value'))).toBeCloseTo(run.compressionMs, 2);
  expect(run.compressionMs).toBeGreaterThan(0);
  expect(await page.locator('#rounds tbody tr').count()).toBe(compressed.compressions);
  expect(await page.locator('.grid.importance[data-role="compressed"][data-ready="true"]').count()).toBe(1);
  timings[`tokens/s ${policy}`] = decode;
  return { full, compressed };
}

async function gaugeRow(role: string): Promise<{ bytes: number; blocks: number; computed: boolean }> {
  return page.$eval(`.gauge-row[data-role="${role}"]`, (r) => {
    const d = (r as HTMLElement).dataset;
    return { bytes: Number(d['bytes']), blocks: Number(d['blocks']), computed: d['computed'] === 'true' };
  });
}

describe('the demo in headless Chromium (WebGPU on SwiftShader)', () => {
  it('loads the default model on WebGPU', async () => {
    const t = performance.now();
    expect(await waitForState(['ready', 'error'], 150_000)).toBe('ready');
    timings['model ready'] = performance.now() - t;
    expect(await page.textContent('#status')).toMatch(/Ready: kvc-20m-4k on WebGPU/);
    expect(await page.textContent('#model-info')).toMatch(/6 layers, 8 query heads sharing 4 kv-heads of 64/);
    expect(await page.isHidden('#banner')).toBe(true);
    // The app shell is cached for offline use.
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 30_000 });
    // SwiftShader's attention kernels cost more the longer the context they are sized for:
    // 512 tokens are plenty here (the engine is made again).
    await page.evaluate(() => {
      (document.querySelector('#controls details') as HTMLDetailsElement).open = true;
    });
    await page.fill('#max-context', '512');
    await page.dispatchEvent('#max-context', 'change');
    expect(await waitForState(['ready', 'error'], 60_000)).toBe('ready');
    expect(await page.textContent('#model-info')).toMatch(/context 512\./);
  }, 200_000);

  it('generates under KV-Compress beside the full cache: text, uneven pages per head, a gauge equal to the engine counts', async () => {
    const run = await generate('kv-compress', true);
    const { full } = await checkRun(run, 'kv-compress');
    expect(full).toBeDefined();
    await page.screenshot({ path: path.join(artifacts, 'demo-kv-compress.png'), fullPage: true });
  }, 200_000);

  it('lists a custom policy registered in a few lines, and runs it', async () => {
    const options = await page.$$eval('#policy option', (os) => os.map((o) => (o as HTMLOptionElement).value));
    for (const name of ['kv-compress', 'snapkv', 'pyramidkv', 'ada-kv', 'h2o', 'streaming-llm', 'random', 'none', CUSTOM_POLICY]) {
      expect(options).toContain(name);
    }
    // Alone this time: the gauge computes what the full cache would hold.
    const run = await generate(CUSTOM_POLICY, false);
    const { full, compressed } = await checkRun(run, CUSTOM_POLICY);
    expect(full).toBeUndefined();
    // The policy's own rule: layer 0 keeps every page, deeper layers lose some.
    const pages = Math.ceil(tokensSeen(run, compressed) / run.blockSize);
    expect(compressed.blocksPerHead?.slice(0, run.kvHeads)).toEqual(new Array(run.kvHeads).fill(pages));
    expect(Math.max(...(compressed.blocksPerHead ?? []).slice(run.kvHeads))).toBeLessThan(pages);
    await page.screenshot({ path: path.join(artifacts, `demo-${CUSTOM_POLICY}.png`), fullPage: true });
    // And one registered from the console shows up in the picker.
    await page.evaluate(() =>
      (globalThis as unknown as { kvcDemo: { registerPolicy(p: unknown): void } }).kvcDemo.registerPolicy({
        name: 'console-uniform',
        description: 'every head keeps its share of the budget, by metric',
        plan(ctx: { units: number; length(u: number): number; keepPerHead: number; evictLowest(u: number, n: number): number }) {
          for (let u = 0; u < ctx.units; u++) ctx.evictLowest(u, Math.max(0, ctx.length(u) - ctx.keepPerHead));
        },
      }),
    );
    expect(await page.$$eval('#policy option', (os) => os.map((o) => (o as HTMLOptionElement).value))).toContain('console-uniform');
  }, 200_000);

  it.skipIf(!hasShared('models/stories260K/stories260K.gguf'))(
    'loads a GGUF file picked from disk and generates with it',
    async () => {
      await page.setInputFiles('#pick-files', sharedPath('models/stories260K/stories260K.gguf'));
      expect(await waitForState(['ready', 'error'], 60_000)).toBe('ready');
      expect(await page.textContent('#status')).toMatch(/Ready: stories260K.gguf on WebGPU/);
      expect(await page.textContent('#model-info')).toMatch(/stories260K.gguf \(gguf\).* 5 layers, 8 query heads sharing 4 kv-heads of 8/);
      await page.selectOption('#preset', 'story');
      await page.selectOption('#policy', 'snapkv');
      await page.fill('#max-tokens', '8');
      await page.setChecked('#compare', false);
      await page.click('#generate');
      expect(await waitForState(['done'], 120_000)).toBe('done');
      const run = await page.evaluate(() => (globalThis as unknown as { kvcDemo: Demo }).kvcDemo.lastRun());
      expect(run?.layers).toBe(5);
      expect(run?.sides[0]?.error).toBeNull();
      expect(run?.sides[0]?.tokens.length).toBeGreaterThan(0);
      expect(((await page.textContent('.output .text')) ?? '').length).toBeGreaterThan(0);
    },
    200_000,
  );

  it('opens again offline: the app from the service worker, the model from Cache Storage', async () => {
    const closed = new Promise<void>((resolve) => server?.close(() => resolve()));
    server?.closeAllConnections();
    await closed;
    server = undefined;
    const t = performance.now();
    await page.reload();
    expect(await waitForState(['ready', 'error'], 150_000)).toBe('ready');
    timings['offline reload'] = performance.now() - t;
    expect(await page.textContent('#status')).toMatch(/Ready: kvc-20m-4k on WebGPU/);
    expect(await page.isHidden('#banner')).toBe(true);
    // Really offline: the origin does not answer.
    expect(
      await page.evaluate(() =>
        fetch('./models/kvc-20m-4k/config.json', { cache: 'no-store' }).then(
          () => 'answered',
          () => 'offline',
        ),
      ),
    ).toBe('offline');
    await page.screenshot({ path: path.join(artifacts, 'demo-offline.png') });
  }, 200_000);

  it('says so when the browser has no WebGPU, and runs on the CPU instead', async () => {
    const plain = await page.context().newPage();
    try {
      await plain.addInitScript(() => {
        Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined });
      });
      await plain.goto(`${origin}/`); // served by the service worker: the server is gone
      await plain.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset['state'] ?? ''), null, { timeout: 120_000 });
      expect(await plain.textContent('#banner')).toMatch(
        /^WebGPU is not available: this browser has no navigator.gpu\. Use a recent Chrome/,
      );
      expect(await plain.isVisible('#banner')).toBe(true);
      expect(await plain.textContent('#status')).toMatch(/Ready: kvc-20m-4k on the CPU/);
      expect(await plain.$eval('#backend', (b) => (b as HTMLSelectElement).value)).toBe('cpu');
      expect(await plain.$eval('option[value="webgpu"]', (o) => (o as HTMLOptionElement).disabled)).toBe(true);
    } finally {
      await plain.close();
    }
  }, 150_000);
});
