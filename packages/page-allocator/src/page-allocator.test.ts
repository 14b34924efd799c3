import {
  CapacityExceededError,
  type ChangeLog,
  InvalidArgumentError,
  InvalidPlanError,
  OutOfBlocksError,
  SlotMoveList,
  StalePositionsError,
  UnknownSequenceError,
} from '@kvcompress/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageAllocator } from './page-allocator.ts';

const shape = { layers: 2, kvHeads: 2, headDim: 4, queryHeadsPerKvHead: 2 };

function make(numBlocks = 32, blockSize = 4, maxSequences = 4, maxContext = 64): PageAllocator {
  return new PageAllocator({ shape, numBlocks, blockSize, maxSequences, maxContext });
}

/** Global slots of one head in logical order. */
function headSlots(a: PageAllocator, seq: number, layer: number, head: number): number[] {
  const n = a.length(seq, layer, head);
  return Array.from({ length: n }, (_, i) => a.slot(seq, layer, head, i));
}

/** Snapshot of the allocator's observable state, to prove a failed call changed nothing. */
function snapshot(a: PageAllocator): string {
  return JSON.stringify([
    Array.from(a.blockTables),
    Array.from(a.headLengths),
    Array.from(a.slotPositions),
    Array.from(a.refCounts),
    Array.from(a.nextPositions),
    a.freeBlocks,
    a.activeSequences,
  ]);
}

describe('PageAllocator basics', () => {
  it('appends prefill and decode tokens into per-head blocks with positions', () => {
    const a = make();
    const s = a.addSequence();
    const out = new Int32Array(shape.layers * shape.kvHeads * 6);
    a.appendTokens(s, 6, out);
    // 6 tokens at B = 4: two blocks per head, 4 heads.
    expect(a.usedBlocks).toBe(8);
    expect(a.length(s, 1, 1)).toBe(6);
    for (let unit = 0; unit < 4; unit++) {
      for (let t = 0; t < 6; t++) expect(a.slotPositions[out[unit * 6 + t] as number]).toBe(t);
    }
    const step = new Int32Array(4);
    a.appendTokens(s, 1, step);
    expect(a.nextPosition(s)).toBe(7);
    expect(a.slotPositions[step[3] as number]).toBe(6);
    expect(a.usedBlocks).toBe(8);
    a.appendTokens(s, 1, step);
    a.appendTokens(s, 1, step);
    expect(a.usedBlocks).toBe(12);
    a.checkInvariants();
  });

  it('returns every block when sequences end', () => {
    const a = make();
    const s = a.addSequence();
    a.appendTokens(s, 9);
    const f = a.forkSequence(s);
    a.appendTokens(f, 3, undefined, a.createMoveList());
    a.removeSequence(s);
    a.checkInvariants();
    a.removeSequence(f);
    expect(a.freeBlocks).toBe(a.numBlocks);
    a.checkInvariants();
  });

  it('reports usage and fragmentation', () => {
    const a = make();
    const s = a.addSequence();
    a.appendTokens(s, 5); // 2 blocks per head, 5 of 8 slots filled
    const u = a.usage();
    expect(u.usedBlocks).toBe(8);
    expect(u.filledSlots).toBe(20);
    expect(u.fragmentation).toBeCloseTo(1 - 20 / 32);
    expect(Array.from(a.blocksPerHead(s))).toEqual([2, 2, 2, 2]);
    expect(Array.from(a.blocksPerLayer())).toEqual([4, 4]);
    expect(a.sequenceBlocks(s)).toBe(8);
    expect(a.bytesPerBlock('f16')).toBe(2 * 4 * 4 * 2);
  });

  it('compacts: tail survivors fill holes and the tail blocks are freed', () => {
    const a = make();
    const s = a.addSequence();
    a.appendTokens(s, 10); // blocks [0..3], [4..7], [8, 9]
    const plan = a.createEvictionPlan();
    plan.reset(s);
    const unit = 3; // layer 1, head 1
    for (const i of [1, 2, 5, 6]) plan.add(unit, a.slot(s, 1, 1, i));
    const moves = a.createMoveList();
    const before = headSlots(a, s, 1, 1).map((slot) => a.slotPositions[slot]);
    const r = a.compact(plan, moves);
    expect(r).toEqual({ evictedSlots: 4, freedBlocks: 1, releasedBlocks: 1, copiedBlocks: 0, moves: 3 });
    const after = headSlots(a, s, 1, 1).map((slot) => a.slotPositions[slot]);
    expect(after).toHaveLength(6);
    expect([...after].sort((x, y) => (x as number) - (y as number))).toEqual(before.filter((_, i) => ![1, 2, 5, 6].includes(i)));
    // Six survivors stay in logical slots 0..5: tail survivors 7, 8, 9 fill holes 1, 2, 5.
    expect(after).toEqual([0, 7, 8, 3, 4, 9]);
    expect(a.length(s, 0, 0)).toBe(10);
    a.checkInvariants();
  });

  it('copies a shared block before compaction writes into it', () => {
    const a = make();
    const s = a.addSequence();
    a.appendTokens(s, 8);
    const f = a.forkSequence(s);
    const parentPositions = headSlots(a, s, 0, 0).map((slot) => a.slotPositions[slot]);
    const plan = a.createEvictionPlan();
    plan.reset(f);
    plan.add(0, a.slot(f, 0, 0, 1));
    const moves = a.createMoveList();
    const r = a.compact(plan, moves);
    expect(r.copiedBlocks).toBe(1);
    expect(r.freedBlocks).toBe(0); // the parent still holds the old tail block
    expect(headSlots(a, s, 0, 0).map((slot) => a.slotPositions[slot])).toEqual(parentPositions);
    expect(headSlots(a, f, 0, 0).map((slot) => a.slotPositions[slot])).toEqual([0, 7, 2, 3, 4, 5, 6]);
    a.checkInvariants();
  });
});

