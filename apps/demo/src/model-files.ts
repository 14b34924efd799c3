// Where the demo's models come from: the default model served beside the app (through Cache
// Storage, so it loads offline once fetched), or files a person picks from disk: a GGUF file,
// a Hugging Face folder (config.json + safetensors + tokenizer.json) or a llama2.c checkpoint.
import { ModelFormatError } from '@kvcompress/core';
import { type LoadedModel, loadGgufModel, loadHfModelFromSource, loadLlama2cModel, readLlama2cTokenizer } from '@kvcompress/models';
import { isHfLoaderFile, type ModelManifest } from './model-manifest.ts';

/** Bytes loaded so far out of the total. */
export type ProgressFn = (loaded: number, total: number) => void;

/** One picked file: a browser `File`, or anything else with a name and bytes (tests). */
export interface PickedFile {
  /** Path relative to the picked folder (`webkitRelativePath`), or the file name. */
  readonly name: string;
  readonly size: number;
  bytes(): Promise<Uint8Array>;
}

export interface ModelChoice {
  readonly model: LoadedModel;
  /** A short name for the header: the folder or file name. */
  readonly label: string;
}

/** The Cache Storage cache that holds model files. */
export const MODEL_CACHE = 'kvc-demo-models-v1';

/** llama2.c tokenizer file names (tokenizer.bin, tok512.bin, poem_tok.bin). */
function isLlama2cTokenizerName(name: string): boolean {
  return name === 'tokenizer.bin' || /^tok\d*\.bin$/.test(name) || name.endsWith('_tok.bin');
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/**
 * Picked names with the folder they share stripped (a picked folder `TinyLlama/` gives
 * `TinyLlama/config.json`), so the Hugging Face loader finds `config.json`.
 */
export function stripCommonFolder(names: readonly string[]): { folder: string; names: string[] } {
  const first = names[0];
  if (first === undefined || !first.includes('/')) return { folder: '', names: [...names] };
  const folder = first.slice(0, first.indexOf('/') + 1);
  if (!names.every((n) => n.startsWith(folder))) return { folder: '', names: [...names] };
  return { folder: folder.slice(0, -1), names: names.map((n) => n.slice(folder.length)) };
}

/**
 * Loads whatever model the picked files hold. Throws `ModelFormatError` with what to pick
 * when the files are not a model the demo can run.
 */
export async function loadModelFromFiles(files: readonly PickedFile[], onProgress?: ProgressFn): Promise<ModelChoice> {
  if (files.length === 0) throw new ModelFormatError('No files were picked. Pick a .gguf file, a Hugging Face folder or a llama2.c .bin.');
  const { folder, names } = stripCommonFolder(files.map((f) => f.name));
  const byName = new Map<string, PickedFile>(names.map((n, i) => [n, files[i] as PickedFile]));
  const total = files.reduce((s, f) => s + f.size, 0);
  let loaded = 0;
  const read = async (name: string): Promise<Uint8Array> => {
    const file = byName.get(name);
    if (file === undefined) throw new ModelFormatError(`The model needs ${name}, which was not picked. Pick it together with the others.`);
    const bytes = await file.bytes();
    loaded += bytes.byteLength;
    onProgress?.(loaded, total);
    return bytes;
  };
  const lower = names.map((n) => n.toLowerCase());

  if (names.includes('config.json')) {
    const model = await loadHfModelFromSource({ names: names.filter(isHfLoaderFile), read });
    return { model, label: folder || 'Hugging Face model' };
  }
  const ggufs = names.filter((_, i) => (lower[i] as string).endsWith('.gguf'));
  if (ggufs.length > 1) throw new ModelFormatError(`Pick one .gguf file at a time; ${ggufs.length} were picked (${ggufs.join(', ')}).`);
  if (ggufs.length === 1) {
    const name = ggufs[0] as string;
    return { model: loadGgufModel(await read(name)), label: baseName(name) };
  }
  if (lower.some((n) => n.endsWith('.safetensors'))) {
    throw new ModelFormatError(
      'A safetensors checkpoint needs its config.json (and tokenizer.json for text): pick the whole model folder, or select config.json, tokenizer.json and the .safetensors files together.',
    );
  }
  const bins = names.filter((n, i) => (lower[i] as string).endsWith('.bin') && !isLlama2cTokenizerName(baseName(n)));
  const tokenizers = names.filter((n) => isLlama2cTokenizerName(baseName(n))).sort();
  if (bins.length === 1) {
    const name = bins[0] as string;
    const tokenizerName = tokenizers[0];
    if (tokenizerName === undefined) {
      throw new ModelFormatError(
        `${baseName(name)} is a llama2.c checkpoint without its tokenizer: pick tokenizer.bin (or tok*.bin) together with it, so the demo can encode your prompt.`,
      );
    }
    const bytes = await read(name);
    const bare = loadLlama2cModel(bytes);
    const tokenizer = readLlama2cTokenizer(await read(tokenizerName), bare.config.vocabSize);
    return { model: loadLlama2cModel(bytes, { tokenizer }), label: baseName(name) };
  }
  if (bins.length > 1) {
    throw new ModelFormatError(`Pick one llama2.c checkpoint at a time; ${bins.length} .bin files were picked (${bins.join(', ')}).`);
  }
  throw new ModelFormatError(
    `None of the picked files is a model the demo can load (${names.slice(0, 6).join(', ')}${names.length > 6 ? ', …' : ''}). Pick a .gguf file, a Hugging Face folder (config.json + safetensors + tokenizer.json), or a llama2.c .bin with its tokenizer.bin.`,
  );
}

/** A browser `File` as a PickedFile (its path inside a picked folder when there is one). */
export function pickedFromFile(file: File): PickedFile {
  const relative = (file as File & { webkitRelativePath?: string }).webkitRelativePath;
  return {
    name: relative !== undefined && relative !== '' ? relative : file.name,
    size: file.size,
    bytes: async () => new Uint8Array(await file.arrayBuffer()),
  };
}

/** Reads a response body into one buffer, reporting progress. */
async function readBody(response: Response, expected: number, onChunk: (n: number) => void): Promise<Uint8Array> {
  const reader = response.body?.getReader();
  if (reader === undefined) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onChunk(bytes.byteLength);
    return bytes;
  }
  let out = new Uint8Array(expected > 0 ? expected : 1 << 20);
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.byteLength > out.byteLength) {
      const grown = new Uint8Array(Math.max(out.byteLength * 2, length + value.byteLength));
      grown.set(out.subarray(0, length));
      out = grown;
    }
    out.set(value, length);
    length += value.byteLength;
    onChunk(value.byteLength);
  }
  return length === out.byteLength ? out : out.slice(0, length);
}

