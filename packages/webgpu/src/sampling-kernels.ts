/**
 * Sampled token selection on the device (Backend.sample): the CPU Sampler's rule
 * (packages/engine/src/sampling.ts) with the row's uniform draw passed in, so a sampled step
 * reads back one integer per row instead of a row of vocab floats.
 *
 * Buffers: out i32 [rows]; logits f32 [rows][vocab]; params vec4f [rows] = (temperature,
 * topK, topP, u), u in [0, 1) the request's next Rng draw.
 *
 * The rule: temperature 0 takes the argmax (first index on ties). Otherwise p_i =
 * exp((l_i - max) / T). With top-k or top-p, tokens are ranked by logit descending, equal
 * logits by ascending id (the order of their probabilities); top-k keeps the first k ranks,
 * top-p the shortest prefix of those whose mass reaches topP of theirs, and the draw returns
 * the first rank whose cumulative mass reaches u times the kept mass. Without either, the
 * draw walks the ids in order. Sums are f32 here and f64 on the CPU: the two pick the same
 * token unless a draw falls within rounding of a boundary between two tokens.
 *
 * One workgroup per row. A rank prefix ending at key kappa is found by bisecting the key
 * (32 passes: the largest kappa whose "key >= kappa" mass reaches the target), then the tie
 * within kappa's equal logits by a prefix count in id order.
 */
import { type KernelSource, memo, workgroupArgmaxWgsl } from './kernels.ts';

