// Node.js only: file system access is imported lazily so the package stays browser-safe.
import { ModelFormatError } from '@kvcompress/core';
import { loadGgufModel } from './gguf-model.ts';
import { loadHfModel, readWholeFile } from './hf/load.ts';
import { loadLlama2cModel } from './llama2c.ts';
import { readLlama2cTokenizer } from './spm-tokenizer.ts';
import type { LoadedModel } from './types.ts';

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian

async function readBytes(file: string): Promise<Uint8Array> {
  try {
    return await readWholeFile(file);
  } catch (error) {
    if (error instanceof ModelFormatError) throw error;
    throw new ModelFormatError(`Cannot read ${file}: ${(error as Error).message}`);
  }
}

/**
 * Loads a model from disk, choosing the loader from what is there:
 * - a `.gguf` file, or a folder holding exactly one;
 * - a Hugging Face folder (`config.json` + `model.safetensors` or a sharded index), or a
 *   `.safetensors` file inside one;
 * - a llama2.c `.bin` checkpoint, with its tokenizer (`tokenizer.bin` or `tok*.bin` beside
 *   it), or a folder holding one.
 */
export async function loadModel(target: string, options: { tokenizerPath?: string } = {}): Promise<LoadedModel> {
  const { readdir, stat } = await import('node:fs/promises');
  const path = await import('node:path');
  let info: Awaited<ReturnType<typeof stat>>;
  try {
    info = await stat(target);
  } catch {
    throw new ModelFormatError(`No model at ${target}. Pass --model with a .gguf file, a llama2.c .bin, or a Hugging Face folder.`);
  }
  if (info.isDirectory()) {
    const names = (await readdir(target)).sort();
    if (names.includes('config.json')) return loadHfModel(target);
    const ggufs = names.filter((n) => n.endsWith('.gguf'));
    const bins = names.filter((n) => n.endsWith('.bin') && !isTokenizerName(n));
    if (ggufs.length === 1) return loadModel(path.join(target, ggufs[0] as string), options);
    if (ggufs.length === 0 && bins.length === 1) return loadModel(path.join(target, bins[0] as string), options);
    throw new ModelFormatError(
      `Cannot tell which model to load in ${target}: found ${ggufs.length} .gguf and ${bins.length} .bin files. Name the file with --model.`,
    );
  }
  if (target.endsWith('.safetensors')) return loadHfModel(path.dirname(target));
  const bytes = await readBytes(target);
  if (bytes.byteLength >= 4 && new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) === GGUF_MAGIC) return loadGgufModel(bytes);
  // Otherwise a llama2.c checkpoint; its tokenizer sits beside it.
  const model = loadLlama2cModel(bytes);
  const tokenizerFile = options.tokenizerPath ?? (await findLlama2cTokenizer(path.dirname(target), readdir, path.join));
  if (tokenizerFile === null) return model;
  const tokenizer = readLlama2cTokenizer(await readBytes(tokenizerFile), model.config.vocabSize);
  return { ...model, tokenizer, metadata: { ...model.metadata, tokenizer: path.basename(tokenizerFile) } };
}

function isTokenizerName(name: string): boolean {
  return name === 'tokenizer.bin' || /^tok\d*\.bin$/.test(name) || name.endsWith('_tok.bin');
}

async function findLlama2cTokenizer(
  dir: string,
  readdir: (d: string) => Promise<string[]>,
  join: (...parts: string[]) => string,
): Promise<string | null> {
  const names = (await readdir(dir)).filter(isTokenizerName).sort();
  return names.length > 0 ? join(dir, names[0] as string) : null;
}
