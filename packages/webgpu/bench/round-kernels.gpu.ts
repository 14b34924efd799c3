// Variants of the compression round's two costliest kernel shapes, timed side by side on one
// device (experiments behind the kernels in selection-kernels.ts and kernels.ts):
//   histogram: one workgroup per row of ROW_KEYS keys, a 256-bin workgroup histogram of one
//              8-bit digit of the keys matching a prefix (the selection's threshold search and
//              the marking's own radix select). Level 0 (every key counts, the keys' top byte:
//              most land in one bin) and level 2 (a 16-bit prefix that few keys match).
//              cur: one key per invocation and step, two subgroup peels per step (the kernel
//              as of 1b4281b); plain: one key, a workgroup atomic each; v8: eight keys per
//              invocation and step (two vec4 loads), merged in the invocation first; v8sg: v8
//              then the two peels, weighted; read: v8's loads and filter, no histogram.
//   moves:     K and V rows of HEAD_DIM f16 moved dst := src, 16 bytes an invocation; cur: K
//              loaded and stored, then V; kv: both loaded, then both stored (the backend's
//              compactMovesKernel); kv2: two 16-byte
//              words of K and of V an invocation; copy: a plain buffer copy of the same bytes.
// Random metrics in [0, 1) with 24-bit values, as selection.gpu.ts. Prints one JSON line per
// variant: ms (median of REPEATS dispatches) and keys/s or GB/s.
// Env: ROWS (16384), ROW_KEYS (8192), MOVES (25749969), HEAD_DIM (128), REPEATS (7),
// SECTIONS (histogram,moves,sparse; also full), SPARSE_* and FULL_* (see those sections).
/// <reference types="@webgpu/types" />
import { Rng } from '@kvcompress/engine';
import { requestWebGpuDevice } from '../src/device.ts';
import { compactMovesKernel, movesDirectKernel } from '../src/kernels.ts';
import { selectionHistogramKernel } from '../src/selection-kernels.ts';

const env = (name: string, fallback: string): number => Number(process.env[name] ?? fallback);
const ROWS = env('ROWS', '16384');
const ROW_KEYS = env('ROW_KEYS', '8192');
const MOVES = env('MOVES', '25749969');
const HEAD_DIM = env('HEAD_DIM', '128');
const REPEATS = env('REPEATS', '7');
const SECTIONS = new Set((process.env['SECTIONS'] ?? 'histogram,moves,sparse').split(','));

const device = await requestWebGpuDevice({ subgroups: true });
const keepAlive = setInterval(() => {}, 1000);
const sg = device.features.has('subgroups');
const print = (o: object) => console.log(JSON.stringify({ kind: 'round-kernels', subgroups: sg, ballastGb: env('BALLAST_GB', '0'), ...o }));

const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const buffer = (bytes: number) => device.createBuffer({ size: Math.max(16, bytes), usage: STORAGE });
const uniform = (words: number[]) => {
  const b = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(b, 0, new Uint32Array([...words, 0, 0, 0, 0].slice(0, 4)));
  return b;
};

/** A pipeline whose layout holds every binding of `types` (binding i: types[i]), used or not by the variant. */
function pipeline(code: string, types: GPUBufferBindingType[]): GPUComputePipeline {
  const layout = device.createBindGroupLayout({
    entries: types.map((type, binding) => ({ binding, visibility: GPUShaderStage.COMPUTE, buffer: { type } })),
  });
  return device.createComputePipeline({
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module: device.createShaderModule({ code }), entryPoint: 'main' },
  });
}
const HIST_BINDINGS: GPUBufferBindingType[] = ['uniform', 'read-only-storage', 'storage', 'read-only-storage'];
const HIST_RW_BINDINGS: GPUBufferBindingType[] = ['uniform', 'storage', 'storage', 'read-only-storage'];
const MOVE_BINDINGS: GPUBufferBindingType[] = ['uniform', 'storage', 'storage', 'read-only-storage', 'read-only-storage'];