export function sampleKernel(): KernelSource {
  return memo('sample', () => ({
    workgroupSize: 256,
    code: /* wgsl */ `
struct P { rows: u32, vocab: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<i32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> params: array<vec4f>;
const NONE: u32 = 0xffffffffu;
var<workgroup> redF: array<f32, 256>;
var<workgroup> redU: array<u32, 256>;
var<workgroup> counts: array<atomic<u32>, 256>;
var<workgroup> hit: atomic<u32>;
var<workgroup> outU: u32;
var<workgroup> outU2: u32;
var<private> base: u32;
var<private> mx: f32;
var<private> temperature: f32;

/** The logit's order as a u32 (NaN lowest), as the eviction selection orders metrics. */
fn keyOf(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0u; }
  return select(~b, b | 0x80000000u, (b >> 31u) == 0u);
}

fn valueOf(key: u32) -> f32 {
  return bitcast<f32>(select(~key, key & 0x7fffffffu, key >= 0x80000000u));
}

fn prob(v: f32) -> f32 { return exp((v - mx) / temperature); }

fn sumF(v: f32, li: u32) -> f32 {
  redF[li] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) { redF[li] += redF[li + s]; }
    workgroupBarrier();
  }
  let r = workgroupUniformLoad(&redF[0]);
  workgroupBarrier();
  return r;
}

fn sumU(v: u32, li: u32) -> u32 {
  redU[li] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) { redU[li] += redU[li + s]; }
    workgroupBarrier();
  }
  let r = workgroupUniformLoad(&redU[0]);
  workgroupBarrier();
  return r;
}

/** Id of the j-th (1-based) token in id order whose key is kappa; NONE if fewer. */
fn nthEqual(kappa: u32, j: u32, li: u32) -> u32 {
  if (li == 0u) { atomicStore(&hit, NONE); }
  var before = 0u;
  let chunks = (p.vocab + 255u) / 256u;
  for (var c = 0u; c < chunks; c++) {
    let i = c * 256u + li;
    var eq = 0u;
    if (i < p.vocab && keyOf(logits[base + i]) == kappa) { eq = 1u; }
    redU[li] = eq;
    workgroupBarrier();
    for (var s = 1u; s < 256u; s <<= 1u) {
      var v = 0u;
      if (li >= s) { v = redU[li - s]; }
      workgroupBarrier();
      redU[li] += v;
      workgroupBarrier();
    }
    if (eq == 1u && before + redU[li] == j) { atomicMin(&hit, i); }
    before += redU[255];
    workgroupBarrier();
  }
  if (li == 0u) { outU = atomicLoad(&hit); }
  return workgroupUniformLoad(&outU);
}

struct Rank { key: u32, id: u32, cum: f32 }

/**
 * The first rank (logit descending, id ascending) whose cumulative probability reaches x:
 * its key, its id, and the cumulative mass through it.
 */
fn firstReaching(x: f32, li: u32) -> Rank {
  var kappa = 0u;
  for (var bit = 31i; bit >= 0i; bit--) {
    let cand = kappa | (1u << u32(bit));
    var part = 0.0;
    for (var i = li; i < p.vocab; i += 256u) {
      let v = logits[base + i];
      if (keyOf(v) >= cand) { part += prob(v); }
    }
    if (sumF(part, li) >= x) { kappa = cand; }
  }
  var above = 0.0;
  var equal = 0u;
  for (var i = li; i < p.vocab; i += 256u) {
    let v = logits[base + i];
    let k = keyOf(v);
    if (k > kappa) { above += prob(v); }
    if (k == kappa) { equal += 1u; }
  }
  let mg = sumF(above, li);
  let ties = sumU(equal, li);
  let pk = prob(valueOf(kappa));
  var j = 1u;
  if (pk > 0.0) { j = u32(clamp(ceil((x - mg) / pk), 1.0, f32(max(ties, 1u)))); }
  return Rank(kappa, nthEqual(kappa, j, li), mg + f32(j) * pk);
}

/** Whether rank a comes after rank b (a lower logit, or the same logit and a higher id). */
fn after(aKey: u32, aId: u32, bKey: u32, bId: u32) -> bool {
  return aKey < bKey || (aKey == bKey && aId > bId);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let n = p.vocab;
  base = row * n;
  let q = params[row];
  // Argmax, first index on ties (argmaxKernel's reduction): the greedy pick and the max.
${workgroupArgmaxWgsl('logits', 'base', 'n', 'redF', 'redU')}
  mx = workgroupUniformLoad(&redF[0]);
  let best = workgroupUniformLoad(&redU[0]);
  workgroupBarrier();
  if (q.x <= 0.0) {
    if (li == 0u) { out[row] = select(i32(best), 0, best == NONE); }
    return;
  }
  temperature = q.x;
  let topK = u32(q.y);
  let topP = q.z;
  let limited = topK > 0u && topK < n;
  // Top-k: the k-th rank is (tauK, cutK); without it, a sentinel after every rank.
  var tauK = 0u;
  var cutK = n;
  if (limited) {
    var prefix = 0u;
    var rank = topK - 1u;
    for (var level = 0u; level < 4u; level++) {
      let shift = 24u - 8u * level;
      atomicStore(&counts[li], 0u);
      workgroupBarrier();
      for (var i = li; i < n; i += 256u) {
        let k = keyOf(logits[base + i]);
        if (level == 0u || (k >> (shift + 8u)) == prefix) { atomicAdd(&counts[(k >> shift) & 255u], 1u); }
      }
      workgroupBarrier();
      if (li == 0u) {
        // From the highest bin down: the bin holding rank \`rank\` counted from the top.
        var seen = 0u;
        var b = 255u;
        loop {
          let c = atomicLoad(&counts[b]);
          if (seen + c > rank || b == 0u) { break; }
          seen += c;
          b--;
        }
        outU = b;
        outU2 = rank - seen;
      }
      prefix = (prefix << 8u) | workgroupUniformLoad(&outU);
      rank = workgroupUniformLoad(&outU2);
      workgroupBarrier();
    }
    tauK = prefix;
    // Ranks among equal logits go by id: the k-th rank is the (rank + 1)-th of them.
    cutK = nthEqual(tauK, rank + 1u, li);
  }
  var part = 0.0;
  for (var i = li; i < n; i += 256u) {
    let v = logits[base + i];
    if (!after(keyOf(v), i, tauK, cutK)) { part += prob(v); }
  }
  let total = sumF(part, li);
  if (limited || topP < 1.0) {
    // Top-p: the kept prefix ends at rank (eKey, eId) with mass \`kept\`.
    var eKey = tauK;
    var eId = cutK;
    var kept = total;
    if (topP < 1.0) {
      let e = firstReaching(topP * total, li);
      if (e.id != NONE && !after(e.key, e.id, tauK, cutK)) {
        eKey = e.key;
        eId = e.id;
        kept = e.cum;
      }
    }
    let f = firstReaching(q.w * kept, li);
    var pick = f.id;
    if (f.id == NONE || after(f.key, f.id, eKey, eId)) { pick = eId; }
    if (li == 0u) { out[row] = i32(select(pick, n - 1u, pick >= n)); }
    return;
  }
  // Neither: the first id whose cumulative probability in id order reaches u * total.
  let x = q.w * total;
  if (li == 0u) { atomicStore(&hit, NONE); }
  var before = 0.0;
  let chunks = (n + 255u) / 256u;
  for (var c = 0u; c < chunks; c++) {
    let i = c * 256u + li;
    var pi = 0.0;
    if (i < n) { pi = prob(logits[base + i]); }
    redF[li] = pi;
    workgroupBarrier();
    for (var s = 1u; s < 256u; s <<= 1u) {
      var v = 0.0;
      if (li >= s) { v = redF[li - s]; }
      workgroupBarrier();
      redF[li] += v;
      workgroupBarrier();
    }
    if (i < n && before + redF[li] >= x) { atomicMin(&hit, i); }
    before += redF[255];
    workgroupBarrier();
  }
  if (li == 0u) {
    let h = atomicLoad(&hit);
    out[row] = i32(select(h, n - 1u, h == NONE));
  }
}`,
  }));
}
