import {
  assertInteger,
  CapacityExceededError,
  ChangeLog,
  InvalidArgumentError,
  InvalidPlanError,
  InvariantViolationError,
  type KvCacheShape,
  type KvDtype,
  kvDtypeBytes,
  OutOfBlocksError,
  SlotMoveList,
  StalePositionsError,
  UnknownSequenceError,
  validateKvCacheShape,
} from '@kvcompress/core';
import { EvictionPlan } from './eviction-plan.ts';

export interface PageAllocatorOptions {
  /** Model KV shape: layers and kv-heads decide the number of block tables per sequence. */
  readonly shape: KvCacheShape;
  /** Blocks in the pool. Each block holds `blockSize` slots of ONE (layer, kv-head). */
  readonly numBlocks: number;
  /** Slots per block (B). Default 16. */
  readonly blockSize?: number;
  /** Rows in the block tables: how many sequences can be live at once. */
  readonly maxSequences: number;
  /** Most slots one (sequence, layer, kv-head) may hold; sizes each block table. */
  readonly maxContext: number;
}

/** What one `compact()` call did. */
export interface CompactionResult {
  /** Slots removed from the sequence. */
  readonly evictedSlots: number;
  /** Blocks returned to the free pool (shared blocks still used elsewhere are not counted). */
  readonly freedBlocks: number;
  /** Block-table entries dropped from this sequence (freed or merely unshared). */
  readonly releasedBlocks: number;
  /** Shared blocks that had to be copied before being written (copy-on-write). */
  readonly copiedBlocks: number;
  /** Moves appended to the move list. */
  readonly moves: number;
}

/** Pool-wide figures. */
export interface AllocatorUsage {
  readonly totalBlocks: number;
  readonly freeBlocks: number;
  readonly usedBlocks: number;
  /** Distinct slots holding a token (a slot shared by forks counts once). */
  readonly filledSlots: number;
  /** 1 - filledSlots / (usedBlocks * blockSize): the share of allocated slots that are empty. */
  readonly fragmentation: number;
  readonly activeSequences: number;
}

const EMPTY = -1;

/**
 * A fixed pool of KV blocks and the block tables that map each (sequence, layer, kv-head)
 * to its own list of blocks, so every head can hold a different number of tokens.
 *
 * All state lives in flat typed arrays that upload to a GPU as they are:
 * - `blockTables`  Int32 [layers][maxSequences][kvHeads][maxBlocksPerHead]  block id or -1
 * - `headLengths`  Int32 [layers][maxSequences][kvHeads]                    slots in use
 * - `slotPositions` Int32 [numBlocks * blockSize]                           token position of a slot
 * - `refCounts`    Int32 [numBlocks]                                        block-table references
 *
 * A head's logical slot i lives at global slot `table[i / B] * B + i % B`. After eviction the
 * slots of a head are in no particular position order; attention does not care once RoPE is
 * applied to K, and `slotPositions` keeps each token's position.
 *
 * Sequences are rows of the tables: `addSequence()` returns the row id.
 * Appends (the decode hot path) allocate no JS objects.
 *
 * Free blocks are in one of two places:
 * - the free stack: blocks of ended sequences (and, at first, the whole pool);
 * - a head's reserved tail: the blocks a compaction released from a head stay in its block
 *   table, past its blocks (`blockTables` entries [blocks, tail end) of the head), free.
 *
 * The head's next appends take them back in place. Other appends take from the stack, and
 * when it is empty, from the far end of the oldest reserved tail.
 *
 * Why: a compaction frees O(heads) in time, not O(blocks). A round that compresses 64 x 8K
 * contexts 4x releases millions of blocks, and none of them is read or written. The blocks
 * the host does not touch are the released ones; a device compaction never brings them into
 * the host's cache.
 *
 * And locality: in a compressed steady state every head keeps the pool region it had, so the
 * compaction's moves and the attention's reads touch few memory pages. On a GPU, scattered
 * accesses over a pool of many GiB are bound by address translation, not bandwidth
 * (BENCHMARKS.md, twelfth session).
 */
export class PageAllocator {
  readonly shape: KvCacheShape;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly maxSequences: number;
  readonly maxBlocksPerHead: number;
  /** layers * kvHeads: head units per sequence. */
  readonly headsPerSequence: number;

  readonly blockTables: Int32Array;
  readonly headLengths: Int32Array;
  readonly slotPositions: Int32Array;
  /** blockTables / slotPositions entries written since a device copy last synchronised. */
  readonly tableChanges: ChangeLog;
  readonly positionChanges: ChangeLog;
  /** Block-table references per block (unspecified for a free block: see compactedOnDevice). */
  readonly refCounts: Int32Array;
  /** Head unit (layer * kvHeads + kvHead) a block belongs to (-1 or unspecified when free). */
  readonly blockUnit: Int32Array;
  /** Index of a block inside its block tables, the same in every sequence that shares it (-1 or unspecified when free). */
  readonly blockTableIndex: Int32Array;
  /** Next position to append, per sequence row. */
  readonly nextPositions: Int32Array;
  /**
   * Int32 per head (`headLengths` layout): the head's first n logical slots hold positions
   * that a device compaction moved (`compactedOnDevice`), so their host `slotPositions` are
   * stale until the device copy is downloaded and `positionsSynced()` is called. Host code
   * that reads a stale sequence's positions (compact, forkSequence, the planners) throws
   * StalePositionsError.
   */
  readonly stalePositions: Int32Array;

  #active: Uint8Array;
  #activeCount = 0;
  /** Blocks referenced more than once (forks). */
  #sharedBlocks = 0;
  /** Heads with stalePositions > 0, in all and per sequence. */
  #staleHeads = 0;
  #staleBySequence: Int32Array;
  /** Free blocks outside the reserved tails: entries [0, #stackTop), popped from the top. */
  #freeStack: Int32Array;
  #stackTop: number;
  /**
   * Per head (headLengths layout): the end of its reserved tail. The head's table entries
   * [blocks, max(blocks, #tailEnd)) hold free blocks it released, in table order; entries
   * past them are -1. Blocks are taken back from the front (the head's appends, in place)
   * and stolen from the back (#steal).
   */
  #tailEnd: Int32Array;
  /** Blocks in all reserved tails. */
  #reserved = 0;
  /**
   * Heads that may hold a reserved tail, in the order they first released blocks: a ring of
   * head indices (#queueAt, #queueSize), each head at most once (#queued). A head whose tail
   * ran out stays until #steal passes it.
   */
  #tailQueue: Int32Array;
  #queueAt = 0;
  #queueSize = 0;
  #queued: Uint8Array;
  /** Scratch, one byte per slot, all zero between calls: marks evicted slots during compact(). */
  #slotMarks: Uint8Array;
  /** Scratch per head unit. */
  #unitEvicted: Int32Array;
  #unitNewLength: Int32Array;
  /** Scratch per block-table entry of one head: the block each kept entry maps to after compaction. */
  #newTable: Int32Array;

