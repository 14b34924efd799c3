// Matmul kernels on a real GPU, side by side in one process: the subgroup matvec kernel (up to
// 8 rows per workgroup), the tiled kernel (32- and 64-row tiles) and the register-blocked
// kernel (the backend's plan; the plan without its matvec tail; each tile height forced for
// all rows) for the Llama-3.1-8B projection shapes, f16 weights, across batch sizes. Prints
// one JSON line per (shape, rows, kernel): ms, TFLOP/s, weight GB/s, and whether sampled
// outputs match the host (inputs are multiples of 1/8 and 1/16 small enough that every order
// of summation is exact); then one summary line per (shape, rows): the blocked kernel's
// default against the faster of matvec and tiled.
//   ROWS=32,64,128        batch sizes (default 32..512)
//   SHAPES=4096x4096      out x in (default the three 8B shapes)
//   KERNELS=tiled64,blocked   which of: split matvec tiled32 tiled64 blocked blocked-notail blocked64 blocked128 (default all)
//                         (split: the split matvec with the backend's choices; matvec: the previous subgroup matvec)
//   MATVEC_CONFIGS=u2k4o4,u4k8o8   more split-matvec kernels, each named split-<config>: U strides
//                         loaded together, K in k slices, o outputs a subgroup (WebGpuBackendOptions.matvec*)
//   SPLIT_K=4             force the blocked kernels' K split (default: the backend's choice)
//   WORKGROUPS=264        the workgroups the blocked kernel's split K aims for
//   ITERS=20              timed matmuls per point
//   ROUNDS=1              rounds over the kernels per (shape, rows), interleaved; ms is their median
//   WARM_MS=0             run matmuls on each new weight buffer this long before timing (see below)
//   ROBUSTNESS=0          Dawn's bounds-checking transform off (DeviceOptions.robustness)
//   PROFILE=1             also GPU time per matmul from timestamp queries (gpuMs: every dispatch of
//                         the timed matmuls summed, / ITERS); each dispatch then runs in its own
//                         pass, which changes the wall time (ms). Timestamps are quantized unless
//                         KVC_DAWN_FLAGS=disable-dawn-features=timestamp_quantization.
/// <reference types="@webgpu/types" />
import { requestWebGpuDevice } from '../src/device.ts';
import { GpuWeight, WebGpuBackend, type WebGpuBackendOptions } from '../src/webgpu-backend.ts';

const PROFILE = process.env['PROFILE'] === '1';
const device = await requestWebGpuDevice({ robustness: process.env['ROBUSTNESS'] !== '0', timestamps: PROFILE });
setInterval(() => {}, 1000);
const env = process.env;
const shapes = (env['SHAPES'] ?? '4096x4096,14336x4096,4096x14336').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const rowsList = (env['ROWS'] ?? '32,48,64,96,128,193,256,384,512').split(',').map(Number);
const iters = Number(env['ITERS'] ?? 20);
const rounds = Number(env['ROUNDS'] ?? 1);
const warmMs = Number(env['WARM_MS'] ?? 0);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};
const blocked: WebGpuBackendOptions = {
  blockedMatmulMinRows: 1,
  ...(env['SPLIT_K'] ? { blockedMatmulSplitK: Number(env['SPLIT_K']) } : {}),
  ...(env['WORKGROUPS'] ? { blockedMatmulWorkgroups: Number(env['WORKGROUPS']) } : {}),
};
const matvecOnly: WebGpuBackendOptions = { blockedMatmul: false, tiledMatmulMinRows: 1 << 30 };
const splitConfigs = (env['MATVEC_CONFIGS'] ?? '').split(',').filter((c) => c !== '');
const allKernels: { name: string; options: WebGpuBackendOptions }[] = [
  { name: 'split', options: matvecOnly },
  ...splitConfigs.map((c) => {
    const m = /^u([124])k([1248])o([48])$/.exec(c);
    if (m === null) throw new Error(`MATVEC_CONFIGS: ${c} is not u<1|2|4>k<1|2|4|8>o<4|8>`);
    return {
      name: `split-${c}`,
      options: {
        ...matvecOnly,
        matvecUnroll: Number(m[1]) as 1 | 2 | 4,
        matvecSplitK: Number(m[2]) as 1 | 2 | 4 | 8,
        matvecOutputs: Number(m[3]) as 4 | 8,
      },
    };
  }),
  { name: 'matvec', options: { ...matvecOnly, splitMatvec: false } },
  { name: 'tiled32', options: { blockedMatmul: false, tiledMatmulMinRows: 1, tiledMatmulTileRows: 32 } },
  { name: 'tiled64', options: { blockedMatmul: false, tiledMatmulMinRows: 1, tiledMatmulTileRows: 64 } },
  { name: 'blocked', options: blocked },
  { name: 'blocked-notail', options: { ...blocked, blockedMatmulTailRows: 0 } },
  { name: 'blocked64', options: { ...blocked, blockedMatmulTileRows: 64 } },
  { name: 'blocked128', options: { ...blocked, blockedMatmulTileRows: 128 } },
];
const wanted = env['KERNELS']?.split(',');
const kernels = allKernels.filter((k) => wanted === undefined || wanted.includes(k.name) || k.name.startsWith('split-'));

