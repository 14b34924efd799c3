import {
  type EvictionSelection,
  InvalidArgumentError,
  InvalidPlanError,
  SELECTION_ROW_FIELDS,
  StalePositionsError,
} from '@kvcompress/core';
import type { EvictionPlan, PageAllocator } from '@kvcompress/page-allocator';
import { keepPerHead, protectedCount, type ResolvedCompressionConfig } from './budget.ts';

/**
 * What a policy sees of one sequence while planning, and the verbs it plans with.
 * A head "unit" is `layer * kvHeads + kvHead`; `i` is a logical slot index within the unit
 * (0 .. length(unit) - 1), in no particular position order.
 * Metrics: higher = more important. Protected slots (the last `protectedWindow` positions
 * and the first `sinks`) are never evicted by the helpers, and `evict()` refuses them.
 */
export interface PolicyContext {
  readonly sequence: number;
  readonly layers: number;
  readonly kvHeads: number;
  /** layers * kvHeads. */
  readonly units: number;
  readonly blockSize: number;
  /** Tokens the sequence has seen (its uncompressed length). */
  readonly tokens: number;
  readonly protectedWindow: number;
  readonly sinks: number;
  /** Protected positions, which every head keeps. */
  readonly protectedTokens: number;
  /** Tokens per head under a uniform split of the budget. */
  readonly keepPerHead: number;
  /**
   * Blocks the sequence may hold after compression: the memory the uniform split occupies,
   * units * ceil(keepPerHead / blockSize), less the config's `headroomBlocks` (never below
   * the blocks the protected positions fill). Every built-in policy ends at or under it, so
   * all are compared at equal memory.
   */
  readonly targetBlocks: number;
  unit(layer: number, kvHead: number): number;
  length(unit: number): number;
  blocks(unit: number): number;
  /** Blocks the sequence holds now, minus the whole blocks already planned away. */
  plannedBlocks(): number;
  metric(unit: number, i: number): number;
  position(unit: number, i: number): number;
  isProtected(unit: number, i: number): boolean;
  isEvicted(unit: number, i: number): boolean;
  /** Plans slot i of a unit for eviction. Throws on a protected or already planned slot. */
  evict(unit: number, i: number): void;
  /** Evicts the `count` lowest-metric unprotected slots of a unit; returns how many it could. */
  evictLowest(unit: number, count: number): number;
  /**
   * KV-Compress's block-level choice: frees `blocks` whole blocks from the given units
   * (default all), cheapest first, where freeing k+1 blocks of a unit costs the metric of its
   * slot at rank k * blockSize + hanging - 1 (hanging = slots in its last block). Optional
   * floors keep at least `minBlocks` blocks in every unit. Returns the blocks freed (fewer
   * if protection and floors forbid more).
   */
  freeCheapestBlocks(blocks: number, options?: { units?: ArrayLike<number>; minBlocks?: number }): number;
}

/**
 * Metrics are compared as int32 keys that order like the floats (NaN lowest): int32, not
 * uint32, because V8 keeps uint32 values >= 2^31 as heap doubles, which is several times
 * slower in these loops. Protected and already planned slots get the largest key.
 */
const PROTECTED_KEY = 0x7fffffff;
const SIGN = -0x80000000;

/**
 * The reusable planner state behind `PolicyContext` for one allocator: all scratch is
 * allocated once, sized for the largest sequence.
 */
export class CompressionContext implements PolicyContext {
  readonly allocator: PageAllocator;
  readonly metrics: Float32Array;
  readonly layers: number;
  readonly kvHeads: number;
  readonly units: number;
  readonly blockSize: number;
  sequence = -1;
  tokens = 0;
  protectedWindow = 0;
  sinks = 0;
  protectedTokens = 0;
  keepPerHead = 0;
  targetBlocks = 0;
  plan: EvictionPlan;

