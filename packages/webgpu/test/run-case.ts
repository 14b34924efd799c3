/// <reference types="@webgpu/types" />
// Runs one conformance case on the CPU reference and on WebGPU (under a validation error
// scope) and compares: shared by the Chromium test page and the GPU-machine runner.
import { CpuBackend } from '@kvcompress/cpu';
import { WebGpuBackend } from '../src/webgpu-backend.ts';
import { type ConformanceCase, maxRelError } from './conformance-cases.ts';

export interface CaseResult {
  /** Largest max|gpu - cpu| / max|cpu| over the case's outputs. */
  readonly worst: number;
  readonly tolerance: number;
  readonly validation: string | null;
  /** Whether the WebGPU backend ran its subgroup kernels. */
  readonly subgroups: boolean;
}

export async function runConformanceCase(device: GPUDevice, c: ConformanceCase, subgroups: boolean): Promise<CaseResult> {
  const expected = await c.run(new CpuBackend());
  device.pushErrorScope('validation');
  const backend = new WebGpuBackend(device, { weightStore: c.weightStore ?? 'f32', subgroups });
  const actual = await c.run(backend);
  const error = await device.popErrorScope();
  let worst = 0;
  expected.forEach((e, i) => {
    worst = Math.max(worst, maxRelError(actual[i] as Float32Array, e));
  });
  backend.destroyBuffers();
  return { worst, tolerance: c.tolerance, validation: error === null ? null : error.message, subgroups: backend.subgroups };
}
