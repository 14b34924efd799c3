/**
 * WGSL kernels of the WebGPU backend. Each kernel is a descriptor: a cache key made only of
 * compile-time facts (weight or KV dtype, head dim, group size, workgroup size) and the WGSL
 * source for those facts. Shapes, lengths and table sizes are per-dispatch uniforms, so one
 * compiled pipeline serves every step of every sequence.
 *
 * Packed f16: two halves per u32 (`pack2x16float`), because Dawn on NVIDIA exposes no
 * `shader-f16`; element e of a packed array is `unpack2x16float(a[e / 2])[e % 2]`.
 */

/**
 * How a buffer stores values. 'q8' (weights only): Q8_0 repacked for 4-byte loads, one
 * buffer holding first the int8 quants of every row, four per u32 ([rows][inDim / 4]), then
 * each 32-value block's scale as f32 bits ([rows][inDim / 32]), so a kernel finds the scales
 * at word rows * inDim / 4.
 */
export type StoreType = 'f32' | 'f16' | 'q8';

const built = new Map<string, KernelSource>();
/** Builds each kernel's source once per key; dispatches then look it up without allocating. */
export function memo(key: string, make: () => Omit<KernelSource, 'key'>): KernelSource {
  let k = built.get(key);
  if (k === undefined) {
    k = { key, ...make() };
    built.set(key, k);
  }
  return k;
}

export interface KernelSource {
  readonly key: string;
  readonly code: string;
  /** Threads per workgroup (x only). */
  readonly workgroupSize: number;
}

/** Reads element e of a weight/KV array of the given storage type as f32. */
function loader(name: string, array: string, type: StoreType): string {
  if (type === 'f32') return `fn ${name}(e: u32) -> f32 { return ${array}[e]; }`;
  if (type === 'f16') return `fn ${name}(e: u32) -> f32 { return unpack2x16float(${array}[e >> 1u])[e & 1u]; }`;
  // Q8_0 weights of a matmul (its uniform p names outDim and inDim): sign-extend the byte, scale by its block.
  return `fn ${name}(e: u32) -> f32 {
  let q = bitcast<i32>(${array}[e >> 2u] << (24u - 8u * (e & 3u))) >> 24u;
  return f32(q) * bitcast<f32>(${array}[p.outDim * p.inDim / 4u + e / 32u]);
}`;
}

/** WGSL that sets ${x}0, ${x}1 (vec4f) to 8 Q8_0 weights starting at element `e` (a multiple of 8) of W. */
function loadQ8x8(x: string, e: string): string {
  return `let qw${x} = (${e}) >> 2u;
        let qs${x} = bitcast<f32>(W[p.outDim * p.inDim / 4u + (${e}) / 32u]);
        let qa${x} = W[qw${x}];
        let qb${x} = W[qw${x} + 1u];
        let ${x}0 = vec4f(vec4i(bitcast<i32>(qa${x} << 24u), bitcast<i32>(qa${x} << 16u), bitcast<i32>(qa${x} << 8u), bitcast<i32>(qa${x})) >> vec4u(24u)) * qs${x};
        let ${x}1 = vec4f(vec4i(bitcast<i32>(qb${x} << 24u), bitcast<i32>(qb${x} << 16u), bitcast<i32>(qb${x} << 8u), bitcast<i32>(qb${x})) >> vec4u(24u)) * qs${x};`;
}

/**
 * WGSL that sets ${x}0, ${x}1 (vec4f) to the 8 weights of 8-weight step `step` of W, as the
 * vectorised matvec kernels bind it (see vecWeightType).
 */
function loadWeights8(weight: StoreType, x: string, step: string): string {
  if (weight === 'q8') return loadQ8x8(x, `8u * (${step})`);
  if (weight === 'f32') return `let ${x}0 = W[2u * (${step})]; let ${x}1 = W[2u * (${step}) + 1u];`;
  return `let wq${x} = W[${step}];
        let ${x}0 = vec4f(unpack2x16float(wq${x}.x), unpack2x16float(wq${x}.y));
        let ${x}1 = vec4f(unpack2x16float(wq${x}.z), unpack2x16float(wq${x}.w));`;
}

/** The binding type of a weight array in the vectorised matvec kernels. */
function vecWeightType(weight: StoreType): string {
  return weight === 'f16' ? 'array<vec4<u32>>' : weight === 'q8' ? 'array<u32>' : 'array<vec4f>';
}

function arrayType(type: StoreType): string {
  return type === 'f32' ? 'array<f32>' : 'array<u32>';
}

/**
 * A K/V pool split into chunk buffers of 2^shift slots each (WebGpuBackend.createKvCache):
 * a dispatch binds `window` consecutive chunks of K (and of V), starting at chunk
 * `pass * window`, and `passes` dispatches cover every chunk. `null` where the pool is one
 * buffer: the kernels are then exactly the unchunked ones.
 */
export interface KvChunking {
  readonly window: number;
  readonly passes: number;
  readonly shift: number;
}

function chunkKey(c: KvChunking | null): string {
  return c === null ? '' : `:c${c.window}x${c.passes}s${c.shift}`;
}

/** `count` storage bindings `${name}0..` numbered from `first`. */
function chunkBindings(name: string, first: number, count: number, access: 'read' | 'read_write', type: string): string {
  return Array.from({ length: count }, (_, i) => `@group(0) @binding(${first + i}) var<storage, ${access}> ${name}${i}: ${type};`).join(
    '\n',
  );
}

/**
 * fn ${fn}(c, i) -> ${ret}: element i of chunk binding c (WGSL has no binding arrays: a
 * switch over the window's fixed bindings; callers pick c once per key row).
 */
function chunkReader(fn: string, name: string, count: number, ret: string): string {
  if (count === 1) return `fn ${fn}(c: u32, i: u32) -> ${ret} { return ${name}0[i]; }`;
  const cases = Array.from({ length: count - 1 }, (_, k) => `case ${k}u: { return ${name}${k}[i]; }`).join(' ');
  return `fn ${fn}(c: u32, i: u32) -> ${ret} { switch c { ${cases} default: { return ${name}${count - 1}[i]; } } }`;
}

/** fn ${name}(c, e) -> f32: element e of a K/V row in chunk c, through ${reader} (see loader). */
function chunkLoader(name: string, reader: string, kv: StoreType): string {
  if (kv === 'f32') return `fn ${name}(c: u32, e: u32) -> f32 { return ${reader}(c, e); }`;
  return `fn ${name}(c: u32, e: u32) -> f32 { return unpack2x16float(${reader}(c, e >> 1u))[e & 1u]; }`;
}

/** fn ${fn}(c, i, x): element i of chunk binding c := x. */
function chunkWriter(fn: string, name: string, count: number, value: string): string {
  if (count === 1) return `fn ${fn}(c: u32, i: u32, x: ${value}) { ${name}0[i] = x; }`;
  const cases = Array.from({ length: count - 1 }, (_, k) => `case ${k}u: { ${name}${k}[i] = x; }`).join(' ');
  return `fn ${fn}(c: u32, i: u32, x: ${value}) { switch c { ${cases} default: { ${name}${count - 1}[i] = x; } } }`;
}

/** Flattened workgroup index for 2-D dispatches (x at most 65535 groups). */
export const FLAT_ID = 'let wid = wg.x + wg.y * nwg.x;';

export function embedKernel(table: StoreType): KernelSource {
  return memo(`embed:${table}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, dim: u32, vocab: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> table: ${arrayType(table)};
@group(0) @binding(3) var<storage, read> tokens: array<i32>;
${loader('loadT', 'table', table)}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  if (idx >= p.rows * p.dim) { return; }
  let r = idx / p.dim;
  let t = u32(max(tokens[r], 0));
  out[idx] = select(0.0, loadT(t * p.dim + idx % p.dim), t < p.vocab);
}`,
  }));
}

export function rmsNormKernel(): KernelSource {
  return memo('rmsnorm', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, dim: u32, eps: f32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let base = wg.x * p.dim;
  var ss = 0.0;
  for (var i = li; i < p.dim; i += 256u) { let v = x[base + i]; ss += v * v; }
  red[li] = ss;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] += red[li + s]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(red[0] / f32(p.dim) + p.eps);
  for (var i = li; i < p.dim; i += 256u) { out[base + i] = x[base + i] * scale * w[i]; }
}`,
  }));
}

/** Rows of x handled by one matmul workgroup. */
export const MATMUL_ROWS = 8;

/**
 * out[r][j] = Σ_i x[r][i] W[j][i] (+ b[j]). One workgroup of 64 threads per (output j, tile of
 * 8 rows): W's row j is read once per tile, coalesced; partial sums reduced in shared memory.
 */
export function matmulKernel(weight: StoreType, bias: boolean): KernelSource {
  const R = MATMUL_ROWS;
  const body =
    weight !== 'f16'
      ? `for (var i = li; i < p.inDim; i += 64u) {
      let wv = loadW(wrow + i);
      for (var rr = 0u; rr < ${R}u; rr++) { if (r0 + rr < p.rows) { acc[rr] += x[(r0 + rr) * p.inDim + i] * wv; } }
    }`
      : `for (var i2 = li; i2 < p.inDim / 2u; i2 += 64u) {
      let wv = unpack2x16float(W[(wrow >> 1u) + i2]);
      for (var rr = 0u; rr < ${R}u; rr++) {
        if (r0 + rr < p.rows) {
          let xb = (r0 + rr) * p.inDim + 2u * i2;
          acc[rr] += x[xb] * wv.x + x[xb + 1u] * wv.y;
        }
      }
    }`;
  return memo(`matmul:${weight}:${bias}`, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
struct P { rows: u32, inDim: u32, outDim: u32, total: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> W: ${arrayType(weight)};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}
${weight === 'f16' ? '' : loader('loadW', 'W', weight)}
var<workgroup> red: array<f32, ${64 * R}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let inRange = wid < p.total;
  let j = wid % p.outDim;
  let r0 = (wid / p.outDim) * ${R}u;
  let wrow = j * p.inDim;
  var acc: array<f32, ${R}>;
  if (inRange) {
    ${body}
  }
  for (var rr = 0u; rr < ${R}u; rr++) { red[rr * 64u + li] = acc[rr]; }
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (li < s) { for (var rr = 0u; rr < ${R}u; rr++) { red[rr * 64u + li] += red[rr * 64u + li + s]; } }
    workgroupBarrier();
  }
  if (inRange && li < ${R}u && r0 + li < p.rows) {
    out[(r0 + li) * p.outDim + j] = red[li * 64u]${bias ? ' + b[j]' : ''};
  }
}`,
  }));
}

