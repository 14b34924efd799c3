/// <reference types="@webgpu/types" />
// Device sampling (WebGpuBackend.sample) against the engine's CPU Sampler: the same logits,
// parameters and uniform draws (each row's from a fresh Rng of its seed, which the device
// receives as a number) must give the same token ids. Runs in the browser (browser-entry.ts).
import { type ResolvedSampling, Rng, Sampler } from '@kvcompress/engine';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

export interface SamplingRow {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
}

export interface SamplingParams {
  readonly seed: number;
  readonly vocab: number;
  /** Distinct logit values per row (few: many ties); 0 = continuous. */
  readonly distinct: number;
  readonly rows: readonly SamplingRow[];
}

export interface SamplingResult {
  readonly validation: string | null;
  readonly cpu: number[];
  readonly gpu: number[];
}

function lcg(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) | 0;
    return (s >>> 0) / 2 ** 32;
  };
}

export async function runSamplingCase(device: GPUDevice, q: SamplingParams): Promise<SamplingResult> {
  const rand = lcg(q.seed);
  const rows = q.rows.length;
  const logits = Float32Array.from({ length: rows * q.vocab }, () =>
    q.distinct > 0 ? Math.floor(rand() * q.distinct) / 2 - q.distinct / 4 : (rand() - 0.5) * 12,
  );
  const sampler = new Sampler(q.vocab);
  const cpu: number[] = [];
  const params = new Float32Array(4 * rows);
  q.rows.forEach((r, i) => {
    const s: ResolvedSampling = { temperature: r.temperature, topK: r.topK, topP: r.topP, seed: r.seed };
    cpu.push(sampler.sample(logits, i * q.vocab, s, new Rng(r.seed)));
    params.set([r.temperature, r.topK, r.topP, r.temperature > 0 ? new Rng(r.seed).next() : 0], 4 * i);
  });
  device.pushErrorScope('validation');
  const b = new WebGpuBackend(device);
  const logitBuf = b.createBuffer(logits.length);
  b.write(logitBuf, logits);
  const paramBuf = b.createBuffer(params.length);
  b.write(paramBuf, params);
  const out = b.createBuffer(rows, 'i32');
  b.sample(out, logitBuf, paramBuf, rows, q.vocab);
  const ids = new Int32Array(rows);
  await b.read(out, ids);
  const error = await device.popErrorScope();
  b.destroyBuffers();
  return { validation: error === null ? null : error.message, cpu, gpu: [...ids] };
}