/** Cache Storage where the page has it (secure contexts), else null. */
async function openModelCache(): Promise<Cache | null> {
  const storage = (globalThis as { caches?: CacheStorage }).caches;
  if (storage === undefined) return null;
  try {
    return await storage.open(MODEL_CACHE);
  } catch {
    return null;
  }
}

/**
 * Fetches a URL through the model cache: a cached copy when there is one (offline), else
 * the network, storing what it got.
 */
async function cachedFetch(cache: Cache | null, url: string): Promise<Response> {
  const hit = await cache?.match(url);
  if (hit !== undefined) return hit;
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new ModelFormatError(
      `Cannot download ${url} (${(error as Error).message}). Check the connection, or pick a model file from disk.`,
    );
  }
  if (!response.ok)
    throw new ModelFormatError(`Downloading ${url} failed with HTTP ${response.status}. Is the demo served with its model files?`);
  if (cache !== null) {
    try {
      await cache.put(url, response.clone());
    } catch {
      // Storage full or refused: the model still loads, just not offline.
    }
  }
  return response;
}

/** The manifest of a model served beside the app: the network first, the cached copy offline. */
async function fetchManifest(cache: Cache | null, url: string): Promise<ModelManifest> {
  let response: Response | undefined;
  try {
    const r = await fetch(url, { cache: 'no-cache' });
    if (r.ok) {
      response = r;
      await cache?.put(url, r.clone()).catch(() => undefined);
    }
  } catch {
    // Offline: fall back to the cached manifest.
  }
  response ??= await cache?.match(url);
  if (response === undefined) {
    throw new ModelFormatError(
      `The default model's manifest (${url}) could not be downloaded and is not cached. Serve the demo with \`pnpm demo\` (or from its build), or pick a model file from disk.`,
    );
  }
  const manifest = (await response.json()) as ModelManifest;
  if (!Array.isArray(manifest.files) || typeof manifest.name !== 'string') {
    throw new ModelFormatError(`${url} is not a model manifest (it needs "name" and "files"). Rebuild the demo.`);
  }
  return manifest;
}

/**
 * Loads the model published at `baseUrl` (a folder with manifest.json), each file through
 * Cache Storage keyed by its content hash, so a second visit (or an offline one) reads no
 * network and a changed model is fetched again.
 */
export async function loadServedModel(baseUrl: string, onProgress?: ProgressFn): Promise<ModelChoice> {
  const cache = await openModelCache();
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const manifest = await fetchManifest(cache, `${base}manifest.json`);
  const total = manifest.files.reduce((s, f) => s + f.size, 0);
  let loaded = 0;
  const entries = new Map(manifest.files.map((f) => [f.name, f]));
  const urlOf = (name: string) => `${base}${encodeURIComponent(name)}?v=${entries.get(name)?.sha256.slice(0, 16) ?? '0'}`;
  const model = await loadHfModelFromSource({
    names: manifest.files.map((f) => f.name),
    read: async (name) => {
      const entry = entries.get(name);
      const response = await cachedFetch(cache, urlOf(name));
      return readBody(response, entry?.size ?? 0, (n) => {
        loaded += n;
        onProgress?.(loaded, total);
      });
    },
  });
  if (cache !== null) await pruneOldVersions(cache, base, new Set(manifest.files.map((f) => new URL(urlOf(f.name), location.href).href)));
  return { model, label: manifest.name };
}

/** Deletes cached files of this model folder from earlier versions of the model. */
async function pruneOldVersions(cache: Cache, base: string, current: ReadonlySet<string>): Promise<void> {
  const folder = new URL(base, location.href).href;
  try {
    for (const request of await cache.keys()) {
      const url = new URL(request.url);
      if (!url.href.startsWith(folder) || !url.searchParams.has('v')) continue;
      if (!current.has(url.href)) await cache.delete(request);
    }
  } catch {
    // Pruning is housekeeping; a failure leaves old copies behind, nothing worse.
  }
}
