// A thin wrapper over node-llama-cpp (llama.cpp's CPU build) for peer checks: greedy ids and
// teacher-forced next-token distributions from a GGUF, to compare with our engine.
//
// It never builds or downloads anything: only the prebuilt CPU binary that is installed is used
// (`build: 'never'`, `skipDownload: true`, `gpu: false`); if it is missing, `create` throws.
//
// Threads. llama.cpp's CPU backend makes a fresh thread pool for every decode call (no pool is
// attached to the context) and, without OpenMP as in this prebuilt binary, its threads meet at a
// busy-waiting barrier after each graph node. When the machine has no spare core, a spinning
// thread waits out a whole scheduler slice for a preempted partner. node-llama-cpp's default is
// max(cpuMathCores, 4) threads: on a 2-core machine that is 4 threads and 1 to 2 tokens/s for
// stories260K; 2 threads are erratic, 40 to 130 tokens/s (Node's main thread and the libuv
// worker that samples each token want the same two cores), with per-token times of 0.6 ms when
// nothing interferes and 8 to 30 ms otherwise; 1 thread gives 1,300 to 2,100 tokens/s. Pass
// `threads` explicitly.
import type { ControlledEvaluateInputItem, Llama, LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';

export interface LlamaCppPeerOptions {
  /**
   * Compute threads of llama.cpp (also the Llama instance's maxThreads). Default 1. 'default'
   * leaves node-llama-cpp to choose: max(cpuMathCores, 4), that is 4 on a 2-core machine.
   */
  readonly threads?: number | 'default';
  /** Context size in tokens. Default 512 (what stories260K was trained at). */
  readonly contextSize?: number;
  /** Tokens per llama_decode call. Default 512. */
  readonly batchSize?: number;
  /**
   * KV cache element type. Default 'F16', llama.cpp's default; 'F32' stores K and V as we do, for
   * the tightest agreement of probabilities.
   */
  readonly kvCacheType?: 'F16' | 'F32';
  /** Flash attention (llama.cpp decides when 'auto'). Default 'auto'. */
  readonly flashAttention?: 'auto' | boolean;
}

/** The settings a peer runs with, for reports. */
export interface LlamaCppPeerSettings {
  readonly library: string;
  readonly llamaCppRelease: string;
  readonly buildType: string;
  readonly gpu: string;
  readonly threads: number;
  readonly contextSize: number;
  readonly batchSize: number;
  readonly kvCacheType: string;
  readonly flashAttention: string;
  readonly cpuFeatures: string;
}

/** Teacher-forced log-probabilities: row t is log p(· | ids[0..t]), the distribution of ids[t + 1]. */
export interface TeacherForcedLogProbs {
  readonly positions: number;
  readonly vocab: number;
  /** Float64 [positions][vocab], natural log; -Infinity where llama.cpp's float32 probability underflowed to 0. */
  readonly logProbs: Float64Array;
}

/** How the teacher-forced pass is run. */
export type TeacherForcingMode =
  /** One llama_decode per token through the generator of `evaluateWithMetadata`, fed the given next token. */
  | 'sequential'
  /** All tokens in batches of `batchSize` through `controlledEvaluate`, every row asking for its distribution. */
  | 'batch';

const NODE_LLAMA_CPP_VERSION = '3.21.1';

/**
 * Options that make every token's distribution the plain softmax of the logits: temperature 1,
 * no top-k (0 = the whole vocabulary), no top-p (1), no min-p (0), no repeat/DRY penalties,
 * no token bias, no grammar. The token it samples is ignored.
 */
const RAW_SOFTMAX = { temperature: 1, topK: 0, topP: 1, minP: 0, seed: 0 } as const;

export class LlamaCppPeer {
  readonly llama: Llama;
  readonly model: LlamaModel;
  readonly context: LlamaContext;
  readonly sequence: LlamaContextSequence;
  readonly vocab: number;
  readonly settings: LlamaCppPeerSettings;

  private constructor(llama: Llama, model: LlamaModel, context: LlamaContext, settings: LlamaCppPeerSettings) {
    this.llama = llama;
    this.model = model;
    this.context = context;
    this.sequence = context.getSequence();
    this.vocab = vocabSize(model);
    this.settings = settings;
  }

  /** Loads a GGUF on llama.cpp's prebuilt CPU backend. */
  static async create(ggufPath: string, options: LlamaCppPeerOptions = {}): Promise<LlamaCppPeer> {
    const threads = options.threads ?? 1;
    if (threads !== 'default' && (!Number.isInteger(threads) || threads < 1)) {
      throw new RangeError(`threads must be a positive integer or 'default', got ${threads}.`);
    }
    const contextSize = options.contextSize ?? 512;
    const batchSize = options.batchSize ?? 512;
    const kvCacheType = options.kvCacheType ?? 'F16';
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
    const llama = await getLlama({
      gpu: false,
      build: 'never',
      skipDownload: true,
      usePrebuiltBinaries: true,
      progressLogs: false,
      logLevel: LlamaLogLevel.error,
      ...(threads === 'default' ? {} : { maxThreads: threads }),
    });
    try {
      const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 });
      const context = await model.createContext({
        contextSize,
        batchSize,
        ...(threads === 'default' ? {} : { threads: { ideal: threads, min: threads } }),
        sequences: 1,
        flashAttention: options.flashAttention ?? 'auto',
        experimentalKvCacheKeyType: kvCacheType,
        experimentalKvCacheValueType: kvCacheType,
        failedCreationRemedy: false,
      });
      const release = llama.llamaCppRelease;
      const settings: LlamaCppPeerSettings = {
        library: `node-llama-cpp ${NODE_LLAMA_CPP_VERSION}`,
        llamaCppRelease: `${release.repo} ${release.release}`,
        buildType: llama.buildType,
        gpu: String(llama.gpu),
        threads: context.currentThreads,
        contextSize: context.contextSize,
        batchSize: context.batchSize,
        kvCacheType,
        flashAttention: String(context.flashAttention),
        cpuFeatures: llama.systemInfo.trim(),
      };
      return new LlamaCppPeer(llama, model, context, settings);
    } catch (error) {
      await llama.dispose();
      throw error;
    }
  }

  /**
   * Greedy (argmax) continuation of `promptIds`: exactly `n` ids (EOS does not stop it).
   * `onToken` is called as each id arrives (for timing).
   */
  async greedy(promptIds: readonly number[], n: number, onToken?: (token: number, index: number) => void): Promise<number[]> {
    this.#checkIds(promptIds);
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`n must be a positive integer, got ${n}.`);
    if (promptIds.length + n > this.context.contextSize) {
      throw new RangeError(`${promptIds.length} + ${n} tokens exceed the context (${this.context.contextSize}).`);
    }
    await this.sequence.clearHistory();
    const out: number[] = [];
    // temperature 0 puts llama.cpp's greedy sampler alone in the chain.
    for await (const token of this.sequence.evaluate(asTokens(promptIds), { temperature: 0, yieldEogToken: true })) {
      out.push(token as unknown as number);
      onToken?.(token as unknown as number, out.length - 1);
      if (out.length >= n) break;
    }
    return out;
  }

  /**
   * Teacher-forced next-token log-probabilities: for t in [0, ids.length - 1), the distribution
   * after ids[0..t], the given ids[t + 1] being fed next whatever the model would have picked.
   */
  async teacherForcedLogProbs(ids: readonly number[], mode: TeacherForcingMode = 'sequential'): Promise<TeacherForcedLogProbs> {
    this.#checkIds(ids);
    if (ids.length < 2) throw new RangeError('Teacher forcing needs at least two tokens.');
    if (ids.length > this.context.contextSize)
      throw new RangeError(`${ids.length} tokens exceed the context (${this.context.contextSize}).`);
    const vocab = this.vocab;
    const positions = ids.length - 1;
    const logProbs = new Float64Array(positions * vocab);
    await this.sequence.clearHistory();
    if (mode === 'sequential') {
      const it = this.sequence.evaluateWithMetadata(
        asTokens(ids.slice(0, 1)),
        { probabilities: true },
        { ...RAW_SOFTMAX, yieldEogToken: true },
      );
      try {
        let result = await it.next();
        for (let t = 0; t < positions; t++) {
          if (result.done === true) throw new Error(`node-llama-cpp stopped after ${t} of ${positions} positions.`);
          fillLogProbs(result.value.probabilities, logProbs, t * vocab, vocab);
          if (t + 1 < positions) result = await it.next(asToken(ids[t + 1] as number)); // teacher forcing
        }
      } finally {
        await it.return();
      }
    } else {
      const input: ControlledEvaluateInputItem[] = ids
        .slice(0, positions)
        .map((token) => [asToken(token), { generateNext: { probabilities: true, options: { ...RAW_SOFTMAX } } }]);
      const output = await this.sequence.controlledEvaluate(input);
      for (let t = 0; t < positions; t++) {
        const probabilities = output[t]?.next.probabilities;
        if (probabilities === undefined) throw new Error(`node-llama-cpp returned no probabilities at position ${t}.`);
        fillLogProbs(probabilities, logProbs, t * vocab, vocab);
      }
    }
    return { positions, vocab, logProbs };
  }

  /** node-llama-cpp's own tokenizer (no BOS added). */
  tokenize(text: string): number[] {
    return this.model.tokenize(text) as unknown as number[];
  }

  async dispose(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
    await this.llama.dispose();
  }

  #checkIds(ids: readonly number[]): void {
    if (ids.length === 0) throw new RangeError('No tokens given.');
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocab)
        throw new RangeError(`Token ${id} is outside the vocabulary (${this.vocab}).`);
    }
  }
}

/** node-llama-cpp brands token ids; ours are plain numbers. */
function asToken(id: number): Token {
  return id as unknown as Token;
}

function asTokens(ids: readonly number[]): Token[] {
  return ids.map(asToken);
}

function fillLogProbs(probabilities: ReadonlyMap<Token, number>, out: Float64Array, offset: number, vocab: number): void {
  out.fill(Number.NEGATIVE_INFINITY, offset, offset + vocab);
  for (const [token, p] of probabilities) out[offset + (token as unknown as number)] = Math.log(p);
}

function vocabSize(model: LlamaModel): number {
  const tokens = (model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: readonly unknown[] } } }).tokenizer?.ggml?.tokens;
  if (tokens === undefined) throw new Error('The GGUF has no tokenizer.ggml.tokens: cannot tell the vocabulary size.');
  return tokens.length;
}
