import { CpuBackend } from '@kvcompress/cpu';
import { Engine } from '@kvcompress/engine';
import { registerPolicy } from '@kvcompress/eviction';
import { type LoadedModel, loadHfModel } from '@kvcompress/models';
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultModelDir } from '../test/default-model.ts';
import { sum } from './format.ts';
import { buildPrompt, PROMPT_PRESETS } from './prompts.ts';
import { DemoRunner, fullBlocksPerHead, fullCacheBytes, type RunSettings, type RunView, runDivergence, sideBytes } from './runner.ts';
import './custom-policy.ts';
import { CUSTOM_POLICY } from './custom-policy.ts';

let model: LoadedModel;
let prompt: string;

beforeAll(async () => {
  model = await loadHfModel(defaultModelDir());
  prompt = buildPrompt(PROMPT_PRESETS.find((p) => p.id === 'passkey-128')!, model.tokenizer!, 0).prompt;
});

const settings = (over: Partial<RunSettings> = {}): RunSettings => ({
  prompt,
  policy: 'kv-compress',
  budget: { targetCompressionRate: 4 },
  protectedWindow: 16,
  sinks: 0,
  compressionInterval: 16,
  maxTokens: 10,
  sampling: { temperature: 0 },
  compare: true,
  ...over,
});

const newRunner = () => new DemoRunner(model, () => new CpuBackend(), { maxContext: 1024, kvDtype: 'f16', blockSize: 16 });

describe('DemoRunner on the default model (CPU backend)', () => {
  it('runs the policy beside the full cache in one engine, and reports what the allocator holds', async () => {
    const runner = newRunner();
    const units = 6 * 4; // layers x kv-heads of the default model
    let updates = 0;
    let sawUniformFull = true;
    const check = (view: RunView) => {
      updates++;
      const engine = runner.engine!;
      for (const side of view.sides) {
        if (side.done !== null || side.sequence < 0 || !engine.allocator.isActive(side.sequence)) continue;
        // The live figures are the allocator's, for the sequence this side owns.
        expect(Array.from(side.blocksPerHead)).toEqual(Array.from(engine.allocator.blocksPerHead(side.sequence)));
        if (side.role === 'full') sawUniformFull &&= new Set(side.blocksPerHead).size === 1;
      }
    };
    const view = await runner.run(settings(), check);
    expect(updates).toBeGreaterThan(10);
    expect(sawUniformFull).toBe(true);
    expect(view.error).toBeNull();
    expect(view.finished).toBe(true);
    const [full, compressed] = view.sides;
    expect(full?.role).toBe('full');
    expect(compressed?.role).toBe('compressed');
    if (full === undefined || compressed === undefined) return;
    expect(full.sequence).not.toBe(compressed.sequence);
    for (const side of [full, compressed]) {
      expect(side.done?.reason).toMatch(/stop|length/);
      expect(side.tokens.length).toBeGreaterThan(0);
      // The final figures are the engine's own (the done event's).
      expect(Array.from(side.blocksPerHead)).toEqual(Array.from(side.done!.blocksPerHead));
    }
    // Full cache: every head holds all its tokens.
    const fullBlocks = fullBlocksPerHead(full.tokensSeen, 16);
    expect(full.tokensSeen).toBeGreaterThan(view.promptTokens);
    expect(Array.from(full.blocksPerHead)).toEqual(new Array(units).fill(fullBlocks));
    expect(sideBytes(view, full)).toBe(fullCacheBytes(view, full));
    expect(view.bytesPerBlock).toBe(2 * 16 * 64 * 2); // K+V, 16 slots, head dim 64, f16
    // KV-Compress: a different number of pages per head, within the budget, far below full.
    expect(new Set(compressed.blocksPerHead).size).toBeGreaterThan(1);
    const last = compressed.compressions.at(-1)!;
    expect(compressed.compressions[0]).toMatchObject({ reason: 'prefill', atToken: 0 });
    expect(sum(compressed.blocksPerHead)).toBeLessThanOrEqual(last.targetBlocks + units);
    expect(sideBytes(view, compressed)).toBeLessThan(fullCacheBytes(view, compressed) * 0.6);
    expect(view.compressionRounds).toBe(compressed.compressions.length);
    expect(view.compressionMs).toBeGreaterThan(0);
    expect(compressed.importance).toHaveLength(units);
    expect(compressed.importance!.every((h) => h.effectiveTokens > 0)).toBe(true);
    expect(full.importance).toHaveLength(units);
    expect(view.decodeRows).toBeGreaterThan(0);
    expect(view.usedBlocks).toBe(0); // both sequences ended and gave their blocks back

    // The full-cache side is exactly what a lone full-cache engine generates.
    const ids = model.tokenizer!.encode(prompt);
    const alone = await new Engine({ model, maxSequences: 1, kvDtype: 'f16', maxContext: 1024 }).complete(ids, { maxTokens: 10 });
    expect(full.tokens).toEqual([...alone.tokens]);
    const d = runDivergence(view);
    if (d >= 0) expect(full.tokens[d]).not.toBe(compressed.tokens[d]);
    else expect(compressed.tokens).toEqual(full.tokens);
  }, 120_000);

  it('runs a policy registered in a few lines, and keeps the engine while only the budget changes', async () => {
    const runner = newRunner();
    const view = await runner.run(settings({ policy: CUSTOM_POLICY, compare: false, maxTokens: 4 }));
    expect(view.sides).toHaveLength(1);
    const side = view.sides[0]!;
    expect(side.policy).toBe(CUSTOM_POLICY);
    const blocks = Array.from(side.blocksPerHead);
    const full = fullBlocksPerHead(side.tokensSeen, 16);
    // Layer 0 (units 0-3: its 4 kv-heads) keeps everything; deeper layers were cut.
    const kvHeads = model.config.numKvHeads;
    expect(blocks.slice(0, kvHeads)).toEqual(new Array(kvHeads).fill(full));
    expect(Math.max(...blocks.slice(kvHeads))).toBeLessThan(full);
    const engine = runner.engine;
    await runner.run(settings({ policy: CUSTOM_POLICY, compare: false, maxTokens: 2, budget: { maxCacheTokens: 64 } }));
    expect(runner.engine).toBe(engine);
    await runner.run(settings({ policy: 'snapkv', compare: false, maxTokens: 2 }));
    expect(runner.engine).not.toBe(engine);
  }, 120_000);

  it('refuses what cannot run with messages that say what to change', async () => {
    const runner = newRunner();
    await expect(runner.run(settings({ policy: 'oracle' }))).rejects.toThrow(/Registered policies: .*kv-compress/);
    await expect(runner.run(settings({ prompt: ' ' }))).rejects.toThrow(/prompt is empty/);
    await expect(runner.run(settings({ maxTokens: 2000 }))).rejects.toThrow(/exceed the context of 1024 tokens/);
    await expect(runner.run(settings({ policy: 'h2o', budget: { maxCacheTokens: 8 } }))).rejects.toThrow(/shrink the protected window/);
    expect(() => registerPolicy({ name: CUSTOM_POLICY, plan: () => {} })).toThrow(/already registered/);
  });
});
