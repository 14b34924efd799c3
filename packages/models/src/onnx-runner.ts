import { InvalidArgumentError, type ModelConfig, ModelFormatError } from '@kvcompress/core';
import * as ort from 'onnxruntime-web';

/**
 * The web stack's baseline, as transformers.js runs decoder models: onnxruntime-web (WASM)
 * over an ONNX export with `past_key_values.{i}.key/value` inputs and `present.{i}.key/value`
 * outputs, a dense cache [batch, kvHeads, tokens, headDim] that is re-allocated every step.
 * A correctness peer for our engine, and the memory and speed later benchmarks compare with.
 * One sequence at a time.
 */
export class OnnxDenseRunner {
  readonly config: ModelConfig;
  readonly #session: ort.InferenceSession;
  readonly #pastNames: string[];
  #past: Record<string, ort.Tensor> = {};
  #length = 0;

  private constructor(session: ort.InferenceSession, config: ModelConfig) {
    this.#session = session;
    this.config = config;
    this.#pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values.'));
    if (this.#pastNames.length !== 2 * config.numLayers) {
      throw new ModelFormatError(
        `The ONNX model has ${this.#pastNames.length} past_key_values inputs; a ${config.numLayers}-layer model needs ${2 * config.numLayers}.`,
      );
    }
    this.reset();
  }

  /** Loads an ONNX decoder (bytes of model.onnx). `threads` WASM threads (default 1). */
  static async create(onnx: Uint8Array, config: ModelConfig, options: { threads?: number } = {}): Promise<OnnxDenseRunner> {
    ort.env.wasm.numThreads = options.threads ?? 1;
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(onnx, { executionProviders: ['wasm'] });
    } catch (error) {
      throw new ModelFormatError(`onnxruntime-web could not load the ONNX model: ${(error as Error).message}`);
    }
    return new OnnxDenseRunner(session, config);
  }

  /** Tokens in the dense cache. */
  get length(): number {
    return this.#length;
  }

  /** Bytes of the dense K/V cache now (f32): 2 x layers x kvHeads x tokens x headDim x 4. */
  kvBytes(): number {
    const c = this.config;
    return 2 * c.numLayers * c.numKvHeads * this.#length * c.headDim * 4;
  }

  /** Empties the cache. */
  reset(): void {
    const c = this.config;
    this.#past = {};
    for (const name of this.#pastNames) this.#past[name] = new ort.Tensor('float32', new Float32Array(0), [1, c.numKvHeads, 0, c.headDim]);
    this.#length = 0;
  }

  /**
   * Feeds `ids` after what the cache holds and returns their logits, Float32 [ids.length][vocab]
   * (a view of the output, valid until the next call).
   */
  async feed(ids: readonly number[]): Promise<Float32Array> {
    if (ids.length === 0) throw new InvalidArgumentError('feed() needs at least one token.');
    const n = ids.length;
    const total = this.#length + n;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(ids, (i) => BigInt(i)),
        [1, n],
      ),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, (_, i) => BigInt(this.#length + i)),
        [1, n],
      ),
      ...this.#past,
    };
    const out = await this.#session.run(feeds);
    for (let i = 0; i < this.#pastNames.length; i++) {
      const name = this.#pastNames[i] as string;
      const present = out[name.replace('past_key_values.', 'present.')];
      if (present === undefined) throw new ModelFormatError(`The ONNX model has no output for ${name}.`);
      this.#past[name] = present;
    }
    this.#length = total;
    const logits = out['logits'];
    if (logits === undefined) throw new ModelFormatError('The ONNX model has no "logits" output.');
    return logits.data as Float32Array;
  }

  /** Greedy tokens after `prompt` (the cache is reset first). */
  async greedy(prompt: readonly number[], maxTokens: number): Promise<number[]> {
    this.reset();
    const vocab = this.config.vocabSize;
    let logits = await this.feed(prompt);
    const out: number[] = [];
    for (let t = 0; t < maxTokens; t++) {
      const row = (logits.length / vocab - 1) * vocab;
      let best = 0;
      for (let i = 1; i < vocab; i++) if ((logits[row + i] as number) > (logits[row + best] as number)) best = i;
      out.push(best);
      logits = await this.feed([best]);
    }
    return out;
  }

  async dispose(): Promise<void> {
    await this.#session.release();
  }
}