async function readU32(b: GPUBuffer, words: number): Promise<Uint32Array> {
  const staging = device.createBuffer({ size: words * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const e = device.createCommandEncoder();
  e.copyBufferToBuffer(b, 0, staging, 0, words * 4);
  device.queue.submit([e.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint32Array(staging.getMappedRange().slice(0));
  staging.unmap();
  staging.destroy();
  return out;
}

/** Median ms of REPEATS dispatches after `warm` untimed ones (each submitted and waited for alone). */
async function time(p: GPUComputePipeline, buffers: GPUBuffer[], groups: [number, number], warm = 1): Promise<number> {
  const bg = device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: buffers.map((b, i) => ({ binding: i, resource: { buffer: b } })),
  });
  const run = () => {
    const e = device.createCommandEncoder();
    const pass = e.beginComputePass();
    pass.setPipeline(p);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(groups[0], groups[1]);
    pass.end();
    device.queue.submit([e.finish()]);
  };
  for (let w = 0; w < warm; w++) run();
  await device.queue.onSubmittedWorkDone();
  const ms: number[] = [];
  for (let r = 0; r < (warm === 0 ? 1 : REPEATS); r++) {
    const t = performance.now();
    run();
    await device.queue.onSubmittedWorkDone();
    ms.push(performance.now() - t);
  }
  return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)] as number;
}

const grid = (n: number): [number, number] => (n <= 65535 ? [n, 1] : [65535, Math.ceil(n / 65535)]);
const FLAT = 'let wid = wg.x + wg.y * nwg.x;';

// BALLAST_GB: that many GiB of buffers allocated (and cleared) first, as a KV pool would be.
const ballast: GPUBuffer[] = [];
for (let g = 0; g < env('BALLAST_GB', '0'); g++) {
  const b = buffer(2 ** 30);
  const e = device.createCommandEncoder();
  e.clearBuffer(b);
  device.queue.submit([e.finish()]);
  ballast.push(b);
}
await device.queue.onSubmittedWorkDone();

/**
 * The compaction's chunked moves kernel (movesDirectKernel) over K and V in `chunks` chunk
 * buffers of 2^shift rows of `words` u32 each (one window), with move lists of `count` moves:
 * fill `src` / `dst` (slots), then `run()` uploads them and times the kernel (median ms).
 */
function chunkedMovesRig(chunks: number, shift: number, words: number, count: number) {
  const per = Math.min(2 ** shift, Math.floor(2 ** 31 / (words * 4)) - 1);
  const kChunks = Array.from({ length: chunks }, () => buffer(per * words * 4));
  const vChunks = Array.from({ length: chunks }, () => buffer(per * words * 4));
  const p = pipeline(movesDirectKernel({ window: chunks, passes: 1, shift }, 4).code, [
    'uniform',
    ...Array<GPUBufferBindingType>(2 * chunks).fill('storage'),
    'read-only-storage',
    'read-only-storage',
  ]);
  const srcBuffer = buffer(count * 4);
  const dstBuffer = buffer(count * 4);
  const src = new Int32Array(count);
  const dst = new Int32Array(count);
  const run = (): Promise<number> => {
    device.queue.writeBuffer(srcBuffer, 0, src);
    device.queue.writeBuffer(dstBuffer, 0, dst);
    const args = [uniform([count, words, 0, 0]), ...kChunks, ...vChunks, srcBuffer, dstBuffer];
    return time(p, args, grid(Math.ceil((count * words) / 4 / 256)), 2);
  };
  const destroy = () => {
    for (const b of [...kChunks, ...vChunks, srcBuffer, dstBuffer]) b.destroy();
  };
  return { per, src, dst, run, destroy, poolGiB: (2 * chunks * per * words * 4) / 2 ** 30 };
}

