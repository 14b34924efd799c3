// Decode speed, side by side in one process: our Engine (CPU backend, one sequence) against
// llama.cpp through node-llama-cpp, on stories260K, greedy from BOS, 256 tokens.
//   node --conditions=source apps/cli/bench/decode.bench.ts [--runs 7] [--warmup 2] [--json] [--with-default-threads]
//
// Both sides: the same weights (the GGUF's tensors are bit-identical to stories260K.bin), greedy,
// prompt = [BOS], 256 generated tokens, context 512, one sequence. tok/s = 256 / wall time from
// the call to the 256th token (the one-token prefill included on both sides), median of --runs
// after --warmup runs; the contenders take turns within each round.
//
// llama.cpp threads: our engine computes on one thread (the JS main thread), so llama.cpp with
// 1 thread is the like-for-like row. The 2-thread row is what the issue measured: on a 2-core
// machine llama.cpp's spinning barriers then contend with Node's own threads and the speed
// becomes erratic (see src/peers/llama-cpp.ts). --with-default-threads also times a short run
// with node-llama-cpp's default (max(cpuMathCores, 4) threads), the slow case.
import { readFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import os from 'node:os';
import { Engine, type EngineOptions } from '@kvcompress/engine';
import { type ForwardStep, loadLlama2cModel } from '@kvcompress/models';
import { sharedDir } from '../src/paths.ts';
import { LlamaCppPeer, type LlamaCppPeerOptions } from '../src/peers/llama-cpp.ts';

const BOS = 1;
const TOKENS = 256;
const CONTEXT = 512;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name} wants a non-negative integer.`);
  return v;
}
const runs = Math.max(1, arg('--runs', 7));
const warmup = arg('--warmup', 2);
const json = process.argv.includes('--json');
const withDefaultThreads = process.argv.includes('--with-default-threads');

const dir = `${sharedDir()}/models/stories260K`;
const model = loadLlama2cModel(new Uint8Array(readFileSync(`${dir}/stories260K.bin`)));
const reference = (JSON.parse(readFileSync(`${dir}/reference_greedy.json`, 'utf8')) as { token_ids: number[] }).token_ids;

// ---------------------------------------------------------------------------------------------
// Contenders: each runs one greedy generation and reports its tokens and per-token arrival times.

interface Run {
  tokens: number[];
  ms: number;
  /** ms between consecutive tokens (the first measured from the call). */
  gaps: number[];
  /** Our engine's own decode tok/s (prefill and the between-step yields excluded). */
  engineTps?: number;
  compressions?: number;
}

interface Contender {
  readonly name: string;
  readonly settings: string;
  run(): Promise<Run>;
  dispose?(): Promise<void>;
}

function ours(name: string, options: Omit<EngineOptions, 'model'>, settings: string): Contender {
  const engine = new Engine({ model, maxSequences: 1, maxContext: CONTEXT, ...options });
  return {
    name,
    settings,
    async run() {
      const gaps: number[] = [];
      const t0 = performance.now();
      let last = t0;
      for await (const e of engine.generate([BOS], { maxTokens: TOKENS, stopTokens: [] })) {
        const now = performance.now();
        if (e.type === 'token') {
          gaps.push(now - last);
          last = now;
          continue;
        }
        if (e.error !== undefined) throw e.error;
        return { tokens: [...e.tokens], ms: last - t0, gaps, engineTps: e.tokensPerSecond, compressions: e.compressions };
      }
      throw new Error('no done event');
    },
  };
}

async function llamaCpp(name: string, options: LlamaCppPeerOptions, tokens = TOKENS): Promise<Contender & { peer: LlamaCppPeer }> {
  const peer = await LlamaCppPeer.create(`${dir}/stories260K.gguf`, { contextSize: CONTEXT, ...options });
  const s = peer.settings;
  return {
    name,
    peer,
    settings: `${s.library} (llama.cpp ${s.llamaCppRelease}, ${s.buildType} CPU binary), ${s.threads} thread(s), context ${s.contextSize}, batch ${s.batchSize}, KV ${s.kvCacheType}, flash attention ${s.flashAttention}, greedy sampler, no token predictor`,
    async run() {
      const gaps: number[] = [];
      const t0 = performance.now();
      let last = t0;
      const out = await peer.greedy([BOS], tokens, () => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
      });
      return { tokens: out, ms: last - t0, gaps };
    },
    dispose: () => peer.dispose(),
  };
}

// ---------------------------------------------------------------------------------------------
// Timing

interface Row {
  name: string;
  settings: string;
  tps: number[];
  engineTps: number[];
  gaps: number[];
  matchesReference: number;
  compressions: number;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] as number;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

async function measure(contenders: readonly Contender[]): Promise<Row[]> {
  const rows: Row[] = contenders.map((c) => ({
    name: c.name,
    settings: c.settings,
    tps: [],
    engineTps: [],
    gaps: [],
    matchesReference: 0,
    compressions: 0,
  }));
  for (let w = 0; w < warmup; w++) for (const c of contenders) await c.run();
  for (let r = 0; r < runs; r++) {
    for (const [i, c] of contenders.entries()) {
      const run = await c.run();
      const row = rows[i] as Row;
      row.tps.push((run.tokens.length / run.ms) * 1000);
      if (run.engineTps !== undefined) row.engineTps.push(run.engineTps);
      row.gaps.push(...run.gaps.slice(1)); // decode steps only
      row.matchesReference = commonPrefix(run.tokens, reference);
      row.compressions = run.compressions ?? 0;
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Allocation in our decode loop: V8's sampling heap profiler, counting objects that a GC has
// already collected too, so it measures what a run allocates whatever the GCs did meanwhile.

interface AllocationFigure {
  what: string;
  tokens: number;
  bytesPerToken: number;
  /** The largest allocation sites: bytes per token, function and file:line (views and promises with their caller). */
  sites: Array<{ bytesPerToken: number; site: string }>;
}

interface SamplingNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SamplingNode[];
}

async function allocation(what: string, tokens: number, body: () => Promise<void>): Promise<AllocationFigure> {
  const session = new Session();
  session.connect();
  try {
    await session.post('HeapProfiler.enable');
    await session.post('HeapProfiler.startSampling', {
      samplingInterval: 64,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    await body();
    const { profile } = (await session.post('HeapProfiler.stopSampling')) as { profile: { head: SamplingNode } };
    const bySite = new Map<string, number>();
    let total = 0;
    const frame = (n: SamplingNode): string =>
      `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;
    const walk = (n: SamplingNode, parent: string): void => {
      const f = frame(n);
      // Built-ins (subarray, Promise) are charged to their caller.
      const site = n.callFrame.url === '' && parent !== '' ? `${n.callFrame.functionName} in ${parent}` : f;
      if (n.selfSize > 0 && !f.includes('node:inspector')) {
        total += n.selfSize;
        bySite.set(site, (bySite.get(site) ?? 0) + n.selfSize);
      }
      for (const c of n.children) walk(c, f);
    };
    walk(profile.head, '');
    const sites = [...bySite]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 6)
      .map(([site, bytes]) => ({ site, bytesPerToken: bytes / tokens }));
    return { what, tokens, bytesPerToken: total / tokens, sites };
  } finally {
    await session.post('HeapProfiler.disable');
    session.disconnect();
  }
}

