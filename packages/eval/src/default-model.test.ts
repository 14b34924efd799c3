// The committed default model (models/kvc-20m-4k, trained by tooling/train) against the
// PyTorch run that produced it, and its retrieval on held-out text with the full cache.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Engine } from '@kvcompress/engine';
import { type LoadedModel, loadModel } from '@kvcompress/models';
import { defaultModelDir, hasShared, sharedPath } from '@kvcompress/test-support';
import { beforeAll, describe, expect, it } from 'vitest';
import { generateExample, scoreAnswer, splitSentences } from './tasks.ts';

interface Reference {
  /** Text the reference encodes, its ids with the BOS, and positions whose logits were saved. */
  readonly text: string;
  readonly ids: number[];
  readonly positions: number[];
  /** f32 logits [positions.length][vocab] from PyTorch (f32 math on the f16 weights). */
  readonly logits: number[][];
}

const ALICE = 'data/gutenberg/pg11_alice_in_wonderland.txt';

describe('the default model (kvc-20m-4k)', () => {
  let model: LoadedModel;
  const ref = JSON.parse(readFileSync(path.join(defaultModelDir, 'reference.json'), 'utf8')) as Reference;
  beforeAll(async () => {
    model = await loadModel(defaultModelDir);
  });

  it('loads as a 6-layer GQA Llama with a 4096-token context and its tokenizer', () => {
    expect(model.config).toMatchObject({
      numLayers: 6,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 64,
      maxContext: 4096,
      vocabSize: 4096,
      tiedEmbeddings: false,
    });
    expect(model.tokenizer?.encode(ref.text, { addBos: true })).toEqual(ref.ids);
  });

  it('gives the logits PyTorch gave when it was trained (CPU backend, f32)', async () => {
    const engine = new Engine({ model, maxSequences: 1 });
    const logits = await engine.forwardLogits(ref.ids);
    const vocab = model.config.vocabSize;
    for (const [k, p] of ref.positions.entries()) {
      const want = ref.logits[k] as number[];
      let diff = 0;
      let scale = 0;
      for (let v = 0; v < vocab; v++) {
        diff = Math.max(diff, Math.abs((logits[p * vocab + v] as number) - (want[v] as number)));
        scale = Math.max(scale, Math.abs(want[v] as number));
      }
      expect(diff / scale).toBeLessThan(1e-4);
    }
  });

  // Held-out text (Alice is never trained on); three seeded examples of each task.
  it.skipIf(!hasShared(ALICE))(
    'finds the pass key and the magic number in held-out text with the full cache',
    async () => {
      const tokenizer = model.tokenizer;
      if (tokenizer === null) throw new Error('the default model has no tokenizer');
      const source = {
        sentences: splitSentences(readFileSync(sharedPath(ALICE), 'utf8')),
        countTokens: (t: string) => tokenizer.encode(t, { addBos: false }).length,
      };
      const engine = new Engine({ model, maxSequences: 1, maxContext: 512 });
      for (const task of ['passkey', 'niah-single'] as const) {
        for (let i = 0; i < 3; i++) {
          const example = generateExample(task, source, 384, i, 11);
          const done = await engine.complete(tokenizer.encode(example.prompt, { addBos: true }), { maxTokens: example.maxNewTokens });
          expect({ task, i, score: scoreAnswer(done.text, example.answers) }).toEqual({ task, i, score: 1 });
        }
      }
    },
    240_000,
  );
});