if (SECTIONS.has('histogram')) {
  // ---- keys: random metrics as order-preserving u32 keys (x >= 0: bits | 2^31)
  const nKeys = ROWS * ROW_KEYS;
  const keys = buffer(nKeys * 4);
  await time(
    pipeline(
      `
@group(0) @binding(0) var<uniform> p: vec4u;
@group(0) @binding(1) var<storage, read_write> keys: array<u32>;
@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT}
  let i = wid * 256u + li;
  if (i >= p.x) { return; }
  var h = i * 2654435761u + 777u;
  h ^= h >> 15u; h *= 2246822519u; h ^= h >> 13u; h *= 3266489917u; h ^= h >> 16u;
  let x = f32(h >> 8u) / 16777216.0;
  keys[i] = bitcast<u32>(x) | 0x80000000u;
}`,
      ['uniform', 'storage'],
    ),
    [uniform([nKeys]), keys],
    grid(Math.ceil(nKeys / 256)),
  );

  // ---- histogram variants
  const hist = buffer(ROWS * 256 * 4);
  const hist2 = buffer(16);
  const histCommon = (enableSg: boolean, keysAccess = 'read') => `${enableSg ? 'enable subgroups;' : ''}
struct P { rowKeys: u32, shift: u32, prefix: u32, level: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, ${keysAccess}> keys: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;
@group(0) @binding(3) var<storage, read> keys4: array<vec4u>;
var<workgroup> counts: array<atomic<u32>, 256>;
fn okBin(k: u32) -> u32 {
  if (p.level > 0u && (k >> (p.shift + 8u)) != p.prefix) { return 256u; }
  return (k >> p.shift) & 255u;
}`;
  const peel = `
fn histAdd(bin: u32, n: u32, lane: u32) {
  var b = bin;
  for (var it = 0u; it < 2u; it++) {
    let first = subgroupMin(select(0xffffffffu, lane, b != 256u));
    let lead = subgroupShuffle(b, select(first, 0u, first == 0xffffffffu));
    let mine = b == lead && b != 256u;
    let total = subgroupAdd(select(0u, n, mine));
    if (mine && lane == first) { atomicAdd(&counts[lead], total); }
    b = select(b, 256u, mine);
  }
  if (b != 256u) { atomicAdd(&counts[b], n); }
}`;
  const entry = (lane: boolean) =>
    `@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32${lane ? ', @builtin(subgroup_invocation_id) lane: u32' : ''}) {
  ${FLAT}
  let k0 = wid * p.rowKeys;
  atomicStore(&counts[li], 0u);
  workgroupBarrier();`;
  const tail = `
  workgroupBarrier();
  hist[wid * 256u + li] = atomicLoad(&counts[li]);
}`;
  /** Eight keys of the invocation (two vec4 loads), merged: the first valid key's bin once with its count, the rest one by one. */
  const v8body = (add: string) => `
  for (var c = 0u; c < p.rowKeys; c += 2048u) {
    let q0 = keys4[(k0 + c) / 4u + li * 2u];
    let q1 = keys4[(k0 + c) / 4u + li * 2u + 1u];
    var bins = array<u32, 8>(okBin(q0.x), okBin(q0.y), okBin(q0.z), okBin(q0.w), okBin(q1.x), okBin(q1.y), okBin(q1.z), okBin(q1.w));
    var lead = 256u;
    for (var j = 0u; j < 8u; j++) { if (bins[j] != 256u) { lead = bins[j]; break; } }
    var n = 0u;
    for (var j = 0u; j < 8u; j++) {
      if (bins[j] == 256u) { continue; }
      if (bins[j] == lead) { n++; } else { atomicAdd(&counts[bins[j]], 1u); }
    }
    ${add}
  }`;
  const histVariants: Record<string, string> = {
    cur: `${histCommon(true)}${peel}
${entry(true)}
  for (var c = 0u; c < p.rowKeys; c += 256u) {
    histAdd(okBin(keys[k0 + c + li]), 1u, lane);
  }${tail}`,
    'cur-rw': `${histCommon(true, 'read_write')}${peel}
${entry(true)}
  for (var c = 0u; c < p.rowKeys; c += 256u) {
    if (p.level == 99u) { keys[k0 + c + li] = 0u; }
    histAdd(okBin(keys[k0 + c + li]), 1u, lane);
  }${tail}`,
    plain: `${histCommon(false)}
${entry(false)}
  for (var c = 0u; c < p.rowKeys; c += 256u) {
    let b = okBin(keys[k0 + c + li]);
    if (b != 256u) { atomicAdd(&counts[b], 1u); }
  }${tail}`,
    v8: `${histCommon(false)}
${entry(false)}${v8body('if (n > 0u) { atomicAdd(&counts[lead], n); }')}${tail}`,
    v8sg: `${histCommon(true)}${peel}
${entry(true)}${v8body('histAdd(select(256u, lead, n > 0u), n, lane);')}${tail}`,
    read: `${histCommon(false)}
${entry(false)}
  var n = 0u;
  for (var c = 0u; c < p.rowKeys; c += 2048u) {
    let q0 = keys4[(k0 + c) / 4u + li * 2u];
    let q1 = keys4[(k0 + c) / 4u + li * 2u + 1u];
    n += select(0u, 1u, okBin(q0.x) != 256u) + select(0u, 1u, okBin(q0.y) != 256u) + select(0u, 1u, okBin(q0.z) != 256u) + select(0u, 1u, okBin(q0.w) != 256u);
    n += select(0u, 1u, okBin(q1.x) != 256u) + select(0u, 1u, okBin(q1.y) != 256u) + select(0u, 1u, okBin(q1.z) != 256u) + select(0u, 1u, okBin(q1.w) != 256u);
  }
  atomicAdd(&counts[li], n);${tail}`,
  };
  // Level 2's prefix: the top 16 bits of 0.75 as a key (few keys match it).
  const prefix16 = ((new Uint32Array(new Float32Array([0.75]).buffer)[0] as number) | 0x80000000) >>> 16;
  // Each variant's first rows' histograms against plain's (read counts only its valid keys).
  const expected: Uint32Array[] = [];
  for (const [name, code] of Object.entries(histVariants)) {
    if (!sg && (name === 'cur' || name === 'cur-rw' || name === 'v8sg')) continue;
    const p = pipeline(code, name === 'cur-rw' ? HIST_RW_BINDINGS : HIST_BINDINGS);
    for (const level of [0, 2]) {
      const u = level === 0 ? uniform([ROW_KEYS, 24, 0, 0]) : uniform([ROW_KEYS, 8, prefix16, 2]);
      // cur-rw binds the keys read-write: binding 3 (unused there) gets another buffer.
      const ms = await time(p, [u, keys, hist, name === 'cur-rw' ? hist2 : keys], grid(ROWS));
      const got = await readU32(hist, 4 * 256);
      if (expected[level] === undefined) expected[level] = got;
      const ref = expected[level] as Uint32Array;
      const sum = (a: Uint32Array) => a.reduce((x, y) => x + y, 0);
      const agree = name === 'read' ? sum(got) === sum(ref) : got.every((v, i) => v === ref[i]);
      print({
        bench: 'histogram',
        variant: name,
        level,
        rows: ROWS,
        rowKeys: ROW_KEYS,
        ms,
        gkeysPerS: nKeys / ms / 1e6,
        agree,
        counted: sum(got),
      });
    }
  }

  // The selection's own histogram kernel (selection-kernels.ts) on the same keys: rows of
  // ROW_KEYS keys in groups of 256 rows; level 0 makes the keys from identity block tables,
  // positions 0.. and the metrics; level 2 with prefix 0 (no key matches, as few do above).
  {
    const code = selectionHistogramKernel(false).code;
    const rowsHost = new Int32Array(ROWS * 8);
    for (let r = 0; r < ROWS; r++)
      rowsHost.set([Math.floor(r / 256), 0, (r * ROW_KEYS) / 16, ROW_KEYS, 0, 1, (r * ROW_KEYS) / 32, 0], r * 8);
    const groupsHost = new Int32Array(Math.ceil(ROWS / 256) * 8);
    for (let g = 0; g < groupsHost.length / 8; g++) groupsHost.set([g, g * 256, 256, 1, 1 << 30, 0, 0, 0], g * 8);
    const rowsBuf = buffer(rowsHost.byteLength);
    const groupsBuf = buffer(groupsHost.byteLength);
    device.queue.writeBuffer(rowsBuf, 0, rowsHost);
    device.queue.writeBuffer(groupsBuf, 0, groupsHost);
    const tables = buffer(nKeys / 4);
    const tablesHost = new Int32Array(nKeys / 16).map((_, i) => i);
    device.queue.writeBuffer(tables, 0, tablesHost);
    const positions = buffer(nKeys * 4);
    const metrics = buffer(nKeys * 4);
    const keys2 = buffer(nKeys * 4);
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(keys, 0, metrics, 0, nKeys * 4);
    device.queue.submit([enc.finish()]);
    const state = buffer((ROWS * 8 + groupsHost.length / 2) * 4);
    const p = pipeline(code, [
      'uniform',
      'read-only-storage',
      'read-only-storage',
      'read-only-storage',
      'read-only-storage',
      'read-only-storage',
      'storage',
      'storage',
      'storage',
      'storage',
    ]);
    // The groups' F(b) sums (the kernel adds each row's blocks freed per bin).
    const fsum = buffer(groupsHost.length * 32 * 4);
    for (const level of [0, 2]) {
      const ms = await time(
        p,
        [uniform([ROWS, groupsHost.length / 8, level, 16]), rowsBuf, groupsBuf, tables, positions, metrics, keys2, state, hist, fsum],
        grid(ROWS),
      );
      print({ bench: 'histogram', variant: 'selection-kernel', level, rows: ROWS, rowKeys: ROW_KEYS, ms, gkeysPerS: nKeys / ms / 1e6 });
    }
    // The same after the device idled (as after a host-side pause): one dispatch each, 1.5 s apart.
    for (let r = 0; r < 3; r++) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const ms = await time(
        p,
        [uniform([ROWS, groupsHost.length / 8, 2, 16]), rowsBuf, groupsBuf, tables, positions, metrics, keys2, state, hist, fsum],
        grid(ROWS),
        0,
      );
      print({
        bench: 'histogram',
        variant: 'selection-kernel-after-idle',
        level: 2,
        rows: ROWS,
        rowKeys: ROW_KEYS,
        ms,
        gkeysPerS: nKeys / ms / 1e6,
      });
    }
    for (const b of [rowsBuf, groupsBuf, tables, positions, metrics, keys2, state]) b.destroy();
  }
}

