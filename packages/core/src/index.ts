export {
  CapacityExceededError,
  DuplicatePolicyError,
  InvalidArgumentError,
  InvalidBudgetError,
  InvalidPlanError,
  InvariantViolationError,
  KvCompressError,
  OutOfBlocksError,
  UnknownPolicyError,
  UnknownSequenceError,
} from './errors.ts';
export type { KvCacheShape, KvDtype } from './shape.ts';
export { headCount, kvBytesPerToken, kvDtypeBytes, validateKvCacheShape } from './shape.ts';
export { SlotMoveList } from './slot-moves.ts';
export { assertFinite, assertInteger } from './validate.ts';
