// What a pending GPU promise costs the host through Dawn's event polling: one long dispatch,
// then `onSubmittedWorkDone()` awaited, while V8's collections are counted (PerformanceObserver
// 'gc') and the global setImmediate's calls (Dawn's polling turns) counted; then the same time
// idle (a timer) for comparison. POLL_US (default "0,20,50,200"): DeviceOptions.dawnPollMicros
// per measurement (process-wide, set before each). ITERS (20000): the dispatch's loop length.
// Prints one JSON line per measurement. Build and run: see bench/run-gpu.sh.
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json ITERS=5000 node .gpu/dawn-poll.mjs
/// <reference types="@webgpu/types" />
import { PerformanceObserver } from 'node:perf_hooks';
import { requestWebGpuDevice, throttleImmediates } from '../src/device.ts';

const polls = (process.env['POLL_US'] ?? '0,20,50,200').split(',').map(Number);
const iters = Number(process.env['ITERS'] ?? 20000);
// No spacing of its own: the measurements below set it (DeviceOptions.dawnPollMicros defaults to 50).
const device = await requestWebGpuDevice({ dawnPollMicros: 0 });
// Dawn's Node binding resolves promises from its own polling: keep the event loop alive.
const keepAlive = setInterval(() => {}, 1000);
// Count the polling turns: wrap the global setImmediate under the throttle.
const original = globalThis.setImmediate;
let turns = 0;
globalThis.setImmediate = Object.assign((...args: Parameters<typeof setImmediate>) => {
  turns++;
  return original(...args);
}, original);
const buffer = device.createBuffer({ size: 4 << 20, usage: GPUBufferUsage.STORAGE });
const module = device.createShaderModule({
  code: `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  var a = x[g.x];
  for (var i = 0u; i < ${iters}u; i++) { a = a * 1.0001 + 0.5; }
  x[g.x] = a;
}`,
});
const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer } }] });
let collections = 0;
let pauseMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    collections++;
    pauseMs += e.duration;
  }
}).observe({ entryTypes: ['gc'] });
const measure = async (mode: string, micros: number, wait: () => Promise<unknown>) => {
  await new Promise((resolve) => setTimeout(resolve, 50));
  collections = 0;
  pauseMs = 0;
  turns = 0;
  const t0 = performance.now();
  await wait();
  const ms = performance.now() - t0;
  console.log(
    JSON.stringify({
      kind: 'dawn-poll',
      mode,
      pollMicros: micros,
      ms,
      turnsPerSecond: (turns / ms) * 1000,
      collectionsPerSecond: (collections / ms) * 1000,
      pauseShare: pauseMs / ms,
    }),
  );
  return ms;
};
for (const micros of polls) {
  throttleImmediates(micros);
  const ms = await measure('pending', micros, () => {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(16384);
    pass.end();
    device.queue.submit([encoder.finish()]);
    return device.queue.onSubmittedWorkDone();
  });
  await measure('idle', micros, () => new Promise((resolve) => setTimeout(resolve, Math.min(ms, 3000))));
}
clearInterval(keepAlive);
process.exit(0);
