/// <reference types="@webgpu/types" />
// Runs in headless Chromium (WebGPU on SwiftShader in CI): the conformance cases against the
// CPU reference, and whole-model greedy decoding on both backends. Driven by
// ../src/webgpu-backend.test.ts through window.kvc.
import { CpuBackend } from '@kvcompress/cpu';
import { type DoneEvent, Engine } from '@kvcompress/engine';
import { loadLlama2cModel } from '@kvcompress/models';
import fc from 'fast-check';
import { requestWebGpuDevice } from '../src/device.ts';
import {
  appendKvKernel,
  attentionKernel,
  movesGatherKernel,
  movesScatterKernel,
  streamAttentionKernel,
  wideAttentionKernel,
} from '../src/kernels.ts';
import { WebGpuBackend, type WebGpuBackendOptions } from '../src/webgpu-backend.ts';
import { cases } from './conformance-cases.ts';
import { type CaseResult, runConformanceCase } from './run-case.ts';
import { runSamplingCase, type SamplingParams, type SamplingResult } from './sampling-cases.ts';
import { runSelectionCase, type SelectionParams, type SelectionResult } from './selection-cases.ts';

const device = await requestWebGpuDevice();

async function runCase(
  name: string,
  subgroups = true,
  kvChunks = 1,
  streamKeysPerStep?: 1 | 2 | 4 | 8,
  attentionSplitTarget?: number,
  backendOptions: WebGpuBackendOptions = {},
): Promise<CaseResult> {
  const c = cases.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no case ${name}`);
  return runConformanceCase(device, c, subgroups, kvChunks, streamKeysPerStep, attentionSplitTarget, backendOptions);
}

/**
 * Greedy ids of stories260K from BOS on both backends, with the full cache or KV-Compress.
 * `kvChunks` > 1: the WebGPU KV pool is forced into about that many chunk buffers (see
 * runConformanceCase), sized from the pool the CPU engine allocates. `promptLength` > 1:
 * BOS then fixed pseudo-random ids, prefilled in chunks of `prefillChunk` rows.
 */
async function greedy(
  compress: boolean,
  tokens: number,
  kvChunks = 1,
  promptLength = 1,
  prefillChunk = 256,
): Promise<{
  cpu: number[];
  gpu: number[];
  validation: string | null;
  gpuMs: number;
  gpuKvChunks: number;
  prefillDispatches: number;
}> {
  const prompt = Array.from({ length: promptLength }, (_, i) => (i === 0 ? 1 : ((i * 37 + 5) % 500) + 3));
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const options = compress ? { budget: { targetCompressionRate: 4 }, protectedWindow: 16, compressionInterval: 32 } : {};
  const cpuBackend = new CpuBackend();
  let rowBytes = 0;
  let slots = 0;
  const create = cpuBackend.createKvCache.bind(cpuBackend);
  cpuBackend.createKvCache = (numSlots, headDim, dtype) => {
    rowBytes = headDim * (dtype === 'f16' ? 2 : 4);
    slots = numSlots;
    create(numSlots, headDim, dtype);
  };
  const cpu = await new Engine({ model, maxSequences: 1, backend: cpuBackend, prefillChunk, ...options }).complete(prompt, {
    maxTokens: tokens,
    stopTokens: [],
  });
  const maxKvBindingBytes = kvChunks > 1 ? rowBytes * 2 ** Math.ceil(Math.log2(Math.ceil(slots / kvChunks))) : undefined;
  device.pushErrorScope('validation');
  const t0 = performance.now();
  const backend = new WebGpuBackend(device, {
    prefillAttention: true,
    ...(maxKvBindingBytes === undefined ? {} : { maxKvBindingBytes }),
  });
  const gpu = await new Engine({ model, maxSequences: 1, backend, prefillChunk, ...options }).complete(prompt, {
    maxTokens: tokens,
    stopTokens: [],
  });
  const gpuMs = performance.now() - t0;
  const error = await device.popErrorScope();
  if (gpu.error !== undefined) throw gpu.error;
  return {
    cpu: [...cpu.tokens],
    gpu: [...gpu.tokens],
    validation: error === null ? null : error.message,
    gpuMs,
    gpuKvChunks: backend.kvChunks,
    prefillDispatches: backend.prefillAttentionDispatches,
  };
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

function selection(params: SelectionParams): Promise<SelectionResult> {
  return runSelectionCase(device, params);
}

/**
 * fast-check: random shapes, lengths, budgets, windows, tie densities and special values;
 * every run's device decision must equal the CPU planner's. Throws the shrunk counterexample.
 */
async function selectionProperty(runs: number, seed: number): Promise<{ runs: number; evicted: number; partialRows: number }> {
  let evicted = 0;
  let partialRows = 0;
  let done = 0;
  const params = fc.record({
    seed: fc.integer(),
    layers: fc.integer({ min: 1, max: 3 }),
    kvHeads: fc.integer({ min: 1, max: 4 }),
    blockSize: fc.constantFrom(1, 2, 4, 16),
    tokens: fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 3 }),
    distinct: fc.constantFrom(0, 2, 5, 40),
    specials: fc.boolean(),
    ragged: fc.boolean(),
    policy: fc.constantFrom('kv-compress' as const, 'ada-kv' as const),
    subgroups: fc.boolean(),
    headDim: fc.constantFrom(2, 4, 8),
    f16: fc.boolean(),
    kvChunks: fc.constantFrom(1, 1, 3),
  });
  await fc.assert(
    fc.asyncProperty(params, async (q) => {
      const r = await runSelectionCase(device, q);
      if (r.validation !== null) throw new Error(`validation: ${r.validation}`);
      if (r.mismatches.length > 0 || !r.sameCompaction || r.deviceCompaction.length > 0)
        throw new Error(
          `${r.mismatches.join('; ')} (same compaction: ${r.sameCompaction}; on the device: ${r.deviceCompaction.join('; ')})`,
        );
      evicted += r.evicted;
      partialRows += r.partialRows;
      done++;
    }),
    { numRuns: runs, seed },
  );
  return { runs: done, evicted, partialRows };
}

interface SelectionEngineRun {
  tokens: number[][];
  blocksPerHead: number[][];
  /** Each compression: reason, sequence, blocks per head after it. */
  log: string[];
  deviceSelection: boolean;
  deviceSelectionRounds: number;
  deviceCompactionRounds: number;
  deviceRoundsInParts: number;
  preemptions: number;
}

/**
 * stories260K, three requests batched under a tight block pool (compressions after prefill,
 * on the interval and under memory pressure), KV-Compress 4x on WebGPU: decisions made and
 * compacted on the device (deviceSelection, deviceCompaction), made on the device and
 * compacted on the host (masks), and made on the host from downloaded metrics.
 */
/**
 * `policies`: one per request (per-request policy choice); default: the engine's kv-compress for
 * all. `withMasks`: also the run that compacts on the host.
 */
async function selectionEngine(
  policies?: readonly string[],
  withMasks = true,
): Promise<{ device: SelectionEngineRun; masks: SelectionEngineRun | null; host: SelectionEngineRun; validation: string | null }> {
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const units = model.config.numLayers * model.config.numKvHeads;
  const run = async (deviceSelection: boolean, deviceCompaction = true): Promise<SelectionEngineRun> => {
    const engine = new Engine({
      model,
      backend: new WebGpuBackend(device),
      maxSequences: 3,
      kvBlocks: units * 11,
      budget: { targetCompressionRate: 4 },
      protectedWindow: 16,
      compressionInterval: 32,
      deviceSelection,
      deviceCompaction,
    });
    const log: string[] = [];
    engine.onCompression((e) => {
      const o = e.outcome;
      log.push(
        `${e.reason} ${o.sequence} ${o.evictedSlots}/${o.moves}/${o.freedBlocks} ${engine.allocator.blocksPerHead(o.sequence).join(',')}`,
      );
    });
    const prompts = [[1], [1, 400, 30, 80, 7], [1, 50, 60, 70, 80, 90, 100, 110]];
    const done = await Promise.all(
      prompts.map((p, i) => {
        const policy = policies?.[i];
        return engine.complete(p, { maxTokens: 70 + 15 * i, stopTokens: [], ...(policy === undefined ? {} : { compression: { policy } }) });
      }),
    );
    for (const d of done) if (d.error !== undefined) throw d.error;
    return {
      tokens: done.map((d) => [...d.tokens]),
      blocksPerHead: done.map((d) => [...d.blocksPerHead]),
      log,
      deviceSelection: engine.deviceSelection,
      deviceSelectionRounds: engine.stats().deviceSelectionRounds,
      deviceCompactionRounds: engine.stats().deviceCompactionRounds,
      deviceRoundsInParts: engine.stats().deviceRoundsInParts,
      preemptions: engine.stats().preemptions,
    };
  };
  device.pushErrorScope('validation');
  const onDevice = await run(true);
  const masks = withMasks ? await run(true, false) : null;
  const onHost = await run(false);
  const error = await device.popErrorScope();
  return { device: onDevice, masks, host: onHost, validation: error === null ? null : error.message };
}

function sampling(params: SamplingParams): Promise<SamplingResult> {
  return runSamplingCase(device, params);
}

/** fast-check: random vocabularies, tie densities and parameters; device ids = CPU Sampler ids. */
async function samplingProperty(runs: number, seed: number): Promise<{ runs: number; rows: number }> {
  let rows = 0;
  let done = 0;
  const row = fc.record({
    temperature: fc.constantFrom(0, 0.3, 0.8, 1, 1.7),
    topK: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 5000 })),
    topP: fc.oneof(fc.constant(1), fc.double({ min: 0.02, max: 0.999, noNaN: true })),
    seed: fc.integer(),
  });
  const params = fc.record({
    seed: fc.integer(),
    vocab: fc.integer({ min: 1, max: 2000 }),
    distinct: fc.constantFrom(0, 3, 50),
    rows: fc.array(row, { minLength: 1, maxLength: 6 }),
  });
  await fc.assert(
    fc.asyncProperty(params, async (q) => {
      const r = await runSamplingCase(device, q);
      if (r.validation !== null) throw new Error(`validation: ${r.validation}`);
      if (r.gpu.join() !== r.cpu.join()) throw new Error(`device ${r.gpu.join()} != CPU ${r.cpu.join()}`);
      rows += q.rows.length;
      done++;
    }),
    { numRuns: runs, seed },
  );
  return { runs: done, rows };
}

/** stories260K sampled on WebGPU: tokens picked on the device and from downloaded logits. */
async function samplingEngine(): Promise<{ device: number[][]; host: number[][]; validation: string | null }> {
  const bytes = new Uint8Array(await (await fetch('/shared/models/stories260K/stories260K.bin')).arrayBuffer());
  const model = loadLlama2cModel(bytes);
  const requests = [
    { temperature: 0.9, topK: 20, topP: 0.9, seed: 11 },
    { temperature: 1, topK: 0, topP: 1, seed: 12 },
    { temperature: 0.7, topK: 0, topP: 0.8, seed: 13 },
    { temperature: 0, topK: 0, topP: 1, seed: 0 },
  ];
  const run = async (deviceSampling: boolean): Promise<number[][]> => {
    const engine = new Engine({ model, maxSequences: 4, backend: new WebGpuBackend(device), deviceSampling });
    const done = await Promise.all(requests.map((sampling) => engine.complete([1], { maxTokens: 32, sampling, stopTokens: [] })));
    for (const d of done) if (d.error !== undefined) throw d.error;
    return done.map((d) => [...d.tokens]);
  };
  device.pushErrorScope('validation');
  const onDevice = await run(true);
  const onHost = await run(false);
  const error = await device.popErrorScope();
  return { device: onDevice, host: onHost, validation: error === null ? null : error.message };
}

/**
 * WGSL errors of the chunked-pool kernels at windows this device cannot bind (SwiftShader
 * allows 10 storage buffers per stage: attention runs with a window of 1 chunk here, while a
 * GPU with 16 binds up to 4): compiled, not dispatched. Returns the kernels counted and the errors.
 */
async function compileChunkedKernels(): Promise<{ kernels: number; errors: string[] }> {
  const errors: string[] = [];
  let kernels = 0;
  for (const kv of ['f16', 'f32'] as const) {
    for (const window of [2, 3, 4]) {
      const c = { window, passes: 2, shift: 10 };
      for (const k of [
        attentionKernel(kv, 128, 4, c),
        attentionKernel(kv, 20, 2, c),
        wideAttentionKernel(kv, 128, 4, c),
        wideAttentionKernel(kv, 64, 16, c),
        // The GPU's stream kernel shapes: 16 and 8 lanes a key (32-wide subgroups), 256 and 128 threads.
        streamAttentionKernel(kv, 128, 4, 16, 4, c),
        streamAttentionKernel(kv, 64, 8, 8, 8, c, 128),
        appendKvKernel(kv, c),
        movesGatherKernel(kv, c),
        movesScatterKernel(kv, c),
        movesGatherKernel(kv, c, 4),
        movesScatterKernel(kv, c, 4),
      ]) {
        kernels++;
        const info = await device.createShaderModule({ code: k.code, label: k.key }).getCompilationInfo();
        for (const m of info.messages) if (m.type === 'error') errors.push(`${k.key}: ${m.message}`);
      }
    }
  }
  return { kernels, errors };
}

const kvc = {
  names: cases.map((c) => c.name),
  compileChunkedKernels,
  runCase,
  greedy,
  mixedPolicies,
  deviceLoss,
  selection,
  selectionProperty,
  selectionEngine,
  sampling,
  samplingProperty,
  samplingEngine,
  adapter: device.adapterInfo?.description ?? '',
};
/** What the test drives through `globalThis.kvc`. */
export type Kvc = typeof kvc;
(globalThis as unknown as { kvc: Kvc }).kvc = kvc;
