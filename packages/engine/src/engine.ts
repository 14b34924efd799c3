import {
  assertInteger,
  type Backend,
  type DeviceBuffer,
  EvictionSelection,
  InvalidArgumentError,
  type KvDtype,
  kvShapeOf,
  type MetricRecording,
  OutOfBlocksError,
  SELECTION_GROUP_FIELDS,
  type SlotMoveList,
} from '@kvcompress/core';
import { CpuBackend } from '@kvcompress/cpu';
import {
  type Budget,
  blocksForNextStep,
  CompressionContext,
  type CompressionOutcome,
  type CompressionReason,
  CompressionScheduler,
  Compressor,
  type EvictionPolicy,
  getPolicy,
  nonePolicy,
  type ResolvedCompressionConfig,
  resolveCompressionConfig,
} from '@kvcompress/eviction';
import { AttentionScorer, kvCompressScorer, MetricStore, type Scorer } from '@kvcompress/metrics';
import { LlamaModel, type LoadedModel, type Tokenizer } from '@kvcompress/models';
import { PageAllocator } from '@kvcompress/page-allocator';
import { type ResolvedSampling, Rng, resolveSampling, Sampler, type SamplingOptions } from './sampling.ts';

export interface EngineOptions {
  readonly model: LoadedModel;
  /** Default: a new CpuBackend. */
  readonly backend?: Backend;
  /**
   * Eviction policy or its registered name: the default of requests that name none
   * (`GenerateOptions.compression.policy`). Default 'kv-compress' with a budget, 'none' without.
   */
  readonly policy?: string | EvictionPolicy;
  /**
   * KV budget per sequence; null or absent = full cache (no compression) for requests that set
   * none. A request may still set its own budget under a policy (the engine's, or one it names).
   */
  readonly budget?: Budget | null;
  readonly protectedWindow?: number;
  readonly sinks?: number;
  readonly compressionInterval?: number;
  readonly compressOnce?: boolean;
  /**
   * Blocks per (layer, kv-head) freed beyond the budget when a sequence is compressed under
   * memory pressure (policies that plan by block count). Without it, a saturated pool
   * compresses some sequence by a block or two on nearly every step: at 4x on an H100 the
   * server ran 39,513 rounds for 57 K generated tokens and was slower than the full cache
   * (BENCHMARKS.md). Default 1; 0 compresses exactly to the budget.
   */
  readonly pressureHeadroom?: number;
  /** Sequences decoded together. Default 8. */
  readonly maxSequences?: number;
  /** Most tokens a sequence may reach. Default: the model's context length. */
  readonly maxContext?: number;
  /** KV blocks in the pool (the memory budget). Default: every sequence at maxContext, uncompressed. */
  readonly kvBlocks?: number;
  readonly blockSize?: number;
  readonly kvDtype?: KvDtype;
  /** Most prompt tokens per forward step. Default 256. */
  readonly prefillChunk?: number;
  /**
   * Where a backend that keeps metrics on the device (WebGPU) decides evictions, for
   * policies that declare KV-Compress's block rule (`cheapestBlocks`: kv-compress, ada-kv):
   * true (default) runs the selection on the device and downloads only its decision; false
   * downloads the metrics and plans on the host. Both make the same decision.
   */
  readonly deviceSelection?: boolean;
  /**
   * With device selection, where the compaction that follows runs when the backend can
   * (`Backend.compactEvictions`): true (default) pairs evicted slots with survivors and moves
   * K, V, metrics and positions on the device, the host updating only its head lengths and
   * free-block counts (O(heads), not O(slots)); false downloads the eviction masks and compacts on
   * the host. Both leave the same cache.
   */
  readonly deviceCompaction?: boolean;
  /**
   * With device compaction, an interval round (not memory pressure) of several sequences runs
   * in this many parts (default 2, at most 4), each with its own selection, all sent to the
   * device before the first is awaited: the host describes and records part i + 1 while part
   * i's selection runs on the device, and applies part i while part i + 1's runs. The same
   * cache results; the round takes less time. 1: one selection.
   */
  readonly roundParts?: number;
  /**
   * Whether sampled (temperature > 0) rows pick their token on the device when the backend
   * can (`Backend.sample`), reading back one integer per row instead of the logits (default
   * true). The request's generator still draws each row's uniform number on the host.
   */
  readonly deviceSampling?: boolean;
  /**
   * Record a decode step before the previous one's tokens reach the host (default true),
   * feeding it the previous step's device-picked ids: the host's recording overlaps the
   * device's work. Applies where tokens are picked on the device (greedy or `deviceSampling`)
   * by a backend that is read asynchronously (not the CPU backend), while the batch stays the
   * same: no request waiting, no compression due, no request at its token or context limit.
   * A request that stops on a stop token has one step computed past it, and discarded.
   */
  readonly pipelineDecode?: boolean;
}

export interface GenerateOptions {
  /** Tokens to generate at most. Default 256. */
  readonly maxTokens?: number;
  readonly sampling?: SamplingOptions;
  /** Stop on these token ids (default: the model's EOS ids). */
  readonly stopTokens?: readonly number[];
  /** Stop when the text ends with one of these. */
  readonly stopStrings?: readonly string[];
  /** Prepend BOS when encoding a string prompt (default true). */
  readonly addBos?: boolean;
  readonly signal?: AbortSignal;
  /**
   * Teacher forcing (evaluation): the request's tokens are these instead of sampled ones,
   * with the cache compressed as usual, and `onLogits` sees the logits each was chosen
   * from: onLogits(i, logits) for the distribution that predicted tokens[i]. Generation
   * ends after the last one; stop tokens default to none.
   */
  /**
   * This request's own eviction policy, KV budget and protected window; what it leaves out is
   * the engine's. `policy` names a registered policy (`@kvcompress/eviction`'s registry) or the
   * engine's own; `budget: null` keeps the request's full cache. A budget needs a policy other
   * than 'none', and a named policy needs a budget (the request's or the engine's).
   */
  readonly compression?: RequestCompression;
  readonly teacherForcing?: {
    readonly tokens: readonly number[];
    readonly onLogits?: (index: number, logits: Float32Array) => void;
  };
}

/** A request's compression settings (see `GenerateOptions.compression`). */
export interface RequestCompression {
  readonly policy?: string;
  readonly budget?: Budget | null;
  readonly protectedWindow?: number;
  readonly sinks?: number;
}

