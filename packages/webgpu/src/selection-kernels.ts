/**
 * WGSL kernels of KV-Compress's eviction selection on the device (Backend.selectEvictions):
 * the same decision as `CompressionContext.freeCheapestBlocks` on the CPU, made where the
 * metrics live, so a compression round downloads one integer per head and one bit per slot
 * instead of the whole metric store. See EvictionSelection (core) for the rule and its ties.
 *
 * Buffers (Int32 unless noted; field layouts as in EvictionSelection):
 *   rows    [rows][8]    group, unit, table offset, length, hanging, maxFree, mask offset, 0
 *   groups  [groups][8]  sequence, first row, row count, blocks, newestUnprotected, sinks, 0, 0
 *   tables, positions    the cache's block tables and slot positions, as attention binds them
 *   metrics u32 [slots]  the device metric store's f32 bits
 *   state   u32          [rows][4] below, atOrBelow, freed, evict count; then at rows * 4,
 *                        [groups][4] threshold prefix, blocks to free (target), 0, 0
 *   hist    u32 [rows][256]  per level, cumulative: evictable keys of the row <= each bin
 *   result  [rows] blocks freed per row, then the eviction masks (EvictionSelection.result)
 *
 * A slot's key is its metric as an order-preserving u32: NaN -> 0, x >= +0 -> bits | 2^31,
 * x <= -0 -> ~bits; protected slots get KEY_PROTECTED, above every real key. The host's
 * int32 keys are these xor 2^31, so both order slots identically.
 *
 * The group threshold t is the smallest key at which the group's rows free `target` blocks:
 * found 8 bits at a time (levels 0..3) from per-row cumulative histograms, the way the CPU
 * planner narrows 11 + 11 + 10 bits. Every kernel's shapes are uniforms: one pipeline each.
 */
import { FLAT_ID, type KernelSource, memo } from './kernels.ts';

/** Radix digits per level of the threshold search: 8 bits, 4 levels. */
export const SELECTION_BINS = 256;
export const SELECTION_LEVELS = 4;
/** u32 words of selection state per row and per group. */
export const SELECTION_STATE_FIELDS = 4;

const HEADER = /* wgsl */ `
struct P { rows: u32, groups: u32, level: u32, blockSize: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> rows: array<i32>;
@group(0) @binding(2) var<storage, read> groups: array<i32>;
const KEY_PROTECTED: u32 = 0xffffffffu;

/** Blocks a row frees when its \`available\` lowest keys may go (0 below its hanging slots). */
fn freedAt(r: u32, available: u32) -> u32 {
  let hanging = u32(rows[r * 8u + 4u]);
  if (available < hanging) { return 0u; }
  return min(u32(rows[r * 8u + 5u]), (available - hanging) / p.blockSize + 1u);
}`;

/** Key of logical slot i of a row whose block table starts at t0 (needs tables, positions, metrics). */
const KEY_OF = /* wgsl */ `
fn keyOf(t0: u32, i: u32, newest: i32, sinks: i32) -> u32 {
  let slot = u32(tables[t0 + i / p.blockSize]) * p.blockSize + i % p.blockSize;
  let pos = positions[slot];
  if (pos >= newest || pos < sinks) { return KEY_PROTECTED; }
  let bits = metrics[slot];
  if ((bits & 0x7fffffffu) > 0x7f800000u) { return 0u; }
  return select(~bits, bits | 0x80000000u, (bits >> 31u) == 0u);
}`;

/**
 * One workgroup per row: histograms (one level's 8 bits) of the row's evictable keys whose
 * higher bits equal the group's threshold prefix so far, written cumulative and offset by the
 * keys below the prefix, so hist[r][b] = keys of the row <= the largest key of bin b.
 */
