/// <reference types="@webgpu/types" />
// Reproducer kept from the Dawn-in-Node crash hunt (cause and fix in BENCHMARKS.md: the
// GPU object was garbage collected): compiles and dispatches one kernel variant per run,
// printing each stage. Run under `node --expose-gc` to stress object lifetimes.
// Build like run-gpu.sh (entry bench/dawn-repro.gpu.ts -> .gpu/dawn-repro.mjs) and run
//   "$GPU_NODE" .gpu/dawn-repro.mjs attention|attention-nowul|attention32|matmul
import { requestWebGpuDevice } from '../src/device.ts';
import { attentionKernel, matmulKernel } from '../src/kernels.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';

const log = (s: string) => process.stdout.write(`${s}\n`);
const device = await requestWebGpuDevice();
const which = process.argv[2] ?? 'attention';
const att = attentionKernel('f16', 128, 4).code;
const variants: Record<string, string> = {
  attention: att,
  'attention-nowul': att
    .replace('let range = workgroupUniformLoad(&wrange);', 'let range = vec2u(0u, p.scoreStride);')
    .replace('var<workgroup> wrange: vec2<u32>;', ''),
  attention32: attentionKernel('f32', 8, 2).code,
  matmul: matmulKernel('f16', true).code,
};
if (which.startsWith('backend')) {
  // The same attention through WebGpuBackend, with a small synthetic paged cache.
  const be = new WebGpuBackend(device);
  const ctx = Number(process.env['CTX'] ?? 128);
  const D = Number(process.env['D'] ?? 128);
  const HEADS = Number(process.env['HEADS'] ?? 32);
  const blocks = ctx / 16;
  const slots = 8 * ctx;
  be.createKvCache(slots, D, (process.env['KV'] ?? 'f16') as 'f16' | 'f32');
  log(`kv cache ctx ${ctx}`);
  if (process.env['CLEAR'] === '1') {
    be.clearKvCache();
    log('cleared');
  }
  const order = Int32Array.from({ length: 8 * blocks }, (_, i) => i);
  if (process.env['SHUFFLE'] === '1') order.reverse();
  const tables = new Int32Array(2 * 8 * blocks);
  tables.set(order, 0);
  tables.set(order, order.length);
  const slotPositions = new Int32Array(slots);
  for (let h = 0; h < 8; h++)
    for (let j = 0; j < blocks; j++) for (let o = 0; o < 16; o++) slotPositions[(order[h * blocks + j] as number) * 16 + o] = j * 16 + o;
  const cache = {
    blockSize: 16,
    maxSequences: 1,
    maxBlocksPerHead: blocks,
    blockTables: tables,
    headLengths: new Int32Array(16).fill(ctx),
    slotPositions,
  };
  const q = be.createBuffer(HEADS * D);
  be.write(q, new Float32Array(HEADS * D).fill(0.01));
  const seqs = be.createBuffer(1, 'i32');
  be.write(seqs, new Int32Array([0]));
  const pos = be.createBuffer(1, 'i32');
  be.write(pos, new Int32Array([ctx - 1]));
  const out = be.createBuffer(HEADS * D);
  log('inputs');
  device.pushErrorScope('validation');
  be.attention(out, q, 0, { rows: 1, sequences: seqs, positions: pos }, cache, HEADS, 8);
  log('recorded');
  be.flush();
  log('flushed');
  if (which === 'backend-wait') await device.queue.onSubmittedWorkDone();
  log('waited');
  const r = new Float32Array(8);
  await be.read(out, r);
  log(`read ${r[0]} validation: ${(await device.popErrorScope())?.message ?? 'none'}`);
  process.exit(0);
}
device.pushErrorScope('validation');
log(`compile ${which}`);
const module = device.createShaderModule({ code: variants[which] as string });
const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
log('pipeline created');
const layout = pipeline.getBindGroupLayout(0);
const count = which.startsWith('attention') ? 10 : which === 'matmul' ? 5 : 1;
const entries: GPUBindGroupEntry[] = [];
const uniform = device.createBuffer({ size: 64, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
device.queue.writeBuffer(uniform, 0, new Uint32Array([1, 4, 1, 1, 1, 16, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0]));
entries.push({ binding: 0, resource: { buffer: uniform } });
for (let i = 1; i < count; i++) {
  entries.push({ binding: i, resource: { buffer: device.createBuffer({ size: 1 << 20, usage: GPUBufferUsage.STORAGE }) } });
}
const bg = device.createBindGroup({ layout, entries });
log('bind group');
const e = device.createCommandEncoder();
const pass = e.beginComputePass();
pass.setPipeline(pipeline);
pass.setBindGroup(0, bg);
pass.dispatchWorkgroups(1);
pass.end();
device.queue.submit([e.finish()]);
log('submitted');
log(`validation: ${(await device.popErrorScope())?.message ?? 'none'}`);
await device.queue.onSubmittedWorkDone();
log('done');
(globalThis as unknown as { keep: unknown }).keep = [module, pipeline, bg];
process.exit(0);
