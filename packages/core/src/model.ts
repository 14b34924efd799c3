import { InvalidArgumentError } from './errors.ts';

/** How RoPE pairs the dimensions of a head: (x[2i], x[2i+1]) or (x[i], x[i + d/2]). */
export type RopeLayout = 'interleaved' | 'rotate-half';

/** RoPE frequency scaling (Llama 3.1+ and linear position interpolation). */
export type RopeScaling =
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    }
  | { readonly type: 'linear'; readonly factor: number };

/**
 * Everything the Llama-family adapter needs to know about a model, whatever file it came
 * from. Loaders fill it from GGUF metadata, config.json or a llama2.c header.
 */
export interface ModelConfig {
  /** Architecture as named in the file (`llama`, `mistral`, `qwen2`, ...). */
  readonly architecture: string;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /** Context length the model was trained for. */
  readonly maxContext: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly ropeLayout: RopeLayout;
  readonly ropeScaling: RopeScaling | null;
  /** Dimensions of each head that RoPE rotates (all of them for Llama). */
  readonly ropeDim: number;
  /** The classifier reuses the token embedding. */
  readonly tiedEmbeddings: boolean;
  /** Q, K and V projections have a bias (Qwen2). */
  readonly attentionBias: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
}

/** The KV shape of a model. */
export function kvShapeOf(config: ModelConfig): {
  layers: number;
  kvHeads: number;
  headDim: number;
  queryHeadsPerKvHead: number;
} {
  return {
    layers: config.numLayers,
    kvHeads: config.numKvHeads,
    headDim: config.headDim,
    queryHeadsPerKvHead: config.numHeads / config.numKvHeads,
  };
}

export function validateModelConfig(c: ModelConfig): void {
  const ints: Array<[string, number]> = [
    ['hiddenSize', c.hiddenSize],
    ['intermediateSize', c.intermediateSize],
    ['numLayers', c.numLayers],
    ['numHeads', c.numHeads],
    ['numKvHeads', c.numKvHeads],
    ['headDim', c.headDim],
    ['vocabSize', c.vocabSize],
    ['maxContext', c.maxContext],
    ['ropeDim', c.ropeDim],
  ];
  for (const [name, v] of ints) {
    if (!Number.isInteger(v) || v < 1 || v > 1 << 24) {
      throw new InvalidArgumentError(`Model config ${name} must be a positive integer, got ${String(v)}.`);
    }
  }
  if (c.numHeads % c.numKvHeads !== 0) {
    throw new InvalidArgumentError(`numHeads (${c.numHeads}) must be a multiple of numKvHeads (${c.numKvHeads}).`);
  }
  if (c.ropeDim > c.headDim || c.ropeDim % 2 !== 0)
    throw new InvalidArgumentError(`ropeDim ${c.ropeDim} must be even and <= headDim ${c.headDim}.`);
  if (!(c.rmsNormEps > 0 && c.rmsNormEps < 1)) throw new InvalidArgumentError(`rmsNormEps must be in (0, 1), got ${c.rmsNormEps}.`);
  if (!(c.ropeTheta > 0) || !Number.isFinite(c.ropeTheta))
    throw new InvalidArgumentError(`ropeTheta must be positive, got ${c.ropeTheta}.`);
}

/**
 * Element types of weight tensors as stored. `q8_0`, `q4_0`, `q4_k` and `q6_k` are ggml block
 * quantisations (32 or 256 values per block); `bf16` comes from safetensors.
 */
export type TensorDtype = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

/**
 * A weight tensor as loaded: shape in row-major order (`[out, in]` for a matrix, so row r is
 * output r), and its bytes as stored, a view into the file where possible.
 */
export interface Tensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: TensorDtype;
  readonly data: Uint8Array;
}

/** Number of elements of a shape. */
export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