/** What a request's compression settings resolve to in an engine. */
export interface ResolvedRequestCompression {
  /** The policy that runs the request: 'none' when it keeps its full cache. */
  readonly policy: string;
  /** Its budget and protected positions; null = full cache. */
  readonly config: ResolvedCompressionConfig | null;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export interface TokenEvent {
  readonly type: 'token';
  readonly token: number;
  /** New text this token adds (may be empty while a multi-byte character is incomplete). */
  readonly text: string;
  readonly index: number;
}

export interface DoneEvent {
  readonly type: 'done';
  readonly reason: FinishReason;
  readonly error?: Error;
  readonly promptTokens: number;
  readonly tokens: readonly number[];
  readonly text: string;
  /** The eviction policy that ran the request: 'none' when it kept its full cache. */
  readonly policy: string;
  /** Blocks per (layer, kv-head) of the sequence just before it ended: [layers][kvHeads]. */
  readonly blocksPerHead: Int32Array;
  readonly compressions: number;
  /** Decode tokens per second of this request (prefill excluded). */
  readonly tokensPerSecond: number;
  readonly prefillMs: number;
}

export type GenerationEvent = TokenEvent | DoneEvent;

export interface StepStats {
  readonly step: number;
  readonly kind: 'prefill' | 'decode';
  readonly rows: number;
  readonly running: number;
  readonly waiting: number;
  readonly usedBlocks: number;
  readonly freeBlocks: number;
  readonly ms: number;
}

export interface CompressionEvent {
  readonly reason: CompressionReason;
  readonly outcome: CompressionOutcome;
}

export interface EngineStats {
  readonly steps: number;
  readonly decodeTokens: number;
  readonly decodeMs: number;
  readonly prefillTokens: number;
  readonly prefillMs: number;
  readonly compressions: number;
  readonly compressionMs: number;
  /** Compression rounds whose eviction was selected on the device (no metric download). */
  readonly deviceSelectionRounds: number;
  /** Of those, rounds compacted on the device too (no mask download, no host compaction). */
  readonly deviceCompactionRounds: number;
  /** Of those, rounds run in parts (`roundParts`), and the parts they ran in. */
  readonly deviceRoundsInParts: number;
  readonly deviceRoundParts: number;
  readonly preemptions: number;
  /** Decode steps recorded before the previous step's tokens reached the host (`pipelineDecode`). */
  readonly pipelinedSteps: number;
  readonly usedBlocks: number;
  readonly peakUsedBlocks: number;
  readonly freeBlocks: number;
  readonly totalBlocks: number;
  /** K+V bytes of one block. */
  readonly bytesPerBlock: number;
}

interface Request {
  readonly id: number;
  promptIds: number[];
  readonly originalPromptLength: number;
  readonly generated: number[];
  readonly maxTokens: number;
  readonly sampling: ResolvedSampling;
  readonly rng: Rng;
  readonly stopTokens: ReadonlySet<number>;
  readonly stopStrings: readonly string[];
  readonly signal: AbortSignal | undefined;
  sequence: number;
  /** Set by the scheduler check at the start of a decode step. */
  compressionDue: boolean;
  text: string;
  /** Incremental detokenisation window over `generated`: see #textDelta. */
  prefixOffset: number;
  readOffset: number;
  compressions: number;
  prefillMs: number;
  decodeMs: number;
  events: GenerationEvent[];
  wake: (() => void) | null;
  finished: boolean;
  /** The policy that runs this request (its scorer records the metrics of its rows). */
  readonly runtime: PolicyRuntime;
  /** This request's budget and protected positions; null = never compress. */
  readonly compression: ResolvedCompressionConfig | null;
  /** `compression` with the engine's pressure headroom: the config of memory-pressure rounds. */
  readonly pressureCompression: ResolvedCompressionConfig | null;
  /** The policy's compressor; null exactly when `compression` is. */
  readonly compressor: Compressor | null;
  /** Whether attention records this request's metric: in its prefill window, and (1) in decode. */
  readonly recordsPrefill: boolean;
  readonly decodeFlag: 0 | 1;
  /** Teacher-forced tokens and their logits callback, or null. */
  readonly forced: readonly number[] | null;
  readonly onLogits: ((index: number, logits: Float32Array) => void) | null;
}

/** A full cache evicts nothing and needs no metric: a scorer that asks attention for nothing. */
function fullCacheScorer(): AttentionScorer {
  return new AttentionScorer({
    name: 'none',
    observationWindow: 1,
    aggregation: 'L2',
    reduction: 'sum',
    groupReduction: 'sum',
    metricBuffer: 0,
    pooling: null,
    accumulatesDuringDecode: false,
  });
}

/** The budget of a compressor that is only ever called with each request's own budget. */
const KEEP_EVERYTHING = { budget: { targetCompressionRate: 1 } } as const;

/**
 * What an engine runs for one eviction policy: its scorer (which the prefill window, the
 * pooling and the decode accumulation of every request of the policy follow), that scorer's
 * attention-recording settings in the per-row form the backends take, and its compressor,
 * made on the first request that compresses with it. One per policy name per engine: the
 * requests of a policy share its scorer (a stateful one, like random's generator, advances
 * for all of them).
 */
class PolicyRuntime {
  readonly policy: EvictionPolicy;
  readonly scorer: Scorer;
  /** The scorer when attention records its metric, else null (scorers that need no attention). */
  readonly attention: AttentionScorer | null;
  /** MetricRecording row values: 1 = p^2 (L2); the factor on the group sum; the metric buffer. */
  readonly square: 0 | 1;
  readonly groupScale: number;
  readonly metricBuffer: number;
  compressor: Compressor | null = null;

  constructor(policy: EvictionPolicy, queryHeadsPerKvHead: number) {
    this.policy = policy;
    this.scorer = policy.name === 'none' ? fullCacheScorer() : (policy.createScorer?.() ?? kvCompressScorer());
    if (this.scorer.needsKeys) {
      throw new InvalidArgumentError(
        `Scorer "${this.scorer.name}" of policy "${policy.name}" needs key vectors at append time, which the engine does not provide yet.`,
      );
    }
    this.attention = this.scorer instanceof AttentionScorer ? this.scorer : null;
    const decode = this.attention?.decode;
    this.square = decode?.aggregation === 'L2' ? 1 : 0;
    this.groupScale = decode?.groupReduction === 'mean' ? 1 / queryHeadsPerKvHead : 1;
    this.metricBuffer = decode?.metricBuffer ?? 0;
  }
}

/**
 * Generates text from a model through the paged, per-head compressed KV cache. Several
 * requests are decoded together (continuous batching) within a fixed block pool; when
 * blocks run short, sequences are compressed before any is preempted.
 */
export class Engine {
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer | null;
  readonly allocator: PageAllocator;
  readonly metrics: MetricStore;
  /** The default policy: of every request that names none. */
  readonly policy: EvictionPolicy;
  /**
   * The default policy's compressor when the engine has a budget, else null (a request that
   * sets its own budget still gets a compressor of its policy).
   */
  readonly compressor: Compressor | null;
  readonly scheduler: CompressionScheduler;
  /** The default policy's scorer. */
  readonly scorer: Scorer;
  readonly backend: Backend;
  readonly kvDtype: KvDtype;
  readonly prefillChunk: number;
  readonly maxContext: number;

  readonly #sampler: Sampler;
  readonly #moves: SlotMoveList;
  readonly #units: number;
  // Step scratch, sized for the largest step (prefillChunk rows or maxSequences).
  readonly #tokens: Int32Array;
  readonly #sequences: Int32Array;
  readonly #positions: Int32Array;
  readonly #slots: Int32Array; // [layers][kvHeads][rows]
  readonly #seqSlots: Int32Array; // one sequence's appendTokens output [layers][kvHeads][n]
  readonly #logitRows: Int32Array;
  readonly #logits: Float32Array; // [rows][vocab] host copy
  // Two of each: a pipelined step picks into one while the step before it is read from the other.
  readonly #greedyOut: readonly [DeviceBuffer, DeviceBuffer]; // i32 [rows]: each row's device-picked id
  readonly #greedyIds: readonly [Int32Array, Int32Array]; // [rows] host copies of #greedyOut
  readonly #stepBatches: readonly [Request[], Request[]]; // the requests of each one's step, by row
  #greedyNext: 0 | 1 = 0;
  readonly #pipelineDecode: boolean;
  /** The decode step whose ids are being read (pipelined), or rows = 0. */
  readonly #inflight = { rows: 0, buffer: 0 as 0 | 1, read: null as Promise<void> | null, t0: 0 };
  /** When the last decode step's tokens were accepted: a pipelined step's time starts there. */
  #lastAcceptAt = 0;
  /** Per-row metric recording of a step: each row records as its request's policy says. */
  readonly #recording: MetricRecording;
  /** f32 [rows][4] (temperature, topK, topP, u) for Backend.sample, or null to sample on the host. */
  readonly #sampleParams: DeviceBuffer | null;
  readonly #sampleParamsHost: Float32Array;
  readonly #rowFlags: Uint8Array;
  readonly #rowSquare: Uint8Array;
  readonly #rowGroupScale: Float32Array;
  readonly #rowMetricBuffer: Int32Array;
  /** One runtime per policy name, made on first use; the engine's default policy's among them. */
  readonly #runtimes = new Map<string, PolicyRuntime>();
  readonly #defaultRuntime: PolicyRuntime;
  /** The engine's budget and protected positions (null: requests keep their full cache by default). */
  readonly #defaultConfig: ResolvedCompressionConfig | null;
  readonly #protectedWindow: number | undefined;
  /** Blocks a memory-pressure round frees beyond a sequence's budget (pressureHeadroom x heads). */
  readonly #pressureHeadroomBlocks: number;
  readonly #sinks: number | undefined;
  /** Planner scratch shared by the compressors of every policy (made with the first one). */
  #planner: CompressionContext | null = null;
  readonly #step: {
    rows: number;
    tokens: Int32Array;
    sequences: Int32Array;
    positions: Int32Array;
    slots: Int32Array;
    logitRows: Int32Array;
    logitCount: number;
    deviceTokens: DeviceBuffer | null;
  };
  readonly #finishScratch: Float32Array;
  /** Slots and initial metrics to send to a backend that keeps metrics on the device. */
  readonly #uploadSlots: Int32Array;
  readonly #uploadValues: Float32Array;
  /** Device selection rounds (see EngineOptions.deviceSelection), or null when planning on the host. */
  readonly #selection: EvictionSelection | null;
  /** Parts of a device compaction round (roundParts), and their selections after the first (made on first use). */
  readonly #roundParts: number;
  readonly #partSelections: EvictionSelection[] = [];
  /** Requests of one device selection round. */
  readonly #roundScratch: Request[] = [];
  /** EngineOptions.deviceCompaction. */
  readonly #deviceCompaction: boolean;

