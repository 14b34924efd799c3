export type { DeviceOptions } from './device.ts';
export { DEFAULT_DAWN_POLL_MICROS, dawnPollMicrosFor, requestWebGpuDevice, throttleImmediates, WebGpuUnavailableError } from './device.ts';
export type { KernelSource, StoreType } from './kernels.ts';
export type { BlockedMatmulBlock, BlockedMatmulPlan, BlockedMatmulSettings, SplitMatvecPlan, SplitMatvecSettings } from './matmul-plan.ts';
export { planBlockedMatmul, planSplitMatvec } from './matmul-plan.ts';
export type { CompactionStats, WebGpuBackendOptions } from './webgpu-backend.ts';
export { DeviceLostError, GpuBuffer, GpuWeight, WebGpuBackend } from './webgpu-backend.ts';
