import { argmax, InvalidArgumentError } from '@kvcompress/core';

export { argmax };

/** How the next token is picked. temperature 0 = greedy (argmax). */
export interface SamplingOptions {
  readonly temperature?: number;
  /** Keep the k most likely tokens (0 = all). */
  readonly topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = all). */
  readonly topP?: number;
  /** Seed of this request's generator; the same seed gives the same tokens. */
  readonly seed?: number;
}

export interface ResolvedSampling {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
}

export function resolveSampling(s: SamplingOptions = {}): ResolvedSampling {
  const temperature = s.temperature ?? 0;
  const topK = s.topK ?? 0;
  const topP = s.topP ?? 1;
  const seed = s.seed ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0) throw new InvalidArgumentError(`temperature must be >= 0, got ${temperature}.`);
  if (!Number.isInteger(topK) || topK < 0) throw new InvalidArgumentError(`topK must be a non-negative integer, got ${topK}.`);
  if (!(topP > 0 && topP <= 1)) throw new InvalidArgumentError(`topP must be in (0, 1], got ${topP}.`);
  if (!Number.isInteger(seed)) throw new InvalidArgumentError(`seed must be an integer, got ${seed}.`);
  return { temperature, topK, topP, seed };
}

/** mulberry32: a small, fast, seedable generator; one per request. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/**
 * Samples from logits with temperature, top-k and top-p. Scratch arrays are owned by the
 * sampler and sized for the vocabulary once.
 *
 * With top-k or top-p, tokens are ranked by probability, equal probabilities by ascending
 * id: top-k keeps the first k, top-p the shortest prefix whose mass reaches p of theirs, and
 * the draw walks that prefix in rank order. Without either, the draw walks the whole
 * vocabulary in id order. `WebGpuBackend.sample` follows the same rule on the device.
 */
export class Sampler {
  readonly vocabSize: number;
  readonly #probs: Float32Array;
  readonly #order: Int32Array;

  constructor(vocabSize: number) {
    this.vocabSize = vocabSize;
    this.#probs = new Float32Array(vocabSize);
    this.#order = new Int32Array(vocabSize);
  }

  sample(logits: Float32Array, offset: number, s: ResolvedSampling, rng: Rng): number {
    const n = this.vocabSize;
    if (s.temperature === 0) return argmax(logits, offset, n);
    const probs = this.#probs;
    const order = this.#order;
    let max = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i] as number);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const e = Math.exp(((logits[offset + i] as number) - max) / s.temperature);
      probs[i] = e;
      sum += e;
    }
    for (let i = 0; i < n; i++) order[i] = i;
    let count = n;
    if (s.topK > 0 && s.topK < n) {
      selectTop(order, probs, n, s.topK);
      count = s.topK;
    }
    if (s.topP < 1 || count < n) {
      // Sort the candidates by probability, descending (count is small when top-k is used).
      const cand = order.subarray(0, count);
      cand.sort((a, b) => (probs[b] as number) - (probs[a] as number) || a - b);
      let kept = 0;
      let mass = 0;
      let total = 0;
      for (let i = 0; i < count; i++) total += probs[cand[i] as number] as number;
      for (let i = 0; i < count; i++) {
        mass += probs[cand[i] as number] as number;
        kept = i + 1;
        if (mass >= s.topP * total) break;
      }
      count = kept;
      sum = 0;
      for (let i = 0; i < count; i++) sum += probs[order[i] as number] as number;
    }
    let r = rng.next() * sum;
    for (let i = 0; i < count; i++) {
      const id = order[i] as number;
      r -= probs[id] as number;
      if (r <= 0) return id;
    }
    return order[count - 1] as number;
  }
}

/**
 * Moves the k first ids in rank order (probability descending, then id ascending) to
 * order[0 .. k) (quickselect; unordered).
 */
function selectTop(order: Int32Array, probs: Float32Array, n: number, k: number): void {
  // a ranks before b.
  const before = (a: number, b: number): boolean => {
    const pa = probs[a] as number;
    const pb = probs[b] as number;
    return pa > pb || (pa === pb && a < b);
  };
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    const pivot = order[(lo + hi) >>> 1] as number;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (before(order[i] as number, pivot)) i++;
      while (before(pivot, order[j] as number)) j--;
      if (i <= j) {
        const t = order[i] as number;
        order[i] = order[j] as number;
        order[j] = t;
        i++;
        j--;
      }
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else return;
  }
}
