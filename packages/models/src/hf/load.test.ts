import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectedTensorShapes, loadHfModel, loadHfModelFromFiles } from './load.ts';
import { type StTensor, tinyCheckpointFiles, tinyConfigJson, tinyHfTensors, writeSafetensors } from './test-fixtures.ts';
import type { HfTokenizer } from './tokenizer.ts';

const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));

/** The checkpoint's weights as written, by HF name. */
function writtenTensors(type: 'llama' | 'qwen2' | 'mistral', options: Parameters<typeof tinyHfTensors>[1] = {}): Map<string, StTensor> {
  return new Map(tinyHfTensors(tinyConfigJson(type), { seed: 1, ...options }).map((t) => [t.name, t]));
}

describe('loadHfModelFromFiles', () => {
  it('loads a llama checkpoint: config, canonical tensors with their bytes, tokenizer', async () => {
    const model = await loadHfModelFromFiles(tinyCheckpointFiles('llama'));
    expect(model.format).toBe('safetensors');
    expect(model.config).toMatchObject({
      architecture: 'llama',
      hiddenSize: 16,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 4,
      vocabSize: 32,
      tiedEmbeddings: false,
      attentionBias: false,
      ropeLayout: 'rotate-half',
      ropeDim: 4,
    });
    const expected = expectedTensorShapes(model.config);
    expect([...model.tensors.keys()]).toEqual([...expected.keys()]);
    expect(model.tensors.size).toBe(1 + 2 * 9 + 2);
    for (const [name, tensor] of model.tensors) {
      expect(tensor.name).toBe(name);
      expect(tensor.shape).toEqual(expected.get(name));
      expect(tensor.dtype).toBe('f32');
    }
    const written = writtenTensors('llama');
    expect(Array.from(model.tensors.get('blk.1.attn_k.weight')!.data)).toEqual(
      Array.from(written.get('model.layers.1.self_attn.k_proj.weight')!.data),
    );
    expect(Array.from(model.tensors.get('output.weight')!.data)).toEqual(Array.from(written.get('lm_head.weight')!.data));

    const tok = model.tokenizer as HfTokenizer;
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.encode('hello world')).toEqual([1, 19, 24]);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'hello' }])).toBe('<s>[INST] hello [/INST]');

    expect(model.metadata).toMatchObject({
      model_type: 'llama',
      'kvcompress.sliding_window': null,
      'kvcompress.weight_files': ['model.safetensors'],
      'kvcompress.safetensors_metadata': { format: 'pt' },
    });
  });

  it('loads a sharded bf16 qwen2 checkpoint with QKV bias, tied embeddings and a ChatML tokenizer', async () => {
    const files = tinyCheckpointFiles('qwen2', { shards: 3, dtype: 'BF16', configOverrides: { tie_word_embeddings: true } });
    expect([...files.keys()].filter((k) => k.endsWith('.safetensors'))).toHaveLength(3);
    const model = await loadHfModelFromFiles(files);
    expect(model.config).toMatchObject({
      architecture: 'qwen2',
      attentionBias: true,
      tiedEmbeddings: true,
      bosTokenId: 25,
      eosTokenIds: [27],
    });
    expect(model.tensors.has('output.weight')).toBe(false);
    expect(model.tensors.get('blk.0.attn_q.bias')).toMatchObject({ shape: [16], dtype: 'bf16' });
    expect(model.tensors.get('blk.1.attn_v.bias')).toMatchObject({ shape: [8], dtype: 'bf16' });
    const written = writtenTensors('qwen2', { dtype: 'BF16', lmHead: false });
    expect(Array.from(model.tensors.get('blk.1.attn_v.bias')!.data)).toEqual(
      Array.from(written.get('model.layers.1.self_attn.v_proj.bias')!.data),
    );
    expect(model.metadata['kvcompress.weight_files']).toHaveLength(3);

    const tok = model.tokenizer as HfTokenizer;
    expect(tok.bosTokenId).toBeNull();
    expect(tok.eosTokenIds).toEqual([27]);
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hello world' }], { addGenerationPrompt: true });
    expect(prompt).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n',
    );
    const ids = tok.encode(prompt);
    expect(ids[0]).toBe(26);
    expect(ids.filter((id) => id === 27)).toHaveLength(2);
  });

  it('loads mistral, records the sliding window, and merges generation_config EOS ids', async () => {
    const files = tinyCheckpointFiles('mistral', { dtype: 'F16' });
    files.set('generation_config.json', json({ bos_token_id: 1, eos_token_id: [2, 5] }));
    const model = await loadHfModelFromFiles(files);
    expect(model.config.architecture).toBe('mistral');
    expect(model.config.eosTokenIds).toEqual([2, 5]);
    expect(model.tokenizer!.eosTokenIds).toEqual([2, 5]);
    expect(model.metadata).toMatchObject({ 'kvcompress.sliding_window': 64, sliding_window: 64 });
    expect(model.tensors.get('token_embd.weight')!.dtype).toBe('f16');
  });

  it('ties embeddings when lm_head.weight is absent and ignores a saved lm_head when tied', async () => {
    const noHead = tinyCheckpointFiles('llama', { lmHead: false });
    expect((await loadHfModelFromFiles(noHead)).config.tiedEmbeddings).toBe(true);
    const both = tinyCheckpointFiles('llama', { configOverrides: { tie_word_embeddings: true }, lmHead: true });
    const model = await loadHfModelFromFiles(both);
    expect(model.config.tiedEmbeddings).toBe(true);
    expect(model.tensors.has('output.weight')).toBe(false);
  });

  it('works without a tokenizer, with a folder prefix, and with chat_template.jinja', async () => {
    const bare = await loadHfModelFromFiles(tinyCheckpointFiles('llama', { tokenizer: false }));
    expect(bare.tokenizer).toBeNull();

    const files = tinyCheckpointFiles('llama');
    files.set('chat_template.jinja', new TextEncoder().encode('{{ bos_token }}{{ messages[0].content }}'));
    const prefixed = new Map([...files].map(([k, v]) => [`TinyLlama-mini/${k}`, v]));
    const model = await loadHfModelFromFiles(prefixed);
    expect((model.tokenizer as HfTokenizer).applyChatTemplate([{ role: 'user', content: 'hi' }])).toBe('<s>hi');
  });

  it('names missing, extra and misshapen tensors', async () => {
    const config = tinyConfigJson('llama');
    const tensors = tinyHfTensors(config);
    const withFiles = (list: StTensor[], cfg: Record<string, unknown> = config): Map<string, Uint8Array> =>
      new Map([
        ['config.json', json(cfg)],
        ['model.safetensors', writeSafetensors(list)],
      ]);

    const missing = tensors.filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight' && t.name !== 'model.norm.weight');
    await expect(loadHfModelFromFiles(withFiles(missing))).rejects.toThrow(
      /missing 2 tensor\(s\): blk.1.ffn_up.weight, output_norm.weight/,
    );

    await expect(loadHfModelFromFiles(withFiles(tensors, { ...config, num_hidden_layers: 1 }))).rejects.toThrow(
      /9 tensor\(s\) the config does not call for: blk.1.attn_norm.weight, blk.1.attn_q.weight/,
    );
    await expect(loadHfModelFromFiles(withFiles(tensors, { ...config, num_hidden_layers: 3 }))).rejects.toThrow(
      /missing 9 tensor\(s\): blk.2/,
    );

    const qwenTensors = tinyHfTensors(tinyConfigJson('qwen2'));
    await expect(loadHfModelFromFiles(withFiles(qwenTensors))).rejects.toThrow(/does not call for: blk.0.attn_q.bias/);
    await expect(loadHfModelFromFiles(withFiles(tensors, { ...tinyConfigJson('qwen2') }))).rejects.toThrow(
      /missing 6 tensor\(s\): blk.0.attn_q.bias/,
    );

    const wide = tensors.map((t) => (t.name === 'model.layers.0.self_attn.k_proj.weight' ? { ...t, shape: [16, 8] } : t));
    await expect(loadHfModelFromFiles(withFiles(wide))).rejects.toThrow(
      /Tensor blk.0.attn_k.weight has shape \[16, 8\] but config.json implies \[8, 16\]/,
    );

    const unknown = [...tensors, { name: 'model.layers.0.self_attn.q_norm.weight', dtype: 'F32', shape: [4], data: new Uint8Array(16) }];
    await expect(loadHfModelFromFiles(withFiles(unknown))).rejects.toThrow(
      /not part of a Llama-family model: model.layers.0.self_attn.q_norm.weight/,
    );
  });

  it('reports missing or broken files', async () => {
    const files = tinyCheckpointFiles('llama');
    const without = (name: string) => new Map([...files].filter(([k]) => k !== name));
    await expect(loadHfModelFromFiles(without('config.json'))).rejects.toThrow(/No config.json/);
    await expect(loadHfModelFromFiles(without('model.safetensors'))).rejects.toThrow(ModelFormatError);
    await expect(loadHfModelFromFiles(without('model.safetensors'))).rejects.toThrow(/has no weights/);
    const bin = without('model.safetensors');
    bin.set('pytorch_model.bin', new Uint8Array(4));
    await expect(loadHfModelFromFiles(bin)).rejects.toThrow(UnsupportedModelError);

    const badJson = new Map(files);
    badJson.set('config.json', new TextEncoder().encode('{"model_type": '));
    await expect(loadHfModelFromFiles(badJson)).rejects.toThrow(/config.json is not valid JSON/);

    const sharded = tinyCheckpointFiles('llama', { shards: 2 });
    sharded.delete('model-00002-of-00002.safetensors');
    await expect(loadHfModelFromFiles(sharded)).rejects.toThrow(
      /names shard file\(s\) that are not there: model-00002-of-00002.safetensors/,
    );

    const bigTokenizer = tinyCheckpointFiles('llama', { configOverrides: { vocab_size: 20 } });
    await expect(loadHfModelFromFiles(bigTokenizer)).rejects.toThrow(/tokenizer.json has 25 tokens but the model's vocabulary .* has 20/);

    const badGen = new Map(files);
    badGen.set('generation_config.json', json({ eos_token_id: 'x' }));
    await expect(loadHfModelFromFiles(badGen)).rejects.toThrow(/generation_config.json: eos_token_id/);

    await expect(loadHfModelFromFiles(new Map([['config.json', 'x' as unknown as Uint8Array]]))).rejects.toThrow(InvalidArgumentError);
  });
});

describe('loadHfModel (filesystem)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kvc-hf-'));
    for (const [name, bytes] of tinyCheckpointFiles('qwen2', { shards: 2 })) await writeFile(join(dir, name), bytes);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads the same model as from memory', async () => {
    const fromDisk = await loadHfModel(dir);
    const fromMemory = await loadHfModelFromFiles(tinyCheckpointFiles('qwen2', { shards: 2 }));
    expect(fromDisk.config).toEqual(fromMemory.config);
    expect([...fromDisk.tensors.keys()]).toEqual([...fromMemory.tensors.keys()]);
    for (const [name, t] of fromDisk.tensors) expect(Array.from(t.data), name).toEqual(Array.from(fromMemory.tensors.get(name)!.data));
    expect(fromDisk.tokenizer!.encode('hello world')).toEqual(fromMemory.tokenizer!.encode('hello world'));
  });

  it('reports a directory that cannot be read', async () => {
    await expect(loadHfModel(join(dir, 'nope'))).rejects.toThrow(InvalidArgumentError);
    await expect(loadHfModel(join(dir, 'nope'))).rejects.toThrow(/Cannot read the model directory/);
  });
});