/**
 * The matmul for up to R (1, 2, 4 or 8) rows per workgroup when inDim is a multiple of 8:
 * 64 threads per output j, each reading 8 weights (16 bytes of packed f16) and two vec4 of
 * each row of x per step, so W streams in 1 KiB coalesced runs; partial sums are reduced in
 * workgroup memory. Decode steps are bound by reading W once: this is their kernel.
 */
export function matvecKernel(weight: StoreType, bias: boolean, rowsPerGroup: 1 | 2 | 4 | 8): KernelSource {
  const R = rowsPerGroup;
  const loadW = loadWeights8(weight, 'w', 'wrow + i8');
  return memo(`matvec:${weight}:${bias}:${R}`, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
struct P { rows: u32, inDim: u32, outDim: u32, total: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4f>;
@group(0) @binding(3) var<storage, read> W: ${vecWeightType(weight)};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}
var<workgroup> red: array<f32, ${64 * R}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let inRange = wid < p.total;
  let j = wid % p.outDim;
  let r0 = (wid / p.outDim) * ${R}u;
  let steps = p.inDim / 8u;
  let wrow = j * steps;
  var acc: array<f32, ${R}>;
  if (inRange) {
    for (var i8 = li; i8 < steps; i8 += 64u) {
      ${loadW}
      for (var rr = 0u; rr < ${R}u; rr++) {
        if (r0 + rr < p.rows) {
          let xb = (r0 + rr) * (p.inDim / 4u) + 2u * i8;
          acc[rr] += dot(x[xb], w0) + dot(x[xb + 1u], w1);
        }
      }
    }
  }
  for (var rr = 0u; rr < ${R}u; rr++) { red[rr * 64u + li] = acc[rr]; }
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (li < s) { for (var rr = 0u; rr < ${R}u; rr++) { red[rr * 64u + li] += red[rr * 64u + li + s]; } }
    workgroupBarrier();
  }
  if (inRange && li < ${R}u && r0 + li < p.rows) {
    out[(r0 + li) * p.outDim + j] = red[li * 64u]${bias ? ' + b[j]' : ''};
  }
}`,
  }));
}

/** Outputs per workgroup of the subgroup matvec kernel (four per subgroup). */
export const MATVEC_SUBGROUP_OUTPUTS = 32;

/**
 * The matvec kernel for devices with subgroups (outDim a multiple of 4): each subgroup
 * computes four consecutive outputs for R rows, its lanes striding K 8 weights (16 bytes of
 * packed f16) at a time, so each x value loaded serves four weight rows; sums are reduced
 * with subgroupAdd: no workgroup memory, no barriers. Any subgroup size works.
 */
export function matvecSubgroupKernel(weight: StoreType, bias: boolean, rowsPerGroup: 1 | 2 | 4 | 8): KernelSource {
  const R = rowsPerGroup;
  const O = MATVEC_SUBGROUP_OUTPUTS;
  const J = [0, 1, 2, 3];
  const loadW = (u: number) => loadWeights8(weight, `w${u}`, `wrow + ${u}u * steps + i8`);
  return memo(`matvec-sg:${weight}:${bias}:${R}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
enable subgroups;
struct P { rows: u32, inDim: u32, outDim: u32, total: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4f>;
@group(0) @binding(3) var<storage, read> W: ${vecWeightType(weight)};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  ${FLAT_ID}
  let sg = li / sgs;
  let nsg = 256u / sgs;
  let steps = p.inDim / 8u;
  // A trip count uniform across the workgroup keeps subgroupAdd in uniform control flow.
  for (var k = 0u; k < max(1u, ${O / 4}u / nsg); k++) {
    let blk = sg + k * nsg;
    // Items are (row tile) * outDim + j; outDim % 4 == 0, so a block of four shares its tile.
    let item = wid * ${O}u + blk * 4u;
    let live = blk < ${O / 4}u && item < p.total;
    let j = min(item, p.total - 4u) % p.outDim;
    let r0 = (min(item, p.total - 4u) / p.outDim) * ${R}u;
    let wrow = j * steps;
    var acc: array<vec4f, ${R}>; // [row] (output 0..3)
    if (live) {
      for (var i8 = lane; i8 < steps; i8 += sgs) {
        ${J.map(loadW).join('\n        ')}
        for (var rr = 0u; rr < ${R}u; rr++) {
          if (r0 + rr < p.rows) {
            let xb = (r0 + rr) * (p.inDim / 4u) + 2u * i8;
            let x0 = x[xb];
            let x1 = x[xb + 1u];
            acc[rr] += vec4f(${J.map((u) => `dot(x0, w${u}0) + dot(x1, w${u}1)`).join(', ')});
          }
        }
      }
    }
    for (var rr = 0u; rr < ${R}u; rr++) {
      let total = subgroupAdd(acc[rr]);
      if (live && lane == 0u && r0 + rr < p.rows) {
        let o = (r0 + rr) * p.outDim + j;
        ${J.map((u) => `out[o + ${u}u] = total[${u}]${bias ? ` + b[j + ${u}u]` : ''};`).join('\n        ')}
      }
    }
  }
}`,
  }));
}

/** Output columns of a tiled-matmul workgroup. */
export const TILED_MATMUL_TILE = 64;
/** Batches of at least this many rows use the tiled matmul (below it, re-reading W per 8 rows in the matvec kernel is faster on an H100: BENCHMARKS.md). */
export const TILED_MATMUL_MIN_ROWS = 128;

/**
 * The same product for many rows (prefill, large decode batches): a TM x 64 output tile per
 * workgroup of 256 threads (TM = 32 or 64 rows), each thread TM/16 x 4 outputs (rows
 * ty + 16i, outputs tx + 16j, so neighbouring threads read neighbouring shared-memory words),
 * K in chunks of 32 staged in workgroup memory as f32 (W unpacked from f16 once per tile).
 * Shared arrays are [k][TM + 1] and [k][65]: the pad keeps the transposing stores off one
 * bank. TM = 32 doubles the workgroups for batches too small to fill the GPU at 64.
 */
export function tiledMatmulKernel(weight: StoreType, bias: boolean, tileRows: 32 | 64): KernelSource {
  const TM = tileRows;
  const RI = TM / 16;
  return memo(`matmul-tiled:${weight}:${bias}:${TM}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, inDim: u32, outDim: u32, colTiles: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> W: ${arrayType(weight)};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}
