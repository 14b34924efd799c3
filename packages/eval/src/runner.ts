import { type Backend, InvalidArgumentError } from '@kvcompress/core';
import { Engine, negativeLogLikelihood } from '@kvcompress/engine';
import type { LoadedModel, Tokenizer } from '@kvcompress/models';
import { klDivergence } from './divergence.ts';
import { hashString, SeededRandom } from './random.ts';
import { generateExample, RETRIEVAL_TASKS, type RetrievalTask, scoreAnswer, splitSentences } from './tasks.ts';

/** Measures on held-out text, against the full cache. */
export const TEXT_TASKS = ['perplexity', 'kl', 'greedy-agreement'] as const;
export type TextTask = (typeof TEXT_TASKS)[number];
export type EvalTask = RetrievalTask | TextTask;
export const ALL_TASKS: readonly EvalTask[] = [...RETRIEVAL_TASKS, ...TEXT_TASKS];

/** Higher is better for every task except these. */
export function lowerIsBetter(task: EvalTask): boolean {
  return task === 'perplexity' || task === 'kl';
}

export interface EvalConfig {
  /** Name recorded in the results (a path or a label). */
  readonly modelName: string;
  readonly model: LoadedModel;
  /** Registered eviction policies to compare. */
  readonly policies: readonly string[];
  /** Compression rates; 1 is the full cache (no eviction), the reference for every policy. */
  readonly rates: readonly number[];
  /** Context lengths in tokens (prompt plus answer for retrieval tasks; context for text tasks). */
  readonly contexts: readonly number[];
  readonly tasks: readonly EvalTask[];
  /** Examples per (task, context). */
  readonly examples: number;
  readonly seed: number;
  /** Held-out text: haystacks for the retrieval tasks, the scored text for the others. */
  readonly text: string;
  /** Teacher-forced / greedy tokens scored after each text-task context. Default 64. */
  readonly continuationTokens?: number;
  /** Recent positions no policy may evict. Default 16. */
  readonly protectedWindow?: number;
  /**
   * Examples of a cell generated together, batched by the engine (default 1). Each example
   * is its own sequence with its own budget, so scores do not depend on it beyond float
   * rounding (kernels may pick other code paths for other row counts). Mostly for GPUs.
   */
  readonly batch?: number;
  /** A backend factory (default: the CPU backend). One engine per (policy, rate). */
  readonly backend?: () => Backend;
  /** Cells already computed (from an interrupted run): skipped. */
  readonly previous?: readonly CellResult[];
  /** Called after each finished cell (persist it to resume later). */
  readonly onCell?: (cell: CellResult) => void;
  readonly onProgress?: (done: number, total: number, label: string) => void;
}

/** One (model, context, task, policy, rate) measurement. */
export interface CellResult {
  readonly model: string;
  readonly context: number;
  readonly task: EvalTask;
  readonly policy: string;
  readonly rate: number;
  readonly examples: number;
  readonly seed: number;
  /** Retrieval: mean fraction of answers found. perplexity: exp(mean NLL). kl: mean nats/token. greedy-agreement: mean matching prefix fraction. */
  readonly score: number;
  /** Per-example values (retrieval score, mean NLL, mean KL, or prefix fraction). */
  readonly perExample: readonly number[];
}

export function cellKey(c: Pick<CellResult, 'model' | 'context' | 'task' | 'policy' | 'rate' | 'examples' | 'seed'>): string {
  return `${c.model}|${c.context}|${c.task}|${c.policy}|${c.rate}|${c.examples}|${c.seed}`;
}

/** Reference (full-cache) results of one text-task example. */
interface TextReference {
  readonly context: number[];
  readonly continuation: number[];
  /** Float32 [continuation][vocab]: full-cache logits predicting each continuation token. */
  readonly logits: Float32Array[];
  readonly greedy: readonly number[];
}

/**
 * Runs every (context, task, policy, rate) cell. All policies at one rate get the same
 * KV budget (`targetCompressionRate`, enforced to block granularity by every policy), and
 * compress once, after the prompt: equal memory. Deterministic for a seed.
 */
