import { InvalidArgumentError } from './errors.ts';
import { assertInteger } from './validate.ts';

/** Int32 fields per group in `EvictionSelection.groups`. */
export const SELECTION_GROUP_FIELDS = 8;
/** Int32 fields per row in `EvictionSelection.rows`. */
export const SELECTION_ROW_FIELDS = 8;

/**
 * One round of KV-Compress block selection for a backend that keeps the metrics on the
 * device (`Backend.selectEvictions`): the host describes which heads compete and how many
 * blocks to free; the device decides which slots go, and only that decision comes back
 * (one integer per head and one bit per cached slot, never the metrics).
 *
 * A group is a set of head units of one sequence that compete for blocks: all of them for
 * KV-Compress, one layer's for Ada-KV. A row is one head unit of a group. The decision is
 * exactly `PolicyContext.freeCheapestBlocks(blocks, { units: the group's, minBlocks })`:
 *
 * - Key of a slot: its f32 metric as an order-preserving u32 (NaN lowest, -0 below +0);
 *   slots at positions >= `newestUnprotected` or < `sinks` are never evicted.
 * - Freeing k blocks of a row costs the key at rank (k - 1) * blockSize + hanging - 1 of its
 *   ascending keys (hanging = slots in its last block), for k <= maxFree.
 * - The group frees the `blocks` cheapest (row, k) candidates (fewer if not that many exist),
 *   ties between equal costs going to the lower row (the lower unit) first.
 * - A row freeing k blocks evicts its e = (k - 1) * blockSize + hanging lowest keys; equal
 *   keys go in ascending logical slot order.
 *
 * Preallocated and reusable: `reset()`, `addGroup()`, `addRow()` allocate nothing.
 */
export class EvictionSelection {
  /** Int32 [maxRows][SELECTION_GROUP_FIELDS] (a group has at least one row): sequence, first row, row count, blocks, newestUnprotected, sinks, 0, 0. */
  readonly groups: Int32Array;
  /**
   * Int32 [maxRows][SELECTION_ROW_FIELDS]: group, unit, block-table offset (into the cache's
   * blockTables), length (slots), hanging, maxFree (blocks), mask offset (words), 0.
   */
  readonly rows: Int32Array;
  /**
   * Int32 [maxRows + maxMaskWords], written by the backend: [rowCount] blocks freed per row,
   * then the eviction mask: bit (i & 31) of word `rowCount + maskOffset + (i >> 5)` is set
   * when logical slot i of the row is evicted.
   */
  readonly result: Int32Array;
  /** Int32 [maxRows], written by `Backend.compactEvictions`: slot moves the device ran per row. */
  readonly rowMoves: Int32Array;
  readonly maxRows: number;
  readonly maxMaskWords: number;
  groupCount = 0;
  rowCount = 0;
  /** Mask words in use: sum over rows of ceil(length / 32). */
  maskWords = 0;

  constructor(maxRows: number, maxMaskWords: number) {
    assertInteger('maxRows', maxRows, 1);
    assertInteger('maxMaskWords', maxMaskWords, 0);
    this.maxRows = maxRows;
    this.maxMaskWords = maxMaskWords;
    this.groups = new Int32Array(maxRows * SELECTION_GROUP_FIELDS);
    this.rows = new Int32Array(maxRows * SELECTION_ROW_FIELDS);
    this.result = new Int32Array(maxRows + maxMaskWords);
    this.rowMoves = new Int32Array(maxRows);
  }

  reset(): void {
    this.groupCount = 0;
    this.rowCount = 0;
    this.maskWords = 0;
  }

  /** Starts a group; the rows added next belong to it. Returns its index. */
  addGroup(sequence: number, blocks: number, newestUnprotected: number, sinks: number): number {
    const g = this.groupCount;
    if (g >= this.maxRows) throw new InvalidArgumentError(`The selection holds at most ${this.maxRows} groups.`);
    const o = g * SELECTION_GROUP_FIELDS;
    this.groups[o] = sequence;
    this.groups[o + 1] = this.rowCount;
    this.groups[o + 2] = 0;
    this.groups[o + 3] = blocks;
    this.groups[o + 4] = newestUnprotected;
    this.groups[o + 5] = sinks;
    this.groupCount = g + 1;
    return g;
  }

  /** Adds a head unit to the last group. */
  addRow(unit: number, tableOffset: number, length: number, blockSize: number, maxFree: number): void {
    const g = this.groupCount - 1;
    if (g < 0) throw new InvalidArgumentError('addGroup() before addRow().');
    const r = this.rowCount;
    const words = (length + 31) >>> 5;
    if (r >= this.maxRows || this.maskWords + words > this.maxMaskWords) {
      throw new InvalidArgumentError(`The selection holds at most ${this.maxRows} rows and ${this.maxMaskWords} mask words.`);
    }
    const o = r * SELECTION_ROW_FIELDS;
    this.rows[o] = g;
    this.rows[o + 1] = unit;
    this.rows[o + 2] = tableOffset;
    this.rows[o + 3] = length;
    this.rows[o + 4] = length - (Math.ceil(length / blockSize) - 1) * blockSize;
    this.rows[o + 5] = maxFree;
    this.rows[o + 6] = this.maskWords;
    this.rows[o + 7] = 0;
    this.maskWords += words;
    this.rowCount = r + 1;
    const go = g * SELECTION_GROUP_FIELDS;
    this.groups[go + 2] = (this.groups[go + 2] as number) + 1;
  }

  /** Blocks the backend freed from a row (after `selectEvictions`). */
  freed(row: number): number {
    return this.result[row] as number;
  }

  /** Whether logical slot i of a row is evicted (after `selectEvictions`). */
  evicted(row: number, i: number): boolean {
    const word = this.result[this.rowCount + (this.rows[row * SELECTION_ROW_FIELDS + 6] as number) + (i >>> 5)] as number;
    return ((word >>> (i & 31)) & 1) === 1;
  }
}