${loader('loadW', 'W', weight)}
const TM = ${TM}u;
var<workgroup> xs: array<f32, ${32 * (TM + 1)}>;
var<workgroup> ws: array<f32, ${32 * 65}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  // Workgroups past the last tile (2-D grid rounding) see r0 >= rows: they load zeros,
  // write nothing, and still reach every barrier.
  let r0 = (wid / p.colTiles) * TM;
  let c0 = (wid % p.colTiles) * 64u;
  let tx = li % 16u;
  let ty = li / 16u;
  var acc: array<array<f32, 4>, ${RI}>;
  for (var k0 = 0u; k0 < p.inDim; k0 += 32u) {
    for (var n = 0u; n < ${TM / 8}u; n++) {
      let e = li + 256u * n;
      let k = e % 32u;
      let rr = e / 32u;
      let kk = k0 + k;
      var xv = 0.0;
      if (r0 + rr < p.rows && kk < p.inDim) { xv = x[(r0 + rr) * p.inDim + kk]; }
      xs[k * (TM + 1u) + rr] = xv;
    }
    for (var n = 0u; n < 8u; n++) {
      let e = li + 256u * n;
      let k = e % 32u;
      let cc = e / 32u;
      let kk = k0 + k;
      var wv = 0.0;
      if (c0 + cc < p.outDim && kk < p.inDim) { wv = loadW((c0 + cc) * p.inDim + kk); }
      ws[k * 65u + cc] = wv;
    }
    workgroupBarrier();
    for (var k = 0u; k < 32u; k++) {
      var a: array<f32, ${RI}>;
      var w: array<f32, 4>;
      for (var i = 0u; i < ${RI}u; i++) { a[i] = xs[k * (TM + 1u) + ty + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { w[j] = ws[k * 65u + tx + 16u * j]; }
      for (var i = 0u; i < ${RI}u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], w[j], acc[i][j]); } }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${RI}u; i++) {
    let r = r0 + ty + 16u * i;
    for (var j = 0u; j < 4u; j++) {
      let c = c0 + tx + 16u * j;
      if (r < p.rows && c < p.outDim) { out[r * p.outDim + c] = acc[i][j]${bias ? ' + b[c]' : ''}; }
    }
  }
}`,
  }));
}

/**
 * WGSL statements: the 256 invocations of a workgroup find the largest of
 * `values[base .. base + n)` and its first index (ties go to the lower index; NaN never wins;
 * 0xffffffff when none is above -FLT_MAX). The maximum ends in `bestValues[0]`, its index in
 * `bestIndices[0]` (workgroup arrays of 256 f32 / u32). Shared by greedy and sampled selection.
 */
export function workgroupArgmaxWgsl(values: string, base: string, n: string, bestValues: string, bestIndices: string): string {
  return `  var argmaxV = bitcast<f32>(0xff7fffffu); // -FLT_MAX
  var argmaxI = 0xffffffffu;
  for (var i = li; i < ${n}; i += 256u) {
    let x = ${values}[${base} + i];
    if (x > argmaxV || (argmaxI == 0xffffffffu && x == argmaxV)) { argmaxV = x; argmaxI = i; }
  }
  ${bestValues}[li] = argmaxV;
  ${bestIndices}[li] = argmaxI;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) {
      let ov = ${bestValues}[li + s];
      let oi = ${bestIndices}[li + s];
      if (ov > ${bestValues}[li] || (ov == ${bestValues}[li] && oi < ${bestIndices}[li])) { ${bestValues}[li] = ov; ${bestIndices}[li] = oi; }
    }
    workgroupBarrier();
  }`;
}

/**
 * out[r] = argmax of logits row r (first index on ties; NaN never wins): one workgroup per
 * row, a strided scan per thread, then a tree over (value, index) pairs.
 */
export function argmaxKernel(): KernelSource {
  return memo('argmax', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, vocab: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<i32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
var<workgroup> bestV: array<f32, 256>;
var<workgroup> bestI: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let r = min(wid, p.rows - 1u);
  let base = r * p.vocab;
${workgroupArgmaxWgsl('logits', 'base', 'p.vocab', 'bestV', 'bestI')}
  if (li == 0u && wid < p.rows) { out[r] = select(0, i32(bestI[0]), bestI[0] != 0xffffffffu); }
}`,
  }));
}

/** Rotates pairs by a cos/sin table computed on the host in f64: table [position][half]. */
export function ropeKernel(interleaved: boolean): KernelSource {
  return memo(`rope:${interleaved}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, heads: u32, headDim: u32, half: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> cosT: array<f32>;
@group(0) @binding(4) var<storage, read> sinT: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  if (idx >= p.rows * p.heads * p.half) { return; }
  let i = idx % p.half;
  let rh = idx / p.half;
  let r = rh / p.heads;
  let base = rh * p.headDim;
  let a = ${interleaved ? 'base + 2u * i' : 'base + i'};
  let b = ${interleaved ? 'a + 1u' : 'a + p.half'};
  let t = u32(positions[r]) * p.half + i;
  let c = cosT[t];
  let s = sinT[t];
  let x0 = x[a];
  let x1 = x[b];
  x[a] = x0 * c - x1 * s;
  x[b] = x0 * s + x1 * c;
}`,
  }));
}

/**
 * out = a + b or silu(a) * b. `inPlace`: out is a itself (WebGPU forbids binding one buffer
 * both read-only and read-write in a dispatch), so a is read through the output binding.
 */
export function elementwiseKernel(op: 'add' | 'silu-mul', inPlace = false): KernelSource {
  const a = inPlace ? 'out' : 'a';
  const expr = op === 'add' ? `${a}[i] + b[i]` : `${a}[i] / (1.0 + exp(-${a}[i])) * b[i]`;
  return memo(`elementwise:${op}:${inPlace}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { n: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${inPlace ? '' : '@group(0) @binding(2) var<storage, read> a: array<f32>;'}
@group(0) @binding(${inPlace ? 2 : 3}) var<storage, read> b: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = wid * 256u + li;
  if (i < p.n) { out[i] = ${expr}; }
}`,
  }));
}

export function gatherRowsKernel(): KernelSource {
  return memo('gather-rows', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, dim: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  if (idx >= p.count * p.dim) { return; }
  out[idx] = x[u32(rows[idx / p.dim]) * p.dim + idx % p.dim];
}`,
  }));
}

/**
 * Writes K and V rows [rows][kvHeads][headDim] into their cache slots. f16: one thread per
 * pair of elements, packed into one u32. Chunked: the dispatch binds `window` chunks from
 * chunk p.pass * window and writes only the slots in them (one dispatch per pass).
 */
export function appendKvKernel(kv: StoreType, chunking: KvChunking | null = null): KernelSource {
  if (chunking !== null) return appendKvChunkedKernel(kv, chunking);
  const per = kv === 'f32' ? 1 : 2;
  const store =
    kv === 'f32'
      ? `K[slot * p.headDim + e] = k[src + e];
  V[slot * p.headDim + e] = v[src + e];`
      : `K[(slot * p.headDim + e) / 2u] = pack2x16float(vec2f(k[src + e], k[src + e + 1u]));
  V[(slot * p.headDim + e) / 2u] = pack2x16float(vec2f(v[src + e], v[src + e + 1u]));`;
  return memo(`append-kv:${kv}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, kvHeads: u32, headDim: u32, layer: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> K: ${arrayType(kv)};
@group(0) @binding(2) var<storage, read_write> V: ${arrayType(kv)};
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> slots: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  let per_row = p.headDim / ${per}u;
  if (idx >= p.rows * p.kvHeads * per_row) { return; }
  let e = (idx % per_row) * ${per}u;
  let rh = idx / per_row;
  let h = rh % p.kvHeads;
  let r = rh / p.kvHeads;
  let slot = u32(slots[(p.layer * p.kvHeads + h) * p.rows + r]);
  let src = rh * p.headDim;
  ${store}
}`,
  }));
}

function appendKvChunkedKernel(kv: StoreType, c: KvChunking): KernelSource {
  const per = kv === 'f32' ? 1 : 2;
  const W = c.window;
  const elem = kv === 'f32' ? 'f32' : 'u32';
  const value = (x: string) => (kv === 'f32' ? `${x}[src + e]` : `pack2x16float(vec2f(${x}[src + e], ${x}[src + e + 1u]))`);
  return memo(`append-kv:${kv}${chunkKey(c)}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, kvHeads: u32, headDim: u32, layer: u32, chunkPass: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
${chunkBindings('K', 1, W, 'read_write', `array<${elem}>`)}
${chunkBindings('V', 1 + W, W, 'read_write', `array<${elem}>`)}
@group(0) @binding(${1 + 2 * W}) var<storage, read> k: array<f32>;
@group(0) @binding(${2 + 2 * W}) var<storage, read> v: array<f32>;
@group(0) @binding(${3 + 2 * W}) var<storage, read> slots: array<i32>;
${chunkWriter('storeK', 'K', W, elem)}
${chunkWriter('storeV', 'V', W, elem)}
const SHIFT = ${c.shift}u;
const W = ${W}u;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  let per_row = p.headDim / ${per}u;
  if (idx >= p.rows * p.kvHeads * per_row) { return; }
  let e = (idx % per_row) * ${per}u;
  let rh = idx / per_row;
  let h = rh % p.kvHeads;
  let r = rh / p.kvHeads;
  let slot = u32(slots[(p.layer * p.kvHeads + h) * p.rows + r]);
  let c = (slot >> SHIFT) - p.chunkPass * W;
  if (c >= W) { return; }
  let local = slot & ((1u << SHIFT) - 1u);
  let src = rh * p.headDim;
  let o = (local * p.headDim + e) / ${per}u;
  storeK(c, o, ${value('k')});
  storeV(c, o, ${value('v')});
}`,
  }));
}

/** Keys per tile of the attention kernel. */
export const ATTENTION_TILE = 16;

/**
 * Paged attention, split-K: one workgroup of 64 threads per (row, kv-head, split). The
 * group's query heads share every K and V tile loaded from the head's own block table (each
 * K/V byte is read once for all of them), with an online softmax over the tiles of the
 * split's key range. Keys later than the row's position are masked. The split's partial
 * result (max, sum, unnormalised output) goes to `partials`; `attentionReduceKernel`
 * combines the splits. For recorded rows, raw scores go to `scores`
 * [recordedRow][heads][scoreStride] for the metric kernel.
 */
export function attentionKernel(kv: StoreType, headDim: number, group: number, chunking: KvChunking | null = null): KernelSource {
  const T = ATTENTION_TILE;
  const D = headDim;
  const G = group;
  const ACC = Math.max(1, Math.ceil((G * D) / 64));
  const c = chunking;
  // Chunked (see KvChunking): K0.., V0.. take the place of K and V, the later bindings shift,
  // keys outside this pass's chunks are masked, and each pass writes its own splits.
  const b0 = c === null ? 0 : 2 * c.window - 2;
  const kvBindings =
    c === null
      ? `@group(0) @binding(3) var<storage, read> K: ${arrayType(kv)};
