// The demo's model of one run: the same prompt generated with the chosen policy and, beside it,
// with the full cache, as two requests batched in ONE engine (one block pool). What the views
// draw is read from the engine as it runs: blocks per (layer, kv-head) from the page
// allocator at every step, importance per head from the metric store at every compression,
// and the engine's own timings.
import { type Backend, firstDivergence, InvalidArgumentError, type KvDtype, kvShapeOf } from '@kvcompress/core';
import { type DoneEvent, Engine, type SamplingOptions } from '@kvcompress/engine';
import { type Budget, type CompressionOutcome, type CompressionReason, getPolicy } from '@kvcompress/eviction';
import { type HeadSummary, summarizeHeads } from '@kvcompress/metrics';
import type { LoadedModel } from '@kvcompress/models';
import { sum } from './format.ts';

/** What a person sets before pressing Generate. */
export interface RunSettings {
  readonly prompt: string;
  /** A registered policy name. 'none' runs the full cache alone. */
  readonly policy: string;
  readonly budget: Budget;
  readonly protectedWindow: number;
  readonly sinks: number;
  readonly compressionInterval: number;
  readonly maxTokens: number;
  readonly sampling: SamplingOptions;
  /** Also generate with the full cache, side by side. */
  readonly compare: boolean;
}

/** Engine-wide settings, fixed while a model is loaded. */
export interface EngineSettings {
  /** Most tokens a sequence may reach (capped at the model's context). */
  readonly maxContext: number;
  readonly kvDtype: KvDtype;
  readonly blockSize: number;
}

/** One compression round of one side. */
export interface CompressionRecord {
  readonly reason: CompressionReason;
  /** Generated tokens of the side when it ran (0 = right after prefill). */
  readonly atToken: number;
  readonly blocksBefore: number;
  readonly blocksAfter: number;
  readonly targetBlocks: number;
  readonly freedBlocks: number;
  readonly ms: number;
}

/** One request of a run, as the views see it. */
export interface SideView {
  readonly role: 'full' | 'compressed';
  readonly policy: string;
  readonly label: string;
  /** Allocator sequence id once admitted, else -1. */
  sequence: number;
  readonly tokens: number[];
  /** Text each token added (may be empty while a character is incomplete). */
  readonly pieces: string[];
  /** Blocks per (layer, kv-head): live from the allocator, then the done event's exact figures. */
  readonly blocksPerHead: Int32Array;
  /** Slots per (layer, kv-head) at the last step (not updated by the done event). */
  readonly lengthsPerHead: Int32Array;
  /** Tokens this side's cache has seen (its uncompressed length). */
  tokensSeen: number;
  /** Per-head importance of the cached tokens, as of the last compression; null before one. */
  importance: readonly HeadSummary[] | null;
  readonly compressions: CompressionRecord[];
  done: DoneEvent | null;
}

export interface RunView {
  readonly layers: number;
  readonly kvHeads: number;
  readonly blockSize: number;
  /** K+V bytes of one block in the engine's KV dtype. */
  readonly bytesPerBlock: number;
  readonly kvDtype: KvDtype;
  readonly backend: string;
  readonly promptTokens: number;
  readonly sides: SideView[];
  /** Pool blocks in use and in all, at the last step. */
  usedBlocks: number;
  totalBlocks: number;
  decodeSteps: number;
  /** Rows decoded (tokens of all sides) and the time those steps took. */
  decodeRows: number;
  decodeMs: number;
  prefillMs: number;
  /** Time the engine spent planning and compacting (engine.stats().compressionMs, this run). */
  compressionMs: number;
  compressionRounds: number;
  readonly startedAt: number;
  elapsedMs: number;
  firstTokenMs: number | null;
  finished: boolean;
  error: Error | null;
}

/** Blocks a head holds without compression after `tokens` tokens. */
export function fullBlocksPerHead(tokens: number, blockSize: number): number {
  return Math.ceil(tokens / blockSize);
}

/** K+V bytes a side holds now: its blocks times the block size in bytes. */
export function sideBytes(view: RunView, side: SideView): number {
  return sum(side.blocksPerHead) * view.bytesPerBlock;
}

/** K+V bytes the full cache holds (or would hold) for a side's tokens. */
export function fullCacheBytes(view: RunView, side: SideView): number {
  return view.layers * view.kvHeads * fullBlocksPerHead(side.tokensSeen, view.blockSize) * view.bytesPerBlock;
}

/** Where the compressed side's tokens first differ from the full cache's, or -1. */
export function runDivergence(view: RunView): number {
  const full = view.sides.find((s) => s.role === 'full');
  const compressed = view.sides.find((s) => s.role === 'compressed');
  if (full === undefined || compressed === undefined) return -1;
  return firstDivergence(full.tokens, compressed.tokens, full.done !== null && compressed.done !== null);
}

/** Tokens the cache of a finished request holds: the prompt and every generated token it fed back. */
function tokensSeenAtDone(done: DoneEvent): number {
  // A request that ended on its length limit never fed its last token back; one that stopped
  // (a stop token, which is not kept) or was aborted fed back every token it kept.
  return done.promptTokens + done.tokens.length - (done.reason === 'length' && done.tokens.length > 0 ? 1 : 0);
}

