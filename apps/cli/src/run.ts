import { type Backend, firstDivergence, InvalidArgumentError, kvBytesPerToken, kvShapeOf } from '@kvcompress/core';
import { type DoneEvent, Engine, type GenerateOptions } from '@kvcompress/engine';
import type { Budget } from '@kvcompress/eviction';
import type { LoadedModel } from '@kvcompress/models';
import { SingleBar } from 'cli-progress';

export interface RunOptions {
  readonly prompt: string;
  readonly policy: string;
  readonly budget: Budget;
  readonly protectedWindow: number;
  readonly sinks: number;
  readonly compressionInterval: number;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
  readonly progress: boolean;
  /** A backend per engine (default: the CPU backend). */
  readonly backend?: () => Backend;
}

/** One generation's figures. */
export interface RunSide {
  readonly label: string;
  readonly policy: string;
  readonly text: string;
  readonly tokens: readonly number[];
  readonly finishReason: string;
  /** K+V bytes of the blocks the sequence held at the end. */
  readonly kvBytes: number;
  readonly blocks: number;
  /** Blocks per (layer, kv-head) at the end: [layers][kvHeads]. */
  readonly blocksPerHead: Int32Array;
  readonly compressions: number;
  readonly tokensPerSecond: number;
  readonly prefillMs: number;
}

export interface RunReport {
  readonly model: { readonly architecture: string; readonly layers: number; readonly kvHeads: number; readonly headDim: number };
  readonly promptTokens: number;
  readonly full: RunSide;
  readonly compressed: RunSide;
  /** Index into the generated tokens where the two first differ; -1 if identical. */
  readonly firstDifference: number;
  /** full.kvBytes / compressed.kvBytes. */
  readonly memoryRatio: number;
  /** Bytes of K+V per token of context in this model, uncompressed. */
  readonly kvBytesPerToken: number;
}

async function generateOnce(
  model: LoadedModel,
  label: string,
  policy: string,
  budget: Budget | null,
  o: RunOptions,
  promptIds: number[],
): Promise<RunSide> {
  const engine = new Engine({
    model,
    backend: o.backend?.(),
    maxSequences: 1,
    policy,
    budget,
    protectedWindow: o.protectedWindow,
    sinks: o.sinks,
    compressionInterval: o.compressionInterval,
  });
  const gen: GenerateOptions = {
    maxTokens: o.maxTokens,
    sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed },
  };
  const bar = o.progress ? new SingleBar({ format: `${label.padEnd(24)} {bar} {value}/{total} tokens`, hideCursor: true }) : null;
  bar?.start(o.maxTokens, 0);
  let done: DoneEvent | null = null;
  for await (const e of engine.generate(promptIds, gen)) {
    if (e.type === 'token') bar?.update(e.index + 1);
    else done = e;
  }
  bar?.stop();
  if (done === null) throw new InvalidArgumentError('generation ended early');
  if (done.error !== undefined) throw done.error;
  const blocks = done.blocksPerHead.reduce((a, b) => a + b, 0);
  return {
    label,
    policy,
    text: done.text,
    tokens: done.tokens,
    finishReason: done.reason,
    kvBytes: blocks * engine.allocator.bytesPerBlock(engine.kvDtype),
    blocks,
    blocksPerHead: done.blocksPerHead,
    compressions: done.compressions,
    tokensPerSecond: done.tokensPerSecond,
    prefillMs: done.prefillMs,
  };
}

/**
 * The main job: the same prompt with the full cache and with a compression policy, and what
 * that did to the text, the KV memory and the speed.
 */
export async function runComparison(model: LoadedModel, o: RunOptions): Promise<RunReport> {
  const tokenizer = model.tokenizer;
  if (tokenizer === null) throw new InvalidArgumentError('This model has no tokenizer, so `kvc run` cannot encode a text prompt.');
  const promptIds = tokenizer.encode(o.prompt, { addBos: true });
  if (promptIds.length + o.maxTokens > model.config.maxContext) {
    throw new InvalidArgumentError(
      `The prompt (${promptIds.length} tokens) plus --max-tokens ${o.maxTokens} exceed the model's context of ${model.config.maxContext}.`,
    );
  }
  const full = await generateOnce(model, 'full cache', 'none', null, o, promptIds);
  const compressed = await generateOnce(model, o.policy, o.policy, o.budget, o, promptIds);
  const shape = kvShapeOf(model.config);
  return {
    model: { architecture: model.config.architecture, layers: shape.layers, kvHeads: shape.kvHeads, headDim: shape.headDim },
    promptTokens: promptIds.length,
    full,
    compressed,
    firstDifference: firstDivergence(full.tokens, compressed.tokens, true),
    memoryRatio: compressed.kvBytes > 0 ? full.kvBytes / compressed.kvBytes : Number.POSITIVE_INFINITY,
    kvBytesPerToken: kvBytesPerToken(shape, 'f32'),
  };
}
