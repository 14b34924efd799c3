export { argmax } from './argmax.ts';
export type {
  AttentionRows,
  Backend,
  DeviceBuffer,
  DeviceWeight,
  MetricRecording,
  PagedCacheView,
  RopeSettings,
} from './backend.ts';
export { assertMatmulEachArguments, matmulEachInTurn, ropeInverseFrequencies } from './backend.ts';
export { ChangeLog } from './change-log.ts';
export {
  bf16ToF32,
  bytesForTensor,
  DTYPE_BLOCK,
  dequantize,
  dequantizeRows,
  f16ArrayToF32,
  f16ToF32,
  f32ToF16,
  quantizeQ4_0,
  quantizeQ8_0,
} from './dequant.ts';
export {
  CapacityExceededError,
  DuplicatePolicyError,
  InvalidArgumentError,
  InvalidBudgetError,
  InvalidPlanError,
  InvariantViolationError,
  KvCompressError,
  KvPoolTooLargeError,
  ModelFormatError,
  OutOfBlocksError,
  StalePositionsError,
  UnknownPolicyError,
  UnknownSequenceError,
  UnsupportedModelError,
} from './errors.ts';
export { EvictionSelection, SELECTION_GROUP_FIELDS, SELECTION_ROW_FIELDS } from './eviction-selection.ts';
export { firstDivergence, formatBytes } from './format.ts';
export type { ModelConfig, RopeLayout, RopeScaling, Tensor, TensorDtype } from './model.ts';
export { elementCount, kvShapeOf, validateModelConfig } from './model.ts';
export type { KvCacheShape, KvDtype } from './shape.ts';
export { headCount, kvBytesPerToken, kvDtypeBytes, validateKvCacheShape } from './shape.ts';
export { SlotMoveList } from './slot-moves.ts';
export { assertFinite, assertInteger } from './validate.ts';
