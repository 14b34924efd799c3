/**
 * WGSL kernels of KV-Compress's eviction selection on the device (Backend.selectEvictions):
 * the same decision as `CompressionContext.freeCheapestBlocks` on the CPU, made where the
 * metrics live, so a compression round downloads one integer per head and one bit per slot
 * instead of the whole metric store; and of the compaction that follows it on the device
 * (Backend.compactEvictions), which downloads two integers per head. See EvictionSelection
 * (core) for the rule and its ties.
 *
 * Buffers (Int32 unless noted; field layouts as in EvictionSelection):
 *   rows    [rows][8]    group, unit, table offset, length, hanging, maxFree, mask offset, 0
 *   groups  [groups][8]  sequence, first row, row count, blocks, newestUnprotected, sinks, 0, 0
 *   tables, positions    the cache's block tables and slot positions, as attention binds them
 *   metrics u32 [slots]  the device metric store's f32 bits
 *   keys    u32          each row's keys, from word `mask offset * 32` (a row's keys are
 *                        padded to a multiple of 32 with KEY_PROTECTED): made once, by level 0
 *   state   u32          [rows][8] below, atOrBelow, freed, evict count, belowAt[4]; then at
 *                        rows * 8, [groups][4] threshold prefix, blocks to free (target), 0, 0
 *   hist    u32 [rows][256]  per level, cumulative: evictable keys of the row <= each bin
 *   result  [rows] blocks freed per row, then the eviction masks (EvictionSelection.result)
 *
 * A slot's key is its metric as an order-preserving u32: NaN -> 0, x >= +0 -> bits | 2^31,
 * x <= -0 -> ~bits; protected slots get KEY_PROTECTED, above every real key. The host's
 * int32 keys are these xor 2^31, so both order slots identically.
 *
 * The group threshold t is the smallest key at which the group's rows free `target` blocks:
 * found 8 bits at a time (levels 0..3) from per-row cumulative histograms, the way the CPU
 * planner narrows 11 + 11 + 10 bits. belowAt[L] keeps, per row, how many keys lie below t's
 * top 8L bits, so a row whose cut lies below t (the block rule spares some keys below t)
 * searches only from the deepest level that still holds its cut.
 *
 * Metrics of a head sit in a few exponents, so most keys of a row share their top byte: the
 * histograms' workgroup atomics then all hit one or two bins: each invocation merges its eight
 * keys first (histAdd8). Every kernel's shapes are uniforms: one pipeline each.
 */
import { FLAT_ID, type KernelSource, memo } from './kernels.ts';

/** Radix digits per level of the threshold search: 8 bits, 4 levels. */
export const SELECTION_BINS = 256;
export const SELECTION_LEVELS = 4;
/** u32 words of selection state per row; each group has 4 after the rows. */
export const SELECTION_STATE_FIELDS = 8;
export const SELECTION_GROUP_STATE_FIELDS = 4;
/**
 * u32 words before the per-row figures in the compaction info buffer: [0] total moves, then
 * the window buckets of a chunked pool's moves (kernels.ts, MOVE_BUCKET_COUNTS / _CURSORS).
 */
export const COMPACT_INFO_HEADER = 64;

/**
 * Uniforms and the rows binding (1); the groups binding (2) where the kernel reads it. The
 * third uniform is the level of the threshold search (unused by compact-pairs).
 */
const header = (groups: boolean): string => /* wgsl */ `
struct P { rows: u32, groups: u32, level: u32, blockSize: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> rows: array<i32>;
${groups ? '@group(0) @binding(2) var<storage, read> groups: array<i32>;' : ''}
const KEY_PROTECTED: u32 = 0xffffffffu;

/** Blocks a row frees when its \`available\` lowest keys may go (0 below its hanging slots). */
fn freedAt(r: u32, available: u32) -> u32 {
  let hanging = u32(rows[r * 8u + 4u]);
  if (available < hanging) { return 0u; }
  return min(u32(rows[r * 8u + 5u]), (available - hanging) / p.blockSize + 1u);
}`;