  constructor(options: PageAllocatorOptions) {
    validateKvCacheShape(options.shape);
    const blockSize = options.blockSize ?? 16;
    assertInteger('blockSize', blockSize, 1, 4096);
    assertInteger('numBlocks', options.numBlocks, 1, 2 ** 31 / blockSize - 1);
    assertInteger('maxSequences', options.maxSequences, 1, 1 << 20);
    assertInteger('maxContext', options.maxContext, 1, 1 << 26);
    this.shape = options.shape;
    this.numBlocks = options.numBlocks;
    this.blockSize = blockSize;
    this.maxSequences = options.maxSequences;
    this.maxBlocksPerHead = Math.ceil(options.maxContext / blockSize);
    this.headsPerSequence = options.shape.layers * options.shape.kvHeads;

    const tableEntries = this.headsPerSequence * this.maxSequences * this.maxBlocksPerHead;
    if (tableEntries > 2 ** 31 - 1) {
      throw new InvalidArgumentError(`Block tables would need ${tableEntries} entries; lower maxSequences or maxContext.`);
    }
    this.blockTables = new Int32Array(tableEntries).fill(EMPTY);
    this.headLengths = new Int32Array(this.headsPerSequence * this.maxSequences);
    this.slotPositions = new Int32Array(this.numBlocks * blockSize);
    // Past these many changes a full upload is about as cheap as a scatter.
    this.tableChanges = new ChangeLog(Math.max(4096, tableEntries >>> 4));
    this.positionChanges = new ChangeLog(Math.max(4096, this.slotPositions.length >>> 4));
    this.refCounts = new Int32Array(this.numBlocks);
    this.blockUnit = new Int32Array(this.numBlocks).fill(EMPTY);
    this.blockTableIndex = new Int32Array(this.numBlocks).fill(EMPTY);
    this.nextPositions = new Int32Array(this.maxSequences);
    this.stalePositions = new Int32Array(this.headsPerSequence * this.maxSequences);
    this.#staleBySequence = new Int32Array(this.maxSequences);
    this.#active = new Uint8Array(this.maxSequences);
    // Pop order 0, 1, 2, ...: the stack holds block ids in descending order.
    this.#freeStack = new Int32Array(this.numBlocks);
    for (let i = 0; i < this.numBlocks; i++) this.#freeStack[i] = this.numBlocks - 1 - i;
    this.#stackTop = this.numBlocks;
    const heads = this.headsPerSequence * this.maxSequences;
    this.#tailEnd = new Int32Array(heads);
    this.#tailQueue = new Int32Array(heads);
    this.#queued = new Uint8Array(heads);
    this.#slotMarks = new Uint8Array(this.numBlocks * blockSize);
    this.#unitEvicted = new Int32Array(this.headsPerSequence);
    this.#unitNewLength = new Int32Array(this.headsPerSequence);
    this.#newTable = new Int32Array(this.maxBlocksPerHead);
  }

  // ---------------------------------------------------------------------------------------
  // Indexing

  get numSlots(): number {
    return this.numBlocks * this.blockSize;
  }

  get freeBlocks(): number {
    return this.#stackTop + this.#reserved;
  }

  /**
   * Free blocks waiting in heads' reserved tails (part of `freeBlocks`): released by
   * compactions, kept in the releasing head's table for its next appends.
   */
  get reservedBlocks(): number {
    return this.#reserved;
  }

  get usedBlocks(): number {
    return this.numBlocks - this.freeBlocks;
  }

  get activeSequences(): number {
    return this.#activeCount;
  }

  /** Blocks referenced by more than one block table (shared with a fork). */
  get sharedBlocks(): number {
    return this.#sharedBlocks;
  }

  /** Heads whose host slot positions are stale (see `stalePositions`). */
  get staleHeads(): number {
    return this.#staleHeads;
  }

  /** Whether some head of the sequence has stale host slot positions (see `stalePositions`). */
  hasStalePositions(sequence: number): boolean {
    return this.#staleBySequence[sequence] !== undefined && (this.#staleBySequence[sequence] as number) > 0;
  }

