import {
  InvalidArgumentError,
  type ModelConfig,
  ModelFormatError,
  type RopeScaling,
  UnsupportedModelError,
  validateModelConfig,
} from '@kvcompress/core';
import { describe, field, isPlainObject } from './util.ts';

/**
 * `config.json` of a transformers checkpoint -> `ModelConfig`.
 *
 * Supported `model_type`s: `llama` (Llama 2, Llama 3.x, and the llama-architecture
 * families TinyLlama, SmolLM/SmolLM2, ...), `mistral` and `qwen2`. The validation is by hand
 * (zod is not a dependency of this package); every message names the offending field.
 */

export const SUPPORTED_HF_MODEL_TYPES = ['llama', 'mistral', 'qwen2'] as const;
export type HfModelType = (typeof SUPPORTED_HF_MODEL_TYPES)[number];

const ARCHITECTURE_TYPES: Readonly<Record<string, HfModelType>> = {
  LlamaForCausalLM: 'llama',
  LlamaModel: 'llama',
  MistralForCausalLM: 'mistral',
  MistralModel: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen2Model: 'qwen2',
};

const FILE = 'config.json';

function isSupportedType(value: string): value is HfModelType {
  return (SUPPORTED_HF_MODEL_TYPES as readonly string[]).includes(value);
}

function unsupportedType(what: string): UnsupportedModelError {
  return new UnsupportedModelError(
    `${FILE}: ${what} is not supported. Supported model_type values: ${SUPPORTED_HF_MODEL_TYPES.join(', ')} ` +
      `(architectures ${Object.keys(ARCHITECTURE_TYPES)
        .filter((a) => a.endsWith('ForCausalLM'))
        .join(', ')}).`,
  );
}

function asObject(configJson: unknown): Record<string, unknown> {
  if (!isPlainObject(configJson)) throw new ModelFormatError(`${FILE} must be a JSON object, found ${describe(configJson)}.`);
  return configJson;
}

/** The model type of a config.json: its `model_type`, else the first of its `architectures`. */
export function hfModelType(configJson: unknown): HfModelType {
  const config = asObject(configJson);
  const modelType = field(config, 'model_type');
  if (modelType !== undefined && modelType !== null) {
    if (typeof modelType !== 'string') throw new ModelFormatError(`${FILE}: "model_type" must be a string, found ${describe(modelType)}.`);
    if (isSupportedType(modelType)) return modelType;
    throw unsupportedType(`model_type ${JSON.stringify(modelType)}`);
  }
  const architectures = field(config, 'architectures');
  if (Array.isArray(architectures) && architectures.length > 0) {
    const first = architectures[0];
    if (typeof first !== 'string') throw new ModelFormatError(`${FILE}: "architectures" must hold strings, found ${describe(first)}.`);
    const type = Object.hasOwn(ARCHITECTURE_TYPES, first) ? ARCHITECTURE_TYPES[first] : undefined;
    if (type !== undefined) return type;
    throw unsupportedType(`architecture ${JSON.stringify(first)}`);
  }
  throw new ModelFormatError(`${FILE} has neither "model_type" nor "architectures"; cannot tell which model it describes.`);
}

/** Reads typed fields of a JSON object; `null` counts as absent (transformers writes `null` for unset options). */
class Fields {
  private readonly obj: Record<string, unknown>;
  private readonly where: string;

  constructor(obj: Record<string, unknown>, where: string) {
    this.obj = obj;
    this.where = where;
  }

  private raw(key: string): unknown {
    return Object.hasOwn(this.obj, key) ? this.obj[key] : undefined;
  }

  has(key: string): boolean {
    const v = this.raw(key);
    return v !== undefined && v !== null;
  }

