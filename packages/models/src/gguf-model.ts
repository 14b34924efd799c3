/**
 * A GGUF file as a `LoadedModel`: metadata mapped to `ModelConfig`, the canonical tensors
 * checked for presence and shape, and the SentencePiece vocabulary (when the file has a
 * `llama` tokenizer) as a `Tokenizer`.
 */
import {
  dequantize,
  KvCompressError,
  type ModelConfig,
  ModelFormatError,
  type RopeLayout,
  type RopeScaling,
  type Tensor,
  UnsupportedModelError,
  validateModelConfig,
} from '@kvcompress/core';
import { type GgufFile, parseGguf } from './gguf.ts';
import { SpmTokenizer } from './spm-tokenizer.ts';
import type { LoadedModel, Tokenizer } from './types.ts';

/** Architectures we can run, with how their Q/K weights pair RoPE dimensions. */
const ARCHITECTURES: Readonly<Record<string, RopeLayout>> = {
  llama: 'interleaved', // llama.cpp's converter permutes HF Q/K weights to (2i, 2i+1) pairs
  qwen2: 'rotate-half', // NEOX-style RoPE, weights as in the HF checkpoint
};

export interface LoadGgufOptions {
  /** Skip the tokenizer (faster for huge vocabularies when only the weights are needed). */
  readonly tokenizer?: boolean;
}

/** Loads a GGUF model. `ModelFormatError` for a malformed file, `UnsupportedModelError` for one we cannot run. */
export function loadGgufModel(bytes: Uint8Array, options: LoadGgufOptions = {}): LoadedModel {
  const file = parseGguf(bytes);
  const config = ggufModelConfig(file);
  const tensors = file.tensors;
  validateTensors(config, tensors);
  let tokenizer: Tokenizer | null = null;
  if (options.tokenizer !== false && file.metadata['tokenizer.ggml.model'] === 'llama') {
    tokenizer = SpmTokenizer.fromGgufVocab(file.metadata);
    if (tokenizer.vocabSize > config.vocabSize) {
      throw new ModelFormatError(
        `GGUF tokenizer has ${tokenizer.vocabSize} tokens but token_embd.weight only ${config.vocabSize} rows; the file is inconsistent.`,
      );
    }
  }
  return { format: 'gguf', config, tensors, tokenizer, metadata: file.metadata };
}

class Meta {
  private readonly file: GgufFile;
  private readonly arch: string;

  constructor(file: GgufFile, arch: string) {
    this.file = file;
    this.arch = arch;
  }

  raw(key: string): unknown {
    return Object.hasOwn(this.file.metadata, key) ? this.file.metadata[key] : undefined;
  }

  /** `{arch}.key` as a non-negative integer. */
  int(key: string, fallback?: number): number {
    const full = `${this.arch}.${key}`;
    const v = this.raw(full);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`GGUF metadata ${full} is missing; a ${this.arch} model needs it.`);
    }
    if (ArrayBuffer.isView(v) || Array.isArray(v)) {
      throw new UnsupportedModelError(`GGUF metadata ${full} is an array: per-layer values are not supported.`);
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
      throw new ModelFormatError(`GGUF metadata ${full} must be a non-negative integer, found ${String(v)}.`);
    }
    return v;
  }

  float(key: string, fallback?: number): number {
    const full = `${this.arch}.${key}`;
    const v = this.raw(full);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      throw new ModelFormatError(`GGUF metadata ${full} is missing; a ${this.arch} model needs it.`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new ModelFormatError(`GGUF metadata ${full} must be a number, found ${String(v)}.`);
    return v;
  }

  /** A token id, or null when absent or "none" (-1 / 0xFFFFFFFF). */
  tokenId(key: string): number | null {
    const v = this.raw(key);
    if (v === undefined || v === -1 || v === 0xffffffff) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
      throw new ModelFormatError(`GGUF metadata ${key} must be a token id, found ${String(v)}.`);
    return v;
  }
}