if (SECTIONS.has('moves')) {
  // ---- moves variants: K, V pools of 2 * MOVES rows (f16, HEAD_DIM per row)
  const rowWords = HEAD_DIM / 2;
  const poolRows = Math.min(2 * MOVES, Math.floor(2 ** 31 / (rowWords * 4)) - 1);
  const moves = Math.min(MOVES, poolRows >> 1);
  const K = buffer(poolRows * rowWords * 4);
  const V = buffer(poolRows * rowWords * 4);
  const src = buffer(moves * 4);
  const dst = buffer(moves * 4);
  // Moves as a compaction makes them: per head of 4096 logical slots, holes in the first half
  // and sources in the second, ascending; `slotOf` places logical slots in the pool.
  const h = new Int32Array(moves);
  const s = new Int32Array(moves);
  function writeMoves(slotOf: (logical: number) => number): void {
    for (let m = 0; m < moves; m++) {
      const head = Math.floor(m / 2048);
      const j = m % 2048;
      s[m] = slotOf(head * 4096 + 2048 + j);
      h[m] = slotOf(head * 4096 + j);
    }
    device.queue.writeBuffer(src, 0, s);
    device.queue.writeBuffer(dst, 0, h);
  }
  // Logical blocks of 16 slots scattered over the pool.
  const poolBlocks = Math.floor(poolRows / 16);
  writeMoves((logical) => ((Math.floor(logical / 16) * 7919) % poolBlocks) * 16 + (logical % 16));
  const movesCommon = `
struct P { count: u32, words: u32, p2: u32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> K: array<vec4u>;
@group(0) @binding(2) var<storage, read_write> V: array<vec4u>;
@group(0) @binding(3) var<storage, read> src: array<i32>;
@group(0) @binding(4) var<storage, read> dst: array<i32>;
@compute @workgroup_size(256) fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  ${FLAT}`;
  const n4 = rowWords / 4;
  /** The move and the 16-byte word of its row this invocation copies (s, d: word indices). */
  const moveWord = `
  let idx = wid * 256u + li;
  let n = p.words / 4u;
  if (idx >= p.count * n) { return; }
  let m = idx / n;
  let e = idx % n;
  let s = u32(src[m]) * n + e;
  let d = u32(dst[m]) * n + e;`;
  const movesVariants: Record<string, { code: string; threads: number }> = {
    cur: {
      threads: moves * n4,
      code: `${movesCommon}${moveWord}
  K[d] = K[s];
  V[d] = V[s];
}`,
    },
    // The backend's kernel (both rows loaded, then stored).
    kv: { threads: moves * n4, code: compactMovesKernel(4).code },
    kv2: {
      threads: (moves * n4) / 2,
      code: `${movesCommon}
  let idx = wid * 256u + li;
  let n = p.words / 4u;
  let half = n / 2u;
  if (idx >= p.count * half) { return; }
  let m = idx / half;
  let e = idx % half;
  let s = u32(src[m]) * n + e;
  let d = u32(dst[m]) * n + e;
  let k0 = K[s];
  let k1 = K[s + half];
  let v0 = V[s];
  let v1 = V[s + half];
  K[d] = k0;
  K[d + half] = k1;
  V[d] = v0;
  V[d + half] = v1;
}`,
    },
    copy: {
      threads: moves * n4,
      code: `${movesCommon}
  let idx = wid * 256u + li;
  if (idx >= p.count * (p.words / 4u)) { return; }
  V[idx] = K[idx + p.count * (p.words / 4u)];
}`,
    },
  };
  const bytes = moves * rowWords * 4 * 2 * 2;
  for (const [name, v] of Object.entries(movesVariants)) {
    const ms = await time(
      pipeline(v.code, MOVE_BINDINGS),
      [uniform([moves, rowWords, 0, 0]), K, V, src, dst],
      grid(Math.ceil(v.threads / 256)),
    );
    print({ bench: 'moves', variant: name, moves, headDim: HEAD_DIM, ms, gbPerS: (name === 'copy' ? bytes / 2 : bytes) / ms / 1e6 });
  }
  // The compaction's own chunked moves kernel (kernels.ts movesDirectKernel): K and V in CHUNKS
  // chunks of 2^22 rows, moves over every chunk (spread) or within chunk 0 (local).
  {
    const CHUNKS = env('CHUNKS', '7');
    const shift = env('CHUNK_SHIFT', '22');
    const per = Math.min(2 ** shift, Math.floor(2 ** 31 / (rowWords * 4)) - 1);
    const kChunks = Array.from({ length: CHUNKS }, () => buffer(per * rowWords * 4));
    const vChunks = Array.from({ length: CHUNKS }, () => buffer(per * rowWords * 4));
    const chunking = { window: CHUNKS, passes: 1, shift };
    const code = movesDirectKernel(chunking, 4).code;
    const types: GPUBufferBindingType[] = [
      'uniform',
      ...Array<GPUBufferBindingType>(2 * CHUNKS).fill('storage'),
      'read-only-storage',
      'read-only-storage',
    ];
    const p = pipeline(code, types);
    for (const spread of [false, true]) {
      const blocks = Math.floor((spread ? CHUNKS * per : per) / 16);
      writeMoves((logical) => {
        const b = (Math.floor(logical / 16) * 7919) % blocks;
        const chunk = b % (spread ? CHUNKS : 1);
        const within = Math.floor(b / (spread ? CHUNKS : 1));
        return chunk * 2 ** shift + ((within * 16) % per) + (logical % 16);
      });
      const ms = await time(p, [uniform([moves, rowWords, 0, 0]), ...kChunks, ...vChunks, src, dst], grid(Math.ceil((moves * n4) / 256)));
      print({
        bench: 'moves',
        variant: spread ? 'chunked-spread' : 'chunked-local',
        chunks: CHUNKS,
        moves,
        headDim: HEAD_DIM,
        ms,
        gbPerS: bytes / ms / 1e6,
      });
    }
  }
}