@group(0) @binding(4) var<storage, read> V: ${arrayType(kv)};`
      : `${chunkBindings('K', 3, c.window, 'read', arrayType(kv))}
${chunkBindings('V', 3 + c.window, c.window, 'read', arrayType(kv))}`;
  const kvLoaders =
    c === null
      ? `${loader('loadK', 'K', kv)}
${loader('loadV', 'V', kv)}`
      : `${chunkReader('readK', 'K', c.window, kv === 'f32' ? 'f32' : 'u32')}
${chunkReader('readV', 'V', c.window, kv === 'f32' ? 'f32' : 'u32')}
${chunkLoader('loadK', 'readK', kv)}
${chunkLoader('loadV', 'readV', kv)}
const SHIFT = ${c.shift}u;
const W = ${c.window}u;
const PASSES = ${c.passes}u;`;
  // The element of a tile key's K/V row: its chunk (picked once per key) and offset there.
  const at = (k: string, e: string) =>
    c === null ? `${k} * D + ${e}` : `(${k} >> SHIFT) - p.pad1 * W, (${k} & ((1u << SHIFT) - 1u)) * D + ${e}`;
  const inPass = c === null ? '' : ' && (slot >> SHIFT) - p.pad1 * W < W';
  const splitIndex =
    c === null ? '(r * p.kvHeads + g) * p.splits + split' : '(r * p.kvHeads + g) * p.splits * PASSES + p.pad1 * p.splits + split';
  return memo(`attention:${kv}:${D}:${G}${chunkKey(c)}`, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
struct P {
  rows: u32, heads: u32, kvHeads: u32, maxSeqs: u32,
  maxBlocks: u32, blockSize: u32, layer: u32, scoreStride: u32,
  scale: f32, splits: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
${kvBindings}
@group(0) @binding(${5 + b0}) var<storage, read> tables: array<i32>;
@group(0) @binding(${6 + b0}) var<storage, read> lengths: array<i32>;
@group(0) @binding(${7 + b0}) var<storage, read> slotPos: array<i32>;
// rowInfo [rows][4]: sequence, position, recorded-row index (-1: not recorded), may-see-later-keys (unused here: always masks).
@group(0) @binding(${8 + b0}) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(${9 + b0}) var<storage, read_write> scores: array<f32>;
${kvLoaders}
const D = ${D}u;
const G = ${G}u;
const T = ${T}u;
const NEG_INF = -3.0e38;
var<workgroup> qs: array<f32, ${G * D}>;
var<workgroup> tile: array<f32, ${T * D}>;
var<workgroup> sc: array<f32, ${G * T}>;
var<workgroup> mx: array<f32, ${G}>;
var<workgroup> sm: array<f32, ${G}>;
var<workgroup> corr: array<f32, ${G}>;
var<workgroup> tslot: array<u32, ${T}>;
var<workgroup> tvalid: array<u32, ${T}>;
var<workgroup> wrange: vec2<u32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  let split = wid % p.splits;
  let rg = wid / p.splits;
  let r = min(rg / p.kvHeads, p.rows - 1u);
  let g = rg % p.kvHeads;
  let info = rowInfo[r];
  let seq = u32(info.x);
  let qPos = info.y;
  let hi = (p.layer * p.maxSeqs + seq) * p.kvHeads + g;
  let t0 = hi * p.maxBlocks;
  let rec = info.z;
  if (li == 0u) {
    var lo = 0u;
    var hiKey = 0u;
    if (rg < p.rows * p.kvHeads) {
      let len = u32(lengths[hi]);
      let chunk = (len + p.splits - 1u) / p.splits;
      lo = min(split * chunk, len);
      hiKey = min(lo + chunk, len);
    }
    wrange = vec2u(lo, hiKey);
  }
  for (var e = li; e < G * D; e += 64u) {
    qs[e] = q[(r * p.heads + g * G + e / D) * D + e % D] * p.scale;
  }
  if (li < G) { mx[li] = NEG_INF; sm[li] = 0.0; }
  var acc: array<f32, ${ACC}>;
  let range = workgroupUniformLoad(&wrange);
  for (var base = range.x; base < range.y; base += T) {
    if (li < T) {
      let i = base + li;
      var ok = 0u;
      var slot = 0u;
      if (i < range.y) {
        slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
        ok = select(0u, 1u, slotPos[slot] <= qPos${inPass});
      }
      tslot[li] = slot;
      tvalid[li] = ok;
    }
    workgroupBarrier();
    for (var e = li; e < T * D; e += 64u) {
      let k = e / D;
      tile[e] = select(0.0, loadK(${at('tslot[k]', 'e % D')}), tvalid[k] == 1u);
    }
    workgroupBarrier();
    for (var e = li; e < G * T; e += 64u) {
      let gq = e / T;
      let k = e % T;
      var s = NEG_INF;
      if (tvalid[k] == 1u) {
        s = 0.0;
        for (var d = 0u; d < D; d++) { s += qs[gq * D + d] * tile[k * D + d]; }
        if (rec >= 0) { scores[(u32(rec) * p.heads + g * G + gq) * p.scoreStride + base + k] = s; }
      }
      sc[e] = s;
    }
    workgroupBarrier();
    if (li < G) {
      var m = mx[li];
      for (var k = 0u; k < T; k++) { m = max(m, sc[li * T + k]); }
      var c = 1.0;
      if (mx[li] > NEG_INF) { c = exp(mx[li] - m); }
      var sum = 0.0;
      for (var k = 0u; k < T; k++) {
        let s = sc[li * T + k];
        var e = 0.0;
        if (s > NEG_INF) { e = exp(s - m); }
        sc[li * T + k] = e;
        sum += e;
      }
      sm[li] = sm[li] * c + sum;
      mx[li] = m;
      corr[li] = c;
    }
    workgroupBarrier();
    for (var e = li; e < T * D; e += 64u) {
      let k = e / D;
      tile[e] = select(0.0, loadV(${at('tslot[k]', 'e % D')}), tvalid[k] == 1u);
    }
    workgroupBarrier();
    for (var a = 0u; a < ${ACC}u; a++) {
      let e = li + a * 64u;
      if (e < G * D) {
        let gq = e / D;
        let d = e % D;
        var s = acc[a] * corr[gq];
        for (var k = 0u; k < T; k++) { s += sc[gq * T + k] * tile[k * D + d]; }
        acc[a] = s;
      }
    }
    workgroupBarrier();
  }
  if (rg >= p.rows * p.kvHeads) { return; }
  // partials [rows][kvHeads][splits][G][D + 2]: max, sum, then the unnormalised output.
  let pbase = (${splitIndex}) * G * (D + 2u);
  for (var a = 0u; a < ${ACC}u; a++) {
    let e = li + a * 64u;
    if (e < G * D) { partials[pbase + (e / D) * (D + 2u) + 2u + e % D] = acc[a]; }
  }
  if (li < G) {
    partials[pbase + li * (D + 2u)] = mx[li];
    partials[pbase + li * (D + 2u) + 1u] = sm[li];
  }
}`,
  }));
}

/**
 * The wide kernel's row load from a chunked pool: 8 values of key row `slot` (a pool slot)
 * into ${x}0, ${x}1, zero when `use` is false. The chunk is picked once per row load.
 */
function loadChunkedRow(kv: StoreType, P: number, buf: string, slot: string, use: string, x: string): string {
  const chunk = `select(0u, (${slot} >> SHIFT) - p.pad1 * W, ${use})`;
  const row = `select(0u, ${slot} & CHUNK_MASK, ${use})`;
  if (kv === 'f16') {
    return `let w${x} = read${buf}(${chunk}, ${row} * ${P}u + j);
      let ${x}0 = select(vec4f(), vec4f(unpack2x16float(w${x}.x), unpack2x16float(w${x}.y)), ${use});
      let ${x}1 = select(vec4f(), vec4f(unpack2x16float(w${x}.z), unpack2x16float(w${x}.w)), ${use});`;
  }
  return `let c${x} = ${chunk};
      let r${x} = ${row} * ${2 * P}u + 2u * j;
      let ${x}0 = select(vec4f(), read${buf}(c${x}, r${x}), ${use});
      let ${x}1 = select(vec4f(), read${buf}(c${x}, r${x} + 1u), ${use});`;
}

/** Keys of one split of the wide attention kernel: its scores stay in workgroup memory. */
export function wideAttentionSplitKeys(group: number): number {
  return Math.max(128, Math.min(512, Math.floor(2048 / group)));
}

/** Whether `wideAttentionKernel` serves this head dim and group size (else `attentionKernel`). */
export function wideAttentionSupports(headDim: number, group: number): boolean {
  return headDim % 8 === 0 && headDim <= 256 && group <= 16;
}

/**
 * Paged decode attention built for memory bandwidth: one workgroup of 256 threads per
 * (row, kv-head, split of at most S keys). Each key's K (then V) row is read by P = D/8
 * threads, 8 values (16 bytes of packed f16) each, so a workgroup streams whole 128-256 byte
 * rows with several keys in flight per thread; the group's G query heads use every loaded
 * byte. Pass 1 computes the split's scores into workgroup memory (partial dot products
 * reduced across the P threads of a key), a single softmax over the split follows (no
 * per-tile rescaling), pass 2 accumulates P·V in registers and reduces across key lanes.
 * Output, like `attentionKernel`: partials [rows][kvHeads][splits][G][D + 2] (max, sum,
 * unnormalised output) for `attentionReduceKernel`, and raw scores of recorded rows.
 */
