/// <reference types="@webgpu/types" />
// Device eviction selection (WebGpuBackend.selectEvictions) against the CPU planner
// (CompressionContext, the kv-compress and ada-kv policies' plan) on the same metrics:
// fresh random caches with ragged heads, ties, NaN/±0/±Inf, several sequences in one round.
// Runs in the browser (see browser-entry.ts), driven by ../src/webgpu-backend.test.ts.
import { EvictionSelection, InvalidArgumentError, SELECTION_GROUP_FIELDS, SELECTION_ROW_FIELDS, SlotMoveList } from '@kvcompress/core';
import {
  CompressionContext,
  Compressor,
  createAdaKvPolicy,
  createKvCompressPolicy,
  type EvictionPolicy,
  type ResolvedCompressionConfig,
  resolveCompressionConfig,
} from '@kvcompress/eviction';
import { MetricStore } from '@kvcompress/metrics';
import { PageAllocator } from '@kvcompress/page-allocator';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

export interface SelectionParams {
  readonly seed: number;
  readonly layers: number;
  readonly kvHeads: number;
  readonly blockSize: number;
  /** Tokens of each sequence of the round. */
  readonly tokens: readonly number[];
  /** Distinct metric values (few: many ties); 0 = continuous values. */
  readonly distinct: number;
  /** Also NaN, -0, +0, -Inf, +Inf and negative metrics. */
  readonly specials: boolean;
  /** Evict and compact random slots first, so heads hold different lengths and slot orders. */
  readonly ragged: boolean;
  readonly policy: 'kv-compress' | 'ada-kv';
  /** Subgroup kernels (default true). */
  readonly subgroups?: boolean;
  /** The compaction on the device: K/V rows of this many f16 (or f32) values (default 2, f32). */
  readonly headDim?: number;
  readonly f16?: boolean;
  /** > 1: the KV pool split into about this many chunk buffers (see runConformanceCase). */
  readonly kvChunks?: number;
  /**
   * > 0: the sequences' tokens appended this many at a time, in turn (as decode steps
   * interleave them), so each head's blocks lie among the others' all through the pool.
   */
  readonly interleave?: number;
  /**
   * > 1: the device compaction in this many parts, each part's sequences in their own selection,
   * all recorded before the first is awaited (compactEvictions calls in flight at once), then
   * applied in order.
   */
  readonly parts?: number;
}

export interface SelectionResult {
  readonly validation: string | null;
  /** Rows (head units) the device decided. */
  readonly rows: number;
  /** Slots the CPU planner evicts. */
  readonly evicted: number;
  /** Rows whose decision ended with keys below the threshold kept (the device's own select). */
  readonly partialRows: number;
  /** Differences from the CPU planner, at most 5 described. */
  readonly mismatches: string[];
  /** Blocks per head after compressSelected() equal those after compress() on a twin cache. */
  readonly sameCompaction: boolean;
  /**
   * compactEvictions() + applyDeviceCompaction() on a third twin against compressSelected() +
   * its moves: differences in blocks, tables, free list, positions, metrics, K or V (at most 5).
   */
  readonly deviceCompaction: string[];
  /** Buffers K was split into for the device compaction. */
  readonly kvChunks: number;
  /** The device compaction's K/V moves within one window of chunks, and across windows. */
  readonly windowMoves: number;
  readonly crossWindowMoves: number;
  /** With 4 parts in flight: whether a fifth compactEvictions was refused (InvalidArgumentError) without effect. */
  readonly fifthRefused: boolean | null;
}

const bits = new DataView(new ArrayBuffer(4));
/** A metric's order as the selection compares them (u32 of the f32 bits, NaN lowest). */
function orderedKey(v: number): number {
  bits.setFloat32(0, v);
  const u = bits.getUint32(0);
  if ((u & 0x7fffffff) > 0x7f800000) return 0;
  return u >>> 31 === 0 ? (u | 0x80000000) >>> 0 : ~u >>> 0;
}

