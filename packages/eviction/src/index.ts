export type { Budget, CompressionConfig, ResolvedCompressionConfig } from './budget.ts';
export { keepPerHead, protectedCount, resolveCompressionConfig } from './budget.ts';
export { getPolicy, policies, registerBuiltinPolicies, registerPolicy } from './builtins.ts';
export type { CheapestBlocksPlan } from './cheapest-blocks.ts';
export { planCheapestBlocks } from './cheapest-blocks.ts';
export type { CompressionOutcome, CompressorOptions } from './compressor.ts';
export { Compressor } from './compressor.ts';
export type { PolicyContext } from './context.ts';
export { CompressionContext } from './context.ts';
export { createKvCompressPolicy, createKvCompressTrailingPolicy } from './policies/kv-compress.ts';
export { createAdaKvPolicy, createPyramidKvPolicy, pyramidBlocksPerLayer } from './policies/layered.ts';
export {
  createH2oPolicy,
  createRandomPolicy,
  createSnapKvPolicy,
  createStreamingLlmPolicy,
  nonePolicy,
} from './policies/uniform.ts';
export type { EvictionPolicy } from './policy.ts';
export { PolicyRegistry } from './policy.ts';
export type { CompressionReason, SchedulerOptions } from './scheduler.ts';
export { blocksForNextStep, CompressionScheduler } from './scheduler.ts';
