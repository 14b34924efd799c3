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

/**
 * A kernel already built under `key`, looked up before any of its source is assembled: the
 * builders that assemble WGSL pieces ahead of `memo` call this first, so a dispatch (decode
 * steps run hundreds) builds no strings.
 */
function builtKernel(key: string): KernelSource | undefined {
  return built.get(key);
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
function loadQ8x8(x: string, e: string, array = 'W', outDim = 'p.outDim'): string {
  return `let qw${x} = (${e}) >> 2u;
        let qs${x} = bitcast<f32>(${array}[${outDim} * p.inDim / 4u + (${e}) / 32u]);
        let qa${x} = ${array}[qw${x}];
        let qb${x} = ${array}[qw${x} + 1u];
        let ${x}0 = vec4f(vec4i(bitcast<i32>(qa${x} << 24u), bitcast<i32>(qa${x} << 16u), bitcast<i32>(qa${x} << 8u), bitcast<i32>(qa${x})) >> vec4u(24u)) * qs${x};
        let ${x}1 = vec4f(vec4i(bitcast<i32>(qb${x} << 24u), bitcast<i32>(qb${x} << 16u), bitcast<i32>(qb${x} << 8u), bitcast<i32>(qb${x})) >> vec4u(24u)) * qs${x};`;
}

/**
 * WGSL that sets ${x}0, ${x}1 (vec4f) to the 8 weights of 8-weight step `step` of W, as the
 * vectorised matvec kernels bind it (see vecWeightType).
 */
function loadWeights8(weight: StoreType, x: string, step: string, array = 'W', outDim = 'p.outDim'): string {
  if (weight === 'q8') return loadQ8x8(x, `8u * (${step})`, array, outDim);
  if (weight === 'f32') return `let ${x}0 = ${array}[2u * (${step})]; let ${x}1 = ${array}[2u * (${step}) + 1u];`;
  return `let wq${x} = ${array}[${step}];
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

/**
 * x += delta, then out = x / rms(x) * w, one workgroup per row: the residual add and the next
 * RMSNorm in one dispatch (rmsNormKernel's reduction, so the result is the same to the bit as
 * the add kernel then rmsNormKernel). Each thread adds and squares the elements it later scales,
 * so x is read back without a barrier.
 */
export function addRmsNormKernel(): KernelSource {
  return memo('add-rmsnorm', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, dim: u32, eps: f32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> delta: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let base = wg.x * p.dim;
  var ss = 0.0;
  for (var i = li; i < p.dim; i += 256u) {
    let v = x[base + i] + delta[base + i];
    x[base + i] = v;
    ss += v * v;
  }
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
  const key = `matvec:${weight}:${bias}:${rowsPerGroup}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const R = rowsPerGroup;
  const loadW = loadWeights8(weight, 'w', 'wrow + i8');
  return memo(key, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
// Rows rowBegin .. rows - 1 (total = outDim x row tiles of R).
struct P { rows: u32, inDim: u32, outDim: u32, total: u32, rowBegin: u32, pad0: u32, pad1: u32, pad2: u32 }
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
  let r0 = p.rowBegin + (wid / p.outDim) * ${R}u;
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
  const key = `matvec-sg:${weight}:${bias}:${rowsPerGroup}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const R = rowsPerGroup;
  const O = MATVEC_SUBGROUP_OUTPUTS;
  const J = [0, 1, 2, 3];
  const loadW = (u: number) => loadWeights8(weight, `w${u}`, `wrow + ${u}u * steps + i8`);
  return memo(key, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
enable subgroups;
// Rows rowBegin .. rows - 1 (total = outDim x row tiles of R).
struct P { rows: u32, inDim: u32, outDim: u32, total: u32, rowBegin: u32, pad0: u32, pad1: u32, pad2: u32 }
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
    let r0 = p.rowBegin + (min(item, p.total - 4u) / p.outDim) * ${R}u;
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

/** Work items of one workgroup of `matvecSplitKernel`: (block of outputs, K slice) pairs, one per 32-lane subgroup. */
export const MATVEC_SPLIT_ITEMS = 8;
/** Items (block, K slice) the split matvec's K split aims for with 1-2 rows (half from 3): see planSplitMatvec. */
export const MATVEC_SPLIT_TARGET = 4096;
/** Longest K slice of the split matvec from 3 rows, in 8-weight steps (see planSplitMatvec). */
export const MATVEC_SPLIT_SLICE_STEPS = 256;
/** Most rows of one pass over W of the split matvec (its accumulators are rows x outputs registers). */
export const MATVEC_SPLIT_MAX_ROWS = 16;
/** Fewest 8-weight steps of one K slice of the split matvec. */
export const MATVEC_SPLIT_MIN_STEPS = 32;

/**
 * The matvec for devices with subgroups, for decode steps below the blocked matmul's rows
 * (passes of up to MATVEC_SPLIT_MAX_ROWS rows), which are bound by reading W: a workgroup's MATVEC_SPLIT_ITEMS items are (block of O consecutive outputs
 * for R rows, K slice of `p.slice` 8-weight steps), KS slices a block. A subgroup takes an
 * item: its lanes stride the slice 8 weights (16 bytes of packed f16) at a time, issuing the
 * loads of U strides (U x O weight loads in flight a lane) before their FMAs, and sum with
 * subgroupAdd; the KS slices of a block meet in workgroup memory. Splitting K gives a small
 * matrix (the K/V projections) enough subgroups to keep the memory busy, and the unrolled
 * loads keep more bytes in flight a lane. R is any count up to MATVEC_SPLIT_MAX_ROWS, so a
 * batch of 6 computes 6 rows, not 8: from a few rows on the FMAs (R a weight) and the loads of
 * x (2R vec4 a stride) bound the kernel, not W. Rows past the batch (the last tile's) read its
 * last row (no branch in the loop) and are not written. Rows rowBegin .. rows - 1; blocks =
 * outDim / O x row tiles.
 *
 * `gated` (a SwiGLU MLP's gate and up projections): a second matrix W2 of W's shape is read
 * beside W with the same x loads, and out = silu(x · Wᵀ) * (x · W2ᵀ) (the silu-mul kernel's
 * expression), so one dispatch replaces two matmuls and the silu-mul. No bias then.
 *
 * `stacked` = 2 or 3 (attention's q, k and v projections): as many matrices of one inDim, each
 * with its own output buffer and outDim (a multiple of O), one dispatch for all: blocks
 * [0, p.split1) are W's, [p.split1, p.split2) W2's, the rest W3's, so the small K/V projections
 * share the GPU with q instead of leaving it half idle in dispatches of their own. No bias then.
 */
export function matvecSplitKernel(
  weight: StoreType,
  bias: boolean,
  rowsPerGroup: number,
  outputs: 4 | 8,
  unroll: 1 | 2 | 4,
  splitK: 1 | 2 | 4 | 8,
  gated = false,
  stacked: 1 | 2 | 3 = 1,
): KernelSource {
  if (!Number.isInteger(rowsPerGroup) || rowsPerGroup < 1 || rowsPerGroup > MATVEC_SPLIT_MAX_ROWS) {
    throw new RangeError(`matvecSplitKernel takes 1..${MATVEC_SPLIT_MAX_ROWS} rows a pass, got ${rowsPerGroup}.`);
  }
  if ((gated || stacked > 1) && bias) throw new RangeError('matvecSplitKernel: a gated or stacked product takes no bias.');
  if (gated && stacked > 1) throw new RangeError('matvecSplitKernel: a product is gated or stacked, not both.');
  const key = `matvec-split:${weight}:${bias}:${rowsPerGroup}:${outputs}:${unroll}:${splitK}${gated ? ':gated' : ''}${stacked > 1 ? `:stacked${stacked}` : ''}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const R = rowsPerGroup;
  const O = outputs;
  const U = unroll;
  const KS = splitK;
  const BPW = MATVEC_SPLIT_ITEMS / KS; // blocks of a workgroup
  const rs = Array.from({ length: R }, (_, i) => i);
  const os = Array.from({ length: O }, (_, i) => i);
  const qs = Array.from({ length: O / 4 }, (_, i) => i);
  const us = Array.from({ length: U }, (_, i) => i);
  const lines = (xs: number[], f: (x: number) => string, sep = '\n        ') => xs.map(f).join(sep);
  // Matrices: W (accumulators acc*), and with `gated` W2 (accumulators gacc*).
  const ms = gated ? [0, 1] : [0];
  const mat = (m: number) => (m === 0 ? { w: 'w', array: 'W', acc: 'acc' } : { w: 'v', array: 'W2', acc: 'gacc' });
  // One stride u of the loop at K step `at`: O weight loads (a matrix), then R rows' two x vec4 each.
  const N = stacked;
  const arrayOf = (n: number) => (n === 0 ? 'W' : `W${n + 1}`);
  // Q8_0 finds a matrix's scales after its quants, at its own outDim.
  const outDimOf = (n: number) => (n === 0 ? 'p.outDim' : `p.out${n + 1}Dim`);
  // Stacked: the block's matrix n is subgroup-uniform; each branch loads into the shared vars.
  const stackedLoads = (u: number, at: string) => {
    const branch = (n: number) =>
      `{
          ${lines(os, (o) => `${loadWeights8(weight, `t${u}_${o}`, `wrow${o} + ${at}`, arrayOf(n), outDimOf(n))}\n          w${u}_${o}0 = t${u}_${o}0;\n          w${u}_${o}1 = t${u}_${o}1;`, '\n          ')}
        }`;
    const chain =
      N === 2
        ? `if (n == 0u) ${branch(0)} else ${branch(1)}`
        : `if (n == 0u) ${branch(0)} else if (n == 1u) ${branch(1)} else ${branch(2)}`;
    return `${lines(os, (o) => `var w${u}_${o}0: vec4f;\n        var w${u}_${o}1: vec4f;`)}
        ${chain}`;
  };
  const loads = (u: number, at: string) =>
    N > 1
      ? stackedLoads(u, at)
      : lines(ms, (m) => lines(os, (o) => loadWeights8(weight, `${mat(m).w}${u}_${o}`, `wrow${o} + ${at}`, mat(m).array)));
  const fmas = (u: number, at: string) =>
    lines(
      rs,
      (r) => `{
          let xa = x[xrow${r} + 2u * (${at})];
          let xb = x[xrow${r} + 2u * (${at}) + 1u];
          ${lines(ms, (m) => lines(qs, (q) => `${mat(m).acc}${r}_${q} += vec4f(${[0, 1, 2, 3].map((i) => `dot(xa, ${mat(m).w}${u}_${4 * q + i}0) + dot(xb, ${mat(m).w}${u}_${4 * q + i}1)`).join(', ')});`, '\n          '), '\n          ')}
        }`,
    );
  const M = ms.length;
  return memo(key, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
enable subgroups;
// Stacked: split1, split2 = the first blocks of W2 and W3; out2Dim, out3Dim = their outDims.
struct P { rows: u32, inDim: u32, outDim: u32, blocks: u32, rowBegin: u32, slice: u32, split1: u32, split2: u32, out2Dim: u32, out3Dim: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4f>;
@group(0) @binding(3) var<storage, read> W: ${vecWeightType(weight)};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}${gated || N > 1 ? `@group(0) @binding(4) var<storage, read> W2: ${vecWeightType(weight)};` : ''}
${N > 1 ? '@group(0) @binding(5) var<storage, read_write> out2: array<f32>;' : ''}
${
  N > 2
    ? `@group(0) @binding(6) var<storage, read> W3: ${vecWeightType(weight)};
@group(0) @binding(7) var<storage, read_write> out3: array<f32>;`
    : ''
}
const R = ${R}u;
const O = ${O}u;
const KS = ${KS}u;
const BPW = ${BPW}u;
var<workgroup> part: array<vec4f, ${MATVEC_SPLIT_ITEMS * M * R * (O / 4)}>; // [item][matrix][row][quad of outputs]
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32) {
  ${FLAT_ID}
  let sg = li / sgs;
  let nsg = 256u / sgs;
  let steps = p.inDim / 8u;
  let perTile = p.outDim / O;
  // A trip count uniform across the workgroup keeps subgroupAdd in uniform control flow.
  for (var k = 0u; k < max(1u, ${MATVEC_SPLIT_ITEMS}u / nsg); k++) {
    let item = sg + k * nsg;
    let blk = wid * BPW + item / KS;
    let live = item < ${MATVEC_SPLIT_ITEMS}u && blk < p.blocks;
    let bc = min(blk, p.blocks - 1u);
    ${
      N > 1
        ? `// The block's matrix n and its index there (blocks of one matrix: its outputs / O x row tiles).
    let n = select(select(2u, 1u, bc < p.split2), 0u, bc < p.split1);
    let local = bc - select(select(p.split2, p.split1, n == 1u), 0u, n == 0u);
    let nTile = select(select(p.out3Dim, p.out2Dim, n == 1u), p.outDim, n == 0u) / O;
    let j = (local % nTile) * O;
    let r0 = p.rowBegin + (local / nTile) * R;`
        : `let j = (bc % perTile) * O;
    let r0 = p.rowBegin + (bc / perTile) * R;`
    }
    ${lines(os, (o) => `let wrow${o} = (j + ${o}u) * steps;`, '\n    ')}
    ${lines(rs, (r) => `let xrow${r} = min(r0 + ${r}u, p.rows - 1u) * (p.inDim / 4u);`, '\n    ')}
    let begin = (item % KS) * p.slice;
    let end = min(begin + p.slice, steps);
    ${lines(ms, (m) => lines(rs, (r) => lines(qs, (q) => `var ${mat(m).acc}${r}_${q} = vec4f();`, ' '), '\n    '), '\n    ')}
    if (live) {
      var i8 = begin + lane;
      ${
        U > 1
          ? `for (; i8 + ${U - 1}u * sgs < end; i8 += ${U}u * sgs) {
        ${lines(us, (u) => loads(u, `i8 + ${u}u * sgs`))}
        ${lines(us, (u) => fmas(u, `i8 + ${u}u * sgs`))}
      }`
          : ''
      }
      for (; i8 < end; i8 += sgs) {
        ${loads(0, 'i8')}
        ${fmas(0, 'i8')}
      }
    }
    ${lines(
      ms,
      (m) =>
        lines(
          rs,
          (r) =>
            lines(
              qs,
              (q) => `{
      let t = subgroupAdd(${mat(m).acc}${r}_${q});
      if (lane == 0u && item < ${MATVEC_SPLIT_ITEMS}u) { part[((item * ${M}u + ${m}u) * R + ${r}u) * ${O / 4}u + ${q}u] = t; }
    }`,
              '\n    ',
            ),
          '\n    ',
        ),
      '\n    ',
    )}
  }
  workgroupBarrier();
  // Each output of the workgroup's blocks: its KS slices summed.
  for (var t = li; t < BPW * R * O; t += 256u) {
    let o = t % O;
    let rr = (t / O) % R;
    let bb = t / (O * R);
    let blk = wid * BPW + bb;
    ${
      N > 1
        ? `let n = select(select(2u, 1u, blk < p.split2), 0u, blk < p.split1);
    let local = blk - select(select(p.split2, p.split1, n == 1u), 0u, n == 0u);
    let nDim = select(select(p.out3Dim, p.out2Dim, n == 1u), p.outDim, n == 0u);
    let r = p.rowBegin + (local / (nDim / O)) * R + rr;`
        : 'let r = p.rowBegin + (blk / perTile) * R + rr;'
    }
    if (blk < p.blocks && r < p.rows) {
      var s = 0.0;
      for (var ks = 0u; ks < KS; ks++) { s += part[(((bb * KS + ks) * ${M}u) * R + rr) * ${O / 4}u + o / 4u][o % 4u]; }
      ${
        N > 1
          ? `let jj = (local % (nDim / O)) * O + o;
      if (n == 0u) { out[r * p.outDim + jj] = s; }${N > 2 ? ' else if (n == 1u) { out2[r * p.out2Dim + jj] = s; } else { out3[r * p.out3Dim + jj] = s; }' : ' else { out2[r * p.out2Dim + jj] = s; }'}`
          : gated
            ? `let jj = (blk % perTile) * O + o;
      var u = 0.0;
      for (var ks = 0u; ks < KS; ks++) { u += part[(((bb * KS + ks) * ${M}u + 1u) * R + rr) * ${O / 4}u + o / 4u][o % 4u]; }
      out[r * p.outDim + jj] = s / (1.0 + exp(-s)) * u;`
            : `let jj = (blk % perTile) * O + o;
      out[r * p.outDim + jj] = s${bias ? ' + b[jj]' : ''};`
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

/** Output columns of a blocked-matmul workgroup. */
export const BLOCKED_MATMUL_COLS = 128;
/** K values staged in workgroup memory per step of the blocked matmul. */
export const BLOCKED_MATMUL_K_STEP = 16;
/**
 * Batches of at least this many rows use the blocked matmul where it applies (inDim a
 * multiple of 8); below, a matvec kernel (the split matvec: one pass over W per 16 rows). On
 * an H200 (f16 weights, the 8B and 1B shapes and LM heads) the split matvec was 1.25-1.4x
 * faster than the blocked kernel at 24 rows and 1.1-1.35x slower at 32 (BENCHMARKS.md,
 * seventeenth session). Backend option `blockedMatmulMinRows` overrides it.
 */
export const BLOCKED_MATMUL_MIN_ROWS = 32;
/**
 * Trailing rows past the blocked matmul's last full 128-row tile, up to this many, run on the
 * matvec kernel (one pass over W per 8 rows) instead of a padded tile: a batch of 129 rows is
 * one 128-row tile and one matvec row (see planBlockedMatmul). Backend option
 * `blockedMatmulTailRows` overrides it (0: no tail).
 */
export const BLOCKED_MATMUL_TAIL_ROWS = 16;
/** Fewest K values per split of the blocked matmul's split K: shorter ranges spend more on the partials than they gain. */
export const BLOCKED_MATMUL_MIN_SPLIT_K = 256;
/** Workgroups the blocked matmul's split K aims for: two per SM of a 132-SM H100/H200 (a guess at its residency). */
export const BLOCKED_MATMUL_WORKGROUPS = 264;

/**
 * WGSL statements that load the next step's 8 weights of this thread's staging column into
 * registers (raw: unpacked only when stored, so the loads stay in flight during the FMAs),
 * or zeros past kEnd. `e` is the element index of the first weight (a multiple of 8).
 */
function blockedFetchW(weight: StoreType, e: string, live: string): string {
  if (weight === 'f16') return `if (${live}) { wq = W[(${e}) >> 3u]; } else { wq = vec4u(); }`;
  if (weight === 'f32') return `if (${live}) { let i = (${e}) >> 2u; wf0 = W[i]; wf1 = W[i + 1u]; } else { wf0 = vec4f(); wf1 = vec4f(); }`;
  return `if (${live}) {
      let i = (${e}) >> 2u;
      wq0 = W[i];
      wq1 = W[i + 1u];
      wsc = bitcast<f32>(W[p.outDim * p.inDim / 4u + (${e}) / 32u]);
    } else { wq0 = 0u; wq1 = 0u; wsc = 0.0; }`;
}

/** WGSL declaring the weight registers of blockedFetchW. */
function blockedWRegisters(weight: StoreType): string {
  if (weight === 'f16') return 'var wq = vec4u();';
  if (weight === 'f32') return 'var wf0 = vec4f(); var wf1 = vec4f();';
  return 'var wq0 = 0u; var wq1 = 0u; var wsc = 0.0;';
}

/** WGSL that sets w0, w1 (vec4f) to the 8 weights held in the registers of blockedFetchW. */
function blockedUnpackW(weight: StoreType): string {
  if (weight === 'f16')
    return 'let w0 = vec4f(unpack2x16float(wq.x), unpack2x16float(wq.y)); let w1 = vec4f(unpack2x16float(wq.z), unpack2x16float(wq.w));';
  if (weight === 'f32') return 'let w0 = wf0; let w1 = wf1;';
  const q = (v: string) =>
    `vec4f(vec4i(bitcast<i32>(${v} << 24u), bitcast<i32>(${v} << 16u), bitcast<i32>(${v} << 8u), bitcast<i32>(${v})) >> vec4u(24u)) * wsc`;
  return `let w0 = ${q('wq0')}; let w1 = ${q('wq1')};`;
}

/**
 * The register-blocked matmul for many rows (prefill, large decode batches; inDim a multiple
 * of 8): out[r][j] = Σ_i x[r][i] W[j][i] (+ b[j]), in the classic SGEMM shape.
 *
 * Tile: TM x 128 outputs per workgroup of 256 threads (TM = 128 or 64 rows). Thread
 * (tx, ty) = (li % 16, li / 16) owns a TM/16 x 8 micro-tile: rows 4ty..4ty+3 (and, for
 * TM = 128, 64+4ty..64+4ty+3), columns 4tx..4tx+3 and 64+4tx..64+4tx+3, accumulated in
 * TM/16 x 2 named vec4f registers (no private arrays: NVIDIA may put those in local memory).
 * K advances 16 values per step, staged in workgroup memory as f32: xs [16][TM / 4] and
 * ws [16][32] vec4f, i.e. [k][row] and [k][column], so each thread reads its 4 consecutive
 * rows or columns as one vec4 (a warp's 16 tx read 64 consecutive words: no bank conflicts;
 * its two ty broadcast).
 *
 * Staging reads global memory in runs a warp can coalesce: x's step is TM rows x 4 vec4
 * (16 K values), and thread li loads vec4 li + 256n, i.e. row li / 4 + 64n, K quarter li % 4
 * (a warp: 8 rows x 64 bytes); W's step is 128 columns x 2 halves of 8 K values, and thread li
 * loads column li / 2, half li % 2 (a warp: 16 columns x 32 bytes of packed f16; 64 of f32;
 * 16 of Q8_0 and a scale). At 128-512 rows an H200 ran 1.19-1.35x faster with this than with
 * one row or column per lane (32 rows or columns a warp), 1.04-1.22x with Dawn's robustness on
 * (BENCHMARKS.md, sixteenth session). W is unpacked to
 * f32 once, and both are stored transposed. Those stores conflict on banks (a warp's x stores
 * for one k hit 8 banks 4 deep, W's 16 banks 2 deep); an XOR swizzle that made them
 * conflict-free measured no faster (its FMA loop reads through the swizzled index).
 * The next step's global loads are issued into registers before the current step's FMAs.
 *
 * Split K: workgroup (z, column tile, row tile) (row tile fastest, so the workgroups that
 * run together share W's column tile in L2) covers K [z * kPerSplit, (z+1) * kPerSplit) and
 * writes its partial sums to out[z][rows][outDim]; with splits > 1, `out` is a scratch
 * buffer that blockedMatmulReduceKernel sums (and bias is added there, so `bias` is false).
 * Rows and columns past the matrix read clamped (duplicate) values and are not written; K
 * past inDim (a half step: inDim % 16 == 8) reads zeros. A dispatch covers rows [rowBegin,
 * rows) of x and out, so one product can run as row ranges with different tiles.
 */
export function blockedMatmulKernel(weight: StoreType, bias: boolean, tileRows: 64 | 128): KernelSource {
  return memo(`matmul-blocked:${weight}:${bias}:${tileRows}`, () => {
    const TM = tileRows;
    // Micro-tile rows i: row 4ty + i (vec4 a0) for i < 4, 64 + 4ty + (i - 4) (vec4 a1) after.
    const rowRegs = TM / 16;
    const acc = (i: number, h: number) => `acc${i}_${h}`;
    const rowOffset = (i: number) => (i < 4 ? `${i}u` : `${64 + i - 4}u`);
    const comp = 'xyzw';
    const accDecl: string[] = [];
    for (let i = 0; i < rowRegs; i++) for (let h = 0; h < 2; h++) accDecl.push(`var ${acc(i, h)} = vec4f();`);
    const step: string[] = [];
    for (let k = 0; k < BLOCKED_MATMUL_K_STEP; k++) {
      const lines = [`let a0 = xs[${k}][ty];`];
      if (TM === 128) lines.push(`let a1 = xs[${k}][ty + 16u];`);
      lines.push(`let b0 = ws[${k}][tx];`, `let b1 = ws[${k}][tx + 16u];`);
      for (let i = 0; i < rowRegs; i++) {
        const a = `vec4f(a${i >> 2}.${comp[i & 3]})`;
        for (let h = 0; h < 2; h++) lines.push(`${acc(i, h)} = fma(${a}, b${h}, ${acc(i, h)});`);
      }
      step.push(`{ ${lines.join(' ')} }`);
    }
    const put = (v: string, c: string) =>
      [0, 1, 2, 3]
        .map((j) => `if (${c} + ${j}u < p.outDim) { out[o + ${j}u] = ${v}.${comp[j]}${bias ? ` + b[${c} + ${j}u]` : ''}; }`)
        .join(' ');
    const epilogue: string[] = [];
    for (let i = 0; i < rowRegs; i++) {
      const cols = [0, 1]
        .map((h) => `{ let c = c0 + 4u * tx + ${64 * h}u; let o = (z * p.rows + r) * p.outDim + c; ${put(acc(i, h), 'c')} }`)
        .join('\n      ');
      epilogue.push(`{ let r = r0 + 4u * ty + ${rowOffset(i)}; if (r < p.rows) {\n      ${cols}\n    } }`);
    }
    // x staging: TM / 64 vec4 a thread (rows xr + 64n, K quarter xq). A quarter starting
    // below kEnd ends below it: kEnd is a multiple of 8.
    const xLoads = Array.from({ length: TM / 64 }, (_, n) => n);
    const xStore = xLoads
      .map((n) => [0, 1, 2, 3].map((c) => `xs[4u * xq + ${c}u][(xr >> 2u) + ${16 * n}u][xr & 3u] = x${n}.${comp[c]};`).join(' '))
      .join(' ');
    const wStore = Array.from({ length: 8 }, (_, c) => `ws[8u * wh + ${c}u][wn >> 2u][wn & 3u] = w${c >> 2}.${comp[c & 3]};`).join(' ');
    const wArray = weight === 'f16' ? 'array<vec4<u32>>' : weight === 'q8' ? 'array<u32>' : 'array<vec4f>';
    const fetch = (k: string) => `{
    let kx = ${k} + 4u * xq;
    ${xLoads.map((n) => `if (kx < kEnd) { x${n} = x[xBase${n} + (kx >> 2u)]; } else { x${n} = vec4f(); }`).join('\n    ')}
    let kw = ${k} + 8u * wh;
    ${blockedFetchW(weight, 'wBase + kw', 'kw < kEnd')}
  }`;
    return {
      workgroupSize: 256,
      code: /* wgsl */ `
// Rows rowBegin .. rows - 1; partial sums (splits > 1) at out[z][row][column] for rows below \`rows\`.
struct P { rows: u32, inDim: u32, outDim: u32, rowTiles: u32, colTiles: u32, kPerSplit: u32, splits: u32, rowBegin: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4f>;
@group(0) @binding(3) var<storage, read> W: ${wArray};
${bias ? '@group(0) @binding(4) var<storage, read> b: array<f32>;' : ''}
// [k][row / 4] and [k][column / 4] of the current K step, f32.
var<workgroup> xs: array<array<vec4f, ${TM / 4}>, ${BLOCKED_MATMUL_K_STEP}>;
var<workgroup> ws: array<array<vec4f, ${BLOCKED_MATMUL_COLS / 4}>, ${BLOCKED_MATMUL_K_STEP}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let rowTile = wid % p.rowTiles;
  let colTile = (wid / p.rowTiles) % p.colTiles;
  // Workgroups past the last (2-D grid rounding) have z >= splits: an empty K range, no writes.
  let z = wid / (p.rowTiles * p.colTiles);
  let r0 = p.rowBegin + rowTile * ${TM}u;
  let c0 = colTile * ${BLOCKED_MATMUL_COLS}u;
  let tx = li & 15u;
  let ty = li >> 4u;
  let kBegin = z * p.kPerSplit;
  let kEnd = min(p.inDim, kBegin + p.kPerSplit);
  // Staging roles: x rows xr + 64n, K quarter xq (4 values); W column wn, K half wh (8 values).
  let xr = li >> 2u;
  let xq = li & 3u;
  ${xLoads.map((n) => `let xBase${n} = min(r0 + xr + ${64 * n}u, p.rows - 1u) * (p.inDim / 4u);`).join('\n  ')}
  ${xLoads.map((n) => `var x${n} = vec4f();`).join(' ')}
  let wn = li >> 1u;
  let wh = li & 1u;
  let wBase = min(c0 + wn, p.outDim - 1u) * p.inDim;
  ${blockedWRegisters(weight)}
  ${accDecl.join(' ')}
  ${fetch('kBegin')}
  for (var k0 = kBegin; k0 < kEnd; k0 += ${BLOCKED_MATMUL_K_STEP}u) {
    ${xStore}
    {
      ${blockedUnpackW(weight)}
      ${wStore}
    }
    workgroupBarrier();
    if (k0 + ${BLOCKED_MATMUL_K_STEP}u < kEnd) ${fetch(`k0 + ${BLOCKED_MATMUL_K_STEP}u`)}
    ${step.join('\n    ')}
    workgroupBarrier();
  }
  if (z < p.splits) {
    ${epilogue.join('\n    ')}
  }
}`,
    };
  });
}

/** out[i] = Σ_z partials[z][i] (+ b[i % outDim]) for i in [begin, n): the split-K sums of blockedMatmulKernel, in order of z. */
export function blockedMatmulReduceKernel(bias: boolean): KernelSource {
  return memo(`matmul-blocked-reduce:${bias}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { n: u32, outDim: u32, splits: u32, begin: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
${bias ? '@group(0) @binding(3) var<storage, read> b: array<f32>;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = p.begin + wid * 256u + li;
  if (i >= p.n) { return; }
  var s = partials[i];
  for (var z = 1u; z < p.splits; z++) { s += partials[z * p.n + i]; }
  out[i] = s${bias ? ' + b[i % p.outDim]' : ''};
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
  ${workgroupArgmaxTreeWgsl('argmaxV', 'argmaxI', bestValues, bestIndices)}`;
}

/**
 * WGSL statements: each of the 256 invocations puts its (value, index) pair (`value`, `index`)
 * in the workgroup arrays, and a tree keeps the larger value, the lower index on ties, until
 * the workgroup's best is in `bestValues[0]`, `bestIndices[0]`.
 */
function workgroupArgmaxTreeWgsl(value: string, index: string, bestValues: string, bestIndices: string): string {
  return `${bestValues}[li] = ${value};
  ${bestIndices}[li] = ${index};
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

/** Logits a workgroup of `argmaxPartialKernel` scans (16 a thread). */
export const ARGMAX_CHUNK = 4096;

/**
 * First pass of argmax over rows longer than ARGMAX_CHUNK: one workgroup per (row, chunk of
 * ARGMAX_CHUNK logits), as `argmaxKernel` does for a whole row, so a few rows of a 128K
 * vocabulary keep hundreds of workgroups busy instead of one each (one workgroup walking
 * 128256 logits took ~0.2 ms on an H200, 2-5% of a small batch's decode step).
 * partial [rows][chunks][2] = (max as f32 bits, its index in the row or 0xffffffff).
 */
export function argmaxPartialKernel(): KernelSource {
  return memo('argmax-partial', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, vocab: u32, chunks: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> partial: array<u32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
var<workgroup> bestV: array<f32, 256>;
var<workgroup> bestI: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let item = min(wid, p.rows * p.chunks - 1u);
  let r = item / p.chunks;
  let begin = (item % p.chunks) * ${ARGMAX_CHUNK}u;
  let base = r * p.vocab + begin;
  let n = min(${ARGMAX_CHUNK}u, p.vocab - begin);
${workgroupArgmaxWgsl('logits', 'base', 'n', 'bestV', 'bestI')}
  if (li == 0u && wid < p.rows * p.chunks) {
    partial[2u * wid] = bitcast<u32>(bestV[0]);
    partial[2u * wid + 1u] = select(begin + bestI[0], 0xffffffffu, bestI[0] == 0xffffffffu);
  }
}`,
  }));
}

/** Second pass: out[r] = the best of row r's chunk maxima (ties to the lower index), as argmaxKernel writes it. */
export function argmaxReduceKernel(): KernelSource {
  return memo('argmax-reduce', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, vocab: u32, chunks: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<i32>;
@group(0) @binding(2) var<storage, read> partial: array<u32>;
var<workgroup> bestV: array<f32, 256>;
var<workgroup> bestI: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let r = min(wid, p.rows - 1u);
  var v = bitcast<f32>(0xff7fffffu); // -FLT_MAX
  var i = 0xffffffffu;
  for (var c = li; c < p.chunks; c += 256u) {
    let ov = bitcast<f32>(partial[2u * (r * p.chunks + c)]);
    let oi = partial[2u * (r * p.chunks + c) + 1u];
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
  }
  ${workgroupArgmaxTreeWgsl('v', 'i', 'bestV', 'bestI')}
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
  const hit = builtKernel(`append-kv:${kv}`);
  if (hit !== undefined) return hit;
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
  const key = `append-kv:${kv}${chunkKey(c)}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const per = kv === 'f32' ? 1 : 2;
  const W = c.window;
  const elem = kv === 'f32' ? 'f32' : 'u32';
  const value = (x: string) => (kv === 'f32' ? `${x}[src + e]` : `pack2x16float(vec2f(${x}[src + e], ${x}[src + e + 1u]))`);
  return memo(key, () => ({
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

/**
 * Uniforms and bindings of the split-K attention kernels: `kvBindings` declares K and V (one
 * binding each, or a window of chunks taking b0 = 2 x window - 2 more binding numbers).
 */
function splitAttentionBindings(kvBindings: string, b0: number): string {
  return `struct Params {
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
// rowInfo [rows][4]: sequence, position, recorded-row index (-1: not recorded), may see later keys.
@group(0) @binding(${8 + b0}) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(${9 + b0}) var<storage, read_write> scores: array<f32>;`;
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
  const key = `attention:${kv}:${headDim}:${group}${chunkKey(chunking)}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
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
  return memo(key, () => ({
    workgroupSize: 64,
    code: /* wgsl */ `
// This kernel always masks by position (it ignores rowInfo.w).
${splitAttentionBindings(kvBindings, b0)}
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

/**
 * What the split-K decode kernels (`wideAttentionKernel`, `streamAttentionKernel`) share: K/V
 * bound as vec4 rows (chunked: a window of chunk bindings, see KvChunking), the WGSL header
 * (uniforms and bindings), the split setup and the slot prologue.
 */
function splitKernelParts(kv: StoreType, c: KvChunking | null) {
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
  const header = `${splitAttentionBindings(kvBindings, b0)}
const MASKED = 0xffffffffu;
const NEG_INF = -3.0e38;
var<workgroup> tslot: array<u32, S>; // slot of each key of the split, MASKED if not attended
var<workgroup> wrange: vec2<u32>;`;
  // This workgroup's (row r, kv-head g, split) and its key range [range.x, range.y), n keys
  // (at most S; the backend picks enough splits). Dead workgroups (grid rounding) get n = 0.
  const setup = `let wid = wg.x + wg.y * nwg.x;
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
      hiKey = min(min(lo + chunk, len), lo + S);
    }
    wrange = vec2u(lo, hiKey);
  }
  let range = workgroupUniformLoad(&wrange);
  let n = range.y - range.x;`;
  // Key i of the head (hi, table at t0): its slot.
  const slotOfKey = 'let slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;';
  const masked = c === null ? 'masking && slotPos[slot] > qPos' : '(masking && slotPos[slot] > qPos) || (slot >> SHIFT) - p.pad1 * W >= W';
  // Every key's slot (MASKED where later than the query, or, chunked, outside this pass's
  // chunks) in workgroup memory, looked up by all threads at once, so the key loops wait on
  // one global read per key. rowInfo.w says whether this row can see later keys at all
  // (another row of its sequence later in the same step); if not, positions are not read.
  // padStep: MASKED also from n up to the next multiple of it (at most S; the kernel defines S),
  // so a loop taking padStep keys a step reads tslot without checking each key against n.
  const slotPrologue = (threads: number, padStep = 1) => `let masking = info.w != 0;
  for (var t = li; t < n; t += ${threads}u) {
    let i = range.x + t;
    ${slotOfKey}
    tslot[t] = select(slot, MASKED, ${masked});
  }${
    padStep > 1
      ? `
  for (var t = n + li; t < min(S, (n + ${padStep - 1}u) / ${padStep}u * ${padStep}u); t += ${threads}u) {
    tslot[t] = MASKED;
  }`
      : ''
  }
  workgroupBarrier();`;
  // Chunked pools, for kernels that loop over a key list: only the keys this pass attends
  // (in its window of chunks, not masked), in key order, into tslot, with each one's index in
  // the split in tidx (scores are written by index), and their count nKeys. Without it every
  // pass walks all n keys of its split, most of them masked: with the pool in W-chunk windows
  // of C chunks, ceil(C / W) times the key loop's work. Each thread counts a contiguous run of
  // at most ceil(S / threads) keys; a scan of the counts (workgroup memory) gives each run its
  // place. Needs tidx: array<u32, S> and tcount: array<u32, threads> in workgroup memory.
  const compactSlotPrologue = (threads: number) => `let masking = info.w != 0;
  let per = (n + ${threads - 1}u) / ${threads}u;
  let first = min(li * per, n);
  let last = min(first + per, n);
  var mine = 0u;
  for (var t = first; t < last; t++) {
    let i = range.x + t;
    ${slotOfKey}
    mine += select(1u, 0u, ${masked});
  }
  tcount[li] = mine;
  workgroupBarrier();
  for (var o = 1u; o < ${threads}u; o = o << 1u) {
    let add = select(0u, tcount[max(li, o) - o], li >= o);
    workgroupBarrier();
    tcount[li] += add;
    workgroupBarrier();
  }
  var at = tcount[li] - mine;
  for (var t = first; t < last; t++) {
    let i = range.x + t;
    ${slotOfKey}
    if (!(${masked})) {
      tslot[at] = slot;
      tidx[at] = t;
      at++;
    }
  }
  let nKeys = workgroupUniformLoad(&tcount[${threads - 1}u]);`;
  const splitIndex =
    c === null ? '(r * p.kvHeads + g) * p.splits + split' : '(r * p.kvHeads + g) * p.splits * PASSES + p.pad1 * p.splits + split';
  return { header, setup, slotPrologue, compactSlotPrologue, splitIndex };
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
  const key = `attention-wide:${kv}:${headDim}:${group}${chunkKey(chunking)}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
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
  const parts = splitKernelParts(kv, c);
  return memo(key, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
${parts.header}
const D = ${D}u;
const G = ${G}u;
const P = ${P}u;
const LANES = ${LANES}u;
const U = ${U}u;
const S = ${S}u;
var<workgroup> sc: array<f32, ${G * S}>; // [G][S]: scores, then probabilities
var<workgroup> red: array<f32, ${RED}>;
var<workgroup> stat: array<f32, ${2 * G}>; // max, sum per query head
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${parts.setup}
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
  ${parts.slotPrologue(256)}
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
  let pbase = (${parts.splitIndex}) * G * (D + 2u);
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

/** Most keys of one split of `streamAttentionKernel` (its slot prologue's workgroup array). */
export const STREAM_ATTENTION_MAX_KEYS = 1024;

/**
 * Threads that share a key row in `streamAttentionKernel`: the largest power of two that
 * divides D / 8 and fits one subgroup (their partial dot products are summed by subgroup
 * shuffles), at most 16. 0 when the kernel cannot run (no subgroups, head dim not a multiple of 8).
 */
export function streamAttentionThreadsPerKey(headDim: number, subgroupMinSize: number): number {
  if (headDim % 8 !== 0 || headDim > 256 || subgroupMinSize < 1) return 0;
  let t = 1;
  while (t * 2 <= Math.min(16, subgroupMinSize) && (headDim / 8) % (t * 2) === 0) t *= 2;
  return t;
}

/**
 * Workgroup memory of `streamAttentionKernel` in bytes: key slots (and, on a chunked pool,
 * key indices and per-thread counts), the key groups' statistics and the merge buffer.
 */
export function streamAttentionWorkgroupBytes(
  headDim: number,
  group: number,
  threadsPerKey: number,
  workgroupSize: 128 | 256,
  maxKeys: number,
  chunked: boolean,
  mergeInSlots = false,
): number {
  const WGS = headDim > 128 ? 256 : workgroupSize;
  const NKG = WGS / threadsPerKey;
  const KB = streamMergeBatch(headDim, NKG, maxKeys, mergeInSlots);
  return 4 * (maxKeys + 2 + NKG * 2 * group + (mergeInSlots ? 0 : KB * headDim) + (chunked ? maxKeys + WGS : 0));
}

/**
 * Key groups whose outputs the stream kernel's merge sums per round: their [KB][D] f32 buffer
 * stays within 16 KiB, and within the key slots (S words) when it reuses them (mergeInSlots).
 */
function streamMergeBatch(headDim: number, keyGroups: number, maxKeys: number, mergeInSlots: boolean): number {
  const words = mergeInSlots ? Math.min(4096, maxKeys) : 4096;
  return Math.max(1, Math.min(keyGroups, 2 ** Math.floor(Math.log2(words / headDim))));
}

/** Whether `streamAttentionKernel` serves this shape with `threadsPerKey` lanes a key. */
export function streamAttentionSupports(headDim: number, group: number, threadsPerKey: number): boolean {
  // Each thread keeps G x (D / threadsPerKey) query values and as many accumulators in
  // registers: at most 128 each (D = 128 with G = 4 on a device whose subgroups may be 4 wide;
  // 32 on a GPU with 32-wide subgroups, where 16 lanes share a row).
  return threadsPerKey >= 1 && group <= 8 && (group * headDim) / threadsPerKey <= 128;
}

/**
 * Paged decode attention as one stream per key group, for devices with subgroups: one
 * workgroup of WGS = 128 or 256 threads per (row, kv-head, split of at most
 * S = maxKeys keys, STREAM_ATTENTION_MAX_KEYS by default), split into WGS / T key groups of T = threadsPerKey lanes of
 * one subgroup. A key group walks every (WGS / T)-th key of the split, U keys per step: it issues the K and V
 * loads of all U keys at once (each lane 16 bytes of packed f16 per row piece, E = D / 8T
 * pieces), sums the lanes' partial dot products with subgroup shuffles, and folds the U keys
 * into its own online softmax (one rescale per step). No barrier inside the key loop: the
 * only workgroup-wide steps are the slot prologue (as in `wideAttentionKernel`) and the
 * final merge of the key groups' (max, sum, output). Output as `attentionKernel`: partials
 * [rows][kvHeads][splits][G][D + 2] for `attentionReduceKernel`, raw scores of recorded rows.
 */
export function streamAttentionKernel(
  kv: StoreType,
  headDim: number,
  group: number,
  threadsPerKey: number,
  keysPerStep: number,
  chunking: KvChunking | null = null,
  workgroupSize: 128 | 256 = 256,
  scatter = false,
  maxKeys = STREAM_ATTENTION_MAX_KEYS,
  mergeInSlots = false,
): KernelSource {
  const WGS = headDim > 128 ? 256 : workgroupSize; // the merge gives each output dim a thread
  const V = keysPerStep * group;
  const useScatter = scatter && V <= threadsPerKey && (V & (V - 1)) === 0;
  const key = `attention-stream:${kv}:${headDim}:${group}:${threadsPerKey}:${keysPerStep}:${WGS}${useScatter ? ':rs' : ''}${maxKeys === STREAM_ATTENTION_MAX_KEYS ? '' : `:s${maxKeys}`}${mergeInSlots ? ':ms' : ''}${chunkKey(chunking)}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const D = headDim;
  const G = group;
  const T = threadsPerKey;
  const E = D / (8 * T); // 8-value pieces of a row per lane
  const U = keysPerStep;
  const NKG = WGS / T;
  const STEP = NKG * U; // keys of one step of the key loop
  // On a pool in one binding the prologue pads tslot with MASKED to a whole step (where S holds
  // whole steps), so the key loop reads it without checking each key against nKeys: 1.5-3.7% faster
  // on an H200. Chunked pools keep the checks (their compacting prologue would need another
  // barrier; 4% slower at 32 x 32K).
  const padStep = chunking === null && maxKeys % STEP === 0 ? STEP : 1;
  // Key groups merged per round: kgOut stays within 16 KiB of workgroup memory. With
  // mergeInSlots the merge reuses the key slots (tslot, idle once every key group has left the
  // key loop) instead, which halves the kernel's workgroup memory at 2048 keys.
  const KB = streamMergeBatch(D, NKG, maxKeys, mergeInSlots);
  const outStore = (o: string, x: string) => (mergeInSlots ? `tslot[${o}] = bitcast<u32>(${x});` : `kgOut[${o}] = ${x};`);
  const outLoad = (o: string) => (mergeInSlots ? `bitcast<f32>(tslot[${o}])` : `kgOut[${o}]`);
  const S = maxKeys;
  const c = chunking;
  // A key's index in its split: chunked pools compact each pass's keys (compactSlotPrologue).
  const keyIndex = (t: string) => (c === null ? t : `tidx[min(${t}, S - 1u)]`);
  const gs = Array.from({ length: G }, (_, i) => i);
  const es = Array.from({ length: E }, (_, i) => i);
  const us = Array.from({ length: U }, (_, i) => i);
  const offs: number[] = [];
  for (let o = T / 2; o >= 1; o /= 2) offs.push(o);
  const each = <X>(xs: X[], f: (x: X) => string, sep = '\n    ') => xs.map(f).join(sep);
  const parts = splitKernelParts(kv, c);
  // Piece e of this lane (8 values: row piece j + T e) of key u's row in buffer buf, into
  // ${x}0, ${x}1 (vec4f). Masked keys read slot 0 (always in bounds) and are dropped later.
  const rowWords = kv === 'f16' ? D / 8 : D / 4; // vec4 words per row
  const load = (buf: string, u: number, e: number, x: string) => {
    const piece = `j + ${T * e}u`;
    if (c === null) {
      return kv === 'f16'
        ? `let w${x} = ${buf}[row${u} * ${rowWords}u + ${piece}];
      let ${x}0 = vec4f(unpack2x16float(w${x}.x), unpack2x16float(w${x}.y));
      let ${x}1 = vec4f(unpack2x16float(w${x}.z), unpack2x16float(w${x}.w));`
        : `let ${x}0 = ${buf}[row${u} * ${rowWords}u + 2u * (${piece})];
      let ${x}1 = ${buf}[row${u} * ${rowWords}u + 2u * (${piece}) + 1u];`;
    }
    return kv === 'f16'
      ? `let w${x} = read${buf}(chunk${u}, row${u} * ${rowWords}u + ${piece});
      let ${x}0 = vec4f(unpack2x16float(w${x}.x), unpack2x16float(w${x}.y));
      let ${x}1 = vec4f(unpack2x16float(w${x}.z), unpack2x16float(w${x}.w));`
      : `let ${x}0 = read${buf}(chunk${u}, row${u} * ${rowWords}u + 2u * (${piece}));
      let ${x}1 = read${buf}(chunk${u}, row${u} * ${rowWords}u + 2u * (${piece}) + 1u);`;
  };
  const rowOf = (u: number) =>
    c === null
      ? `let row${u} = select(0u, slot${u}, ok${u});`
      : `let chunk${u} = select(0u, (slot${u} >> SHIFT) - p.pad1 * W, ok${u});
      let row${u} = select(0u, slot${u} & CHUNK_MASK, ok${u});`;
  // Scatter reduction (V = U x G scores per lane, a power of two <= T): a butterfly reduce-
  // scatter leaves each lane ONE full score (value v = j >> SH: key v / G, head v % G), its
  // softmax terms are computed once per value instead of on every lane, and the
  // probabilities and new maxima are shuffled back: V - 1 + log2(U) + V + G shuffles and
  // 1 + G exps per lane and step, against V log2(T) shuffles and V + G exps.
  const SH = useScatter ? Math.log2(T) - Math.log2(V) : 0;
  const xorCode = () => `${each(offs, (o) => each(us, (u) => each(gs, (h) => `s${u}_${h} += subgroupShuffleXor(s${u}_${h}, ${o}u);`)))}
    if (rec >= 0 && j == 0u) {
      ${each(us, (u) => `if (ok${u}) {\n        ${each(gs, (h) => `scores[(u32(rec) * p.heads + g * G + ${h}u) * p.scoreStride + range.x + ${keyIndex(`t${u}`)}] = s${u}_${h};`, '\n        ')}\n      }`, '\n      ')}
    }
    ${each(
      gs,
      (h) => `{
      let mNew = max(m${h}, ${maxOf(us.map((u) => `select(NEG_INF, s${u}_${h}, ok${u})`))});
      let cor = exp(m${h} - mNew);
      ${each(us, (u) => `let p${u} = select(0.0, exp(s${u}_${h} - mNew), ok${u});`, '\n      ')}
      l${h} = l${h} * cor + ${us.map((u) => `p${u}`).join(' + ')};
      ${each(
        es,
        (e) => `acc${h}_${e}a = acc${h}_${e}a * cor + ${us.map((u) => `p${u} * v${u}_${e}0`).join(' + ')};
      acc${h}_${e}b = acc${h}_${e}b * cor + ${us.map((u) => `p${u} * v${u}_${e}1`).join(' + ')};`,
        '\n      ',
      )}
      m${h} = mNew;
    }`,
    )}`;
  const scatterCode = () => {
    const lines: string[] = [];
    let cur = us.flatMap((u) => gs.map((h) => `s${u}_${h}`));
    let level = 0;
    for (const o of offs) {
      if (cur.length > 1) {
        const half = cur.length / 2;
        lines.push(`let up${level} = (j & ${o}u) != 0u;`);
        const next: string[] = [];
        for (let i = 0; i < half; i++) {
          lines.push(
            `let r${level}_${i} = select(${cur[i]}, ${cur[half + i]}, up${level}) + subgroupShuffleXor(select(${cur[half + i]}, ${cur[i]}, up${level}), ${o}u);`,
          );
          next.push(`r${level}_${i}`);
        }
        cur = next;
      } else {
        lines.push(`let r${level}_0 = ${cur[0]} + subgroupShuffleXor(${cur[0]}, ${o}u);`);
        cur = [`r${level}_0`];
      }
      level++;
    }
    const sMine = cur[0] as string;
    lines.push('let vMine = j >> ' + SH + 'u;', 'let uMine = vMine / G;', 'let hMine = vMine % G;');
    lines.push('var okMine = ok0;', ...us.slice(1).map((u) => `okMine = select(okMine, ok${u}, uMine == ${u}u);`));
    lines.push('var mOld = m0;', ...gs.slice(1).map((h) => `mOld = select(mOld, m${h}, hMine == ${h}u);`));
    lines.push(
      `if (rec >= 0 && okMine && (j & ${(1 << SH) - 1}u) == 0u) { scores[(u32(rec) * p.heads + g * G + hMine) * p.scoreStride + range.x + ${keyIndex('base + uMine * NKG + kg')}] = ${sMine}; }`,
    );
    lines.push(`var mx = select(NEG_INF, ${sMine}, okMine);`);
    for (let bit = 0; bit < Math.log2(U); bit++) lines.push(`mx = max(mx, subgroupShuffleXor(mx, ${1 << (SH + Math.log2(G) + bit)}u));`);
    lines.push('let mNewMine = max(mOld, mx);', `let pMine = select(0.0, exp(${sMine} - mNewMine), okMine);`, 'let kg0 = sgid - j;');
    for (const u of us) for (const h of gs) lines.push(`let p${u}_${h} = subgroupShuffle(pMine, kg0 + ${(u * G + h) << SH}u);`);
    for (const h of gs) lines.push(`let mN${h} = subgroupShuffle(mNewMine, kg0 + ${h << SH}u);`);
    for (const h of gs) {
      lines.push(`{
      let cor = exp(m${h} - mN${h});
      l${h} = l${h} * cor + ${us.map((u) => `p${u}_${h}`).join(' + ')};
      ${each(
        es,
        (e) => `acc${h}_${e}a = acc${h}_${e}a * cor + ${us.map((u) => `p${u}_${h} * v${u}_${e}0`).join(' + ')};
      acc${h}_${e}b = acc${h}_${e}b * cor + ${us.map((u) => `p${u}_${h} * v${u}_${e}1`).join(' + ')};`,
        '\n      ',
      )}
      m${h} = mN${h};
    }`);
    }
    return lines.join('\n    ');
  };
  const maxOf = (xs: string[]): string => (xs.length === 1 ? (xs[0] as string) : `max(${xs[0]}, ${maxOf(xs.slice(1))})`);
  return memo(key, () => ({
    workgroupSize: WGS,
    code: /* wgsl */ `
enable subgroups;
${parts.header}
const D = ${D}u;
const G = ${G}u;
const NKG = ${NKG}u;
const S = ${S}u;
const STEP = ${STEP}u;
var<workgroup> kgStat: array<f32, ${NKG * 2 * G}>; // [key group][G][max, sum]
${mergeInSlots ? '' : `var<workgroup> kgOut: array<f32, ${KB * D}>; // [key group of a batch][D]: one query head's outputs at a time\n`}${c === null ? '' : `var<workgroup> tidx: array<u32, S>; // each compacted key's index in the split\nvar<workgroup> tcount: array<u32, ${WGS}>; // keys per thread's run, then their inclusive scan\n`}@compute @workgroup_size(${WGS})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) sgid: u32) {
  ${parts.setup}
  // Lanes j = 0..T-1 of key group kg are consecutive invocations, so one subgroup (>= T lanes) holds them.
  let kg = li / ${T}u;
  let j = li % ${T}u;
  let qb = (r * p.heads + g * G) * D;
  ${each(
    gs,
    (h) =>
      each(
        es,
        (
          e,
        ) => `let q${h}_${e}a = vec4f(q[qb + ${h * D}u + (j + ${T * e}u) * 8u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 1u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 2u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 3u]) * p.scale;
  let q${h}_${e}b = vec4f(q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 4u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 5u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 6u], q[qb + ${h * D}u + (j + ${T * e}u) * 8u + 7u]) * p.scale;`,
        '\n  ',
      ),
    '\n  ',
  )}
  ${
    c === null
      ? `${parts.slotPrologue(WGS, padStep)}
  let nKeys = n;`
      : parts.compactSlotPrologue(WGS)
  }
  ${each(gs, (h) => `var m${h} = NEG_INF;\n  var l${h} = 0.0;`, '\n  ')}
  ${each(gs, (h) => each(es, (e) => `var acc${h}_${e}a = vec4f();\n  var acc${h}_${e}b = vec4f();`, '\n  '), '\n  ')}
  // nKeys is workgroup-uniform: every lane runs every step, so the shuffles stay in uniform control flow.
  for (var base = 0u; base < nKeys; base += STEP) {
    ${each(
      us,
      (u) => `let t${u} = base + ${u * NKG}u + kg;
    let slot${u} = ${padStep > 1 ? `tslot[t${u}]` : `select(MASKED, tslot[min(t${u}, S - 1u)], t${u} < nKeys)`};
    let ok${u} = slot${u} != MASKED;
    ${rowOf(u)}`,
    )}
    ${each(us, (u) => each(es, (e) => load('K', u, e, `k${u}_${e}`), '\n    '))}
    ${each(us, (u) => each(es, (e) => load('V', u, e, `v${u}_${e}`), '\n    '))}
    ${each(us, (u) => each(gs, (h) => `var s${u}_${h} = ${es.map((e) => `dot(q${h}_${e}a, k${u}_${e}0) + dot(q${h}_${e}b, k${u}_${e}1)`).join(' + ')};`))}
    ${useScatter ? scatterCode() : xorCode()}
  }
  // Merge the key groups: the split's max per head, each group's weight e^(m - max).
  if (j == 0u) {
    ${each(gs, (h) => `kgStat[(kg * G + ${h}u) * 2u] = m${h};\n    kgStat[(kg * G + ${h}u) * 2u + 1u] = l${h};`)}
  }
  workgroupBarrier();
  let pbase = (${parts.splitIndex}) * G * (D + 2u);
  ${each(
    gs,
    (h) => `{
    var mm = NEG_INF;
    for (var k = 0u; k < NKG; k++) { mm = max(mm, kgStat[(k * G + ${h}u) * 2u]); }
    let wk = select(0.0, exp(m${h} - mm), m${h} > NEG_INF);
    var sum = 0.0; // output dim li (D <= WGS) summed over the key groups
    for (var kb = 0u; kb < NKG; kb += ${KB}u) {
      if (kg >= kb && kg < kb + ${KB}u) {
        ${each(
          es,
          (e) => `let o${e} = (kg - kb) * D + (j + ${T * e}u) * 8u;
        ${['x', 'y', 'z', 'w'].map((c, i) => outStore(`o${e} + ${i}u`, `acc${h}_${e}a.${c} * wk`)).join(' ')}
        ${['x', 'y', 'z', 'w'].map((c, i) => outStore(`o${e} + ${i + 4}u`, `acc${h}_${e}b.${c} * wk`)).join(' ')}`,
          '\n        ',
        )}
      }
      workgroupBarrier();
      if (li < D) { for (var k = 0u; k < ${KB}u; k++) { sum += ${outLoad('k * D + li')}; } }
      workgroupBarrier();
    }
    if (live) {
      if (li < D) { partials[pbase + ${h}u * (D + 2u) + 2u + li] = sum; }
      if (li == 0u) {
        var ll = 0.0;
        for (var k = 0u; k < NKG; k++) {
          let mk = kgStat[(k * G + ${h}u) * 2u];
          ll += select(0.0, kgStat[(k * G + ${h}u) * 2u + 1u] * exp(mk - mm), mk > NEG_INF);
        }
        partials[pbase + ${h}u * (D + 2u)] = mm;
        partials[pbase + ${h}u * (D + 2u) + 1u] = ll;
      }
    }
    workgroupBarrier();
  }`,
    '\n  ',
  )}
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
 * `vec` 32-bit words an invocation (4 where a row's words divide by 4; p.words counts vecs):
 * every pass launches an invocation per word of every move of the batch, most of which find
 * their move in another pass's chunks and stop, so fewer, wider ones cost less.
 */
function movesChunkKernel(kv: StoreType, c: KvChunking, step: 'gather' | 'scatter', vec: 1 | 4): KernelSource {
  const key = `moves-${step}:${kv}:v${vec}${chunkKey(c)}`;
  const hit = builtKernel(key);
  if (hit !== undefined) return hit;
  const word = kv === 'f32' ? 'f32' : 'u32';
  const elem = vec === 4 ? `vec4<${word}>` : word;
  const W = c.window;
  const gather = step === 'gather';
  const pool = gather ? 'read' : 'read_write';
  return memo(key, () => ({
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
    ? `  let k = readK(ch, o);
  let v = readV(ch, o);
  scratch[2u * m * p.words + e] = k;
  scratch[(2u * m + 1u) * p.words + e] = v;`
    : `  let k = scratch[2u * m * p.words + e];
  let v = scratch[(2u * m + 1u) * p.words + e];
  storeK(ch, o, k);
  storeV(ch, o, v);`
}
}`,
  }));
}

/** Chunked cache moves, step 1: sources -> scratch (see movesChunkKernel). Bindings: K chunks, V chunks, src, scratch. */
export function movesGatherKernel(kv: StoreType, c: KvChunking, vec: 1 | 4 = 1): KernelSource {
  return movesChunkKernel(kv, c, 'gather', vec);
}

/** Chunked cache moves, step 2: scratch -> destinations (see movesChunkKernel). Bindings: K chunks, V chunks, dst, scratch. */
export function movesScatterKernel(kv: StoreType, c: KvChunking, vec: 1 | 4 = 1): KernelSource {
  return movesChunkKernel(kv, c, 'scatter', vec);
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

/** 32-bit words a move kernel copies per invocation for K/V rows of `words` words: 4 where they divide. */
export function rowVec(words: number): 1 | 4 {
  return words % 4 === 0 ? 4 : 1;
}

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
  // Both loads before the stores: K and V are read-write bindings the compiler must assume may alias.
  let k = K[s];
  let v = V[s];
  K[d] = k;
  V[d] = v;
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
  let k = readK(cs, os);
  let v = readV(cs, os);
  storeK(cd, od, k);
  storeV(cd, od, v);
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