function lcg(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) | 0;
    return (s >>> 0) / 2 ** 32;
  };
}

interface Scene {
  allocator: PageAllocator;
  store: MetricStore;
  sequences: number[];
  configs: ResolvedCompressionConfig[];
}

/** Builds the same cache, metrics and budgets every time for the same parameters. */
function buildScene(q: SelectionParams): Scene {
  const rand = lcg(q.seed);
  const units = q.layers * q.kvHeads;
  const maxContext = Math.max(...q.tokens);
  const allocator = new PageAllocator({
    shape: { layers: q.layers, kvHeads: q.kvHeads, headDim: 2, queryHeadsPerKvHead: 1 },
    numBlocks: q.tokens.reduce((a, t) => a + units * Math.ceil(t / q.blockSize), 0) + 4,
    blockSize: q.blockSize,
    // One spare row, so sequence ids and table offsets are not simply 0..n-1.
    maxSequences: q.tokens.length + 1,
    maxContext,
  });
  const spare = allocator.addSequence();
  const moves = allocator.createMoveList();
  const sequences = q.tokens.map(() => allocator.addSequence());
  const step = q.interleave ?? 0;
  if (step > 0) {
    // Appended in turns first; the ragged evictions below then name the slots by index.
    for (let done = 0; done < maxContext; done += step) {
      q.tokens.forEach((tokens, i) => {
        if (done < tokens) allocator.appendTokens(sequences[i] as number, Math.min(step, tokens - done));
      });
    }
  }
  q.tokens.forEach((tokens, i) => {
    const seq = sequences[i] as number;
    const slots = new Int32Array(units * tokens);
    if (step > 0) {
      for (let u = 0; u < units; u++) {
        const layer = Math.floor(u / q.kvHeads);
        for (let t = 0; t < tokens; t++) slots[u * tokens + t] = allocator.slot(seq, layer, u - layer * q.kvHeads, t);
      }
    } else allocator.appendTokens(seq, tokens, slots);
    if (q.ragged) {
      const plan = allocator.createEvictionPlan();
      plan.reset(seq);
      for (let u = 0; u < units; u++) {
        const p = rand() * 0.6;
        for (let t = 0; t < tokens - 1; t++) if (rand() < p) plan.add(u, slots[u * tokens + t] as number);
      }
      allocator.compact(plan, moves);
      moves.clear();
    }
  });
  allocator.removeSequence(spare);
  const store = new MetricStore(allocator.numSlots);
  const specials = [Number.NaN, -0, 0, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, -1.5];
  for (let i = 0; i < store.values.length; i++) {
    let v = q.distinct > 0 ? Math.floor(rand() * q.distinct) / 4 : rand() * 2 ** (rand() * 40 - 20);
    if (q.specials && rand() < 0.1) v = specials[Math.floor(rand() * specials.length)] as number;
    store.values[i] = v;
  }
  const configs = q.tokens.map((tokens) => {
    const protectedWindow = Math.floor(rand() * 24);
    const sinks = Math.floor(rand() * 4);
    const kind = rand();
    const budget =
      kind < 0.5
        ? { targetCompressionRate: [1.5, 2, 4, 8, 64][Math.floor(rand() * 5)] as number }
        : { maxCacheTokens: protectedWindow + sinks + 1 + Math.floor(rand() * tokens) };
    return resolveCompressionConfig({ budget, protectedWindow, sinks });
  });
  return { allocator, store, sequences, configs };
}

function policyOf(q: SelectionParams): EvictionPolicy {
  return q.policy === 'kv-compress' ? createKvCompressPolicy() : createAdaKvPolicy({ alpha: 0.5 });
}

