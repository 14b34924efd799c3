import {
  type AttentionRows,
  assertInteger,
  type Backend,
  type DeviceBuffer,
  type DeviceWeight,
  InvalidArgumentError,
  type MetricRecording,
  type ModelConfig,
  ModelFormatError,
  type PagedCacheView,
  type RopeSettings,
  UnsupportedModelError,
} from '@kvcompress/core';
import type { LoadedModel } from './types.ts';

/** Architectures the Llama-family adapter runs (as named in GGUF metadata or config.json). */
export const LLAMA_FAMILY: readonly string[] = ['llama', 'mistral', 'qwen2'];

interface LayerWeights {
  attnNorm: DeviceWeight;
  /** [wq, wk, wv] and (models with attention biases) [bq, bk, bv]: arrays kept so a step passes none new to matmulEach. */
  qkv: readonly DeviceWeight[];
  qkvBias?: readonly DeviceWeight[];
  wo: DeviceWeight;
  ffnNorm: DeviceWeight;
  gate: DeviceWeight;
  up: DeviceWeight;
  down: DeviceWeight;
}

/** One forward step: which tokens, where they sit, where their K/V go and which rows need logits. */
export interface ForwardStep {
  /** Tokens in the step. */
  readonly rows: number;
  /** Int32 [rows]: token ids. */
  readonly tokens: Int32Array;
  /** Int32 [rows]: allocator sequence id of each row. */
  readonly sequences: Int32Array;
  /** Int32 [rows]: position of each row's token. */
  readonly positions: Int32Array;
  /** Int32 [layers][kvHeads][rows]: cache slot of each row's K/V (from PageAllocator.appendTokens). */
  readonly slots: Int32Array;
  /** Int32 [logitCount]: the rows whose logits are wanted, in output order. */
  readonly logitRows: Int32Array;
  readonly logitCount: number;
  /**
   * Int32 [rows] on the device: the token ids, read there instead of `tokens` (a decode step
   * fed by the previous step's device argmax, recorded before its ids reach the host).
   */
  readonly deviceTokens?: DeviceBuffer | null;
}

/**
 * The Llama-family forward pass (Llama 2/3, Mistral, Qwen2, TinyLlama, SmolLM), written once
 * against the `Backend` interface, top to bottom like llama2.c's run.c:
 *
 *   x = embed(tokens)                                   [rows][hidden]
 *   for each layer:
 *     xb = rmsnorm(x) * attn_norm
 *     q = xb·Wqᵀ (+bq) [rows][heads*hd]; k, v = xb·Wk,vᵀ (+b) [rows][kvHeads*hd]
 *     rope(q), rope(k) at each row's position
 *     cache[slots] = k, v                               paged: one block table per (layer, kv-head)
 *     att = attention(q, cache)                         [rows][heads*hd], metrics recorded
 *     x += att·Woᵀ
 *     xb = rmsnorm(x) * ffn_norm
 *     x += (silu(xb·Wgateᵀ) * xb·Wupᵀ)·Wdownᵀ
 *   logits = rmsnorm(x[logitRows]) * output_norm · Woutᵀ  [logitCount][vocab]
 *
 * Buffers are allocated once for `maxRows` tokens per step; a step allocates nothing.
 */