/** Key of a slot from its position and metric bits (KEY_PROTECTED in the window or the sinks). */
const KEY_FROM = /* wgsl */ `
fn keyFrom(pos: i32, bits: u32, newest: i32, sinks: i32) -> u32 {
  if (pos >= newest || pos < sinks) { return KEY_PROTECTED; }
  if ((bits & 0x7fffffffu) > 0x7f800000u) { return 0u; }
  return select(~bits, bits | 0x80000000u, (bits >> 31u) == 0u);
}`;

/**
 * keys8(t0, i, len, newest, sinks, &q0, &q1): the keys of logical slots i..i+7 of a row (i a
 * multiple of 8; KEY_PROTECTED past len). With blocks of a multiple of 8 slots they are 8
 * consecutive slots of one block: two vec4 loads of positions and of metrics.
 */
function keys8(blockAligned: boolean): string {
  if (!blockAligned) {
    return /* wgsl */ `
@group(0) @binding(4) var<storage, read> positions: array<i32>;
@group(0) @binding(5) var<storage, read> metrics: array<u32>;
${KEY_FROM}
fn keyAt(t0: u32, i: u32, len: u32, newest: i32, sinks: i32) -> u32 {
  if (i >= len) { return KEY_PROTECTED; }
  let slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
  return keyFrom(positions[slot], metrics[slot], newest, sinks);
}
fn keys8(t0: u32, i: u32, len: u32, newest: i32, sinks: i32, q0: ptr<function, vec4<u32>>, q1: ptr<function, vec4<u32>>) {
  *q0 = vec4<u32>(keyAt(t0, i, len, newest, sinks), keyAt(t0, i + 1u, len, newest, sinks), keyAt(t0, i + 2u, len, newest, sinks), keyAt(t0, i + 3u, len, newest, sinks));
  *q1 = vec4<u32>(keyAt(t0, i + 4u, len, newest, sinks), keyAt(t0, i + 5u, len, newest, sinks), keyAt(t0, i + 6u, len, newest, sinks), keyAt(t0, i + 7u, len, newest, sinks));
}`;
  }
  return /* wgsl */ `
@group(0) @binding(4) var<storage, read> positions: array<vec4<i32>>;
@group(0) @binding(5) var<storage, read> metrics: array<vec4<u32>>;
${KEY_FROM}
fn keys8(t0: u32, i: u32, len: u32, newest: i32, sinks: i32, q0: ptr<function, vec4<u32>>, q1: ptr<function, vec4<u32>>) {
  *q0 = vec4<u32>(KEY_PROTECTED);
  *q1 = vec4<u32>(KEY_PROTECTED);
  if (i >= len) { return; }
  let v = (u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize) / 4u;
  let p0 = positions[v];
  let p1 = positions[v + 1u];
  let m0 = metrics[v];
  let m1 = metrics[v + 1u];
  for (var j = 0u; j < 4u; j++) {
    if (i + j < len) { (*q0)[j] = keyFrom(p0[j], m0[j], newest, sinks); }
    if (i + 4u + j < len) { (*q1)[j] = keyFrom(p1[j], m1[j], newest, sinks); }
  }
}`;
}

/** cum: array<u32, 256> in workgroup memory and scanCum(li), its inclusive scan in place (every invocation calls it). */
const SCAN_CUM = /* wgsl */ `var<workgroup> cum: array<u32, 256>;
fn scanCum(li: u32) {
  for (var s = 1u; s < 256u; s <<= 1u) {
    var v = 0u;
    if (li >= s) { v = cum[li - s]; }
    workgroupBarrier();
    cum[li] += v;
    workgroupBarrier();
  }
}`;

/**
 * Workgroup histogram and scan helpers: counts (atomic bins), histAdd8 (an invocation's eight
 * keys), cum (a 256-entry scan). An invocation takes eight consecutive keys (two vec4 loads)
 * and merges them before touching the shared bins: the keys of a row mostly share a bin (see
 * the top), so the bin of its first counted key gets one add of their count, and the others
 * one add each. Measured on an H100 (round-kernels.gpu.ts): 3-4x the rate of one key per
 * invocation and step with subgroup peeling, and as fast as the same loads without a
 * histogram, so no subgroup operations are needed.
 */
