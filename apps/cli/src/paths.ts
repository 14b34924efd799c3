import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvCompressError } from '@kvcompress/core';

/** The repository root (apps/cli/src/../../..). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The project's shared folder: KVC_SHARED_DIR, else ../shared beside the checkout. */
export function sharedDir(): string {
  return process.env['KVC_SHARED_DIR'] ?? path.resolve(repoRoot, '../shared');
}

/** The default model: stories260K from the shared folder, or null with the reason. */
export function defaultModelPath(): string | null {
  const p = path.join(sharedDir(), 'models', 'stories260K', 'stories260K.bin');
  return existsSync(p) ? p : null;
}

export const NO_DEFAULT_MODEL =
  'No model given and the default (../shared/models/stories260K) is not here. ' +
  'Point --model at a .gguf file, a llama2.c .bin (with its tokenizer beside it) or a Hugging Face folder (config.json + model.safetensors + tokenizer.json), ' +
  'or set KVC_SHARED_DIR to the folder that holds models/stories260K.';

/** `kvc eval`'s default model: the stories260K GGUF (it embeds its tokenizer). */
export function defaultEvalModelPath(): string {
  const p = path.join(sharedDir(), 'models', 'stories260K', 'stories260K.gguf');
  if (!existsSync(p)) throw new KvCompressError('NO_MODEL', NO_DEFAULT_MODEL);
  return p;
}

/** `kvc eval`'s default held-out text: the TinyStories validation excerpt. */
export function defaultEvalTextPath(): string {
  const p = path.join(sharedDir(), 'data', 'tinystories-valid', 'TinyStories-valid-first1000.txt');
  if (!existsSync(p)) {
    throw new KvCompressError('NO_TEXT', `No held-out text at ${p}. Pass --text with a UTF-8 text file, or set KVC_SHARED_DIR.`);
  }
  return p;
}
