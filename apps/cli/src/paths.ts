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

/**
 * The default model: KVC_MODEL, else the project's own kvc-20m-4k committed in models/
 * (trained by tooling/train; no download). Null when that path does not exist.
 */
export function defaultModelPath(): string | null {
  const p = process.env['KVC_MODEL'] ?? path.join(repoRoot, 'models', 'kvc-20m-4k');
  return existsSync(p) ? p : null;
}

export const NO_DEFAULT_MODEL =
  'No model given and the default (models/kvc-20m-4k in the repository, or KVC_MODEL) is not there. ' +
  'Point --model at a .gguf file, a llama2.c .bin (with its tokenizer beside it) or a Hugging Face folder (config.json + model.safetensors + tokenizer.json), ' +
  'or set KVC_MODEL to one.';

/** `kvc eval`'s default model: the default model. */
export function defaultEvalModelPath(): string {
  const p = defaultModelPath();
  if (p === null) throw new KvCompressError('NO_MODEL', NO_DEFAULT_MODEL);
  return p;
}

/** `kvc eval`'s default held-out text: Alice in Wonderland, which the default model never saw. */
export function defaultEvalTextPath(): string {
  const p = path.join(sharedDir(), 'data', 'gutenberg', 'pg11_alice_in_wonderland.txt');
  if (!existsSync(p)) {
    throw new KvCompressError('NO_TEXT', `No held-out text at ${p}. Pass --text with a UTF-8 text file, or set KVC_SHARED_DIR.`);
  }
  return p;
}