export async function runSelectionCase(device: GPUDevice, q: SelectionParams): Promise<SelectionResult> {
  const scene = buildScene(q);
  const { allocator, store, sequences, configs } = scene;
  const policy = policyOf(q);
  const units = allocator.headsPerSequence;
  const B = allocator.blockSize;

  device.pushErrorScope('validation');
  const subgroups = q.subgroups ?? true;
  const backend = new WebGpuBackend(device, { subgroups });
  backend.createKvCache(allocator.numSlots, 2, 'f32');
  const all = Int32Array.from({ length: allocator.numSlots }, (_, i) => i);
  backend.uploadMetrics(all, store.values, all.length);
  // The CPU plans on exactly the bits the device holds.
  await backend.downloadMetrics(store.values);

  const compressor = new Compressor({ allocator, metrics: store, policy, config: { budget: { targetCompressionRate: 2 } } });
  const rowsCap = allocator.maxSequences * units;
  const selection = new EvictionSelection(rowsCap, rowsCap * Math.ceil((allocator.maxBlocksPerHead * B) / 32));
  sequences.forEach((seq, i) => {
    compressor.addSelection(selection, seq, configs[i]);
  });
  await backend.selectEvictions(selection, allocator);
  const error = await device.popErrorScope();

  // The CPU planner's decision, per (sequence, unit): the slots, sorted.
  const ctx = new CompressionContext(allocator, store.values);
  const expected = new Map<string, number[]>();
  let evicted = 0;
  sequences.forEach((seq, i) => {
    ctx.begin(seq, configs[i] as ResolvedCompressionConfig);
    policy.plan(ctx);
    for (let n = 0; n < ctx.plan.count; n++) {
      const key = `${seq}/${ctx.plan.units[n]}`;
      const list = expected.get(key) ?? [];
      list.push(ctx.plan.slots[n] as number);
      expected.set(key, list);
    }
    evicted += ctx.plan.count;
  });

  const mismatches: string[] = [];
  const seen = new Set<string>();
  let partialRows = 0;
  for (let g = 0; g < selection.groupCount; g++) {
    const seq = selection.groups[g * SELECTION_GROUP_FIELDS] as number;
    const first = selection.groups[g * SELECTION_GROUP_FIELDS + 1] as number;
    const count = selection.groups[g * SELECTION_GROUP_FIELDS + 2] as number;
    for (let r = first; r < first + count; r++) {
      const unit = selection.rows[r * SELECTION_ROW_FIELDS + 1] as number;
      const len = selection.rows[r * SELECTION_ROW_FIELDS + 3] as number;
      const key = `${seq}/${unit}`;
      seen.add(key);
      const got: number[] = [];
      const t0 = allocator.unitHeadIndex(seq, unit) * allocator.maxBlocksPerHead;
      for (let i = 0; i < len; i++) {
        if (selection.evicted(r, i)) got.push((allocator.blockTables[t0 + Math.floor(i / B)] as number) * B + (i % B));
      }
      got.sort((a, b) => a - b);
      const want = (expected.get(key) ?? []).sort((a, b) => a - b);
      const blocksWanted = Math.ceil(len / B) - Math.ceil((len - want.length) / B);
      if (selection.freed(r) !== blocksWanted || got.join() !== want.join()) {
        const describe = (slots: number[], other: number[]): string =>
          slots
            .filter((x) => !other.includes(x))
            .slice(0, 4)
            .map(
              (x) =>
                `slot ${x} (position ${allocator.slotPositions[x]}, metric ${Object.is(store.values[x], -0) ? '-0' : store.values[x]})`,
            )
            .join(', ');
        mismatches.push(
          `sequence ${seq} unit ${unit} (length ${len}): device frees ${selection.freed(r)} blocks / ${got.length} slots, CPU ${blocksWanted} / ${want.length}; device only: ${describe(got, want)}; CPU only: ${describe(want, got)}`,
        );
      }
    }
    // Rows that keep an evictable key below the group's threshold (the largest evicted key):
    // the device found their cut with its own select, not from the threshold.
    const newest = allocator.nextPosition(seq) - (configs[sequences.indexOf(seq)] as ResolvedCompressionConfig).protectedWindow;
    const sinks = (configs[sequences.indexOf(seq)] as ResolvedCompressionConfig).sinks;
    let threshold = -1;
    const keyAt = (r: number, i: number): number => {
      const unit = selection.rows[r * SELECTION_ROW_FIELDS + 1] as number;
      const t0 = allocator.unitHeadIndex(seq, unit) * allocator.maxBlocksPerHead;
      const slot = (allocator.blockTables[t0 + Math.floor(i / B)] as number) * B + (i % B);
      const p = allocator.slotPositions[slot] as number;
      return p >= newest || p < sinks ? -1 : orderedKey(store.values[slot] as number);
    };
    for (let r = first; r < first + count; r++) {
      const len = selection.rows[r * SELECTION_ROW_FIELDS + 3] as number;
      for (let i = 0; i < len; i++) if (selection.evicted(r, i)) threshold = Math.max(threshold, keyAt(r, i));
    }
    for (let r = first; r < first + count; r++) {
      const len = selection.rows[r * SELECTION_ROW_FIELDS + 3] as number;
      let partial = false;
      for (let i = 0; i < len && !partial; i++) {
        const k = keyAt(r, i);
        partial = !selection.evicted(r, i) && k >= 0 && k < threshold && selection.freed(r) > 0;
      }
      if (partial) partialRows++;
    }
  }
  for (const [key, list] of expected)
    if (!seen.has(key) && list.length > 0) mismatches.push(`${key}: CPU evicts ${list.length}, device has no row`);

  // compressSelected on this cache against compress on a twin built the same way.
  const twin = buildScene(q);
  const twinCompressor = new Compressor({
    allocator: twin.allocator,
    metrics: twin.store,
    policy,
    config: configs[0] as ResolvedCompressionConfig,
  });
  twin.store.values.set(store.values);
  // The device compaction on a third twin, before this cache is compacted on the host.
  const onDevice = await compactOnDevice(device, q, policy);
  const moves = new SlotMoveList(allocator.maxSlotsPerSequence);
  const twinMoves = twin.allocator.createMoveList();
  // Which original slot's K/V each slot holds, as the host path's moves leave them.
  const origin = Int32Array.from({ length: allocator.numSlots }, (_, i) => i);
  let sameCompaction = true;
  const outcomes: string[] = [];
  sequences.forEach((seq, i) => {
    const config = configs[i] as ResolvedCompressionConfig;
    const a = compressor.compressSelected(seq, moves, selection, config);
    const before = origin.slice();
    for (let m = 0; m < moves.count; m++) origin[moves.dst[m] as number] = before[moves.src[m] as number] as number;
    outcomes.push(JSON.stringify({ ...a, planMs: 0, compactMs: 0 }));
    const b = twinCompressor.compress(seq, twinMoves, config);
    sameCompaction &&=
      a.blocksAfter === b.blocksAfter &&
      allocator.blocksPerHead(seq).join() === twin.allocator.blocksPerHead(seq).join() &&
      allocator.lengthsPerHead(seq).join() === twin.allocator.lengthsPerHead(seq).join();
  });
  // The device compaction must leave exactly the host path's cache.
  const deviceCompaction: string[] = [];
  const d = onDevice.scene.allocator;
  if (onDevice.validation !== null) deviceCompaction.push(`validation: ${onDevice.validation}`);
  if (onDevice.outcomes.join() !== outcomes.join()) deviceCompaction.push(`outcomes ${onDevice.outcomes.join()} != ${outcomes.join()}`);
  if (liveTables(d) !== liveTables(allocator)) deviceCompaction.push('block tables differ');
  // The released blocks are the heads' reserved tails on both paths, in the same places.
  if (d.blockTables.join() !== allocator.blockTables.join()) deviceCompaction.push('reserved tails differ');
  if (d.reservedBlocks !== allocator.reservedBlocks) deviceCompaction.push(`reserved ${d.reservedBlocks} != ${allocator.reservedBlocks}`);
  d.checkInvariants();
  if (d.headLengths.join() !== allocator.headLengths.join()) deviceCompaction.push('head lengths differ');
  if (d.freeBlocks !== allocator.freeBlocks) deviceCompaction.push(`free blocks ${d.freeBlocks} != ${allocator.freeBlocks}`);
  const D = onDevice.headDim;
  for (let h = 0; h < d.headLengths.length && deviceCompaction.length < 5; h++) {
    for (let i = 0; i < (d.headLengths[h] as number) && deviceCompaction.length < 5; i++) {
      const slot = (d.blockTables[h * d.maxBlocksPerHead + Math.floor(i / B)] as number) * B + (i % B);
      const from = origin[slot] as number;
      const where = `head ${h} slot ${i} (global ${slot}, from ${from})`;
      if (onDevice.positions[slot] !== allocator.slotPositions[slot]) {
        deviceCompaction.push(`${where}: position ${onDevice.positions[slot]} != ${allocator.slotPositions[slot]}`);
      }
      if (!Object.is(onDevice.metrics[slot], store.values[slot])) {
        deviceCompaction.push(`${where}: metric ${onDevice.metrics[slot]} != ${store.values[slot]}`);
      }
      for (let x = 0; x < D; x++) {
        if (onDevice.k[slot * D + x] !== kvValue(from, x, 0) || onDevice.v[slot * D + x] !== kvValue(from, x, 1)) {
          deviceCompaction.push(`${where}: K/V element ${x} is not the original slot's`);
          break;
        }
      }
    }
  }
  backend.destroyBuffers();
  return {
    validation: error === null ? null : error.message,
    rows: selection.rowCount,
    evicted,
    partialRows,
    mismatches: mismatches.slice(0, 5),
    sameCompaction,
    deviceCompaction: deviceCompaction.slice(0, 5),
    kvChunks: onDevice.kvChunks,
    windowMoves: onDevice.windowMoves,
    crossWindowMoves: onDevice.crossWindowMoves,
    fifthRefused: onDevice.fifthRefused,
  };
}