const HISTOGRAM_HELPERS = /* wgsl */ `
var<workgroup> counts: array<atomic<u32>, 256>;
/** Bin of key k for the digit at shift (256: not counted): protected keys, and with prefixed, keys whose bits above the digit are not prefix. */
fn binOf(k: u32, shift: u32, prefix: u32, prefixed: bool) -> u32 {
  if (k == KEY_PROTECTED || (prefixed && (k >> (shift + 8u)) != prefix)) { return 256u; }
  return (k >> shift) & 255u;
}
fn histAdd8(q0: vec4<u32>, q1: vec4<u32>, shift: u32, prefix: u32, prefixed: bool) {
  var bins = array<u32, 8>(
    binOf(q0.x, shift, prefix, prefixed), binOf(q0.y, shift, prefix, prefixed), binOf(q0.z, shift, prefix, prefixed), binOf(q0.w, shift, prefix, prefixed),
    binOf(q1.x, shift, prefix, prefixed), binOf(q1.y, shift, prefix, prefixed), binOf(q1.z, shift, prefix, prefixed), binOf(q1.w, shift, prefix, prefixed));
  var lead = 256u;
  for (var j = 0u; j < 8u; j++) {
    if (bins[j] != 256u) {
      lead = bins[j];
      break;
    }
  }
  var n = 0u;
  for (var j = 0u; j < 8u; j++) {
    let b = bins[j];
    if (b == lead) { n++; } else if (b != 256u) { atomicAdd(&counts[b], 1u); }
  }
  if (lead != 256u) { atomicAdd(&counts[lead], n); }
}
${SCAN_CUM}`;

const ENTRY = `@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}`;

/**
 * One workgroup per row: histograms (one level's 8 bits) of the row's evictable keys whose
 * higher bits equal the group's threshold prefix so far, written cumulative and offset by the
 * keys below the prefix, so hist[r][b] = keys of the row <= the largest key of bin b.
 * Level 0 makes the row's keys (from tables, positions and metrics) and zeroes its state;
 * the other levels read only the keys.
 */
