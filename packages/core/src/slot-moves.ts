import { InvalidArgumentError } from './errors.ts';
import { assertInteger } from './validate.ts';

/**
 * A reusable list of cache slot copies `dst := src` (K, V, position and metric), produced by
 * the page allocator (compaction, copy-on-write) and executed by a Backend and by the metric
 * store. Slots are global: `block * blockSize + offset`.
 *
 * Contract that makes the moves safe to run in parallel (one GPU thread per move): every
 * move reads the state from before the list was built; no destination is also a source and
 * no destination appears twice. The page allocator guarantees it and its invariant checker
 * tests it.
 *
 * Backed by preallocated Int32Arrays so that building a list allocates nothing.
 */
export class SlotMoveList {
  /** Source slot of move i, for i < count. */
  readonly src: Int32Array;
  /** Destination slot of move i, for i < count. */
  readonly dst: Int32Array;
  count = 0;

  constructor(capacity: number) {
    assertInteger('SlotMoveList capacity', capacity, 0);
    this.src = new Int32Array(capacity);
    this.dst = new Int32Array(capacity);
  }

  get capacity(): number {
    return this.src.length;
  }

  clear(): void {
    this.count = 0;
  }

  push(src: number, dst: number): void {
    const i = this.count;
    if (i >= this.src.length) {
      throw new InvalidArgumentError(
        `SlotMoveList is full (${this.src.length} moves). Create it with allocator.createMoveList(), which is sized for the worst case.`,
      );
    }
    this.src[i] = src;
    this.dst[i] = dst;
    this.count = i + 1;
  }

  /** Applies the moves to a per-slot array (positions, metrics) in place. */
  applyTo(values: Int32Array | Float32Array | Uint32Array): void {
    const { src, dst } = this;
    for (let i = 0; i < this.count; i++) {
      values[dst[i] as number] = values[src[i] as number] as number;
    }
  }
}