/**
 * Owns the engine for one loaded model. The engine is kept across runs and made again only
 * when the policy or the compression interval changes (budget and window are per request).
 */
export class DemoRunner {
  readonly model: LoadedModel;
  readonly settings: EngineSettings;
  readonly #createBackend: () => Backend;
  #engine: Engine | null = null;
  #engineKey = '';
  #running = false;

  constructor(model: LoadedModel, createBackend: () => Backend, settings: EngineSettings) {
    if (model.tokenizer === null) {
      throw new InvalidArgumentError(
        'This model has no tokenizer, so the demo cannot encode a prompt. Load one that carries its vocabulary.',
      );
    }
    this.model = model;
    this.settings = { ...settings, maxContext: Math.min(settings.maxContext, model.config.maxContext) };
    this.#createBackend = createBackend;
  }

  /** The engine of the last run (for figures the views compare against), or null. */
  get engine(): Engine | null {
    return this.#engine;
  }

  get running(): boolean {
    return this.#running;
  }

  /** Tokens of a prompt under this model's tokenizer (BOS included). */
  countTokens(prompt: string): number {
    return this.model.tokenizer?.encode(prompt, { addBos: true }).length ?? 0;
  }

  /** The engine for these settings: the current one, or a new one (weights uploaded again). */
  engineFor(s: RunSettings): Engine {
    const policy = getPolicy(s.policy); // UnknownPolicyError lists the registered names
    const key = `${policy.name}|${s.compressionInterval}`;
    if (this.#engine !== null && this.#engineKey === key && this.#engine.policy === policy) return this.#engine;
    const old = this.#engine;
    this.#engine = null;
    freeDeviceBuffers(old);
    const compress = policy.name !== 'none';
    this.#engine = new Engine({
      model: this.model,
      backend: this.#createBackend(),
      policy,
      budget: compress ? s.budget : null,
      protectedWindow: s.protectedWindow,
      sinks: s.sinks,
      compressionInterval: s.compressionInterval,
      maxSequences: 2,
      maxContext: this.settings.maxContext,
      blockSize: this.settings.blockSize,
      kvDtype: this.settings.kvDtype,
      // The head view summarises the host metric store after each compression: keep host
      // planning, whose metric download refreshes it (device selection would leave it stale).
      deviceSelection: false,
    });
    this.#engineKey = key;
    return this.#engine;
  }

  /** Forgets the engine (after a lost device): the next run makes a new one. */
  reset(): void {
    this.#engine = null;
    this.#engineKey = '';
  }

  /** Frees the engine's KV pool and scratch buffers on the device (when the runner is replaced). */
  dispose(): void {
    if (this.#running) throw new InvalidArgumentError('Stop the generation before replacing the model or the engine.');
    freeDeviceBuffers(this.#engine);
    this.reset();
  }

  /**
   * Generates the prompt under `s`, calling `onUpdate` after every engine step and
   * compression with the (mutable) view. Resolves with the final view; a failed request
   * leaves its error in `view.error`.
   */
  async run(s: RunSettings, onUpdate: (view: RunView) => void = () => {}, signal?: AbortSignal): Promise<RunView> {
    if (this.#running) throw new InvalidArgumentError('A generation is already running: stop it (or wait) before starting another.');
    if (!Number.isInteger(s.maxTokens) || s.maxTokens < 1) {
      throw new InvalidArgumentError(`Max new tokens must be a whole number of at least 1, got ${s.maxTokens}.`);
    }
    const tokenizer = this.model.tokenizer;
    if (tokenizer === null) throw new InvalidArgumentError('This model has no tokenizer.');
    if (s.prompt.trim() === '') throw new InvalidArgumentError('The prompt is empty: type one or pick a preset.');
    const ids = tokenizer.encode(s.prompt, { addBos: true });
    const maxContext = this.settings.maxContext;
    if (ids.length + s.maxTokens > maxContext) {
      throw new InvalidArgumentError(
        `The prompt (${ids.length} tokens) plus ${s.maxTokens} new tokens exceed the context of ${maxContext} tokens: shorten the prompt or generate fewer tokens.`,
      );
    }
    const engine = this.engineFor(s);
    const compress = engine.compressor !== null;
    const shape = kvShapeOf(this.model.config);
    const units = shape.layers * shape.kvHeads;
    const rate = 'targetCompressionRate' in s.budget ? `${s.budget.targetCompressionRate}x` : `${s.budget.maxCacheTokens} tokens/head`;
    const side = (role: 'full' | 'compressed', policy: string, label: string): SideView => ({
      role,
      policy,
      label,
      sequence: -1,
      tokens: [],
      pieces: [],
      blocksPerHead: new Int32Array(units),
      lengthsPerHead: new Int32Array(units),
      tokensSeen: 0,
      importance: null,
      compressions: [],
      done: null,
    });
    const sides: SideView[] = [];
    if (s.compare && compress) sides.push(side('full', 'none', 'full cache'));
    sides.push(compress ? side('compressed', engine.policy.name, `${engine.policy.name}, ${rate}`) : side('full', 'none', 'full cache'));
    const stats0 = engine.stats();
    const view: RunView = {
      layers: shape.layers,
      kvHeads: shape.kvHeads,
      blockSize: engine.allocator.blockSize,
      bytesPerBlock: stats0.bytesPerBlock,
      kvDtype: engine.kvDtype,
      backend: engine.backend.name,
      promptTokens: ids.length,
      sides,
      usedBlocks: stats0.usedBlocks,
      totalBlocks: stats0.totalBlocks,
      decodeSteps: 0,
      decodeRows: 0,
      decodeMs: 0,
      prefillMs: 0,
      compressionMs: 0,
      compressionRounds: 0,
      startedAt: performance.now(),
      elapsedMs: 0,
      firstTokenMs: null,
      finished: false,
      error: null,
    };
    const allocator = engine.allocator;

    /** Maps newly admitted sequences to sides, in the order the requests were made. */
    const claim = (sequence: number): void => {
      if (sides.some((x) => x.sequence === sequence)) return;
      const next = sides.find((x) => x.sequence < 0);
      if (next !== undefined) next.sequence = sequence;
    };
    const refresh = (): void => {
      for (const x of sides) {
        if (x.done !== null || x.sequence < 0 || !allocator.isActive(x.sequence)) continue;
        allocator.blocksPerHead(x.sequence, x.blocksPerHead);
        allocator.lengthsPerHead(x.sequence, x.lengthsPerHead);
        x.tokensSeen = allocator.nextPosition(x.sequence);
      }
      view.elapsedMs = performance.now() - view.startedAt;
    };

    const offStep = engine.onStep((step) => {
      if (step.kind === 'prefill') {
        view.prefillMs += step.ms;
        for (let q = 0; q < allocator.maxSequences; q++) if (allocator.isActive(q)) claim(q);
      } else {
        view.decodeSteps++;
        view.decodeRows += step.rows;
        view.decodeMs += step.ms;
      }
      view.usedBlocks = step.usedBlocks;
      view.totalBlocks = step.usedBlocks + step.freeBlocks;
      refresh();
      onUpdate(view);
    });
    const offCompression = engine.onCompression(({ reason, outcome }) => {
      // The policy's side is the only one that compresses (the full side's budget is null).
      const target = sides.find((x) => x.role === 'compressed');
      if (target === undefined) return;
      if (target.sequence < 0) target.sequence = outcome.sequence;
      target.compressions.push(record(reason, outcome, target.tokens.length));
      view.compressionRounds++;
      view.compressionMs = engine.stats().compressionMs - stats0.compressionMs;
      // Metrics on the host are fresh now (device backends download them to compress).
      for (const x of sides) {
        if (x.sequence >= 0 && x.done === null && allocator.isActive(x.sequence)) {
          x.importance = summarizeHeads(allocator, engine.metrics.values, x.sequence);
        }
      }
      refresh();
      onUpdate(view);
    });

    const consume = async (x: SideView): Promise<void> => {
      const stream = engine.generate(ids, {
        maxTokens: s.maxTokens,
        sampling: s.sampling,
        signal,
        ...(compress
          ? { compression: x.role === 'full' ? { budget: null } : { budget: s.budget, protectedWindow: s.protectedWindow, sinks: s.sinks } }
          : {}),
      });
      for await (const e of stream) {
        if (e.type === 'token') {
          view.firstTokenMs ??= performance.now() - view.startedAt;
          x.tokens.push(e.token);
          x.pieces.push(e.text);
        } else {
          x.done = e;
          x.blocksPerHead.set(e.blocksPerHead);
          x.tokensSeen = tokensSeenAtDone(e);
          if (e.error !== undefined) view.error ??= e.error;
        }
        onUpdate(view);
      }
    };

    this.#running = true;
    onUpdate(view);
    try {
      // The first request is admitted (its sequence added) before the second is made, so
      // the sides claim sequences in order.
      await Promise.all(sides.map((x) => consume(x)));
    } finally {
      offStep();
      offCompression();
      this.#running = false;
      const stats = engine.stats();
      view.compressionMs = stats.compressionMs - stats0.compressionMs;
      view.usedBlocks = stats.usedBlocks;
      view.elapsedMs = performance.now() - view.startedAt;
      view.finished = true;
      onUpdate(view);
    }
    return view;
  }
}

/** Frees an engine's KV pool and scratch on device backends (WebGPU); a lost device has nothing left to free. */
function freeDeviceBuffers(engine: Engine | null): void {
  try {
    (engine?.backend as { destroyBuffers?: () => void } | undefined)?.destroyBuffers?.();
  } catch {
    // The device is gone, and its memory with it.
  }
}

function record(reason: CompressionReason, o: CompressionOutcome, atToken: number): CompressionRecord {
  return {
    reason,
    atToken,
    blocksBefore: o.blocksBefore,
    blocksAfter: o.blocksAfter,
    targetBlocks: o.targetBlocks,
    freedBlocks: o.freedBlocks,
    ms: o.planMs + o.compactMs,
  };
}
