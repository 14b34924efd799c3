// One KV-Compress compression round on a real GPU through Dawn, metrics to freed pages, for
// SEQS sequences of CONTEXT tokens of a Llama-shaped cache (SHAPE=8b: 32 layers x 8 kv-heads x
// head dim 128; SHAPE=1b: 16 x 8 x 64; blocks of 16, f16 K/V, random metrics), against one
// decode step of the same batch in the same run:
//   round (device):  the eviction decision and the compaction on the device
//                    (WebGpuBackend.compactEvictions: selection, hole/survivor pairing, K/V,
//                    metric and position moves), the host applying the outcome to its
//                    allocator (Compressor.applyDeviceCompaction, O(blocks)); timed until the
//                    moves have run;
//   breakdown:       the same round split at each download: selection (selectEvictions
//                    without masks), pairing (compactEvictions reusing it), host apply, moves;
//   selection:       the decision alone with its masks downloaded (selectEvictions), as the
//                    previous round did before compacting on the host;
//   round (host):    HOST=1: download the metric store, plan each sequence on the CPU, compact
//                    on the host, execute the moves (the engine without device selection);
//   step:            a greedy decode step of the batch before the round (LlamaModel.forward
//                    with metric recording, as the engine runs KV-Compress, + device argmax),
//                    random f16 weights made on the device; skipped (STEP=0, or when the
//                    weights do not fit beside the pool: STEP=auto, the default); timed
//                    twice: sequential (record, submit, read the ids) and pipelined as the
//                    engine's decode runs it (step n + 1 recorded before step n's ids are
//                    read), before the round and after it (the compressed cache).
// Each timed round starts from the same uncompressed cache (a fresh allocator: the old one's
// arrays are garbage that V8 may collect during a timed round; forcing a collection before
// each round, with --expose-gc, made the host code after it slower: compare medians).
// VERIFY (default 1) checks the device round against the host path on a twin allocator: the
// masks against the CPU planner and the cache after compaction (tables within each head's
// blocks, lengths, free blocks, positions) against compressSelected's.
//
// PROFILE=1 adds the GPU time of every kernel of one decode step and one round (timestamp
// queries, each dispatch in its own compute pass; the other timings of such a run are not
// comparable).
//
// Env: SHAPE (8b), SEQS (64), CONTEXT (8192), LAYERS / KV_HEADS / HEAD_DIM (override the
// shape's cache), RATE (4), WINDOW (64), REPEATS (3), ROUND_PARTS (1: the device round in that
// many parts of the sequences, all in flight at once, see deviceRound), STEP (auto|0|1), STEPS (3), HOST (0),
// VERIFY (1), SUBGROUPS (1), ROBUSTNESS (1; 0: Dawn's bounds checks off), PROFILE (0),
// BUSY_MS (100: the GPU kept busy that long right before each round, as decode steps keep it
// in serving; 0: the round starts on an idle GPU), APPEND_CHUNK (0: each sequence's context
// in one append; 16: 16 tokens of every sequence in turn, blocks interleaved as decode steps
// leave them), MAX_BINDING_MIB (chunk the pool below the device's binding limit).
// One more round after 1.5 s of idling is printed as round-device-after-idle.
// STEADY (64): the steady-state round (round-steady): after the full round, STEADY tokens more
// per sequence with random metrics, as that many decode steps add them, then the round that
// brings every sequence back to its budget (0: skipped). The full round compresses a whole
// 8K context at once (a round right after prefill); in decoding, a round runs every STEADY
// steps or so and evicts what they added.
// A small shape checks the bench itself on SwiftShader:
//   SHAPE=tiny SEQS=3 CONTEXT=300 LAYERS=2 KV_HEADS=2 HOST=1 VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node .gpu/selection.mjs
// Prints one JSON line per measurement and a summary line. Build and run: see bench/run-gpu.sh.
/// <reference types="@webgpu/types" />

