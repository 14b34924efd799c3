// Paged decode attention on a real GPU through Dawn (Node.js), against the measured WGSL copy
// ceiling. 32 query heads, 8 kv-heads, head dim 128 (HEAD_DIM), f16 KV in blocks of 16, every head's
// blocks scattered through the pool (a shuffled block table; SHUFFLE=0: in pool order, LOCAL=1
// with SPREAD: among the pool's first blocks), one query per sequence.
// Build and run: see bench/run-gpu.sh. Prints one JSON line per configuration.
/// <reference types="@webgpu/types" />
import { requestWebGpuDevice } from '../src/device.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

const HEADS = 32;
const KV_HEADS = 8;
// HEAD_DIM (128): 64 is the Llama-3.2-1B's. RECORD=1: every row records KV-Compress metrics, as
// the engine's decode steps do under KV-Compress (scores written, then the metric kernel).
const D = Number(process.env['HEAD_DIM'] ?? 128);
const RECORD = process.env['RECORD'] === '1';
// SPREAD (1): the pool holds SPREAD times the blocks the timed heads use, and their blocks are
// drawn from all of it, as one layer's are from a pool shared by every layer (Llama-3.2-1B: 16).
const SPREAD = Number(process.env['SPREAD'] ?? 1);
// LOCAL=1: with SPREAD, the timed heads' blocks are shuffled among the pool's first blocks only
// (as many as they use), so the pool is as large but the blocks read lie close together.
const LOCAL = process.env['LOCAL'] === '1';
// SHUFFLE=0: block tables in pool order (head after head, as an allocator hands out a fresh pool)
// instead of shuffled: the dense layout PyTorch's tensors have, against the fragmented worst case.
const SHUFFLE = process.env['SHUFFLE'] !== '0';
const B = 16;

// ROBUSTNESS=0: Dawn's bounds-checking transform off (DeviceOptions.robustness).
const device = await requestWebGpuDevice({ robustness: process.env['ROBUSTNESS'] !== '0' });
// Dawn's Node binding resolves promises from its own polling; keep the event loop alive
// while we wait on them (older webgpu releases let Node exit mid-await otherwise).
setInterval(() => {}, 1000);
// The card is recorded by on-gpu.sh (nvidia-smi): reading device.adapterInfo through older
// dawn.node releases is one suspect of the crashes described in BENCHMARKS.md.

async function time(fn: () => void, iters: number): Promise<number> {
  for (let i = 0; i < 3; i++) fn();
  await device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) fn();
  await device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / iters;
}

/** A submit of one dispatch of a one-entry-point WGSL kernel over `buffers` (bindings 0, 1, ...). */
function dispatcher(code: string, buffers: GPUBuffer[], workgroups: number): () => void {
  const module = device.createShaderModule({ code });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bg = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: buffers.map((buffer, i) => ({ binding: i, resource: { buffer } })),
  });
  return () => {
    const e = device.createCommandEncoder();
    const p = e.beginComputePass();
    p.setPipeline(pipeline);
    p.setBindGroup(0, bg);
    p.dispatchWorkgroups(workgroups);
    p.end();
    device.queue.submit([e.finish()]);
  };
}

// The copy ceiling: a grid-stride vec4<f32> copy of 1 GiB, as in shared/device/smoke.mjs.
if (process.env['COPY_BYTES'] !== '0') {
  const bytes = Number(process.env['COPY_BYTES'] ?? 2 ** 30);
  const usage = GPUBufferUsage.STORAGE;
  const a = device.createBuffer({ size: bytes, usage });
  const b = device.createBuffer({ size: bytes, usage });
  const copy = dispatcher(
    `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let n = arrayLength(&src); let stride = nw.x * 256u;
  for (var i = g.x; i < n; i += stride) { dst[i] = src[i]; }
}`,
    [a, b],
    132 * 16,
  );
  const ms = await time(copy, 20);
  console.log(JSON.stringify({ kind: 'copy', bytes, ms, gbps: (2 * bytes) / ms / 1e6 }));
  a.destroy();
  b.destroy();
}

