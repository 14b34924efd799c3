export { CpuBackend, CpuBuffer, CpuWeight } from './cpu-backend.ts';
