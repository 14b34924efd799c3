// End-to-end decode throughput at a fixed KV memory budget, on a real GPU through Dawn.
//
// A Llama-3.1-8B- or Llama-3.2-1B-shaped model with random f16 weights generated on the
// device runs greedy decode steps (LlamaModel.forward + device argmax, as the engine does)
// for as many sequences as the KV pool holds at each compression rate. Every sequence first
// takes CONTEXT tokens of cache through the PageAllocator; at rates above 1x the real
// KV-Compress Compressor (random metrics: the values do not change the speed) evicts and
// compacts it, freeing blocks, before the next sequence is admitted. Then STEPS decode steps
// append one token per sequence and are timed, host work included: each step is recorded,
// submitted and waits for its ids, so its time is the host's recording plus the GPU's work.
// PIPELINED=1 then times STEPS more as the engine runs them, the next step recorded while the
// GPU runs the last (the host's time hidden where the GPU's is longer). Prefill is not run: the
// prompt K/V are whatever the pool holds (zeros), which costs the same to attend over.
//
// Then one compression round planned on the host (metrics download -> plan -> compaction ->
// moves on the GPU) is timed for ROUND_SEQS sequences filling the pool and compared with a
// decode step of that batch. The round as the engine runs it now, selected and compacted on
// the device, is selection.gpu.ts.
//
// PROFILE=1 instead times one step per rate on the GPU, kernel by kernel (timestamp queries, each
// dispatch in its own pass; `profile` lines: GPU ms and dispatches per kernel, and their sum
// against the step's wall time), and skips the timed steps and the round.
//
// Env: SHAPE=8b|1b|tiny, KV_MIB (K+V pool), CONTEXT, RATES, STEPS, MAX_SEQS, WINDOW, PIPELINED, PROFILE;
// BLOCKED_MATMUL=0 turns the blocked matmul off (A/B), BLOCKED_MIN_ROWS sets its threshold;
// ATTENTION=wide|stream|auto picks the decode attention kernel (decodeAttention).
// STREAM_THREADS / STREAM_MERGE_IN_SLOTS set the stream kernel's workgroup size and merge (see above).
// Prints one JSON line per measurement. Build and run: see bench/run-gpu.sh.
/// <reference types="@webgpu/types" />
import { type DeviceBuffer, kvShapeOf, type ModelConfig, type SlotMoveList } from '@kvcompress/core';
import { Compressor, getPolicy } from '@kvcompress/eviction';
import { MetricStore } from '@kvcompress/metrics';
import { type ForwardStep, LlamaModel } from '@kvcompress/models';
import { PageAllocator } from '@kvcompress/page-allocator';
import { requestWebGpuDevice } from '../src/device.ts';
import { kernelProfile } from './kernel-profile.ts';
import { type PipelinedIds, timePipelinedSteps } from './pipelined-steps.ts';
import { randomWeightBackend, shapeNamed, syntheticModel, syntheticModelBytes } from './synthetic-llama.ts';

const env = (name: string, fallback: string): string => process.env[name] ?? fallback;
const SHAPE = env('SHAPE', '8b');
// The pool may exceed one storage binding (it is split into chunk buffers): e.g. SHAPE=1b
// KV_MIB=16384 ROUND_SEQS=64 times the compression round at 64 x 8K tokens.
const KV_MIB = Number(env('KV_MIB', '3584'));
const CONTEXT = Number(env('CONTEXT', '4096'));
const RATES = env('RATES', '1,2,4,8,16,32,64').split(',').map(Number);
const STEPS = Number(env('STEPS', '24'));
const WARMUP = 3;
const MAX_SEQS = Number(env('MAX_SEQS', '256'));
const WINDOW = Number(env('WINDOW', '16'));
const ROUND_SEQS = Number(env('ROUND_SEQS', '64'));
// PIPELINED=1: after the sequential steps, STEPS more as the engine's pipelined decode runs them
// (pipelined* fields); each sequence then reserves room for them, so fewer may fit than without.
const PIPELINED = env('PIPELINED', '0') === '1';
const PROFILE = env('PROFILE', '0') === '1';
const B = 16;

const config: ModelConfig = shapeNamed(SHAPE);