// READ_BYTES (0: off): the read ceiling. Decode attention only reads its K/V, so its bound is
// the rate at which a shader can read memory, not the copy's read + write. Read-only kernels over
// one buffer of READ_BYTES, each invocation folding what it loads into a xor kept alive by a
// store that never happens; variants by loads in flight per invocation (READ_UNROLL, default
// 1,4,8) and workgroups (READ_WORKGROUPS, default 2112 = 132 SMs x 16, and 16896). sdpa.py
// times PyTorch reading the same bytes.
const readBytes = Number(process.env['READ_BYTES'] ?? 0);
if (readBytes > 0) {
  const src = device.createBuffer({ size: readBytes, usage: GPUBufferUsage.STORAGE });
  const sink = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const unrolls = (process.env['READ_UNROLL'] ?? '1,4,8').split(',').map(Number);
  const workgroupCounts = (process.env['READ_WORKGROUPS'] ?? '2112,16896').split(',').map(Number);
  for (const unroll of unrolls) {
    // Each iteration loads `unroll` vec4s a stride apart (coalesced across the workgroup), so
    // that many loads are in flight per invocation before the first is used.
    const loads = Array.from({ length: unroll }, (_, u) => `acc ^= src[i + ${u}u * stride];`).join(' ');
    const code = `@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<vec4<u32>>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let n = arrayLength(&src); let stride = nw.x * 256u;
  var acc = vec4<u32>(0u);
  var i = g.x;
  for (; i + ${unroll - 1}u * stride < n; i += ${unroll}u * stride) { ${loads} }
  for (; i < n; i += stride) { acc ^= src[i]; }
  if (all(acc == vec4<u32>(0x9e3779b9u))) { sink[0] = acc; }
}`;
    for (const workgroups of workgroupCounts) {
      const run = dispatcher(code, [src, sink], workgroups);
      const repeats = [await time(run, 20), await time(run, 20), await time(run, 20)].sort((a, b) => a - b);
      const ms = repeats[1] as number;
      console.log(
        JSON.stringify({ kind: 'read', bytes: readBytes, unroll, workgroups, ms, bestMs: repeats[0], gbps: readBytes / ms / 1e6 }),
      );
    }
  }
  src.destroy();
  sink.destroy();
}

