// Where the tests find the default model: the repository's models/kvc-20m-4k (committed).
// A missing folder fails the tests that need it; it never skips them.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { defaultModelDir as committedModelDir } from '@kvcompress/test-support';

export const DEFAULT_MODEL_DIR = committedModelDir;

/** The default model's folder; throws when it is missing. */
export function defaultModelDir(): string {
  if (!existsSync(path.join(DEFAULT_MODEL_DIR, 'config.json'))) {
    throw new Error(
      `The demo's default model is missing: ${DEFAULT_MODEL_DIR} should hold config.json, the safetensors shards and tokenizer.json.`,
    );
  }
  return DEFAULT_MODEL_DIR;
}