// ROBUSTNESS=0: Dawn's bounds-checking transform off (DeviceOptions.robustness).
const device = await requestWebGpuDevice({ robustness: process.env['ROBUSTNESS'] !== '0', timestamps: PROFILE });
// Dawn's Node binding resolves promises from its own polling; keep the event loop alive
// while we wait on them (older webgpu releases let Node exit mid-await otherwise).
const keepAlive = setInterval(() => {}, 1000);
const print = (o: object) => console.log(JSON.stringify({ shape: SHAPE, blockedMatmul: env('BLOCKED_MATMUL', '1') !== '0', ...o }));
const tStart = performance.now();
const debug = (m: string) => process.env['DEBUG'] && process.stderr.write(`[${((performance.now() - tStart) / 1000).toFixed(2)} s] ${m}\n`);
// The card is recorded by on-gpu.sh (nvidia-smi): reading device.adapterInfo through older
// dawn.node releases is one suspect of the crashes described in BENCHMARKS.md.

const backend = randomWeightBackend(device, debug, {
  blockedMatmul: env('BLOCKED_MATMUL', '1') !== '0',
  ...(process.env['BLOCKED_MIN_ROWS'] ? { blockedMatmulMinRows: Number(process.env['BLOCKED_MIN_ROWS']) } : {}),
  decodeAttention: (process.env['ATTENTION'] ?? 'auto') as 'auto' | 'wide' | 'stream',
  // STREAM_THREADS=128|256, STREAM_MERGE_IN_SLOTS=0|1: the stream kernel's layout (default: the backend's).
  ...(process.env['STREAM_THREADS'] ? { streamWorkgroupSize: Number(process.env['STREAM_THREADS']) as 128 | 256 } : {}),
  ...(process.env['STREAM_MERGE_IN_SLOTS'] ? { streamMergeInSlots: process.env['STREAM_MERGE_IN_SLOTS'] === '1' } : {}),
  // SPLIT_MATVEC=0: the previous subgroup matvec for decode-sized matmuls (splitMatvec, A/B).
  splitMatvec: env('SPLIT_MATVEC', '1') !== '0',
  profile: PROFILE,
});
const t0 = performance.now();
const model = new LlamaModel(syntheticModel(config), backend, { maxRows: MAX_SEQS });
debug('weights submitted');
await device.queue.onSubmittedWorkDone();
debug('weights done');
const weightBytes = syntheticModelBytes(config);
print({ kind: 'weights', bytes: weightBytes, ms: performance.now() - t0 });

const shape = kvShapeOf(config);
const units = shape.layers * shape.kvHeads;
const slotBytes = config.headDim * 2 * 2; // K + V, f16
const numBlocks = Math.floor((KV_MIB * 2 ** 20) / (slotBytes * B));
backend.createKvCache(numBlocks * B, config.headDim, 'f16');

interface Batch {
  allocator: PageAllocator;
  sequences: number[];
  compressor: Compressor | null;
  metrics: MetricStore;
  moves: SlotMoveList;
}

/** Admits sequences of `context` tokens, compressing each at `rate`, while the pool holds them and `reserve` decode tokens each. */
function admit(rate: number, context: number, reserve: number, maxSequences: number, compress: boolean): Batch {
  const allocator = new PageAllocator({ shape, numBlocks, blockSize: B, maxSequences, maxContext: context + reserve + B });
  const metrics = new MetricStore(allocator.numSlots);
  const compressor =
    rate > 1
      ? new Compressor({
          allocator,
          metrics,
          policy: getPolicy('kv-compress'),
          config: { budget: { targetCompressionRate: rate }, protectedWindow: WINDOW },
        })
      : null;
  const moves = allocator.createMoveList();
  const sequences: number[] = [];
  let rnd = 12345;
  while (sequences.length < maxSequences) {
    if (allocator.freeBlocks < units * Math.ceil((context + reserve) / B)) break;
    const seq = allocator.addSequence();
    allocator.appendTokens(seq, context);
    if (compressor !== null && compress) {
      for (let u = 0; u < units; u++) {
        for (let i = 0; i < context; i++) {
          rnd = (Math.imul(rnd, 1664525) + 1013904223) | 0;
          metrics.values[allocator.slot(seq, (u / shape.kvHeads) | 0, u % shape.kvHeads, i)] = (rnd >>> 8) / 2 ** 24;
        }
      }
      compressor.compress(seq, moves);
      moves.clear();
    }
    sequences.push(seq);
    // The next sequence must fit uncompressed first; stop when what is left cannot hold the
    // decode growth of the admitted ones.
    const growth = sequences.length * units * Math.ceil(reserve / B + 1);
    if (allocator.freeBlocks < growth + units * Math.ceil(context / B)) break;
  }
  return { allocator, sequences, compressor, metrics, moves };
}

