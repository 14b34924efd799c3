// Matmul kernels on a real GPU: the matvec kernel (up to 8 rows per workgroup) against the tiled kernel (32- and
// 64-row tiles) for the Llama-3.1-8B projection shapes, f16 weights, across batch sizes.
// Prints one JSON line per (shape, rows, kernel): ms, TFLOP/s, weight GB/s.
/// <reference types="@webgpu/types" />
import { requestWebGpuDevice } from '../src/device.ts';
import { GpuWeight, WebGpuBackend } from '../src/webgpu-backend.ts';

const device = await requestWebGpuDevice();
setInterval(() => {}, 1000);
const shapes = [
  [4096, 4096],
  [14336, 4096],
  [4096, 14336],
];
const rowsList = (process.env['ROWS'] ?? '1,8,16,24,32,48,64,96,128,192,256').split(',').map(Number);
const kernels = [
  { name: 'matvec', options: { tiledMatmulMinRows: 1 << 30 } },
  { name: 'tiled32', options: { tiledMatmulMinRows: 1, tiledMatmulTileRows: 32 as const } },
  { name: 'tiled64', options: { tiledMatmulMinRows: 1, tiledMatmulTileRows: 64 as const } },
];
for (const [outDim, inDim] of shapes as [number, number][]) {
  const wbuf = device.createBuffer({ size: outDim * inDim * 2, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(wbuf, 0, new Uint32Array((outDim * inDim) / 2).fill(0x3c003c00));
  const w = new GpuWeight('w', [outDim, inDim], wbuf, 'f16');
  for (const k of kernels) {
    const backend = new WebGpuBackend(device, k.options);
    const maxRows = Math.max(...rowsList);
    const x = backend.createBuffer(maxRows * inDim);
    backend.write(x, new Float32Array(maxRows * inDim).fill(0.01));
    const out = backend.createBuffer(maxRows * outDim);
    for (const rows of rowsList) {
      const iters = 20;
      // Warm up with as many dispatches as are timed: each uses its own uniform slot, and its
      // bind group is created on first use.
      for (let i = 0; i < iters; i++) backend.matmul(out, x, w, rows);
      backend.flush();
      await device.queue.onSubmittedWorkDone();
      const t = performance.now();
      for (let i = 0; i < iters; i++) backend.matmul(out, x, w, rows);
      backend.flush();
      // Host time to record and submit (the GPU starts on the first submit).
      const encodeMs = (performance.now() - t) / iters;
      await device.queue.onSubmittedWorkDone();
      const ms = (performance.now() - t) / iters;
      console.log(
        JSON.stringify({
          kind: 'matmul',
          kernel: k.name,
          outDim,
          inDim,
          rows,
          ms,
          encodeMs,
          tflops: (2 * rows * outDim * inDim) / ms / 1e9,
          weightGBps: (outDim * inDim * 2) / ms / 1e6,
        }),
      );
    }
    backend.destroyBuffers();
  }
  wbuf.destroy();
}
process.exit(0);
