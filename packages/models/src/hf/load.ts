import { InvalidArgumentError, type ModelConfig, ModelFormatError, type Tensor, UnsupportedModelError } from '@kvcompress/core';
import type { LoadedModel, Tokenizer } from '../types.ts';
import { configFromHf, hfSlidingWindow } from './config.ts';
import { renameHfTensors } from './names.ts';
import { parseSafetensors, parseSafetensorsIndex, readShardedSafetensors } from './safetensors.ts';
import { createHfTokenizer } from './tokenizer.ts';
import { describe, field, isPlainObject, listNames } from './util.ts';

/**
 * Loading a Hugging Face (transformers) checkpoint directory:
 *
 *   config.json                                      required
 *   model.safetensors | model.safetensors.index.json + shards
 *   tokenizer.json, tokenizer_config.json            optional (tokenizer is null without tokenizer.json)
 *   chat_template.jinja                              optional (newer transformers save the template here)
 *   generation_config.json                           optional (its eos_token_id are added to the config's)
 */

/** Files of a checkpoint, by name relative to its directory. */
export interface HfFileSource {
  readonly names: readonly string[];
  read(name: string): Promise<Uint8Array>;
}

const INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_FILE = 'model.safetensors';

/** Canonical tensor names of a model and their shapes, in file order. */
export function expectedTensorShapes(config: ModelConfig): Map<string, number[]> {
  const { hiddenSize: h, intermediateSize: ff, numHeads, numKvHeads, headDim, vocabSize } = config;
  const q = numHeads * headDim;
  const kv = numKvHeads * headDim;
  const shapes = new Map<string, number[]>();
  shapes.set('token_embd.weight', [vocabSize, h]);
  for (let l = 0; l < config.numLayers; l++) {
    const b = `blk.${l}.`;
    shapes.set(`${b}attn_norm.weight`, [h]);
    shapes.set(`${b}attn_q.weight`, [q, h]);
    if (config.attentionBias) shapes.set(`${b}attn_q.bias`, [q]);
    shapes.set(`${b}attn_k.weight`, [kv, h]);
    if (config.attentionBias) shapes.set(`${b}attn_k.bias`, [kv]);
    shapes.set(`${b}attn_v.weight`, [kv, h]);
    if (config.attentionBias) shapes.set(`${b}attn_v.bias`, [kv]);
    shapes.set(`${b}attn_output.weight`, [h, q]);
    shapes.set(`${b}ffn_norm.weight`, [h]);
    shapes.set(`${b}ffn_gate.weight`, [ff, h]);
    shapes.set(`${b}ffn_up.weight`, [ff, h]);
    shapes.set(`${b}ffn_down.weight`, [h, ff]);
  }
  shapes.set('output_norm.weight', [h]);
  if (!config.tiedEmbeddings) shapes.set('output.weight', [vocabSize, h]);
  return shapes;
}

/** Checks `tensors` against the config and returns them in canonical order. */
function checkTensors(config: ModelConfig, tensors: Map<string, Tensor>): Map<string, Tensor> {
  const expected = expectedTensorShapes(config);
  const missing = [...expected.keys()].filter((name) => !tensors.has(name));
  const extra = [...tensors.keys()].filter((name) => !expected.has(name));
  if (missing.length > 0 || extra.length > 0) {
    const parts: string[] = [];
    if (missing.length > 0) parts.push(`missing ${missing.length} tensor(s): ${listNames(missing)}`);
    if (extra.length > 0) parts.push(`${extra.length} tensor(s) the config does not call for: ${listNames(extra)}`);
    throw new ModelFormatError(
      `The checkpoint does not match config.json (${config.architecture}, ${config.numLayers} layers${config.attentionBias ? ', QKV bias' : ''}): ${parts.join('; ')}.`,
    );
  }
  const ordered = new Map<string, Tensor>();
  for (const [name, shape] of expected) {
    const tensor = tensors.get(name)!;
    if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFormatError(`Tensor ${name} has shape [${tensor.shape.join(', ')}] but config.json implies [${shape.join(', ')}].`);
    }
    ordered.set(name, tensor);
  }
  return ordered;
}