  /**
   * The host `slotPositions` equal the device copy again (the caller downloaded it, e.g. with
   * `Backend.downloadPositions`): clears `stalePositions`.
   */
  positionsSynced(): void {
    if (this.#staleHeads === 0) return;
    this.stalePositions.fill(0);
    this.#staleBySequence.fill(0);
    this.#staleHeads = 0;
  }

  /** Most slots any one eviction plan or move list for a sequence can need. */
  get maxSlotsPerSequence(): number {
    return this.headsPerSequence * this.maxBlocksPerHead * this.blockSize;
  }

  /** Index into `headLengths` of (sequence, layer, kvHead): layout [layers][maxSequences][kvHeads]. */
  headIndex(sequence: number, layer: number, kvHead: number): number {
    return (layer * this.maxSequences + sequence) * this.shape.kvHeads + kvHead;
  }

  /** Index into `headLengths` for a head unit (layer * kvHeads + kvHead). */
  unitHeadIndex(sequence: number, unit: number): number {
    const kvHeads = this.shape.kvHeads;
    const layer = (unit / kvHeads) | 0;
    return (layer * this.maxSequences + sequence) * kvHeads + (unit - layer * kvHeads);
  }

  /** Offset of a head's block table inside `blockTables`. */
  tableOffset(headIndex: number): number {
    return headIndex * this.maxBlocksPerHead;
  }

  isActive(sequence: number): boolean {
    return Number.isInteger(sequence) && sequence >= 0 && sequence < this.maxSequences && this.#active[sequence] === 1;
  }

  /** Slots held by one head of a sequence. */
  length(sequence: number, layer: number, kvHead: number): number {
    this.#requireActive(sequence);
    this.#requireHead(layer, kvHead);
    return this.headLengths[this.headIndex(sequence, layer, kvHead)] as number;
  }

  /** Position the next appended token gets (= tokens appended so far). */
  nextPosition(sequence: number): number {
    this.#requireActive(sequence);
    return this.nextPositions[sequence] as number;
  }

  /** Global slot of a head's logical slot `index` (< length). */
  slot(sequence: number, layer: number, kvHead: number, index: number): number {
    this.#requireActive(sequence);
    this.#requireHead(layer, kvHead);
    const h = this.headIndex(sequence, layer, kvHead);
    const len = this.headLengths[h] as number;
    if (!Number.isInteger(index) || index < 0 || index >= len) {
      throw new InvalidArgumentError(`Slot index ${index} is outside head (${layer}, ${kvHead}), which holds ${len} slots.`);
    }
    const B = this.blockSize;
    return (this.blockTables[h * this.maxBlocksPerHead + ((index / B) | 0)] as number) * B + (index % B);
  }

  /** Allocates a move list big enough for any single append or compaction of one sequence. */
  createMoveList(): SlotMoveList {
    return new SlotMoveList(this.maxSlotsPerSequence);
  }

  /** Allocates an eviction plan big enough for any sequence. */
  createEvictionPlan(): EvictionPlan {
    return new EvictionPlan(this.maxSlotsPerSequence);
  }

  // ---------------------------------------------------------------------------------------
  // Sequences

  /** Claims a free table row and returns its id. */
  addSequence(): number {
    const row = this.#freeRow();
    this.#active[row] = 1;
    this.#activeCount++;
    this.nextPositions[row] = 0;
    return row;
  }

  /** Ends a sequence: every block it referenced loses one reference; unshared blocks return to the pool. */
  removeSequence(sequence: number): void {
    this.#requireActive(sequence);
    const { layers, kvHeads } = this.shape;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < kvHeads; head++) {
        const h = this.headIndex(sequence, layer, head);
        const t0 = h * this.maxBlocksPerHead;
        const blocks = this.#blocksFor(this.headLengths[h] as number);
        for (let j = 0; j < blocks; j++) {
          this.#release(this.blockTables[t0 + j] as number);
          this.blockTables[t0 + j] = EMPTY;
          this.tableChanges.mark(t0 + j);
        }
        // The reserved tail goes to the stack too (not logged: the device never reads a table
        // past a head's blocks).
        const end = this.#tailEnd[h] as number;
        for (let j = blocks; j < end; j++) {
          this.#freeStack[this.#stackTop++] = this.blockTables[t0 + j] as number;
          this.blockTables[t0 + j] = EMPTY;
          this.#reserved--;
        }
        this.#tailEnd[h] = 0;
        this.headLengths[h] = 0;
        this.#setStale(sequence, h, 0);
      }
    }
    this.#active[sequence] = 0;
    this.#activeCount--;
    this.nextPositions[sequence] = 0;
  }

  /**
   * Starts a new sequence that shares every block of `parent` (prefix sharing, beam or
   * parallel sampling). Shared blocks are copied on the first write by either sequence.
   */
  forkSequence(parent: number): number {
    this.#requireActive(parent);
    if (this.hasStalePositions(parent)) throw new StalePositionsError(parent, 'forkSequence()');
    const child = this.#freeRow();
    const { layers, kvHeads } = this.shape;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < kvHeads; head++) {
        const hp = this.headIndex(parent, layer, head);
        const hc = this.headIndex(child, layer, head);
        const len = this.headLengths[hp] as number;
        const blocks = this.#blocksFor(len);
        const tp = hp * this.maxBlocksPerHead;
        const tc = hc * this.maxBlocksPerHead;
        for (let j = 0; j < blocks; j++) {
          const block = this.blockTables[tp + j] as number;
          this.blockTables[tc + j] = block;
          this.tableChanges.mark(tc + j);
          const refs = (this.refCounts[block] as number) + 1;
          this.refCounts[block] = refs;
          if (refs === 2) this.#sharedBlocks++;
        }
        this.headLengths[hc] = len;
      }
    }
    this.#active[child] = 1;
    this.#activeCount++;
    this.nextPositions[child] = this.nextPositions[parent] as number;
    return child;
  }

  // ---------------------------------------------------------------------------------------
  // Appends

  /**
   * Appends `count` tokens (positions nextPosition .. nextPosition + count - 1) to every
   * (layer, kv-head) of a sequence: prefill when count > 1, one decode step when count = 1.
   *
   * `outSlots`, if given, receives the global slot of every new token, laid out
   * [layers][kvHeads][count]; the caller writes K, V and metrics there.
   * `moves` receives copy-on-write copies when a head's partly filled last block is shared
   * with a fork; it is required whenever the sequence shares blocks. The allocator has
   * already applied those copies to `slotPositions`; the caller applies them to K/V and metrics
   * before writing the new slots.
   *
   * Atomic: on any error (out of blocks, table full) nothing is changed.
   * Allocates nothing.
   */
  appendTokens(sequence: number, count: number, outSlots?: Int32Array, moves?: SlotMoveList): void {
    this.#requireActive(sequence);
    if (!Number.isInteger(count) || count < 1) {
      throw new InvalidArgumentError(`count must be a positive integer, got ${String(count)}.`);
    }
    const B = this.blockSize;
    const { layers, kvHeads } = this.shape;
    const units = this.headsPerSequence;
    if (outSlots !== undefined && outSlots.length < units * count) {
      throw new InvalidArgumentError(
        `outSlots holds ${outSlots.length} entries but ${units * count} are needed (layers * kvHeads * count).`,
      );
    }
    const capacity = this.maxBlocksPerHead * B;
    // Pass 1: check capacity and count the blocks needed, changing nothing.
    let needed = 0;
    let copies = 0;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < kvHeads; head++) {
        const h = this.headIndex(sequence, layer, head);
        const len = this.headLengths[h] as number;
        if (len + count > capacity) {
          throw new CapacityExceededError(
            `Head (${layer}, ${head}) of sequence ${sequence} holds ${len} slots; ${count} more exceed maxContext (${capacity}). Compress the sequence or raise maxContext.`,
          );
        }
        needed += this.#blocksFor(len + count) - this.#blocksFor(len);
        const hanging = len % B;
        if (hanging !== 0) {
          const last = this.blockTables[h * this.maxBlocksPerHead + ((len / B) | 0)] as number;
          if ((this.refCounts[last] as number) > 1) {
            needed++;
            copies += hanging;
          }
        }
      }
    }
    if (needed > this.freeBlocks) throw new OutOfBlocksError(needed, this.freeBlocks, `Appending ${count} token(s)`);
    if (copies > 0) {
      if (moves === undefined) {
        throw new InvalidArgumentError(
          'This sequence shares a partly filled block with a fork; pass a SlotMoveList to receive the copy-on-write copies.',
        );
      }
      if (moves.capacity - moves.count < copies) {
        throw new InvalidArgumentError(`The move list has room for ${moves.capacity - moves.count} moves; ${copies} are needed.`);
      }
    }
    // Pass 2: commit.
    const position0 = this.nextPositions[sequence] as number;
    const positions = this.slotPositions;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < kvHeads; head++) {
        const unit = layer * kvHeads + head;
        const h = this.headIndex(sequence, layer, head);
        const t0 = h * this.maxBlocksPerHead;
        let len = this.headLengths[h] as number;
        const hanging = len % B;
        if (hanging !== 0) {
          const j = (len / B) | 0;
          const last = this.blockTables[t0 + j] as number;
          if ((this.refCounts[last] as number) > 1) {
            const fresh = this.#take(unit, j, h);
            for (let o = 0; o < hanging; o++) {
              const src = last * B + o;
              const dst = fresh * B + o;
              (moves as SlotMoveList).push(src, dst);
              positions[dst] = positions[src] as number;
              this.positionChanges.mark(dst);
            }
            this.#unref(last);
            this.blockTables[t0 + j] = fresh;
            this.tableChanges.mark(t0 + j);
          }
        }
        const outBase = unit * count;
        for (let t = 0; t < count; t++, len++) {
          const j = (len / B) | 0;
          const o = len - j * B;
          if (o === 0) {
            this.blockTables[t0 + j] = this.#take(unit, j, h);
            this.tableChanges.mark(t0 + j);
          }
          const slot = (this.blockTables[t0 + j] as number) * B + o;
          positions[slot] = position0 + t;
          this.positionChanges.mark(slot);
          if (outSlots !== undefined) outSlots[outBase + t] = slot;
        }
        this.headLengths[h] = len;
      }
    }
    this.nextPositions[sequence] = position0 + count;
  }

  // ---------------------------------------------------------------------------------------
  // Compaction

  /**
   * Removes the slots named by `plan` from its sequence and packs each head's survivors
   * into its lowest blocks: survivors from the tail move into evicted slots lower down,
   * until the last blocks are empty; those blocks are then released.
   *
   * `moves` receives the copies (src -> dst, global slots) that the Backend and the metric
   * store must execute; `slotPositions` is already updated. A kept block shared with a fork
   * that would be written is first copied to a fresh block (copy-on-write), so a fork never
   * sees another sequence's compaction.
   *
   * The plan is checked entirely before anything changes: a slot the sequence's head does
   * not hold, a slot named twice, or an out-of-range unit gives `InvalidPlanError`;
   * too few free blocks for copy-on-write gives `OutOfBlocksError`. Either way the allocator
   * is unchanged.
   */
  compact(plan: EvictionPlan, moves: SlotMoveList): CompactionResult {
    const sequence = plan.sequence;
    this.#requireActive(sequence);
    if (plan.count > 0 && this.hasStalePositions(sequence)) throw new StalePositionsError(sequence, 'compact()');
    const B = this.blockSize;
    const units = this.headsPerSequence;
    const marks = this.#slotMarks;
    const evicted = this.#unitEvicted;
    evicted.fill(0);

    // Pass 1: validate every entry, marking the evicted slots. The common case (a valid
    // entry) is checked inline; #checkPlanEntry names the problem when one fails.
    const blockUnit = this.blockUnit;
    const blockTableIndex = this.blockTableIndex;
    const tables = this.blockTables;
    const lengths = this.headLengths;
    const numSlots = this.numSlots;
    const maxBlocks = this.maxBlocksPerHead;
    const planUnits = plan.units;
    const planSlots = plan.slots;
    for (let i = 0; i < plan.count; i++) {
      const unit = planUnits[i] as number;
      const slot = planSlots[i] as number;
      const block = (slot / B) | 0;
      let ok = unit >= 0 && unit < units && slot >= 0 && slot < numSlots && blockUnit[block] === unit && marks[slot] === 0;
      if (ok) {
        const j = blockTableIndex[block] as number;
        const h = this.unitHeadIndex(sequence, unit);
        ok = tables[h * maxBlocks + j] === block && j * B + (slot - block * B) < (lengths[h] as number);
      }
      if (!ok) {
        const problem = this.#checkPlanEntry(sequence, unit, slot) ?? 'invalid entry';
        this.#clearMarks(plan, i);
        throw new InvalidPlanError(`Entry ${i} (unit ${unit}, slot ${slot}): ${problem}.`);
      }
      marks[slot] = 1;
      evicted[unit] = (evicted[unit] as number) + 1;
    }

    // Pass 2: count copy-on-write blocks and moves, changing nothing.
    let copiedBlocks = 0;
    let moveCount = 0;
    for (let unit = 0; unit < units; unit++) {
      const e = evicted[unit] as number;
      if (e === 0) continue;
      const h = this.unitHeadIndex(sequence, unit);
      const t0 = h * this.maxBlocksPerHead;
      const len = this.headLengths[h] as number;
      const survivors = len - e;
      const keep = this.#blocksFor(survivors);
      for (let j = 0; j < keep; j++) {
        const block = this.blockTables[t0 + j] as number;
        const end = Math.min((j + 1) * B, survivors);
        let holes = 0;
        for (let idx = j * B; idx < end; idx++) holes += marks[block * B + (idx - j * B)] as number;
        moveCount += holes;
        if (holes > 0 && (this.refCounts[block] as number) > 1) {
          copiedBlocks++;
          moveCount += end - j * B - holes;
        }
      }
    }
    if (copiedBlocks > this.freeBlocks) {
      this.#clearMarks(plan, plan.count);
      throw new OutOfBlocksError(copiedBlocks, this.freeBlocks, 'Compacting blocks shared with a fork (copy-on-write)');
    }
    if (moves.capacity - moves.count < moveCount) {
      this.#clearMarks(plan, plan.count);
      throw new InvalidArgumentError(
        `The move list has room for ${moves.capacity - moves.count} moves; ${moveCount} are needed. Use allocator.createMoveList().`,
      );
    }

    // Pass 3: emit moves and rewrite the kept part of each table. Fresh blocks for
    // copy-on-write are all taken before any block is released (pass 4), so no move's
    // destination can be a block that another move still reads.
    const movesBefore = moves.count;
    const positions = this.slotPositions;
    const newTable = this.#newTable;
    let evictedSlots = 0;
    for (let unit = 0; unit < units; unit++) {
      const e = evicted[unit] as number;
      if (e === 0) continue;
      evictedSlots += e;
      const h = this.unitHeadIndex(sequence, unit);
      const t0 = h * this.maxBlocksPerHead;
      const len = this.headLengths[h] as number;
      const survivors = len - e;
      const keep = this.#blocksFor(survivors);
      for (let j = 0; j < keep; j++) {
        const block = this.blockTables[t0 + j] as number;
        newTable[j] = block;
        if ((this.refCounts[block] as number) <= 1) continue;
        const end = Math.min((j + 1) * B, survivors);
        let holes = 0;
        for (let idx = j * B; idx < end; idx++) holes += marks[block * B + (idx - j * B)] as number;
        if (holes === 0) continue;
        const fresh = this.#take(unit, j, h);
        newTable[j] = fresh;
        // Survivors of the shared block are copied into the fresh one; holes are filled below.
        for (let idx = j * B; idx < end; idx++) {
          const o = idx - j * B;
          if (marks[block * B + o] === 0) {
            moves.push(block * B + o, fresh * B + o);
            positions[fresh * B + o] = positions[block * B + o] as number;
            this.positionChanges.mark(fresh * B + o);
          }
        }
      }
      // Pair holes below `survivors` with survivors at or above it.
      let src = survivors;
      for (let hole = 0; hole < survivors; hole++) {
        const jh = (hole / B) | 0;
        const oh = hole - jh * B;
        if (marks[(this.blockTables[t0 + jh] as number) * B + oh] === 0) continue;
        let srcSlot: number;
        for (;;) {
          const js = (src / B) | 0;
          srcSlot = (this.blockTables[t0 + js] as number) * B + (src - js * B);
          src++;
          if (marks[srcSlot] === 0) break;
        }
        const dstSlot = (newTable[jh] as number) * B + oh;
        moves.push(srcSlot, dstSlot);
        positions[dstSlot] = positions[srcSlot] as number;
        this.positionChanges.mark(dstSlot);
      }
      // Install the copies. The old blocks keep their other references, so none is freed
      // here and none can be handed out again within this call.
      for (let j = 0; j < keep; j++) {
        const old = this.blockTables[t0 + j] as number;
        const cur = newTable[j] as number;
        if (cur !== old) {
          this.#unref(old);
          this.blockTables[t0 + j] = cur;
          this.tableChanges.mark(t0 + j);
        }
      }
      this.#unitNewLength[unit] = survivors;
    }

    // Pass 4: release tail blocks and install the new tables.
    let freedBlocks = 0;
    let releasedBlocks = 0;
    for (let unit = 0; unit < units; unit++) {
      if (evicted[unit] === 0) continue;
      const h = this.unitHeadIndex(sequence, unit);
      const t0 = h * this.maxBlocksPerHead;
      const oldBlocks = this.#blocksFor(this.headLengths[h] as number);
      const survivors = this.#unitNewLength[unit] as number;
      const keep = this.#blocksFor(survivors);
      // Freed blocks stay in the table as the head's reserved tail, in table order, before the
      // ones it reserved earlier. A block still referenced by a fork leaves the table.
      let w = keep;
      for (let j = keep; j < oldBlocks; j++) {
        releasedBlocks++;
        const block = this.blockTables[t0 + j] as number;
        if (this.#unref(block) === 0) this.blockTables[t0 + w++] = block;
      }
      const freed = w - keep;
      let end = Math.max(oldBlocks, this.#tailEnd[h] as number);
      if (w < oldBlocks) {
        for (let j = oldBlocks; j < end; j++) this.blockTables[t0 + w++] = this.blockTables[t0 + j] as number;
        this.blockTables.fill(EMPTY, t0 + w, t0 + end);
        end = w;
      }
      freedBlocks += freed;
      this.#reserve(h, end, freed);
      this.headLengths[h] = survivors;
    }
    this.#clearMarks(plan, plan.count);
    return { evictedSlots, freedBlocks, releasedBlocks, copiedBlocks, moves: moves.count - movesBefore };
  }

  /**
   * Applies a compaction whose slot moves ran on the device (`Backend.compactEvictions`):
   * head unit u of the sequence keeps its first `newLengths[u]` logical slots (-1: the head is
   * left as it is). The device paired the evicted slots below the new length with the
   * survivors past it exactly as `compact()` pairs them, so the tables, lengths and free
   * blocks end as `compact()` leaves them for the same evictions: each shortened head's tail
   * blocks become its reserved tail. O(heads): no table entry or slot is read or written on
   * the host.
   *
   * The moved positions are on the device only: the first `newLengths[u]` slots of every
   * shortened head become stale on the host (`stalePositions`) until `positionsSynced()`.
   * The device copy of the tables needs nothing: it is never read past a head's blocks.
   * `moves` (the device's count) is only reported back.
   *
   * Needs a pool without shared blocks (no forks: copy-on-write is not done on the device).
   * Everything is checked first; on an error nothing changes.
   */
  compactedOnDevice(sequence: number, newLengths: Int32Array, moves: number): CompactionResult {
    this.#requireActive(sequence);
    const units = this.headsPerSequence;
    if (newLengths.length < units) throw new InvalidArgumentError(`newLengths holds ${newLengths.length} entries; ${units} are needed.`);
    if (this.#sharedBlocks > 0) {
      throw new InvalidArgumentError(
        `The pool holds ${this.#sharedBlocks} blocks shared by forks; compact them on the host (compact()), which copies them on write.`,
      );
    }
    const B = this.blockSize;
    const lengths = this.headLengths;
    const stale = this.stalePositions;
    const tailEnd = this.#tailEnd;
    const kvHeads = this.shape.kvHeads;
    // Head index of (sequence, unit) is (layer * maxSequences + sequence) * kvHeads + head: a
    // layer's heads are consecutive, layers maxSequences * kvHeads apart.
    const layerStride = this.maxSequences * kvHeads;
    const h0 = sequence * kvHeads;
    for (let unit = 0; unit < units; unit++) {
      const n = newLengths[unit] as number;
      if (n === -1) continue;
      const layer = (unit / kvHeads) | 0;
      const len = lengths[layer * layerStride + h0 + (unit - layer * kvHeads)] as number;
      if (!Number.isInteger(n) || n < 0 || n > len) {
        throw new InvalidPlanError(`Head unit ${unit} of sequence ${sequence} holds ${len} slots; it cannot keep ${n}.`);
      }
    }
    let evictedSlots = 0;
    let released = 0;
    let newlyStale = 0;
    // The heads of this call, in unit order: the hot loop of a device round (every head of
    // every compressed sequence), so its index arithmetic is incremental.
    for (let layer = 0, unit = 0; layer < this.shape.layers; layer++) {
      for (let head = 0, h = layer * layerStride + h0; head < kvHeads; head++, h++, unit++) {
        const n = newLengths[unit] as number;
        const len = lengths[h] as number;
        if (n === -1 || n === len) continue;
        evictedSlots += len - n;
        const keep = Math.ceil(n / B);
        const old = Math.ceil(len / B);
        // Unshared blocks (checked above): every released entry is a free block, left in place
        // as the head's reserved tail (before the one it had, which starts at `old`). Their
        // refCounts / blockUnit / blockTableIndex are left as they were (unspecified for a free
        // block; the next #take sets them).
        if (old > keep) {
          this.#reserve(h, Math.max(old, tailEnd[h] as number), old - keep);
          released += old - keep;
        }
        lengths[h] = n;
        // #setStale, inlined: the stale-head counts change when a head turns stale or fresh.
        const was = stale[h] as number;
        stale[h] = n;
        if (was > 0 !== n > 0) newlyStale += n > 0 ? 1 : -1;
      }
    }
    if (newlyStale !== 0) {
      this.#staleHeads += newlyStale;
      this.#staleBySequence[sequence] = (this.#staleBySequence[sequence] as number) + newlyStale;
    }
    return { evictedSlots, freedBlocks: released, releasedBlocks: released, copiedBlocks: 0, moves };
  }

  // ---------------------------------------------------------------------------------------
  // Usage figures

  /** Blocks referenced by each head of a sequence, written to `out` as [layers][kvHeads]. */
  blocksPerHead(sequence: number, out: Int32Array = new Int32Array(this.headsPerSequence)): Int32Array {
    this.#requireActive(sequence);
    const kvHeads = this.shape.kvHeads;
    for (let unit = 0; unit < this.headsPerSequence; unit++) {
      const layer = (unit / kvHeads) | 0;
      out[unit] = this.#blocksFor(this.headLengths[this.headIndex(sequence, layer, unit - layer * kvHeads)] as number);
    }
    return out;
  }

  /** Slots held by each head of a sequence, written to `out` as [layers][kvHeads]. */
  lengthsPerHead(sequence: number, out: Int32Array = new Int32Array(this.headsPerSequence)): Int32Array {
    this.#requireActive(sequence);
    const kvHeads = this.shape.kvHeads;
    for (let unit = 0; unit < this.headsPerSequence; unit++) {
      const layer = (unit / kvHeads) | 0;
      out[unit] = this.headLengths[this.headIndex(sequence, layer, unit - layer * kvHeads)] as number;
    }
    return out;
  }

  /** Blocks referenced by a sequence (blocks shared with a fork count for both). */
  sequenceBlocks(sequence: number): number {
    this.#requireActive(sequence);
    let n = 0;
    const { layers, kvHeads } = this.shape;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < kvHeads; head++) {
        n += this.#blocksFor(this.headLengths[this.headIndex(sequence, layer, head)] as number);
      }
    }
    return n;
  }

  /** Blocks referenced per layer, summed over the given sequence or over all active ones. */
  blocksPerLayer(sequence?: number, out: Int32Array = new Int32Array(this.shape.layers)): Int32Array {
    if (sequence !== undefined) this.#requireActive(sequence);
    out.fill(0);
    const { layers, kvHeads } = this.shape;
    for (let s = 0; s < this.maxSequences; s++) {
      if (this.#active[s] === 0 || (sequence !== undefined && s !== sequence)) continue;
      for (let layer = 0; layer < layers; layer++) {
        for (let head = 0; head < kvHeads; head++) {
          out[layer] = (out[layer] as number) + this.#blocksFor(this.headLengths[this.headIndex(s, layer, head)] as number);
        }
      }
    }
    return out;
  }

  /** Pool-wide usage and fragmentation (O(total table entries); not for the hot path). */
  usage(): AllocatorUsage {
    const B = this.blockSize;
    const filledPerBlock = new Int32Array(this.numBlocks);
    const { layers, kvHeads } = this.shape;
    for (let s = 0; s < this.maxSequences; s++) {
      if (this.#active[s] === 0) continue;
      for (let layer = 0; layer < layers; layer++) {
        for (let head = 0; head < kvHeads; head++) {
          const h = this.headIndex(s, layer, head);
          const len = this.headLengths[h] as number;
          const t0 = h * this.maxBlocksPerHead;
          for (let j = 0; j * B < len; j++) {
            const block = this.blockTables[t0 + j] as number;
            const filled = Math.min(B, len - j * B);
            if (filled > (filledPerBlock[block] as number)) filledPerBlock[block] = filled;
          }
        }
      }
    }
    let filledSlots = 0;
    for (let b = 0; b < this.numBlocks; b++) filledSlots += filledPerBlock[b] as number;
    const usedBlocks = this.usedBlocks;
    return {
      totalBlocks: this.numBlocks,
      freeBlocks: this.freeBlocks,
      usedBlocks,
      filledSlots,
      fragmentation: usedBlocks === 0 ? 0 : 1 - filledSlots / (usedBlocks * B),
      activeSequences: this.#activeCount,
    };
  }

  /** Bytes of K plus V one block holds in the given dtype (positions and metrics not included). */
  bytesPerBlock(dtype: KvDtype): number {
    return 2 * this.blockSize * this.shape.headDim * kvDtypeBytes(dtype);
  }

  // ---------------------------------------------------------------------------------------
  // Invariants

  /**
   * Recomputes everything derivable and throws `InvariantViolationError` on any mismatch:
   * reference counts equal table references; every referenced block is owned by exactly
   * one head unit at one table index; free blocks are unreferenced and held once (on the
   * stack or in one reserved tail, the counts matching, every head with a tail queued); used +
   * free = total; head lengths fit their tables and tables hold no stray entries.
   */
  checkInvariants(): void {
    const B = this.blockSize;
    const { layers, kvHeads } = this.shape;
    const refs = new Int32Array(this.numBlocks);
    // Reserved tails, checked against refs once every table is counted.
    const tailBlocks: number[] = [];
    for (let s = 0; s < this.maxSequences; s++) {
      const active = this.#active[s] === 1;
      for (let layer = 0; layer < layers; layer++) {
        for (let head = 0; head < kvHeads; head++) {
          const unit = layer * kvHeads + head;
          const h = this.headIndex(s, layer, head);
          const len = this.headLengths[h] as number;
          const t0 = h * this.maxBlocksPerHead;
          if (!active && len !== 0) throw new InvariantViolationError(`inactive sequence ${s} has length ${len}`);
          if (len < 0 || len > this.maxBlocksPerHead * B) {
            throw new InvariantViolationError(`sequence ${s} head ${unit} has length ${len}`);
          }
          const blocks = this.#blocksFor(len);
          const end = Math.max(blocks, this.#tailEnd[h] as number);
          if (!active && end > 0) throw new InvariantViolationError(`inactive sequence ${s} head ${unit} has a reserved tail`);
          if (end > blocks && this.#queued[h] !== 1) {
            throw new InvariantViolationError(`sequence ${s} head ${unit} has a reserved tail but is not queued`);
          }
          for (let j = 0; j < this.maxBlocksPerHead; j++) {
            const block = this.blockTables[t0 + j] as number;
            if (j >= end) {
              if (block !== EMPTY) throw new InvariantViolationError(`sequence ${s} head ${unit} has a stray entry at ${j}`);
              continue;
            }
            if (j >= blocks) {
              if (block < 0 || block >= this.numBlocks) {
                throw new InvariantViolationError(`sequence ${s} head ${unit} reserves block ${block} at ${j}`);
              }
              tailBlocks.push(block);
              continue;
            }
            if (block < 0 || block >= this.numBlocks) {
              throw new InvariantViolationError(`sequence ${s} head ${unit} entry ${j} names block ${block}`);
            }
            if (this.blockUnit[block] !== unit || this.blockTableIndex[block] !== j) {
              throw new InvariantViolationError(
                `block ${block} is referenced by head ${unit} at index ${j} but owned by head ${this.blockUnit[block]} at index ${this.blockTableIndex[block]}`,
              );
            }
            refs[block] = (refs[block] as number) + 1;
          }
        }
      }
    }
    let referenced = 0;
    for (let b = 0; b < this.numBlocks; b++) {
      // A free block's refCount is unspecified (compactedOnDevice leaves it); referenced ones must match.
      if ((refs[b] as number) > 0 && refs[b] !== this.refCounts[b]) {
        throw new InvariantViolationError(`block ${b} has ${refs[b]} references but refCount ${this.refCounts[b]}`);
      }
      if ((refs[b] as number) > 0) referenced++;
    }
    const seenFree = new Uint8Array(this.numBlocks);
    const free = (b: number, where: string) => {
      if (b < 0 || b >= this.numBlocks) throw new InvariantViolationError(`${where} holds block id ${b}`);
      if (seenFree[b] === 1) throw new InvariantViolationError(`block ${b} is free twice (${where})`);
      seenFree[b] = 1;
      if (refs[b] !== 0) throw new InvariantViolationError(`block ${b} is free (${where}) but referenced`);
    };
    if (this.#stackTop < 0 || this.#stackTop > this.numBlocks) throw new InvariantViolationError(`the free stack holds ${this.#stackTop}`);
    for (let i = 0; i < this.#stackTop; i++) free(this.#freeStack[i] as number, 'the free stack');
    for (const b of tailBlocks) free(b, 'a reserved tail');
    if (tailBlocks.length !== this.#reserved) {
      throw new InvariantViolationError(`reserved tails hold ${tailBlocks.length} blocks; the count says ${this.#reserved}`);
    }
    if (referenced + this.freeBlocks !== this.numBlocks) {
      throw new InvariantViolationError(
        `${referenced} referenced + ${this.freeBlocks} free blocks != ${this.numBlocks} total (a block leaked)`,
      );
    }
    const inQueue = new Uint8Array(this.#queued.length);
    for (let i = 0; i < this.#queueSize; i++) {
      const h = this.#tailQueue[(this.#queueAt + i) % this.#tailQueue.length] as number;
      if (inQueue[h] === 1) throw new InvariantViolationError(`head ${h} is queued twice`);
      inQueue[h] = 1;
    }
    for (let h = 0; h < inQueue.length; h++) {
      if (inQueue[h] !== this.#queued[h])
        throw new InvariantViolationError(`head ${h}: queued flag ${this.#queued[h]}, in the queue ${inQueue[h]}`);
    }
    let active = 0;
    for (let s = 0; s < this.maxSequences; s++) active += this.#active[s] as number;
    if (active !== this.#activeCount) throw new InvariantViolationError(`active count ${this.#activeCount} != ${active}`);
    let shared = 0;
    for (let b = 0; b < this.numBlocks; b++) if ((refs[b] as number) > 1) shared++;
    if (shared !== this.#sharedBlocks)
      throw new InvariantViolationError(`${shared} shared blocks but the count says ${this.#sharedBlocks}`);
    let stale = 0;
    for (let s = 0; s < this.maxSequences; s++) {
      let n = 0;
      for (let unit = 0; unit < this.headsPerSequence; unit++) {
        const h = this.unitHeadIndex(s, unit);
        const v = this.stalePositions[h] as number;
        if (v < 0 || v > (this.headLengths[h] as number)) {
          throw new InvariantViolationError(`sequence ${s} head ${unit} has ${v} stale positions and length ${this.headLengths[h]}`);
        }
        if (v > 0) n++;
      }
      if (n !== this.#staleBySequence[s])
        throw new InvariantViolationError(`sequence ${s} has ${n} stale heads, counted ${this.#staleBySequence[s]}`);
      stale += n;
    }
    if (stale !== this.#staleHeads) throw new InvariantViolationError(`${stale} stale heads, counted ${this.#staleHeads}`);
    for (let i = 0; i < this.#slotMarks.length; i++) {
      if (this.#slotMarks[i] !== 0) throw new InvariantViolationError(`scratch mark left on slot ${i}`);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Internals

  #blocksFor(slots: number): number {
    return Math.ceil(slots / this.blockSize);
  }

  #requireActive(sequence: number): void {
    if (!this.isActive(sequence)) throw new UnknownSequenceError(sequence);
  }

  #requireHead(layer: number, kvHead: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.shape.layers) {
      throw new InvalidArgumentError(`layer must be an integer in [0, ${this.shape.layers}), got ${layer}.`);
    }
    if (!Number.isInteger(kvHead) || kvHead < 0 || kvHead >= this.shape.kvHeads) {
      throw new InvalidArgumentError(`kvHead must be an integer in [0, ${this.shape.kvHeads}), got ${kvHead}.`);
    }
  }

  #freeRow(): number {
    for (let s = 0; s < this.maxSequences; s++) if (this.#active[s] === 0) return s;
    throw new CapacityExceededError(
      `All ${this.maxSequences} sequence rows are in use. Remove a finished sequence or create the allocator with a larger maxSequences.`,
    );
  }

  /**
   * Takes a free block for head h (of head unit `unit`) at a table index and assigns it: the
   * block already at that index when it is the front of the head's reserved tail (an append
   * taking back what the head released), else the top of the free stack, else one stolen from
   * the oldest reserved tail. Caller checked the free count. O(1) amortized.
   */
  #take(unit: number, tableIndex: number, h: number): number {
    let block: number;
    const end = this.#tailEnd[h] as number;
    if (tableIndex < end && tableIndex >= this.#blocksFor(this.headLengths[h] as number)) {
      // Appends take a head's entries in order, so this is the front of its tail (headLengths
      // is updated after a head's appends); taking its last entry empties it.
      block = this.blockTables[h * this.maxBlocksPerHead + tableIndex] as number;
      this.#reserved--;
      if (tableIndex === end - 1) this.#tailEnd[h] = 0;
    } else if (this.#stackTop > 0) block = this.#freeStack[--this.#stackTop] as number;
    else block = this.#steal();
    this.refCounts[block] = 1;
    this.blockUnit[block] = unit;
    this.blockTableIndex[block] = tableIndex;
    return block;
  }

  /** Takes the last block of the oldest reserved tail (the free stack is empty; some tail is not). */
  #steal(): number {
    const queue = this.#tailQueue;
    for (;;) {
      const g = queue[this.#queueAt] as number;
      const end = this.#tailEnd[g] as number;
      const blocks = this.#blocksFor(this.headLengths[g] as number);
      if (end > blocks) {
        const at = g * this.maxBlocksPerHead + end - 1;
        const block = this.blockTables[at] as number;
        this.blockTables[at] = EMPTY;
        this.#tailEnd[g] = end - 1;
        this.#reserved--;
        if (end - 1 === blocks) this.#dequeue(); // its tail is now empty
        return block;
      }
      this.#dequeue();
    }
  }

  #dequeue(): void {
    this.#queued[this.#tailQueue[this.#queueAt] as number] = 0;
    this.#queueAt = this.#queueAt + 1 === this.#tailQueue.length ? 0 : this.#queueAt + 1;
    this.#queueSize--;
  }

  /**
   * Head h released `freed` more blocks, now in its table up to index `end` (its reserved tail
   * is [blocks, end)): counts them and queues the head for #steal.
   */
  #reserve(h: number, end: number, freed: number): void {
    this.#tailEnd[h] = end;
    if (freed === 0) return;
    this.#reserved += freed;
    if (this.#queued[h] === 1) return;
    this.#queued[h] = 1;
    const queue = this.#tailQueue;
    const at = this.#queueAt + this.#queueSize;
    queue[at >= queue.length ? at - queue.length : at] = h;
    this.#queueSize++;
  }

  /**
   * Drops one reference; when none is left, pushes the block on the free stack and returns
   * true. Its blockUnit and blockTableIndex are left as they were (unspecified for a free
   * block, as compactedOnDevice leaves them).
   */
  #release(block: number): boolean {
    if (this.#unref(block) > 0) return false;
    this.#freeStack[this.#stackTop++] = block;
    return true;
  }

  /** Drops one reference (keeping the shared-block count); returns the references left. */
  #unref(block: number): number {
    const refs = (this.refCounts[block] as number) - 1;
    this.refCounts[block] = refs;
    if (refs === 1) this.#sharedBlocks--;
    return refs;
  }

  /** Sets a head's stale-position count, keeping the per-sequence and total counts. */
  #setStale(sequence: number, h: number, n: number): void {
    const was = this.stalePositions[h] as number;
    if (was > 0 === n > 0) {
      this.stalePositions[h] = n;
      return;
    }
    const d = n > 0 ? 1 : -1;
    this.stalePositions[h] = n;
    this.#staleHeads += d;
    this.#staleBySequence[sequence] = (this.#staleBySequence[sequence] as number) + d;
  }

  /** Null if (unit, slot) is a slot the sequence's head holds, else what is wrong with it. */
  #checkPlanEntry(sequence: number, unit: number, slot: number): string | null {
    if (!Number.isInteger(unit) || unit < 0 || unit >= this.headsPerSequence) return 'no such head unit';
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.numSlots) return 'slot out of range';
    const B = this.blockSize;
    const block = (slot / B) | 0;
    if (this.blockUnit[block] !== unit) return 'slot belongs to another head or to no head';
    const j = this.blockTableIndex[block] as number;
    const h = this.unitHeadIndex(sequence, unit);
    if (this.blockTables[h * this.maxBlocksPerHead + j] !== block) return 'slot belongs to another sequence';
    if (j * B + (slot - block * B) >= (this.headLengths[h] as number)) return 'slot is past the end of the head';
    if (this.#slotMarks[slot] !== 0) return 'slot named twice';
    return null;
  }

  #clearMarks(plan: EvictionPlan, upTo: number): void {
    for (let i = 0; i < upTo; i++) {
      const slot = plan.slots[i] as number;
      if (slot >= 0 && slot < this.#slotMarks.length) this.#slotMarks[slot] = 0;
    }
  }
}
