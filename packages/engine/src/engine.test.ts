import { readFileSync } from 'node:fs';
import { InvalidArgumentError, UnknownPolicyError } from '@kvcompress/core';
import { createKvCompressPolicy, registerPolicy } from '@kvcompress/eviction';
import { type LoadedModel, loadLlama2cModel, loadModel } from '@kvcompress/models';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';
import { type DoneEvent, Engine, type EngineOptions, type GenerateOptions } from './engine.ts';

const STORIES = 'models/stories260K/stories260K.bin';
const REFERENCE = 'models/stories260K/reference_greedy.json';
const haveStories = hasShared(
  STORIES,
  REFERENCE,
  'models/stories260K/stories260K.gguf',
  'data/tinystories-valid/TinyStories-valid-first1000.txt',
);

function stories(): LoadedModel {
  return loadLlama2cModel(new Uint8Array(readFileSync(sharedPath(STORIES))));
}

function referenceIds(): number[] {
  return (JSON.parse(readFileSync(sharedPath(REFERENCE), 'utf8')) as { token_ids: number[] }).token_ids;
}

async function greedy(engine: Engine, prompt: readonly number[], maxTokens: number): Promise<DoneEvent> {
  const done = await engine.complete(prompt, { maxTokens, stopTokens: [] });
  if (done.error !== undefined) throw done.error;
  return done;
}

