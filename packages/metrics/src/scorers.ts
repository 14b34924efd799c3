import { assertInteger, InvalidArgumentError } from '@kvcompress/core';

/** How one attention probability p counts toward a key's importance. */
export type MetricAggregation = 'L1' | 'L2';
/** Over the observed queries: plain sum, or the mean over the queries that saw the key. */
export type MetricReduction = 'sum' | 'avg';
/** Over the query heads that share a kv-head (GQA): sum or mean. */
export type GroupReduction = 'sum' | 'mean';

export interface Pooling {
  readonly kind: 'max' | 'avg';
  /** Window length along the key axis (odd when centred). */
  readonly kernel: number;
  /**
   * 'center' (default, SnapKV's): keys j - k/2 .. j + k/2. 'trailing': keys j - k + 1 .. j, so
   * a key's importance flows to the tokens after it: an induction-style read attends to the
   * token before a value and then copies the value's tokens one by one while decoding, after
   * eviction, so the value itself draws little prefill attention.
   */
  readonly align?: 'center' | 'trailing';
}

/**
 * What the Backend hands a scorer after prefilling one layer.
 * Keys are the prompt's tokens at positions 0 .. keyCount-1, in order; the observed queries
 * are the last `window` prompt positions (keyCount - window .. keyCount - 1).
 */
export interface PrefillScoringInput {
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly keyCount: number;
  readonly window: number;
  /**
   * Float32 [queryHeads][window][keyCount]: softmax attention of observed query w of each
   * query head to every key (0 beyond the causal edge). Not needed by key-norm or random.
   */
  readonly probs?: Float32Array;
  /** Float32 [kvHeads][keyCount][headDim], RoPE applied; needed by key-norm only. */
  readonly keys?: Float32Array;
  readonly headDim?: number;
}

/**
 * A way of scoring how much each cached token matters. A higher metric means more
 * important (evicted later). Holds configuration (and the random scorer its generator).
 */
export interface Scorer {
  readonly name: string;
  /**
   * How many of the last prompt queries the Backend must report attention for:
   * a count, `'all'` for the whole prompt, or 0 when no attention is needed.
   */
  readonly observationWindow: number | 'all';
  /** Whether decode steps add to the metric (the Backend then reports decode attention). */
  readonly accumulatesDuringDecode: boolean;
  /** Whether `initialMetric` needs the key vector. */
  readonly needsKeys: boolean;
  /** Writes the score of every prompt key: `out` Float32 [kvHeads][keyCount]. */
  scorePrefill(input: PrefillScoringInput, out: Float32Array): void;
  /**
   * Metric of a token appended during decode, before any accumulation.
   * `key` holds the token's K at [offset, offset + headDim) when `needsKeys`.
   */
  initialMetric(key: Float32Array | undefined, offset: number, headDim: number, position: number): number;
  /** Decode accumulation settings, used by `DecodeMetricAccumulator`. */
  readonly decode?: { readonly aggregation: MetricAggregation; readonly groupReduction: GroupReduction; readonly metricBuffer: number };
}

export interface AttentionScorerOptions {
  readonly name: string;
  /** Last N prompt queries observed, or 'all'. */
  readonly observationWindow: number | 'all';
  readonly aggregation: MetricAggregation;
  readonly reduction: MetricReduction;
  readonly groupReduction: GroupReduction;
  /** Keys fewer than this many positions before a query are not scored by it. */
  readonly metricBuffer: number;
  readonly pooling: Pooling | null;
  readonly accumulatesDuringDecode: boolean;
}

function validatePooling(pooling: Pooling | null): void {
  if (pooling === null) return;
  assertInteger('pooling.kernel', pooling.kernel, 1, 1025);
  if (pooling.align !== undefined && pooling.align !== 'center' && pooling.align !== 'trailing')
    throw new InvalidArgumentError(`pooling.align must be 'center' or 'trailing', got ${String(pooling.align)}.`);
  if ((pooling.align ?? 'center') === 'center' && pooling.kernel % 2 === 0)
    throw new InvalidArgumentError(`pooling.kernel must be odd when centred, got ${pooling.kernel}.`);
}

/**
 * The attention-based scorer family: KV-Compress, SnapKV and H2O are parameterisations of it.
 *
 * For kv-head g and key j, with queries w of the window at positions pos(w):
 *   raw[g][j] = G_{q in group(g)} R_{w : pos(w) - j >= metricBuffer} a(p[q][w][j])
 * where a is p (L1) or p^2 (L2), R is a sum or a mean over the queries that saw j, and G is a
 * sum or mean over the group's query heads. Pooling along keys follows.
 */
export class AttentionScorer implements Scorer {
  readonly name: string;
  readonly observationWindow: number | 'all';
  readonly accumulatesDuringDecode: boolean;
  readonly needsKeys = false;
  readonly options: AttentionScorerOptions;
  readonly decode: { aggregation: MetricAggregation; groupReduction: GroupReduction; metricBuffer: number };
  #pooled = new Float32Array(0);