/** The block tables' entries within each head's blocks (the rest as -1), joined. */
function liveTables(a: PageAllocator): string {
  const live = a.blockTables.slice();
  for (let h = 0; h < a.headLengths.length; h++) {
    live.fill(-1, h * a.maxBlocksPerHead + Math.ceil((a.headLengths[h] as number) / a.blockSize), (h + 1) * a.maxBlocksPerHead);
  }
  return live.join();
}

/** K (which 0) or V (1) element x of the row first written to `slot`: small integers, exact in f16. */
function kvValue(slot: number, x: number, which: number): number {
  return ((slot * 7 + x * 3 + which * 5) % 1999) - 999;
}

interface DeviceCompaction {
  scene: Scene;
  outcomes: string[];
  validation: string | null;
  headDim: number;
  kvChunks: number;
  windowMoves: number;
  crossWindowMoves: number;
  fifthRefused: boolean | null;
  /** The device's positions, metrics, K and V after the compaction. */
  positions: Int32Array;
  metrics: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/**
 * A twin of the case's cache compacted on the device: K and V rows hold kvValue(slot), then
 * compactEvictions() and applyDeviceCompaction() for every sequence; then the device copies
 * are read back. Every other case first forces a whole upload of the host's (stale) positions,
 * which must keep the ones only the device holds.
 */
async function compactOnDevice(device: GPUDevice, q: SelectionParams, policy: EvictionPolicy): Promise<DeviceCompaction> {
  const scene = buildScene(q);
  const { allocator, store, sequences, configs } = scene;
  const D = q.headDim ?? 2;
  const dtype = q.f16 === true ? 'f16' : 'f32';
  const rowBytes = D * (dtype === 'f16' ? 2 : 4);
  const chunks = q.kvChunks ?? 1;
  const maxKvBindingBytes = chunks > 1 ? rowBytes * 2 ** Math.ceil(Math.log2(Math.ceil(allocator.numSlots / chunks))) : undefined;
  device.pushErrorScope('validation');
  const backend = new WebGpuBackend(device, {
    subgroups: q.subgroups ?? true,
    ...(maxKvBindingBytes === undefined ? {} : { maxKvBindingBytes }),
  });
  backend.createKvCache(allocator.numSlots, D, dtype);
  const n = allocator.numSlots;
  const k = backend.createBuffer(n * D);
  const v = backend.createBuffer(n * D);
  const slots = backend.createBuffer(n, 'i32');
  const kHost = new Float32Array(n * D);
  const vHost = new Float32Array(n * D);
  for (let s = 0; s < n; s++) {
    for (let x = 0; x < D; x++) {
      kHost[s * D + x] = kvValue(s, x, 0);
      vHost[s * D + x] = kvValue(s, x, 1);
    }
  }
  backend.write(k, kHost);
  backend.write(v, vHost);
  backend.write(
    slots,
    Int32Array.from({ length: n }, (_, i) => i),
  );
  backend.appendKv(0, k, v, slots, n, 1);
  const all = Int32Array.from({ length: n }, (_, i) => i);
  backend.uploadMetrics(all, store.values, n);
  const compressor = new Compressor({ allocator, metrics: store, policy, config: { budget: { targetCompressionRate: 2 } } });
  const units = allocator.headsPerSequence;
  const rowsCap = allocator.maxSequences * units;
  const parts = Math.min(q.parts ?? 1, sequences.length);
  const perPart = Math.ceil(sequences.length / parts);
  const partOf = (i: number) => Math.floor(i / perPart);
  const selections = Array.from(
    { length: parts },
    () => new EvictionSelection(rowsCap, rowsCap * Math.ceil((allocator.maxBlocksPerHead * allocator.blockSize) / 32)),
  );
  const compactions: Promise<void>[] = [];
  let windowMoves = 0;
  let crossWindowMoves = 0;
  for (let part = 0; part < parts; part++) {
    const selection = selections[part] as EvictionSelection;
    sequences.forEach((seq, i) => {
      if (partOf(i) === part) compressor.addSelection(selection, seq, configs[i]);
    });
    const stats = { moves: 0, windowMoves: 0, crossWindowMoves: 0, recordMs: 0, waitMs: 0 };
    compactions.push(
      backend.compactEvictions(selection, allocator, selection.rowCount, stats).then(() => {
        windowMoves += stats.windowMoves;
        crossWindowMoves += stats.crossWindowMoves;
      }),
    );
  }
  // Four in flight is the most: a fifth is refused before it touches anything.
  let fifthRefused: boolean | null = null;
  if (parts === 4) {
    fifthRefused = await backend.compactEvictions(selections[0] as EvictionSelection, allocator).then(
      () => false,
      (e: unknown) => e instanceof InvalidArgumentError,
    );
  }
  const outcomes: string[] = [];
  for (let part = 0; part < parts; part++) {
    await compactions[part];
    sequences.forEach((seq, i) => {
      if (partOf(i) !== part) return;
      const o = compressor.applyDeviceCompaction(seq, selections[part] as EvictionSelection, configs[i]);
      outcomes.push(JSON.stringify({ ...o, planMs: 0, compactMs: 0 }));
    });
  }
  // A whole upload of the host positions (as after a change log overflows) keeps the device's.
  if (q.seed % 2 === 0) allocator.positionChanges.overflowed = true;
  await backend.downloadPositions(allocator);
  allocator.positionsSynced();
  const positions = allocator.slotPositions.slice();
  const metrics = new Float32Array(n);
  await backend.downloadMetrics(metrics);
  const result = {
    scene,
    outcomes,
    validation: null as string | null,
    headDim: D,
    kvChunks: backend.kvChunks,
    windowMoves,
    crossWindowMoves,
    fifthRefused,
    positions,
    metrics,
    k: await backend.readCache('k'),
    v: await backend.readCache('v'),
  };
  const error = await device.popErrorScope();
  result.validation = error === null ? null : error.message;
  backend.destroyBuffers();
  return result;
}