const stepTokens = new Int32Array(MAX_SEQS);
const stepSequences = new Int32Array(MAX_SEQS);
const stepPositions = new Int32Array(MAX_SEQS);
const stepSlots = new Int32Array(units * MAX_SEQS);
const seqSlots = new Int32Array(units);
const logitRows = Int32Array.from({ length: MAX_SEQS }, (_, i) => i);
const greedy = backend.createBuffer(MAX_SEQS, 'i32');
const greedyHost = new Int32Array(MAX_SEQS);
// The pipelined steps alternate between greedy and a second id buffer (timePipelinedSteps).
const pipelinedIds: PipelinedIds = {
  device: [greedy, backend.createBuffer(MAX_SEQS, 'i32')],
  host: [greedyHost, new Int32Array(MAX_SEQS)],
};

/** Host time spent building and recording steps (the GPU runs behind it). */
let hostMs = 0;

/**
 * Records and submits one greedy decode step over every sequence of the batch, its ids picked
 * into `into`. Its tokens are the host's ids (greedyHost) or, with `deviceTokens`, the previous
 * step's device-picked ids, as the engine's pipelined decode feeds them.
 */
function recordStep(batch: Batch, deviceTokens: DeviceBuffer | null, into: DeviceBuffer): number {
  const t = performance.now();
  const { allocator, sequences } = batch;
  const rows = sequences.length;
  for (let i = 0; i < rows; i++) {
    const seq = sequences[i] as number;
    stepSequences[i] = seq;
    stepPositions[i] = allocator.nextPosition(seq);
    stepTokens[i] = greedyHost[i] as number;
    allocator.appendTokens(seq, 1, seqSlots);
    for (let u = 0; u < units; u++) stepSlots[u * rows + i] = seqSlots[u] as number;
  }
  const step: ForwardStep = {
    rows,
    tokens: stepTokens,
    sequences: stepSequences,
    positions: stepPositions,
    slots: stepSlots,
    logitRows,
    logitCount: rows,
    deviceTokens,
  };
  model.forward(step, allocator);
  backend.argmax(into, model.logits, rows, config.vocabSize);
  backend.flush();
  const ms = performance.now() - t;
  hostMs += ms;
  return ms;
}

/** One greedy decode step over every sequence of the batch; returns after the ids are back. */
async function decodeStep(batch: Batch): Promise<void> {
  recordStep(batch, null, greedy);
  await backend.read(greedy, greedyHost, 0, batch.sequences.length);
}

let lastHostMs = 0;
/** Wall ms per step of `steps` sequential steps (each waits for its ids), after WARMUP steps. */
async function timeSteps(batch: Batch, steps: number): Promise<number> {
  for (let i = 0; i < WARMUP; i++) {
    await decodeStep(batch);
    debug(`warm-up step ${i}`);
  }
  const t = performance.now();
  hostMs = 0;
  for (let i = 0; i < steps; i++) await decodeStep(batch);
  lastHostMs = hostMs / steps;
  return (performance.now() - t) / steps;
}

