import { elementCount, ModelFormatError, type Tensor, type TensorDtype, UnsupportedModelError } from '@kvcompress/core';
import { describe, field, isPlainObject, listNames } from './util.ts';

/**
 * Reader for the safetensors format (https://github.com/huggingface/safetensors):
 *
 *   [u64 little-endian N][N bytes of UTF-8 JSON header][data]
 *
 * The header maps tensor names to `{ dtype, shape, data_offsets: [begin, end] }` (offsets
 * relative to the start of the data) and may hold `__metadata__`, a string-to-string map.
 * Every number in the header is checked before it is used; tensors are views into `bytes`.
 */

/** One parsed safetensors file. */
export interface SafetensorsFile {
  readonly fileName: string;
  /** `__metadata__` of the header (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors in header order, under their names in the file; `data` views `bytes`. */
  readonly tensors: ReadonlyMap<string, Tensor>;
  /** Byte offset of the data section (8 + header length). */
  readonly dataOffset: number;
}

/** A sharded checkpoint's `model.safetensors.index.json`. */
export interface SafetensorsIndex {
  readonly fileName: string;
  readonly metadata: Readonly<Record<string, unknown>>;
  /** Tensor name -> shard file name, in the order of the index. */
  readonly weightMap: ReadonlyMap<string, string>;
  /** The distinct shard files, in first-use order. */
  readonly shards: readonly string[];
}

/** Header size limit of the reference implementation (100 MB). */
export const MAX_SAFETENSORS_HEADER_BYTES = 100_000_000;
/** Most dimensions a tensor may have. */
const MAX_RANK = 8;

const SUPPORTED_DTYPES: Readonly<Record<string, { dtype: TensorDtype; bytes: number }>> = {
  F32: { dtype: 'f32', bytes: 4 },
  F16: { dtype: 'f16', bytes: 2 },
  BF16: { dtype: 'bf16', bytes: 2 },
};

/** Dtypes the safetensors format defines that kvcompress cannot use. */
const KNOWN_UNSUPPORTED_DTYPES = new Set([
  'F64',
  'I64',
  'U64',
  'I32',
  'U32',
  'I16',
  'U16',
  'I8',
  'U8',
  'BOOL',
  'F8_E4M3',
  'F8_E5M2',
  'F8_E8M0',
  'F6_E2M3',
  'F6_E3M2',
  'F4',
  'C64',
]);

/**
 * Keys of the top-level JSON object that occur more than once. `JSON.parse` keeps the last
 * one silently; the safetensors reference implementation refuses such headers. Assumes
 * `text` is valid JSON whose top level is an object.
 */
function duplicateTopLevelKeys(text: string): string[] {
  const seen = new Set<string>();
  const duplicates: string[] = [];
  let depth = 0;
  let i = 0;
  let expectKey = false;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i += 2;
        else if (d === 0x22) break;
        else i++;
      }
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(start, i + 1)) as string;
        if (seen.has(key)) duplicates.push(key);
        else seen.add(key);
        expectKey = false;
      }
      i++;
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x2c /* , */ && depth === 1) {
      expectKey = true;
    }
    i++;
  }
  return duplicates;
}

function readHeaderLength(bytes: Uint8Array, fileName: string): number {
  if (bytes.length < 8) {
    throw new ModelFormatError(
      `${fileName}: ${bytes.length} bytes is too short for a safetensors file (the 8-byte header length alone is missing).`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) {
    throw new ModelFormatError(
      `${fileName}: the header length field says ${n} bytes but only ${bytes.length - 8} bytes follow it; the file is truncated or not safetensors.`,
    );
  }
  if (n > BigInt(MAX_SAFETENSORS_HEADER_BYTES)) {
    throw new ModelFormatError(`${fileName}: header of ${n} bytes exceeds the ${MAX_SAFETENSORS_HEADER_BYTES}-byte limit of the format.`);
  }
  if (n < 2n) throw new ModelFormatError(`${fileName}: header length ${n} is too small to hold a JSON object.`);
  return Number(n);
}

function parseHeaderJson(bytes: Uint8Array, headerLength: number, fileName: string): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, 8 + headerLength));
  } catch {
    throw new ModelFormatError(`${fileName}: the ${headerLength}-byte header is not valid UTF-8.`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new ModelFormatError(`${fileName}: the header is not valid JSON (${(err as Error).message}).`);
  }
  if (!isPlainObject(header)) {
    throw new ModelFormatError(`${fileName}: the header must be a JSON object of tensors, found ${describe(header)}.`);
  }
  const duplicates = duplicateTopLevelKeys(text);
  if (duplicates.length > 0) {
    throw new ModelFormatError(`${fileName}: the header names ${duplicates.map((d) => JSON.stringify(d)).join(', ')} more than once.`);
  }
  return header;
}