export function wideAttentionKernel(kv: StoreType, headDim: number, group: number, chunking: KvChunking | null = null): KernelSource {
  const D = headDim;
  const G = group;
  const P = D / 8; // threads per key row
  const LANES = Math.floor(256 / P); // keys handled side by side
  const U = Math.max(1, Math.min(4, Math.floor(16 / G))); // keys per thread per pass-1 iteration
  const S = wideAttentionSplitKeys(G);
  const RED = Math.max(LANES * U * P * G, LANES * D, 256);
  // Per-thread state lives in named registers, every loop over query heads or keys unrolled
  // here: private arrays indexed in a loop may be placed in (slow) local memory.
  const gs = Array.from({ length: G }, (_, g) => g);
  const us = Array.from({ length: U }, (_, u) => u);
  const each = <T>(xs: T[], f: (x: T) => string, sep = '\n    ') => xs.map(f).join(sep);
  const c = chunking;
  // Loads 8 values of a key row into ${x}0, ${x}1 (vec4f), zero when `use` is false.
  // Chunked (see KvChunking): the row's chunk is picked once per key (tslot keeps the pool
  // slot), and keys outside this pass's chunks are MASKED in the prologue.
  const loadRow = (buf: string, slot: string, use: string, x: string) =>
    c !== null
      ? loadChunkedRow(kv, P, buf, slot, use, x)
      : kv === 'f16'
        ? `let w${x} = ${buf}[select(0u, ${slot}, ${use}) * ${P}u + j];
      let ${x}0 = select(vec4f(), vec4f(unpack2x16float(w${x}.x), unpack2x16float(w${x}.y)), ${use});
      let ${x}1 = select(vec4f(), vec4f(unpack2x16float(w${x}.z), unpack2x16float(w${x}.w)), ${use});`
        : `let ${x}0 = select(vec4f(), ${buf}[select(0u, ${slot}, ${use}) * ${2 * P}u + 2u * j], ${use});
      let ${x}1 = select(vec4f(), ${buf}[select(0u, ${slot}, ${use}) * ${2 * P}u + 2u * j + 1u], ${use});`;
  const vecType = kv === 'f16' ? 'array<vec4<u32>>' : 'array<vec4<f32>>';
  const b0 = c === null ? 0 : 2 * c.window - 2;
  const kvBindings =
    c === null
      ? `@group(0) @binding(3) var<storage, read> K: ${vecType};
@group(0) @binding(4) var<storage, read> V: ${vecType};`
      : `${chunkBindings('K', 3, c.window, 'read', vecType)}
${chunkBindings('V', 3 + c.window, c.window, 'read', vecType)}
${chunkReader('readK', 'K', c.window, kv === 'f16' ? 'vec4<u32>' : 'vec4f')}
${chunkReader('readV', 'V', c.window, kv === 'f16' ? 'vec4<u32>' : 'vec4f')}
const SHIFT = ${c.shift}u;
const CHUNK_MASK = ${2 ** c.shift - 1}u;
const W = ${c.window}u;
const PASSES = ${c.passes}u;`;
  const masked = c === null ? 'masking && slotPos[slot] > qPos' : '(masking && slotPos[slot] > qPos) || (slot >> SHIFT) - p.pad1 * W >= W';
  const splitIndex =
    c === null ? '(r * p.kvHeads + g) * p.splits + split' : '(r * p.kvHeads + g) * p.splits * PASSES + p.pad1 * p.splits + split';
  return memo(`attention-wide:${kv}:${D}:${G}${chunkKey(c)}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct Params {
  rows: u32, heads: u32, kvHeads: u32, maxSeqs: u32,
  maxBlocks: u32, blockSize: u32, layer: u32, scoreStride: u32,
  scale: f32, splits: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
${kvBindings}
@group(0) @binding(${5 + b0}) var<storage, read> tables: array<i32>;
@group(0) @binding(${6 + b0}) var<storage, read> lengths: array<i32>;
@group(0) @binding(${7 + b0}) var<storage, read> slotPos: array<i32>;
@group(0) @binding(${8 + b0}) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(${9 + b0}) var<storage, read_write> scores: array<f32>;
const D = ${D}u;
const G = ${G}u;
const P = ${P}u;
const LANES = ${LANES}u;
const U = ${U}u;
const S = ${S}u;
const MASKED = 0xffffffffu;
const NEG_INF = -3.0e38;
var<workgroup> sc: array<f32, ${G * S}>; // [G][S]: scores, then probabilities
var<workgroup> tslot: array<u32, ${S}>; // slot of each key of the split, MASKED if not attended
var<workgroup> red: array<f32, ${RED}>;
var<workgroup> stat: array<f32, ${2 * G}>; // max, sum per query head
var<workgroup> wrange: vec2<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  let split = wid % p.splits;
  let rg = wid / p.splits;
  let live = rg < p.rows * p.kvHeads;
  let r = min(rg / p.kvHeads, p.rows - 1u);
  let g = rg % p.kvHeads;
  let info = rowInfo[r];
  let qPos = info.y;
  let rec = info.z;
  let hi = (p.layer * p.maxSeqs + u32(info.x)) * p.kvHeads + g;
  let t0 = hi * p.maxBlocks;
  if (li == 0u) {
    var lo = 0u;
    var hiKey = 0u;
    if (live) {
      let len = u32(lengths[hi]);
      let chunk = (len + p.splits - 1u) / p.splits;
      lo = min(split * chunk, len);
      hiKey = min(lo + chunk, len);
    }
    wrange = vec2u(lo, hiKey);
  }
  let range = workgroupUniformLoad(&wrange);
  let n = range.y - range.x;
  let lane = li / P;
  let j = li % P;
  let working = lane < LANES;
  // This thread's 8 dims of the group's G (scaled) queries.
  let qb = (r * p.heads + g * G) * D + min(j, P - 1u) * 8u;
  ${each(
    gs,
    (q) => `let q${q}a = vec4f(q[qb + ${q * D}u], q[qb + ${q * D + 1}u], q[qb + ${q * D + 2}u], q[qb + ${q * D + 3}u]) * p.scale;
  let q${q}b = vec4f(q[qb + ${q * D + 4}u], q[qb + ${q * D + 5}u], q[qb + ${q * D + 6}u], q[qb + ${q * D + 7}u]) * p.scale;`,
    '\n  ',
  )}
  // Prologue: every key's slot (MASKED where the key is later than the query) in workgroup
  // memory, looked up by all threads at once, so the passes below wait on one global read
  // per key (its K or V row). rowInfo.w says whether this row can see later keys at all
  // (another row of its sequence later in the same step); if not, positions are not read.
  let masking = info.w != 0;
  for (var t = li; t < n; t += 256u) {
    let i = range.x + t;
    let slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
    tslot[t] = select(slot, MASKED, ${masked});
  }
  workgroupBarrier();
  // Pass 1: scores of the split's keys; all U keys' rows are fetched before any is used.
  for (var base = 0u; base < n; base += LANES * U) {
    ${each(
      us,
      (u) => `let key${u} = base + ${u}u * LANES + lane;
    let slot${u} = select(MASKED, tslot[min(key${u}, S - 1u)], working && key${u} < n);
    let ok${u} = slot${u} != MASKED;`,
    )}
    ${each(us, (u) => loadRow('K', `slot${u}`, `ok${u}`, `k${u}`))}
    if (working) {
      ${each(us, (u) => each(gs, (q) => `red[((${u}u * LANES + lane) * P + j) * G + ${q}u] = dot(q${q}a, k${u}0) + dot(q${q}b, k${u}1);`, '\n      '), '\n      ')}
    }
    workgroupBarrier();
    for (var e = li; e < LANES * U * G; e += 256u) {
      let tt = e / G;
      let gq = e % G;
      let t = base + tt;
      if (t < n) {
        var s = 0.0;
        for (var jj = 0u; jj < P; jj++) { s += red[(tt * P + jj) * G + gq]; }
        let ok = tslot[t] != MASKED;
        sc[gq * S + t] = select(NEG_INF, s, ok);
        if (ok && rec >= 0) { scores[(u32(rec) * p.heads + g * G + gq) * p.scoreStride + range.x + t] = s; }
      }
    }
    workgroupBarrier();
  }
  // Softmax over the split: 256 / G threads per query head, then one thread per head.
  let per = 256u / G;
  let mine = li / per;
  let lt = li % per;
  var m = NEG_INF;
  if (mine < G) { for (var t = lt; t < n; t += per) { m = max(m, sc[mine * S + t]); } }
  red[li] = m;
  workgroupBarrier();
  if (li < G) {
    var mm = NEG_INF;
    for (var k = 0u; k < per; k++) { mm = max(mm, red[li * per + k]); }
    stat[2u * li] = mm;
  }
  workgroupBarrier();
  var sum = 0.0;
  if (mine < G) {
    let mm = stat[2u * mine];
    for (var t = lt; t < n; t += per) {
      let s = sc[mine * S + t];
      let e = select(0.0, exp(s - mm), s > NEG_INF);
      sc[mine * S + t] = e;
      sum += e;
    }
  }
  red[li] = sum;
  workgroupBarrier();
  if (li < G) {
    var ss = 0.0;
    for (var k = 0u; k < per; k++) { ss += red[li * per + k]; }
    stat[2u * li + 1u] = ss;
  }
  workgroupBarrier();
  // Pass 2: P·V, each lane over every LANES-th key (four at a time), then summed across lanes.
  ${each(
    gs,
    (q) => `var acc${q}a = vec4f();
  var acc${q}b = vec4f();`,
    '\n  ',
  )}
  if (working) {
    for (var t = lane; t < n; t += 4u * LANES) {
      ${each(
        [0, 1, 2, 3],
        (u) => `let tv${u} = t + ${u}u * LANES;
      let sv${u} = select(MASKED, tslot[min(tv${u}, S - 1u)], tv${u} < n);
      let use${u} = sv${u} != MASKED;`,
        '\n      ',
      )}
      ${each([0, 1, 2, 3], (u) => loadRow('V', `sv${u}`, `use${u}`, `v${u}`), '\n      ')}
      ${each(
        [0, 1, 2, 3],
        (u) => `if (use${u}) {
        ${each(
          gs,
          (q) => `let p${q}_${u} = sc[${q}u * S + tv${u}];
        acc${q}a += p${q}_${u} * v${u}0;
        acc${q}b += p${q}_${u} * v${u}1;`,
          '\n        ',
        )}
      }`,
        '\n      ',
      )}
    }
  }
  let pbase = (${splitIndex}) * G * (D + 2u);
  ${each(
    gs,
    (q) => `if (working) {
    let o = lane * D + j * 8u;
    red[o] = acc${q}a.x; red[o + 1u] = acc${q}a.y; red[o + 2u] = acc${q}a.z; red[o + 3u] = acc${q}a.w;
    red[o + 4u] = acc${q}b.x; red[o + 5u] = acc${q}b.y; red[o + 6u] = acc${q}b.z; red[o + 7u] = acc${q}b.w;
  }
  workgroupBarrier();
  if (live) {
    for (var d = li; d < D; d += 256u) {
      var s = 0.0;
      for (var l = 0u; l < LANES; l++) { s += red[l * D + d]; }
      partials[pbase + ${q}u * (D + 2u) + 2u + d] = s;
    }
  }
  workgroupBarrier();`,
    '\n  ',
  )}
  if (live && li < G) {
    partials[pbase + li * (D + 2u)] = stat[2u * li];
    partials[pbase + li * (D + 2u) + 1u] = stat[2u * li + 1u];
  }
}`,
  }));
}

