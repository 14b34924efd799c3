// One KV-Compress selection round on a real GPU through Dawn: the eviction decision for
// SEQS sequences of CONTEXT tokens each (Llama-3.1-8B's cache shape by default: 32 layers x
// 8 kv-heads, blocks of 16), made
//   device: on the device metrics (WebGpuBackend.selectEvictions), downloading the decision
//           (one integer per head, one bit per slot);
//   host:   by downloading the whole metric store and planning on the CPU (Compressor's
//           policy.plan), the path the engine takes without device selection.
// Only the decision is timed (compaction and moves are the same afterwards). The decisions
// are compared slot by slot (VERIFY=0 skips it).
//
// Env: SEQS (64), CONTEXT (8192), LAYERS (32), KV_HEADS (8), RATE (4), WINDOW (64), REPEATS (3).
// A small shape checks the bench itself on SwiftShader:
//   SEQS=3 CONTEXT=300 LAYERS=2 KV_HEADS=2 VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node .gpu/selection.mjs
// Prints one JSON line per measurement. Build and run: see bench/run-gpu.sh.
/// <reference types="@webgpu/types" />
import { EvictionSelection, SELECTION_GROUP_FIELDS, SELECTION_ROW_FIELDS } from '@kvcompress/core';
import { Compressor, getPolicy } from '@kvcompress/eviction';
import { MetricStore } from '@kvcompress/metrics';
import { PageAllocator } from '@kvcompress/page-allocator';
import { requestWebGpuDevice } from '../src/device.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

const env = (name: string, fallback: string): number => Number(process.env[name] ?? fallback);
const SEQS = env('SEQS', '64');
const CONTEXT = env('CONTEXT', '8192');
const LAYERS = env('LAYERS', '32');
const KV_HEADS = env('KV_HEADS', '8');
const RATE = env('RATE', '4');
const WINDOW = env('WINDOW', '64');
const REPEATS = env('REPEATS', '3');
const VERIFY = process.env['VERIFY'] !== '0';
const B = 16;

const device = await requestWebGpuDevice();
// Dawn's Node binding resolves promises from its own polling: keep the event loop alive.
const keepAlive = setInterval(() => {}, 1000);
const print = (o: object) =>
  console.log(JSON.stringify({ kind: 'selection', seqs: SEQS, context: CONTEXT, layers: LAYERS, kvHeads: KV_HEADS, ...o }));

const shape = { layers: LAYERS, kvHeads: KV_HEADS, headDim: 2, queryHeadsPerKvHead: 4 };
const units = LAYERS * KV_HEADS;
const numBlocks = SEQS * units * Math.ceil(CONTEXT / B);
const allocator = new PageAllocator({ shape, numBlocks, blockSize: B, maxSequences: SEQS, maxContext: CONTEXT });
const store = new MetricStore(allocator.numSlots);
const backend = new WebGpuBackend(device);
// K and V are never read here: the smallest head dimension keeps the pool small.
backend.createKvCache(allocator.numSlots, 2, 'f16');
const sequences: number[] = [];
for (let s = 0; s < SEQS; s++) {
  const seq = allocator.addSequence();
  allocator.appendTokens(seq, CONTEXT);
  sequences.push(seq);
}
// Random metrics with some ties (24-bit values), uploaded in chunks.
let rnd = 777;
const values = store.values;
for (let i = 0; i < values.length; i++) {
  rnd = (Math.imul(rnd, 1664525) + 1013904223) | 0;
  values[i] = (rnd >>> 8) / 2 ** 24;
}
const chunk = 1 << 23;
const slots = new Int32Array(chunk);
for (let start = 0; start < values.length; start += chunk) {
  const n = Math.min(chunk, values.length - start);
  for (let i = 0; i < n; i++) slots[i] = start + i;
  backend.uploadMetrics(slots, values.subarray(start, start + n), n);
}
backend.flush();
await device.queue.onSubmittedWorkDone();
values.fill(0);

const compressor = new Compressor({
  allocator,
  metrics: store,
  policy: getPolicy('kv-compress'),
  config: { budget: { targetCompressionRate: RATE }, protectedWindow: WINDOW },
});
const rows = SEQS * units;
const selection = new EvictionSelection(rows, rows * Math.ceil((allocator.maxBlocksPerHead * B) / 32));

async function deviceRound(): Promise<{ ms: number; hostMs: number }> {
  const t = performance.now();
  selection.reset();
  for (const seq of sequences) compressor.addSelection(selection, seq);
  const hostMs = performance.now() - t;
  await backend.selectEvictions(selection, allocator);
  return { ms: performance.now() - t, hostMs };
}

async function hostRound(): Promise<{ ms: number; downloadMs: number; planMs: number }> {
  const t = performance.now();
  await backend.downloadMetrics(values);
  const t1 = performance.now();
  const ctx = compressor.context;
  for (const seq of sequences) {
    ctx.begin(seq, compressor.config);
    compressor.policy.plan(ctx);
  }
  const t2 = performance.now();
  return { ms: t2 - t, downloadMs: t1 - t, planMs: t2 - t1 };
}

// Warm-up: compiles the pipelines and uploads the tables (attention keeps them synced in an engine).
await deviceRound();
await hostRound();
for (let r = 0; r < REPEATS; r++) {
  const d = await deviceRound();
  print({ mode: 'device', repeat: r, ms: d.ms, hostMs: d.hostMs, downloadBytes: (selection.rowCount + selection.maskWords) * 4 });
}
for (let r = 0; r < REPEATS; r++) {
  const h = await hostRound();
  print({ mode: 'host', repeat: r, ms: h.ms, downloadMs: h.downloadMs, planMs: h.planMs, downloadBytes: values.length * 4 });
}

if (VERIFY) {
  // The last device round's masks against the host plan, sequence by sequence.
  const ctx = compressor.context;
  const evictedBy = new Uint8Array(allocator.numSlots);
  let mismatches = 0;
  let evicted = 0;
  for (let g = 0; g < selection.groupCount; g++) {
    const seq = selection.groups[g * SELECTION_GROUP_FIELDS] as number;
    ctx.begin(seq, compressor.config);
    compressor.policy.plan(ctx);
    for (let n = 0; n < ctx.plan.count; n++) evictedBy[ctx.plan.slots[n] as number] = 1;
    evicted += ctx.plan.count;
    const first = selection.groups[g * SELECTION_GROUP_FIELDS + 1] as number;
    const end = first + (selection.groups[g * SELECTION_GROUP_FIELDS + 2] as number);
    for (let r = first; r < end; r++) {
      const unit = selection.rows[r * SELECTION_ROW_FIELDS + 1] as number;
      const len = selection.rows[r * SELECTION_ROW_FIELDS + 3] as number;
      const t0 = allocator.unitHeadIndex(seq, unit) * allocator.maxBlocksPerHead;
      for (let i = 0; i < len; i++) {
        const slot = (allocator.blockTables[t0 + ((i / B) | 0)] as number) * B + (i % B);
        if (selection.evicted(r, i) !== (evictedBy[slot] === 1)) mismatches++;
        evictedBy[slot] = 0;
      }
    }
  }
  print({ mode: 'verify', evictedSlots: evicted, mismatchedSlots: mismatches, agree: mismatches === 0 });
  if (mismatches > 0) process.exitCode = 1;
}
clearInterval(keepAlive);
process.exit(process.exitCode ?? 0);