function parseMetadata(value: unknown, fileName: string): Record<string, string> {
  if (!isPlainObject(value)) {
    throw new ModelFormatError(`${fileName}: __metadata__ must be an object of strings, found ${describe(value)}.`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw new ModelFormatError(`${fileName}: __metadata__.${k} must be a string, found ${describe(v)}.`);
    out[k] = v;
  }
  return out;
}

interface Entry {
  readonly name: string;
  readonly dtype: TensorDtype;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

function parseEntry(name: string, value: unknown, dataLength: number, fileName: string): Entry {
  const where = `${fileName}: tensor ${JSON.stringify(name)}`;
  if (!isPlainObject(value))
    throw new ModelFormatError(`${where} must be an object with dtype, shape and data_offsets, found ${describe(value)}.`);
  const { dtype, shape, data_offsets: offsets } = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };

  if (typeof dtype !== 'string') throw new ModelFormatError(`${where} has dtype ${describe(dtype)}; expected a string such as "F32".`);
  const type = SUPPORTED_DTYPES[dtype];
  if (type === undefined) {
    if (KNOWN_UNSUPPORTED_DTYPES.has(dtype)) {
      throw new UnsupportedModelError(
        `${where} has dtype ${dtype}; kvcompress reads safetensors weights in F32, F16 or BF16 only. Convert the checkpoint (e.g. torch_dtype=bfloat16) or use a GGUF file.`,
      );
    }
    throw new ModelFormatError(`${where} has dtype ${describe(dtype)}, which is not a safetensors dtype.`);
  }

  if (!Array.isArray(shape)) throw new ModelFormatError(`${where} has shape ${describe(shape)}; expected an array of integers.`);
  if (shape.length > MAX_RANK) throw new ModelFormatError(`${where} has ${shape.length} dimensions; at most ${MAX_RANK} are supported.`);
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new ModelFormatError(`${where} has shape [${shape.map(describe).join(', ')}]; dimensions must be non-negative integers.`);
    }
  }
  const dims = shape as number[];

  if (!Array.isArray(offsets) || offsets.length !== 2) {
    throw new ModelFormatError(`${where} has data_offsets ${describe(offsets)}; expected [begin, end].`);
  }
  const [begin, end] = offsets as [unknown, unknown];
  if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end)) {
    throw new ModelFormatError(`${where} has data_offsets [${describe(begin)}, ${describe(end)}]; expected two integers.`);
  }
  if (begin < 0 || end < begin || end > dataLength) {
    throw new ModelFormatError(
      `${where} has data_offsets [${begin}, ${end}] outside the ${dataLength}-byte data section; the file is truncated or corrupt.`,
    );
  }
  // Check the element count without overflow: a zero dimension makes it 0; otherwise any
  // dimension larger than the byte range already rules the shape out.
  const count = dims.includes(0) ? 0 : dims.some((d) => d > dataLength) ? Number.POSITIVE_INFINITY : elementCount(dims);
  const expected = count * type.bytes;
  if (expected !== end - begin) {
    throw new ModelFormatError(
      `${where} is ${dtype} [${dims.join(', ')}], which takes ${Number.isFinite(expected) ? expected : 'more than the file'} bytes, but data_offsets [${begin}, ${end}] hold ${end - begin}.`,
    );
  }
  return { name, dtype: type.dtype, shape: dims.slice(), begin, end };
}

/**
 * Parses a safetensors file. Tensors keep their names from the file and their `data` is a
 * view of `bytes` (no copy). Throws `ModelFormatError` for anything malformed (lengths,
 * JSON, offsets, shapes, overlaps, duplicate names) and `UnsupportedModelError` for a dtype
 * other than F32, F16 and BF16.
 *
 * Gaps between tensors and bytes after the last one are tolerated.
 */
export function parseSafetensors(bytes: Uint8Array, fileName = 'model.safetensors'): SafetensorsFile {
  const headerLength = readHeaderLength(bytes, fileName);
  const header = parseHeaderJson(bytes, headerLength, fileName);
  const dataOffset = 8 + headerLength;
  const dataLength = bytes.length - dataOffset;

  let metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value, fileName);
      continue;
    }
    entries.push(parseEntry(name, value, dataLength, fileName));
  }

  const sorted = entries.filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.begin < prev.end) {
      throw new ModelFormatError(
        `${fileName}: tensors ${JSON.stringify(prev.name)} [${prev.begin}, ${prev.end}] and ${JSON.stringify(cur.name)} [${cur.begin}, ${cur.end}] overlap.`,
      );
    }
  }

  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    tensors.set(e.name, {
      name: e.name,
      shape: e.shape,
      dtype: e.dtype,
      data: bytes.subarray(dataOffset + e.begin, dataOffset + e.end),
    });
  }
  return { fileName, metadata, tensors, dataOffset };
}