export function selectionHistogramKernel(blockAligned: boolean): KernelSource {
  return memo(`select-histogram${blockAligned ? ':b8' : ''}`, () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${header(true)}
@group(0) @binding(3) var<storage, read> tables: array<i32>;
@group(0) @binding(6) var<storage, read_write> keys: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> state: array<u32>;
@group(0) @binding(8) var<storage, read_write> hist: array<u32>;
@group(0) @binding(9) var<storage, read_write> fsum: array<atomic<u32>>;
${keys8(blockAligned)}
${HISTOGRAM_HELPERS}
${ENTRY}
  let row = wid;
  if (row >= p.rows || rows[row * 8u + 5u] <= 0) { return; }
  let g = u32(rows[row * 8u]);
  let t0 = u32(rows[row * 8u + 2u]);
  let len = u32(rows[row * 8u + 3u]);
  let k0 = u32(rows[row * 8u + 6u]) * 32u;
  let padded = (len + 31u) / 32u * 32u;
  let newest = groups[g * 8u + 4u];
  let sinks = groups[g * 8u + 5u];
  let shift = 24u - 8u * p.level;
  var prefix = 0u;
  var base = 0u;
  if (p.level > 0u) {
    prefix = state[p.rows * 8u + g * 4u];
    base = state[row * 8u];
  } else if (li < 8u) {
    state[row * 8u + li] = 0u;
  }
  atomicStore(&counts[li], 0u);
  workgroupBarrier();
  // Eight keys an invocation per step: padded is a multiple of 32, so they are all in or all out.
  for (var c = 0u; c < padded; c += 2048u) {
    let i = c + li * 8u;
    var q0 = vec4<u32>(KEY_PROTECTED);
    var q1 = vec4<u32>(KEY_PROTECTED);
    if (i < padded) {
      let w = (k0 + i) / 4u;
      if (p.level == 0u) {
        keys8(t0, i, len, newest, sinks, &q0, &q1);
        keys[w] = q0;
        keys[w + 1u] = q1;
      } else {
        q0 = keys[w];
        q1 = keys[w + 1u];
      }
    }
    histAdd8(q0, q1, shift, prefix, p.level > 0u);
  }
  workgroupBarrier();
  cum[li] = atomicLoad(&counts[li]);
  workgroupBarrier();
  scanCum(li);
  let atOrBelow = base + cum[li];
  hist[row * 256u + li] = atOrBelow;
  // The group's F(b), blocks freed if every key up to bin b may go, summed here as each row's
  // histogram is made (the threshold kernel walking the group's rows took longer: one
  // workgroup per group).
  let f = freedAt(row, atOrBelow);
  if (f > 0u) { atomicAdd(&fsum[g * 256u + li], f); }
}`,
  }));
}

/**
 * One workgroup per group, thread b = bin b: F(b) = blocks the group frees if every key up
 * to bin b may go (fsum, summed by the histogram kernel; zeroed here for the next level);
 * the level's digit is the first bin with F(b) >= target (the count of bins below target, F
 * being monotone). Level 0 first clamps the target to what the group can free at all. Then
 * each row's keys below / at or below the narrowed prefix are kept, and the keys below the
 * prefix as belowAt[level + 1].
 */
export function selectionThresholdKernel(): KernelSource {
  return memo('select-threshold', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${header(true)}
@group(0) @binding(3) var<storage, read> hist: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> fsum: array<u32>;
var<workgroup> below: atomic<u32>;
var<workgroup> goalShared: u32;
var<workgroup> prefix: u32;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let g = wid;
  if (g >= p.groups) { return; }
  let first = u32(groups[g * 8u + 1u]);
  let end = first + u32(groups[g * 8u + 2u]);
  let gs = p.rows * 8u + g * 4u;
  let F = fsum[g * 256u + li];
  fsum[g * 256u + li] = 0u;
  if (li == 0u) {
    atomicStore(&below, 0u);
    if (p.level == 0u) {
      prefix = 0u;
    } else {
      prefix = state[gs];
      goalShared = state[gs + 1u];
    }
  }
  // Level 0: at most what freeing every evictable key gives (bin 255 holds them all).
  if (p.level == 0u && li == 255u) { goalShared = min(u32(max(groups[g * 8u + 3u], 0)), F); }
  workgroupBarrier();
  let goal = goalShared;
  if (F < goal) { atomicAdd(&below, 1u); }
  workgroupBarrier();
  let b = min(atomicLoad(&below), 255u);
  for (var r = first + li; r < end; r += 256u) {
    if (rows[r * 8u + 5u] <= 0) { continue; }
    var nb = state[r * 8u];
    if (b > 0u) {
      nb = hist[r * 256u + b - 1u];
    } else if (p.level == 0u) {
      nb = 0u;
    }
    state[r * 8u] = nb;
    state[r * 8u + 1u] = hist[r * 256u + b];
    if (p.level < 3u) { state[r * 8u + 5u + p.level] = nb; }
  }
  if (li == 0u) {
    state[gs] = (prefix << 8u) | b;
    state[gs + 1u] = goal;
  }
}`,
  }));
}

/**
 * One workgroup per group, after the last level (prefix = the threshold key t): each row frees
 * what its keys below t allow; then rows in order take the blocks that keys equal to t add
 * until the group reaches its target (a scan over the rows). Writes blocks freed (state and
 * result) and the number of slots to evict, (k - 1) * blockSize + hanging.
 */