  /** Slots per unit in the scratch arrays. */
  readonly #stride: number;
  /** Int32 [units][stride]: ordered metric key per logical slot; PROTECTED_KEY if protected or evicted. */
  readonly #keys: Int32Array;
  readonly #evicted: Uint8Array;
  /** Per unit: the length it had when planning began (its #evicted marks lie below it). */
  readonly #markedLength: Int32Array;
  /** Int32 [units][2048]: histograms for the threshold search. */
  readonly #hist: Int32Array;
  readonly #countBelow: Int32Array;
  readonly #countAtOrBelow: Int32Array;
  readonly #maxFree: Int32Array;
  readonly #freed: Int32Array;
  readonly #inScope: Uint8Array;
  readonly #select: Int32Array;
  readonly #evictedPerUnit: Int32Array;
  /** The metrics' bits, for the float -> ordered int32 key conversion without a round trip. */
  readonly #metricBits: Int32Array;
  /** Int32 [units * stride]: indices into #keys of the keys inside the current threshold bin. */
  readonly #candidates: Int32Array;
  /** Int32 [units + 1]: where each unit's candidates start. */
  readonly #candidateStart: Int32Array;

  constructor(allocator: PageAllocator, metrics: Float32Array) {
    if (metrics.length < allocator.numSlots) {
      throw new InvalidArgumentError(`metrics holds ${metrics.length} values; the allocator has ${allocator.numSlots} slots.`);
    }
    this.allocator = allocator;
    this.metrics = metrics;
    this.layers = allocator.shape.layers;
    this.kvHeads = allocator.shape.kvHeads;
    this.units = allocator.headsPerSequence;
    this.blockSize = allocator.blockSize;
    this.#stride = allocator.maxBlocksPerHead * allocator.blockSize;
    this.#keys = new Int32Array(this.units * this.#stride);
    this.#evicted = new Uint8Array(this.units * this.#stride);
    this.#hist = new Int32Array(this.units * 2048);
    this.#countBelow = new Int32Array(this.units);
    this.#countAtOrBelow = new Int32Array(this.units);
    this.#maxFree = new Int32Array(this.units);
    this.#freed = new Int32Array(this.units);
    this.#inScope = new Uint8Array(this.units);
    this.#select = new Int32Array(this.#stride);
    this.#metricBits = new Int32Array(metrics.buffer, metrics.byteOffset, metrics.length);
    this.#candidates = new Int32Array(this.units * this.#stride);
    this.#candidateStart = new Int32Array(this.units + 1);
    this.#evictedPerUnit = new Int32Array(this.units);
    this.#markedLength = new Int32Array(this.units);
    this.plan = allocator.createEvictionPlan();
  }