/** Shard names must stay inside the checkpoint directory. */
function checkShardName(file: string, indexName: string, tensor: string): void {
  const bad =
    file.length === 0 ||
    file.startsWith('/') ||
    file.includes('\\') ||
    file.includes('\0') ||
    /^[A-Za-z]:/.test(file) ||
    file.split('/').some((part) => part === '..' || part === '.' || part === '');
  if (bad) {
    throw new ModelFormatError(
      `${indexName}: weight_map maps ${JSON.stringify(tensor)} to ${describe(file)}, which is not a file name in the checkpoint directory.`,
    );
  }
}

/**
 * Parses `model.safetensors.index.json` (already JSON-decoded): `weight_map` maps every
 * tensor name to the shard file holding it.
 */
export function parseSafetensorsIndex(json: unknown, fileName = 'model.safetensors.index.json'): SafetensorsIndex {
  if (!isPlainObject(json)) throw new ModelFormatError(`${fileName} must be a JSON object, found ${describe(json)}.`);
  const weightMap = field(json, 'weight_map');
  if (!isPlainObject(weightMap)) throw new ModelFormatError(`${fileName} must have a "weight_map" object, found ${describe(weightMap)}.`);
  const map = new Map<string, string>();
  const shards: string[] = [];
  const seen = new Set<string>();
  for (const [tensor, file] of Object.entries(weightMap)) {
    if (typeof file !== 'string')
      throw new ModelFormatError(`${fileName}: weight_map[${JSON.stringify(tensor)}] must be a file name, found ${describe(file)}.`);
    checkShardName(file, fileName, tensor);
    map.set(tensor, file);
    if (!seen.has(file)) {
      seen.add(file);
      shards.push(file);
    }
  }
  if (map.size === 0) throw new ModelFormatError(`${fileName}: weight_map is empty.`);
  const metadata = field(json, 'metadata');
  if (metadata !== undefined && metadata !== null && !isPlainObject(metadata)) {
    throw new ModelFormatError(`${fileName}: "metadata" must be an object, found ${describe(metadata)}.`);
  }
  return { fileName, metadata: isPlainObject(metadata) ? metadata : {}, weightMap: map, shards };
}

/** Tensors of a sharded checkpoint, and each shard's `__metadata__`. */
export interface ShardedSafetensors {
  readonly tensors: ReadonlyMap<string, Tensor>;
  readonly shardMetadata: ReadonlyMap<string, Readonly<Record<string, string>>>;
}

/**
 * Reads every shard named by `index` once (through `readShard`) and checks that each
 * tensor sits in the shard the index names, exactly once, and that no shard holds tensors
 * the index does not list. Tensors come out in the order of the index.
 */
export async function readShardedSafetensors(
  index: SafetensorsIndex,
  readShard: (file: string) => Uint8Array | Promise<Uint8Array>,
): Promise<ShardedSafetensors> {
  const found = new Map<string, Tensor>();
  const shardMetadata = new Map<string, Readonly<Record<string, string>>>();
  for (const shard of index.shards) {
    const file = parseSafetensors(await readShard(shard), shard);
    shardMetadata.set(shard, file.metadata);
    for (const [name, tensor] of file.tensors) {
      const expected = index.weightMap.get(name);
      if (expected === undefined) {
        throw new ModelFormatError(`${shard} holds tensor ${JSON.stringify(name)}, which ${index.fileName} does not list.`);
      }
      if (expected !== shard) {
        throw new ModelFormatError(`${shard} holds tensor ${JSON.stringify(name)}, which ${index.fileName} places in ${expected}.`);
      }
      found.set(name, tensor);
    }
  }
  const missing = [...index.weightMap.keys()].filter((name) => !found.has(name));
  if (missing.length > 0) {
    throw new ModelFormatError(`${index.fileName} lists ${missing.length} tensor(s) that their shards do not hold: ${listNames(missing)}.`);
  }
  const tensors = new Map<string, Tensor>();
  for (const name of index.weightMap.keys()) tensors.set(name, found.get(name)!);
  return { tensors, shardMetadata };
}