// 1. Throughput at a fixed KV budget for each rate.
let pipelinedBaseline = 0;
let baseline = 0;
for (const rate of RATES) {
  backend.clearKvCache();
  greedyHost.fill(0);
  const t = performance.now();
  debug(`rate ${rate}: admitting`);
  const batch = admit(rate, CONTEXT, WARMUP + STEPS + (PIPELINED ? STEPS + 1 : 0), MAX_SEQS, true);
  debug(`rate ${rate}: ${batch.sequences.length} sequences`);
  const admitMs = performance.now() - t;
  const usage = batch.allocator.usage();
  if (PROFILE) {
    for (let i = 0; i < WARMUP; i++) await decodeStep(batch);
    await backend.readProfile();
    const t0 = performance.now();
    await decodeStep(batch);
    const stepMs = performance.now() - t0;
    const { gpuMs, kernels } = await kernelProfile(backend);
    print({ kind: 'profile', rate, context: CONTEXT, sequences: batch.sequences.length, stepMs, gpuMs, kernels });
    continue;
  }
  const ms = await timeSteps(batch, STEPS);
  const hostMsPerStep = lastHostMs;
  const tokensPerSecond = (batch.sequences.length * 1000) / ms;
  if (rate === 1) baseline = tokensPerSecond;
  let pipelined = {};
  if (PIPELINED) {
    await decodeStep(batch); // its ids feed the first pipelined step from the host
    const { stepMs: pipelinedMs, hostMsPerStep: pipelinedHostMs } = await timePipelinedSteps(
      backend,
      STEPS,
      batch.sequences.length,
      pipelinedIds,
      (from, into) => recordStep(batch, from, into),
    );
    const pipelinedTokensPerSecond = (batch.sequences.length * 1000) / pipelinedMs;
    if (rate === 1) pipelinedBaseline = pipelinedTokensPerSecond;
    pipelined = {
      pipelinedStepMs: pipelinedMs,
      pipelinedHostMsPerStep: pipelinedHostMs,
      pipelinedTokensPerSecond,
      pipelinedVsRate1: pipelinedBaseline > 0 ? pipelinedTokensPerSecond / pipelinedBaseline : null,
    };
  }
  print({
    kind: 'throughput',
    kvMiB: KV_MIB,
    context: CONTEXT,
    window: WINDOW,
    rate,
    sequences: batch.sequences.length,
    usedBlocks: usage.usedBlocks,
    totalBlocks: numBlocks,
    admitMs: Math.round(admitMs),
    stepMs: ms,
    hostMsPerStep,
    tokensPerSecond,
    vsRate1: baseline > 0 ? tokensPerSecond / baseline : null,
    ...pipelined,
  });
}

// 2. One compression round for ROUND_SEQS sequences filling the pool, against a decode step.
if (ROUND_SEQS > 0 && !PROFILE) {
  backend.clearKvCache();
  const roundContext = Math.floor((numBlocks / (ROUND_SEQS * units)) * 0.95) * B - 2 * B;
  const rate = Number(env('ROUND_RATE', '8'));
  const batch = admit(rate, roundContext, WARMUP + 4, ROUND_SEQS, false);
  const stepMs = await timeSteps(batch, 4);
  const compressor = batch.compressor as Compressor;
  const metricsHost = batch.metrics.values;
  let rnd = 777;
  for (let i = 0; i < metricsHost.length; i++) {
    rnd = (Math.imul(rnd, 1664525) + 1013904223) | 0;
    metricsHost[i] = (rnd >>> 8) / 2 ** 24;
  }
  batch.allocator.positionChanges.clear();
  // The device metric store holds what attention recorded; upload random ones over it.
  const allSlots = Int32Array.from({ length: metricsHost.length }, (_, i) => i);
  backend.uploadMetrics(allSlots, metricsHost, metricsHost.length);
  await device.queue.onSubmittedWorkDone();
  const freeBefore = batch.allocator.freeBlocks;
  const t = performance.now();
  await backend.downloadMetrics(metricsHost);
  const tDownload = performance.now();
  let moves = 0;
  let planMs = 0;
  for (const seq of batch.sequences) {
    const p = performance.now();
    compressor.compress(seq, batch.moves);
    planMs += performance.now() - p;
    moves += batch.moves.count;
    backend.executeMoves(batch.moves);
    batch.moves.clear();
  }
  backend.flush();
  await device.queue.onSubmittedWorkDone();
  const roundMs = performance.now() - t;
  print({
    kind: 'compression-round',
    sequences: batch.sequences.length,
    context: roundContext,
    rate,
    metricSlots: metricsHost.length,
    downloadMs: tDownload - t,
    planMs,
    moves,
    freedBlocks: batch.allocator.freeBlocks - freeBefore,
    roundMs,
    decodeStepMs: stepMs,
    roundOverStep: roundMs / stepMs,
  });
}
clearInterval(keepAlive);
process.exit(0);
