import type { ModelConfig, Tensor } from '@kvcompress/core';

/** Text <-> token ids. Every loader returns one of these when the file carries a vocabulary. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** Ids of `text`; `addBos` (default true when the tokenizer has a BOS) prepends it. */
  encode(text: string, options?: { readonly addBos?: boolean }): number[];
  /** Text of `ids`; special tokens (BOS, EOS, ...) are skipped unless `skipSpecial` is false. */
  decode(ids: readonly number[], options?: { readonly skipSpecial?: boolean }): string;
  /** A Jinja chat template from the model files, if any. */
  readonly chatTemplate: string | null;
}

/** Where a model came from. */
export type ModelFormat = 'gguf' | 'safetensors' | 'llama2c';

/**
 * A model as loaded, before any backend sees it. Tensors use canonical (GGUF-style) names
 * and row-major shapes `[out, in]`:
 *
 *   token_embd.weight          [vocab, hidden]
 *   blk.{l}.attn_norm.weight   [hidden]
 *   blk.{l}.attn_q.weight      [numHeads * headDim, hidden]      (+ .bias [numHeads * headDim])
 *   blk.{l}.attn_k.weight      [numKvHeads * headDim, hidden]    (+ .bias)
 *   blk.{l}.attn_v.weight      [numKvHeads * headDim, hidden]    (+ .bias)
 *   blk.{l}.attn_output.weight [hidden, numHeads * headDim]
 *   blk.{l}.ffn_norm.weight    [hidden]
 *   blk.{l}.ffn_gate.weight    [intermediate, hidden]   (w1)
 *   blk.{l}.ffn_up.weight      [intermediate, hidden]   (w3)
 *   blk.{l}.ffn_down.weight    [hidden, intermediate]   (w2)
 *   output_norm.weight         [hidden]
 *   output.weight              [vocab, hidden]           (absent when config.tiedEmbeddings)
 *
 * Q and K weights are stored for the RoPE layout named in `config.ropeLayout`: GGUF llama
 * and llama2.c files pair dimensions (2i, 2i+1) ("interleaved"); Hugging Face checkpoints
 * pair (i, i + d/2) ("rotate-half").
 */
export interface LoadedModel {
  readonly format: ModelFormat;
  readonly config: ModelConfig;
  readonly tensors: ReadonlyMap<string, Tensor>;
  readonly tokenizer: Tokenizer | null;
  /** Raw metadata from the file (GGUF key-values, config.json, llama2.c header), for `kvc inspect`. */
  readonly metadata: Readonly<Record<string, unknown>>;
}