function decodeJson(bytes: Uint8Array, name: string): unknown {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFormatError(`${name} is not valid UTF-8.`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ModelFormatError(`${name} is not valid JSON (${(err as Error).message}).`);
  }
}

function decodeText(bytes: Uint8Array, name: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFormatError(`${name} is not valid UTF-8.`);
  }
}

/** `eos_token_id` of generation_config.json (instruct models list their end-of-turn tokens there). */
function generationEosIds(json: unknown, vocabSize: number): number[] {
  if (!isPlainObject(json)) throw new ModelFormatError(`generation_config.json must be a JSON object, found ${describe(json)}.`);
  const v = field(json, 'eos_token_id');
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const id of list) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= vocabSize) {
      throw new ModelFormatError(`generation_config.json: eos_token_id must be token ids below ${vocabSize}, found ${describe(v)}.`);
    }
  }
  return list as number[];
}

/** Loads a checkpoint from any file source (filesystem, browser files, fetch). */
export async function loadHfModelFromSource(source: HfFileSource): Promise<LoadedModel> {
  const names = new Set(source.names);
  const readJson = async (name: string): Promise<unknown> => decodeJson(await source.read(name), name);
  const optionalJson = async (name: string): Promise<unknown> => (names.has(name) ? readJson(name) : undefined);

  if (!names.has('config.json')) {
    throw new ModelFormatError(
      `No config.json among the checkpoint files (${listNames([...names].sort())}); this is not a Hugging Face model directory.`,
    );
  }
  const configJson = await readJson('config.json');

  let hfTensors: ReadonlyMap<string, Tensor>;
  let weightFiles: string[];
  let safetensorsMetadata: Record<string, unknown>;
  if (names.has(INDEX_FILE)) {
    const index = parseSafetensorsIndex(await readJson(INDEX_FILE), INDEX_FILE);
    const absent = index.shards.filter((s) => !names.has(s));
    if (absent.length > 0) throw new ModelFormatError(`${INDEX_FILE} names shard file(s) that are not there: ${listNames(absent)}.`);
    const sharded = await readShardedSafetensors(index, (file) => source.read(file));
    hfTensors = sharded.tensors;
    weightFiles = [...index.shards];
    safetensorsMetadata = { ...index.metadata, shards: Object.fromEntries(sharded.shardMetadata) };
  } else if (names.has(SINGLE_FILE)) {
    const file = parseSafetensors(await source.read(SINGLE_FILE), SINGLE_FILE);
    hfTensors = file.tensors;
    weightFiles = [SINGLE_FILE];
    safetensorsMetadata = { ...file.metadata };
  } else {
    const others = [...names].filter((n) => n.endsWith('.bin') || n.endsWith('.pt') || n.endsWith('.pth') || n.endsWith('.safetensors'));
    if (others.length > 0) {
      throw new UnsupportedModelError(
        `The checkpoint has no ${SINGLE_FILE} or ${INDEX_FILE}, only ${listNames(others)}; kvcompress reads transformers safetensors checkpoints (save with safe_serialization=True).`,
      );
    }
    throw new ModelFormatError(`The checkpoint has no weights: neither ${SINGLE_FILE} nor ${INDEX_FILE} is there.`);
  }

  let config = configFromHf(configJson, new Set(hfTensors.keys()));
  const generationConfig = await optionalJson('generation_config.json');
  if (generationConfig !== undefined) {
    const extra = generationEosIds(generationConfig, config.vocabSize);
    config = { ...config, eosTokenIds: [...new Set([...config.eosTokenIds, ...extra])] };
  }

  const renamed = renameHfTensors(hfTensors);
  // With tie_word_embeddings transformers ties lm_head to the embedding and ignores a saved
  // lm_head.weight; so do we.
  if (config.tiedEmbeddings) renamed.delete('output.weight');
  const tensors = checkTensors(config, renamed);

  let tokenizer: Tokenizer | null = null;
  if (names.has('tokenizer.json')) {
    const chatTemplate = names.has('chat_template.jinja')
      ? decodeText(await source.read('chat_template.jinja'), 'chat_template.jinja')
      : null;
    tokenizer = createHfTokenizer(await readJson('tokenizer.json'), await optionalJson('tokenizer_config.json'), {
      chatTemplate,
      extraEosTokenIds: config.eosTokenIds,
    });
    if (tokenizer.vocabSize > config.vocabSize) {
      throw new ModelFormatError(
        `tokenizer.json has ${tokenizer.vocabSize} tokens but the model's vocabulary (config.json vocab_size) has ${config.vocabSize}; they belong to different models.`,
      );
    }
  }

  const metadata: Record<string, unknown> = {
    ...(configJson as Record<string, unknown>),
    // Attention is always full; a model trained with a sliding window (Mistral v0.1) is exact
    // only for contexts below it.
    'kvcompress.sliding_window': hfSlidingWindow(configJson),
    'kvcompress.weight_files': weightFiles,
    'kvcompress.safetensors_metadata': safetensorsMetadata,
  };
  if (generationConfig !== undefined) Object.assign(metadata, { 'kvcompress.generation_config': generationConfig });

  return { format: 'safetensors', config, tensors, tokenizer, metadata };
}

