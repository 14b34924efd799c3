/// <reference types="@webgpu/types" />
// Reproducer for the open Dawn-in-Node problem (see BENCHMARKS.md): compiles one kernel
// variant per run. On the H100 machine (webgpu@0.6.2, driver 580.159.04) even the trivial
// `vec4` variant hung for 180 s in createComputePipelineAsync/getCompilationInfo, and the
// paged-attention pipeline crashed the process when first submitted.
// Build like run-gpu.sh (entry bench/dawn-repro.gpu.ts -> .gpu/dawn-repro.mjs) and run
//   "$GPU_NODE" .gpu/dawn-repro.mjs vec4|wul|attention32|attention
import { requestWebGpuDevice } from '../src/device.ts';
import { attentionKernel } from '../src/kernels.ts';

const device = await requestWebGpuDevice();
const which = process.argv[2] ?? 'wul';
const variants: Record<string, string> = {
  wul: `var<workgroup> w: u32;
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) li: u32) {
  if (li == 0u) { w = out[0] + 3u; }
  let n = workgroupUniformLoad(&w);
  var s = 0u;
  for (var i = 0u; i < n; i++) { s += i; workgroupBarrier(); }
  if (li == 0u) { out[1] = s; }
}`,
  vec4: `@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> info: array<vec4<i32>>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) li: u32) { out[li] = u32(info[0].y); }`,
  attention: attentionKernel('f16', 128, 4).code,
  attention32: attentionKernel('f32', 8, 2).code,
};
console.error('compiling', which);
const module = device.createShaderModule({ code: variants[which] as string });
const info = await module.getCompilationInfo();
console.error('info', info.messages.length);
const pipeline = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
console.error('pipeline ok');
await device.queue.onSubmittedWorkDone();
console.error('idle ok');
(globalThis as unknown as { keep: unknown }).keep = [module, pipeline];
process.exit(0);