import { GCProfiler } from 'node:v8';
import {
  type DeviceBuffer,
  EvictionSelection,
  kvShapeOf,
  type MetricRecording,
  type ModelConfig,
  SELECTION_GROUP_FIELDS,
  SELECTION_ROW_FIELDS,
} from '@kvcompress/core';
import { type CompressionOutcome, Compressor, getPolicy } from '@kvcompress/eviction';
import { MetricStore } from '@kvcompress/metrics';
import { type ForwardStep, LlamaModel } from '@kvcompress/models';
import { PageAllocator } from '@kvcompress/page-allocator';
import { requestWebGpuDevice } from '../src/device.ts';
import type { CompactionStats, WebGpuBackend } from '../src/webgpu-backend.ts';
import { kernelProfile } from './kernel-profile.ts';
import { type PipelinedIds, timePipelinedSteps } from './pipelined-steps.ts';
import { randomWeightBackend, shapeNamed, syntheticModel, syntheticModelBytes } from './synthetic-llama.ts';

const env = (name: string, fallback: string): string => process.env[name] ?? fallback;
const SHAPE = env('SHAPE', '8b');
const base = shapeNamed(SHAPE);
const LAYERS = Number(env('LAYERS', String(base.numLayers)));
const KV_HEADS = Number(env('KV_HEADS', String(base.numKvHeads)));
const HEAD_DIM = Number(env('HEAD_DIM', String(base.headDim)));
const config: ModelConfig = {
  ...base,
  numLayers: LAYERS,
  numKvHeads: KV_HEADS,
  numHeads: KV_HEADS * (base.numHeads / base.numKvHeads),
  headDim: HEAD_DIM,
  ropeDim: HEAD_DIM,
};
const SEQS = Number(env('SEQS', '64'));
const CONTEXT = Number(env('CONTEXT', '8192'));
const RATE = Number(env('RATE', '4'));
const WINDOW = Number(env('WINDOW', '64'));
const REPEATS = Number(env('REPEATS', '3'));
const STEP = env('STEP', 'auto');
const STEPS = Number(env('STEPS', '3'));
const HOST = env('HOST', '0') === '1';
const VERIFY = env('VERIFY', '1') === '1';
const PROFILE = env('PROFILE', '0') === '1';
const BUSY_MS = Number(env('BUSY_MS', '100'));
const STEADY = Number(env('STEADY', '64'));
const ROUND_PARTS = Number(env('ROUND_PARTS', '1'));
const B = 16;
const WARMUP_STEPS = 1;

const device = await requestWebGpuDevice({
  subgroups: env('SUBGROUPS', '1') === '1',
  timestamps: PROFILE,
  robustness: env('ROBUSTNESS', '1') !== '0',
});
// Dawn's Node binding resolves promises from its own polling: keep the event loop alive.
const keepAlive = setInterval(() => {}, 1000);
const print = (o: object) =>
  console.log(
    JSON.stringify({
      kind: 'selection',
      shape: SHAPE,
      seqs: SEQS,
      context: CONTEXT,
      layers: LAYERS,
      kvHeads: KV_HEADS,
      headDim: HEAD_DIM,
      appendChunk: APPEND_CHUNK,
      ...o,
    }),
  );
const tStart = performance.now();
const debug = (m: string) => {
  if (process.env['DEBUG']) process.stderr.write(`[${((performance.now() - tStart) / 1000).toFixed(2)} s] ${m}\n`);
};

