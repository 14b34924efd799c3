import { ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { configFromHf, hfModelType, hfSlidingWindow } from './config.ts';
import { tinyConfigJson } from './test-fixtures.ts';

/** Abridged config.json files of real checkpoints. */
const LLAMA2_7B = {
  architectures: ['LlamaForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 11008,
  max_position_embeddings: 4096,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 32,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: 'float16',
  transformers_version: '4.31.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const LLAMA31_8B_INSTRUCT = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.42.3',
  use_cache: true,
  vocab_size: 128256,
};

const TINYLLAMA = {
  architectures: ['LlamaForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.35.0',
  use_cache: true,
  vocab_size: 32000,
};

const SMOLLM2_135M = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 0,
  hidden_act: 'silu',
  hidden_size: 576,
  initializer_range: 0.041666666666666664,
  intermediate_size: 1536,
  is_llama_config: true,
  max_position_embeddings: 8192,
  model_type: 'llama',
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_interleaved: false,
  rope_scaling: null,
  rope_theta: 100000,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.1',
  use_cache: true,
  vocab_size: 49152,
};

const MISTRAL_7B_V01 = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.34.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const QWEN25_05B_INSTRUCT = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 21,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.1',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a throw');
}

describe('configFromHf', () => {
  it('reads Llama 2', () => {
    expect(configFromHf(LLAMA2_7B)).toEqual({
      architecture: 'llama',
      hiddenSize: 4096,
      intermediateSize: 11008,
      numLayers: 32,
      numHeads: 32,
      numKvHeads: 32,
      headDim: 128,
      vocabSize: 32000,
      maxContext: 4096,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeLayout: 'rotate-half',
      ropeScaling: null,
      ropeDim: 128,
      tiedEmbeddings: false,
      attentionBias: false,
      bosTokenId: 1,
      eosTokenIds: [2],
    });
  });

  it('reads Llama 3.1 with llama3 rope scaling and several EOS ids', () => {
    const c = configFromHf(LLAMA31_8B_INSTRUCT);
    expect(c.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(c.ropeTheta).toBe(500000);
    expect(c.numKvHeads).toBe(8);
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(c.bosTokenId).toBe(128000);
    expect(c.maxContext).toBe(131072);
  });

  it('reads linear scaling, the legacy "type" key and transformers 5 rope_parameters', () => {
    expect(configFromHf({ ...LLAMA2_7B, rope_scaling: { type: 'linear', factor: 4 } }).ropeScaling).toEqual({ type: 'linear', factor: 4 });
    expect(configFromHf({ ...LLAMA2_7B, rope_scaling: { rope_type: 'default' } }).ropeScaling).toBeNull();
    const { rope_scaling: _s, rope_theta: _t, ...rest } = LLAMA31_8B_INSTRUCT;
    const v5 = configFromHf({ ...rest, rope_parameters: { ...LLAMA31_8B_INSTRUCT.rope_scaling, rope_theta: 500000 } });
    expect(v5.ropeTheta).toBe(500000);
    expect(v5.ropeScaling?.type).toBe('llama3');
  });

  it('reads TinyLlama and SmolLM2 (llama architecture, GQA, tied embeddings)', () => {
    const tiny = configFromHf(TINYLLAMA);
    expect(tiny).toMatchObject({ architecture: 'llama', numLayers: 22, numHeads: 32, numKvHeads: 4, headDim: 64 });
    const smol = configFromHf(SMOLLM2_135M);
    expect(smol).toMatchObject({
      numHeads: 9,
      numKvHeads: 3,
      headDim: 64,
      tiedEmbeddings: true,
      ropeTheta: 100000,
      bosTokenId: 0,
      eosTokenIds: [0],
    });
  });

  it('reads Mistral and reports its sliding window', () => {
    const c = configFromHf(MISTRAL_7B_V01);
    expect(c).toMatchObject({ architecture: 'mistral', numKvHeads: 8, attentionBias: false, maxContext: 32768 });
    expect(hfSlidingWindow(MISTRAL_7B_V01)).toBe(4096);
    expect(hfSlidingWindow({ ...MISTRAL_7B_V01, sliding_window: null })).toBeNull();
  });

  it('reads Qwen2 with QKV bias', () => {
    const c = configFromHf(QWEN25_05B_INSTRUCT);
    expect(c).toMatchObject({
      architecture: 'qwen2',
      attentionBias: true,
      headDim: 64,
      tiedEmbeddings: true,
      ropeTheta: 1e6,
      rmsNormEps: 1e-6,
    });
    expect(hfSlidingWindow(QWEN25_05B_INSTRUCT)).toBeNull();
    expect(hfSlidingWindow({ ...QWEN25_05B_INSTRUCT, use_sliding_window: true })).toBe(32768);
  });

  it('applies defaults', () => {
    const { num_key_value_heads: _k, rope_theta: _t, rms_norm_eps: _e, tie_word_embeddings: _w, ...minimal } = tinyConfigJson('llama');
    const c = configFromHf({ ...minimal, bos_token_id: null, eos_token_id: null });
    expect(c).toMatchObject({
      numKvHeads: 4,
      headDim: 4,
      ropeTheta: 10000,
      rmsNormEps: 1e-6,
      tiedEmbeddings: false,
      bosTokenId: null,
      eosTokenIds: [],
    });
    expect(configFromHf({ ...minimal, head_dim: 8 }).headDim).toBe(8);
  });

  it('infers the model type from architectures', () => {
    const { model_type: _m, ...noType } = MISTRAL_7B_V01;
    expect(hfModelType(noType)).toBe('mistral');
  });

  it('ties embeddings when the checkpoint has no lm_head', () => {
    const cfg = tinyConfigJson('llama');
    expect(configFromHf(cfg, new Set(['model.embed_tokens.weight', 'lm_head.weight'])).tiedEmbeddings).toBe(false);
    expect(configFromHf(cfg, new Set(['model.embed_tokens.weight'])).tiedEmbeddings).toBe(true);
  });

  it('names the field that is missing or ill-typed', () => {
    const base = tinyConfigJson('llama');
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...base, hidden_size: undefined }, /missing "hidden_size"/],
      [{ ...base, hidden_size: '16' }, /"hidden_size" must be an integer >= 1, found "16"/],
      [{ ...base, num_hidden_layers: 0 }, /"num_hidden_layers" must be an integer >= 1, found 0/],
      [{ ...base, intermediate_size: 1.5 }, /"intermediate_size"/],
      [{ ...base, vocab_size: null }, /missing "vocab_size"/],
      [{ ...base, max_position_embeddings: [] }, /"max_position_embeddings" .* found an array of 0/],
      [{ ...base, rms_norm_eps: -1 }, /"rms_norm_eps" must be a positive number/],
      [{ ...base, rope_theta: 'big' }, /"rope_theta"/],
      [{ ...base, tie_word_embeddings: 'yes' }, /"tie_word_embeddings" must be true or false/],
      [{ ...base, eos_token_id: 'x' }, /"eos_token_id" must be a token id or a list of token ids/],
      [{ ...base, eos_token_id: [2, -1] }, /"eos_token_id"/],
      [{ ...base, eos_token_id: 99 }, /eos_token_id 99 is outside the vocabulary/],
      [{ ...base, bos_token_id: [1, 2] }, /"bos_token_id" must be a single token id/],
      [{ ...base, num_key_value_heads: 3 }, /num_attention_heads 4 is not a multiple of num_key_value_heads 3/],
      [{ ...base, hidden_size: 18 }, /hidden_size 18 is not a multiple of num_attention_heads 4/],
      [{ ...base, head_dim: 3 }, /ropeDim 3 must be even/],
      [{ ...base, rope_scaling: 'linear' }, /"rope_scaling" must be an object/],
      [{ ...base, rope_scaling: { factor: 2 } }, /rope_scaling has no "rope_type"/],
      [{ ...base, rope_scaling: { rope_type: 'linear' } }, /rope_scaling is missing "factor"/],
      [{ ...base, rope_scaling: { ...LLAMA31_8B_INSTRUCT.rope_scaling, low_freq_factor: 5 } }, /high_freq_factor \(4\) must be greater/],
      [
        { ...base, rope_scaling: { ...LLAMA31_8B_INSTRUCT.rope_scaling, original_max_position_embeddings: undefined } },
        /original_max_position_embeddings/,
      ],
      [{ ...base, model_type: 7 }, /"model_type" must be a string/],
      [{ ...base, model_type: undefined, architectures: undefined }, /neither "model_type" nor "architectures"/],
    ];
    for (const [cfg, pattern] of cases) {
      const err = thrown(() => configFromHf(cfg));
      expect(err, String(pattern)).toBeInstanceOf(ModelFormatError);
      expect(err.message).toMatch(pattern);
    }
    expect(thrown(() => configFromHf('nope'))).toBeInstanceOf(ModelFormatError);
    expect(thrown(() => configFromHf(null))).toBeInstanceOf(ModelFormatError);
  });

  it('refuses unsupported models and features with UnsupportedModelError', () => {
    const base = tinyConfigJson('llama');
    const err = thrown(() => configFromHf({ ...base, model_type: 'gemma' }));
    expect(err).toBeInstanceOf(UnsupportedModelError);
    expect(err.message).toMatch(/model_type "gemma" is not supported. Supported model_type values: llama, mistral, qwen2/);
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...base, model_type: undefined, architectures: ['GPT2LMHeadModel'] }, /architecture "GPT2LMHeadModel"/],
      [{ ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } }, /"yarn" is not supported/],
      [{ ...base, hidden_act: 'gelu' }, /hidden_act "gelu"/],
      [{ ...base, attention_bias: true }, /attention_bias true/],
      [{ ...base, mlp_bias: true }, /mlp_bias/],
    ];
    for (const [cfg, pattern] of cases) {
      const e = thrown(() => configFromHf(cfg));
      expect(e, String(pattern)).toBeInstanceOf(UnsupportedModelError);
      expect(e.message).toMatch(pattern);
    }
  });
});