export function selectionHistogramKernel(): KernelSource {
  return memo('select-histogram', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${HEADER}
@group(0) @binding(3) var<storage, read> tables: array<i32>;
@group(0) @binding(4) var<storage, read> positions: array<i32>;
@group(0) @binding(5) var<storage, read> metrics: array<u32>;
@group(0) @binding(6) var<storage, read_write> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> hist: array<u32>;
${KEY_OF}
var<workgroup> counts: array<atomic<u32>, 256>;
var<workgroup> cum: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let row = wid;
  if (row >= p.rows || rows[row * 8u + 5u] <= 0) { return; }
  let g = u32(rows[row * 8u]);
  let t0 = u32(rows[row * 8u + 2u]);
  let len = u32(rows[row * 8u + 3u]);
  let newest = groups[g * 8u + 4u];
  let sinks = groups[g * 8u + 5u];
  let shift = 24u - 8u * p.level;
  var prefix = 0u;
  var base = 0u;
  if (p.level > 0u) {
    prefix = state[p.rows * 4u + g * 4u];
    base = state[row * 4u];
  }
  atomicStore(&counts[li], 0u);
  workgroupBarrier();
  for (var i = li; i < len; i += 256u) {
    let k = keyOf(t0, i, newest, sinks);
    if (k == KEY_PROTECTED) { continue; }
    if (p.level > 0u && (k >> (shift + 8u)) != prefix) { continue; }
    atomicAdd(&counts[(k >> shift) & 255u], 1u);
  }
  workgroupBarrier();
  cum[li] = atomicLoad(&counts[li]);
  workgroupBarrier();
  for (var s = 1u; s < 256u; s <<= 1u) {
    var v = 0u;
    if (li >= s) { v = cum[li - s]; }
    workgroupBarrier();
    cum[li] += v;
    workgroupBarrier();
  }
  hist[row * 256u + li] = base + cum[li];
}`,
  }));
}

/**
 * One workgroup per group, thread b = bin b: F(b) = blocks the group frees if every key up
 * to bin b may go; the level's digit is the first bin with F(b) >= target (the count of bins
 * below target, F being monotone). Level 0 first clamps the target to what the group can
 * free at all. Then each row's keys below / at or below the narrowed prefix are kept.
 */
export function selectionThresholdKernel(): KernelSource {
  return memo('select-threshold', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${HEADER}
@group(0) @binding(3) var<storage, read> hist: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
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
  let gs = p.rows * 4u + g * 4u;
  var F = 0u;
  for (var r = first; r < end; r++) {
    if (rows[r * 8u + 5u] > 0) { F += freedAt(r, hist[r * 256u + li]); }
  }
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
    if (b > 0u) {
      state[r * 4u] = hist[r * 256u + b - 1u];
    } else if (p.level == 0u) {
      state[r * 4u] = 0u;
    }
    state[r * 4u + 1u] = hist[r * 256u + b];
  }
  if (li == 0u) {
    state[gs] = (prefix << 8u) | b;
    state[gs + 1u] = goal;
  }
}`,
  }));
}

/**
 * One thread per group, after the last level (prefix = the threshold key t): each row frees
 * what its keys below t allow, then rows in order take the blocks that keys equal to t add
 * until the group reaches its target. Writes blocks freed (state and result) and the number
 * of slots to evict, (k - 1) * blockSize + hanging.
 */
export function selectionAllocateKernel(): KernelSource {
  return memo('select-allocate', () => ({
    workgroupSize: 64,
    code: /* wgsl */ `${HEADER}
@group(0) @binding(3) var<storage, read_write> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> result: array<i32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let g = wid * 64u + li;
  if (g >= p.groups) { return; }
  let first = u32(groups[g * 8u + 1u]);
  let end = first + u32(groups[g * 8u + 2u]);
  let goal = state[p.rows * 4u + g * 4u + 1u];
  var total = 0u;
  for (var r = first; r < end; r++) {
    var f = 0u;
    if (goal > 0u && rows[r * 8u + 5u] > 0) { f = freedAt(r, state[r * 4u]); }
    state[r * 4u + 2u] = f;
    total += f;
  }
  for (var r = first; r < end && total < goal; r++) {
    if (rows[r * 8u + 5u] <= 0) { continue; }
    let have = state[r * 4u + 2u];
    let more = min(freedAt(r, state[r * 4u + 1u]) - have, goal - total);
    state[r * 4u + 2u] = have + more;
    total += more;
  }
  for (var r = first; r < end; r++) {
    let f = state[r * 4u + 2u];
    state[r * 4u + 3u] = select(0u, (f - 1u) * p.blockSize + u32(rows[r * 8u + 4u]), f > 0u);
    result[r] = i32(f);
  }
}`,
  }));
}

