import { assertInteger, InvalidArgumentError, InvalidPlanError } from '@kvcompress/core';

/**
 * The slots one sequence should lose, as (head unit, global slot) pairs in any order.
 * A head unit is `layer * kvHeads + kvHead`. Policies fill it; `PageAllocator.compact`
 * validates it (every slot owned by that head of that sequence, none twice) and turns it
 * into cache moves and freed blocks.
 *
 * Preallocated and reusable: `reset()` then `add()` allocates nothing.
 */
export class EvictionPlan {
  /** The sequence the plan applies to; -1 until `reset()`. */
  sequence = -1;
  count = 0;
  /** Head unit of entry i: layer * kvHeads + kvHead. */
  readonly units: Int32Array;
  /** Global slot (block * blockSize + offset) of entry i. */
  readonly slots: Int32Array;

  constructor(capacity: number) {
    assertInteger('EvictionPlan capacity', capacity, 0);
    this.units = new Int32Array(capacity);
    this.slots = new Int32Array(capacity);
  }

  get capacity(): number {
    return this.slots.length;
  }

  reset(sequence: number): void {
    this.sequence = sequence;
    this.count = 0;
  }

  add(unit: number, slot: number): void {
    const i = this.count;
    if (i >= this.slots.length) {
      throw new InvalidPlanError(`The plan is full (${this.slots.length} entries); a sequence cannot evict more slots than it holds.`);
    }
    this.units[i] = unit;
    this.slots[i] = slot;
    this.count = i + 1;
  }

  /** Number of entries for one head unit (O(count); for tests and reports). */
  countForUnit(unit: number): number {
    if (!Number.isInteger(unit)) throw new InvalidArgumentError(`unit must be an integer, got ${unit}.`);
    let n = 0;
    for (let i = 0; i < this.count; i++) if (this.units[i] === unit) n++;
    return n;
  }
}
