// Prefill attention on a real GPU through Dawn: one sequence's prefill chunk (`rows`
// consecutive rows ending at the context's last position) against its paged f16 cache, the
// tiled prefill kernel against the split-K decode kernels (prefillAttention: false).
// 32 query heads, 8 kv-heads, head dim 128, blocks of 16. Prints one JSON line per shape.
// Build: esbuild bench/prefill.gpu.ts --bundle --platform=node --format=esm --external:webgpu.
/// <reference types="@webgpu/types" />
import { PageAllocator } from '@kvcompress/page-allocator';
import { requestWebGpuDevice } from '../src/device.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

const HEADS = 32;
const KV_HEADS = 8;
const D = 128;
const B = 16;
const device = await requestWebGpuDevice();
setInterval(() => {}, 1000);

async function run(tiled: boolean, context: number, rows: number): Promise<number> {
  const b = new WebGpuBackend(device, { prefillAttention: tiled });
  const shape = { layers: 1, kvHeads: KV_HEADS, headDim: D, queryHeadsPerKvHead: HEADS / KV_HEADS };
  const a = new PageAllocator({
    shape,
    numBlocks: KV_HEADS * Math.ceil(context / B) + 4,
    blockSize: B,
    maxSequences: 1,
    maxContext: context,
  });
  b.createKvCache(a.numSlots, D, 'f16');
  const seq = a.addSequence();
  const slots = new Int32Array(KV_HEADS * context);
  a.appendTokens(seq, context, slots);
  const rand = () => Math.random() - 0.5;
  const buf = (n: number, f: () => number) => {
    const x = b.createBuffer(n);
    b.write(x, Float32Array.from({ length: n }, f));
    return x;
  };
  const slotBuf = b.createBuffer(slots.length, 'i32');
  b.write(slotBuf, slots);
  b.appendKv(0, buf(context * KV_HEADS * D, rand), buf(context * KV_HEADS * D, rand), slotBuf, context, KV_HEADS);
  const q = buf(rows * HEADS * D, rand);
  const out = b.createBuffer(rows * HEADS * D);
  const sequences = b.createBuffer(rows, 'i32');
  b.write(sequences, new Int32Array(rows).fill(seq));
  const positions = b.createBuffer(rows, 'i32');
  b.write(
    positions,
    Int32Array.from({ length: rows }, (_, r) => context - rows + r),
  );
  const step = () => b.attention(out, q, 0, { rows, sequences, positions }, a, HEADS, KV_HEADS);
  for (let i = 0; i < 3; i++) step();
  await b.read(out, new Float32Array(1));
  const iters = 10;
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) step();
  await b.read(out, new Float32Array(1));
  const ms = (performance.now() - t0) / iters;
  if (tiled !== b.prefillAttentionDispatches > 0) throw new Error('prefill path not as asked');
  b.destroyBuffers();
  return ms;
}

for (const [context, rows] of [
  [512, 256],
  [2048, 256],
  [4096, 256],
  [2048, 2048],
] as const) {
  const splitK = await run(false, context, rows);
  const tiled = await run(true, context, rows);
  console.log(JSON.stringify({ kind: 'prefill-attention', context, rows, splitKMs: splitK, tiledMs: tiled, speedup: splitK / tiled }));
}
process.exit(0);