/**
 * Loads a checkpoint from files already in memory (e.g. picked in a browser), keyed by
 * file name. Keys may carry a common folder prefix (`TinyLlama/config.json`).
 */
export async function loadHfModelFromFiles(files: ReadonlyMap<string, Uint8Array>): Promise<LoadedModel> {
  let prefix = '';
  if (!files.has('config.json')) {
    const configs = [...files.keys()].filter((k) => k.endsWith('/config.json'));
    if (configs.length === 1) prefix = configs[0]!.slice(0, -'config.json'.length);
  }
  const byName = new Map<string, Uint8Array>();
  for (const [key, bytes] of files) {
    if (!(bytes instanceof Uint8Array))
      throw new InvalidArgumentError(`File ${JSON.stringify(key)} must be a Uint8Array, got ${describe(bytes)}.`);
    if (key.startsWith(prefix)) byName.set(key.slice(prefix.length), bytes);
  }
  return loadHfModelFromSource({
    names: [...byName.keys()],
    read: async (name) => {
      const bytes = byName.get(name);
      if (bytes === undefined) throw new ModelFormatError(`Checkpoint file ${name} is missing.`);
      return bytes;
    },
  });
}

/** Reads a whole file into one Uint8Array (fs.readFile stops at 2 GiB; shards are often larger). */
export async function readWholeFile(path: string): Promise<Uint8Array> {
  const { open } = await import('node:fs/promises');
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    const bytes = new Uint8Array(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await handle.read(bytes, done, Math.min(size - done, 1 << 30), done);
      if (bytesRead === 0) throw new ModelFormatError(`${path} ended after ${done} of ${size} bytes while being read.`);
      done += bytesRead;
    }
    return bytes;
  } finally {
    await handle.close();
  }
}

/** Loads a checkpoint directory from the filesystem (Node.js). */
export async function loadHfModel(dir: string): Promise<LoadedModel> {
  if (typeof dir !== 'string' || dir.length === 0)
    throw new InvalidArgumentError(`loadHfModel() needs a directory path, got ${describe(dir)}.`);
  const { readdir } = await import('node:fs/promises');
  const { join } = await import('node:path');
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new InvalidArgumentError(`Cannot read the model directory ${dir}: ${(err as Error).message}`);
  }
  return loadHfModelFromSource({
    names,
    read: async (name) => {
      try {
        return await readWholeFile(join(dir, name));
      } catch (err) {
        if (err instanceof ModelFormatError) throw err;
        throw new ModelFormatError(`Cannot read ${join(dir, name)}: ${(err as Error).message}`);
      }
    },
  });
}