// ---- sparse moves: a steady round's moves (the compaction after a few decode steps), through
// the compaction's chunked kernel (movesDirectKernel). SPARSE_MOVES moves, SPARSE_PER_HEAD a
// head: sources are consecutive slots of the head's newest blocks, destinations one slot each
// in random blocks of the pool (the holes eviction left), K/V rows of SPARSE_HEAD_DIM f16.
// Variants: heads (head by head, as compact-pairs writes them), sorted (by destination),
// mirror (sources scattered, destinations consecutive: scattered reads, not writes), blocks
// (each head's destinations the consecutive slots of random blocks), regions / packed (each
// head's destinations in its own region of SPARSE_REGION_BLOCKS blocks, its sources right after
// it, as the allocator's head locality leaves a steady round; the regions spread through the
// pool or back to back). Over pools of SPARSE_CHUNKS chunks of 2^shift rows, for each shift of
// SPARSE_SHIFTS: does the pool's size matter (address translation) or only the scatter?
if (SECTIONS.has('sparse')) {
  const count = env('SPARSE_MOVES', '344064');
  const perHead = env('SPARSE_PER_HEAD', '42');
  const words = env('SPARSE_HEAD_DIM', '64') / 2;
  const chunks = env('SPARSE_CHUNKS', '7');
  // The engine's seeded generator (mulberry32), restarted for each variant.
  let rng = new Rng(12345);
  const rand = () => rng.next();
  for (const shift of (process.env['SPARSE_SHIFTS'] ?? '17,20,23').split(',').map(Number)) {
    const rig = chunkedMovesRig(chunks, shift, words, count);
    const blocks = (chunks * rig.per) / 16;
    const s = rig.src;
    const d = rig.dst;
    const block = () => Math.floor(rand() * blocks);
    // Kept blocks of a head (regions, packed): at most what an even spread leaves room for.
    const regionBlocks = Math.min(env('SPARSE_REGION_BLOCKS', '128'), Math.floor(blocks / Math.ceil(count / perHead)) - 4);
    const heads = () => {
      for (let m = 0; m < count; m += perHead) {
        const tail = [block(), block(), block(), block()];
        for (let j = 0; j < perHead && m + j < count; j++) {
          s[m + j] = (tail[(j >> 4) & 3] as number) * 16 + (j & 15);
          d[m + j] = block() * 16 + Math.floor(rand() * 16);
        }
      }
    };
    const variants: Record<string, () => void> = {
      heads,
      sorted: () => {
        heads();
        const order = Array.from({ length: count }, (_, i) => i).sort((a, b) => (d[a] as number) - (d[b] as number));
        const s2 = Int32Array.from(order, (i) => s[i] as number);
        const d2 = Int32Array.from(order, (i) => d[i] as number);
        s.set(s2);
        d.set(d2);
      },
      mirror: () => {
        heads();
        const t = Int32Array.from(s);
        s.set(d);
        d.set(t);
      },
      blocks: () => {
        heads();
        for (let m = 0; m < count; m += 16) {
          const b = block();
          for (let j = 0; j < 16 && m + j < count; j++) d[m + j] = b * 16 + j;
        }
      },
      // As the allocator's head locality leaves a steady round: each head's kept blocks in one
      // region, its sources the blocks right after them. Regions spread evenly through the pool
      // (strewn, as heads prefilled in one go and compressed leave them) or back to back.
      regions: () => headRegions(Math.floor(blocks / Math.ceil(count / perHead))),
      packed: () => headRegions(regionBlocks + 4),
    };
    function headRegions(stride: number): void {
      for (let m = 0, head = 0; m < count; m += perHead, head++) {
        const first = head * stride;
        for (let j = 0; j < perHead && m + j < count; j++) {
          s[m + j] = (first + regionBlocks) * 16 + j;
          d[m + j] = (first + Math.floor(rand() * regionBlocks)) * 16 + Math.floor(rand() * 16);
        }
      }
    }
    for (const [variant, make] of Object.entries(variants)) {
      rng = new Rng(12345);
      make();
      const ms = await rig.run();
      print({
        bench: 'sparse-moves',
        variant,
        regionBlocks: variant === 'regions' || variant === 'packed' ? regionBlocks : undefined,
        moves: count,
        headDim: 2 * words,
        poolGiB: rig.poolGiB,
        ms,
        movesPerMs: count / ms,
        gbPerS: (count * words * 4 * 2 * 2) / ms / 1e6,
      });
    }
    rig.destroy();
  }
}

