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
  });
  // The same cases with the subgroup kernels turned off (the path for devices without them).
  it.each(cases.map((c) => c.name))('%s (no subgroups)', async (name) => {
    const r = await page.evaluate((n) => (globalThis as unknown as { kvc: Kvc }).kvc.runCase(n, false), name);
    expect(r.subgroups).toBe(false);
    expect(r.validation).toBeNull();
    expect(r.worst).toBeLessThan(r.tolerance);
  });
});

describe.skipIf(!haveChromium || !hasShared('models/stories260K/stories260K.bin'))('stories260K on WebGPU', () => {
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
