export type {
  CompressionEvent,
  DoneEvent,
  EngineOptions,
  EngineStats,
  FinishReason,
  GenerateOptions,
  GenerationEvent,
  StepStats,
  TokenEvent,
} from './engine.ts';
export { Engine, createEngine, negativeLogLikelihood } from './engine.ts';
export type { ResolvedSampling, SamplingOptions } from './sampling.ts';
export { Rng, Sampler, argmax, resolveSampling } from './sampling.ts';