export class LlamaModel {
  readonly config: ModelConfig;
  readonly backend: Backend;
  readonly maxRows: number;
  readonly rope: RopeSettings;
  readonly #embedding: DeviceWeight;
  readonly #layers: LayerWeights[];
  readonly #outputNorm: DeviceWeight;
  readonly #output: DeviceWeight;
  // Activations, each sized for maxRows.
  readonly #x: DeviceBuffer; // [rows][hidden]
  readonly #xb: DeviceBuffer; // [rows][hidden]: the normed residual, input of the projections
  readonly #delta: DeviceBuffer; // [rows][hidden]: the attention's or the MLP's output, added to x
  readonly #q: DeviceBuffer; // [rows][heads * headDim]
  readonly #k: DeviceBuffer; // [rows][kvHeads * headDim]
  readonly #v: DeviceBuffer; // [rows][kvHeads * headDim]
  readonly #qkv: readonly DeviceBuffer[]; // [#q, #k, #v], for matmulEach
  readonly #att: DeviceBuffer; // [rows][heads * headDim]
  readonly #gate: DeviceBuffer; // [rows][intermediate]: silu(gate) * up
  readonly #tokens: DeviceBuffer; // i32 [rows]
  readonly #sequences: DeviceBuffer; // i32 [rows]
  readonly #positions: DeviceBuffer; // i32 [rows]
  readonly #slots: DeviceBuffer; // i32 [layers][kvHeads][rows]
  readonly #logitRows: DeviceBuffer; // i32 [rows]
  readonly #gathered: DeviceBuffer; // [rows][hidden]
  /** Logits of the last step: [logitCount][vocab]. */
  readonly logits: DeviceBuffer;
  readonly #batch: { rows: number; sequences: DeviceBuffer; positions: DeviceBuffer };

  constructor(model: LoadedModel, backend: Backend, options: { maxRows?: number } = {}) {
    const c = model.config;
    if (!LLAMA_FAMILY.includes(c.architecture)) {
      throw new UnsupportedModelError(
        `Architecture "${c.architecture}" is not supported; the Llama-family adapter runs ${LLAMA_FAMILY.join(', ')}.`,
      );
    }
    this.config = c;
    this.backend = backend;
    this.maxRows = options.maxRows ?? 256;
    assertInteger('maxRows', this.maxRows, 1, 1 << 16);
    this.rope = { headDim: c.headDim, ropeDim: c.ropeDim, theta: c.ropeTheta, layout: c.ropeLayout, scaling: c.ropeScaling };
    const weight = (name: string, shape: readonly number[]): DeviceWeight => {
      const t = model.tensors.get(name);
      if (t === undefined) throw new ModelFormatError(`The model has no tensor ${name}.`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new ModelFormatError(`Tensor ${name} has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}].`);
      }
      return backend.uploadWeight(t);
    };
    const { hiddenSize: H, intermediateSize: F, numHeads, numKvHeads, headDim, vocabSize } = c;
    const qDim = numHeads * headDim;
    const kvDim = numKvHeads * headDim;
    this.#embedding = weight('token_embd.weight', [vocabSize, H]);
    this.#layers = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `blk.${l}.`;
      const layer: LayerWeights = {
        attnNorm: weight(`${p}attn_norm.weight`, [H]),
        qkv: [weight(`${p}attn_q.weight`, [qDim, H]), weight(`${p}attn_k.weight`, [kvDim, H]), weight(`${p}attn_v.weight`, [kvDim, H])],
        wo: weight(`${p}attn_output.weight`, [H, qDim]),
        ffnNorm: weight(`${p}ffn_norm.weight`, [H]),
        gate: weight(`${p}ffn_gate.weight`, [F, H]),
        up: weight(`${p}ffn_up.weight`, [F, H]),
        down: weight(`${p}ffn_down.weight`, [H, F]),
      };
      if (c.attentionBias) {
        layer.qkvBias = [weight(`${p}attn_q.bias`, [qDim]), weight(`${p}attn_k.bias`, [kvDim]), weight(`${p}attn_v.bias`, [kvDim])];
      }
      this.#layers.push(layer);
    }
    this.#outputNorm = weight('output_norm.weight', [H]);
    this.#output = c.tiedEmbeddings ? this.#embedding : weight('output.weight', [vocabSize, H]);