// ---- full-round moves: the moves a full 4x round makes, through the compaction's chunked
// kernel (movesDirectKernel), in one window of FULL_CHUNKS chunks of 2^FULL_SHIFT rows. Heads of
// FULL_CONTEXT slots hold consecutive blocks (as a prefill in one append leaves them), back to
// back through the window; each evicts a random FULL_EVICT share of its slots, and its moves are
// compact-pairs': the evicted slots below the survivor count (holes, ascending) take the kept
// slots at or past it (sources, ascending). Variants, each a permutation of the same moves:
// rows (head after head), rows-shuffled (heads in random order, each head's moves together, as
// compact-pairs' atomic row offsets leave them), bucket (as the window bucket sort leaves them:
// runs of 16 moves in random order within spans of 4096, the spans in random order), random
// (every move anywhere); and copy (the same number of row moves, dense: row i + N to row i).
if (SECTIONS.has('full')) {
  const chunks = env('FULL_CHUNKS', '7');
  const shift = env('FULL_SHIFT', '22');
  const words = env('FULL_HEAD_DIM', '128') / 2;
  const context = env('FULL_CONTEXT', '8192');
  const evict = env('FULL_EVICT', '0.75');
  const heads = Math.floor((chunks * 2 ** shift) / context);
  const rng = new Rng(777);
  const rand = () => rng.next();
  // compact-pairs' moves, head after head.
  const srcAll: number[] = [];
  const dstAll: number[] = [];
  const headStart: number[] = [];
  const evicted = new Uint8Array(context);
  for (let h = 0; h < heads; h++) {
    headStart.push(srcAll.length);
    let e = 0;
    for (let i = 0; i < context; i++) {
      evicted[i] = rand() < evict ? 1 : 0;
      e += evicted[i] as number;
    }
    const survivors = context - e;
    const holes: number[] = [];
    const sources: number[] = [];
    for (let i = 0; i < context; i++) {
      if (i < survivors && evicted[i] === 1) holes.push(i);
      if (i >= survivors && evicted[i] === 0) sources.push(i);
    }
    const base = h * context;
    for (let j = 0; j < holes.length; j++) {
      srcAll.push(base + (sources[j] as number));
      dstAll.push(base + (holes[j] as number));
    }
  }
  headStart.push(srcAll.length);
  const count = srcAll.length;
  const shuffle = <X>(xs: X[]): X[] => {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      const t = xs[i] as X;
      xs[i] = xs[j] as X;
      xs[j] = t;
    }
    return xs;
  };
  const identity = Array.from({ length: count }, (_, i) => i);
  const variants: Record<string, () => number[]> = {
    rows: () => identity,
    'rows-shuffled': () =>
      shuffle(Array.from({ length: heads }, (_, h) => h)).flatMap((h) => identity.slice(headStart[h], headStart[h + 1])),
    bucket: () => {
      const spans: number[][] = [];
      for (let a = 0; a < count; a += 4096) {
        const runs: number[][] = [];
        for (let b = a; b < Math.min(count, a + 4096); b += 16) runs.push(identity.slice(b, Math.min(count, a + 4096, b + 16)));
        spans.push(shuffle(runs).flat());
      }
      return shuffle(spans).flat();
    },
    random: () => shuffle(identity.slice()),
  };
  const rig = chunkedMovesRig(chunks, shift, words, count);
  const s = rig.src;
  const d = rig.dst;
  const report = async (variant: string) => {
    const ms = await rig.run();
    print({
      bench: 'full-moves',
      variant,
      moves: count,
      heads,
      headDim: 2 * words,
      chunks,
      poolGiB: rig.poolGiB,
      ms,
      gbPerS: (count * words * 4 * 2 * 2) / ms / 1e6,
    });
  };
  for (const [variant, order] of Object.entries(variants)) {
    const o = order();
    for (let m = 0; m < count; m++) {
      s[m] = srcAll[o[m] as number] as number;
      d[m] = dstAll[o[m] as number] as number;
    }
    await report(variant);
  }
  for (let m = 0; m < count; m++) {
    s[m] = count + m;
    d[m] = m;
  }
  await report('copy');
}

clearInterval(keepAlive);
process.exit(0);
