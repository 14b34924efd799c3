export {
  CapacityExceededError,
  DuplicatePolicyError,
  InvalidArgumentError,
  InvalidBudgetError,
  InvalidPlanError,
  InvariantViolationError,
  KvCompressError,
  ModelFormatError,
  OutOfBlocksError,
  UnknownPolicyError,
  UnknownSequenceError,
  UnsupportedModelError,
} from './errors.ts';
export type { KvCacheShape, KvDtype } from './shape.ts';
export { headCount, kvBytesPerToken, kvDtypeBytes, validateKvCacheShape } from './shape.ts';
export { SlotMoveList } from './slot-moves.ts';
export { assertFinite, assertInteger } from './validate.ts';
export type { ModelConfig, RopeLayout, RopeScaling, Tensor, TensorDtype } from './model.ts';
export { elementCount, kvShapeOf, validateModelConfig } from './model.ts';
export type {
  AttentionRows,
  Backend,
  DeviceBuffer,
  DeviceWeight,
  MetricRecording,
  PagedCacheView,
  RopeSettings,
} from './backend.ts';
export { ropeInverseFrequencies } from './backend.ts';
export { dequantize, f16ToF32 } from './dequant.ts';
