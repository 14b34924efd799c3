/// <reference types="@webgpu/types" />
// Runs one conformance case on the CPU reference and on WebGPU (under a validation error
// scope) and compares: shared by the Chromium test page and the GPU-machine runner.
import { CpuBackend } from '@kvcompress/cpu';
import { WebGpuBackend, type WebGpuBackendOptions } from '../src/webgpu-backend.ts';
import { type ConformanceCase, maxRelError } from './conformance-cases.ts';

export interface CaseResult {
  /** Largest max|gpu - cpu| / max|cpu| over the case's outputs. */
  readonly worst: number;
  readonly tolerance: number;
  readonly validation: string | null;
  /** Whether the WebGPU backend ran its subgroup kernels. */
  readonly subgroups: boolean;
  /** Buffers K (and V) was split into (1: one binding). */
  readonly kvChunks: number;
  /** Attention dispatches that took the tiled prefill kernel. */
  readonly prefillDispatches: number;
  /** Attention dispatches that took the stream decode kernel. */
  readonly streamDispatches: number;
  /** Keys per workgroup of the last stream dispatch (streamAttentionMaxKeys). */
  readonly streamMaxKeys: number;
}

/**
 * `kvChunks` > 1: the WebGPU backend's KV pool is forced into chunk buffers, about that many
 * (between kvChunks / 2 and kvChunks: chunks hold a power of two of slots), sized from the
 * pool the case creates on the CPU backend.
 */
export async function runConformanceCase(
  device: GPUDevice,
  c: ConformanceCase,
  subgroups: boolean,
  kvChunks = 1,
  streamKeysPerStep?: 1 | 2 | 4 | 8,
  attentionSplitTarget?: number,
  backendOptions: WebGpuBackendOptions = {},
): Promise<CaseResult> {
  const cpu = new CpuBackend();
  let rowBytes = 0;
  let slots = 0;
  const create = cpu.createKvCache.bind(cpu);
  cpu.createKvCache = (numSlots, headDim, dtype) => {
    rowBytes = headDim * (dtype === 'f16' ? 2 : 4);
    slots = Math.max(slots, numSlots);
    create(numSlots, headDim, dtype);
  };
  const expected = await c.run(cpu);
  const maxKvBindingBytes = kvChunks > 1 && slots > 0 ? rowBytes * 2 ** Math.ceil(Math.log2(Math.ceil(slots / kvChunks))) : undefined;
  device.pushErrorScope('validation');
  const backend = new WebGpuBackend(device, {
    ...c.webgpu,
    weightStore: c.weightStore ?? 'f32',
    subgroups,
    // The tiled prefill kernel is off by default (slower on the GPUs measured): test it here.
    prefillAttention: true,
    ...(maxKvBindingBytes === undefined ? {} : { maxKvBindingBytes }),
    ...(streamKeysPerStep === undefined ? {} : { streamKeysPerStep }),
    ...(attentionSplitTarget === undefined ? {} : { attentionSplitTarget }),
    ...backendOptions,
  });
  const actual = await c.run(backend);
  const error = await device.popErrorScope();
  let worst = 0;
  expected.forEach((e, i) => {
    worst = Math.max(worst, maxRelError(actual[i] as Float32Array, e));
  });
  const chunks = backend.kvChunks;
  const prefillDispatches = backend.prefillAttentionDispatches;
  const streamDispatches = backend.streamAttentionDispatches;
  const streamMaxKeys = backend.streamAttentionMaxKeys;
  backend.destroyBuffers();
  return {
    worst,
    tolerance: c.tolerance,
    validation: error === null ? null : error.message,
    subgroups: backend.subgroups,
    kvChunks: chunks,
    prefillDispatches,
    streamDispatches,
    streamMaxKeys,
  };
}