export async function runEval(config: EvalConfig): Promise<CellResult[]> {
  const tokenizer = config.model.tokenizer;
  if (tokenizer === null) throw new InvalidArgumentError('The evaluated model has no tokenizer.');
  if (config.examples < 1) throw new InvalidArgumentError('examples must be at least 1.');
  for (const r of config.rates) if (!(r >= 1)) throw new InvalidArgumentError(`Compression rates must be >= 1, got ${r}.`);
  const continuationTokens = config.continuationTokens ?? 64;
  const window = config.protectedWindow ?? 16;
  const batch = config.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1) throw new InvalidArgumentError(`batch must be an integer >= 1, got ${batch}.`);
  const maxContext = Math.min(config.model.config.maxContext, Math.max(...config.contexts) + continuationTokens + 64);
  const done = new Map((config.previous ?? []).map((c) => [cellKey(c), c]));
  const results: CellResult[] = [];
  const engines = new Map<string, Engine>();
  const engineFor = (policy: string, rate: number): Engine => {
    const key = rate === 1 ? 'full' : `${policy}@${rate}`;
    let e = engines.get(key);
    if (e === undefined) {
      e = new Engine({
        model: config.model,
        backend: config.backend?.(),
        maxSequences: batch,
        maxContext,
        ...(rate === 1 ? {} : { policy, budget: { targetCompressionRate: rate }, protectedWindow: window, compressOnce: true }),
      });
      engines.set(key, e);
    }
    return e;
  };
  const sentences = splitSentences(config.text);
  const countCache = new Map<string, number>();
  const source = {
    sentences,
    countTokens: (t: string) => {
      let n = countCache.get(t);
      if (n === undefined) {
        n = tokenizer.encode(t, { addBos: false }).length;
        if (t.length < 512) countCache.set(t, n);
      }
      return n;
    },
  };
  const textTokens = heldOutTokens(tokenizer, config.text);
  const total = config.contexts.length * config.tasks.length * config.policies.length * config.rates.length;
  let finished = 0;
  for (const context of config.contexts) {
    // Full-cache references of the text examples, shared by the text tasks of this context.
    const references = new Map<number, TextReference>();
    for (const task of config.tasks) {
      for (const rate of config.rates) {
        for (const policy of config.policies) {
          const base = { model: config.modelName, context, task, policy, rate, examples: config.examples, seed: config.seed };
          const label = `${task} @${context} ${policy} ${rate}x`;
          const have = done.get(cellKey(base));
          if (have !== undefined) {
            results.push(have);
            config.onProgress?.(++finished, total, label);
            continue;
          }
          // The full cache is the same for every policy: compute once per (context, task).
          const shared = rate === 1 ? results.find((c) => c.context === context && c.task === task && c.rate === 1) : undefined;
          let perExample: number[];
          if (shared !== undefined) perExample = [...shared.perExample];
          else {
            const engine = engineFor(policy, rate);
            const one = async (i: number): Promise<number> =>
              (RETRIEVAL_TASKS as readonly string[]).includes(task)
                ? retrievalExample(engine, tokenizer, generateExample(task as RetrievalTask, source, context, i, config.seed))
                : textExample(engine, task as TextTask, await reference(i));
            perExample = [];
            for (let i0 = 0; i0 < config.examples; i0 += batch) {
              const group = Array.from({ length: Math.min(batch, config.examples - i0) }, (_, k) => i0 + k);
              perExample.push(...(await Promise.all(group.map(one))));
            }
          }
          const cell: CellResult = { ...base, score: aggregate(task, perExample), perExample };
          results.push(cell);
          config.onCell?.(cell);
          config.onProgress?.(++finished, total, label);
        }
      }

      async function reference(i: number): Promise<TextReference> {
        let ref = references.get(i);
        if (ref !== undefined) return ref;
        const { contextIds, continuation } = textExampleTokens(
          textTokens,
          i,
          config.seed,
          context,
          continuationTokens,
          config.model.config.bosTokenId,
        );
        const full = engineFor('none', 1);
        const logits: Float32Array[] = [];
        await full.complete(contextIds, { teacherForcing: { tokens: continuation, onLogits: (k, l) => (logits[k] = l.slice()) } });
        const greedy = (await full.complete(contextIds, { maxTokens: continuationTokens, stopTokens: [] })).tokens;
        ref = { context: contextIds, continuation, logits, greedy };
        references.set(i, ref);
        return ref;
      }
    }
  }
  return results;
}

/**
 * Example i of a text task: `context` tokens (BOS first when the model has one) from a
 * seeded place in the held-out text, then the next `continuation` tokens.
 */
export function textExampleTokens(
  textTokens: readonly number[],
  i: number,
  seed: number,
  context: number,
  continuation: number,
  bos: number | null,
): { contextIds: number[]; continuation: number[] } {
  const need = context + continuation;
  if (textTokens.length < need + 1)
    throw new InvalidArgumentError(`The held-out text has ${textTokens.length} tokens; ${need} are needed.`);
  const start = new SeededRandom(hashString(`text:${i}:${seed}:${context}`)).int(0, textTokens.length - need - 1);
  const ctx = textTokens.slice(start, start + context - (bos === null ? 0 : 1));
  return {
    contextIds: bos === null ? [...ctx] : [bos, ...ctx],
    continuation: textTokens.slice(start + ctx.length, start + ctx.length + continuation),
  };
}

async function retrievalExample(engine: Engine, tokenizer: Tokenizer, example: ReturnType<typeof generateExample>): Promise<number> {
  const ids = tokenizer.encode(example.prompt, { addBos: true });
  const done = await engine.complete(ids, { maxTokens: example.maxNewTokens });
  if (done.error !== undefined) throw done.error;
  return scoreAnswer(done.text, example.answers);
}

async function textExample(engine: Engine, task: TextTask, ref: TextReference): Promise<number> {
  if (task === 'greedy-agreement') {
    const done = await engine.complete(ref.context, { maxTokens: ref.greedy.length, stopTokens: [] });
    if (done.error !== undefined) throw done.error;
    let same = 0;
    while (same < ref.greedy.length && done.tokens[same] === ref.greedy[same]) same++;
    return same / ref.greedy.length;
  }
  let sum = 0;
  const done = await engine.complete(ref.context, {
    teacherForcing: {
      tokens: ref.continuation,
      onLogits: (k, logits) => {
        sum +=
          task === 'kl'
            ? klDivergence(ref.logits[k] as Float32Array, logits)
            : negativeLogLikelihood(logits, 0, logits.length, ref.continuation[k] as number);
      },
    },
  });
  if (done.error !== undefined) throw done.error;
  return sum / ref.continuation.length;
}

/** The cell score from per-example values: perplexity exponentiates the mean NLL. */
export function aggregate(task: EvalTask, perExample: readonly number[]): number {
  const mean = perExample.reduce((a, b) => a + b, 0) / perExample.length;
  return task === 'perplexity' ? Math.exp(mean) : mean;
}

/** The held-out text's tokens (its first 4 M characters). */
export function heldOutTokens(tokenizer: Tokenizer, text: string): number[] {
  return tokenizer.encode(text.slice(0, 4_000_000), { addBos: false });
}