describe('PageAllocator locality', () => {
  /** Evicts `n` random slots of every head of `seq` (host compaction); returns the ids each head released, by unit. */
  function evictRandom(a: PageAllocator, seq: number, n: number, rand: () => number): number[][] {
    const plan = a.createEvictionPlan();
    plan.reset(seq);
    const released: number[][] = [];
    for (let unit = 0; unit < a.headsPerSequence; unit++) {
      const layer = Math.floor(unit / shape.kvHeads);
      const head = unit % shape.kvHeads;
      const len = a.length(seq, layer, head);
      const picked = new Set<number>();
      while (picked.size < Math.min(n, len)) picked.add(Math.floor(rand() * len));
      for (const i of picked) plan.add(unit, a.slot(seq, layer, head, i));
      const h = a.unitHeadIndex(seq, unit);
      const keep = Math.ceil((len - picked.size) / a.blockSize);
      const old = Math.ceil(len / a.blockSize);
      released.push(Array.from(a.blockTables.subarray(h * a.maxBlocksPerHead + keep, h * a.maxBlocksPerHead + old)));
    }
    a.compact(plan, a.createMoveList());
    return released;
  }

  it('gives a head back the blocks it released, while other sequences take and free blocks in between', () => {
    let seed = 7;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const a = make(200, 4, 4, 64);
    const s = a.addSequence();
    const t = a.addSequence();
    a.appendTokens(s, 40);
    a.appendTokens(t, 20);
    const regionOf = (seq: number) =>
      new Set(
        Array.from({ length: a.headsPerSequence }, (_, u) => a.unitHeadIndex(seq, u)).flatMap((h) =>
          Array.from(a.blockTables.subarray(h * a.maxBlocksPerHead, h * a.maxBlocksPerHead + 10)),
        ),
      );
    const region = regionOf(s);
    for (let round = 0; round < 50; round++) {
      // s: a steady state of 8 tokens added, 8 evicted (two blocks of 4 a head).
      const released = evictRandom(a, s, 8, rand);
      // t churns between the release and the next append of s.
      if (round % 3 === 2) {
        a.removeSequence(t);
        expect(a.addSequence()).toBe(t);
      }
      a.appendTokens(t, 1 + (round % 5));
      if (a.length(t, 0, 0) > 40) evictRandom(a, t, 20, rand);
      a.appendTokens(s, 8);
      for (let unit = 0; unit < a.headsPerSequence; unit++) {
        const h = a.unitHeadIndex(s, unit);
        const blocks = Array.from(a.blockTables.subarray(h * a.maxBlocksPerHead + 8, h * a.maxBlocksPerHead + 10));
        expect(blocks).toEqual(released[unit]);
      }
      a.checkInvariants();
    }
    // After 50 rounds s still holds exactly the blocks it started with.
    expect(regionOf(s)).toEqual(region);
  });

  it('drops a released block still shared with a fork from the tail, the older tail moving down', () => {
    const a = make(32, 4, 4, 64);
    const s = a.addSequence();
    a.appendTokens(s, 12); // 3 blocks a head
    const h = a.unitHeadIndex(s, 0);
    const t0 = h * a.maxBlocksPerHead;
    const [b0, b1, b2] = Array.from(a.blockTables.subarray(t0, t0 + 3));
    const evict = (indices: number[]) => {
      const plan = a.createEvictionPlan();
      plan.reset(s);
      for (const i of indices) plan.add(0, a.slot(s, 0, 0, i));
      return a.compact(plan, a.createMoveList());
    };
    expect(evict([8, 9, 10, 11]).freedBlocks).toBe(1); // b2 becomes the reserved tail
    expect(Array.from(a.blockTables.subarray(t0, t0 + 4))).toEqual([b0, b1, b2, -1]);
    const f = a.forkSequence(s); // shares b0 and b1
    const r = evict([4, 5, 6, 7]); // releases b1, which f still holds
    expect(r).toMatchObject({ releasedBlocks: 1, freedBlocks: 0, copiedBlocks: 0 });
    expect(Array.from(a.blockTables.subarray(t0, t0 + 3))).toEqual([b0, b2, -1]);
    expect(a.reservedBlocks).toBe(1); // b2, the only head with a tail
    expect(a.blockTables[a.unitHeadIndex(f, 0) * a.maxBlocksPerHead + 1]).toBe(b1);
    a.checkInvariants();
    a.appendTokens(s, 1, undefined, a.createMoveList()); // head 0 takes b2 back at index 1
    expect(a.blockTables[t0 + 1]).toBe(b2);
    a.checkInvariants();
  });

  it('keeps every block through many releases, takes back and steals from reserved tails', () => {
    let seed = 11;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const numBlocks = 64;
    const a = make(numBlocks, 4, 4, 64);
    const seqs = [a.addSequence(), a.addSequence(), a.addSequence()];
    for (const q of seqs) a.appendTokens(q, 16);
    // Releases stay in the heads' reserved tails, heads take them back, ended sequences'
    // blocks go on the free stack, and with 64 blocks the stack runs dry often: appends then
    // steal from other heads' tails (and from their own sequence's), while copy-on-write and
    // compaction never see a block twice.
    for (let round = 0; round < 400; round++) {
      const q = seqs[round % 3] as number;
      evictRandom(a, q, 4 + Math.floor(rand() * 5), rand);
      const r = seqs[(round + 1) % 3] as number;
      if (round % 17 === 16) {
        a.removeSequence(r);
        expect(a.addSequence()).toBe(r);
      }
      if (a.freeBlocks >= a.headsPerSequence * 2) a.appendTokens(r, 1 + Math.floor(rand() * 8));
      if (a.length(r, 0, 0) > 40) evictRandom(a, r, 16, rand);
      if (a.freeBlocks >= a.headsPerSequence * 2) a.appendTokens(q, 1 + Math.floor(rand() * 8));
      a.checkInvariants();
    }
    for (const q of seqs) a.removeSequence(q);
    expect(a.freeBlocks).toBe(numBlocks);
    a.checkInvariants();
  });
});

