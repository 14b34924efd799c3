/// <reference types="@webgpu/types" />
// Runs in headless Chromium (WebGPU on SwiftShader in CI): the conformance cases against the
// CPU reference, and whole-model greedy decoding on both backends. Driven by
// ../src/webgpu-backend.test.ts through window.kvc.
import { type DoneEvent, Engine } from '@kvcompress/engine';
import { loadLlama2cModel } from '@kvcompress/models';
import { requestWebGpuDevice } from '../src/device.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';
import { cases } from './conformance-cases.ts';
import { type CaseResult, runConformanceCase } from './run-case.ts';

const device = await requestWebGpuDevice();

async function runCase(name: string, subgroups = true): Promise<CaseResult> {
  const c = cases.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no case ${name}`);
  return runConformanceCase(device, c, subgroups);
}

/** Greedy ids of stories260K from BOS on both backends, with the full cache or KV-Compress. */
async function greedy(
  compress: boolean,
  tokens: number,
): Promise<{ cpu: number[]; gpu: number[]; validation: string | null; gpuMs: number }> {
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const options = compress ? { budget: { targetCompressionRate: 4 }, protectedWindow: 16, compressionInterval: 32 } : {};
  const cpu = await new Engine({ model, maxSequences: 1, ...options }).complete([1], { maxTokens: tokens, stopTokens: [] });
  device.pushErrorScope('validation');
  const t0 = performance.now();
  const gpu = await new Engine({ model, maxSequences: 1, backend: new WebGpuBackend(device), ...options }).complete([1], {
    maxTokens: tokens,
    stopTokens: [],
  });
  const gpuMs = performance.now() - t0;
  const error = await device.popErrorScope();
  if (gpu.error !== undefined) throw gpu.error;
  return { cpu: [...cpu.tokens], gpu: [...gpu.tokens], validation: error === null ? null : error.message, gpuMs };
}

/**
 * Destroys the device mid-generation: the request must end with DeviceLostError (not hang),
 * the engine must give back every block, and a new engine on a new device must work.
 */
async function deviceLoss(): Promise<{
  reason: string;
  code: string | null;
  message: string;
  tokensBefore: number;
  freeBlocks: number;
  totalBlocks: number;
  recovered: boolean;
}> {
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const doomed = await requestWebGpuDevice();
  const engine = new Engine({ model, maxSequences: 2, backend: new WebGpuBackend(doomed) });
  let tokensBefore = 0;
  let done: DoneEvent | null = null;
  for await (const e of engine.generate([1], { maxTokens: 200, stopTokens: [] })) {
    if (e.type === 'token') {
      tokensBefore++;
      if (e.index === 10) doomed.destroy();
    } else done = e;
  }
  const error = done?.error as (Error & { code?: string }) | undefined;
  const stats = engine.stats();
  const fresh = new Engine({ model, maxSequences: 1, backend: new WebGpuBackend(await requestWebGpuDevice()) });
  const cpu = await new Engine({ model, maxSequences: 1 }).complete([1], { maxTokens: 24, stopTokens: [] });
  const gpu = await fresh.complete([1], { maxTokens: 24, stopTokens: [] });
  return {
    reason: done?.reason ?? 'none',
    code: error?.code ?? null,
    message: error?.message ?? '',
    tokensBefore,
    freeBlocks: stats.freeBlocks,
    totalBlocks: stats.totalBlocks,
    recovered: gpu.tokens.length === 24 && gpu.tokens.every((t, i) => t === cpu.tokens[i]),
  };
}

/**
 * One batch of requests that each name their own policy (one engine, 4x): greedy ids and
 * per-head blocks of each sequence on both backends. Each decode step mixes rows that record
 * L2 (kv-compress), L1 (h2o) and nothing (snapkv, streaming-llm).
 */
async function mixedPolicies(tokens: number): Promise<{
  policies: string[];
  cpu: { policy: string; ids: number[]; blocks: number[] }[];
  gpu: { policy: string; ids: number[]; blocks: number[] }[];
  validation: string | null;
}> {
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const reference = (await (await fetch('/shared/models/stories260K/reference_greedy.json')).json()) as { token_ids: number[] };
  const policies = ['kv-compress', 'snapkv', 'h2o', 'streaming-llm'];
  const prompts = policies.map((_, i) => [1, ...reference.token_ids.slice(0, 60 + 7 * i)]);
  const run = async (backend?: WebGpuBackend) => {
    const engine = new Engine({
      model,
      maxSequences: policies.length,
      budget: { targetCompressionRate: 4 },
      protectedWindow: 16,
      compressionInterval: 8,
      ...(backend === undefined ? {} : { backend }),
    });
    const done = await Promise.all(
      policies.map((policy, i) => engine.complete(prompts[i] as number[], { maxTokens: tokens, stopTokens: [], compression: { policy } })),
    );
    return done.map((d) => {
      if (d.error !== undefined) throw d.error;
      return { policy: d.policy, ids: [...d.tokens], blocks: [...d.blocksPerHead] };
    });
  };
  const cpu = await run();
  device.pushErrorScope('validation');
  const gpu = await run(new WebGpuBackend(device));
  const error = await device.popErrorScope();
  return { policies, cpu, gpu, validation: error === null ? null : error.message };
}

const kvc = {
  names: cases.map((c) => c.name),
  runCase,
  greedy,
  mixedPolicies,
  deviceLoss,
  adapter: device.adapterInfo?.description ?? '',
};
/** What the test drives through `globalThis.kvc`. */
export type Kvc = typeof kvc;
(globalThis as unknown as { kvc: Kvc }).kvc = kvc;
