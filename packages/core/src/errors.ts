/**
 * Every error kvcompress throws on purpose is a subclass of `KvCompressError`, so callers
 * can tell our errors (bad input, exhausted memory) from bugs, and switch on `code`.
 * Messages say what was found and what to do about it.
 */
export class KvCompressError extends Error {
  /** Stable machine-readable identifier, e.g. `OUT_OF_BLOCKS`. */
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The block pool cannot satisfy an allocation. Nothing was changed. */
export class OutOfBlocksError extends KvCompressError {
  readonly requested: number;
  readonly free: number;

  constructor(requested: number, free: number, what: string) {
    super(
      'OUT_OF_BLOCKS',
      `${what} needs ${requested} free KV blocks but only ${free} are free. ` +
        'Compress or remove a sequence first, or create the allocator with more blocks.',
    );
    this.requested = requested;
    this.free = free;
  }
}

/** A sequence id that was never added, or was already removed. */
export class UnknownSequenceError extends KvCompressError {
  readonly sequence: number;

  constructor(sequence: number) {
    super(
      'UNKNOWN_SEQUENCE',
      `Sequence ${sequence} is not active in this allocator. Use an id returned by addSequence() or forkSequence() that has not been removed.`,
    );
    this.sequence = sequence;
  }
}

/** A sequence table is full: no free row for a new sequence, or no block-table entry left for a head. */
export class CapacityExceededError extends KvCompressError {
  constructor(message: string) {
    super('CAPACITY_EXCEEDED', message);
  }
}

/** An eviction or compaction plan that names slots the sequence does not own, twice, or out of range. */
export class InvalidPlanError extends KvCompressError {
  constructor(message: string) {
    super('INVALID_PLAN', `${message} The plan was rejected and the cache is unchanged.`);
  }
}

/** A memory budget that is not a number, is negative, or can never be met. */
export class InvalidBudgetError extends KvCompressError {
  constructor(message: string) {
    super('INVALID_BUDGET', message);
  }
}

/** A configuration value out of its allowed range (shapes, window sizes, options). */
export class InvalidArgumentError extends KvCompressError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
  }
}

/** A policy or scorer name nobody registered. */
export class UnknownPolicyError extends KvCompressError {
  constructor(name: string, known: readonly string[]) {
    super('UNKNOWN_POLICY', `No eviction policy named "${name}" is registered. Registered policies: ${known.join(', ')}.`);
  }
}

/** Registering a second policy under a name already taken. */
export class DuplicatePolicyError extends KvCompressError {
  constructor(name: string) {
    super(
      'DUPLICATE_POLICY',
      `An eviction policy named "${name}" is already registered. Pick another name, or pass { replace: true } to override it.`,
    );
  }
}

/**
 * Host code read slot positions that only the device holds: a device compaction
 * (`Backend.compactEvictions`) moved them, and the host copy was not refreshed since
 * (`Backend.downloadPositions`, then `PageAllocator.positionsSynced()`).
 */
export class StalePositionsError extends KvCompressError {
  readonly sequence: number;

  constructor(sequence: number, what: string) {
    super(
      'STALE_POSITIONS',
      `${what} reads the slot positions of sequence ${sequence}, but a device compaction moved them and the host copy is stale. ` +
        'Download them first (Backend.downloadPositions, then allocator.positionsSynced()).',
    );
    this.sequence = sequence;
  }
}

/** An internal consistency check failed: a bug in kvcompress or in a custom policy. */
export class InvariantViolationError extends KvCompressError {
  constructor(message: string) {
    super('INVARIANT_VIOLATION', `KV-cache invariant violated: ${message}`);
  }
}

/** A model or tokenizer file that is truncated, corrupt or not what its header says. */
export class ModelFormatError extends KvCompressError {
  constructor(message: string) {
    super('MODEL_FORMAT', message);
  }
}

/** A model whose architecture, tensor type or feature kvcompress does not support (yet). */
export class UnsupportedModelError extends KvCompressError {
  constructor(message: string) {
    super('UNSUPPORTED_MODEL', message);
  }
}

/**
 * A KV pool (or its per-slot metric store) the device cannot address: more slots than the
 * i32 block tables index, a metric store larger than one storage binding, or a device with
 * too few storage bindings per shader stage for the attention kernel.
 */
export class KvPoolTooLargeError extends KvCompressError {
  constructor(message: string) {
    super('KV_POOL_TOO_LARGE', `${message} Create the engine with fewer KV blocks (a smaller pool), or use an f16 cache.`);
  }
}
