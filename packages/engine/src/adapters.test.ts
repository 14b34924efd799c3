// Adapter coverage against PyTorch/transformers and onnxruntime-web: tiny random-init Llama 3
// (llama3 RoPE scaling), Mistral and Qwen2 (QKV bias, tied embeddings) checkpoints written by
// tooling/fixtures/make_tiny_models.py on the GPU machine, with HF's logits and greedy tokens.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadHfModel, OnnxDenseRunner } from '@kvcompress/models';
import { describe, expect, it } from 'vitest';
import { Engine } from './engine.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../models/fixtures');

interface Reference {
  family: string;
  input_ids: number[];
  logits_shape: [number, number];
  greedy_prompt: number[];
  greedy_ids: number[];
}

function reference(family: string): { ref: Reference; logits: Float32Array } {
  const dir = path.join(fixtures, family);
  const ref = JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as Reference;
  const raw = readFileSync(path.join(dir, 'reference_logits.f32'));
  const logits = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  return { ref, logits };
}

/** max |a - b| / max |b|. */
function relativeError(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs((a[i] as number) - (b[i] as number)));
    scale = Math.max(scale, Math.abs(b[i] as number));
  }
  return diff / scale;
}

describe.each(['llama3', 'mistral', 'qwen2'])('%s (tiny, random init) against transformers', (family) => {
  it('logits match to 1e-4 relative in f32', async () => {
    const model = await loadHfModel(path.join(fixtures, family));
    const { ref, logits } = reference(family);
    expect(model.config.architecture).toBe(family === 'llama3' ? 'llama' : family);
    const engine = new Engine({ model, maxSequences: 1, prefillChunk: 16 });
    const ours = await engine.forwardLogits(ref.input_ids);
    expect(ours.length).toBe(ref.logits_shape[0] * ref.logits_shape[1]);
    expect(relativeError(ours, logits)).toBeLessThan(1e-4);
  });

  it('greedy decoding through the paged cache gives transformers generate() tokens', async () => {
    const model = await loadHfModel(path.join(fixtures, family));
    const { ref } = reference(family);
    const engine = new Engine({ model, maxSequences: 1 });
    const done = await engine.complete(ref.greedy_prompt, { maxTokens: ref.greedy_ids.length, stopTokens: [] });
    expect(done.tokens).toEqual(ref.greedy_ids);
  });

  it('onnxruntime-web on the ONNX export (dense past_key_values) agrees with our engine', async () => {
    const model = await loadHfModel(path.join(fixtures, family));
    const { ref } = reference(family);
    const onnx = new Uint8Array(readFileSync(path.join(fixtures, family, 'model.onnx')));
    const runner = await OnnxDenseRunner.create(onnx, model.config);
    const engine = new Engine({ model, maxSequences: 1 });
    const vocab = model.config.vocabSize;
    // Prefill 20 tokens, then 12 single-token steps with the dense cache growing.
    const theirs = new Float32Array(ref.input_ids.length * vocab);
    theirs.set(await runner.feed(ref.input_ids.slice(0, 20)), 0);
    for (let t = 20; t < ref.input_ids.length; t++) theirs.set(await runner.feed([ref.input_ids[t] as number]), t * vocab);
    expect(runner.length).toBe(ref.input_ids.length);
    expect(runner.kvBytes()).toBe(2 * 2 * 2 * 32 * 16 * 4);
    const ours = await engine.forwardLogits(ref.input_ids);
    expect(relativeError(ours, theirs)).toBeLessThan(1e-4);
    expect(await runner.greedy(ref.greedy_prompt, ref.greedy_ids.length)).toEqual(ref.greedy_ids);
    await runner.dispose();
  });
});