describe.skipIf(!haveStories)('engine on stories260K (CPU)', () => {
  it('reproduces the published greedy output: all 256 ids from BOS', async () => {
    const engine = new Engine({ model: stories(), maxSequences: 1 });
    const done = await greedy(engine, [1], 256);
    expect(done.tokens).toEqual(referenceIds());
    expect(engine.allocator.usedBlocks).toBe(0); // the sequence's blocks went back
  });

  it('reproduces it from the GGUF copy too (llama.cpp layout, embedded vocabulary)', async () => {
    const model = await loadModel(sharedPath('models/stories260K/stories260K.gguf'));
    expect(model.format).toBe('gguf');
    const done = await greedy(new Engine({ model, maxSequences: 1 }), [1], 256);
    expect(done.tokens).toEqual(referenceIds());
    const text = (JSON.parse(readFileSync(sharedPath(REFERENCE), 'utf8')) as { text: string }).text;
    expect(model.tokenizer?.decode(done.tokens)).toBe(text);
    // The streamed text (decoded incrementally, a few tokens at a time) is the same text.
    expect(done.text).toBe(text);
    let streamed = '';
    for await (const e of new Engine({ model, maxSequences: 1 }).generate([1], { maxTokens: 256, stopTokens: [] })) {
      if (e.type === 'token') streamed += e.text;
    }
    expect(streamed).toBe(text);
  });

  it('teacher-forced loss on the first 200 TinyStories validation stories is within 1% of 1.283 nats/token', async () => {
    const model = await loadModel(sharedPath(STORIES));
    const tokenizer = model.tokenizer;
    if (tokenizer === null) throw new Error('stories260K has tok512.bin beside it');
    const text = readFileSync(sharedPath('data/tinystories-valid/TinyStories-valid-first1000.txt'), 'utf8');
    const stories = text
      .split('<|endoftext|>')
      .map((s) => s.trim())
      .filter((s) => s.length > 0)
      .slice(0, 200);
    expect(stories).toHaveLength(200);
    const engine = new Engine({ model, maxSequences: 1, prefillChunk: 512 });
    let total = 0;
    let count = 0;
    for (const story of stories) {
      const nll = await engine.scoreTokens(tokenizer.encode(story, { addBos: true }).slice(0, 512));
      for (const v of nll) total += v;
      count += nll.length;
    }
    const mean = total / count;
    expect(count).toBe(68476);
    expect(Math.abs(mean - 1.283) / 1.283).toBeLessThan(0.01);
  }, 180_000);

  it('teacher forcing: with the full cache the logits are forwardLogits rows; with a budget they differ and memory shrinks', async () => {
    const model = stories();
    const ids = referenceIds().slice(0, 200);
    const context = [1, ...ids.slice(0, 150)];
    const continuation = ids.slice(150, 200);
    const vocab = model.config.vocabSize;
    const collect = async (engine: Engine) => {
      const rows: Float32Array[] = [];
      const done = await engine.complete(context, {
        teacherForcing: { tokens: continuation, onLogits: (i, logits) => (rows[i] = logits.slice()) },
      });
      return { done, rows };
    };
    const full = await collect(new Engine({ model, maxSequences: 1 }));
    expect(full.done.reason).toBe('length');
    expect(full.done.tokens).toEqual(continuation);
    const reference = await new Engine({ model, maxSequences: 1 }).forwardLogits([...context, ...continuation]);
    for (let i = 0; i < continuation.length; i++) {
      const row = reference.subarray((context.length - 1 + i) * vocab, (context.length + i) * vocab);
      let worst = 0;
      for (let v = 0; v < vocab; v++) worst = Math.max(worst, Math.abs(((full.rows[i] as Float32Array)[v] as number) - (row[v] as number)));
      expect(worst).toBeLessThan(1e-4);
    }
    const compressed = await collect(
      new Engine({ model, maxSequences: 1, budget: { targetCompressionRate: 8 }, protectedWindow: 8, compressOnce: true }),
    );
    expect(compressed.done.tokens).toEqual(continuation);
    expect(compressed.done.compressions).toBeGreaterThan(0);
    // Row 0 comes from the prefill, before the first compression: identical. Later rows
    // attend over the compressed cache.
    expect(compressed.rows[0]).toEqual(full.rows[0]);
    let differs = false;
    for (let i = 1; i < continuation.length; i++) {
      for (let v = 0; v < vocab; v++) differs ||= (compressed.rows[i] as Float32Array)[v] !== (full.rows[i] as Float32Array)[v];
    }
    expect(differs).toBe(true);
    const blocks = (d: DoneEvent) => d.blocksPerHead.reduce((a, b) => a + b, 0);
    expect(blocks(compressed.done)).toBeLessThan(blocks(full.done) / 2);
  });

  it('per-request compression: one engine, three budgets side by side', async () => {
    const engine = new Engine({
      model: stories(),
      maxSequences: 3,
      budget: { targetCompressionRate: 2 },
      protectedWindow: 16,
      compressionInterval: 16,
    });
    const prompt = referenceIds().slice(0, 200);
    const run = (compression?: GenerateOptions['compression']) =>
      engine.complete([1, ...prompt], { maxTokens: 60, stopTokens: [], ...(compression === undefined ? {} : { compression }) });
    const [engineDefault, eightX, full] = await Promise.all([run(), run({ budget: { targetCompressionRate: 8 } }), run({ budget: null })]);
    const blocks = (d: DoneEvent) => d.blocksPerHead.reduce((a, b) => a + b, 0);
    expect(full.compressions).toBe(0);
    expect(engineDefault.compressions).toBeGreaterThan(0);
    expect(eightX.compressions).toBeGreaterThan(0);
    expect(blocks(eightX)).toBeLessThan(blocks(engineDefault));
    expect(blocks(engineDefault)).toBeLessThan(blocks(full));
    // Without a policy, a per-request budget is an error, not silently ignored.
    await expect(
      new Engine({ model: stories(), maxSequences: 1 }).complete([1], { compression: { budget: { targetCompressionRate: 4 } } }),
    ).rejects.toThrow(/no eviction policy/);
  });

  it('per-request policies: each sequence of a mixed batch decodes exactly as alone under that policy', async () => {
    const model = stories();
    const ids = referenceIds();
    // KV-Compress L1 with a metric buffer and a short window: another scorer of the same family,
    // so rows that record the L1 or the L2 metric, with and without a buffer, share a step.
    registerPolicy(
      { ...createKvCompressPolicy({ aggregation: 'L1', metricBuffer: 8, observationWindow: 8 }), name: 'kv-compress-l1-buffered' },
      { replace: true },
    );
    const names = ['kv-compress', 'snapkv', 'h2o', 'streaming-llm', 'kv-compress-l1-buffered'];
    const shared = { budget: { targetCompressionRate: 4 }, protectedWindow: 16, compressionInterval: 16 } as const;
    // Different prompt lengths, so the sequences' compressions fall on different steps.
    const prompts = names.map((_, i) => [1, ...ids.slice(0, 100 + 9 * i)]);
    const run = (engine: Engine, prompt: number[], compression?: GenerateOptions['compression']) =>
      engine.complete(prompt, { maxTokens: 90, stopTokens: [], ...(compression === undefined ? {} : { compression }) });
    const alone: DoneEvent[] = [];
    for (const [i, policy] of names.entries()) {
      alone.push(await run(new Engine({ model, maxSequences: 1, policy, ...shared }), prompts[i] as number[]));
    }
    const engine = new Engine({ model, maxSequences: names.length, ...shared });
    let maxBatch = 0;
    engine.onStep((s) => {
      if (s.kind === 'decode') maxBatch = Math.max(maxBatch, s.rows);
    });
    const mixed = await Promise.all(names.map((policy, i) => run(engine, prompts[i] as number[], { policy })));
    expect(maxBatch).toBe(names.length);
    for (const [i, policy] of names.entries()) {
      const a = alone[i] as DoneEvent;
      const m = mixed[i] as DoneEvent;
      expect(m.error).toBeUndefined();
      expect(a.policy).toBe(policy);
      expect(m.policy).toBe(policy);
      expect(m.compressions).toBe(a.compressions);
      expect(m.compressions).toBeGreaterThan(0);
      expect([...m.tokens], policy).toEqual([...a.tokens]);
      expect([...m.blocksPerHead], policy).toEqual([...a.blocksPerHead]);
    }
    // The policies really differ: alone, each keeps other blocks or writes other tokens than
    // every other policy (so running one policy's rows with another's settings would show).
    const signature = (d: DoneEvent) => JSON.stringify([[...d.tokens], [...d.blocksPerHead]]);
    expect(new Set(alone.map(signature)).size).toBe(names.length);
    expect(engine.allocator.usedBlocks).toBe(0);
  });

  it('per-request policy errors: unknown names list the registered ones; a policy needs a budget', async () => {
    const model = stories();
    const compressing = new Engine({ model, maxSequences: 1, budget: { targetCompressionRate: 2 } });
    await expect(compressing.complete([1], { compression: { policy: 'no-such-policy' } })).rejects.toThrow(UnknownPolicyError);
    await expect(compressing.complete([1], { compression: { policy: 'no-such-policy' } })).rejects.toThrow(/snapkv/);
    await expect(compressing.complete([1], { compression: { policy: 'none', budget: { targetCompressionRate: 4 } } })).rejects.toThrow(
      /keeps the full cache/,
    );
    expect(compressing.resolveCompression({ policy: 'h2o' })).toEqual({
      policy: 'h2o',
      config: { budget: { targetCompressionRate: 2 }, protectedWindow: 64, sinks: 0 },
    });
    expect(compressing.resolveCompression({ policy: 'snapkv', budget: null }).policy).toBe('none');
    // An engine without a budget keeps full caches by default; a request can still compress
    // under a policy it names, with a budget it gives.
    const full = new Engine({ model, maxSequences: 1, protectedWindow: 8 });
    expect(full.resolveCompression()).toEqual({ policy: 'none', config: null });
    await expect(full.complete([1], { compression: { policy: 'snapkv' } })).rejects.toThrow(/needs one with the request/);
    const prompt = [1, ...referenceIds().slice(0, 150)];
    const snap = await full.complete(prompt, {
      maxTokens: 20,
      stopTokens: [],
      compression: { policy: 'snapkv', budget: { targetCompressionRate: 4 } },
    });
    expect(snap.policy).toBe('snapkv');
    expect(snap.compressions).toBeGreaterThan(0);
    const alone = await new Engine({
      model,
      maxSequences: 1,
      policy: 'snapkv',
      budget: { targetCompressionRate: 4 },
      protectedWindow: 8,
    }).complete(prompt, { maxTokens: 20, stopTokens: [] });
    expect([...snap.tokens]).toEqual([...alone.tokens]);
    expect([...snap.blocksPerHead]).toEqual([...alone.blocksPerHead]);
  });

  it('decodes several sequences together with the same greedy tokens as one at a time', async () => {
    const model = stories();
    const prompts = [[1], [1, 403, 407], [1, 261, 378, 432], [1, 376, 298]];
    const alone: number[][] = [];
    for (const p of prompts) alone.push([...(await greedy(new Engine({ model, maxSequences: 1 }), p, 40)).tokens]);
    const engine = new Engine({ model, maxSequences: 4 });
    let maxBatch = 0;
    engine.onStep((s) => {
      if (s.kind === 'decode') maxBatch = Math.max(maxBatch, s.rows);
    });
    const together = await Promise.all(prompts.map((p) => greedy(engine, p, 40)));
    expect(together.map((d) => [...d.tokens])).toEqual(alone);
    expect(maxBatch).toBe(4);
  });

  it('frees real memory: KV-Compress at 4x on a 500-token story cuts the blocks about 4x, differently per head', async () => {
    const model = stories();
    const ids = referenceIds();
    // A 500-token context: BOS + 255 reference tokens as the prompt, then 245 generated.
    const prompt = [1, ...ids.slice(0, 255)];
    const options: EngineOptions = {
      model,
      maxSequences: 1,
      budget: { targetCompressionRate: 4 },
      protectedWindow: 16,
      compressionInterval: 16,
    };
    const engine = new Engine(options);
    const outcomes: number[] = [];
    engine.onCompression((e) => outcomes.push(e.outcome.blocksAfter));
    let blocksAtEnd: Int32Array = new Int32Array(0);
    let usedAtEnd = 0;
    let tokensAtEnd = 0;
    engine.onStep((s) => {
      // After each step, while the sequence is alive: the allocator's own counts.
      if (s.kind === 'decode' && engine.allocator.isActive(0)) {
        blocksAtEnd = engine.allocator.blocksPerHead(0);
        usedAtEnd = engine.allocator.usedBlocks;
        tokensAtEnd = engine.allocator.nextPosition(0);
      }
    });
    await engine.complete(prompt, { maxTokens: 246, stopTokens: [] });
    expect(tokensAtEnd).toBe(500);
    const units = model.config.numLayers * model.config.numKvHeads;
    const fullBlocks = units * Math.ceil(500 / 16);
    const total = blocksAtEnd.reduce((a, b) => a + b, 0);
    expect(total).toBe(usedAtEnd);
    expect(outcomes.length).toBeGreaterThan(1);
    // Protected 16 + 484 / 4 = 137 tokens per head on average: 9 blocks of 16 per head.
    const ratio = fullBlocks / total;
    expect(ratio).toBeGreaterThan(3);
    expect(ratio).toBeLessThan(4.5);
    expect(new Set(blocksAtEnd).size).toBeGreaterThan(1);
  });

  it('under memory pressure compresses instead of preempting', async () => {
    const model = stories();
    const units = model.config.numLayers * model.config.numKvHeads;
    // Room for about 2 x 200 uncompressed tokens, 4 sequences of 200 tokens each.
    const engine = new Engine({
      model,
      maxSequences: 4,
      kvBlocks: units * 26,
      budget: { maxCacheTokens: 64 },
      protectedWindow: 16,
      compressionInterval: 0,
    });
    const reasons = new Set<string>();
    engine.onCompression((e) => reasons.add(e.reason));
    const results = await Promise.all([[1], [1, 403], [1, 261], [1, 376]].map((p) => greedy(engine, p, 200)));
    for (const r of results) expect(r.tokens).toHaveLength(200);
    expect(reasons.has('memory-pressure')).toBe(true);
    expect(engine.stats().preemptions).toBe(0);
    expect(engine.allocator.usedBlocks).toBe(0);
    engine.allocator.checkInvariants();
  });

  it('pressure headroom: a saturated pool compresses far less often, each round freeing a block per head or more', async () => {
    const model = stories();
    const units = model.config.numLayers * model.config.numKvHeads;
    // Six sequences at 4x whose growth saturates the pool: from there, blocks for the next
    // step come from compressing a running sequence.
    const run = async (pressureHeadroom: number) => {
      const engine = new Engine({
        model,
        maxSequences: 6,
        kvBlocks: units * 26,
        budget: { targetCompressionRate: 4 },
        protectedWindow: 16,
        compressionInterval: 0,
        pressureHeadroom,
      });
      const freed: number[] = [];
      engine.onCompression((e) => {
        if (e.reason === 'memory-pressure') freed.push(e.outcome.blocksBefore - e.outcome.blocksAfter);
      });
      const prompts = [[1], [1, 403], [1, 261], [1, 376], [1, 79], [1, 142]];
      const done = await Promise.all(prompts.map((p) => greedy(engine, p, 240)));
      for (const d of done) expect(d.tokens).toHaveLength(240);
      expect(engine.allocator.usedBlocks).toBe(0);
      engine.allocator.checkInvariants();
      return { rounds: freed.length, meanFreed: freed.reduce((a, b) => a + b, 0) / freed.length, stats: engine.stats() };
    };
    const exact = await run(0);
    const headroom = await run(1);
    // Measured: 327 rounds freeing 19 blocks each on average without headroom; 27 rounds
    // freeing 54 with one block per head (20 heads).
    expect(exact.rounds).toBeGreaterThan(0);
    expect(headroom.rounds * 4).toBeLessThan(exact.rounds);
    expect(headroom.meanFreed).toBeGreaterThanOrEqual(units);
    expect(exact.meanFreed).toBeLessThan(units);
  });

  it('preempts and recomputes when compression cannot make room, without changing greedy output', async () => {
    const model = stories();
    const units = model.config.numLayers * model.config.numKvHeads;
    const alone = await Promise.all([[1], [1, 403]].map((p) => greedy(new Engine({ model, maxSequences: 1 }), p, 120)));
    const engine = new Engine({ model, maxSequences: 2, kvBlocks: units * 12 }); // 192 tokens: not both at 120+
    const both = await Promise.all([[1], [1, 403]].map((p) => greedy(engine, p, 120)));
    expect(engine.stats().preemptions).toBeGreaterThan(0);
    expect(both.map((d) => [...d.tokens])).toEqual(alone.map((d) => [...d.tokens]));
  });

  it('samples reproducibly from a seed, and differently from greedy', async () => {
    const model = stories();
    const engine = new Engine({ model, maxSequences: 2 });
    const sampling = { temperature: 1, topK: 40, topP: 0.9, seed: 7 };
    const a = await engine.complete([1], { maxTokens: 60, sampling, stopTokens: [] });
    const b = await engine.complete([1], { maxTokens: 60, sampling, stopTokens: [] });
    const g = await greedy(engine, [1], 60);
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens).not.toEqual(g.tokens);
  });

  it('stops on stop tokens and max tokens, and aborts', async () => {
    const model = stories();
    const engine = new Engine({ model, maxSequences: 1 });
    const ref = referenceIds();
    const stopped = await engine.complete([1], { maxTokens: 100, stopTokens: [ref[5] as number] });
    expect(stopped.reason).toBe('stop');
    expect(stopped.tokens).toEqual(ref.slice(0, 5));
    const controller = new AbortController();
    let n = 0;
    let reason = '';
    for await (const e of engine.generate([1], { maxTokens: 100, signal: controller.signal, stopTokens: [] })) {
      if (e.type === 'token' && ++n === 3) controller.abort();
      if (e.type === 'done') reason = e.reason;
    }
    expect(reason).toBe('abort');
    expect(n).toBeLessThanOrEqual(4);
    expect(engine.allocator.usedBlocks).toBe(0);
  });

  it('rejects bad requests with named errors', async () => {
    const engine = new Engine({ model: stories(), maxSequences: 1 });
    await expect(engine.complete([], {})).rejects.toThrow(InvalidArgumentError);
    await expect(engine.complete([1, 99999], {})).rejects.toThrow(InvalidArgumentError);
    await expect(engine.complete('text', {})).rejects.toThrow(/no tokenizer/);
    await expect(engine.complete([1], { sampling: { temperature: -1 } })).rejects.toThrow(InvalidArgumentError);
    await expect(engine.complete(new Array(600).fill(1), {})).rejects.toThrow(InvalidArgumentError);
  });

  it('rejects impossible options with named errors', () => {
    for (const roundParts of [0, 5, 1.5]) expect(() => new Engine({ model: stories(), roundParts })).toThrow(InvalidArgumentError);
    expect(() => new Engine({ model: stories(), roundParts: 4 })).not.toThrow();
  });
});
