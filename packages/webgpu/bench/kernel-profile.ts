// GPU time per kernel of the dispatches a WebGpuBackend with `profile` recorded since its last
// readProfile(): shared by the decode and selection benches' PROFILE=1 modes.
import type { WebGpuBackend } from '../src/webgpu-backend.ts';

export interface KernelProfile {
  /** GPU ms of all the dispatches. */
  readonly gpuMs: number;
  /** By kernel key: GPU ms and dispatches. */
  readonly kernels: Record<string, { ms: number; dispatches: number }>;
}

export async function kernelProfile(backend: WebGpuBackend): Promise<KernelProfile> {
  const kernels: Record<string, { ms: number; dispatches: number }> = {};
  let gpuMs = 0;
  for (const { kernel, ms } of await backend.readProfile()) {
    const k = kernels[kernel] ?? { ms: 0, dispatches: 0 };
    k.ms += ms;
    k.dispatches++;
    kernels[kernel] = k;
    gpuMs += ms;
  }
  return { gpuMs, kernels };
}