// ATTENTION_KERNELS: decode attention kernels to compare in one run, each on its own backend: 'wide',
// or 'streamU[tT][wN][xor][sS][m]' (the stream kernel, U keys per key group and step, T lanes a
// key, N = 128 or 256 threads a workgroup, every lane reducing every score instead of the
// reduce-scatter, at most S keys a workgroup, the final merge in the key slots' workgroup
// memory; without 'm' it has a buffer of its own), or 'default' (the backend's own defaults:
// what an engine runs; the default list).
const kernels = (process.env['ATTENTION_KERNELS'] ?? 'default').split(',');
const kernelOptions = (k: string) => {
  if (k === 'default') return {};
  if (k === 'wide') return { decodeAttention: 'wide' as const };
  const m = /^stream(\d)(?:t(\d+))?(?:w(128|256))?(xor)?(?:s(\d+))?(m)?$/.exec(k);
  if (m === null) throw new Error(`KERNELS: unknown kernel ${k}`);
  return {
    decodeAttention: 'stream' as const,
    streamKeysPerStep: Number(m[1]) as 1 | 2 | 4 | 8,
    ...(m[2] === undefined ? {} : { streamThreadsPerKey: Number(m[2]) }),
    ...(m[3] === undefined ? {} : { streamWorkgroupSize: Number(m[3]) as 128 | 256 }),
    ...(m[4] === undefined ? {} : { streamScatter: false }),
    ...(m[5] === undefined ? {} : { streamMaxKeys: Number(m[5]) as 512 | 1024 | 2048 | 4096 }),
    streamMergeInSlots: m[6] !== undefined,
  };
};
const batches = (process.env['BATCHES'] ?? '1,8,32,128').split(',').map(Number);
// SETTLE_MS (0): after each kernel's run, wait this long for its pool's release before the next
// pool is created (fresh pools of one size ran at different speeds; BENCHMARKS.md).
const SETTLE_MS = Number(process.env['SETTLE_MS'] ?? 0);
const contexts = (process.env['CONTEXTS'] ?? '1024,4096,16384,32768').split(',').map(Number);
for (const batch of batches) {
  for (const ctx of contexts) {
    const slots = batch * KV_HEADS * ctx * SPREAD;
    // Pools past one storage binding are split into chunk buffers (createKvCache); skip only
    // what the device's memory cannot hold (Dawn reports no memory size: VRAM_GIB, default 72).
    const vram = Number(process.env['VRAM_GIB'] ?? 72) * 2 ** 30;
    if (2 * slots * D * 2 > vram) continue;
    const step = (m: string) => process.env['DEBUG'] && console.error('STEP', batch, ctx, m);
    // MAX_BINDING_MIB (checks on SwiftShader): force chunks smaller than the device's binding limit.
    const maxBinding = process.env['MAX_BINDING_MIB'];
    for (const kernel of kernels) {
      const backend = new WebGpuBackend(device, {
        ...kernelOptions(kernel),
        ...(maxBinding === undefined ? {} : { maxKvBindingBytes: Number(maxBinding) * 2 ** 20 }),
      });
      backend.createKvCache(slots, D, 'f16');
      step('kv');
      const blocksPerHead = ctx / B;
      // Two layers' tables: layer 0 uploads them once, the timed calls use layer 1.
      const tables = new Int32Array(2 * batch * KV_HEADS * blocksPerHead);
      const order = Int32Array.from({ length: batch * KV_HEADS * blocksPerHead * SPREAD }, (_, i) => i);
      let s = 12345;
      const usedCount = batch * KV_HEADS * blocksPerHead;
      for (let i = SHUFFLE ? (LOCAL ? usedCount : order.length) - 1 : 0; i > 0; i--) {
        s = (Math.imul(s, 1664525) + 1013904223) | 0;
        const j = (s >>> 0) % (i + 1);
        const t = order[i] as number;
        order[i] = order[j] as number;
        order[j] = t;
      }
      const used = order.subarray(0, usedCount);
      tables.set(used, 0);
      tables.set(used, used.length);
      const slotPositions = new Int32Array(slots);
      for (let h = 0; h < batch * KV_HEADS; h++) {
        for (let j = 0; j < blocksPerHead; j++) {
          const block = order[h * blocksPerHead + j] as number;
          for (let o = 0; o < B; o++) slotPositions[block * B + o] = j * B + o;
        }
      }
      const cache = {
        blockSize: B,
        maxSequences: batch,
        maxBlocksPerHead: blocksPerHead,
        blockTables: tables,
        headLengths: new Int32Array(2 * batch * KV_HEADS).fill(ctx),
        slotPositions,
      };
      const q = backend.createBuffer(batch * HEADS * D);
      backend.write(
        q,
        Float32Array.from({ length: batch * HEADS * D }, () => Math.random() - 0.5),
      );
      const sequences = backend.createBuffer(batch, 'i32');
      backend.write(
        sequences,
        Int32Array.from({ length: batch }, (_, i) => i),
      );
      const positions = backend.createBuffer(batch, 'i32');
      backend.write(positions, new Int32Array(batch).fill(ctx - 1));
      const out = backend.createBuffer(batch * HEADS * D);
      const rows = { rows: batch, sequences, positions };
      const recording = RECORD
        ? {
            values: new Float32Array(0),
            rowFlags: new Uint8Array(batch).fill(1),
            rowSquare: new Uint8Array(batch).fill(1),
            rowGroupScale: new Float32Array(batch).fill(1),
            rowMetricBuffer: new Int32Array(batch),
          }
        : undefined;
      step('inputs');
      backend.attention(out, q, 0, rows, cache, HEADS, KV_HEADS, recording);
      step('recorded');
      backend.flush();
      await device.queue.onSubmittedWorkDone();
      step('first done');
      // Run-to-run spread on the H100 was up to 2x for 20 calls: time >= 200 ms of calls three
      // times and report the median (and the best).
      const call = () => {
        backend.attention(out, q, 1, rows, cache, HEADS, KV_HEADS, recording);
        backend.flush();
      };
      const first = await time(call, 5);
      const iters = Math.max(20, Math.ceil(200 / Math.max(first, 1e-3)));
      const repeats = [await time(call, iters), await time(call, iters), await time(call, iters)].sort((a, b) => a - b);
      const ms = repeats[1] as number;
      const bestMs = repeats[0] as number;
      const kvBytes = (2 * slots * D * 2) / SPREAD; // what the heads read
      console.log(
        JSON.stringify({
          kind: 'attention',
          kernel,
          headDim: D,
          record: RECORD,
          spread: SPREAD,
          local: LOCAL,
          shuffled: SHUFFLE,
          batch,
          ctx,
          ms,
          bestMs,
          iters,
          kvBytes,
          gbps: kvBytes / ms / 1e6,
          bestGbps: kvBytes / bestMs / 1e6,
          kvChunks: backend.kvChunks,
          passes: backend.attentionPasses,
          storageBuffers: device.limits.maxStorageBuffersPerShaderStage,
          workgroupStorage: device.limits.maxComputeWorkgroupStorageSize,
        }),
      );
      backend.destroyBuffers();
      if (SETTLE_MS > 0) {
        await device.queue.onSubmittedWorkDone();
        await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
      }
    }
  }
}
process.exit(0);