/**
 * One workgroup per row: marks the row's e lowest keys, equal keys in ascending slot order.
 * Usually e >= (keys below t), and the e lowest are every key below t plus the first
 * e - below keys equal to t. When a floor or the block rule leaves keys below t (e < below),
 * the e-th lowest key is found by a radix select of its own. Then one pass over the slots in
 * chunks of 256, with a prefix count of the equal keys, writes the mask words.
 */
export function selectionMarkKernel(): KernelSource {
  return memo('select-mark', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `${HEADER}
@group(0) @binding(3) var<storage, read> tables: array<i32>;
@group(0) @binding(4) var<storage, read> positions: array<i32>;
@group(0) @binding(5) var<storage, read> metrics: array<u32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> result: array<i32>;
${KEY_OF}
var<workgroup> counts: array<atomic<u32>, 256>;
var<workgroup> scan: array<u32, 256>;
var<workgroup> bits: array<atomic<u32>, 8>;
var<workgroup> pickedBin: u32;
var<workgroup> pickedRank: u32;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT_ID}
  let row = wid;
  if (row >= p.rows) { return; }
  let g = u32(rows[row * 8u]);
  let t0 = u32(rows[row * 8u + 2u]);
  let len = u32(rows[row * 8u + 3u]);
  let out0 = p.rows + u32(rows[row * 8u + 6u]);
  let words = (len + 31u) / 32u;
  let newest = groups[g * 8u + 4u];
  let sinks = groups[g * 8u + 5u];
  let e = state[row * 4u + 3u];
  let belowT = state[row * 4u];
  if (e == 0u) {
    for (var w = li; w < words; w += 256u) { result[out0 + w] = 0; }
    return;
  }
  // The e-th lowest key (tau) and how many keys equal to it go (take).
  var tau = state[p.rows * 4u + g * 4u];
  var take = e - belowT;
  if (e < belowT) {
    var prefix = 0u;
    var rank = e - 1u;
    for (var level = 0u; level < 4u; level++) {
      let shift = 24u - 8u * level;
      atomicStore(&counts[li], 0u);
      workgroupBarrier();
      for (var i = li; i < len; i += 256u) {
        let k = keyOf(t0, i, newest, sinks);
        if (k == KEY_PROTECTED) { continue; }
        if (level > 0u && (k >> (shift + 8u)) != prefix) { continue; }
        atomicAdd(&counts[(k >> shift) & 255u], 1u);
      }
      workgroupBarrier();
      if (li == 0u) {
        var seen = 0u;
        var b = 0u;
        loop {
          let c = atomicLoad(&counts[b]);
          if (seen + c > rank || b == 255u) { break; }
          seen += c;
          b++;
        }
        pickedBin = b;
        pickedRank = rank - seen;
      }
      workgroupBarrier();
      prefix = (prefix << 8u) | pickedBin;
      rank = pickedRank;
      workgroupBarrier();
    }
    tau = prefix;
    take = rank + 1u;
  }
  var equalBefore = 0u;
  let chunks = (len + 255u) / 256u;
  for (var c = 0u; c < chunks; c++) {
    let i = c * 256u + li;
    var k = KEY_PROTECTED;
    if (i < len) { k = keyOf(t0, i, newest, sinks); }
    let eq = select(0u, 1u, k == tau && k != KEY_PROTECTED);
    scan[li] = eq;
    if (li < 8u) { atomicStore(&bits[li], 0u); }
    workgroupBarrier();
    for (var s = 1u; s < 256u; s <<= 1u) {
      var v = 0u;
      if (li >= s) { v = scan[li - s]; }
      workgroupBarrier();
      scan[li] += v;
      workgroupBarrier();
    }
    // scan[li] - eq: equal keys before slot i within the chunk.
    if (k < tau || (eq == 1u && equalBefore + scan[li] - eq < take)) {
      atomicOr(&bits[li >> 5u], 1u << (li & 31u));
    }
    equalBefore += scan[255];
    workgroupBarrier();
    let w = c * 8u + li;
    if (li < 8u && w < words) { result[out0 + w] = bitcast<i32>(atomicLoad(&bits[li])); }
    workgroupBarrier();
  }
}`,
  }));
}
