export type { DeviceOptions } from './device.ts';
export { DEFAULT_DAWN_POLL_MICROS, dawnPollMicrosFor, requestWebGpuDevice, throttleImmediates, WebGpuUnavailableError } from './device.ts';
export type { KernelSource, StoreType } from './kernels.ts';
export type { BlockedMatmulBlock, BlockedMatmulPlan, BlockedMatmulSettings } from './matmul-plan.ts';
export { planBlockedMatmul } from './matmul-plan.ts';
export type { CompactionStats, WebGpuBackendOptions } from './webgpu-backend.ts';
export { DeviceLostError, GpuBuffer, GpuWeight, WebGpuBackend } from './webgpu-backend.ts';