  /**
   * Serialises forward passes (the step scratch is shared by generation and forwardLogits).
   * A flag, with promises only when contended, so the decode loop does not allocate for it.
   */
  #locked = false;
  readonly #lockWaiters: Array<() => void> = [];
  #waiting: Request[] = [];
  readonly #batchScratch: Request[] = [];
  #running: Request[] = [];
  #nextId = 1;
  #pumping = false;
  #stats = {
    steps: 0,
    decodeTokens: 0,
    decodeMs: 0,
    prefillTokens: 0,
    prefillMs: 0,
    compressions: 0,
    compressionMs: 0,
    deviceSelectionRounds: 0,
    deviceCompactionRounds: 0,
    deviceRoundsInParts: 0,
    deviceRoundParts: 0,
    preemptions: 0,
    pipelinedSteps: 0,
    peakUsedBlocks: 0,
  };
  readonly #stepListeners = new Set<(s: StepStats) => void>();
  readonly #compressionListeners = new Set<(e: CompressionEvent) => void>();

  constructor(options: EngineOptions) {
    const { model } = options;
    const config = model.config;
    this.backend = options.backend ?? new CpuBackend();
    this.tokenizer = model.tokenizer;
    const maxSequences = options.maxSequences ?? 8;
    assertInteger('maxSequences', maxSequences, 1, 4096);
    this.maxContext = options.maxContext ?? config.maxContext;
    assertInteger('maxContext', this.maxContext, 1, 1 << 24);
    const blockSize = options.blockSize ?? 16;
    this.prefillChunk = options.prefillChunk ?? 256;
    assertInteger('prefillChunk', this.prefillChunk, 1, 1 << 16);
    const shape = kvShapeOf(config);
    this.#units = shape.layers * shape.kvHeads;
    const kvBlocks = options.kvBlocks ?? maxSequences * this.#units * Math.ceil(this.maxContext / blockSize);
    this.allocator = new PageAllocator({ shape, numBlocks: kvBlocks, blockSize, maxSequences, maxContext: this.maxContext });
    this.metrics = new MetricStore(this.allocator.numSlots);
    this.kvDtype = options.kvDtype ?? 'f32';
    this.backend.createKvCache(this.allocator.numSlots, config.headDim, this.kvDtype);

    const budget = options.budget ?? null;
    const policy = options.policy ?? (budget === null ? nonePolicy : 'kv-compress');
    this.policy = typeof policy === 'string' ? getPolicy(policy) : policy;
    this.#protectedWindow = options.protectedWindow;
    const pressureHeadroom = options.pressureHeadroom ?? 1;
    assertInteger('pressureHeadroom', pressureHeadroom, 0, 1 << 16);
    this.#pressureHeadroomBlocks = pressureHeadroom * this.#units;
    this.#sinks = options.sinks;
    this.#defaultConfig =
      budget === null || this.policy.name === 'none'
        ? null
        : resolveCompressionConfig({ budget, protectedWindow: options.protectedWindow, sinks: options.sinks });
    this.#defaultRuntime = new PolicyRuntime(this.policy, shape.queryHeadsPerKvHead);
    this.#runtimes.set(this.policy.name, this.#defaultRuntime);
    this.compressor = this.#defaultConfig === null ? null : this.#compressorOf(this.#defaultRuntime);
    this.scorer = this.#defaultRuntime.scorer;
    this.scheduler = new CompressionScheduler(maxSequences, {
      compressionInterval: options.compressionInterval,
      compressOnce: options.compressOnce,
    });

    const maxRows = Math.max(this.prefillChunk, maxSequences);
    this.model = new LlamaModel(model, this.backend, { maxRows });
    this.#sampler = new Sampler(config.vocabSize);
    this.#moves = this.allocator.createMoveList();
    this.#tokens = new Int32Array(maxRows);
    this.#sequences = new Int32Array(maxRows);
    this.#positions = new Int32Array(maxRows);
    this.#slots = new Int32Array(this.#units * maxRows);
    this.#seqSlots = new Int32Array(this.#units * maxRows);
    this.#logitRows = new Int32Array(maxRows);
    this.#logits = new Float32Array(maxRows * config.vocabSize);
    this.#greedyOut = [this.backend.createBuffer(maxRows, 'i32'), this.backend.createBuffer(maxRows, 'i32')];
    this.#greedyIds = [new Int32Array(maxRows), new Int32Array(maxRows)];
    this.#stepBatches = [[], []];
    this.#pipelineDecode = (options.pipelineDecode ?? true) && this.backend.readSync === undefined;
    const deviceSampling = (options.deviceSampling ?? true) && this.backend.sample !== undefined && this.backend.readSync === undefined;
    this.#sampleParams = deviceSampling ? this.backend.createBuffer(4 * maxRows, 'f32') : null;
    this.#sampleParamsHost = new Float32Array(deviceSampling ? 4 * maxRows : 0);
    this.#rowFlags = new Uint8Array(maxRows);
    this.#rowSquare = new Uint8Array(maxRows);
    this.#rowGroupScale = new Float32Array(maxRows);
    this.#rowMetricBuffer = new Int32Array(maxRows);
    this.#recording = {
      values: this.metrics.values,
      rowFlags: this.#rowFlags,
      rowSquare: this.#rowSquare,
      rowGroupScale: this.#rowGroupScale,
      rowMetricBuffer: this.#rowMetricBuffer,
    };
    this.#step = {
      rows: 0,
      tokens: this.#tokens,
      sequences: this.#sequences,
      positions: this.#positions,
      slots: this.#slots,
      logitRows: this.#logitRows,
      logitCount: 0,
      deviceTokens: null,
    };
    this.#finishScratch = new Float32Array(this.maxContext);
    this.#uploadSlots = new Int32Array(Math.max(this.#units * maxRows, this.maxContext));
    this.#uploadValues = new Float32Array(Math.max(this.#units * maxRows, this.maxContext));
    // Made whatever the default policy: a request may name a block-rule policy of its own.
    const onDevice = (options.deviceSelection ?? true) && this.backend.deviceMetrics === true && this.backend.selectEvictions !== undefined;
    // Every sequence at most once per round: one row per head unit, and one mask bit per
    // cached slot, each row's mask starting on a word. The engine never forks, so the heads
    // of all sequences hold at most the pool's slots.
    const rows = maxSequences * this.#units;
    this.#selection = onDevice ? new EvictionSelection(rows, Math.ceil(this.allocator.numSlots / 32) + rows) : null;
    this.#deviceCompaction = (options.deviceCompaction ?? true) && this.backend.compactEvictions !== undefined;
    this.#roundParts = options.roundParts ?? 2;
    assertInteger('roundParts', this.#roundParts, 1, 4);
  }

  /** Whether a device selection round compacts on the device too (not while forks share blocks). */
  #compactsOnDevice(): boolean {
    return this.#deviceCompaction && this.allocator.sharedBlocks === 0;
  }

  /**
   * Before host planning on a backend that keeps metrics on the device: downloads them, and the
   * slot positions a device compaction moved (the host copy of those is stale).
   */
  async #syncHostCache(): Promise<void> {
    if (this.backend.deviceMetrics !== true) return;
    await this.backend.downloadMetrics?.(this.metrics.values);
    await this.#syncPositions();
  }

  /** Downloads the slot positions a device compaction moved, if any. */
  async #syncPositions(): Promise<void> {
    if (this.allocator.staleHeads === 0 || this.backend.downloadPositions === undefined) return;
    await this.backend.downloadPositions(this.allocator);
    this.allocator.positionsSynced();
  }

  /** Whether compressions under the default policy decide on the device (see EngineOptions.deviceSelection). */
  get deviceSelection(): boolean {
    return this.#selection !== null && this.compressor?.cheapestBlocks != null;
  }

  /** Whether this request's compressions decide on the device: its policy declares the block rule. */
  #selectsOnDevice(r: Request): boolean {
    return this.#selection !== null && r.compressor?.cheapestBlocks != null;
  }

  /**
   * Whether every running request that compresses decides on the device. A batch that mixes
   * in a host-planned policy downloads the metrics and plans every sequence on the host.
   */
  #allSelectOnDevice(): boolean {
    if (this.#selection === null) return false;
    for (const r of this.#running) if (r.compressor !== null && r.compressor.cheapestBlocks == null) return false;
    return true;
  }

  // ---------------------------------------------------------------------------------------
  // Public API

  /** Streams the tokens of one request. Requests made while others run are batched with them. */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GenerationEvent> {
    const request = this.#createRequest(prompt, options);
    this.#waiting.push(request);
    this.#pump();
    for (;;) {
      const event = request.events.shift();
      if (event !== undefined) {
        yield event;
        if (event.type === 'done') return;
        continue;
      }
      await new Promise<void>((resolve) => {
        request.wake = resolve;
      });
      request.wake = null;
    }
  }

  /** Runs a request to the end and returns its done event. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<DoneEvent> {
    for await (const e of this.generate(prompt, options)) if (e.type === 'done') return e;
    throw new InvalidArgumentError('generation ended without a done event');
  }

  /**
   * Logits of every position of `ids` with the full cache (teacher forcing):
   * Float32 [ids.length][vocab]; row t predicts token t + 1.
   */
  async forwardLogits(ids: readonly number[]): Promise<Float32Array> {
    if (ids.length < 1) throw new InvalidArgumentError('forwardLogits needs at least one token.');
    if (ids.length > this.maxContext) throw new InvalidArgumentError(`${ids.length} tokens exceed maxContext ${this.maxContext}.`);
    const vocab = this.model.config.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab)
        throw new InvalidArgumentError(`Token ${id} is outside the vocabulary (${vocab}).`);
    }
    const out = new Float32Array(ids.length * vocab);
    await this.#exclusive(async () => {
      const seq = this.allocator.addSequence();
      try {
        for (let start = 0; start < ids.length; start += this.prefillChunk) {
          const n = Math.min(this.prefillChunk, ids.length - start);
          this.#prepareRows(seq, ids, start, n, null, this.#defaultRuntime);
          for (let i = 0; i < n; i++) this.#logitRows[i] = i;
          this.#step.logitCount = n;
          this.model.forward(this.#step, this.allocator);
          await this.backend.read(this.model.logits, out.subarray(start * vocab, (start + n) * vocab));
        }
      } finally {
        this.allocator.removeSequence(seq);
      }
    });
    return out;
  }

  /** Runs `fn` when no other forward pass is in flight. */
  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.#lock();
    if (wait !== undefined) await wait;
    try {
      await this.#drainPipeline();
      return await fn();
    } finally {
      this.#unlock();
    }
  }

  /** Takes the lock: undefined when it was free (no promise), else a promise of the turn. */
  #lock(): Promise<void> | undefined {
    if (!this.#locked) {
      this.#locked = true;
      return undefined;
    }
    return new Promise<void>((resolve) => this.#lockWaiters.push(resolve));
  }

  /** Hands the lock to the next waiter, or frees it. */
  #unlock(): void {
    const next = this.#lockWaiters.shift();
    if (next !== undefined) next();
    else this.#locked = false;
  }

  /**
   * Teacher-forced negative log-likelihood (nats) of each token of `ids` given the ones
   * before it, with the full cache: Float64 [ids.length - 1].
   */
  async scoreTokens(ids: readonly number[]): Promise<Float64Array> {
    if (ids.length < 2) throw new InvalidArgumentError('Scoring needs at least two tokens.');
    const vocab = this.model.config.vocabSize;
    const logits = await this.forwardLogits(ids);
    const nll = new Float64Array(ids.length - 1);
    for (let t = 0; t + 1 < ids.length; t++) nll[t] = negativeLogLikelihood(logits, t * vocab, vocab, ids[t + 1] as number);
    return nll;
  }

  onStep(listener: (s: StepStats) => void): () => void {
    this.#stepListeners.add(listener);
    return () => this.#stepListeners.delete(listener);
  }

  onCompression(listener: (e: CompressionEvent) => void): () => void {
    this.#compressionListeners.add(listener);
    return () => this.#compressionListeners.delete(listener);
  }

  stats(): EngineStats {
    return {
      ...this.#stats,
      usedBlocks: this.allocator.usedBlocks,
      freeBlocks: this.allocator.freeBlocks,
      totalBlocks: this.allocator.numBlocks,
      bytesPerBlock: this.allocator.bytesPerBlock(this.kvDtype),
    };
  }

  /**
   * What a request's `compression` setting resolves to: the policy that runs it ('none' for
   * a full cache) and its budget. Throws what `generate` would for the same setting (an unknown
   * policy: UnknownPolicyError, listing the registered names; a bad budget: InvalidBudgetError),
   * so a server can reject a request before it starts answering.
   */
  resolveCompression(compression?: RequestCompression): ResolvedRequestCompression {
    const { runtime, config } = this.#resolveCompression(compression);
    return { policy: config === null ? 'none' : runtime.policy.name, config };
  }

  /** K+V bytes of the blocks in use now. */
  kvBytesInUse(): number {
    return this.allocator.usedBlocks * this.allocator.bytesPerBlock(this.kvDtype);
  }

  // ---------------------------------------------------------------------------------------
  // Scheduling

  #createRequest(prompt: string | readonly number[], options: GenerateOptions): Request {
    let promptIds: number[];
    if (typeof prompt === 'string') {
      if (this.tokenizer === null) throw new InvalidArgumentError('This model has no tokenizer; pass token ids instead of text.');
      promptIds = this.tokenizer.encode(prompt, { addBos: options.addBos ?? true });
    } else {
      promptIds = [...prompt];
    }
    const vocab = this.model.config.vocabSize;
    if (promptIds.length === 0) throw new InvalidArgumentError('The prompt is empty.');
    for (const id of promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab)
        throw new InvalidArgumentError(`Prompt token ${id} is outside the vocabulary (${vocab}).`);
    }
    const forced = options.teacherForcing?.tokens ?? null;
    if (forced !== null) {
      if (forced.length === 0) throw new InvalidArgumentError('teacherForcing.tokens is empty.');
      for (const id of forced) {
        if (!Number.isInteger(id) || id < 0 || id >= vocab)
          throw new InvalidArgumentError(`Teacher-forced token ${id} is outside the vocabulary (${vocab}).`);
      }
    }
    const maxTokens = forced?.length ?? options.maxTokens ?? 256;
    assertInteger('maxTokens', maxTokens, 1, 1 << 24);
    if (promptIds.length >= this.maxContext) {
      throw new InvalidArgumentError(`The prompt has ${promptIds.length} tokens; the context holds ${this.maxContext}.`);
    }
    const sampling = resolveSampling(options.sampling);
    const { runtime, config: compression } = this.#resolveCompression(options.compression);
    const compressor = compression === null ? null : this.#compressorOf(runtime);
    const recordsPrefill = compressor !== null && runtime.attention !== null;
    return {
      id: this.#nextId++,
      promptIds,
      originalPromptLength: promptIds.length,
      generated: [],
      maxTokens,
      sampling,
      rng: new Rng(sampling.seed),
      stopTokens: new Set(options.stopTokens ?? (forced !== null ? [] : this.model.config.eosTokenIds)),
      stopStrings: options.stopStrings ?? [],
      signal: options.signal,
      sequence: -1,
      compressionDue: false,
      text: '',
      prefixOffset: 0,
      readOffset: 0,
      compressions: 0,
      prefillMs: 0,
      decodeMs: 0,
      events: [],
      wake: null,
      finished: false,
      runtime,
      compression,
      pressureCompression:
        compression === null || this.#pressureHeadroomBlocks === 0
          ? compression
          : { ...compression, headroomBlocks: this.#pressureHeadroomBlocks },
      compressor,
      recordsPrefill,
      decodeFlag: recordsPrefill && runtime.scorer.accumulatesDuringDecode ? 1 : 0,
      forced: forced === null ? null : [...forced],
      onLogits: options.teacherForcing?.onLogits ?? null,
    };
  }

  /** The runtime of a policy by name (the engine's default policy answers to its own name). */
  #runtimeFor(name: string): PolicyRuntime {
    let runtime = this.#runtimes.get(name);
    if (runtime === undefined) {
      // Unknown names throw UnknownPolicyError, which lists the registered ones.
      runtime = new PolicyRuntime(getPolicy(name), this.allocator.shape.queryHeadsPerKvHead);
      this.#runtimes.set(name, runtime);
    }
    return runtime;
  }

  /** The policy's compressor, made on first use; every compressor plans in one shared scratch. */
  #compressorOf(runtime: PolicyRuntime): Compressor {
    if (runtime.compressor !== null) return runtime.compressor;
    this.#planner ??= new CompressionContext(this.allocator, this.metrics.values);
    runtime.compressor = new Compressor({
      allocator: this.allocator,
      metrics: this.metrics,
      policy: runtime.policy,
      // Requests always pass their own budget; this default only serves direct callers.
      config: this.#defaultConfig ?? KEEP_EVERYTHING,
      scorer: runtime.scorer,
      context: this.#planner,
    });
    return runtime.compressor;
  }

  #resolveCompression(c: RequestCompression | undefined): { runtime: PolicyRuntime; config: ResolvedCompressionConfig | null } {
    if (c === undefined) return { runtime: this.#defaultRuntime, config: this.#defaultConfig };
    const named = c.policy !== undefined;
    const runtime = c.policy === undefined ? this.#defaultRuntime : this.#runtimeFor(c.policy);
    const policy = runtime.policy.name;
    if (policy === 'none') {
      if (c.budget !== undefined && c.budget !== null) {
        throw new InvalidArgumentError(
          named
            ? 'The "none" policy keeps the full cache and takes no budget: name another policy to compress this request.'
            : 'This engine has no eviction policy (created without a budget or policy): name one with the budget to compress this request.',
        );
      }
      return { runtime, config: null };
    }
    const budget = c.budget !== undefined ? c.budget : (this.#defaultConfig?.budget ?? null);
    if (c.budget === undefined && this.#defaultConfig === null && named) {
      throw new InvalidArgumentError(
        `This engine has no default budget, so policy "${policy}" needs one with the request: a compression rate or max cache tokens.`,
      );
    }
    if (budget === null) return { runtime, config: null };
    const config = resolveCompressionConfig({
      budget,
      protectedWindow: c.protectedWindow ?? this.#protectedWindow,
      sinks: c.sinks ?? this.#sinks,
    });
    return { runtime, config };
  }

  /** The next token of `r` from its logits at `offset` in #logits: sampled, or teacher-forced. */
  #pick(r: Request, offset: number): number {
    if (r.forced === null) return this.#sampler.sample(this.#logits, offset, r.sampling, r.rng);
    const index = r.generated.length;
    r.onLogits?.(index, this.#logits.subarray(offset, offset + this.model.config.vocabSize));
    return r.forced[index] as number;
  }

  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    const loop = async (): Promise<void> => {
      try {
        while (this.#waiting.length > 0 || this.#running.length > 0) {
          const wait = this.#lock();
          if (wait !== undefined) await wait;
          try {
            if (this.#waiting.length > 0) {
              // Admission changes the batch: the step in flight first.
              await this.#drainPipeline();
              await this.#admit();
            }
            if (this.#running.length > 0) {
              const pending = this.#decodeStep();
              if (pending !== undefined) await pending;
            }
          } finally {
            this.#unlock();
          }
          // Let consumers and I/O run between steps.
          await yieldToEventLoop();
        }
      } catch (error) {
        this.#inflight.rows = 0;
        this.#inflight.read = null;
        // A bug or a backend failure: end every request with the error rather than hang.
        for (const r of [...this.#running, ...this.#waiting]) this.#finish(r, 'error', error as Error);
        this.#running = [];
        this.#waiting = [];
      } finally {
        this.#pumping = false;
      }
    };
    void loop();
  }

  /** Prefills waiting requests while their prompts fit, compressing running ones if needed. */
  async #admit(): Promise<void> {
    while (this.#waiting.length > 0 && this.allocator.activeSequences < this.allocator.maxSequences) {
      const r = this.#waiting[0] as Request;
      if (r.signal?.aborted === true) {
        this.#waiting.shift();
        this.#finish(r, 'abort');
        continue;
      }
      const needed = this.#units * Math.ceil(r.promptIds.length / this.allocator.blockSize);
      if (needed > this.allocator.freeBlocks) await this.#relievePressure(needed);
      if (needed > this.allocator.freeBlocks) {
        if (this.#running.length > 0) return; // wait for running sequences to finish
        this.#waiting.shift();
        this.#finish(r, 'error', new OutOfBlocksError(needed, this.allocator.freeBlocks, `The prompt of ${r.promptIds.length} tokens`));
        continue;
      }
      this.#waiting.shift();
      await this.#prefill(r);
    }
  }

  async #prefill(r: Request): Promise<void> {
    const t0 = performance.now();
    const seq = this.allocator.addSequence();
    r.sequence = seq;
    this.scheduler.reset(seq);
    const ids = r.promptIds;
    const vocab = this.model.config.vocabSize;
    const scorer = r.runtime.scorer;
    const window = scorer.observationWindow === 'all' ? ids.length : scorer.observationWindow;
    // The request's own policy decides what its prompt's attention records (nothing for a full cache).
    const recording = r.recordsPrefill ? this.#recording : undefined;
    for (let start = 0; start < ids.length; start += this.prefillChunk) {
      const n = Math.min(this.prefillChunk, ids.length - start);
      this.#prepareRows(seq, ids, start, n, r.recordsPrefill ? window : null, r.runtime);
      const last = start + n === ids.length;
      // Only the last prompt row's logits matter (intermediate chunks compute one row anyway).
      this.#logitRows[0] = n - 1;
      this.#step.logitCount = 1;
      this.model.forward(this.#step, this.allocator, recording);
      if (last) await this.backend.read(this.model.logits, this.#logits, 0, vocab);
    }
    if (r.recordsPrefill) await this.#finishPrefillMetrics(seq, ids.length, window, r.runtime.attention as AttentionScorer);
    this.#stats.prefillTokens += ids.length;
    this.#running.push(r);
    if (r.compressor !== null && this.scheduler.afterPrefill(seq) !== null) await this.#compress(r, 'prefill');
    const ms = performance.now() - t0;
    r.prefillMs += ms;
    this.#stats.prefillMs += ms;
    this.#emitStep('prefill', ids.length, ms);
    this.#accept(r, this.#pick(r, 0));
  }

  /**
   * One decode step for every running sequence. Synchronous (returns undefined, allocating
   * nothing) on host backends; a promise only where the backend must be awaited (device
   * metrics to download before compressing, or logits to read back).
   */
  #decodeStep(): Promise<void> | undefined {
    // A pipelined step is in flight: it was counted with the scheduler when it was recorded.
    if (this.#inflight.rows > 0) return this.#advancePipeline();
    const t0 = performance.now();
    // Which sequences are due for compression: on schedule, or because blocks run short.
    let needed = 0;
    for (const r of this.#running) needed += blocksForNextStep(this.allocator, r.sequence);
    let due = false;
    let compressible = false;
    for (const r of this.#running) {
      const reason = this.scheduler.beforeDecodeStep(r.sequence, this.allocator.freeBlocks, needed);
      r.compressionDue = reason === 'interval' && r.compressor !== null;
      due ||= r.compressionDue;
      compressible ||= r.compressor !== null;
    }
    if (compressible && this.backend.deviceMetrics === true && (due || needed > this.allocator.freeBlocks)) {
      return this.#allSelectOnDevice() ? this.#selectOnDeviceThen(t0) : this.#downloadMetricsThen(t0);
    }
    return this.#decodeRows(t0);
  }

  /** #decodeRows' compressions as device selection rounds, then the rest of the step. */
  async #selectOnDeviceThen(t0: number): Promise<void> {
    const due = this.#roundScratch;
    due.length = 0;
    for (const r of this.#running) {
      if (r.compressionDue) due.push(r);
      r.compressionDue = false;
    }
    await this.#compressOnDevice(due, 'interval');
    let needed = 0;
    for (const r of this.#running) needed += blocksForNextStep(this.allocator, r.sequence);
    if (needed > this.allocator.freeBlocks) await this.#relieveOnDevice(needed);
    await this.#decodeRows(t0, true);
  }

  async #downloadMetricsThen(t0: number): Promise<void> {
    await this.#syncHostCache();
    await this.#decodeRows(t0);
  }

  /**
   * Compressions that are due, pressure relief (unless `relieved`: done on the device
   * already), preemption, then the forward pass.
   */
  #decodeRows(t0: number, relieved = false): Promise<void> | undefined {
    for (const r of this.#running) {
      if (r.compressionDue) this.#compressNow(r, 'interval');
      r.compressionDue = false;
    }
    let needed = 0;
    for (const r of this.#running) needed += blocksForNextStep(this.allocator, r.sequence);
    if (needed > this.allocator.freeBlocks && !relieved) this.#relievePressureNow(needed);
    while (this.#running.length > 0) {
      needed = 0;
      for (const r of this.#running) needed += blocksForNextStep(this.allocator, r.sequence);
      if (needed <= this.allocator.freeBlocks) break;
      this.#preempt();
    }
    const rows = this.#running.length;
    if (rows === 0) return undefined;
    this.#recordDecodeRows(null);
    const vocab = this.model.config.vocabSize;
    if (this.backend.readSync !== undefined) {
      this.backend.readSync(this.model.logits, this.#logits, 0, rows * vocab);
      this.#sampleRows(t0, rows);
      return undefined;
    }
    // Every row greedy or sampled on the device: pick there and read back one integer per row,
    // not a row of vocab floats (128 K x 4 B per row for Llama 3).
    if (this.#picksOnDevice()) {
      const buffer = this.#greedyNext;
      const read = this.#pickOnDevice(rows, buffer);
      if (this.#pipelineDecode) {
        const inflight = this.#inflight;
        inflight.rows = rows;
        inflight.buffer = buffer;
        inflight.read = read;
        inflight.t0 = t0;
        return this.#advancePipeline();
      }
      return read.then(() => this.#acceptStep(t0, rows, buffer));
    }
    return this.backend.read(this.model.logits, this.#logits, 0, rows * vocab).then(() => this.#sampleRows(t0, rows));
  }

  /**
   * Appends a token to every running sequence and records the forward pass of those rows:
   * their tokens from the host (each request's last token), or `deviceTokens` (i32 [rows], a
   * pipelined step's: the previous step's device-picked ids, in the same row order).
   */
  #recordDecodeRows(deviceTokens: DeviceBuffer | null): void {
    const rows = this.#running.length;
    const units = this.#units;
    let recorded = 0;
    for (let i = 0; i < rows; i++) {
      const r = this.#running[i] as Request;
      const runtime = r.runtime;
      const seq = r.sequence;
      const position = this.allocator.nextPosition(seq);
      this.allocator.appendTokens(seq, 1, this.#seqSlots, this.#moves);
      this.#applyCopies();
      if (deviceTokens === null) this.#tokens[i] = r.generated[r.generated.length - 1] as number;
      this.#sequences[i] = seq;
      this.#positions[i] = position;
      // This row records its metric as its own policy's scorer says.
      this.#rowFlags[i] = r.decodeFlag;
      this.#rowSquare[i] = runtime.square;
      this.#rowGroupScale[i] = runtime.groupScale;
      this.#rowMetricBuffer[i] = runtime.metricBuffer;
      recorded += r.decodeFlag;
      this.#logitRows[i] = i;
      for (let u = 0; u < units; u++) {
        const slot = this.#seqSlots[u] as number;
        this.#slots[u * rows + i] = slot;
        const value = runtime.scorer.initialMetric(undefined, 0, 0, position);
        this.metrics.values[slot] = value;
        this.#uploadSlots[i * units + u] = slot;
        this.#uploadValues[i * units + u] = value;
      }
    }
    if (this.backend.deviceMetrics === true) this.backend.uploadMetrics?.(this.#uploadSlots, this.#uploadValues, rows * units);
    this.#step.rows = rows;
    this.#step.logitCount = rows;
    this.#step.deviceTokens = deviceTokens;
    this.model.forward(this.#step, this.allocator, recorded > 0 ? this.#recording : undefined);
    this.#step.deviceTokens = null;
  }

  /** Whether every running row's token is picked on the device (greedy, or device sampling), none forced. */
  #picksOnDevice(): boolean {
    let greedy = true;
    for (const r of this.#running) {
      if (r.forced !== null) return false;
      greedy &&= r.sampling.temperature === 0;
    }
    return greedy || this.#sampleParams !== null;
  }

  /**
   * Picks each row's token from the logits on the device into #greedyOut[buffer] and starts
   * reading it into #greedyIds[buffer]; remembers the running requests as that step's batch.
   * Sampled rows: the device picks with the uniform number each request's generator draws
   * now, in row order (as #pick would draw it).
   */
  #pickOnDevice(rows: number, buffer: 0 | 1): Promise<void> {
    const vocab = this.model.config.vocabSize;
    const out = this.#greedyOut[buffer];
    let greedy = true;
    for (const r of this.#running) greedy &&= r.sampling.temperature === 0;
    if (greedy) {
      this.backend.argmax(out, this.model.logits, rows, vocab);
    } else {
      const params = this.#sampleParamsHost;
      for (let i = 0; i < rows; i++) {
        const r = this.#running[i] as Request;
        const s = r.sampling;
        params[4 * i] = s.temperature;
        params[4 * i + 1] = s.topK;
        params[4 * i + 2] = s.topP;
        params[4 * i + 3] = s.temperature > 0 ? r.rng.next() : 0;
      }
      this.backend.write(this.#sampleParams as DeviceBuffer, params, 0, 4 * rows);
      this.backend.sample?.(out, this.model.logits, this.#sampleParams as DeviceBuffer, rows, vocab);
    }
    const batch = this.#stepBatches[buffer];
    batch.length = 0;
    for (const r of this.#running) batch.push(r);
    this.#greedyNext = buffer === 0 ? 1 : 0;
    const read = this.backend.read(out, this.#greedyIds[buffer], 0, rows);
    // Awaited later (#advancePipeline); a rejection (device loss) must not go unhandled meanwhile.
    read.catch(ignoreRejection);
    return read;
  }

  /**
   * The pipelined decode: records the next step (fed by the in-flight step's device ids)
   * when the batch can stay as it is, then waits for the in-flight step's ids and accepts
   * them. The recorded step becomes the one in flight.
   */
  async #advancePipeline(lookAhead = true): Promise<void> {
    const inflight = this.#inflight;
    const { rows, buffer, t0 } = inflight;
    const read = inflight.read as Promise<void>;
    inflight.rows = 0;
    inflight.read = null;
    if (lookAhead && this.#canLookAhead(buffer, rows)) {
      const t1 = performance.now();
      this.#stats.pipelinedSteps++;
      this.#recordDecodeRows(this.#greedyOut[buffer]);
      const next = this.#greedyNext;
      inflight.read = this.#pickOnDevice(rows, next);
      inflight.rows = rows;
      inflight.buffer = next;
      inflight.t0 = t1;
    }
    await read;
    this.#acceptStep(Math.max(t0, this.#lastAcceptAt), rows, buffer);
  }

  /** Waits for and accepts the in-flight pipelined step, if any (before the batch changes). */
  async #drainPipeline(): Promise<void> {
    if (this.#inflight.rows > 0) await this.#advancePipeline(false);
  }

  /**
   * Whether the step after the one in flight (its ids in #greedyOut[buffer], `rows` rows) can
   * be recorded now, before those ids are accepted: the same requests in the same rows, none
   * waiting to be admitted, each sure to need that step whatever its pending token (below its
   * token and context limits; a stop token is the one surprise, its row then discarded), and
   * no compression or memory pressure due. Counts the step with the scheduler when it can.
   */
  #canLookAhead(buffer: 0 | 1, rows: number): boolean {
    const batch = this.#stepBatches[buffer];
    if (this.#waiting.length > 0 || this.#running.length !== rows || batch.length !== rows) return false;
    let needed = 0;
    for (let i = 0; i < rows; i++) {
      const r = this.#running[i] as Request;
      if (r !== batch[i] || r.finished || r.forced !== null || r.signal?.aborted === true) return false;
      if (r.generated.length + 1 >= r.maxTokens || this.allocator.nextPosition(r.sequence) + 2 >= this.maxContext) return false;
      needed += blocksForNextStep(this.allocator, r.sequence);
    }
    const free = this.allocator.freeBlocks;
    if (needed > free) return false;
    for (const r of this.#running) {
      if (r.compressor !== null && this.scheduler.peekDecodeStep(r.sequence, free, needed) !== null) return false;
    }
    for (const r of this.#running) this.scheduler.beforeDecodeStep(r.sequence, free, needed);
    return true;
  }

  /** Accepts a device-picked step's ids (#greedyIds[buffer]) for the requests of its batch still running. */
  #acceptStep(t0: number, rows: number, buffer: 0 | 1): void {
    const now = performance.now();
    const ms = now - t0;
    this.#lastAcceptAt = now;
    const batch = this.#stepBatches[buffer];
    const ids = this.#greedyIds[buffer];
    let accepted = 0;
    for (let i = 0; i < rows; i++) {
      const r = batch[i] as Request;
      if (r.finished) continue; // stopped at the step before: this row ran past it
      r.decodeMs += ms;
      accepted++;
      this.#accept(r, ids[i] as number);
    }
    if (accepted === 0) return; // every request of the step had stopped
    this.#stats.decodeTokens += accepted;
    this.#stats.decodeMs += ms;
    this.#emitStep('decode', accepted, ms);
  }

  /** Samples each running row from #logits. */
  #sampleRows(t0: number, rows: number): void {
    const vocab = this.model.config.vocabSize;
    this.#lastAcceptAt = performance.now();
    const ms = this.#lastAcceptAt - t0;
    this.#stats.decodeTokens += rows;
    this.#stats.decodeMs += ms;
    // #accept may finish requests (removing them from #running): walk a stable copy.
    const batch = this.#batchScratch;
    batch.length = 0;
    for (const r of this.#running) batch.push(r);
    for (let i = 0; i < rows; i++) {
      const r = batch[i] as Request;
      r.decodeMs += ms;
      this.#accept(r, this.#pick(r, i * vocab));
    }
    this.#emitStep('decode', rows, ms);
  }

  /** Compresses running sequences until `needed` blocks are free (metrics already on the host). */
  async #relievePressure(needed: number): Promise<void> {
    if (needed <= this.allocator.freeBlocks) return;
    let compressible = false;
    for (const r of this.#running) compressible ||= r.compressor !== null;
    if (!compressible) return;
    if (this.#allSelectOnDevice()) return this.#relieveOnDevice(needed);
    await this.#syncHostCache();
    this.#relievePressureNow(needed);
  }

  /**
   * #relievePressureNow with the decisions made on the device. Compressing one sequence
   * changes no other's plan, so each round selects, fullest first, just the sequences whose
   * excess over their budget covers the shortfall, and applies them in that order until
   * enough is free: the sequences and decisions of the host path, in fewer round trips.
   */
  async #relieveOnDevice(needed: number): Promise<void> {
    if (this.scheduler.compressOnce) return;
    const byBlocks = this.#batchScratch;
    byBlocks.length = 0;
    for (const r of this.#running) byBlocks.push(r);
    byBlocks.sort((a, b) => this.allocator.sequenceBlocks(b.sequence) - this.allocator.sequenceBlocks(a.sequence));
    const round = this.#roundScratch;
    let next = 0;
    while (next < byBlocks.length && needed > this.allocator.freeBlocks) {
      round.length = 0;
      let expected = 0;
      for (; next < byBlocks.length && needed > this.allocator.freeBlocks + expected; next++) {
        const r = byBlocks[next] as Request;
        if (r.compressor === null || r.compression === null) continue;
        const excess = this.allocator.sequenceBlocks(r.sequence) - r.compressor.targetBlocks(r.sequence, r.compression);
        if (excess <= 0) continue;
        round.push(r);
        expected += excess;
      }
      await this.#compressOnDevice(round, 'memory-pressure', needed);
    }
  }

  /**
   * One device selection round: selects for every request of `round` at once, then compresses
   * them in order; with `needed`, stops once that many blocks are free (the rest stay as they
   * are, as on the host path). Compacting on the device, such a round first downloads the
   * blocks each row frees, and compacts only the requests the host path would compress.
   */
  async #compressOnDevice(round: readonly Request[], reason: CompressionReason, needed = -1): Promise<void> {
    const selection = this.#selection;
    if (selection === null || round.length === 0) return;
    const t0 = performance.now();
    const onDevice = this.#compactsOnDevice();
    const parts = onDevice && needed < 0 ? Math.min(this.#roundParts, round.length) : 1;
    if (parts > 1) return this.#compactInParts(round, reason, parts, t0);
    this.#describeRound(selection, round, reason, 0, round.length);
    if (selection.rowCount > 0) {
      if (onDevice) {
        let rows = selection.rowCount;
        if (needed >= 0) {
          await this.backend.selectEvictions?.(selection, this.allocator, { masks: false });
          rows = this.#rowsNeeded(round, selection, needed);
        }
        await this.backend.compactEvictions?.(selection, this.allocator, rows);
        this.#stats.deviceCompactionRounds++;
      } else {
        // compressSelected checks the marked slots' positions on the host.
        await this.#syncPositions();
        await this.backend.selectEvictions?.(selection, this.allocator);
      }
      this.#stats.deviceSelectionRounds++;
    }
    // The round's device time and download; each compression adds its own host time below.
    this.#stats.compressionMs += performance.now() - t0;
    for (const r of round) {
      if (needed >= 0 && needed <= this.allocator.freeBlocks) return;
      const config = configFor(r, reason);
      if (r.compressor === null || config === null) continue;
      const c = r.compressor;
      this.#compressed(
        r,
        reason,
        onDevice ? c.applyDeviceCompaction(r.sequence, selection, config) : c.compressSelected(r.sequence, this.#moves, selection, config),
      );
    }
  }

  /**
   * A device compaction round in `parts` parts of `round` (roundParts): each part described
   * and sent to the device (Backend.compactEvictions up to its download) before the first is
   * awaited, then each applied in order as its download arrives.
   */
  async #compactInParts(round: readonly Request[], reason: CompressionReason, parts: number, t0: number): Promise<void> {
    const per = Math.ceil(round.length / parts);
    const pending: Promise<unknown>[] = [];
    let rows = 0;
    for (let part = 0; part < parts; part++) {
      const selection = this.#partSelection(part);
      this.#describeRound(selection, round, reason, part * per, Math.min(round.length, (part + 1) * per));
      rows += selection.rowCount;
      // Settled as a value, so a part that fails while an earlier one is awaited is not an
      // unhandled rejection; the first failure is thrown below.
      pending.push(
        selection.rowCount === 0
          ? Promise.resolve(null)
          : (this.backend.compactEvictions?.(selection, this.allocator) ?? Promise.resolve()).then(
              () => null,
              (error: unknown) => ({ error }),
            ),
      );
    }
    if (rows > 0) {
      this.#stats.deviceCompactionRounds++;
      this.#stats.deviceSelectionRounds++;
      this.#stats.deviceRoundsInParts++;
      this.#stats.deviceRoundParts += parts;
    }
    for (let part = 0; part < parts; part++) {
      const ta = performance.now();
      const failed = (await pending[part]) as { error: unknown } | null;
      if (failed !== null) throw failed.error;
      // The round's time outside the compressions below (describing, recording, waiting for
      // the device); each compression adds its own host time.
      this.#stats.compressionMs += performance.now() - (part === 0 ? t0 : ta);
      const selection = this.#partSelection(part);
      for (let i = part * per; i < Math.min(round.length, (part + 1) * per); i++) {
        const r = round[i] as Request;
        const config = configFor(r, reason);
        if (r.compressor === null || config === null) continue;
        this.#compressed(r, reason, r.compressor.applyDeviceCompaction(r.sequence, selection, config));
      }
    }
  }

  /**
   * Describes requests [from, to) of a round in `selection`, each under its own policy's
   * compressor (all of them declare the block rule).
   */
  #describeRound(selection: EvictionSelection, round: readonly Request[], reason: CompressionReason, from: number, to: number): void {
    selection.reset();
    for (let i = from; i < to; i++) {
      const r = round[i] as Request;
      const config = configFor(r, reason);
      if (r.compressor !== null && config !== null) r.compressor.addSelection(selection, r.sequence, config);
    }
  }

  #partSelection(part: number): EvictionSelection {
    const first = this.#selection as EvictionSelection;
    if (part === 0) return first;
    let s = this.#partSelections[part - 1];
    if (s === undefined) {
      s = new EvictionSelection(first.maxRows, first.maxMaskWords);
      this.#partSelections[part - 1] = s;
    }
    return s;
  }

  /**
   * The leading rows of a selection (whole requests, in round order) that the loop of
   * #compressOnDevice compresses before `needed` blocks are free, from the blocks each row
   * frees (selection.result, before any compaction).
   */
  #rowsNeeded(round: readonly Request[], selection: EvictionSelection, needed: number): number {
    let free = this.allocator.freeBlocks;
    let rows = 0;
    for (const r of round) {
      if (needed <= free) break;
      for (let g = 0; g < selection.groupCount; g++) {
        const go = g * SELECTION_GROUP_FIELDS;
        if (selection.groups[go] !== r.sequence) continue;
        const end = (selection.groups[go + 1] as number) + (selection.groups[go + 2] as number);
        for (let row = selection.groups[go + 1] as number; row < end; row++) free += selection.freed(row);
        rows = Math.max(rows, end);
      }
    }
    return rows;
  }

  /** Compresses running sequences, fullest first, until `needed` blocks are free. */
  #relievePressureNow(needed: number): void {
    if (this.scheduler.compressOnce) return;
    const byBlocks = this.#batchScratch;
    byBlocks.length = 0;
    for (const r of this.#running) byBlocks.push(r);
    byBlocks.sort((a, b) => this.allocator.sequenceBlocks(b.sequence) - this.allocator.sequenceBlocks(a.sequence));
    for (const r of byBlocks) {
      if (needed <= this.allocator.freeBlocks) return;
      // A sequence already within its budget would free nothing: planning it is wasted work
      // (without this, a nearly full pool re-planned every sequence on every step).
      if (r.compressor === null || r.compression === null) continue;
      if (this.allocator.sequenceBlocks(r.sequence) <= r.compressor.targetBlocks(r.sequence, r.compression)) continue;
      this.#compressNow(r, 'memory-pressure');
    }
  }

  /**
   * Ends the most recently admitted sequence and queues it again: it will be recomputed from
   * its prompt plus everything generated so far, and continue from there.
   */
  #preempt(): void {
    const r = this.#running.pop() as Request;
    this.allocator.removeSequence(r.sequence);
    r.sequence = -1;
    r.promptIds = [...r.promptIds.slice(0, r.originalPromptLength), ...r.generated];
    this.#stats.preemptions++;
    this.#waiting.unshift(r);
  }

  /** Compresses one sequence, first fetching device metrics if the backend keeps them. */
  async #compress(r: Request, reason: CompressionReason): Promise<void> {
    if (r.compressor === null) return;
    if (this.#selectsOnDevice(r)) {
      const round = this.#roundScratch;
      round.length = 0;
      round.push(r);
      return this.#compressOnDevice(round, reason);
    }
    await this.#syncHostCache();
    this.#compressNow(r, reason);
  }

  /** Compresses one sequence with the host metric store as it is. */
  #compressNow(r: Request, reason: CompressionReason): void {
    const compressor = r.compressor;
    const config = configFor(r, reason);
    if (compressor === null || config === null) return;
    this.#compressed(r, reason, compressor.compress(r.sequence, this.#moves, config));
  }

  /** Runs a compaction's moves on the backend and records the compression. */
  #compressed(r: Request, reason: CompressionReason, outcome: CompressionOutcome): void {
    this.backend.executeMoves(this.#moves);
    this.#moves.clear();
    this.scheduler.compressed(r.sequence);
    r.compressions++;
    this.#stats.compressions++;
    this.#stats.compressionMs += outcome.planMs + outcome.compactMs;
    for (const l of this.#compressionListeners) l({ reason, outcome });
  }

  /** Records a sampled token; finishes the request on a stop condition. */
  #accept(r: Request, token: number): void {
    if (r.signal?.aborted === true) {
      this.#finish(r, 'abort');
      return;
    }
    if (r.stopTokens.has(token)) {
      this.#finish(r, 'stop');
      return;
    }
    r.generated.push(token);
    const delta = this.#textDelta(r);
    r.text += delta;
    this.#push(r, { type: 'token', token, text: delta, index: r.generated.length - 1 });
    if (r.stopStrings.length > 0 && r.stopStrings.some((s) => s.length > 0 && r.text.endsWith(s))) this.#finish(r, 'stop');
    else if (r.generated.length >= r.maxTokens) this.#finish(r, 'length');
    else if (this.allocator.nextPosition(r.sequence) + 1 >= this.maxContext) this.#finish(r, 'length');
  }

  #finish(r: Request, reason: FinishReason, error?: Error): void {
    if (r.finished) return;
    r.finished = true;
    // Text held back while a character was incomplete belongs to the final text.
    if (this.tokenizer !== null && r.readOffset < r.generated.length) {
      const prefix = this.tokenizer.decode(r.generated.slice(r.prefixOffset, r.readOffset));
      const rest = this.tokenizer.decode(r.generated.slice(r.prefixOffset));
      if (rest.length > prefix.length) r.text += rest.slice(prefix.length);
    }
    let blocksPerHead: Int32Array = new Int32Array(this.#units);
    if (r.sequence >= 0 && this.allocator.isActive(r.sequence)) {
      blocksPerHead = this.allocator.blocksPerHead(r.sequence);
      this.allocator.removeSequence(r.sequence);
    }
    const i = this.#running.indexOf(r);
    if (i >= 0) this.#running.splice(i, 1);
    const decodeTokens = Math.max(0, r.generated.length - 1);
    this.#push(r, {
      type: 'done',
      reason,
      ...(error === undefined ? {} : { error }),
      promptTokens: r.originalPromptLength,
      tokens: r.generated,
      text: r.text,
      policy: r.compression === null ? 'none' : r.runtime.policy.name,
      blocksPerHead,
      compressions: r.compressions,
      tokensPerSecond: r.decodeMs > 0 ? (decodeTokens / r.decodeMs) * 1000 : 0,
      prefillMs: r.prefillMs,
    });
    r.sequence = -1;
  }

  #push(r: Request, e: GenerationEvent): void {
    r.events.push(e);
    r.wake?.();
  }

  /**
   * Text the newest token adds. Decodes a short window (from `prefixOffset`) instead of the
   * whole output, so each token costs O(1): the window's first tokens give the context that
   * tokenizers need (leading-space rules, multi-byte characters split over tokens), and text
   * ending in U+FFFD (an incomplete character) is held back until the next token.
   */
  #textDelta(r: Request): string {
    const tok = this.tokenizer;
    if (tok === null) return '';
    const ids = r.generated;
    const prefix = tok.decode(ids.slice(r.prefixOffset, r.readOffset));
    const full = tok.decode(ids.slice(r.prefixOffset));
    if (full.length <= prefix.length || full.endsWith('\uFFFD')) return '';
    r.prefixOffset = r.readOffset;
    r.readOffset = ids.length;
    return full.slice(prefix.length);
  }

  #emitStep(kind: 'prefill' | 'decode', rows: number, ms: number): void {
    this.#stats.steps++;
    this.#stats.peakUsedBlocks = Math.max(this.#stats.peakUsedBlocks, this.allocator.usedBlocks);
    if (this.#stepListeners.size === 0) return;
    const s: StepStats = {
      step: this.#stats.steps,
      kind,
      rows,
      running: this.#running.length,
      waiting: this.#waiting.length,
      usedBlocks: this.allocator.usedBlocks,
      freeBlocks: this.allocator.freeBlocks,
      ms,
    };
    for (const l of this.#stepListeners) l(s);
  }

  /**
   * Fills the step scratch with prompt rows [start, start + n) of one sequence and appends them.
   * `window`: the last this many prompt rows record their attention (null: none do), as the
   * policy's scorer says.
   */
  #prepareRows(seq: number, ids: readonly number[], start: number, n: number, window: number | null, runtime: PolicyRuntime): void {
    const position0 = this.allocator.nextPosition(seq);
    this.allocator.appendTokens(seq, n, this.#seqSlots, this.#moves);
    this.#applyCopies();
    const total = ids.length;
    for (let i = 0; i < n; i++) {
      this.#tokens[i] = ids[start + i] as number;
      this.#sequences[i] = seq;
      this.#positions[i] = position0 + i;
      this.#rowFlags[i] = window !== null && start + i >= total - window ? 1 : 0;
      this.#rowSquare[i] = runtime.square;
      this.#rowGroupScale[i] = runtime.groupScale;
      this.#rowMetricBuffer[i] = runtime.metricBuffer;
    }
    // appendTokens laid the slots out [layers][kvHeads][n], as the step wants them.
    this.#slots.set(this.#seqSlots.subarray(0, this.#units * n));
    for (let u = 0; u < this.#units * n; u++) {
      const slot = this.#seqSlots[u] as number;
      const value = runtime.scorer.initialMetric(undefined, 0, 0, position0 + (u % n));
      this.metrics.values[slot] = value;
      this.#uploadValues[u] = value;
    }
    if (this.backend.deviceMetrics === true) this.backend.uploadMetrics?.(this.#seqSlots, this.#uploadValues, this.#units * n);
    this.#step.rows = n;
  }

  /** Runs copy-on-write copies from an append (forks) on the backend and the metric store. */
  #applyCopies(): void {
    if (this.#moves.count === 0) return;
    this.backend.executeMoves(this.#moves);
    this.metrics.applyMoves(this.#moves);
    this.#moves.clear();
  }

  /** Average/pooling of the prefill metrics per head, for scorers that need it (SnapKV). */
  async #finishPrefillMetrics(seq: number, keyCount: number, window: number, scorer: AttentionScorer): Promise<void> {
    if (!scorer.needsPrefillFinish) return;
    const device = this.backend.deviceMetrics === true;
    if (device) await this.backend.downloadMetrics?.(this.metrics.values);
    const { layers, kvHeads } = this.allocator.shape;
    const buf = this.#finishScratch;
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        // A fresh sequence holds its prompt in position order: logical index = position.
        for (let i = 0; i < keyCount; i++) buf[i] = this.metrics.values[this.allocator.slot(seq, l, h, i)] as number;
        scorer.finishPrefillHead(buf, 0, keyCount, window);
        for (let i = 0; i < keyCount; i++) {
          const slot = this.allocator.slot(seq, l, h, i);
          this.metrics.values[slot] = buf[i] as number;
          if (device) {
            this.#uploadSlots[i] = slot;
            this.#uploadValues[i] = buf[i] as number;
          }
        }
        if (device) this.backend.uploadMetrics?.(this.#uploadSlots, this.#uploadValues, keyCount);
      }
    }
  }
}

/** A promise's rejection handler that leaves the rejection to whoever awaits the promise. */
function ignoreRejection(): void {}

/** The budget a request is compressed to for a round of this reason. */
function configFor(r: Request, reason: CompressionReason): ResolvedCompressionConfig | null {
  return reason === 'memory-pressure' ? r.pressureCompression : r.compression;
}

/** Resolves after pending I/O and timers had a turn: setImmediate in Node, a message in browsers. */
function yieldToEventLoop(): Promise<void> {
  const g = globalThis as { setImmediate?: (f: () => void) => void };
  if (g.setImmediate !== undefined) return new Promise((resolve) => g.setImmediate?.(resolve));
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const port = channel.port1 as unknown as { onmessage: (() => void) | null; close(): void };
    port.onmessage = () => {
      port.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

/** -log softmax(logits)[target], computed stably in float64. */
export function negativeLogLikelihood(logits: Float32Array, offset: number, n: number, target: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i] as number);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((logits[offset + i] as number) - max);
  return Math.log(sum) + max - (logits[offset + target] as number);
}

export function createEngine(options: EngineOptions): Engine {
  return new Engine(options);
}
