// Planning cost of one compression round on the CPU, at the reference size:
// a Llama-3-8B-shaped cache (32 layers x 8 kv-heads), 4096 tokens per sequence, B = 16.
// Metrics are heavy-tailed like squared attention (log-normal, a different scale per head).
//   node --conditions=source packages/eviction/bench/plan.bench.ts [--json]
import os from 'node:os';
import { EvictionSelection, SELECTION_GROUP_FIELDS, SELECTION_ROW_FIELDS } from '@kvcompress/core';
import { MetricStore } from '@kvcompress/metrics';
import { PageAllocator } from '@kvcompress/page-allocator';
import { type CompressionConfig, CompressionContext, Compressor, getPolicy, resolveCompressionConfig } from '../src/index.ts';

const layers = 32;
const kvHeads = 8;
const tokens = 4096;
const blockSize = 16;
const shape = { layers, kvHeads, headDim: 128, queryHeadsPerKvHead: 4 };

let state = 12345;
function uniform(): number {
  state = (Math.imul(state, 1664525) + 1013904223) | 0;
  return ((state >>> 0) + 0.5) / 2 ** 32;
}
function gaussian(): number {
  return Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

function build(sequences: number): { allocator: PageAllocator; store: MetricStore; seqs: number[] } {
  const blocksPerSeq = layers * kvHeads * Math.ceil(tokens / blockSize);
  const allocator = new PageAllocator({
    shape,
    numBlocks: blocksPerSeq * sequences,
    blockSize,
    maxSequences: sequences,
    maxContext: tokens + 9 * 64, // room for the steady rounds below
  });
  const store = new MetricStore(allocator.numSlots);
  const seqs: number[] = [];
  const slots = new Int32Array(layers * kvHeads * tokens);
  for (let s = 0; s < sequences; s++) {
    const seq = allocator.addSequence();
    allocator.appendTokens(seq, tokens, slots);
    for (let u = 0; u < layers * kvHeads; u++) {
      const headScale = 3 * gaussian();
      for (let t = 0; t < tokens; t++) store.values[slots[u * tokens + t] as number] = Math.exp(headScale + 2 * gaussian());
    }
    seqs.push(seq);
  }
  return { allocator, store, seqs };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

const json = process.argv.includes('--json');
interface Row {
  case: string;
  policy: string;
  ms: number;
  evicted: number;
  sequences?: number;
}
const rows: Row[] = [];
const config: CompressionConfig = { budget: { targetCompressionRate: 8 }, protectedWindow: 64 };
const resolved = resolveCompressionConfig(config);

// One sequence: plan only (the selection), repeated on the same state.
{
  const { allocator, store, seqs } = build(1);
  const seq = seqs[0] as number;
  const ctx = new CompressionContext(allocator, store.values);
  for (const name of ['kv-compress', 'ada-kv', 'snapkv', 'pyramidkv', 'h2o']) {
    const policy = getPolicy(name);
    const times: number[] = [];
    for (let r = 0; r < 30; r++) {
      const t0 = performance.now();
      ctx.begin(seq, resolved);
      policy.plan(ctx);
      times.push(performance.now() - t0);
    }
    rows.push({
      case: `plan, 1 sequence (${(layers * kvHeads * tokens) / 2 ** 20} Mi slots)`,
      policy: name,
      ms: median(times.slice(5)),
      evicted: ctx.plan.count,
    });
  }
  // Plan + compaction + metric moves, once (it changes the state).
  const compressor = new Compressor({ allocator, metrics: store, policy: getPolicy('kv-compress'), config });
  const outcome = compressor.compress(seq, allocator.createMoveList());
  rows.push({
    case: 'plan + compact + metric moves, 1 sequence',
    policy: 'kv-compress',
    ms: outcome.planMs + outcome.compactMs,
    evicted: outcome.evictedSlots,
  });
}

// 64 sequences: plan each, then plan + compact each.
{
  const n = 64;
  const { allocator, store, seqs } = build(n);
  const ctx = new CompressionContext(allocator, store.values);
  const policy = getPolicy('kv-compress');
  let t0 = performance.now();
  for (const seq of seqs) {
    ctx.begin(seq, resolved);
    policy.plan(ctx);
  }
  rows.push({ case: `plan, ${n} sequences`, policy: 'kv-compress', ms: performance.now() - t0, evicted: ctx.plan.count * n, sequences: n });
  // The host's part of a round decided and compacted on the device (Backend.compactEvictions):
  // describe the round (addSelection), then apply each sequence's blocks freed per head to a
  // twin allocator (applyDeviceCompaction, O(blocks)). The device's decision is the planner's.
  {
    const twin = build(n);
    const c = new Compressor({ allocator: twin.allocator, metrics: twin.store, policy, config });
    const units = layers * kvHeads;
    const selection = new EvictionSelection(n * units, n * units * Math.ceil(tokens / 32));
    const t1 = performance.now();
    for (const seq of twin.seqs) c.addSelection(selection, seq);
    const describeMs = performance.now() - t1;
    for (let r = 0; r < selection.rowCount; r++) {
      const seq = selection.groups[(selection.rows[r * SELECTION_ROW_FIELDS] as number) * SELECTION_GROUP_FIELDS] as number;
      const unit = selection.rows[r * SELECTION_ROW_FIELDS + 1] as number;
      if (r === 0 || unit === 0) {
        ctx.begin(seq, resolved);
        policy.plan(ctx);
      }
      const len = ctx.length(unit);
      let e = 0;
      for (let i = 0; i < len; i++) if (ctx.isEvicted(unit, i)) e++;
      selection.result[r] = Math.ceil(len / blockSize) - Math.ceil((len - e) / blockSize);
    }
    const t2 = performance.now();
    let evicted = 0;
    for (const seq of twin.seqs) evicted += c.applyDeviceCompaction(seq, selection).evictedSlots;
    rows.push({
      case: `host side of a device-compacted round, ${n} sequences`,
      policy: 'kv-compress',
      ms: describeMs + performance.now() - t2,
      evicted,
      sequences: n,
    });
    // The steady state: every sequence gains 64 tokens (a round every 64 decode steps), then
    // a device round evicts back to the budget. The device's decision is emulated (each group's
    // blocks spread over its rows, at most maxFree each): the host's work depends only on how
    // many blocks each head frees. Median of 9 rounds.
    const steadyMs: number[] = [];
    let steadyEvicted = 0;
    for (let round = 0; round < 9; round++) {
      twin.allocator.positionsSynced();
      for (const seq of twin.seqs) twin.allocator.appendTokens(seq, 64);
      const t3 = performance.now();
      selection.reset();
      for (const seq of twin.seqs) c.addSelection(selection, seq);
      const t4 = performance.now();
      for (let g = 0; g < selection.groupCount; g++) {
        const first = selection.groups[g * SELECTION_GROUP_FIELDS + 1] as number;
        const count = selection.groups[g * SELECTION_GROUP_FIELDS + 2] as number;
        let left = selection.groups[g * SELECTION_GROUP_FIELDS + 3] as number;
        for (let r = first; r < first + count; r++) {
          const k = Math.min(selection.rows[r * SELECTION_ROW_FIELDS + 5] as number, Math.ceil(left / (first + count - r)));
          selection.result[r] = k;
          left -= k;
        }
      }
      const t5 = performance.now();
      steadyEvicted = 0;
      for (const seq of twin.seqs) steadyEvicted += c.applyDeviceCompaction(seq, selection).evictedSlots;
      steadyMs.push(t4 - t3 + performance.now() - t5);
    }
    rows.push({
      case: `host side of a steady device-compacted round (64 tokens added), ${n} sequences`,
      policy: 'kv-compress',
      ms: median(steadyMs),
      evicted: steadyEvicted,
      sequences: n,
    });
  }
  const compressor = new Compressor({ allocator, metrics: store, policy, config });
  const moves = allocator.createMoveList();
  t0 = performance.now();
  let evicted = 0;
  for (const seq of seqs) evicted += compressor.compress(seq, moves).evictedSlots;
  rows.push({
    case: `plan + compact + metric moves, ${n} sequences`,
    policy: 'kv-compress',
    ms: performance.now() - t0,
    evicted,
    sequences: n,
  });
}

const machine = `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} cores, Node ${process.version}`;
if (json) console.log(JSON.stringify({ machine, rows }, null, 2));
else {
  console.log(`compression planning, ${layers} layers x ${kvHeads} kv-heads x ${tokens} tokens, B=${blockSize}, rate 8x, window 64`);
  console.log(`machine: ${machine}`);
  console.log('| case | policy | ms total | ms per sequence | per sequence / 20 ms target | slots evicted |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    const per = r.ms / (r.sequences ?? 1);
    console.log(`| ${r.case} | ${r.policy} | ${r.ms.toFixed(1)} | ${per.toFixed(1)} | ${(per / 20).toFixed(2)}x | ${r.evicted} |`);
  }
}
