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
  KeyNormScorer,
  RandomScorer,
  RecencyScorer,
  h2oScorer,
  kvCompressScorer,
  snapKvScorer,
} from './scorers.ts';
export type { HeadSummary } from './summaries.ts';
export { summarizeHeads } from './summaries.ts';