describe('PageAllocator errors leave state unchanged', () => {
  it('unknown sequences', () => {
    const a = make();
    expect(() => a.appendTokens(3, 1)).toThrow(UnknownSequenceError);
    const s = a.addSequence();
    a.removeSequence(s);
    expect(() => a.removeSequence(s)).toThrow(UnknownSequenceError);
    expect(() => a.forkSequence(-1)).toThrow(UnknownSequenceError);
    expect(() => a.length(1.5, 0, 0)).toThrow(UnknownSequenceError);
  });

  it('out of blocks on append', () => {
    const a = make(5);
    const s = a.addSequence();
    a.appendTokens(s, 4);
    const before = snapshot(a);
    const err = (() => {
      try {
        a.appendTokens(s, 1);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(OutOfBlocksError);
    expect((err as OutOfBlocksError).requested).toBe(4);
    expect(snapshot(a)).toBe(before);
  });

  it('table full, bad counts, full sequence table', () => {
    const a = make(64, 4, 2, 8);
    const s = a.addSequence();
    a.addSequence();
    expect(() => a.addSequence()).toThrow(CapacityExceededError);
    const before = snapshot(a);
    expect(() => a.appendTokens(s, 9)).toThrow(CapacityExceededError);
    expect(() => a.appendTokens(s, 0)).toThrow(InvalidArgumentError);
    expect(() => a.appendTokens(s, 2, new Int32Array(3))).toThrow(InvalidArgumentError);
    expect(snapshot(a)).toBe(before);
  });

  it('plans naming foreign, duplicate or out-of-range slots', () => {
    const a = make();
    const s = a.addSequence();
    const t = a.addSequence();
    a.appendTokens(s, 6);
    a.appendTokens(t, 6);
    const plan = a.createEvictionPlan();
    const moves = a.createMoveList();
    const before = snapshot(a);
    const cases: Array<[number, number][]> = [
      [[0, a.slot(t, 0, 0, 0)]], // another sequence's slot
      [[1, a.slot(s, 0, 0, 0)]], // another head's slot
      [
        [0, a.slot(s, 0, 0, 2)],
        [0, a.slot(s, 0, 0, 2)],
      ], // twice
      [[0, a.slot(s, 0, 0, 5) + 1]], // past the end of the head
      [[0, -1]],
      [[0, a.numSlots]],
      [[99, 0]],
      [[-1, 0]],
    ];
    for (const entries of cases) {
      plan.reset(s);
      for (const [u, slot] of entries) plan.add(u, slot);
      expect(() => a.compact(plan, moves)).toThrow(InvalidPlanError);
      expect(snapshot(a)).toBe(before);
      a.checkInvariants();
    }
    plan.reset(17);
    expect(() => a.compact(plan, moves)).toThrow(UnknownSequenceError);
    expect(moves.count).toBe(0);
  });

  it('copy-on-write without free blocks', () => {
    const a = make(4, 4, 4, 64);
    const s = a.addSequence();
    a.appendTokens(s, 3);
    const f = a.forkSequence(s);
    expect(a.freeBlocks).toBe(0);
    const before = snapshot(a);
    expect(() => a.appendTokens(f, 1, undefined, new SlotMoveList(64))).toThrow(OutOfBlocksError);
    expect(() => a.appendTokens(f, 1)).toThrow(OutOfBlocksError);
    const plan = a.createEvictionPlan();
    plan.reset(f);
    plan.add(0, a.slot(f, 0, 0, 0));
    expect(() => a.compact(plan, a.createMoveList())).toThrow(OutOfBlocksError);
    expect(snapshot(a)).toBe(before);
    a.checkInvariants();
  });

  it('rejects bad construction options with named errors', () => {
    expect(() => make(0)).toThrow(InvalidArgumentError);
    expect(() => make(8, 0)).toThrow(InvalidArgumentError);
    expect(() => new PageAllocator({ shape: { ...shape, layers: -1 }, numBlocks: 4, maxSequences: 1, maxContext: 8 })).toThrow(
      InvalidArgumentError,
    );
  });
});

// ---------------------------------------------------------------------------------------
// Model-based property test: random operation sequences against a plain-array model, with a
// simulated K/V store and metric store that execute every move list the allocator emits.

type Op =
  | { kind: 'add' }
  | { kind: 'remove'; pick: number }
  | { kind: 'fork'; pick: number }
  | { kind: 'append'; pick: number; count: number }
  | { kind: 'evict'; pick: number; fraction: number; seed: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({ kind: 'add' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fork' as const), pick: fc.nat() }) },
  {
    weight: 5,
    arbitrary: fc.record({ kind: fc.constant('append' as const), pick: fc.nat(), count: fc.integer({ min: 1, max: 13 }) }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('evict' as const),
      pick: fc.nat(),
      fraction: fc.double({ min: 0, max: 1, noNaN: true }),
      seed: fc.nat(),
    }),
  },
);

/** What a head holds: (position, payload) pairs. Payload stands in for K/V. */
type Token = { position: number; payload: number };

function runScenario(ops: Op[], numBlocks: number, blockSize: number): void {
  const a = new PageAllocator({ shape, numBlocks, blockSize, maxSequences: 5, maxContext: 40 });
  const units = shape.layers * shape.kvHeads;
  const kv = new Float64Array(a.numSlots); // simulated K/V payload per slot
  const metric = new Float32Array(a.numSlots); // simulated metric, moves with its slot
  const model = new Map<number, Token[][]>(); // seq -> per unit tokens
  const moves = a.createMoveList();
  const plan = a.createEvictionPlan();
  let nextPayload = 1;
  // A device copy of the tables kept in sync only through the change logs.
  const tableMirror = a.blockTables.slice();
  const positionMirror = a.slotPositions.slice();
  a.tableChanges.clear();
  a.positionChanges.clear();
  const syncMirror = (log: ChangeLog, host: Int32Array, mirror: Int32Array) => {
    if (log.overflowed) mirror.set(host);
    else for (let i = 0; i < log.count; i++) mirror[log.indices[i] as number] = host[log.indices[i] as number] as number;
    log.clear();
    // Table entries past a head's blocks (reserved tails, -1) need not reach the device.
    if (host === a.blockTables) expect(liveTables(a, mirror)).toEqual(liveTables(a));
    else expect(mirror).toEqual(host);
  };

  const execute = () => {
    // Every move reads the state from before the list: run them against a copy.
    const kvBefore = kv.slice();
    const metricBefore = metric.slice();
    const dsts = new Set<number>();
    const srcs = new Set<number>();
    for (let i = 0; i < moves.count; i++) {
      srcs.add(moves.src[i] as number);
      expect(dsts.has(moves.dst[i] as number)).toBe(false);
      dsts.add(moves.dst[i] as number);
    }
    for (const d of dsts) expect(srcs.has(d)).toBe(false);
    for (let i = 0; i < moves.count; i++) {
      kv[moves.dst[i] as number] = kvBefore[moves.src[i] as number] as number;
      metric[moves.dst[i] as number] = metricBefore[moves.src[i] as number] as number;
    }
    moves.clear();
  };

  const verify = () => {
    a.checkInvariants();
    syncMirror(a.tableChanges, a.blockTables, tableMirror);
    syncMirror(a.positionChanges, a.slotPositions, positionMirror);
    let referenced = 0;
    const seen = new Set<number>();
    for (const [seq, heads] of model) {
      for (let unit = 0; unit < units; unit++) {
        const layer = Math.floor(unit / shape.kvHeads);
        const head = unit % shape.kvHeads;
        const expected = (heads[unit] as Token[]).map((t) => `${t.position}:${t.payload}`).sort();
        const actual = headSlots(a, seq, layer, head).map((slot) => {
          // Positions, metrics and K/V payload all travel together.
          expect(metric[slot]).toBe(Math.fround((kv[slot] as number) / 7));
          return `${a.slotPositions[slot]}:${kv[slot]}`;
        });
        expect(actual.sort()).toEqual(expected);
        for (let j = 0; j < a.blocksPerHead(seq)[unit]!; j++) {
          const block = a.blockTables[a.tableOffset(a.headIndex(seq, layer, head)) + j] as number;
          if (!seen.has(block)) {
            seen.add(block);
            referenced++;
          }
        }
      }
    }
    expect(a.freeBlocks).toBe(a.numBlocks - referenced);
  };

  const pickSeq = (pick: number): number | undefined => {
    const live = [...model.keys()];
    return live.length === 0 ? undefined : live[pick % live.length];
  };

  for (const op of ops) {
    if (op.kind === 'add') {
      if (a.activeSequences === a.maxSequences) {
        expect(() => a.addSequence()).toThrow(CapacityExceededError);
        continue;
      }
      const s = a.addSequence();
      model.set(
        s,
        Array.from({ length: units }, () => []),
      );
    } else if (op.kind === 'remove') {
      const s = pickSeq(op.pick);
      if (s === undefined) continue;
      a.removeSequence(s);
      model.delete(s);
    } else if (op.kind === 'fork') {
      const s = pickSeq(op.pick);
      if (s === undefined || a.activeSequences === a.maxSequences) continue;
      const f = a.forkSequence(s);
      model.set(
        f,
        (model.get(s) as Token[][]).map((tokens) => tokens.map((t) => ({ ...t }))),
      );
    } else if (op.kind === 'append') {
      const s = pickSeq(op.pick);
      if (s === undefined) continue;
      const out = new Int32Array(units * op.count);
      const before = snapshot(a);
      try {
        a.appendTokens(s, op.count, out, moves);
      } catch (e) {
        expect(e instanceof OutOfBlocksError || e instanceof CapacityExceededError).toBe(true);
        expect(snapshot(a)).toBe(before);
        expect(moves.count).toBe(0);
        continue;
      }
      execute(); // copy-on-write copies first, then the new tokens
      const position0 = a.nextPosition(s) - op.count;
      const heads = model.get(s) as Token[][];
      for (let unit = 0; unit < units; unit++) {
        for (let t = 0; t < op.count; t++) {
          const slot = out[unit * op.count + t] as number;
          const payload = nextPayload++;
          kv[slot] = payload;
          metric[slot] = Math.fround(payload / 7);
          (heads[unit] as Token[]).push({ position: position0 + t, payload });
        }
      }
    } else {
      const s = pickSeq(op.pick);
      if (s === undefined) continue;
      const heads = model.get(s) as Token[][];
      plan.reset(s);
      let rng = op.seed + 1;
      const rand = () => {
        rng = (rng * 1103515245 + 12345) % 2147483648;
        return rng / 2147483648;
      };
      const evictedPayloads = new Set<number>();
      for (let unit = 0; unit < units; unit++) {
        const layer = Math.floor(unit / shape.kvHeads);
        const head = unit % shape.kvHeads;
        const fraction = op.fraction * rand();
        for (const slot of headSlots(a, s, layer, head)) {
          if (rand() < fraction) {
            plan.add(unit, slot);
            evictedPayloads.add(kv[slot] as number);
          }
        }
      }
      const blocksBefore = a.sequenceBlocks(s);
      const before = snapshot(a);
      let r: ReturnType<PageAllocator['compact']>;
      try {
        r = a.compact(plan, moves);
      } catch (e) {
        // Only copy-on-write can run out of blocks in a compaction.
        expect(e).toBeInstanceOf(OutOfBlocksError);
        expect(snapshot(a)).toBe(before);
        continue;
      }
      execute();
      for (let unit = 0; unit < units; unit++) {
        heads[unit] = (heads[unit] as Token[]).filter((t) => !evictedPayloads.has(t.payload));
      }
      // Whole tail blocks are released: every head ends with ceil(len / B) blocks.
      let expectedBlocks = 0;
      for (let unit = 0; unit < units; unit++) expectedBlocks += Math.ceil((heads[unit] as Token[]).length / blockSize);
      expect(a.sequenceBlocks(s)).toBe(expectedBlocks);
      expect(r.releasedBlocks).toBe(blocksBefore - expectedBlocks);
      expect(r.evictedSlots).toBe(plan.count);
    }
    verify();
  }
  for (const s of [...model.keys()]) a.removeSequence(s);
  expect(a.freeBlocks).toBe(a.numBlocks);
  a.checkInvariants();
}

describe('PageAllocator properties', () => {
  it('random operation sequences keep every invariant (allocate/append/evict/compact/fork/free)', () => {
    fc.assert(
      fc.property(
        fc.array(opArb, { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 6, max: 60 }),
        fc.constantFrom(1, 2, 4, 5, 16),
        (ops, numBlocks, blockSize) => runScenario(ops, numBlocks, blockSize),
      ),
      { numRuns: 2500 },
    );
  });
});

// Compaction on the device (Backend.compactEvictions) and its host side, compactedOnDevice():
// against compact() on a twin allocator, with the device's moves emulated as the kernel
// makes them (holes below the new length paired with the survivors past it, both ascending).

/** The moves a device compaction makes for one head: evicted[i] marks logical slot i. */
function deviceMoves(a: PageAllocator, seq: number, unit: number, evicted: boolean[]): [number, number][] {
  const h = a.unitHeadIndex(seq, unit);
  const len = a.headLengths[h] as number;
  const B = a.blockSize;
  const slotOf = (i: number) => (a.blockTables[h * a.maxBlocksPerHead + Math.floor(i / B)] as number) * B + (i % B);
  const survivors = len - evicted.filter(Boolean).length;
  const holes: number[] = [];
  const sources: number[] = [];
  for (let i = 0; i < len; i++) {
    if (i < survivors && evicted[i]) holes.push(slotOf(i));
    if (i >= survivors && !evicted[i]) sources.push(slotOf(i));
  }
  expect(holes.length).toBe(sources.length);
  return holes.map((d, k) => [sources[k] as number, d]);
}

/** The block tables (or a copy of them) with every entry past a head's blocks as -1. */
function liveTables(a: PageAllocator, tables: Int32Array = a.blockTables): Int32Array {
  const live = tables.slice();
  for (let h = 0; h < a.headLengths.length; h++) {
    live.fill(-1, h * a.maxBlocksPerHead + Math.ceil((a.headLengths[h] as number) / a.blockSize), (h + 1) * a.maxBlocksPerHead);
  }
  return live;
}

describe('PageAllocator.compactedOnDevice', () => {
  it('ends with the tables, lengths, free list and positions of compact(), positions stale on the host until synced', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            seq: fc.nat(2),
            tokens: fc.integer({ min: 1, max: 30 }),
            fraction: fc.double({ min: 0, max: 1, noNaN: true }),
            seed: fc.nat(),
          }),
          {
            minLength: 1,
            maxLength: 12,
          },
        ),
        fc.constantFrom(1, 3, 4, 16),
        (steps, blockSize) => {
          const opts = { shape, numBlocks: 200, blockSize, maxSequences: 3, maxContext: 400 };
          const host = new PageAllocator(opts); // compact()
          const dev = new PageAllocator(opts); // compactedOnDevice() + emulated device moves
          const units = host.headsPerSequence;
          for (let i = 0; i < 3; i++) {
            host.addSequence();
            dev.addSequence();
          }
          // The device copy of dev's tables and positions, synced through the change logs as a backend does.
          const devTables = dev.blockTables.slice();
          const devPositions = dev.slotPositions.slice();
          dev.tableChanges.clear();
          dev.positionChanges.clear();
          const sync = () => {
            for (const [log, from, to] of [
              [dev.tableChanges, dev.blockTables, devTables],
              [dev.positionChanges, dev.slotPositions, devPositions],
            ] as const) {
              expect(log.overflowed).toBe(false);
              for (let i = 0; i < log.count; i++) to[log.indices[i] as number] = from[log.indices[i] as number] as number;
              log.clear();
            }
          };
          const moves = host.createMoveList();
          const plan = host.createEvictionPlan();
          const newLengths = new Int32Array(units);
          for (const step of steps) {
            try {
              host.appendTokens(step.seq, step.tokens);
            } catch (e) {
              expect(e).toBeInstanceOf(OutOfBlocksError);
              continue;
            }
            dev.appendTokens(step.seq, step.tokens);
            sync();
            let rng = step.seed + 1;
            const rand = () => {
              rng = (rng * 1103515245 + 12345) % 2147483648;
              return rng / 2147483648;
            };
            plan.reset(step.seq);
            const devMoves: [number, number][] = [];
            let evicted = 0;
            for (let unit = 0; unit < units; unit++) {
              const len = host.headLengths[host.unitHeadIndex(step.seq, unit)] as number;
              const marks = Array.from({ length: len }, () => rand() < step.fraction * rand());
              newLengths[unit] = marks.some(Boolean) ? len - marks.filter(Boolean).length : -1;
              marks.forEach((m, i) => {
                if (m) plan.add(unit, host.slot(step.seq, Math.floor(unit / shape.kvHeads), unit % shape.kvHeads, i));
              });
              devMoves.push(...deviceMoves(dev, step.seq, unit, marks));
              evicted += marks.filter(Boolean).length;
            }
            moves.clear();
            const a = host.compact(plan, moves);
            // The device: moves (positions here), then the released table entries cleared.
            const before = devPositions.slice();
            for (const [src, dst] of devMoves) devPositions[dst] = before[src] as number;
            const b = dev.compactedOnDevice(step.seq, newLengths, devMoves.length);
            for (let h = 0; h < dev.headLengths.length; h++) {
              for (let j = Math.ceil((dev.headLengths[h] as number) / blockSize); j < dev.maxBlocksPerHead; j++)
                devTables[h * dev.maxBlocksPerHead + j] = -1;
            }
            expect(b).toEqual({ ...a });
            expect(b.evictedSlots).toBe(evicted);
            expect(dev.tableChanges.count).toBe(0);
            host.checkInvariants();
            dev.checkInvariants();
            // Reserved tails included: the same blocks, in the same places.
            expect(dev.blockTables).toEqual(host.blockTables);
            expect(dev.reservedBlocks).toBe(host.reservedBlocks);
            expect(dev.headLengths).toEqual(host.headLengths);
            expect(dev.freeBlocks).toBe(host.freeBlocks);
            expect(devTables).toEqual(liveTables(dev));
            // Every live slot: the device's position is compact()'s; the host copy agrees outside the stale ranges.
            for (let h = 0; h < dev.headLengths.length; h++) {
              for (let i = 0; i < (dev.headLengths[h] as number); i++) {
                const slot =
                  (dev.blockTables[h * dev.maxBlocksPerHead + Math.floor(i / blockSize)] as number) * blockSize + (i % blockSize);
                expect(devPositions[slot]).toBe(host.slotPositions[slot]);
                if (i >= (dev.stalePositions[h] as number)) expect(dev.slotPositions[slot]).toBe(host.slotPositions[slot]);
              }
            }
            if (newLengths.some((n) => n > 0)) expect(dev.hasStalePositions(step.seq)).toBe(true);
            if (plan.count > 0 && dev.hasStalePositions(step.seq)) expect(() => dev.compact(plan, moves)).toThrow(StalePositionsError);
            // Every other step, the host downloads the device positions (Backend.downloadPositions).
            if (step.seed % 2 === 0) {
              dev.slotPositions.set(devPositions);
              dev.positionsSynced();
              expect(dev.staleHeads).toBe(0);
            }
          }
          // The free lists agree in order: the next allocations take the same blocks.
          for (let s = 0; s < 3; s++) {
            host.removeSequence(s);
            dev.removeSequence(s);
          }
          expect(dev.staleHeads).toBe(0);
          const s0 = host.addSequence();
          dev.addSequence();
          const n = Math.min(Math.floor(host.freeBlocks / units), Math.floor(400 / blockSize)) * blockSize;
          if (n > 0) {
            host.appendTokens(s0, n);
            dev.appendTokens(s0, n);
          }
          expect(dev.blockTables).toEqual(host.blockTables);
          dev.checkInvariants();
        },
      ),
      { numRuns: 200 },
    );
  });

  it("leaves released blocks in the head's table, free: taken back in place, stolen from the oldest tail's end", () => {
    const a = make(24, 4, 4, 64); // 4 heads, blocks of 4
    const s = a.addSequence();
    a.appendTokens(s, 12); // 3 blocks a head, 12 of 24 used
    const h1 = a.unitHeadIndex(s, 1);
    const h2 = a.unitHeadIndex(s, 2);
    const t1 = h1 * a.maxBlocksPerHead;
    const t2 = h2 * a.maxBlocksPerHead;
    const table1 = Array.from(a.blockTables.subarray(t1, t1 + 3));
    const table2 = Array.from(a.blockTables.subarray(t2, t2 + 3));
    const lengths = new Int32Array(4).fill(-1);
    lengths[1] = 4; // releases 2 blocks
    a.compactedOnDevice(s, lengths, 0);
    lengths.fill(-1);
    lengths[2] = 0; // releases 3 blocks, later
    a.compactedOnDevice(s, lengths, 0);
    expect(a.freeBlocks).toBe(17);
    expect(a.reservedBlocks).toBe(5);
    // Nothing in the tables moved: the released blocks are the heads' reserved tails.
    expect(Array.from(a.blockTables.subarray(t1, t1 + 4))).toEqual([...table1, -1]);
    expect(Array.from(a.blockTables.subarray(t2, t2 + 4))).toEqual([...table2, -1]);
    a.checkInvariants();
    // Another sequence takes the 12 blocks of the stack, then steals from the far end of the
    // oldest tail (head 1's, released first), then from head 2's.
    const t = a.addSequence();
    a.appendTokens(t, 12);
    expect(a.reservedBlocks).toBe(5);
    a.appendTokens(t, 1); // 4 blocks: head 1's last, head 1's first, then head 2's last two
    const taken = [0, 1, 2, 3].map((u) => a.blockTables[a.unitHeadIndex(t, u) * a.maxBlocksPerHead + 3]);
    expect(taken).toEqual([table1[2], table1[1], table2[2], table2[1]]);
    expect(a.reservedBlocks).toBe(1);
    expect(a.blockTables[t1 + 1]).toBe(-1);
    a.checkInvariants();
    // Head 2 takes back the one block left in its tail, in place; the other heads of s need
    // three more blocks than the pool has.
    expect(() => a.appendTokens(s, 1)).toThrow(OutOfBlocksError);
    a.removeSequence(t);
    a.appendTokens(s, 1);
    expect(a.blockTables[t2]).toBe(table2[0]);
    expect(a.reservedBlocks).toBe(0);
    a.checkInvariants();
    a.removeSequence(s);
    expect(a.freeBlocks).toBe(24);
    a.checkInvariants();
  });

  it('refuses pools with shared blocks, bad lengths, and stale sequences where host code reads positions', () => {
    const a = make(64, 4, 4, 64);
    const s = a.addSequence();
    a.appendTokens(s, 10);
    const f = a.forkSequence(s);
    expect(a.sharedBlocks).toBe(12);
    const lengths = new Int32Array(4).fill(-1);
    lengths[0] = 4;
    expect(() => a.compactedOnDevice(s, lengths, 0)).toThrow(InvalidArgumentError);
    a.appendTokens(f, 1, undefined, a.createMoveList()); // copy-on-write of each last block
    expect(a.sharedBlocks).toBe(8);
    a.removeSequence(f);
    expect(a.sharedBlocks).toBe(0);
    const before = snapshot(a);
    lengths[0] = 11;
    expect(() => a.compactedOnDevice(s, lengths, 0)).toThrow(InvalidPlanError);
    expect(snapshot(a)).toBe(before);
    lengths[0] = 3;
    lengths[2] = 0;
    const r = a.compactedOnDevice(s, lengths, 3);
    expect(r).toEqual({ evictedSlots: 17, freedBlocks: 5, releasedBlocks: 5, copiedBlocks: 0, moves: 3 });
    expect(a.length(s, 0, 0)).toBe(3);
    expect(a.length(s, 1, 0)).toBe(0);
    expect(Array.from(a.stalePositions).filter((x) => x > 0)).toEqual([3]);
    expect(a.hasStalePositions(s)).toBe(true);
    const plan = a.createEvictionPlan();
    plan.reset(s);
    a.compact(plan, a.createMoveList()); // an empty plan reads no position
    plan.add(0, a.slot(s, 0, 0, 0));
    expect(() => a.compact(plan, a.createMoveList())).toThrow(StalePositionsError);
    expect(() => a.forkSequence(s)).toThrow(StalePositionsError);
    a.checkInvariants();
    a.positionsSynced();
    expect(a.hasStalePositions(s)).toBe(false);
    a.compact(plan, a.createMoveList());
    expect(a.length(s, 0, 0)).toBe(2);
    a.compactedOnDevice(s, lengths.fill(-1).fill(1, 0, 1), 0);
    expect(a.staleHeads).toBe(1);
    a.removeSequence(s);
    expect(a.staleHeads).toBe(0);
    expect(a.freeBlocks).toBe(64);
    a.checkInvariants();
  });
});
