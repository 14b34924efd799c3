/**
 * Indices of an Int32Array written since a consumer last synchronised with it: lets a device
 * copy of a large host table (block tables, slot positions) be patched with the few entries
 * a decode step changed instead of re-uploaded whole.
 *
 * Writers call `mark(i)` after changing entry i (duplicates are fine: the consumer reads the
 * current value of each marked index). Past `capacity` marks the log gives up and reports
 * `overflowed`: the consumer then uploads the whole array. A consumer calls `clear()` after
 * synchronising. With no consumer the log overflows once and `mark` costs one branch.
 */
export class ChangeLog {
  /** Int32 [capacity]: marked indices; the first `count` are valid. */
  readonly indices: Int32Array;
  count = 0;
  overflowed = true;

  readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.indices = new Int32Array(capacity);
  }

  mark(index: number): void {
    if (this.count < this.capacity) this.indices[this.count++] = index;
    else this.overflowed = true;
  }

  /** Everything is in sync again (call after uploading the marked entries or the whole array). */
  clear(): void {
    this.count = 0;
    this.overflowed = false;
  }
}