/** W[j][i] and x[r][i]: small multiples of 1/8 and 1/16, so f32 sums of up to ~10^5 terms are exact. */
const wValue = (j: number, i: number) => (((j * 7 + i * 3) % 17) - 8) / 8;
const xValue = (r: number, i: number) => (((r * 5 + i * 11) % 13) - 6) / 16;
const f16Bits = (v: number) => {
  const bits = new DataView(new ArrayBuffer(2));
  bits.setFloat16(0, v, true);
  return bits.getUint16(0, true);
};
const halves = new Uint16Array(17).map((_, k) => f16Bits((k - 8) / 8));

/** Outputs compared with the host: a fixed spread over rows and columns. */
function samples(rows: number, outDim: number): [number, number][] {
  return Array.from({ length: 64 }, (_, s) => [(s * 37 + 5) % rows, (s * 977 + 11) % outDim] as [number, number]);
}

interface Point {
  readonly outDim: number;
  readonly inDim: number;
  readonly rows: number;
  readonly kernel: string;
  readonly tflops: number;
}
const points: Point[] = [];
for (const [outDim, inDim] of shapes) {
  const packed = new Uint32Array((outDim * inDim) / 2);
  for (let j = 0; j < outDim; j++) {
    for (let i = 0; i < inDim; i += 2) {
      const e = j * inDim + i;
      packed[e / 2] = (halves[(j * 7 + i * 3) % 17] as number) | ((halves[(j * 7 + (i + 1) * 3) % 17] as number) << 16);
    }
  }
  const wbuf = device.createBuffer({ size: outDim * inDim * 2, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(wbuf, 0, packed);
  const w = new GpuWeight('w', [outDim, inDim], wbuf, 'f16');
  const maxRows = Math.max(...rowsList);
  const xHost = new Float32Array(maxRows * inDim);
  for (let r = 0; r < maxRows; r++) for (let i = 0; i < inDim; i++) xHost[r * inDim + i] = xValue(r, i);
  // Every kernel's backend, with its own x and output, made before any timing.
  const runs = kernels.map((k) => {
    const backend = new WebGpuBackend(device, { ...k.options, profile: PROFILE });
    const x = backend.createBuffer(maxRows * inDim);
    backend.write(x, xHost);
    return { k, backend, x, out: backend.createBuffer(maxRows * outDim) };
  });
  const result = new Float32Array(maxRows * outDim);
  // A weight buffer just written ran slow for a while (the first kernel timed on each shape, in
  // calls of the fifteenth and seventeenth sessions): touch it for WARM_MS first.
  const warmUntil = performance.now() + warmMs;
  const first = runs[0];
  while (first !== undefined && performance.now() < warmUntil) {
    for (let i = 0; i < 20; i++) first.backend.matmul(first.out, first.x, w, 1);
    first.backend.flush();
    await device.queue.onSubmittedWorkDone();
  }
  for (const rows of rowsList) {
    // ROUNDS rounds over the kernels, interleaved, so no kernel owns a slow moment of the card.
    const times = runs.map(() => ({ ms: [] as number[], gpuMs: [] as number[], encodeMs: [] as number[], wrong: 0 }));
    for (let round = 0; round < rounds; round++) {
      for (const [n, { backend, x, out }] of runs.entries()) {
        // Warm up with as many dispatches as are timed: each uses its own uniform slot, and its
        // bind group is created on first use.
        for (let i = 0; i < iters; i++) backend.matmul(out, x, w, rows);
        backend.flush();
        await device.queue.onSubmittedWorkDone();
        if (PROFILE) await backend.readProfile();
        const t = performance.now();
        for (let i = 0; i < iters; i++) backend.matmul(out, x, w, rows);
        backend.flush();
        // Host time to record and submit (the GPU starts on the first submit).
        const encodeMs = (performance.now() - t) / iters;
        await device.queue.onSubmittedWorkDone();
        const ms = (performance.now() - t) / iters;
        const gpuMs = PROFILE ? (await backend.readProfile()).reduce((sum, d) => sum + d.ms, 0) / iters : 0;
        const tm = times[n] as (typeof times)[number];
        tm.ms.push(ms);
        tm.gpuMs.push(gpuMs);
        tm.encodeMs.push(encodeMs);
        if (round > 0) continue;
        await backend.read(out, result, 0, rows * outDim);
        for (const [r, j] of samples(rows, outDim)) {
          let s = 0;
          for (let i = 0; i < inDim; i++) s += xValue(r, i) * wValue(j, i);
          if (result[r * outDim + j] !== s) tm.wrong++;
        }
      }
    }
    for (const [n, { k, backend }] of runs.entries()) {
      const tm = times[n] as (typeof times)[number];
      const ms = median(tm.ms);
      const gpuMs = PROFILE ? median(tm.gpuMs) : null;
      const tflops = (2 * rows * outDim * inDim) / ms / 1e9;
      points.push({ outDim, inDim, rows, kernel: k.name, tflops });
      console.log(
        JSON.stringify({
          kind: 'matmul',
          kernel: k.name,
          outDim,
          inDim,
          rows,
          ms,
          msRounds: tm.ms,
          ...(gpuMs === null ? {} : { gpuMs, gpuMsRounds: tm.gpuMs, gpuWeightGBps: (outDim * inDim * 2) / gpuMs / 1e6 }),
          encodeMs: median(tm.encodeMs),
          tflops,
          weightGBps: (outDim * inDim * 2) / ms / 1e6,
          ...(k.name.startsWith('blocked') ? { plan: backend.blockedMatmulPlan(rows, outDim, inDim) } : {}),
          wrongSamples: tm.wrong,
        }),
      );
    }
  }
  for (const { backend } of runs) backend.destroyBuffers();
  wbuf.destroy();
}
// Per (shape, rows): the blocked kernel's default against the faster of the earlier kernels.
for (const [outDim, inDim] of shapes) {
  for (const rows of rowsList) {
    const here = points.filter((p) => p.outDim === outDim && p.inDim === inDim && p.rows === rows);
    const earlier = here.filter((p) => !p.kernel.startsWith('blocked')).sort((a, b) => b.tflops - a.tflops)[0];
    const ours = here.find((p) => p.kernel === 'blocked');
    if (earlier === undefined || ours === undefined) continue;
    console.log(
      JSON.stringify({
        kind: 'matmul-summary',
        outDim,
        inDim,
        rows,
        best: earlier.kernel,
        bestTflops: earlier.tflops,
        blockedTflops: ours.tflops,
        speedup: ours.tflops / earlier.tflops,
      }),
    );
  }
}
process.exit(0);
