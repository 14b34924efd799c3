import { assertInteger } from '@kvcompress/core';
import type { PageAllocator } from '@kvcompress/page-allocator';

export interface SchedulerOptions {
  /** Compress every this many decode steps (0 = only after prefill and under pressure). Default 64. */
  readonly compressionInterval?: number;
  /** Only the post-prefill compression, never again (memory pressure included). Default false. */
  readonly compressOnce?: boolean;
}

/** Why a compression runs. */
export type CompressionReason = 'prefill' | 'interval' | 'memory-pressure';

/**
 * Decides when each sequence is compressed: after its prefill; then every
 * `compressionInterval` decode steps; and whenever the free blocks would not cover the
 * next decode step (compress instead of preempting). Per-sequence state lives in typed
 * arrays, so deciding allocates nothing.
 */
export class CompressionScheduler {
  readonly compressionInterval: number;
  readonly compressOnce: boolean;
  readonly #stepsSince: Int32Array;
  readonly #compressions: Int32Array;

  constructor(maxSequences: number, options: SchedulerOptions = {}) {
    assertInteger('maxSequences', maxSequences, 1);
    this.compressionInterval = options.compressionInterval ?? 64;
    assertInteger('compressionInterval', this.compressionInterval, 0);
    this.compressOnce = options.compressOnce ?? false;
    this.#stepsSince = new Int32Array(maxSequences);
    this.#compressions = new Int32Array(maxSequences);
  }

  /** A sequence starts (or its row is reused). */
  reset(sequence: number): void {
    this.#stepsSince[sequence] = 0;
    this.#compressions[sequence] = 0;
  }

  /** After a prefill: always compress, unless compress-once already happened (a second prompt). */
  afterPrefill(sequence: number): CompressionReason | null {
    this.#stepsSince[sequence] = 0;
    if (this.compressOnce && (this.#compressions[sequence] as number) > 0) return null;
    return 'prefill';
  }

  /**
   * Called before each decode step of a sequence. `freeBlocks` is the pool's free count and
   * `blocksNeeded` what the whole batch's next step needs (see `blocksForNextStep`).
   */
  beforeDecodeStep(sequence: number, freeBlocks: number, blocksNeeded: number): CompressionReason | null {
    const reason = this.peekDecodeStep(sequence, freeBlocks, blocksNeeded);
    this.#stepsSince[sequence] = (this.#stepsSince[sequence] as number) + 1;
    return reason;
  }

  /**
   * What `beforeDecodeStep` would return for the sequence's next step, without counting the
   * step (the engine looks a step ahead before it records one).
   */
  peekDecodeStep(sequence: number, freeBlocks: number, blocksNeeded: number): CompressionReason | null {
    if (this.compressOnce) return null;
    if (blocksNeeded > freeBlocks) return 'memory-pressure';
    if (this.compressionInterval > 0 && (this.#stepsSince[sequence] as number) + 1 >= this.compressionInterval) return 'interval';
    return null;
  }

  /** Records that a compression ran. */
  compressed(sequence: number): void {
    this.#stepsSince[sequence] = 0;
    this.#compressions[sequence] = (this.#compressions[sequence] as number) + 1;
  }

  compressions(sequence: number): number {
    return this.#compressions[sequence] as number;
  }
}

/**
 * Blocks one decode step of a sequence will take: one per head whose last block is full,
 * plus one per head whose partly filled last block is shared with a fork (copy-on-write).
 */
export function blocksForNextStep(allocator: PageAllocator, sequence: number): number {
  const { layers, kvHeads } = allocator.shape;
  const B = allocator.blockSize;
  let needed = 0;
  for (let layer = 0; layer < layers; layer++) {
    for (let head = 0; head < kvHeads; head++) {
      const h = allocator.headIndex(sequence, layer, head);
      const len = allocator.headLengths[h] as number;
      if (len % B === 0) needed++;
      else {
        const last = allocator.blockTables[h * allocator.maxBlocksPerHead + ((len / B) | 0)] as number;
        if ((allocator.refCounts[last] as number) > 1) needed++;
      }
    }
  }
  return needed;
}
