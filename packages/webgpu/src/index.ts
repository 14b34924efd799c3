export type { DeviceOptions } from './device.ts';
export { DEFAULT_DAWN_POLL_MICROS, dawnPollMicrosFor, requestWebGpuDevice, throttleImmediates, WebGpuUnavailableError } from './device.ts';
export type { KernelSource, StoreType } from './kernels.ts';
export type { BlockedMatmulPlan, CompactionStats, WebGpuBackendOptions } from './webgpu-backend.ts';
export { DeviceLostError, GpuBuffer, GpuWeight, WebGpuBackend } from './webgpu-backend.ts';