    const R = this.maxRows;
    this.#x = backend.createBuffer(R * H);
    this.#xb = backend.createBuffer(R * H);
    this.#delta = backend.createBuffer(R * H);
    this.#q = backend.createBuffer(R * qDim);
    this.#k = backend.createBuffer(R * kvDim);
    this.#v = backend.createBuffer(R * kvDim);
    this.#qkv = [this.#q, this.#k, this.#v];
    this.#att = backend.createBuffer(R * qDim);
    this.#gate = backend.createBuffer(R * F);
    this.#tokens = backend.createBuffer(R, 'i32');
    this.#sequences = backend.createBuffer(R, 'i32');
    this.#positions = backend.createBuffer(R, 'i32');
    this.#slots = backend.createBuffer(c.numLayers * numKvHeads * R, 'i32');
    this.#logitRows = backend.createBuffer(R, 'i32');
    this.#gathered = backend.createBuffer(R * H);
    this.logits = backend.createBuffer(R * vocabSize);
    this.#batch = { rows: 0, sequences: this.#sequences, positions: this.#positions };
  }

  /**
   * Runs one step and leaves the logits of `step.logitRows` in `this.logits`. The rows' K/V
   * are written to the cache at `step.slots` before attention, so a row sees the earlier
   * rows of its own sequence in the same step. `metrics`, if given, records attention.
   */
  forward(step: ForwardStep, cache: PagedCacheView, metrics?: MetricRecording): void {
    const { rows } = step;
    if (!Number.isInteger(rows) || rows < 1 || rows > this.maxRows) {
      throw new InvalidArgumentError(`A step holds 1..${this.maxRows} rows, got ${rows}.`);
    }
    const b = this.backend;
    const c = this.config;
    const H = c.hiddenSize;
    const { numHeads, numKvHeads } = c;
    const kvSlots = c.numLayers * numKvHeads * rows;
    const tokens = step.deviceTokens ?? this.#tokens;
    if (step.deviceTokens == null) b.write(this.#tokens, step.tokens, 0, rows);
    b.write(this.#sequences, step.sequences, 0, rows);
    b.write(this.#positions, step.positions, 0, rows);
    b.write(this.#slots, step.slots, 0, kvSlots);
    b.write(this.#logitRows, step.logitRows, 0, step.logitCount);
    this.#batch.rows = rows;
    const batch: AttentionRows = this.#batch;

    b.embed(this.#x, this.#embedding, tokens, rows);
    b.rmsNorm(this.#xb, this.#x, (this.#layers[0] as LayerWeights).attnNorm, rows, H, c.rmsNormEps);
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.#layers[l] as LayerWeights;
      // xb = attnNorm(x) here (before the loop, or the previous layer's last addRmsNorm).
      b.matmulEach(this.#qkv, this.#xb, w.qkv, rows, w.qkvBias);
      b.rope(this.#q, this.#positions, rows, numHeads, this.rope);
      b.rope(this.#k, this.#positions, rows, numKvHeads, this.rope);
      b.appendKv(l, this.#k, this.#v, this.#slots, rows, numKvHeads);
      b.attention(this.#att, this.#q, l, batch, cache, numHeads, numKvHeads, metrics);
      b.matmul(this.#delta, this.#att, w.wo, rows);
      b.addRmsNorm(this.#xb, this.#x, this.#delta, w.ffnNorm, rows, H, c.rmsNormEps);
      b.matmulSiluMul(this.#gate, this.#xb, w.gate, w.up, rows);
      b.matmul(this.#delta, this.#gate, w.down, rows);
      const next = this.#layers[l + 1];
      if (next !== undefined) b.addRmsNorm(this.#xb, this.#x, this.#delta, next.attnNorm, rows, H, c.rmsNormEps);
      else b.add(this.#x, this.#x, this.#delta, rows * H);
    }
    b.gatherRows(this.#gathered, this.#x, this.#logitRows, step.logitCount, H);
    b.rmsNorm(this.#xb, this.#gathered, this.#outputNorm, step.logitCount, H, c.rmsNormEps);
    b.matmul(this.logits, this.#xb, this.#output, step.logitCount);
  }
}