  /**
   * Starts planning for a sequence. Clears the plan. O(units): only the units the previous
   * plan marked are cleared, so a caller that only needs the budget (Compressor.addSelection)
   * pays nothing per slot.
   */
  begin(sequence: number, config: ResolvedCompressionConfig): void {
    const a = this.allocator;
    this.sequence = sequence;
    this.tokens = a.nextPosition(sequence);
    this.protectedWindow = config.protectedWindow;
    this.sinks = config.sinks;
    this.protectedTokens = protectedCount(this.tokens, config.protectedWindow, config.sinks);
    this.keepPerHead = keepPerHead(config, this.tokens);
    const budgetBlocks = this.units * Math.ceil(this.keepPerHead / this.blockSize);
    const headroom = config.headroomBlocks ?? 0;
    this.targetBlocks =
      headroom > 0
        ? Math.min(budgetBlocks, Math.max(budgetBlocks - headroom, this.units * Math.ceil(this.protectedTokens / this.blockSize)))
        : budgetBlocks;
    this.plan.reset(sequence);
    for (let u = 0; u < this.units; u++) {
      if (this.#evictedPerUnit[u] !== 0) this.#evicted.fill(0, u * this.#stride, u * this.#stride + (this.#markedLength[u] as number));
      this.#evictedPerUnit[u] = 0;
      this.#markedLength[u] = this.length(u);
    }
  }

  unit(layer: number, kvHead: number): number {
    return layer * this.kvHeads + kvHead;
  }

  length(unit: number): number {
    return this.allocator.headLengths[this.allocator.unitHeadIndex(this.sequence, unit)] as number;
  }

  blocks(unit: number): number {
    return Math.ceil(this.length(unit) / this.blockSize);
  }

  plannedBlocks(): number {
    let n = 0;
    for (let u = 0; u < this.units; u++) n += Math.ceil((this.length(u) - (this.#evictedPerUnit[u] as number)) / this.blockSize);
    return n;
  }

  slot(unit: number, i: number): number {
    const a = this.allocator;
    const B = this.blockSize;
    const j = (i / B) | 0;
    return (a.blockTables[a.unitHeadIndex(this.sequence, unit) * a.maxBlocksPerHead + j] as number) * B + (i - j * B);
  }

  metric(unit: number, i: number): number {
    this.#checkIndex(unit, i);
    return this.metrics[this.slot(unit, i)] as number;
  }

  position(unit: number, i: number): number {
    this.#checkIndex(unit, i);
    this.#checkPositions();
    return this.allocator.slotPositions[this.slot(unit, i)] as number;
  }

  isProtected(unit: number, i: number): boolean {
    return this.#positionProtected(this.position(unit, i));
  }

  isEvicted(unit: number, i: number): boolean {
    this.#checkIndex(unit, i);
    return this.#evicted[unit * this.#stride + i] === 1;
  }

  evict(unit: number, i: number): void {
    this.#checkIndex(unit, i);
    if (this.isProtected(unit, i)) {
      throw new InvalidArgumentError(`Slot ${i} of unit ${unit} holds protected position ${this.position(unit, i)}.`);
    }
    if (this.#evicted[unit * this.#stride + i] === 1) throw new InvalidArgumentError(`Slot ${i} of unit ${unit} is already planned.`);
    this.#mark(unit, i);
  }

  evictLowest(unit: number, count: number): number {
    if (!Number.isInteger(count) || count < 0) throw new InvalidArgumentError(`count must be a non-negative integer, got ${count}.`);
    if (count === 0) return 0;
    const len = this.length(unit);
    const n = this.#loadKeys(unit, len);
    const e = Math.min(count, n);
    this.#markLowest(unit, len, e, PROTECTED_KEY, n);
    return e;
  }

  freeCheapestBlocks(blocks: number, options: { units?: ArrayLike<number>; minBlocks?: number } = {}): number {
    if (!Number.isInteger(blocks) || blocks < 0) throw new InvalidArgumentError(`blocks must be a non-negative integer, got ${blocks}.`);
    const minBlocks = options.minBlocks ?? 0;
    if (!Number.isInteger(minBlocks) || minBlocks < 0) throw new InvalidArgumentError(`minBlocks must be a non-negative integer.`);
    if (blocks === 0) return 0;
    const B = this.blockSize;
    const scope = this.#inScope;
    scope.fill(0);
    if (options.units === undefined) scope.fill(1);
    else for (let k = 0; k < options.units.length; k++) scope[this.#checkUnit(options.units[k] as number)] = 1;

    // Level 1: load keys and histogram their top 11 bits per unit.
    const hist = this.#hist;
    const maxFree = this.#maxFree;
    const countBelow = this.#countBelow;
    for (let u = 0; u < this.units; u++) {
      countBelow[u] = 0;
      maxFree[u] = 0;
      if (scope[u] === 0) continue;
      const len = this.length(u) - (this.#evictedPerUnit[u] as number);
      if (this.#evictedPerUnit[u] !== 0) {
        throw new InvalidArgumentError('freeCheapestBlocks must run before any other eviction of the units it covers.');
      }
      maxFree[u] = Math.max(0, Math.ceil(len / B) - minBlocks);
      const h0 = u * 2048;
      hist.fill(0, h0, h0 + 2048);
      this.#loadKeys(u, len, h0);
    }
    const keys = this.#keys;
    // Levels 1-3 narrow the threshold key: 11 + 11 + 10 bits.
    let prefix = 0;
    let target = blocks;
    const levels: ReadonlyArray<readonly [shift: number, bits: number]> = [
      [21, 11],
      [10, 11],
      [0, 10],
    ];
    for (let level = 0; level < 3; level++) {
      const [shift, bits] = levels[level] as readonly [number, number];
      const bins = 1 << bits;
      if (level === 1) {
        // Histogram the next bits of the keys in the level-1 bin, collecting them so that
        // level 2 reads only those.
        const cand = this.#candidates;
        const start = this.#candidateStart;
        let n = 0;
        for (let u = 0; u < this.units; u++) {
          start[u] = n;
          if (scope[u] === 0 || maxFree[u] === 0) continue;
          const h0 = u * 2048;
          hist.fill(0, h0, h0 + bins);
          const k0 = u * this.#stride;
          const len = this.length(u);
          for (let i = 0; i < len; i++) {
            const key = keys[k0 + i] as number;
            if (key !== PROTECTED_KEY && (key ^ SIGN) >>> 21 === prefix) {
              const b = ((key ^ SIGN) >>> shift) & (bins - 1);
              hist[h0 + b] = (hist[h0 + b] as number) + 1;
              cand[n++] = k0 + i;
            }
          }
        }
        start[this.units] = n;
      } else if (level === 2) {
        const cand = this.#candidates;
        const start = this.#candidateStart;
        for (let u = 0; u < this.units; u++) {
          if (scope[u] === 0 || maxFree[u] === 0) continue;
          const h0 = u * 2048;
          hist.fill(0, h0, h0 + bins);
          for (let c = start[u] as number; c < (start[u + 1] as number); c++) {
            const key = keys[cand[c] as number] as number;
            if ((key ^ SIGN) >>> 10 === prefix) {
              const b = (key ^ SIGN) & (bins - 1);
              hist[h0 + b] = (hist[h0 + b] as number) + 1;
            }
          }
        }
      }
      // Cumulative counts; then the smallest bin whose threshold frees `target` blocks.
      for (let u = 0; u < this.units; u++) {
        if (scope[u] === 0 || maxFree[u] === 0) continue;
        const h0 = u * 2048;
        let c = countBelow[u] as number;
        for (let b = 0; b < bins; b++) {
          c += hist[h0 + b] as number;
          hist[h0 + b] = c;
        }
      }
      let lo = 0;
      let hi = bins - 1;
      if (this.#freedAt(hi, scope) < target) {
        // Not enough unprotected slots: free everything available.
        target = this.#freedAt(hi, scope);
        if (target === 0) return 0;
      }
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.#freedAt(mid, scope) >= target) hi = mid;
        else lo = mid + 1;
      }
      // Narrow to bin `lo`: counts below it become the base of the next level.
      for (let u = 0; u < this.units; u++) {
        if (scope[u] === 0 || maxFree[u] === 0) continue;
        const h0 = u * 2048;
        countBelow[u] = lo === 0 ? (countBelow[u] as number) : (hist[h0 + lo - 1] as number);
        this.#countAtOrBelow[u] = hist[h0 + lo] as number;
      }
      prefix = (prefix << bits) | lo;
    }
    // prefix is now the exact threshold key t: freeing with keys < t frees fewer than
    // `target` blocks, with keys <= t at least `target`. Split the ties in unit order.
    const freed = this.#freed;
    let total = 0;
    for (let u = 0; u < this.units; u++) {
      freed[u] = scope[u] === 0 || maxFree[u] === 0 ? 0 : this.#blocksFreed(u, countBelow[u] as number);
      total += freed[u] as number;
    }
    for (let u = 0; u < this.units && total < target; u++) {
      if (scope[u] === 0 || maxFree[u] === 0) continue;
      const more = Math.min(this.#blocksFreed(u, this.#countAtOrBelow[u] as number) - (freed[u] as number), target - total);
      freed[u] = (freed[u] as number) + more;
      total += more;
    }
    const t = prefix ^ SIGN;
    for (let u = 0; u < this.units; u++) {
      const k = freed[u] as number;
      if (k === 0) continue;
      const len = this.length(u);
      const hanging = len - (Math.ceil(len / B) - 1) * B;
      const e = (k - 1) * B + hanging;
      const below = countBelow[u] as number;
      if (e >= below) {
        // Every key below t goes, plus e - below of the keys equal to t.
        this.#markBelow(u, len, t, e - below);
      } else {
        // The block rule leaves some keys below t (fewer than B unless a floor binds):
        // the e-th smallest is found among them.
        this.#markLowest(u, len, e, t, below, this.#candidateStart[u] as number, this.#candidateStart[u + 1] as number);
      }
    }
    return total;
  }

  /**
   * Plans the slots of `unit` that a backend's selection marked in `row` (see
   * EvictionSelection); returns how many. A marked slot past the unit's length or at a
   * protected position means the selection does not belong to this cache state:
   * InvalidPlanError, before anything of the unit is planned.
   */
  evictSelected(unit: number, selection: EvictionSelection, row: number): number {
    this.#checkUnit(unit);
    if (this.#evictedPerUnit[unit] !== 0) throw new InvalidArgumentError(`Unit ${unit} already has planned evictions.`);
    const a = this.allocator;
    const B = this.blockSize;
    const len = this.length(unit);
    this.#checkPositions();
    const t0 = a.unitHeadIndex(this.sequence, unit) * a.maxBlocksPerHead;
    const words = selection.result;
    const w0 = selection.rowCount + (selection.rows[row * SELECTION_ROW_FIELDS + 6] as number);
    const wordCount = (len + 31) >>> 5;
    const positions = a.slotPositions;
    const newestUnprotected = this.tokens - this.protectedWindow;
    // Check first, so a bad selection leaves the plan untouched.
    for (let w = 0; w < wordCount; w++) {
      let bits = words[w0 + w] as number;
      while (bits !== 0) {
        const i = w * 32 + 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        const p = i < len ? (positions[(a.blockTables[t0 + ((i / B) | 0)] as number) * B + (i % B)] as number) : -1;
        if (i >= len || p >= newestUnprotected || p < this.sinks) {
          throw new InvalidPlanError(
            `The device selection marks slot ${i} of unit ${unit} (length ${len}${i < len ? `, protected position ${p}` : ''}).`,
          );
        }
      }
    }
    const k0 = unit * this.#stride;
    const evicted = this.#evicted;
    const plan = this.plan;
    const units = plan.units;
    const slots = plan.slots;
    let n = plan.count;
    const start = n;
    for (let w = 0; w < wordCount; w++) {
      let bits = words[w0 + w] as number;
      while (bits !== 0) {
        const i = w * 32 + 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        evicted[k0 + i] = 1;
        units[n] = unit;
        slots[n] = (a.blockTables[t0 + ((i / B) | 0)] as number) * B + (i % B);
        n++;
      }
    }
    plan.count = n;
    this.#evictedPerUnit[unit] = n - start;
    return n - start;
  }

  // ---------------------------------------------------------------------------------------

  /** Blocks a unit frees if its `available` lowest slots may go: floor((available - hanging) / B) + 1, capped. */
  #blocksFreed(u: number, available: number): number {
    const B = this.blockSize;
    const len = this.length(u);
    const hanging = len - (Math.ceil(len / B) - 1) * B;
    if (available < hanging) return 0;
    return Math.min(this.#maxFree[u] as number, Math.floor((available - hanging) / B) + 1);
  }

  /** Blocks freed in all units in scope if every key in bins <= bin of the current level may go. */
  #freedAt(bin: number, scope: Uint8Array): number {
    let total = 0;
    for (let u = 0; u < this.units; u++) {
      if (scope[u] === 0 || this.#maxFree[u] === 0) continue;
      total += this.#blocksFreed(u, this.#hist[u * 2048 + bin] as number);
    }
    return total;
  }

  /**
   * Fills the unit's keys: an order-preserving u32 of the metric (NaN lowest), or
   * PROTECTED_KEY for protected and already planned slots. Returns the evictable count.
   */
  #loadKeys(unit: number, len: number, histogramAt = -1): number {
    this.#checkPositions();
    const a = this.allocator;
    const B = this.blockSize;
    const t0 = a.unitHeadIndex(this.sequence, unit) * a.maxBlocksPerHead;
    const k0 = unit * this.#stride;
    const keys = this.#keys;
    const bitsOf = this.#metricBits;
    const hist = this.#hist;
    const positions = a.slotPositions;
    const tables = a.blockTables;
    const newestUnprotected = this.tokens - this.protectedWindow;
    const sinks = this.sinks;
    const evicted = this.#evicted;
    const anyEvicted = this.#evictedPerUnit[unit] !== 0;
    let evictable = 0;
    for (let j = 0, i = 0; i < len; j++) {
      const base = (tables[t0 + j] as number) * B;
      const end = Math.min(len, i + B);
      for (let slot = base; i < end; i++, slot++) {
        const p = positions[slot] as number;
        if (p >= newestUnprotected || p < sinks || (anyEvicted && evicted[k0 + i] === 1)) {
          keys[k0 + i] = PROTECTED_KEY;
          continue;
        }
        const bits = bitsOf[slot] as number;
        // NaN sorts lowest; negative floats order backwards as integers: flip their magnitude bits.
        const key = (bits & 0x7fffffff) > 0x7f800000 ? SIGN : bits >= 0 ? bits : bits ^ 0x7fffffff;
        keys[k0 + i] = key;
        if (histogramAt >= 0) {
          // Top 11 bits of the key: the first level of freeCheapestBlocks' threshold search.
          const b = histogramAt + ((key ^ SIGN) >>> 21);
          hist[b] = (hist[b] as number) + 1;
        }
        evictable++;
      }
    }
    return evictable;
  }

  /**
   * Marks the `e` lowest keys of a unit, given that exactly `below` evictable keys are
   * smaller than `bound` and e <= below (keys already loaded). When few of those keys are
   * spared (the usual case in the block rule) one pass with a small buffer finds the
   * threshold; otherwise quickselect.
   */
  #markLowest(unit: number, len: number, e: number, bound: number, below: number, candFrom = 0, candTo = 0): void {
    if (e <= 0) return;
    const k0 = unit * this.#stride;
    const keys = this.#keys;
    const spare = below - e;
    let t: number;
    if (spare === 0) {
      t = bound;
    } else if (spare <= 32) {
      // The spare-th largest key below `bound`: keep the largest `spare` keys seen, ascending.
      // When the candidates of the threshold bin (all keys of the unit that share `bound`'s
      // top bits) hold at least `spare` keys below `bound`, the largest ones are among them.
      const cand = this.#candidates;
      let inBin = 0;
      for (let c = candFrom; c < candTo; c++) if ((keys[cand[c] as number] as number) < bound) inBin++;
      const fromCandidates = inBin >= spare;
      const top = this.#select;
      let n = 0;
      const count = fromCandidates ? candTo - candFrom : len;
      for (let x = 0; x < count; x++) {
        const key = (fromCandidates ? keys[cand[candFrom + x] as number] : keys[k0 + x]) as number;
        if (key >= bound) continue;
        if (n < spare) {
          let j = n++;
          while (j > 0 && (top[j - 1] as number) > key) {
            top[j] = top[j - 1] as number;
            j--;
          }
          top[j] = key;
        } else if (key > (top[0] as number)) {
          // Drop the smallest kept key and insert this one in order.
          let j = 0;
          while (j + 1 < spare && (top[j + 1] as number) < key) {
            top[j] = top[j + 1] as number;
            j++;
          }
          top[j] = key;
        }
      }
      t = top[0] as number; // the spare-th largest below bound
    } else {
      const sel = this.#select;
      let n = 0;
      for (let i = 0; i < len; i++) {
        const key = keys[k0 + i] as number;
        if (key < bound) sel[n++] = key;
      }
      t = quickselect(sel, n, e - 1);
      // The e lowest are the keys below the e-th smallest plus some of its ties.
      const marked = this.#markBelow(unit, len, t, 0);
      if (marked < e) this.#markEqual(unit, len, t, e - marked);
      return;
    }
    // Keys below t, the spare-th largest key below bound, number e unless t has ties.
    const marked = this.#markBelow(unit, len, t, 0);
    if (marked < e) this.#markEqual(unit, len, t, e - marked);
  }

  /** Marks `missing` more keys equal to t that are not marked yet. */
  #markEqual(unit: number, len: number, t: number, missing: number): void {
    const k0 = unit * this.#stride;
    const keys = this.#keys;
    const evicted = this.#evicted;
    for (let i = 0; i < len && missing > 0; i++) {
      if (keys[k0 + i] === t && evicted[k0 + i] === 0) {
        this.#mark(unit, i);
        missing--;
      }
    }
  }

  /**
   * Marks every key of the unit below t and the first `ties` keys equal to t, writing the
   * plan directly. Returns how many it marked.
   */
  #markBelow(unit: number, len: number, t: number, ties: number): number {
    const a = this.allocator;
    const B = this.blockSize;
    const t0 = a.unitHeadIndex(this.sequence, unit) * a.maxBlocksPerHead;
    const k0 = unit * this.#stride;
    const keys = this.#keys;
    const evicted = this.#evicted;
    const plan = this.plan;
    const units = plan.units;
    const slots = plan.slots;
    let n = plan.count;
    const start = n;
    for (let j = 0, i = 0; i < len; j++) {
      const base = (a.blockTables[t0 + j] as number) * B;
      const end = Math.min(len, i + B);
      for (let slot = base; i < end; i++, slot++) {
        const key = keys[k0 + i] as number;
        if (key < t || (key === t && key !== PROTECTED_KEY && ties-- > 0)) {
          evicted[k0 + i] = 1;
          units[n] = unit;
          slots[n] = slot;
          n++;
        }
      }
    }
    plan.count = n;
    this.#evictedPerUnit[unit] = (this.#evictedPerUnit[unit] as number) + (n - start);
    return n - start;
  }

  #mark(unit: number, i: number): void {
    this.#evicted[unit * this.#stride + i] = 1;
    this.#evictedPerUnit[unit] = (this.#evictedPerUnit[unit] as number) + 1;
    this.plan.add(unit, this.slot(unit, i));
  }

  /** Planning reads slot positions: refuse a sequence whose host copy a device compaction left stale. */
  #checkPositions(): void {
    if (this.allocator.hasStalePositions(this.sequence)) throw new StalePositionsError(this.sequence, 'Planning a compression');
  }

  #positionProtected(p: number): boolean {
    return p >= this.tokens - this.protectedWindow || p < this.sinks;
  }

  #checkUnit(unit: number): number {
    if (!Number.isInteger(unit) || unit < 0 || unit >= this.units) {
      throw new InvalidArgumentError(`unit must be an integer in [0, ${this.units}), got ${unit}.`);
    }
    return unit;
  }

  #checkIndex(unit: number, i: number): void {
    this.#checkUnit(unit);
    const len = this.length(unit);
    if (!Number.isInteger(i) || i < 0 || i >= len)
      throw new InvalidArgumentError(`Slot index ${i} is outside unit ${unit} (length ${len}).`);
  }
}

/** The k-th smallest (0-based) of a[0 .. n), reordering a. Hoare partition with median of three. */
function quickselect(a: Int32Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    // Median of three as the pivot.
    let x = a[lo] as number;
    let y = a[mid] as number;
    const z = a[hi] as number;
    if (x > y) [x, y] = [y, x];
    if (y > z) y = z;
    if (x > y) y = x;
    const pivot = y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while ((a[i] as number) < pivot) i++;
      while ((a[j] as number) > pivot) j--;
      if (i <= j) {
        const tmp = a[i] as number;
        a[i] = a[j] as number;
        a[j] = tmp;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k] as number;
  }
  return a[k] as number;
}