export function selectionAllocateKernel(): KernelSource {
  return memo('select-allocate', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${header(true)}
@group(0) @binding(3) var<storage, read_write> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> result: array<i32>;
${SCAN_CUM}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let g = wid;
  if (g >= p.groups) { return; }
  let first = u32(groups[g * 8u + 1u]);
  let count = u32(groups[g * 8u + 2u]);
  let goal = state[p.rows * 8u + g * 4u + 1u];
  let chunks = (count + 255u) / 256u;
  // Blocks every row frees with its keys below t.
  var total = 0u;
  for (var c = 0u; c < chunks; c++) {
    let r = first + c * 256u + li;
    var f = 0u;
    if (c * 256u + li < count) {
      if (goal > 0u && rows[r * 8u + 5u] > 0) { f = freedAt(r, state[r * 8u]); }
      state[r * 8u + 2u] = f;
    }
    cum[li] = f;
    workgroupBarrier();
    scanCum(li);
    total += cum[255];
    workgroupBarrier();
  }
  // The keys equal to t: rows in order take the blocks they add while the group is short.
  var before = 0u;
  for (var c = 0u; c < chunks; c++) {
    let r = first + c * 256u + li;
    let inGroup = c * 256u + li < count;
    var more = 0u;
    if (inGroup && goal > 0u && rows[r * 8u + 5u] > 0) { more = freedAt(r, state[r * 8u + 1u]) - state[r * 8u + 2u]; }
    cum[li] = more;
    workgroupBarrier();
    scanCum(li);
    if (inGroup) {
      let taken = total + before + cum[li] - more;
      let f = state[r * 8u + 2u] + select(0u, min(more, goal - taken), taken < goal);
      state[r * 8u + 2u] = f;
      state[r * 8u + 3u] = select(0u, (f - 1u) * p.blockSize + u32(rows[r * 8u + 4u]), f > 0u);
      result[r] = i32(f);
    }
    before += cum[255];
    workgroupBarrier();
  }
}`,
  }));
}

/**
 * One workgroup per row: marks the row's e lowest keys, equal keys in ascending slot order.
 * Usually e >= (keys below t), and the e lowest are every key below t plus the first
 * e - below keys equal to t. When a floor or the block rule leaves keys below t (e < below),
 * the e-th lowest key is found by a radix select of its own, from the deepest level whose
 * prefix of t still holds it (belowAt). Then one invocation per mask word (32 keys), with a
 * prefix count of the equal keys over the words, writes the masks.
 */
export function selectionMarkKernel(): KernelSource {
  return memo('select-mark', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${header(false)}
@group(0) @binding(2) var<storage, read> keys: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> result: array<i32>;
${HISTOGRAM_HELPERS}
var<workgroup> picked: vec2<u32>;
${ENTRY}
  let row = wid;
  if (row >= p.rows) { return; }
  let g = u32(rows[row * 8u]);
  let len = u32(rows[row * 8u + 3u]);
  let k0 = u32(rows[row * 8u + 6u]) * 32u;
  let out0 = p.rows + u32(rows[row * 8u + 6u]);
  let words = (len + 31u) / 32u;
  let e = state[row * 8u + 3u];
  let belowT = state[row * 8u];
  if (e == 0u) {
    for (var w = li; w < words; w += 256u) { result[out0 + w] = 0; }
    return;
  }
  // The e-th lowest key (tau) and how many keys equal to it go (take).
  var tau = state[p.rows * 8u + g * 4u];
  var take = e - min(e, belowT);
  if (e < belowT) {
    // The deepest level L whose prefix of t still holds rank e - 1: belowAt[L] <= e - 1.
    var start = 0u;
    var rank = e - 1u;
    for (var l = 1u; l < 4u; l++) {
      let b = state[row * 8u + 4u + l];
      if (b <= e - 1u) {
        start = l;
        rank = e - 1u - b;
      }
    }
    var prefix = select(0u, tau >> (32u - 8u * start), start > 0u);
    let padded = words * 32u;
    for (var level = 0u; level < 4u; level++) {
      if (level >= start) {
        let shift = 24u - 8u * level;
        atomicStore(&counts[li], 0u);
        workgroupBarrier();
        // Eight keys an invocation per step (keys past the length are KEY_PROTECTED).
        for (var c = 0u; c < padded; c += 2048u) {
          let i = c + li * 8u;
          var q0 = vec4<u32>(KEY_PROTECTED);
          var q1 = vec4<u32>(KEY_PROTECTED);
          if (i < padded) {
            q0 = keys[(k0 + i) / 4u];
            q1 = keys[(k0 + i) / 4u + 1u];
          }
          histAdd8(q0, q1, shift, prefix, level > 0u);
        }
        workgroupBarrier();
        cum[li] = atomicLoad(&counts[li]);
        workgroupBarrier();
        scanCum(li);
        var lo = 0u;
        if (li > 0u) { lo = cum[li - 1u]; }
        if (lo <= rank && rank < cum[li]) { picked = vec2u(li, rank - lo); }
        workgroupBarrier();
        prefix = (prefix << 8u) | picked.x;
        rank = picked.y;
        workgroupBarrier();
      }
    }
    tau = prefix;
    take = rank + 1u;
  }
  var equalBefore = 0u;
  let wchunks = (words + 255u) / 256u;
  for (var c = 0u; c < wchunks; c++) {
    let w = c * 256u + li;
    var lt = 0u;
    var eq = 0u;
    if (w < words) {
      for (var j = 0u; j < 8u; j++) {
        let q = keys[(k0 >> 2u) + w * 8u + j];
        for (var x = 0u; x < 4u; x++) {
          let bit = 1u << (j * 4u + x);
          let k = q[x];
          if (k < tau) { lt |= bit; }
          if (k == tau && k != KEY_PROTECTED) { eq |= bit; }
        }
      }
    }
    let n = countOneBits(eq);
    cum[li] = n;
    workgroupBarrier();
    scanCum(li);
    // Equal keys in earlier words, then the first ones of this word, until take.
    let prior = equalBefore + cum[li] - n;
    var mask = lt;
    var want = select(0u, min(take - prior, n), take > prior);
    var m = eq;
    for (; want > 0u; want--) {
      mask |= m & (~m + 1u);
      m &= m - 1u;
    }
    if (w < words) { result[out0 + w] = bitcast<i32>(mask); }
    equalBefore += cum[255];
    workgroupBarrier();
  }
}`,
  }));
}