/** Query vectors (rows x the group's query heads) per workgroup of `prefillAttentionKernel`. */
export const PREFILL_QUERIES = 64;

/** Keys per K/V tile of `prefillAttentionKernel`: the tile (f32) stays within 8 KiB of workgroup memory. */
export function prefillKeyTile(headDim: number): number {
  return Math.max(4, Math.min(64, Math.floor(2048 / headDim)));
}

/**
 * Whether `prefillAttentionKernel` serves this head dim (query and accumulator live in each
 * thread's registers, the key tile within 8 KiB) and group size (a query tile holds whole groups).
 */
export function prefillAttentionSupports(headDim: number, group: number): boolean {
  return headDim <= 256 && group >= 1 && group <= PREFILL_QUERIES && PREFILL_QUERIES % group === 0;
}

/**
 * Tiled causal attention for many rows of ONE sequence (a prefill chunk), unchunked pool
 * only. One workgroup of 64 threads per (query tile, kv-head): the tile is 64 / G
 * consecutive rows x the G query heads of the kv-head, one query vector per thread (query
 * and output accumulator in registers). Key tiles of KT keys are staged once in workgroup
 * memory from the head's block table and shared by all 64 query vectors, so each K/V byte
 * is read once per query tile instead of once per row; each thread keeps an online softmax.
 * Keys whose slot position is later than the row's position are masked (slot positions,
 * not logical indices: heads are ragged after compaction); key tiles later than every row
 * of the query tile are skipped. Writes the normalised output directly (no reduction), and
 * for recorded rows the raw scores [recordedRow][heads][scoreStride] and the softmax max and
 * sum [recordedRow][heads][2], in the same form as attentionKernel + attentionReduceKernel
 * leave them for the metric kernel.
 */
