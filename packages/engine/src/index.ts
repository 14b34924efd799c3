export type {
  CompressionEvent,
  DoneEvent,
  EngineOptions,
  EngineStats,
  FinishReason,
  GenerateOptions,
  GenerationEvent,
  RequestCompression,
  ResolvedRequestCompression,
  StepStats,
  TokenEvent,
} from './engine.ts';
export { createEngine, Engine, negativeLogLikelihood } from './engine.ts';
export type { ResolvedSampling, SamplingOptions } from './sampling.ts';
export { argmax, Rng, resolveSampling, Sampler } from './sampling.ts';