  constructor(options: AttentionScorerOptions) {
    if (options.observationWindow !== 'all') assertInteger('observationWindow', options.observationWindow, 1);
    assertInteger('metricBuffer', options.metricBuffer, 0);
    validatePooling(options.pooling);
    this.name = options.name;
    this.options = options;
    this.observationWindow = options.observationWindow;
    this.accumulatesDuringDecode = options.accumulatesDuringDecode;
    this.decode = {
      aggregation: options.aggregation,
      groupReduction: options.groupReduction,
      metricBuffer: options.metricBuffer,
    };
  }

  scorePrefill(input: PrefillScoringInput, out: Float32Array): void {
    const { queryHeads, kvHeads, keyCount, window, probs } = input;
    if (probs === undefined) throw new InvalidArgumentError(`Scorer "${this.name}" needs attention probabilities.`);
    if (queryHeads % kvHeads !== 0) {
      throw new InvalidArgumentError(`queryHeads (${queryHeads}) must be a multiple of kvHeads (${kvHeads}).`);
    }
    if (window < 1 || window > keyCount) throw new InvalidArgumentError(`window must be in [1, ${keyCount}], got ${window}.`);
    if (probs.length < queryHeads * window * keyCount) {
      throw new InvalidArgumentError(
        `probs holds ${probs.length} values; [queryHeads][window][keyCount] needs ${queryHeads * window * keyCount}.`,
      );
    }
    if (out.length < kvHeads * keyCount) throw new InvalidArgumentError(`out must hold kvHeads * keyCount = ${kvHeads * keyCount} values.`);
    const { aggregation, groupReduction, metricBuffer } = this.options;
    const group = queryHeads / kvHeads;
    const queryStart = keyCount - window;
    out.fill(0, 0, kvHeads * keyCount);
    for (let g = 0; g < kvHeads; g++) {
      const o = g * keyCount;
      for (let qi = 0; qi < group; qi++) {
        const q = g * group + qi;
        for (let w = 0; w < window; w++) {
          const pos = queryStart + w;
          // Key j is scored by this query iff pos - j >= metricBuffer.
          const lastKey = Math.min(pos - metricBuffer, keyCount - 1);
          const row = (q * window + w) * keyCount;
          if (aggregation === 'L2') {
            for (let j = 0; j <= lastKey; j++) {
              const p = probs[row + j] as number;
              out[o + j] = (out[o + j] as number) + p * p;
            }
          } else {
            for (let j = 0; j <= lastKey; j++) out[o + j] = (out[o + j] as number) + (probs[row + j] as number);
          }
        }
      }
      const groupScale = groupReduction === 'mean' ? 1 / group : 1;
      for (let j = 0; j < keyCount; j++) out[o + j] = (out[o + j] as number) * groupScale;
      this.finishPrefillHead(out, o, keyCount, window);
    }
  }

  /**
   * After the observed queries' attention has been summed into out[o .. o + keyCount) (with
   * the group reduction applied, keys in position order 0 .. keyCount-1): divides by how
   * many queries saw each key when the reduction is 'avg', then pools along keys.
   * The Backend records the sums during prefill attention; the engine then calls this per head.
   */
  finishPrefillHead(out: Float32Array, o: number, keyCount: number, window: number): void {
    const { reduction, metricBuffer, pooling } = this.options;
    if (reduction === 'avg') {
      const queryStart = keyCount - window;
      for (let j = 0; j < keyCount; j++) {
        // Queries at positions >= j + metricBuffer saw key j.
        const seen = keyCount - Math.max(queryStart, j + metricBuffer);
        out[o + j] = seen > 0 ? (out[o + j] as number) / seen : 0;
      }
    }
    if (pooling !== null) this.#pool(out, o, keyCount, pooling);
  }

  /** Whether `finishPrefillHead` changes anything (avg reduction or pooling). */
  get needsPrefillFinish(): boolean {
    return this.options.reduction === 'avg' || this.options.pooling !== null;
  }

  initialMetric(): number {
    return 0;
  }

  /** Max- or average-pools out[o .. o + n) in place; average counts the zero padding (PyTorch's default). */
  #pool(out: Float32Array, o: number, n: number, pooling: Pooling): void {
    if (this.#pooled.length < n) this.#pooled = new Float32Array(n);
    const tmp = this.#pooled;
    const trailing = pooling.align === 'trailing';
    const half = (pooling.kernel - 1) >> 1;
    for (let j = 0; j < n; j++) {
      const lo = Math.max(0, trailing ? j - pooling.kernel + 1 : j - half);
      const hi = trailing ? j : Math.min(n - 1, j + half);
      if (pooling.kind === 'max') {
        let m = Number.NEGATIVE_INFINITY;
        for (let i = lo; i <= hi; i++) m = Math.max(m, out[o + i] as number);
        tmp[j] = m;
      } else {
        let s = 0;
        for (let i = lo; i <= hi; i++) s += out[o + i] as number;
        tmp[j] = s / pooling.kernel;
      }
    }
    for (let j = 0; j < n; j++) out[o + j] = tmp[j] as number;
  }
}