export function prefillAttentionKernel(kv: StoreType, headDim: number, group: number): KernelSource {
  const D = headDim;
  const G = group;
  const KT = prefillKeyTile(D);
  const QR = PREFILL_QUERIES / G;
  return memo(`prefill-attention:${kv}:${D}:${G}:q${QR}:k${KT}`, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
struct P {
  rows: u32, heads: u32, kvHeads: u32, maxSeqs: u32,
  maxBlocks: u32, blockSize: u32, layer: u32, scoreStride: u32,
  scale: f32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> p: P;
// out, q [rows][heads][D].
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> K: ${arrayType(kv)};
@group(0) @binding(4) var<storage, read> V: ${arrayType(kv)};
@group(0) @binding(5) var<storage, read> tables: array<i32>;
@group(0) @binding(6) var<storage, read> lengths: array<i32>;
@group(0) @binding(7) var<storage, read> slotPos: array<i32>;
// rowInfo [rows][4]: sequence, position, recorded-row index (-1: not recorded), unused.
@group(0) @binding(8) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(9) var<storage, read_write> scores: array<f32>;
@group(0) @binding(10) var<storage, read_write> stats: array<f32>;
${loader('loadK', 'K', kv)}
${loader('loadV', 'V', kv)}
const D = ${D}u;
const G = ${G}u;
const QR = ${QR}u;
const KT = ${KT}u;
const NEG_INF = -3.0e38;
var<workgroup> tile: array<f32, ${KT * D}>;
var<workgroup> tslot: array<u32, ${KT}>;
// Key position, or i32 max for keys past the head's length.
var<workgroup> tpos: array<i32, ${KT}>;
// (head length, latest position of the query tile).
var<workgroup> wrange: vec2<i32>;
var<workgroup> wuse: u32;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  let g = wid % p.kvHeads;
  let r0 = (wid / p.kvHeads) * QR;
  let r = r0 + li / G;
  let live = r < p.rows;
  let rr = min(r, p.rows - 1u);
  let h = g * G + li % G;
  let info = rowInfo[rr];
  let qPos = info.y;
  let rec = select(-1, info.z, live);
  // Every row of the dispatch is of one sequence: the tile's first row names it.
  let seq = u32(rowInfo[min(r0, p.rows - 1u)].x);
  let hi = (p.layer * p.maxSeqs + seq) * p.kvHeads + g;
  let t0 = hi * p.maxBlocks;
  if (li == 0u) {
    var latest = -2147483647;
    if (r0 < p.rows) {
      for (var k = r0; k < min(r0 + QR, p.rows); k++) { latest = max(latest, rowInfo[k].y); }
    }
    wrange = vec2i(select(0, lengths[hi], r0 < p.rows), latest);
  }
  var qv: array<f32, ${D}>;
  var acc: array<f32, ${D}>;
  var sc: array<f32, ${KT}>;
  for (var d = 0u; d < D; d++) {
    qv[d] = q[(rr * p.heads + h) * D + d] * p.scale;
    acc[d] = 0.0;
  }
  var m = NEG_INF;
  var l = 0.0;
  let range = workgroupUniformLoad(&wrange);
  let len = u32(range.x);
  for (var base = 0u; base < len; base += KT) {
    if (li < KT) {
      let i = base + li;
      var slot = 0u;
      var pos = 2147483647;
      if (i < len) {
        slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
        pos = slotPos[slot];
      }
      tslot[li] = slot;
      tpos[li] = pos;
    }
    workgroupBarrier();
    if (li == 0u) {
      var seen = 0u;
      for (var k = 0u; k < KT; k++) { seen = select(seen, 1u, tpos[k] <= range.y); }
      wuse = seen;
    }
    // Skip key tiles no row of the query tile may see (uniform: read through the barrier).
    if (workgroupUniformLoad(&wuse) == 0u) { continue; }
    for (var e = li; e < KT * D; e += 64u) {
      let k = e / D;
      tile[e] = select(0.0, loadK(tslot[k] * D + e % D), tpos[k] <= range.y);
    }
    workgroupBarrier();
    var mNew = m;
    for (var k = 0u; k < KT; k++) {
      var s = NEG_INF;
      if (live && tpos[k] <= qPos) {
        s = 0.0;
        for (var d = 0u; d < D; d++) { s += qv[d] * tile[k * D + d]; }
        if (rec >= 0) { scores[(u32(rec) * p.heads + h) * p.scoreStride + base + k] = s; }
      }
      sc[k] = s;
      mNew = max(mNew, s);
    }
    var c = 1.0;
    if (m > NEG_INF) { c = exp(m - mNew); }
    var sum = 0.0;
    for (var k = 0u; k < KT; k++) {
      var e = 0.0;
      if (sc[k] > NEG_INF) { e = exp(sc[k] - mNew); }
      sc[k] = e;
      sum += e;
    }
    l = l * c + sum;
    m = mNew;
    workgroupBarrier();
    for (var e = li; e < KT * D; e += 64u) {
      let k = e / D;
      tile[e] = select(0.0, loadV(tslot[k] * D + e % D), tpos[k] <= range.y);
    }
    workgroupBarrier();
    for (var d = 0u; d < D; d++) {
      var a = acc[d] * c;
      for (var k = 0u; k < KT; k++) { a += sc[k] * tile[k * D + d]; }
      acc[d] = a;
    }
    workgroupBarrier();
  }
  if (!live) { return; }
  for (var d = 0u; d < D; d++) { out[(r * p.heads + h) * D + d] = select(0.0, acc[d] / l, l > 0.0); }
  if (rec >= 0) {
    stats[(u32(rec) * p.heads + h) * 2u] = m;
    stats[(u32(rec) * p.heads + h) * 2u + 1u] = l;
  }
}`,
  }));
}

/**
 * Combines the splits of `attentionKernel`: one thread per output element of (row, head);
 * out = Σ_s acc_s · e^(m_s - M) / Σ_s l_s · e^(m_s - M). Writes the softmax max and sum of
 * recorded rows to `stats` [recordedRow][heads][2] for the metric kernel.
 */
export function attentionReduceKernel(headDim: number): KernelSource {
  const D = headDim;
  return memo(`attention-reduce:${D}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, heads: u32, kvHeads: u32, splits: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
const D = ${D}u;
const NEG_INF = -3.0e38;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  if (idx >= p.rows * p.heads * D) { return; }
  let d = idx % D;
  let rh = idx / D;
  let h = rh % p.heads;
  let r = rh / p.heads;
  let G = p.heads / p.kvHeads;
  let g = h / G;
  let gq = h % G;
  var M = NEG_INF;
  for (var s = 0u; s < p.splits; s++) {
    M = max(M, partials[((r * p.kvHeads + g) * p.splits + s) * G * (D + 2u) + gq * (D + 2u)]);
  }
  var L = 0.0;
  var acc = 0.0;
  for (var s = 0u; s < p.splits; s++) {
    let o = ((r * p.kvHeads + g) * p.splits + s) * G * (D + 2u) + gq * (D + 2u);
    let m = partials[o];
    if (m > NEG_INF) {
      let w = exp(m - M);
      L += partials[o + 1u] * w;
      acc += partials[o + 2u + d] * w;
    }
  }
  out[idx] = select(0.0, acc / L, L > 0.0);
  let rec = rowInfo[r].z;
  if (d == 0u && rec >= 0) {
    stats[(u32(rec) * p.heads + h) * 2u] = M;
    stats[(u32(rec) * p.heads + h) * 2u + 1u] = L;
  }
}`,
  }));
}

/**
 * Adds recorded attention to the per-slot metric, race-free: one thread per (row group,
 * kv-head, logical key), where a row group is a run of recorded rows of ONE sequence (a
 * prefill window, or a single decode row); the thread sums over the group's rows.
 * groupRows Int32 [groupCount + 1 + recorded]: where each group starts in the row list, then
 * the row list (row numbers into rowInfo).
 */
export function metricKernel(): KernelSource {
  return memo('metric', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P {
  groupCount: u32, heads: u32, kvHeads: u32, maxSeqs: u32,
  maxBlocks: u32, blockSize: u32, layer: u32, scoreStride: u32,
  maxLen: u32,
}
// One row's metric settings (its sequence's policy): how a probability counts, the factor on
// the group's sum, and how many positions before the query keys go unrecorded.
struct RowMetric { groupScale: f32, square: u32, metricBuffer: i32, unused: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(2) var<storage, read> scores: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
// groups [groupCount + 1] then the row list: group n's rows are rowList[groups[n] .. groups[n + 1]).
@group(0) @binding(4) var<storage, read> groupRows: array<i32>;
@group(0) @binding(5) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(6) var<storage, read> tables: array<i32>;
@group(0) @binding(7) var<storage, read> lengths: array<i32>;
@group(0) @binding(8) var<storage, read> slotPos: array<i32>;
// [rows], indexed by step row like rowInfo.
@group(0) @binding(9) var<storage, read> rowMetric: array<RowMetric>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  let idx = wid * 256u + li;
  if (idx >= p.groupCount * p.kvHeads * p.maxLen) { return; }
  let i = idx % p.maxLen;
  let gh = idx / p.maxLen;
  let g = gh % p.kvHeads;
  let grp = gh / p.kvHeads;
  let listStart = p.groupCount + 1u;
  let first = u32(groupRows[grp]);
  let last = u32(groupRows[grp + 1u]);
  let seq = u32(rowInfo[groupRows[listStart + first]].x);
  let hi = (p.layer * p.maxSeqs + seq) * p.kvHeads + g;
  if (i >= u32(lengths[hi])) { return; }
  let slot = u32(tables[hi * p.maxBlocks + i / p.blockSize]) * p.blockSize + i % p.blockSize;
  let kpos = slotPos[slot];
  let group = p.heads / p.kvHeads;
  var add = 0.0;
  for (var n = first; n < last; n++) {
    let row = groupRows[listStart + n];
    let info = rowInfo[row];
    let m = rowMetric[row];
    if (info.y - kpos < m.metricBuffer || kpos > info.y) { continue; }
    let rec = u32(info.z);
    var rowAdd = 0.0;
    for (var gq = 0u; gq < group; gq++) {
      let h = g * group + gq;
      let o = (rec * p.heads + h) * 2u;
      let prob = exp(scores[(rec * p.heads + h) * p.scoreStride + i] - stats[o]) / stats[o + 1u];
      rowAdd += select(prob, prob * prob, m.square == 1u);
    }
    add += rowAdd * m.groupScale;
  }
  metrics[slot] += add;
}`,
  }));
}

/** Executes cache moves dst := src for K, V (headDim elements each) and the metric. */
export function movesKernel(kv: StoreType): KernelSource {
  const words = kv === 'f32' ? 'p.headDim' : 'p.headDim / 2u';
  return memo(`moves:${kv}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, headDim: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> K: ${arrayType(kv)};
@group(0) @binding(2) var<storage, read_write> V: ${arrayType(kv)};
@group(0) @binding(3) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(4) var<storage, read> src: array<i32>;
@group(0) @binding(5) var<storage, read> dst: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  let w = ${words};
  if (idx >= p.count * (w + 1u)) { return; }
  let m = idx / (w + 1u);
  let e = idx % (w + 1u);
  let s = u32(src[m]);
  let d = u32(dst[m]);
  if (e == w) { metrics[d] = metrics[s]; return; }
  K[d * w + e] = K[s * w + e];
  V[d * w + e] = V[s * w + e];
}`,
  }));
}

/**
 * Cache moves in a chunked pool, in two steps. A move's source and destination may sit in
 * chunks no one dispatch can bind together (and binding one chunk twice, writable, is not
 * allowed), so every source of a batch is read before any destination is written:
 *   gather:  the K and V rows of moves [p.offset, p.offset + p.count) whose source lies in
 *            this pass's chunks -> scratch [p.count][2][words] (K row, then V row);
 *   scatter: scratch rows -> their destinations in this pass's chunks.
 */
function movesChunkKernel(kv: StoreType, c: KvChunking, step: 'gather' | 'scatter'): KernelSource {
  const elem = kv === 'f32' ? 'f32' : 'u32';
  const W = c.window;
  const gather = step === 'gather';
  const pool = gather ? 'read' : 'read_write';
  return memo(`moves-${step}:${kv}${chunkKey(c)}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, words: u32, chunkPass: u32, offset: u32 }
@group(0) @binding(0) var<uniform> p: P;
${chunkBindings('K', 1, W, pool, `array<${elem}>`)}
${chunkBindings('V', 1 + W, W, pool, `array<${elem}>`)}
@group(0) @binding(${1 + 2 * W}) var<storage, read> slotOf: array<i32>;
@group(0) @binding(${2 + 2 * W}) var<storage, ${gather ? 'read_write' : 'read'}> scratch: array<${elem}>;
${gather ? chunkReader('readK', 'K', W, elem) : chunkWriter('storeK', 'K', W, elem)}
${gather ? chunkReader('readV', 'V', W, elem) : chunkWriter('storeV', 'V', W, elem)}
const SHIFT = ${c.shift}u;
const W = ${W}u;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  if (idx >= p.count * p.words) { return; }
  let m = idx / p.words;
  let e = idx % p.words;
  let s = u32(slotOf[p.offset + m]); // the move's source (gather) or destination (scatter)
  let ch = (s >> SHIFT) - p.chunkPass * W;
  if (ch >= W) { return; }
  let o = (s & ((1u << SHIFT) - 1u)) * p.words + e;
${
  gather
    ? `  scratch[2u * m * p.words + e] = readK(ch, o);
  scratch[(2u * m + 1u) * p.words + e] = readV(ch, o);`
    : `  storeK(ch, o, scratch[2u * m * p.words + e]);
  storeV(ch, o, scratch[(2u * m + 1u) * p.words + e]);`
}
}`,
  }));
}

/** Chunked cache moves, step 1: sources -> scratch (see movesChunkKernel). Bindings: K chunks, V chunks, src, scratch. */
export function movesGatherKernel(kv: StoreType, c: KvChunking): KernelSource {
  return movesChunkKernel(kv, c, 'gather');
}

/** Chunked cache moves, step 2: scratch -> destinations (see movesChunkKernel). Bindings: K chunks, V chunks, dst, scratch. */
export function movesScatterKernel(kv: StoreType, c: KvChunking): KernelSource {
  return movesChunkKernel(kv, c, 'scatter');
}