/** Our decode steps without the Engine's request bookkeeping: append, forward, read logits, argmax. */
function rawDecoder(engine: Engine): (n: number) => Promise<void> {
  const { model: m, allocator, backend } = engine;
  const vocab = m.config.vocabSize;
  const units = allocator.shape.layers * allocator.shape.kvHeads;
  const step: ForwardStep = {
    rows: 1,
    tokens: new Int32Array(1),
    sequences: new Int32Array(1),
    positions: new Int32Array(1),
    slots: new Int32Array(units),
    logitRows: new Int32Array(1),
    logitCount: 1,
  };
  const logits = new Float32Array(vocab);
  const moves = allocator.createMoveList();
  return async (n) => {
    const seq = allocator.addSequence();
    step.sequences[0] = seq;
    step.tokens[0] = BOS;
    for (let t = 0; t < n; t++) {
      step.positions[0] = allocator.nextPosition(seq);
      allocator.appendTokens(seq, 1, step.slots, moves);
      m.forward(step, allocator);
      await backend.read(m.logits, logits);
      let best = 0;
      for (let v = 1; v < vocab; v++) if ((logits[v] as number) > (logits[best] as number)) best = v;
      step.tokens[0] = best;
    }
    allocator.removeSequence(seq);
  };
}

// ---------------------------------------------------------------------------------------------

const loadAtStart = os
  .loadavg()
  .map((x) => x.toFixed(2))
  .join(' ');
const oursFull = ours(
  'ours: Engine, full KV cache',
  {},
  'CpuBackend (JS, 1 thread), f32 KV, paged blocks of 16, maxSequences 1, context 512, greedy',
);
const oursKvc = ours(
  'ours: Engine, KV-Compress 4x',
  { budget: { targetCompressionRate: 4 }, protectedWindow: 16, compressionInterval: 32 },
  'as above + policy kv-compress, targetCompressionRate 4, protectedWindow 16, compressionInterval 32',
);
const llama1 = await llamaCpp('llama.cpp, 1 thread', { threads: 1 });
const llama2 = await llamaCpp('llama.cpp, 2 threads', { threads: 2 });
const contenders: Contender[] = [oursFull, llama1, llama2, oursKvc];
const rows = await measure(contenders);

let defaultThreads: { threads: number; tps: number; tokens: number } | null = null;
if (withDefaultThreads) {
  const d = await llamaCpp('llama.cpp, default threads', { threads: 'default' }, 32);
  const r = await d.run();
  defaultThreads = { threads: d.peer.settings.threads, tps: (r.tokens.length / r.ms) * 1000, tokens: r.tokens.length };
  await d.dispose?.();
}