/**
 * One workgroup per row, after the marking (the device half of PageAllocator.compact for the
 * row's evictions): with s = length - e survivors, the evicted slots below s (holes) and the
 * kept slots at or past s (sources) are ranked, each in ascending logical order, and hole j
 * receives source j: moveDst / moveSrc [offset + j], the row's offset taken from a global
 * counter (info[0]; any order of rows gives the same cache), and info gets the row's blocks
 * freed and moves. The released block-table entries are left as they are: the host keeps
 * them as the head's reserved tail (PageAllocator), and nothing reads a table past a head's
 * blocks.
 *   info u32: [COMPACT_INFO_HEADER] total moves, ...; then [rows] blocks freed; then [rows] moves
 */
export function compactPairsKernel(): KernelSource {
  return memo('compact-pairs', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${header(false)}
@group(0) @binding(2) var<storage, read> state: array<u32>;
@group(0) @binding(3) var<storage, read> masks: array<u32>;
@group(0) @binding(4) var<storage, read> tables: array<i32>;
@group(0) @binding(5) var<storage, read_write> moveSrc: array<i32>;
@group(0) @binding(6) var<storage, read_write> moveDst: array<i32>;
@group(0) @binding(7) var<storage, read_write> info: array<atomic<u32>>;
const HEAD = ${COMPACT_INFO_HEADER}u;
var<workgroup> cumH: array<u32, 256>;
var<workgroup> cumS: array<u32, 256>;
var<workgroup> offset: u32;
/** Inclusive scans of cumH and cumS in place (every invocation calls it). */
fn scan2(li: u32) {
  for (var s = 1u; s < 256u; s <<= 1u) {
    var a = 0u;
    var b = 0u;
    if (li >= s) {
      a = cumH[li - s];
      b = cumS[li - s];
    }
    workgroupBarrier();
    cumH[li] += a;
    cumS[li] += b;
    workgroupBarrier();
  }
}
/** Bits of word w for logical indices below n. */
fn bitsBelow(w: u32, n: u32) -> u32 {
  if (n >= w * 32u + 32u) { return 0xffffffffu; }
  if (n <= w * 32u) { return 0u; }
  return (1u << (n - w * 32u)) - 1u;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let row = wid;
  if (row >= p.rows) { return; }
  let t0 = u32(rows[row * 8u + 2u]);
  let len = u32(rows[row * 8u + 3u]);
  let out0 = p.rows + u32(rows[row * 8u + 6u]);
  let words = (len + 31u) / 32u;
  let e = state[row * 8u + 3u];
  if (li == 0u) { atomicStore(&info[HEAD + row], state[row * 8u + 2u]); }
  if (e == 0u) {
    if (li == 0u) { atomicStore(&info[HEAD + p.rows + row], 0u); }
    return;
  }
  let s = len - e;
  let wchunks = (words + 255u) / 256u;
  // Holes of the row, then its offset in the move list.
  var holes = 0u;
  for (var c = 0u; c < wchunks; c++) {
    let w = c * 256u + li;
    var h = 0u;
    if (w < words) { h = countOneBits(masks[out0 + w] & bitsBelow(w, s)); }
    cumH[li] = h;
    cumS[li] = 0u;
    workgroupBarrier();
    scan2(li);
    holes += cumH[255];
    workgroupBarrier();
  }
  if (li == 0u) {
    offset = atomicAdd(&info[0], holes);
    atomicStore(&info[HEAD + p.rows + row], holes);
  }
  workgroupBarrier();
  let off = offset;
  var holesBefore = 0u;
  var sourcesBefore = 0u;
  for (var c = 0u; c < wchunks; c++) {
    let w = c * 256u + li;
    var hm = 0u;
    var sm = 0u;
    if (w < words) {
      let m = masks[out0 + w];
      let low = bitsBelow(w, s);
      hm = m & low;
      sm = ~m & bitsBelow(w, len) & ~low;
    }
    let nh = countOneBits(hm);
    let ns = countOneBits(sm);
    cumH[li] = nh;
    cumS[li] = ns;
    workgroupBarrier();
    scan2(li);
    var hr = off + holesBefore + cumH[li] - nh;
    var sr = off + sourcesBefore + cumS[li] - ns;
    for (; hm != 0u; hm &= hm - 1u) {
      let i = w * 32u + firstTrailingBit(hm);
      moveDst[hr] = tables[t0 + i / p.blockSize] * i32(p.blockSize) + i32(i % p.blockSize);
      hr++;
    }
    for (; sm != 0u; sm &= sm - 1u) {
      let i = w * 32u + firstTrailingBit(sm);
      moveSrc[sr] = tables[t0 + i / p.blockSize] * i32(p.blockSize) + i32(i % p.blockSize);
      sr++;
    }
    holesBefore += cumH[255];
    sourcesBefore += cumS[255];
    workgroupBarrier();
  }
}`,
  }));
}

/**
 * One workgroup per listed head: positions[slot] = saved[slot] for the head's first `count`
 * logical slots (list [heads][2]: block-table offset, count). Restores, after a whole upload
 * of the host's slot positions, the ones only the device held (WebGpuBackend's table sync).
 */
export function restorePositionsKernel(): KernelSource {
  return memo('restore-positions', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { heads: u32, blockSize: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> list: array<i32>;
@group(0) @binding(2) var<storage, read> tables: array<i32>;
@group(0) @binding(3) var<storage, read> saved: array<i32>;
@group(0) @binding(4) var<storage, read_write> positions: array<i32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  if (wid >= p.heads) { return; }
  let t0 = u32(list[2u * wid]);
  let count = u32(list[2u * wid + 1u]);
  for (var i = li; i < count; i += 256u) {
    let slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
    positions[slot] = saved[slot];
  }
}`,
  }));
}