  /** An integer >= `min`; required unless `fallback` is given. */
  int(key: string, min: number, fallback?: number): number {
    const v = this.raw(key);
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`${this.where} is missing "${key}" (an integer >= ${min}).`);
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      throw new ModelFormatError(`${this.where}: "${key}" must be an integer >= ${min}, found ${describe(v)}.`);
    }
    return v;
  }

  /** A finite number > 0 (or >= `min` when given); required unless `fallback` is given. */
  positive(key: string, fallback?: number, min?: number): number {
    const v = this.raw(key);
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`${this.where} is missing "${key}" (a positive number).`);
    }
    const ok = typeof v === 'number' && Number.isFinite(v) && (min === undefined ? v > 0 : v >= min);
    if (!ok) {
      throw new ModelFormatError(
        `${this.where}: "${key}" must be a ${min === undefined ? 'positive number' : `number >= ${min}`}, found ${describe(v)}.`,
      );
    }
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw new ModelFormatError(`${this.where}: "${key}" must be true or false, found ${describe(v)}.`);
    return v;
  }

  optionalString(key: string): string | null {
    const v = this.raw(key);
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string') throw new ModelFormatError(`${this.where}: "${key}" must be a string, found ${describe(v)}.`);
    return v;
  }

  /** A token id, an array of them, or absent. */
  tokenIds(key: string): number[] {
    const v = this.raw(key);
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const id of list) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        throw new ModelFormatError(`${this.where}: "${key}" must be a token id or a list of token ids, found ${describe(v)}.`);
      }
    }
    return [...new Set(list as number[])];
  }

  object(key: string): Record<string, unknown> | null {
    const v = this.raw(key);
    if (v === undefined || v === null) return null;
    if (!isPlainObject(v)) throw new ModelFormatError(`${this.where}: "${key}" must be an object, found ${describe(v)}.`);
    return v;
  }
}

/**
 * RoPE base and scaling. transformers 4.x writes `rope_theta` and `rope_scaling`;
 * transformers 5 writes them together as `rope_parameters`.
 */
function readRope(f: Fields): { theta: number; scaling: RopeScaling | null } {
  const params = f.object('rope_parameters');
  if (params !== null) {
    const p = new Fields(params, `${FILE}: rope_parameters`);
    return { theta: p.positive('rope_theta', 10000), scaling: readRopeScaling(params, 'rope_parameters') };
  }
  const scaling = f.object('rope_scaling');
  return { theta: f.positive('rope_theta', 10000), scaling: scaling === null ? null : readRopeScaling(scaling, 'rope_scaling') };
}

function readRopeScaling(obj: Record<string, unknown>, key: string): RopeScaling | null {
  const f = new Fields(obj, `${FILE}: ${key}`);
  // `type` is the pre-4.43 spelling of `rope_type`.
  const type = f.optionalString('rope_type') ?? f.optionalString('type');
  if (type === null) throw new ModelFormatError(`${FILE}: ${key} has no "rope_type".`);
  switch (type) {
    case 'default':
      return null;
    case 'linear':
      return { type: 'linear', factor: f.positive('factor') };
    case 'llama3': {
      const lowFreqFactor = f.positive('low_freq_factor');
      const highFreqFactor = f.positive('high_freq_factor');
      if (!(highFreqFactor > lowFreqFactor)) {
        throw new ModelFormatError(
          `${FILE}: ${key}.high_freq_factor (${highFreqFactor}) must be greater than low_freq_factor (${lowFreqFactor}).`,
        );
      }
      return {
        type: 'llama3',
        factor: f.positive('factor', undefined, 1),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: f.int('original_max_position_embeddings', 1),
      };
    }
    default:
      throw new UnsupportedModelError(
        `${FILE}: ${key} of type ${JSON.stringify(type)} is not supported; kvcompress implements "default", "linear" and "llama3" RoPE scaling.`,
      );
  }
}

/**
 * Builds a `ModelConfig` from a parsed config.json. `tensorNames` (the checkpoint's HF
 * tensor names), when given, makes the embeddings count as tied when there is no
 * `lm_head.weight`, whatever `tie_word_embeddings` says.
 *
 * Throws `ModelFormatError` naming the field for missing or ill-typed fields and
 * `UnsupportedModelError` for model types and features kvcompress does not implement.
 */
