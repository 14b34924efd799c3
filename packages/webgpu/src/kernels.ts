/**
 * WGSL kernels of the WebGPU backend. Each kernel is a descriptor: a cache key made only of
 * compile-time facts (weight or KV dtype, head dim, group size, workgroup size) and the WGSL
 * source for those facts. Shapes, lengths and table sizes are per-dispatch uniforms, so one
 * compiled pipeline serves every step of every sequence.
 *
 * Packed f16: two halves per u32 (`pack2x16float`), because Dawn on NVIDIA exposes no
 * `shader-f16`; element e of a packed array is `unpack2x16float(a[e / 2])[e % 2]`.
 */

export type StoreType = 'f32' | 'f16';

const built = new Map<string, KernelSource>();
/** Builds each kernel's source once per key; dispatches then look it up without allocating. */
function memo(key: string, make: () => Omit<KernelSource, 'key'>): KernelSource {
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
  return type === 'f32'
    ? `fn ${name}(e: u32) -> f32 { return ${array}[e]; }`
    : `fn ${name}(e: u32) -> f32 { return unpack2x16float(${array}[e >> 1u])[e & 1u]; }`;
}

function arrayType(type: StoreType): string {
  return type === 'f32' ? 'array<f32>' : 'array<u32>';
}

/** Flattened workgroup index for 2-D dispatches (x at most 65535 groups). */
const FLAT_ID = 'let wid = wg.x + wg.y * nwg.x;';

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
    weight === 'f32'
      ? `for (var i = li; i < p.inDim; i += 64u) {
      let wv = W[wrow + i];
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
 * pair of elements, packed into one u32.
 */
export function appendKvKernel(kv: StoreType): KernelSource {
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
export function attentionKernel(kv: StoreType, headDim: number, group: number): KernelSource {
  const T = ATTENTION_TILE;
  const D = headDim;
  const G = group;
  const ACC = Math.max(1, Math.ceil((G * D) / 64));
  return memo(`attention:${kv}:${D}:${G}`, () => ({
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
@group(0) @binding(3) var<storage, read> K: ${arrayType(kv)};
@group(0) @binding(4) var<storage, read> V: ${arrayType(kv)};
@group(0) @binding(5) var<storage, read> tables: array<i32>;
@group(0) @binding(6) var<storage, read> lengths: array<i32>;
@group(0) @binding(7) var<storage, read> slotPos: array<i32>;
// rowInfo [rows][4]: sequence, position, recorded-row index (-1: not recorded), unused.
@group(0) @binding(8) var<storage, read> rowInfo: array<vec4<i32>>;
@group(0) @binding(9) var<storage, read_write> scores: array<f32>;
${loader('loadK', 'K', kv)}
${loader('loadV', 'V', kv)}
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
        ok = select(0u, 1u, slotPos[slot] <= qPos);
      }
      tslot[li] = slot;
      tvalid[li] = ok;
    }
    workgroupBarrier();
    for (var e = li; e < T * D; e += 64u) {
      let k = e / D;
      tile[e] = select(0.0, loadK(tslot[k] * D + e % D), tvalid[k] == 1u);
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
      tile[e] = select(0.0, loadV(tslot[k] * D + e % D), tvalid[k] == 1u);
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
  let pbase = ((r * p.kvHeads + g) * p.splits + split) * G * (D + 2u);
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
  groupScale: f32, square: u32, metricBuffer: i32, maxLen: u32,
}
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
    let info = rowInfo[groupRows[listStart + n]];
    if (info.y - kpos < p.metricBuffer || kpos > info.y) { continue; }
    let rec = u32(info.z);
    for (var gq = 0u; gq < group; gq++) {
      let h = g * group + gq;
      let o = (rec * p.heads + h) * 2u;
      let prob = exp(scores[(rec * p.heads + h) * p.scoreStride + i] - stats[o]) / stats[o + 1u];
      add += select(prob, prob * prob, p.square == 1u);
    }
  }
  metrics[slot] += add * p.groupScale;
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

/** metrics[slots[i]] = values[i]: uploads initial metrics of new slots. */
export function scatterKernel(): KernelSource {
  return memo('scatter', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { count: u32, p1: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> metrics: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<i32>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let i = wid * 256u + li;
  if (i < p.count) { metrics[u32(slots[i])] = values[i]; }
}`,
  }));
}
