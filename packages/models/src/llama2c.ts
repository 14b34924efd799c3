import { type ModelConfig, ModelFormatError, type Tensor, UnsupportedModelError, validateModelConfig } from '@kvcompress/core';
import type { LoadedModel, Tokenizer } from './types.ts';

/** llama2.c v1+ files start with the magic "ak42" (read as a little-endian uint32). */
const MAGIC_AK42 = 0x616b3432;

interface Header {
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  sharedClassifier: boolean;
  /** Byte offset of the first weight. */
  offset: number;
  version: number;
}

function readHeader(bytes: Uint8Array): Header {
  if (bytes.byteLength < 28) throw new ModelFormatError(`A llama2.c model needs a 28-byte header; the file has ${bytes.byteLength} bytes.`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const first = view.getUint32(0, true);
  if (first === MAGIC_AK42) {
    if (bytes.byteLength < 256) throw new ModelFormatError('A llama2.c v1/v2 file needs a 256-byte header.');
    const version = view.getInt32(4, true);
    if (version === 2) {
      throw new UnsupportedModelError(
        'llama2.c version 2 files (int8 group-quantised) are not supported; export with version 1 (fp32) or use GGUF.',
      );
    }
    if (version !== 1) throw new ModelFormatError(`Unknown llama2.c file version ${version} after the "ak42" magic.`);
    const p = (i: number) => view.getInt32(8 + 4 * i, true);
    return {
      dim: p(0),
      hiddenDim: p(1),
      layers: p(2),
      heads: p(3),
      kvHeads: p(4),
      vocab: p(5),
      seqLen: p(6),
      sharedClassifier: view.getUint8(36) === 1,
      offset: 256,
      version,
    };
  }
  const p = (i: number) => view.getInt32(4 * i, true);
  const vocab = p(5);
  // Legacy (v0) header: a negative vocab size means the classifier is stored separately.
  return {
    dim: p(0),
    hiddenDim: p(1),
    layers: p(2),
    heads: p(3),
    kvHeads: p(4),
    vocab: Math.abs(vocab),
    seqLen: p(6),
    sharedClassifier: vocab > 0,
    offset: 28,
    version: 0,
  };
}

/**
 * Loads a llama2.c checkpoint (legacy v0 or v1 fp32 `.bin`): header, then all weights as f32
 * in the order tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
 * freq_cis_real, freq_cis_imag (skipped; v0 only), [wcls]. Tensors are views into `bytes`.
 * Its RoPE pairs dimensions (2i, 2i+1) and uses theta 10000.
 */
export function loadLlama2cModel(bytes: Uint8Array, options: { tokenizer?: Tokenizer | null } = {}): LoadedModel {
  const h = readHeader(bytes);
  const dims: Array<[string, number]> = [
    ['dim', h.dim],
    ['hidden_dim', h.hiddenDim],
    ['n_layers', h.layers],
    ['n_heads', h.heads],
    ['n_kv_heads', h.kvHeads],
    ['vocab_size', h.vocab],
    ['seq_len', h.seqLen],
  ];
  for (const [name, v] of dims) {
    if (!Number.isInteger(v) || v < 1 || v > 1 << 20)
      throw new ModelFormatError(`llama2.c header field ${name} = ${v} is not a plausible size.`);
  }
  if (h.dim % h.heads !== 0) throw new ModelFormatError(`dim ${h.dim} is not a multiple of n_heads ${h.heads}.`);
  if (h.heads % h.kvHeads !== 0) throw new ModelFormatError(`n_heads ${h.heads} is not a multiple of n_kv_heads ${h.kvHeads}.`);
  const headDim = h.dim / h.heads;
  const kvDim = headDim * h.kvHeads;
  const L = h.layers;
  const layout: Array<[name: string, perLayer: boolean, shape: number[]]> = [
    ['token_embd.weight', false, [h.vocab, h.dim]],
    ['attn_norm.weight', true, [h.dim]],
    ['attn_q.weight', true, [h.dim, h.dim]],
    ['attn_k.weight', true, [kvDim, h.dim]],
    ['attn_v.weight', true, [kvDim, h.dim]],
    ['attn_output.weight', true, [h.dim, h.dim]],
    ['ffn_norm.weight', true, [h.dim]],
    ['ffn_gate.weight', true, [h.hiddenDim, h.dim]],
    ['ffn_down.weight', true, [h.dim, h.hiddenDim]],
    ['ffn_up.weight', true, [h.hiddenDim, h.dim]],
    ['output_norm.weight', false, [h.dim]],
  ];
  const tensors = new Map<string, Tensor>();
  let offset = h.offset;
  const take = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const end = offset + 4 * n;
    if (end > bytes.byteLength) {
      throw new ModelFormatError(
        `The llama2.c file ends at byte ${bytes.byteLength}, inside tensor ${name} (bytes ${offset}..${end}); it is truncated or its header is wrong.`,
      );
    }
    tensors.set(name, { name, shape, dtype: 'f32', data: bytes.subarray(offset, end) });
    offset = end;
  };
  for (const [name, perLayer, shape] of layout) {
    if (!perLayer) {
      take(name, shape);
      continue;
    }
    for (let l = 0; l < L; l++) take(`blk.${l}.${name}`, shape);
  }
  if (h.version === 0) offset += 2 * 4 * h.seqLen * (headDim / 2); // freq_cis_real and _imag
  if (!h.sharedClassifier) take('output.weight', [h.vocab, h.dim]);
  if (offset > bytes.byteLength) throw new ModelFormatError('The llama2.c file is truncated inside its RoPE tables.');
  const config: ModelConfig = {
    architecture: 'llama',
    hiddenSize: h.dim,
    intermediateSize: h.hiddenDim,
    numLayers: L,
    numHeads: h.heads,
    numKvHeads: h.kvHeads,
    headDim,
    vocabSize: h.vocab,
    maxContext: h.seqLen,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: 'interleaved',
    ropeScaling: null,
    ropeDim: headDim,
    tiedEmbeddings: h.sharedClassifier,
    attentionBias: false,
    bosTokenId: 1,
    // run.c stops when the model emits BOS (these models start each story with it); 2 is EOS.
    eosTokenIds: [1, 2],
  };
  validateModelConfig(config);
  return {
    format: 'llama2c',
    config,
    tensors,
    tokenizer: options.tokenizer ?? null,
    metadata: { version: h.version, ...Object.fromEntries(dims), shared_classifier: h.sharedClassifier },
  };
}