const allocEngine = new Engine({ model, maxSequences: 1, maxContext: CONTEXT });
await allocEngine.complete([BOS], { maxTokens: TOKENS, stopTokens: [] }); // warm
const raw = rawDecoder(allocEngine);
await raw(TOKENS);
const allocations = [
  await allocation('Engine.complete([BOS], 256 tokens)', 4 * TOKENS, async () => {
    for (let i = 0; i < 4; i++) await allocEngine.complete([BOS], { maxTokens: TOKENS, stopTokens: [] });
  }),
  await allocation('our decode steps alone (appendTokens + LlamaModel.forward + backend.read + argmax)', 4 * TOKENS, async () => {
    for (let i = 0; i < 4; i++) await raw(TOKENS);
  }),
];

for (const c of contenders) await c.dispose?.();

const cpus = os.cpus();
const machine = {
  cpu: cpus[0]?.model ?? 'unknown',
  logicalCores: cpus.length,
  availableParallelism: os.availableParallelism(),
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  node: process.version,
  platform: `${os.platform()} ${os.release()} ${os.arch()}`,
  loadAverage: os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' '),
};
const oursMedian = median((rows[0] as Row).tps);

if (json) {
  console.log(JSON.stringify({ machine, tokens: TOKENS, runs, warmup, rows, defaultThreads, allocations }, null, 2));
} else {
  const f = (x: number): string => x.toFixed(0);
  console.log(`# Decode speed: stories260K, greedy from BOS, ${TOKENS} tokens\n`);
  console.log(
    `Machine: ${machine.cpu}, ${machine.logicalCores} logical cores (available parallelism ${machine.availableParallelism}), ` +
      `${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.platform}; load average (1/5/15 min) at the start ${loadAtStart}, at the end ${machine.loadAverage}.`,
  );
  console.log(`Median of ${runs} runs after ${warmup} warm-up runs; contenders take turns within each round.\n`);
  console.log('| runner | tok/s (median) | min – max | per-token ms p50 / p90 / max | ours (full) / this | tokens = reference |');
  console.log('|---|--:|--:|--:|--:|--:|');
  for (const r of rows) {
    const m = median(r.tps);
    const gaps = `${quantile(r.gaps, 0.5).toFixed(2)} / ${quantile(r.gaps, 0.9).toFixed(2)} / ${Math.max(...r.gaps).toFixed(1)}`;
    console.log(
      `| ${r.name} | ${f(m)} | ${f(Math.min(...r.tps))} – ${f(Math.max(...r.tps))} | ${gaps} | ${(oursMedian / m).toFixed(2)} | ${r.matchesReference}/${TOKENS} |`,
    );
  }
  if (defaultThreads !== null) {
    console.log(
      `| llama.cpp, node-llama-cpp default threads (${defaultThreads.threads}), ${defaultThreads.tokens} tokens, 1 run | ${defaultThreads.tps.toFixed(1)} | | | ${(oursMedian / defaultThreads.tps).toFixed(0)} | |`,
    );
  }
  const kvc = rows.find((r) => r.name.includes('KV-Compress'));
  const byName = (n: string): number => median((rows.find((r) => r.name === n) as Row).tps);
  console.log(
    `\nRatio ours/llama.cpp (medians): ${(oursMedian / byName(llama1.name)).toFixed(2)} against 1 thread, ` +
      `${(oursMedian / byName(llama2.name)).toFixed(2)} against 2 threads; with KV-Compress 4x ` +
      `${(byName(oursKvc.name) / byName(llama1.name)).toFixed(2)} and ${(byName(oursKvc.name) / byName(llama2.name)).toFixed(2)}.`,
  );
  console.log('');
  console.log(
    `Our engine's own decode figure (DoneEvent.tokensPerSecond, prefill and between-step yields excluded): ` +
      rows
        .filter((r) => r.engineTps.length > 0)
        .map((r) => `${r.name} ${f(median(r.engineTps))}`)
        .join('; ') +
      `. KV-Compress ran ${kvc?.compressions ?? 0} compressions per generation.`,
  );
  console.log(`Issue target: ours >= 2 x 58 = 116 tok/s; ours (full) is ${f(oursMedian)} tok/s.\n`);
  console.log('Settings:');
  for (const r of rows) console.log(`- ${r.name}: ${r.settings}`);
  console.log(`- llama.cpp CPU features: ${llama1.peer.settings.cpuFeatures}`);
  console.log('\nAllocation per decoded token (V8 sampling heap profiler, collected objects included):');
  for (const a of allocations) {
    console.log(`- ${a.what}: about ${a.bytesPerToken.toFixed(0)} bytes/token over ${a.tokens} tokens; largest sites:`);
    for (const x of a.sites) console.log(`  - ${x.bytesPerToken.toFixed(0)} B/token: ${x.site}`);
  }
}
