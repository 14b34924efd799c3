export { windowAttentionProbs } from './attention.ts';
export { DecodeMetricAccumulator, MetricStore } from './metric-store.ts';
export type {
  AttentionScorerOptions,
  GroupReduction,
  KvCompressScorerOptions,
  MetricAggregation,
  MetricReduction,
  Pooling,
  PrefillScoringInput,
  Scorer,
} from './scorers.ts';
export {
  AttentionScorer,
  h2oScorer,
  KeyNormScorer,
  kvCompressScorer,
  RandomScorer,
  RecencyScorer,
  snapKvScorer,
} from './scorers.ts';
export type { HeadSummary } from './summaries.ts';
export { summarizeHeads } from './summaries.ts';