/** KV-Compress defaults (the paper's reference implementation): L2 sum over a 32-query window, summed over the group. */
export interface KvCompressScorerOptions {
  readonly observationWindow?: number;
  readonly aggregation?: MetricAggregation;
  readonly reduction?: MetricReduction;
  readonly metricBuffer?: number;
  /** Max-pool kernel along keys; 0 disables (default). The paper's option uses 7. */
  readonly maxPoolKernel?: number;
  /** Where the max-pool window sits: centred on the key (default) or trailing it (see Pooling.align). */
  readonly maxPoolAlign?: 'center' | 'trailing';
}

export function kvCompressScorer(options: KvCompressScorerOptions = {}): AttentionScorer {
  const kernel = options.maxPoolKernel ?? 0;
  return new AttentionScorer({
    name: 'kv-compress',
    observationWindow: options.observationWindow ?? 32,
    aggregation: options.aggregation ?? 'L2',
    reduction: options.reduction ?? 'sum',
    groupReduction: 'sum',
    metricBuffer: options.metricBuffer ?? 0,
    pooling: kernel > 0 ? { kind: 'max', kernel, align: options.maxPoolAlign ?? 'center' } : null,
    accumulatesDuringDecode: true,
  });
}

/**
 * SnapKV: mean attention of the last window, avg-pooled (kernel 5), mean over the group. The
 * window's own keys, which SnapKV always keeps, lie inside the policies' protected window.
 */
export function snapKvScorer(options: { observationWindow?: number; poolKernel?: number } = {}): AttentionScorer {
  return new AttentionScorer({
    name: 'snapkv',
    observationWindow: options.observationWindow ?? 32,
    aggregation: 'L1',
    reduction: 'avg',
    groupReduction: 'mean',
    metricBuffer: 0,
    pooling: { kind: 'avg', kernel: options.poolKernel ?? 5 },
    accumulatesDuringDecode: false,
  });
}

/** H2O: attention accumulated over every query so far (prefill and decode), summed over the group. */
export function h2oScorer(): AttentionScorer {
  return new AttentionScorer({
    name: 'h2o',
    observationWindow: 'all',
    aggregation: 'L1',
    reduction: 'sum',
    groupReduction: 'sum',
    metricBuffer: 0,
    pooling: null,
    accumulatesDuringDecode: true,
  });
}

/** Key norm: keys with a small L2 norm draw more attention, so metric = -||k||. Needs no attention. */
export class KeyNormScorer implements Scorer {
  readonly name = 'key-norm';
  readonly observationWindow = 0;
  readonly accumulatesDuringDecode = false;
  readonly needsKeys = true;

  scorePrefill(input: PrefillScoringInput, out: Float32Array): void {
    const { kvHeads, keyCount, keys, headDim } = input;
    if (keys === undefined || headDim === undefined) throw new InvalidArgumentError('The key-norm scorer needs keys and headDim.');
    if (keys.length < kvHeads * keyCount * headDim) {
      throw new InvalidArgumentError(`keys must hold kvHeads * keyCount * headDim = ${kvHeads * keyCount * headDim} values.`);
    }
    for (let i = 0; i < kvHeads * keyCount; i++) out[i] = this.initialMetric(keys, i * headDim, headDim);
  }

  initialMetric(key: Float32Array | undefined, offset: number, headDim: number): number {
    if (key === undefined) throw new InvalidArgumentError('The key-norm scorer needs the key vector.');
    let s = 0;
    for (let d = 0; d < headDim; d++) {
      const v = key[offset + d] as number;
      s += v * v;
    }
    return -Math.sqrt(s);
  }
}

/** Uniform random metric from a seeded generator (mulberry32): a floor for every other policy. */
export class RandomScorer implements Scorer {
  readonly name = 'random';
  readonly observationWindow = 0;
  readonly accumulatesDuringDecode = false;
  readonly needsKeys = false;
  #state: number;

  constructor(seed = 0x9e3779b9) {
    this.#state = seed >>> 0;
  }

  scorePrefill(input: PrefillScoringInput, out: Float32Array): void {
    for (let i = 0; i < input.kvHeads * input.keyCount; i++) out[i] = this.initialMetric();
  }

  initialMetric(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/**
 * Position as the metric (older = less important): StreamingLLM's recency rule as a scorer.
 * The first `sinks` positions (attention sinks) score +Infinity, so they go last.
 */
export class RecencyScorer implements Scorer {
  readonly name = 'recency';
  readonly observationWindow = 0;
  readonly accumulatesDuringDecode = false;
  readonly needsKeys = false;
  readonly sinks: number;

  constructor(options: { sinks?: number } = {}) {
    this.sinks = options.sinks ?? 0;
    assertInteger('sinks', this.sinks, 0);
  }

  scorePrefill(input: PrefillScoringInput, out: Float32Array): void {
    for (let g = 0; g < input.kvHeads; g++) {
      for (let j = 0; j < input.keyCount; j++) out[g * input.keyCount + j] = this.initialMetric(undefined, 0, 0, j);
    }
  }

  initialMetric(_key: Float32Array | undefined, _offset: number, _headDim: number, position: number): number {
    return position < this.sinks ? Number.POSITIVE_INFINITY : position;
  }
}