/** metrics[dst[i]] = metrics[src[i]] for i < count: the metric part of cache moves in a chunked pool. */
export function metricMovesKernel(): KernelSource {
  return memo('metric-moves', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<i32>;
@group(0) @binding(3) var<storage, read> dst: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = wid * 256u + li;
  if (i < p.count) { metrics[u32(dst[i])] = metrics[u32(src[i])]; }
}`,
  }));
}

/** metrics[slots[i]] = values[i]: uploads initial metrics of new slots. */
export function scatterKernel(type: 'f32' | 'i32' = 'f32'): KernelSource {
  return memo(`scatter:${type}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> metrics: array<${type}>;
@group(0) @binding(2) var<storage, read> slots: array<i32>;
@group(0) @binding(3) var<storage, read> values: array<${type}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = wid * 256u + li;
  if (i < p.count) { metrics[u32(slots[i])] = values[i]; }
}`,
  }));
}

// ---------------------------------------------------------------------------------------
// Compaction moves made on the device (WebGpuBackend.compactEvictions). K and V rows are
// copied as raw 32-bit words (f16 pairs or f32 alike), `vec` words at a time (4 where a row's
// words divide by 4). A compaction never moves into a slot that is also a source, so every
// move runs in parallel.

/** The word type of a K/V row copied `vec` words at a time. */
function rowWordType(vec: 1 | 4): string {
  return vec === 4 ? 'vec4<u32>' : 'u32';
}

/** K and V moves dst := src of moves [p.offset, p.offset + p.count) in a pool of one buffer each. */
export function compactMovesKernel(vec: 1 | 4): KernelSource {
  const T = rowWordType(vec);
  return memo(`compact-moves:v${vec}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, words: u32, p2: u32, offset: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> K: array<${T}>;
@group(0) @binding(2) var<storage, read_write> V: array<${T}>;
@group(0) @binding(3) var<storage, read> src: array<i32>;
@group(0) @binding(4) var<storage, read> dst: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  let n = p.words / ${vec}u;
  if (idx >= p.count * n) { return; }
  let m = p.offset + idx / n;
  let e = idx % n;
  let s = u32(src[m]) * n + e;
  let d = u32(dst[m]) * n + e;
  K[d] = K[s];
  V[d] = V[s];
}`,
  }));
}

/**
 * K and V moves of one window pass of a chunked pool, for moves whose source and destination
 * both lie in the pass's chunks (the compaction sorts its moves by window: see
 * moveBucketKernel). Bindings: K chunks, V chunks (read-write), src, dst.
 */
export function movesDirectKernel(c: KvChunking, vec: 1 | 4): KernelSource {
  const T = rowWordType(vec);
  const W = c.window;
  return memo(`moves-direct:v${vec}${chunkKey(c)}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, words: u32, chunkPass: u32, offset: u32 }
@group(0) @binding(0) var<uniform> p: P;
${chunkBindings('K', 1, W, 'read_write', `array<${T}>`)}
${chunkBindings('V', 1 + W, W, 'read_write', `array<${T}>`)}
@group(0) @binding(${1 + 2 * W}) var<storage, read> src: array<i32>;
@group(0) @binding(${2 + 2 * W}) var<storage, read> dst: array<i32>;
${chunkReader('readK', 'K', W, T)}
${chunkReader('readV', 'V', W, T)}
${chunkWriter('storeK', 'K', W, T)}
${chunkWriter('storeV', 'V', W, T)}
const SHIFT = ${c.shift}u;
const W = ${W}u;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let idx = wid * 256u + li;
  let n = p.words / ${vec}u;
  if (idx >= p.count * n) { return; }
  let m = p.offset + idx / n;
  let e = idx % n;
  let s = u32(src[m]);
  let d = u32(dst[m]);
  let cs = (s >> SHIFT) - p.chunkPass * W;
  let cd = (d >> SHIFT) - p.chunkPass * W;
  if (cs >= W || cd >= W) { return; }
  let mask = (1u << SHIFT) - 1u;
  let os = (s & mask) * n + e;
  let od = (d & mask) * n + e;
  storeK(cd, od, readK(cs, os));
  storeV(cd, od, readV(cs, os));
}`,
  }));
}

/** metrics[dst] := metrics[src] and positions[dst] := positions[src] for moves [0, p.count). */
export function slotMovesKernel(): KernelSource {
  return memo('slot-moves', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> metrics: array<u32>;
@group(0) @binding(2) var<storage, read_write> positions: array<i32>;
@group(0) @binding(3) var<storage, read> src: array<i32>;
@group(0) @binding(4) var<storage, read> dst: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = wid * 256u + li;
  if (i >= p.count) { return; }
  let s = u32(src[i]);
  let d = u32(dst[i]);
  metrics[d] = metrics[s];
  positions[d] = positions[s];
}`,
  }));
}

/** Words of the compaction info buffer where the window buckets' move counts and cursors start. */
export const MOVE_BUCKET_COUNTS = 16;
export const MOVE_BUCKET_CURSORS = 40;
/** Most window buckets (passes + 1 for moves across windows). */
export const MOVE_BUCKETS_MAX = 24;
/** Moves each invocation of moveBucketKernel sorts (dispatch ceil(moves / MOVES_PER_INVOCATION)). */
export const MOVES_PER_INVOCATION = 16;

/**
 * Sorts the moves of a chunked pool by window (counting sort, three steps): a move whose
 * source and destination lie in the same window of chunks goes to that window's bucket, any
 * other to bucket `passes` (gathered and scattered through scratch). Each invocation takes
 * MOVES_PER_INVOCATION consecutive moves, counting them per bucket privately, so the
 * workgroup's atomics see one add per bucket and invocation (most moves of a head share one).
 *   count:   info[MOVE_BUCKET_COUNTS + b] += moves of bucket b (per workgroup, then once globally)
 *   offsets: info[MOVE_BUCKET_CURSORS + b] = moves of buckets before b (one invocation)
 *   scatter: each move to sorted[cursor of its bucket++]
 * The moves are the first min(p.count, info[0]) of src / dst. Bindings: src, dst, info
 * (atomic), then for scatter sortedSrc, sortedDst; offsets binds info only.
 */
export function moveBucketKernel(c: KvChunking, step: 'count' | 'offsets' | 'scatter'): KernelSource {
  const nb = c.passes + 1;
  if (nb > MOVE_BUCKETS_MAX) throw new Error(`moveBucketKernel: ${c.passes} window passes exceed ${MOVE_BUCKETS_MAX - 1}.`);
  const bindings =
    step === 'offsets'
      ? '@group(0) @binding(1) var<storage, read_write> info: array<atomic<u32>>;'
      : `@group(0) @binding(1) var<storage, read> src: array<i32>;
@group(0) @binding(2) var<storage, read> dst: array<i32>;
@group(0) @binding(3) var<storage, read_write> info: array<atomic<u32>>;
${step === 'scatter' ? '@group(0) @binding(4) var<storage, read_write> sortedSrc: array<i32>;\n@group(0) @binding(5) var<storage, read_write> sortedDst: array<i32>;' : ''}`;
  const offsets = `  if (wid != 0u || li != 0u || p.count == 0u) { return; }
  var run = 0u;
  for (var b = 0u; b < NB; b++) {
    atomicStore(&info[${MOVE_BUCKET_CURSORS}u + b], run);
    run += atomicLoad(&info[${MOVE_BUCKET_COUNTS}u + b]);
  }`;
  const sort = `  if (li < NB) { atomicStore(&local[li], 0u); }
  workgroupBarrier();
  let total = min(p.count, atomicLoad(&info[0]));
  let first = (wid * 256u + li) * PER;
  var mine: array<u32, NB>;
  var at: array<u32, NB>;
  for (var k = 0u; k < PER; k++) {
    if (first + k < total) {
      let b = bucketOf(first + k);
      mine[b] += 1u;
    }
  }
  for (var b = 0u; b < NB; b++) {
    if (mine[b] > 0u) { at[b] = atomicAdd(&local[b], mine[b]); }
  }
  workgroupBarrier();
  if (li < NB) {
    let n = atomicLoad(&local[li]);
    ${
      step === 'count'
        ? `if (n > 0u) { atomicAdd(&info[${MOVE_BUCKET_COUNTS}u + li], n); }`
        : `if (n > 0u) { base[li] = atomicAdd(&info[${MOVE_BUCKET_CURSORS}u + li], n); }`
    }
  }
${
  step === 'scatter'
    ? `  workgroupBarrier();
  for (var k = 0u; k < PER; k++) {
    let i = first + k;
    if (i < total) {
      let b = bucketOf(i);
      let to = base[b] + at[b];
      at[b] += 1u;
      sortedSrc[to] = src[i];
      sortedDst[to] = dst[i];
    }
  }`
    : ''
}`;
  return memo(`move-bucket-${step}${chunkKey(c)}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
${bindings}
const SHIFT = ${c.shift}u;
const W = ${c.window}u;
const NB = ${nb}u;
const PER = ${MOVES_PER_INVOCATION}u;
var<workgroup> local: array<atomic<u32>, ${nb}>;
var<workgroup> base: array<u32, ${nb}>;
${
  step === 'offsets'
    ? ''
    : `fn bucketOf(i: u32) -> u32 {
  let ws = (u32(src[i]) >> SHIFT) / W;
  let wd = (u32(dst[i]) >> SHIFT) / W;
  return select(NB - 1u, ws, ws == wd);
}`
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
${step === 'offsets' ? offsets : sort}
}`,
  }));
}