/** The float32 `x` written with the fewest digits that read back as the same float32 (1e-5, not 0.0000099999997). */
function shortF32(x: number): number {
  if (Math.fround(x) !== x) return x;
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

/** `ModelConfig` from a parsed GGUF file's metadata and tensor shapes. */
export function ggufModelConfig(file: GgufFile): ModelConfig {
  const archValue = file.metadata['general.architecture'];
  if (archValue === undefined) throw new ModelFormatError('GGUF metadata general.architecture is missing.');
  if (typeof archValue !== 'string') throw new ModelFormatError(`GGUF general.architecture must be a string, found ${String(archValue)}.`);
  const arch = archValue;
  const ropeLayout = Object.hasOwn(ARCHITECTURES, arch) ? ARCHITECTURES[arch] : undefined;
  if (ropeLayout === undefined) {
    throw new UnsupportedModelError(`GGUF architecture "${arch}" is not supported. Supported: ${Object.keys(ARCHITECTURES).join(', ')}.`);
  }
  const m = new Meta(file, arch);
  const hiddenSize = m.int('embedding_length');
  const numLayers = m.int('block_count');
  const numHeads = m.int('attention.head_count');
  const numKvHeads = m.int('attention.head_count_kv', numHeads);
  if (numHeads === 0) throw new ModelFormatError(`GGUF ${arch}.attention.head_count is 0.`);
  const headDim = m.int('attention.key_length', Math.floor(hiddenSize / numHeads));
  const valueDim = m.int('attention.value_length', headDim);
  if (valueDim !== headDim)
    throw new UnsupportedModelError(`GGUF ${arch} model has key length ${headDim} but value length ${valueDim}; they must match.`);
  if (!Object.hasOwn(file.metadata, `${arch}.attention.key_length`) && hiddenSize % numHeads !== 0) {
    throw new ModelFormatError(`GGUF ${arch}.embedding_length ${hiddenSize} is not a multiple of head_count ${numHeads}.`);
  }

  const embd = file.tensors.get('token_embd.weight');
  if (embd === undefined) throw new ModelFormatError('GGUF model has no tensor token_embd.weight.');
  if (embd.shape.length !== 2)
    throw new ModelFormatError(`GGUF token_embd.weight has shape [${embd.shape.join(', ')}]; expected [vocab, ${hiddenSize}].`);
  const vocabSize = embd.shape[0]!;

  const bosTokenId = m.tokenId('tokenizer.ggml.bos_token_id');
  const eosTokenIds = [
    ...new Set(
      ['tokenizer.ggml.eos_token_id', 'tokenizer.ggml.eot_token_id', 'tokenizer.ggml.eom_token_id']
        .map((k) => m.tokenId(k))
        .filter((x): x is number => x !== null),
    ),
  ];
  for (const id of [bosTokenId, ...eosTokenIds]) {
    if (id !== null && id >= vocabSize)
      throw new ModelFormatError(`GGUF special token id ${id} is outside the vocabulary of ${vocabSize}.`);
  }

  const config: ModelConfig = {
    architecture: arch,
    hiddenSize,
    intermediateSize: m.int('feed_forward_length'),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxContext: m.int('context_length'),
    rmsNormEps: shortF32(m.float('attention.layer_norm_rms_epsilon')),
    ropeTheta: shortF32(m.float('rope.freq_base', 10000)),
    ropeLayout,
    ropeScaling: ropeScaling(file, m, arch, headDim),
    ropeDim: m.int('rope.dimension_count', headDim),
    tiedEmbeddings: !file.tensors.has('output.weight'),
    attentionBias: file.tensors.has('blk.0.attn_q.bias'),
    bosTokenId,
    eosTokenIds,
  };
  try {
    validateModelConfig(config);
  } catch (e) {
    if (e instanceof KvCompressError) throw new ModelFormatError(`GGUF ${arch} hyper-parameters are invalid: ${e.message}`);
    throw e;
  }
  return config;
}

/**
 * RoPE scaling from `{arch}.rope.scaling.*` (linear), or a Llama 3 `rope_freqs.weight` tensor
 * (llama.cpp bakes Llama 3.1 scaling into per-frequency factors): we recognise the standard
 * Llama 3 parameters from those factors.
 */
function ropeScaling(file: GgufFile, m: Meta, arch: string, headDim: number): RopeScaling | null {
  const type = m.raw(`${arch}.rope.scaling.type`);
  const factor = m.raw(`${arch}.rope.scaling.factor`) ?? m.raw(`${arch}.rope.scale_linear`);
  const freqs = file.tensors.get('rope_freqs.weight');
  if (freqs !== undefined) {
    const theta = m.float('rope.freq_base', 10000);
    const ropeDim = m.int('rope.dimension_count', headDim);
    return llama3FromFactors(freqs, theta, ropeDim);
  }
  if (type === undefined && factor === undefined) return null;
  if (type === 'none') return null;
  if (type !== undefined && type !== 'linear') {
    throw new UnsupportedModelError(`GGUF ${arch}.rope.scaling.type "${String(type)}" is not supported (only linear and Llama 3).`);
  }
  if (typeof factor !== 'number' || !(factor > 0) || !Number.isFinite(factor)) {
    throw new ModelFormatError(`GGUF ${arch}.rope.scaling.factor must be a positive number, found ${String(factor)}.`);
  }
  return factor === 1 ? null : { type: 'linear', factor: shortF32(factor) };
}

/** Llama 3 frequency factors for the given parameters (transformers `_compute_llama3_parameters`, as factors). */
function llama3Factors(p: Extract<RopeScaling, { type: 'llama3' }>, theta: number, ropeDim: number): Float64Array {
  const out = new Float64Array(ropeDim / 2);
  const lowWavelen = p.originalMaxPositionEmbeddings / p.lowFreqFactor;
  const highWavelen = p.originalMaxPositionEmbeddings / p.highFreqFactor;
  for (let i = 0; i < out.length; i++) {
    const freq = 1 / theta ** ((2 * i) / ropeDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = p.factor;
    else {
      const smooth = (p.originalMaxPositionEmbeddings / wavelen - p.lowFreqFactor) / (p.highFreqFactor - p.lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / p.factor + smooth);
    }
  }
  return out;
}

function llama3FromFactors(tensor: Tensor, theta: number, ropeDim: number): RopeScaling | null {
  if (tensor.shape.length !== 1 || tensor.shape[0] !== ropeDim / 2) {
    throw new ModelFormatError(`GGUF rope_freqs.weight has shape [${tensor.shape.join(', ')}]; expected [${ropeDim / 2}].`);
  }
  const got = dequantize(tensor);
  let factor = 1;
  for (const f of got) if (Number.isFinite(f)) factor = Math.max(factor, f);
  if (factor === 1 && got.every((f) => f === 1)) return null;
  for (const original of [8192, 4096, 2048, 16384, 32768, 131072]) {
    for (const [low, high] of [
      [1, 4],
      [1, 2],
      [1, 8],
      [2, 4],
    ] as const) {
      const p = { type: 'llama3', factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: original } as const;
      const want = llama3Factors(p, theta, ropeDim);
      if (want.every((w, i) => Math.abs(w - got[i]!) <= 1e-3 * Math.max(1, w))) return p;
    }
  }
  throw new UnsupportedModelError(
    'GGUF rope_freqs.weight holds RoPE frequency factors that match no Llama 3 scaling we know (factor ' +
      `${factor}, low/high freq factor 1/4, 1/2, 1/8 or 2/4, original context 2048..131072).`,
  );
}

/** Checks that every canonical tensor exists with its expected shape. */
function validateTensors(c: ModelConfig, tensors: ReadonlyMap<string, Tensor>): void {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const h = c.hiddenSize;
  const f = c.intermediateSize;
  const expect = (name: string, shape: readonly number[]): void => {
    const t = tensors.get(name);
    if (t === undefined) throw new ModelFormatError(`GGUF model is missing tensor ${name} (expected shape [${shape.join(', ')}]).`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFormatError(`GGUF tensor ${name} has shape [${t.shape.join(', ')}]; expected [${shape.join(', ')}].`);
    }
  };
  expect('token_embd.weight', [c.vocabSize, h]);
  expect('output_norm.weight', [h]);
  if (!c.tiedEmbeddings) expect('output.weight', [c.vocabSize, h]);
  for (let l = 0; l < c.numLayers; l++) {
    const b = `blk.${l}.`;
    expect(`${b}attn_norm.weight`, [h]);
    expect(`${b}attn_q.weight`, [q, h]);
    expect(`${b}attn_k.weight`, [kv, h]);
    expect(`${b}attn_v.weight`, [kv, h]);
    expect(`${b}attn_output.weight`, [h, q]);
    expect(`${b}ffn_norm.weight`, [h]);
    expect(`${b}ffn_gate.weight`, [f, h]);
    expect(`${b}ffn_up.weight`, [f, h]);
    expect(`${b}ffn_down.weight`, [h, f]);
    if (c.attentionBias) {
      expect(`${b}attn_q.bias`, [q]);
      expect(`${b}attn_k.bias`, [kv]);
      expect(`${b}attn_v.bias`, [kv]);
    }
  }
}