export function configFromHf(configJson: unknown, tensorNames?: ReadonlySet<string>): ModelConfig {
  const architecture = hfModelType(configJson);
  const f = new Fields(asObject(configJson), FILE);

  const hiddenSize = f.int('hidden_size', 1);
  const numHeads = f.int('num_attention_heads', 1);
  const numKvHeads = f.int('num_key_value_heads', 1, numHeads);
  if (!f.has('head_dim') && hiddenSize % numHeads !== 0) {
    throw new ModelFormatError(
      `${FILE}: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}, and there is no "head_dim".`,
    );
  }
  const headDim = f.int('head_dim', 1, hiddenSize / numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(`${FILE}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}.`);
  }

  const act = f.optionalString('hidden_act');
  if (act !== null && act !== 'silu' && act !== 'swish') {
    throw new UnsupportedModelError(`${FILE}: hidden_act ${JSON.stringify(act)} is not supported; Llama-family models use "silu".`);
  }
  // Llama's `attention_bias` adds a bias to o_proj as well, which the canonical layout lacks.
  if (architecture !== 'qwen2' && f.bool('attention_bias', false)) {
    throw new UnsupportedModelError(`${FILE}: attention_bias true (biases on q/k/v/o projections) is not supported for ${architecture}.`);
  }
  if (f.bool('mlp_bias', false)) throw new UnsupportedModelError(`${FILE}: mlp_bias true is not supported.`);

  // Sliding-window attention (Mistral v0.1 `sliding_window`, Qwen2 `use_sliding_window`) is
  // not implemented: attention is always over the full context, which is exact as long as
  // the context stays below the window. The loader records the window in the metadata
  // (see `hfSlidingWindow`).

  const rope = readRope(f);
  const vocabSize = f.int('vocab_size', 1);
  const lmHeadAbsent = tensorNames !== undefined && !tensorNames.has('lm_head.weight') && !tensorNames.has('output.weight');
  const bos = f.tokenIds('bos_token_id');
  if (bos.length > 1) throw new ModelFormatError(`${FILE}: "bos_token_id" must be a single token id, found ${bos.length}.`);
  const eosTokenIds = f.tokenIds('eos_token_id');
  for (const [key, ids] of [
    ['bos_token_id', bos],
    ['eos_token_id', eosTokenIds],
  ] as const) {
    const bad = ids.find((id) => id >= vocabSize);
    if (bad !== undefined) throw new ModelFormatError(`${FILE}: ${key} ${bad} is outside the vocabulary (vocab_size ${vocabSize}).`);
  }

  const config: ModelConfig = {
    architecture,
    hiddenSize,
    intermediateSize: f.int('intermediate_size', 1),
    numLayers: f.int('num_hidden_layers', 1),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxContext: f.int('max_position_embeddings', 1),
    rmsNormEps: f.positive('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    ropeLayout: 'rotate-half',
    ropeScaling: rope.scaling,
    ropeDim: headDim,
    tiedEmbeddings: f.bool('tie_word_embeddings', false) || lmHeadAbsent,
    attentionBias: architecture === 'qwen2',
    bosTokenId: bos[0] ?? null,
    eosTokenIds,
  };
  try {
    validateModelConfig(config);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new ModelFormatError(`${FILE}: ${err.message}`);
    throw err;
  }
  return config;
}

/**
 * The sliding attention window the model was trained with, or `null` for full attention.
 * kvcompress attends over the full context regardless (exact below the window).
 */
export function hfSlidingWindow(configJson: unknown): number | null {
  const type = hfModelType(configJson);
  const f = new Fields(asObject(configJson), FILE);
  if (type === 'mistral') return f.has('sliding_window') ? f.int('sliding_window', 1) : null;
  if (type === 'qwen2') return f.bool('use_sliding_window', false) && f.has('sliding_window') ? f.int('sliding_window', 1) : null;
  return null;
}