const shape = kvShapeOf(config);
const units = shape.layers * shape.kvHeads;
// Room for the timed decode steps (sequential, then pipelined) after the context.
const maxContext = CONTEXT + 2 * (WARMUP_STEPS + STEPS) + STEADY + B;
const numBlocks = SEQS * units * Math.ceil(maxContext / B);
// APPEND_CHUNK (0): fill the cache APPEND_CHUNK tokens of each sequence at a time, round robin
// (16: a block per head per turn, as decode steps allocate); 0: each sequence in one append.
const APPEND_CHUNK = Number(env('APPEND_CHUNK', '0'));
const newAllocator = () => new PageAllocator({ shape, numBlocks, blockSize: B, maxSequences: SEQS, maxContext });
// Every round starts from a fresh allocator holding the same cache (see fill).
let allocator = newAllocator();
const store = new MetricStore(allocator.numSlots);
// MAX_BINDING_MIB: chunk the pool below the device's binding limit (as a large pool is chunked),
// e.g. to time a many-chunk step's host side on SwiftShader.
const maxBinding = process.env['MAX_BINDING_MIB'];
const backend: WebGpuBackend = randomWeightBackend(device, debug, {
  profile: PROFILE,
  ...(maxBinding === undefined ? {} : { maxKvBindingBytes: Number(maxBinding) * 2 ** 20 }),
});
backend.createKvCache(allocator.numSlots, HEAD_DIM, 'f16');
await device.queue.onSubmittedWorkDone();
print({
  kind: 'pool',
  slots: allocator.numSlots,
  kvBytes: allocator.numSlots * HEAD_DIM * 4,
  kvChunks: backend.kvChunks,
  attentionPasses: backend.attentionPasses,
  storageBuffers: device.limits.maxStorageBuffersPerShaderStage,
});

// The decode step's model: random weights on the device, if they fit beside the pool.
let model: LlamaModel | null = null;
if (STEP !== '0') {
  const t = performance.now();
  device.pushErrorScope('out-of-memory');
  try {
    model = new LlamaModel(syntheticModel(config), backend, { maxRows: SEQS });
  } catch (error) {
    if (STEP === '1') throw error;
    debug(`model: ${(error as Error).message}`);
  }
  const oom = await device.popErrorScope();
  await device.queue.onSubmittedWorkDone();
  if (oom !== null) {
    if (STEP === '1') throw new Error(`The model's weights do not fit beside the pool: ${oom.message}`);
    model = null;
  }
  print({ kind: 'weights', bytes: syntheticModelBytes(config), ms: performance.now() - t, loaded: model !== null });
}

const policy = getPolicy('kv-compress');
const newCompressor = () =>
  new Compressor({ allocator, metrics: store, policy, config: { budget: { targetCompressionRate: RATE }, protectedWindow: WINDOW } });
let compressor = newCompressor();
const rows = SEQS * units;
const selection = new EvictionSelection(rows, rows * Math.ceil((allocator.maxBlocksPerHead * B) / 32));
// ROUND_PARTS > 1: the device round in parts of the sequences, each with its own selection (see deviceRound).
const partSelections = [
  selection,
  ...Array.from({ length: ROUND_PARTS - 1 }, () => new EvictionSelection(rows, rows * Math.ceil((allocator.maxBlocksPerHead * B) / 32))),
];
/** The round part of the i-th sequence. */
const partOf = (i: number): number => Math.floor((i * ROUND_PARTS) / SEQS);
let moves = allocator.createMoveList();
const sequences: number[] = [];

/**
 * The uncompressed cache on a fresh allocator (so every round sees the same block layout and
 * decides the same): SEQS sequences of CONTEXT tokens, random metrics with ties (24-bit values).
 */
async function fill(): Promise<void> {
  allocator = newAllocator();
  compressor = newCompressor();
  moves = allocator.createMoveList();
  sequences.length = 0;
  for (let s = 0; s < SEQS; s++) sequences.push(allocator.addSequence());
  if (APPEND_CHUNK > 0) {
    // As a server's decode steps and chunked prefills append: every sequence a few tokens at
    // a time in turn, so blocks of all layers interleave in allocation order.
    for (let done = 0; done < CONTEXT; done += APPEND_CHUNK) {
      for (const seq of sequences) allocator.appendTokens(seq, Math.min(APPEND_CHUNK, CONTEXT - done));
    }
  } else {
    for (const seq of sequences) allocator.appendTokens(seq, CONTEXT);
  }
  const values = store.values;
  randomMetrics(values, 777);
  const chunk = 1 << 23;
  const slots = new Int32Array(Math.min(chunk, values.length));
  for (let start = 0; start < values.length; start += chunk) {
    const n = Math.min(chunk, values.length - start);
    for (let i = 0; i < n; i++) slots[i] = start + i;
    backend.uploadMetrics(slots, values.subarray(start, start + n), n);
  }
  // The device tables in sync with the host's, as the decode step before a round leaves them
  // (this downloads the positions too: outside the timings).
  await backend.downloadPositions(allocator);
  await device.queue.onSubmittedWorkDone();
  if (BUSY_MS > 0) await keepBusy(BUSY_MS);
}

