import { readFileSync } from 'node:fs';
import { dequantize, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { GgufType as T } from './gguf.ts';
import { loadGgufModel } from './gguf-model.ts';
import { writeSyntheticLlamaGguf as synthGguf } from './gguf-writer.ts';
import { readLlama2cTokenizer } from './spm-tokenizer.ts';
import { requireShared } from './test-support.ts';

function expectError(fn: () => unknown, cls: typeof ModelFormatError | typeof UnsupportedModelError, pattern: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
  expect((err as Error).message).toMatch(pattern);
}

describe('loadGgufModel on stories260K.gguf', () => {
  it('maps the metadata to the config in PROVENANCE.md', (ctx) => {
    const model = loadGgufModel(new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.gguf', ctx))));
    expect(model.format).toBe('gguf');
    expect(model.config).toEqual({
      architecture: 'llama',
      hiddenSize: 64,
      intermediateSize: 172,
      numLayers: 5,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 8,
      vocabSize: 512,
      maxContext: 2048,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeLayout: 'interleaved',
      ropeScaling: null,
      ropeDim: 8,
      tiedEmbeddings: false,
      attentionBias: false,
      bosTokenId: 1,
      eosTokenIds: [2],
    });
    expect(model.tensors.size).toBe(48);
    expect(model.metadata['general.architecture']).toBe('llama');
    expect(model.tokenizer).not.toBeNull();
    expect(model.tokenizer!.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
  });

  it('holds tensors bit-identical to stories260K.bin', (ctx) => {
    const model = loadGgufModel(new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.gguf', ctx))));
    const bin = new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.bin', ctx)));
    const floats = new Float32Array(bin.buffer.slice(bin.byteOffset + 28, bin.byteOffset + bin.byteLength));
    let p = 0;
    const take = (n: number): Float32Array => {
      const out = floats.subarray(p, p + n);
      p += n;
      return out;
    };
    const L = 5;
    const dim = 64;
    const kv = 32;
    const hid = 172;
    const emb = take(512 * dim);
    const per = (n: number) => Array.from({ length: L }, () => take(n));
    const rmsAtt = per(dim);
    const wq = per(dim * dim);
    const wk = per(kv * dim);
    const wv = per(kv * dim);
    const wo = per(dim * dim);
    const rmsFfn = per(dim);
    const w1 = per(hid * dim);
    const w2 = per(dim * hid);
    const w3 = per(hid * dim);
    const rmsFinal = take(dim);
    const same = (name: string, want: Float32Array): void => {
      const got = dequantize(model.tensors.get(name)!);
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.slice().buffer)), name).toBe(true);
    };
    same('token_embd.weight', emb);
    same('output.weight', emb);
    same('output_norm.weight', rmsFinal);
    for (let l = 0; l < L; l++) {
      same(`blk.${l}.attn_norm.weight`, rmsAtt[l]!);
      same(`blk.${l}.attn_q.weight`, wq[l]!);
      same(`blk.${l}.attn_k.weight`, wk[l]!);
      same(`blk.${l}.attn_v.weight`, wv[l]!);
      same(`blk.${l}.attn_output.weight`, wo[l]!);
      same(`blk.${l}.ffn_norm.weight`, rmsFfn[l]!);
      same(`blk.${l}.ffn_gate.weight`, w1[l]!);
      same(`blk.${l}.ffn_down.weight`, w2[l]!);
      same(`blk.${l}.ffn_up.weight`, w3[l]!);
    }
  });

  it('its tokenizer gives the same ids as tok512.bin', (ctx) => {
    const model = loadGgufModel(new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.gguf', ctx))));
    const bin = readLlama2cTokenizer(new Uint8Array(readFileSync(requireShared('models/stories260K/tok512.bin', ctx))), 512);
    const s = 'Lily and Ben went to the park.\nThey saw a big dog! "Woof," said the dog. 😀';
    expect(model.tokenizer!.encode(s)).toEqual(bin.encode(s));
    expect(model.tokenizer!.decode(bin.encode(s))).toBe(s);
  });
});

describe('loadGgufModel on synthetic files', () => {
  it('reads a minimal llama model with GQA, defaults and a tokenizer', () => {
    const m = loadGgufModel(synthGguf());
    expect(m.config).toMatchObject({
      architecture: 'llama',
      hiddenSize: 8,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 4,
      vocabSize: 6,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      ropeLayout: 'interleaved',
      ropeDim: 4,
      tiedEmbeddings: false,
      attentionBias: false,
    });
    expect(m.tokenizer!.encode('a')).toEqual([1, 5]);
    expect(m.tokenizer!.chatTemplate).toBeNull();
    expect(loadGgufModel(synthGguf(), { tokenizer: false }).tokenizer).toBeNull();
  });

  it('qwen2: rotate-half RoPE, biases, tied embeddings, chat template, rope base', () => {
    const m = loadGgufModel(
      synthGguf({
        arch: 'qwen2',
        bias: true,
        tied: true,
        kvHeads: null,
        meta: {
          'qwen2.rope.freq_base': { type: T.FLOAT32, value: 1000000 },
          'tokenizer.chat_template': { type: T.STRING, value: '{% for m in messages %}{{ m.content }}{% endfor %}' },
          'tokenizer.ggml.eot_token_id': { type: T.UINT32, value: 3 },
        },
      }),
    );
    expect(m.config).toMatchObject({
      architecture: 'qwen2',
      ropeLayout: 'rotate-half',
      attentionBias: true,
      tiedEmbeddings: true,
      numKvHeads: 2,
      ropeTheta: 1000000,
      eosTokenIds: [2, 3],
    });
    expect(m.tokenizer!.chatTemplate).toContain('m.content');
    expect(m.tensors.has('output.weight')).toBe(false);
  });

  it('non-llama tokenizers are left to other loaders (tokenizer null)', () => {
    const m = loadGgufModel(synthGguf({ meta: { 'tokenizer.ggml.model': { type: T.STRING, value: 'gpt2' } } }));
    expect(m.tokenizer).toBeNull();
  });

  it('rope scaling: linear from metadata, Llama 3 from rope_freqs.weight', () => {
    const linear = loadGgufModel(
      synthGguf({
        meta: {
          'llama.rope.scaling.type': { type: T.STRING, value: 'linear' },
          'llama.rope.scaling.factor': { type: T.FLOAT32, value: 4 },
        },
      }),
    );
    expect(linear.config.ropeScaling).toEqual({ type: 'linear', factor: 4 });
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'llama.rope.scaling.type': { type: T.STRING, value: 'yarn' } } })),
      UnsupportedModelError,
      /rope.scaling.type "yarn"/,
    );
    // Llama 3.1 factors for head_dim 64, theta 500000 (what llama.cpp's converter writes).
    const headDim = 64;
    const theta = 500000;
    const factors = new Float32Array(headDim / 2);
    for (let i = 0; i < factors.length; i++) {
      const freq = 1 / theta ** ((2 * i) / headDim);
      const wavelen = (2 * Math.PI) / freq;
      const low = 8192 / 1;
      const high = 8192 / 4;
      if (wavelen < high) factors[i] = 1;
      else if (wavelen > low) factors[i] = 8;
      else {
        const smooth = (8192 / wavelen - 1) / (4 - 1);
        factors[i] = 1 / ((1 - smooth) / 8 + smooth);
      }
    }
    const l3 = loadGgufModel(
      synthGguf({
        hidden: 128,
        heads: 2,
        kvHeads: 2,
        meta: { 'llama.rope.freq_base': { type: T.FLOAT32, value: theta } },
        extraTensors: [{ name: 'rope_freqs.weight', ne: [32], ggmlType: 0, data: new Uint8Array(factors.buffer) }],
      }),
    );
    expect(l3.config.ropeScaling).toEqual({
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    const odd = factors.slice();
    odd[20] = 3.3;
    expectError(
      () =>
        loadGgufModel(
          synthGguf({
            hidden: 128,
            heads: 2,
            kvHeads: 2,
            meta: { 'llama.rope.freq_base': { type: T.FLOAT32, value: theta } },
            extraTensors: [{ name: 'rope_freqs.weight', ne: [32], ggmlType: 0, data: new Uint8Array(odd.buffer) }],
          }),
        ),
      UnsupportedModelError,
      /rope_freqs.weight/,
    );
  });

  it('names a missing or misshapen tensor', () => {
    expectError(
      () => loadGgufModel(synthGguf({ drop: 'blk.1.ffn_up.weight' })),
      ModelFormatError,
      /missing tensor blk\.1\.ffn_up\.weight \(expected shape \[16, 8\]\)/,
    );
    expectError(() => loadGgufModel(synthGguf({ drop: 'output_norm.weight' })), ModelFormatError, /output_norm\.weight/);
    expectError(() => loadGgufModel(synthGguf({ drop: 'token_embd.weight' })), ModelFormatError, /token_embd\.weight/);
    expectError(
      () => loadGgufModel(synthGguf({ reshape: { 'blk.0.attn_k.weight': [8, 8] } })),
      ModelFormatError,
      /blk\.0\.attn_k\.weight has shape \[8, 8\]; expected \[4, 8\]/,
    );
    expectError(
      () => loadGgufModel(synthGguf({ reshape: { 'output.weight': [7, 8] } })),
      ModelFormatError,
      /output\.weight has shape \[7, 8\]; expected \[6, 8\]/,
    );
    expectError(() => loadGgufModel(synthGguf({ bias: true, drop: 'blk.1.attn_v.bias' })), ModelFormatError, /blk\.1\.attn_v\.bias/);
  });

  it('names an unknown architecture or a missing / invalid hyper-parameter', () => {
    expectError(() => loadGgufModel(synthGguf({ arch: 'gpt2' })), UnsupportedModelError, /architecture "gpt2" is not supported/);
    expectError(() => loadGgufModel(synthGguf({ meta: { 'llama.block_count': null } })), ModelFormatError, /llama\.block_count is missing/);
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'llama.embedding_length': { type: T.STRING, value: '8' } } })),
      ModelFormatError,
      /llama\.embedding_length must be a non-negative integer/,
    );
    expectError(
      () =>
        loadGgufModel(
          synthGguf({ meta: { 'llama.attention.head_count_kv': { type: T.ARRAY, value: { elementType: T.UINT32, items: [1, 1] } } } }),
        ),
      UnsupportedModelError,
      /head_count_kv is an array: per-layer values are not supported/,
    );
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'llama.attention.head_count_kv': { type: T.UINT32, value: 3 } } })),
      ModelFormatError,
      /multiple of numKvHeads/,
    );
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'llama.attention.layer_norm_rms_epsilon': null } })),
      ModelFormatError,
      /layer_norm_rms_epsilon is missing/,
    );
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'tokenizer.ggml.bos_token_id': { type: T.UINT32, value: 600 } } })),
      ModelFormatError,
      /special token id 600/,
    );
    expectError(
      () => loadGgufModel(synthGguf({ meta: { 'general.architecture': { type: T.UINT32, value: 1 } } })),
      ModelFormatError,
      /general\.architecture must be a string/,
    );
  });

  it('refuses unsupported tensor types by name', () => {
    const bytes = synthGguf({ extraTensors: [{ name: 'extra.q5k', ne: [256], ggmlType: 13, data: new Uint8Array(176) }] });
    expectError(() => loadGgufModel(bytes), UnsupportedModelError, /tensor "extra\.q5k" has type Q5_K/);
  });
});