/** Random metrics in [0, 1) with 24-bit values (ties happen) from an LCG; returns its next state. */
function randomMetrics(values: Float32Array, seed: number): number {
  let rnd = seed;
  for (let i = 0; i < values.length; i++) {
    rnd = (Math.imul(rnd, 1664525) + 1013904223) | 0;
    values[i] = (rnd >>> 8) / 2 ** 24;
  }
  return rnd;
}

/**
 * Keeps the GPU busy for about `ms` (buffer copies), then returns when they have run. In
 * serving, a round follows decode steps; after the host-side second that fill() takes, an idle
 * H100 runs the round's kernels up to 5x slower until its clocks come back (round-kernels.gpu.ts,
 * "after-idle"), which a round between decode steps never sees.
 */
let busy: [GPUBuffer, GPUBuffer] | null = null;
async function keepBusy(ms: number): Promise<void> {
  const make = () => device.createBuffer({ size: 256 << 20, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  busy ??= [make(), make()];
  const [busyA, busyB] = busy;
  const t = performance.now();
  while (performance.now() - t < ms) {
    const e = device.createCommandEncoder();
    for (let i = 0; i < 8; i++) e.copyBufferToBuffer(i % 2 === 0 ? busyA : busyB, 0, i % 2 === 0 ? busyB : busyA, 0, 256 << 20);
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
  }
}

// A decode step as the engine runs KV-Compress: every row records its attention (L2, sum).
const stepTokens = new Int32Array(SEQS);
const stepSequences = new Int32Array(SEQS);
const stepPositions = new Int32Array(SEQS);
const stepSlots = new Int32Array(units * SEQS);
const seqSlots = new Int32Array(units);
const logitRows = Int32Array.from({ length: SEQS }, (_, i) => i);
const greedy = backend.createBuffer(SEQS, 'i32');
const greedyHost = new Int32Array(SEQS);
// The pipelined steps alternate between greedy and a second id buffer (timePipelinedSteps).
const pipelinedIds: PipelinedIds = {
  device: [greedy, backend.createBuffer(SEQS, 'i32')],
  host: [greedyHost, new Int32Array(SEQS)],
};
const recording: MetricRecording = {
  values: store.values,
  rowFlags: new Uint8Array(SEQS).fill(1),
  rowSquare: new Uint8Array(SEQS).fill(1),
  rowGroupScale: new Float32Array(SEQS).fill(1),
  rowMetricBuffer: new Int32Array(SEQS),
};
const newSlotValues = new Float32Array(units * SEQS);

/**
 * Records and submits one decode step of every sequence, its greedy ids picked into `into`;
 * its tokens are `deviceTokens` (the previous step's device-picked ids, as the engine's
 * pipelined decode feeds them) or, when null, greedyHost. Returns the host milliseconds.
 */
function recordStep(m: LlamaModel, deviceTokens: DeviceBuffer | null, into: DeviceBuffer): number {
  const t = performance.now();
  const n = sequences.length;
  for (let i = 0; i < n; i++) {
    const seq = sequences[i] as number;
    stepSequences[i] = seq;
    stepPositions[i] = allocator.nextPosition(seq);
    stepTokens[i] = greedyHost[i] as number;
    allocator.appendTokens(seq, 1, seqSlots);
    for (let u = 0; u < units; u++) stepSlots[u * n + i] = seqSlots[u] as number;
  }
  backend.uploadMetrics(stepSlots, newSlotValues, units * n);
  const step: ForwardStep = {
    rows: n,
    tokens: stepTokens,
    sequences: stepSequences,
    positions: stepPositions,
    slots: stepSlots,
    logitRows,
    logitCount: n,
    deviceTokens,
  };
  m.forward(step, allocator, recording);
  backend.argmax(into, m.logits, n, config.vocabSize);
  backend.flush();
  return performance.now() - t;
}

/** A decode step as selection rounds have always been set against: record, submit, read the ids. */
async function decodeStep(m: LlamaModel): Promise<number> {
  const hostMs = recordStep(m, null, greedy);
  await backend.read(greedy, greedyHost, 0, sequences.length);
  return hostMs;
}

/** STEPS pipelined decode steps (see timePipelinedSteps in pipelined-steps.ts); returns the wall ms per step. */
async function timePipelined(m: LlamaModel, label: string): Promise<number> {
  await decodeStep(m); // warm-up; its ids feed the first pipelined step from the host
  const { stepMs: ms, hostMsPerStep } = await timePipelinedSteps(backend, STEPS, sequences.length, pipelinedIds, (from, into) =>
    recordStep(m, from, into),
  );
  print({
    kind: 'step',
    when: `${label}, pipelined`,
    stepMs: ms,
    hostMsPerStep,
    tokens: allocator.nextPosition(sequences[0] as number),
  });
  return ms;
}

async function timeSteps(m: LlamaModel, label: string): Promise<number> {
  for (let i = 0; i < WARMUP_STEPS; i++) await decodeStep(m);
  const t = performance.now();
  let host = 0;
  for (let i = 0; i < STEPS; i++) host += await decodeStep(m);
  const ms = (performance.now() - t) / STEPS;
  print({ kind: 'step', when: label, stepMs: ms, hostMsPerStep: host / STEPS, tokens: allocator.nextPosition(sequences[0] as number) });
  return ms;
}

/** Describes the round in `sel`: every sequence, or those of round part `part` (see partOf). */
function addSelections(sel = selection, part = -1): number {
  const t = performance.now();
  sel.reset();
  for (let i = 0; i < sequences.length; i++) {
    if (part === -1 || partOf(i) === part) compressor.addSelection(sel, sequences[i] as number);
  }
  return performance.now() - t;
}

interface RoundTotals {
  freedBlocks: number;
  evictedSlots: number;
  moves: number;
}

/** Applies the device's outcome in `sel` to every sequence, or those of round part `part`, adding to `totals`. */
function applyAll(sel = selection, part = -1, totals: RoundTotals = { freedBlocks: 0, evictedSlots: 0, moves: 0 }): RoundTotals {
  for (let i = 0; i < sequences.length; i++) {
    if (part !== -1 && partOf(i) !== part) continue;
    const o: CompressionOutcome = compressor.applyDeviceCompaction(sequences[i] as number, sel);
    totals.freedBlocks += o.freedBlocks;
    totals.evictedSlots += o.evictedSlots;
    totals.moves += o.moves;
  }
  return totals;
}

/**
 * The round as the engine runs it: one download, the moves running while the host applies.
 * ROUND_PARTS > 1: each part's selection is described and recorded (compactEvictions up to its
 * download) before the first part is awaited, so the host describes and records part i + 1 while
 * part i's selection runs on the device, and applies part i while part i + 1's runs.
 */
async function deviceRound(): Promise<Record<string, number>> {
  // V8's collections during the round (their count and cost), synchronously at its end.
  const gcProfiler = new GCProfiler();
  gcProfiler.start();
  const t0 = performance.now();
  let hostSelectMs = 0;
  const parts: { stats: CompactionStats; done: Promise<void> }[] = [];
  for (let part = 0; part < ROUND_PARTS; part++) {
    const sel = partSelections[part] as EvictionSelection;
    hostSelectMs += addSelections(sel, part);
    const stats = { moves: 0, windowMoves: 0, crossWindowMoves: 0, recordMs: 0, waitMs: 0 };
    parts.push({ stats, done: backend.compactEvictions(sel, allocator, sel.rowCount, stats) });
  }
  const totals: RoundTotals = { freedBlocks: 0, evictedSlots: 0, moves: 0 };
  let applyMs = 0;
  for (let part = 0; part < ROUND_PARTS; part++) {
    await (parts[part] as { done: Promise<void> }).done;
    const ta = performance.now();
    applyAll(partSelections[part] as EvictionSelection, part, totals);
    applyMs += performance.now() - ta;
  }
  const t2 = performance.now();
  await device.queue.onSubmittedWorkDone();
  const t3 = performance.now();
  const gcs = gcProfiler.stop()?.statistics ?? [];
  const sum = (key: keyof CompactionStats) => parts.reduce((n, p) => n + (p.stats[key] ?? 0), 0);
  return {
    roundMs: t3 - t0,
    hostSelectMs,
    // In compactEvictions (recording, waiting, the moves' dispatches), outside describing and applying.
    compactEvictionsMs: t2 - t0 - hostSelectMs - applyMs,
    applyMs,
    movesTailMs: t3 - t2,
    ...totals,
    windowMoves: sum('windowMoves'),
    crossWindowMoves: sum('crossWindowMoves'),
    // Summed over the parts (they overlap when there are several).
    recordMs: sum('recordMs'),
    waitMs: sum('waitMs'),
    // Collections that ran during the round: all kinds, the major ones (mark-compact), and
    // their cost in ms (pauses on the main thread).
    gcCount: gcs.length,
    majorGcCount: gcs.filter((g) => g.gcType === 'MarkSweepCompact').length,
    gcMs: gcs.reduce((n, g) => n + g.cost, 0) / 1000,
    tablesMs: sum('tablesMs'),
    uploadMs: sum('uploadMs'),
    selectionMs: sum('selectionMs'),
    parts: ROUND_PARTS,
  };
}

/**
 * The full round, then STEADY more tokens per sequence (random metrics, as decode steps would
 * record), then the round that evicts back to the budget: the one timed.
 */
async function steadyRound(profile = false): Promise<Record<string, number>> {
  await deviceRound();
  const slots = new Int32Array(units * STEADY);
  const values = new Float32Array(units * STEADY);
  let seed = 4242;
  for (const seq of sequences) {
    allocator.appendTokens(seq, STEADY, slots);
    seed = randomMetrics(values, seed);
    backend.uploadMetrics(slots, values, slots.length);
  }
  // The device tables and positions in sync with the host's, as the decode steps that added the
  // tokens leave them (each step sends its own few changes; appended here at once, they would
  // be sent by the round): outside the timing.
  await backend.downloadPositions(allocator);
  allocator.positionsSynced();
  await device.queue.onSubmittedWorkDone();
  if (BUSY_MS > 0) await keepBusy(BUSY_MS);
  if (profile) await backend.readProfile();
  return deviceRound();
}

/** The same round with a download (and a wait) after each stage, to see where the time goes. */
async function deviceRoundBreakdown(): Promise<Record<string, number>> {
  const t0 = performance.now();
  addSelections();
  await backend.selectEvictions(selection, allocator, { masks: false });
  const t1 = performance.now();
  await backend.compactEvictions(selection, allocator);
  const t2 = performance.now();
  await device.queue.onSubmittedWorkDone();
  const t3 = performance.now();
  const totals = applyAll();
  const t4 = performance.now();
  return { selectionMs: t1 - t0, pairsMs: t2 - t1, movesMs: t3 - t2, applyMs: t4 - t3, ...totals };
}

/** The decision alone, with its masks downloaded. */
async function selectionOnly(): Promise<Record<string, number>> {
  const t0 = performance.now();
  const hostMs = addSelections();
  await backend.selectEvictions(selection, allocator);
  return { ms: performance.now() - t0, hostMs, downloadBytes: (selection.rowCount + selection.maskWords) * 4 };
}

/** The engine without device selection: download the metrics, plan and compact on the host, moves on the device. */
async function hostRound(): Promise<Record<string, number>> {
  const t0 = performance.now();
  await backend.downloadMetrics(store.values);
  const t1 = performance.now();
  let planMs = 0;
  let compactMs = 0;
  let freedBlocks = 0;
  let count = 0;
  for (const seq of sequences) {
    const o = compressor.compress(seq, moves);
    planMs += o.planMs;
    compactMs += o.compactMs;
    freedBlocks += o.freedBlocks;
    count += moves.count;
    backend.executeMoves(moves);
    moves.clear();
  }
  backend.flush();
  await device.queue.onSubmittedWorkDone();
  return { roundMs: performance.now() - t0, downloadMs: t1 - t0, planMs, compactMs, moves: count, freedBlocks };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

await fill();
let stepMs: number | null = null;
let pipelinedStepMs: number | null = null;
if (model !== null) {
  stepMs = await timeSteps(model, 'before the round');
  pipelinedStepMs = await timePipelined(model, 'before the round');
}
const rounds: number[] = [];
// Warm-up (pipelines, scratch buffers), then the timed repeats, each from the uncompressed cache.
await deviceRound();
for (let r = 0; r < REPEATS; r++) {
  await fill();
  const d = await deviceRound();
  rounds.push(d['roundMs'] as number);
  print({ mode: 'round-device', repeat: r, ...d });
}
const steady: number[] = [];
if (STEADY > 0) {
  // Warm-up: the steady round's moves cross windows of chunks, through kernels (and scratch)
  // the full round does not use.
  await fill();
  await steadyRound();
}
for (let r = 0; STEADY > 0 && r < REPEATS; r++) {
  await fill();
  const d = await steadyRound();
  steady.push(d['roundMs'] as number);
  print({ mode: 'round-steady', repeat: r, tokensAdded: STEADY, ...d });
}
await fill();
await new Promise((resolve) => setTimeout(resolve, 1500));
print({ mode: 'round-device-after-idle', ...(await deviceRound()) });
await fill();
print({ mode: 'round-breakdown', ...(await deviceRoundBreakdown()) });
await fill();
print({ mode: 'selection-device', ...(await selectionOnly()) });
/** GPU time per kernel of the dispatches since the last readProfile(). */
async function profileSince(round: string): Promise<void> {
  const { gpuMs, kernels } = await kernelProfile(backend);
  print({ mode: 'profile', round, gpuMs, kernels, timestamps: device.features.has('timestamp-query') });
}
if (PROFILE) {
  if (model !== null) {
    // One decode step's kernels, on full contexts.
    await fill();
    await backend.readProfile();
    await decodeStep(model);
    await profileSince('step');
  }
  await fill();
  await backend.readProfile();
  await deviceRound();
  await profileSince('full');
  if (STEADY > 0) {
    await fill();
    await steadyRound(true);
    await profileSince('steady');
  }
}
let stepAfterMs: number | null = null;
let pipelinedStepAfterMs: number | null = null;
if (model !== null) {
  await fill();
  await deviceRound();
  stepAfterMs = await timeSteps(model, 'after the round');
  pipelinedStepAfterMs = await timePipelined(model, 'after the round');
}
if (HOST) {
  await fill();
  print({ mode: 'round-host', ...(await hostRound()) });
}

if (VERIFY) {
  // The device's decision and compaction against the host path, on two allocators holding the same cache.
  const fresh = () => {
    const a = newAllocator();
    for (let s = 0; s < SEQS; s++) a.appendTokens(a.addSequence(), CONTEXT);
    const m = new MetricStore(a.numSlots);
    m.values.set(store.values);
    const c = new Compressor({ allocator: a, metrics: m, policy: compressor.policy, config: compressor.config });
    return { a, c };
  };
  const dev = fresh();
  const twin = fresh();
  const all = Int32Array.from({ length: dev.a.numSlots }, (_, i) => i);
  backend.uploadMetrics(all, store.values, all.length);
  selection.reset();
  for (let s = 0; s < SEQS; s++) dev.c.addSelection(selection, s);
  await backend.selectEvictions(selection, dev.a);
  // 1. The masks against the CPU planner.
  const ctx = twin.c.context;
  let mismatchedSlots = 0;
  let evicted = 0;
  for (let g = 0; g < selection.groupCount; g++) {
    const seq = selection.groups[g * SELECTION_GROUP_FIELDS] as number;
    ctx.begin(seq, twin.c.config);
    twin.c.policy.plan(ctx);
    evicted += ctx.plan.count;
    const first = selection.groups[g * SELECTION_GROUP_FIELDS + 1] as number;
    const end = first + (selection.groups[g * SELECTION_GROUP_FIELDS + 2] as number);
    for (let r = first; r < end; r++) {
      const unit = selection.rows[r * SELECTION_ROW_FIELDS + 1] as number;
      const len = selection.rows[r * SELECTION_ROW_FIELDS + 3] as number;
      for (let i = 0; i < len; i++) if (selection.evicted(r, i) !== ctx.isEvicted(unit, i)) mismatchedSlots++;
    }
  }
  // 2. The cache after the device compaction against compressSelected's on the twin.
  const twinMoves = twin.a.createMoveList();
  for (let s = 0; s < SEQS; s++) twin.c.compressSelected(s, twinMoves, selection);
  if (ROUND_PARTS === 1) {
    await backend.compactEvictions(selection, dev.a);
    for (let s = 0; s < SEQS; s++) dev.c.applyDeviceCompaction(s, selection);
  } else {
    // As deviceRound runs it: every part in flight before the first is applied.
    const done: Promise<void>[] = [];
    for (let part = 0; part < ROUND_PARTS; part++) {
      const sel = partSelections[part] as EvictionSelection;
      sel.reset();
      for (let s = 0; s < SEQS; s++) if (partOf(s) === part) dev.c.addSelection(sel, s);
      done.push(backend.compactEvictions(sel, dev.a));
    }
    for (let part = 0; part < ROUND_PARTS; part++) {
      await done[part];
      for (let s = 0; s < SEQS; s++) if (partOf(s) === part) dev.c.applyDeviceCompaction(s, partSelections[part] as EvictionSelection);
    }
  }
  await backend.downloadPositions(dev.a);
  dev.a.positionsSynced();
  const a = dev.a;
  const b = twin.a;
  let cacheMismatches = a.freeBlocks === b.freeBlocks ? 0 : 1;
  for (let i = 0; i < a.headLengths.length; i++) if (a.headLengths[i] !== b.headLengths[i]) cacheMismatches++;
  // Entries within each head's blocks (past them, the device path may leave the host's as they were).
  for (let h = 0; h < a.headLengths.length; h++) {
    const blocks = Math.ceil((a.headLengths[h] as number) / B);
    for (let j = 0; j < blocks; j++)
      if (a.blockTables[h * a.maxBlocksPerHead + j] !== b.blockTables[h * b.maxBlocksPerHead + j]) cacheMismatches++;
  }
  for (let h = 0; h < a.headLengths.length; h++) {
    for (let i = 0; i < (a.headLengths[h] as number); i++) {
      const slot = (a.blockTables[h * a.maxBlocksPerHead + Math.floor(i / B)] as number) * B + (i % B);
      if (a.slotPositions[slot] !== b.slotPositions[slot]) cacheMismatches++;
    }
  }
  const agree = mismatchedSlots === 0 && cacheMismatches === 0 && evicted > 0;
  print({ mode: 'verify', evictedSlots: evicted, mismatchedSlots, cacheMismatches, agree });
  if (!agree) process.exitCode = 1;
}

const roundMs = median(rounds);
const steadyMs = steady.length > 0 ? median(steady) : null;
print({
  mode: 'summary',
  rate: RATE,
  roundMs,
  stepMs,
  roundOverStep: stepMs === null ? null : roundMs / stepMs,
  steadyTokens: STEADY,
  steadyRoundMs: steadyMs,
  steadyOverStep: stepMs === null || steadyMs === null ? null : steadyMs / stepMs,
  stepAfterMs,
  // The same rounds against the engine's pipelined step (recording overlapped with the GPU),
  // before the round (the whole context) and after it (the compressed cache a steady round
  // serves).
  pipelinedStepMs,
  roundOverPipelinedStep: pipelinedStepMs === null ? null : roundMs / pipelinedStepMs,
  steadyOverPipelinedStep: pipelinedStepMs === null || steadyMs === null ? null : steadyMs / pipelinedStepMs,
  pipelinedStepAfterMs,
  steadyOverPipelinedStepAfter: pipelinedStepAfterMs === null || steadyMs === null ? null : steadyMs / pipelinedStepAfterMs,
  target: 0.1,
  kvChunks: backend.kvChunks,
  subgroups: backend.subgroups,
});
clearInterval(keepAlive);
process.exit(process.exitCode ?? 0);
