/**
 * GGUF v2 / v3 reader (little-endian). Every read is bounds-checked and no allocation is
 * larger than what the remaining bytes can hold, so a corrupt or hostile file gives a
 * `ModelFormatError` (or `UnsupportedModelError` for a valid file we cannot use), never a
 * crash, a hang or a huge allocation. Tensor data is not copied: each tensor's `data` is a
 * view of the file bytes.
 *
 * Layout (ggml/docs/gguf.md): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
 * kv_count × { string key, u32 type, value }, tensor_count × { string name, u32 n_dims,
 * u64 ne[n_dims], u32 ggml_type, u64 offset }, padding to `general.alignment`, then the
 * data section; tensor offsets are relative to its start.
 */
import { DTYPE_BLOCK, ModelFormatError, type Tensor, type TensorDtype, UnsupportedModelError } from '@kvcompress/core';

/** A metadata value. 64-bit integers are numbers when safe, else bigints; numeric arrays are typed arrays. */
export type GgufValue =
  | number
  | bigint
  | boolean
  | string
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | readonly GgufValue[];

/** GGUF metadata value type ids. */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

const VALUE_TYPE_NAMES = [
  'uint8',
  'int8',
  'uint16',
  'int16',
  'uint32',
  'int32',
  'float32',
  'bool',
  'string',
  'array',
  'uint64',
  'int64',
  'float64',
];

/** ggml type ids: name, values per block, bytes per block (ggml.c type_traits). Gaps are removed types. */
const GGML_TYPES: ReadonlyMap<number, { readonly name: string; readonly blck: number; readonly size: number }> = new Map([
  [0, { name: 'F32', blck: 1, size: 4 }],
  [1, { name: 'F16', blck: 1, size: 2 }],
  [2, { name: 'Q4_0', blck: 32, size: 18 }],
  [3, { name: 'Q4_1', blck: 32, size: 20 }],
  [6, { name: 'Q5_0', blck: 32, size: 22 }],
  [7, { name: 'Q5_1', blck: 32, size: 24 }],
  [8, { name: 'Q8_0', blck: 32, size: 34 }],
  [9, { name: 'Q8_1', blck: 32, size: 36 }],
  [10, { name: 'Q2_K', blck: 256, size: 84 }],
  [11, { name: 'Q3_K', blck: 256, size: 110 }],
  [12, { name: 'Q4_K', blck: 256, size: 144 }],
  [13, { name: 'Q5_K', blck: 256, size: 176 }],
  [14, { name: 'Q6_K', blck: 256, size: 210 }],
  [15, { name: 'Q8_K', blck: 256, size: 292 }],
  [16, { name: 'IQ2_XXS', blck: 256, size: 66 }],
  [17, { name: 'IQ2_XS', blck: 256, size: 74 }],
  [18, { name: 'IQ3_XXS', blck: 256, size: 98 }],
  [19, { name: 'IQ1_S', blck: 256, size: 50 }],
  [20, { name: 'IQ4_NL', blck: 32, size: 18 }],
  [21, { name: 'IQ3_S', blck: 256, size: 110 }],
  [22, { name: 'IQ2_S', blck: 256, size: 82 }],
  [23, { name: 'IQ4_XS', blck: 256, size: 136 }],
  [24, { name: 'I8', blck: 1, size: 1 }],
  [25, { name: 'I16', blck: 1, size: 2 }],
  [26, { name: 'I32', blck: 1, size: 4 }],
  [27, { name: 'I64', blck: 1, size: 8 }],
  [28, { name: 'F64', blck: 1, size: 8 }],
  [29, { name: 'IQ1_M', blck: 256, size: 56 }],
  [30, { name: 'BF16', blck: 1, size: 2 }],
  [34, { name: 'TQ1_0', blck: 256, size: 54 }],
  [35, { name: 'TQ2_0', blck: 256, size: 66 }],
  [39, { name: 'MXFP4', blck: 32, size: 17 }],
]);

const DTYPE_OF_GGML: ReadonlyMap<number, TensorDtype> = new Map<number, TensorDtype>([
  [0, 'f32'],
  [1, 'f16'],
  [30, 'bf16'],
  [8, 'q8_0'],
  [2, 'q4_0'],
  [12, 'q4_k'],
  [14, 'q6_k'],
]);

/** The ggml type name of a type id (`Q5_1`, `IQ2_XS`, ...), or `type <id>` for ids ggml does not define. */
export function ggmlTypeName(type: number): string {
  return GGML_TYPES.get(type)?.name ?? `type ${type}`;
}

export interface GgufTensorInfo {
  readonly name: string;
  /** Dimensions as GGUF stores them (`ne`, fastest-varying first). */
  readonly ne: readonly number[];
  /** Row-major shape, `ne` reversed: `[out, in]` for a matrix. */
  readonly shape: readonly number[];
  readonly ggmlType: number;
  readonly typeName: string;
  /** Our dtype, or null for a ggml type we cannot decode (only with `allowUnsupportedTypes`). */
  readonly dtype: TensorDtype | null;
  /** Offset of the data in the file (absolute). */
  readonly fileOffset: number;
  readonly byteLength: number;
}

export interface GgufFile {
  readonly version: number;
  readonly alignment: number;
  /** Key-value metadata in file order (an object without prototype). */
  readonly metadata: Readonly<Record<string, GgufValue>>;
  /** Value type of each metadata key (`GgufType`), and for arrays the element type. */
  readonly metadataTypes: Readonly<Record<string, { readonly type: number; readonly elementType?: number }>>;
  /** Every tensor in file order. */
  readonly tensorInfos: readonly GgufTensorInfo[];
  /** Tensors of supported types by name; `data` views the input bytes. */
  readonly tensors: ReadonlyMap<string, Tensor>;
  /** Absolute offset of the data section. */
  readonly dataOffset: number;
}

export interface ParseGgufOptions {
  /**
   * Keep tensors of ggml types we cannot decode (`Q5_1`, `IQ*`, ...) in `tensorInfos` instead
   * of throwing `UnsupportedModelError` (for inspecting a file). They are left out of `tensors`.
   */
  readonly allowUnsupportedTypes?: boolean;
}

const MAX_DIMS = 4;
const MAX_ARRAY_DEPTH = 16;
const DEFAULT_ALIGNMENT = 32;

class Reader {
  pos = 0;
  readonly view: DataView;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  readonly bytes: Uint8Array;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.byteLength - this.pos;
  }

  need(n: number, what: string): void {
    if (n > this.remaining) {
      throw new ModelFormatError(
        `GGUF file is truncated: ${what} at offset ${this.pos} needs ${n} bytes but only ${this.remaining} remain (file size ${this.bytes.byteLength}).`,
      );
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.pos++);
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** A u64 that must be a count or size: rejected when above 2^53. */
  u64(what: string): number {
    this.need(8, what);
    const lo = this.view.getUint32(this.pos, true);
    const hi = this.view.getUint32(this.pos + 4, true);
    if (hi >= 0x200000) {
      throw new ModelFormatError(
        `GGUF ${what} at offset ${this.pos} is ${this.view.getBigUint64(this.pos, true)}, which is absurdly large (file size ${this.bytes.byteLength}).`,
      );
    }
    this.pos += 8;
    return hi * 0x100000000 + lo;
  }

  /** A count of items that each take at least `minItemBytes`: rejected when the rest of the file cannot hold them. */
  count(what: string, minItemBytes: number): number {
    const at = this.pos;
    const n = this.u64(what);
    if (n * minItemBytes > this.remaining) {
      throw new ModelFormatError(
        `GGUF ${what} at offset ${at} is ${n}, but the ${this.remaining} bytes left in the file cannot hold that many (at least ${minItemBytes} bytes each).`,
      );
    }
    return n;
  }

  string(what: string): string {
    const at = this.pos;
    const len = this.count(`length of ${what}`, 1);
    const slice = this.bytes.subarray(this.pos, this.pos + len);
    let s: string;
    try {
      s = this.decoder.decode(slice);
    } catch {
      throw new ModelFormatError(`GGUF ${what} at offset ${at} is not valid UTF-8.`);
    }
    this.pos += len;
    return s;
  }
}

function typeName(t: number): string {
  return VALUE_TYPE_NAMES[t] ?? `unknown type ${t}`;
}

const SCALAR_SIZE: readonly number[] = [1, 1, 2, 2, 4, 4, 4, 1, -1, -1, 8, 8, 8];

function readScalar(r: Reader, type: number, what: string): GgufValue {
  const v = r.view;
  const size = SCALAR_SIZE[type]!;
  r.need(size, what);
  const p = r.pos;
  r.pos += size;
  switch (type) {
    case GgufType.UINT8:
      return v.getUint8(p);
    case GgufType.INT8:
      return v.getInt8(p);
    case GgufType.UINT16:
      return v.getUint16(p, true);
    case GgufType.INT16:
      return v.getInt16(p, true);
    case GgufType.UINT32:
      return v.getUint32(p, true);
    case GgufType.INT32:
      return v.getInt32(p, true);
    case GgufType.FLOAT32:
      return v.getFloat32(p, true);
    case GgufType.BOOL: {
      const b = v.getUint8(p);
      if (b > 1) throw new ModelFormatError(`GGUF ${what} at offset ${p} is a bool with byte value ${b} (must be 0 or 1).`);
      return b === 1;
    }
    case GgufType.UINT64: {
      const x = v.getBigUint64(p, true);
      return x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x;
    }
    case GgufType.INT64: {
      const x = v.getBigInt64(p, true);
      return x <= BigInt(Number.MAX_SAFE_INTEGER) && x >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(x) : x;
    }
    case GgufType.FLOAT64:
      return v.getFloat64(p, true);
    default:
      throw new ModelFormatError(`GGUF ${what}: internal error, type ${type} is not a scalar.`);
  }
}

function readNumericArray(r: Reader, type: number, n: number): GgufValue {
  const size = SCALAR_SIZE[type]!;
  const src = r.bytes.subarray(r.pos, r.pos + n * size);
  r.pos += n * size;
  // Copy into a fresh, aligned buffer (the file offset may be unaligned); little-endian host assumed below.
  const buf = new Uint8Array(n * size);
  buf.set(src);
  const ab = buf.buffer;
  switch (type) {
    case GgufType.UINT8:
      return buf;
    case GgufType.INT8:
      return new Int8Array(ab);
    case GgufType.UINT16:
      return fixEndian(new Uint16Array(ab), src, 2);
    case GgufType.INT16:
      return fixEndian(new Int16Array(ab), src, 2);
    case GgufType.UINT32:
      return fixEndian(new Uint32Array(ab), src, 4);
    case GgufType.INT32:
      return fixEndian(new Int32Array(ab), src, 4);
    case GgufType.FLOAT32:
      return fixEndian(new Float32Array(ab), src, 4);
    case GgufType.FLOAT64:
      return fixEndian(new Float64Array(ab), src, 8);
    case GgufType.UINT64:
      return fixEndian(new BigUint64Array(ab), src, 8);
    default:
      return fixEndian(new BigInt64Array(ab), src, 8);
  }
}

const hostLittleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function fixEndian<T extends ArrayBufferView>(arr: T, src: Uint8Array, size: number): T {
  if (hostLittleEndian) return arr;
  const out = new Uint8Array(arr.buffer);
  for (let i = 0; i < src.length; i += size) for (let j = 0; j < size; j++) out[i + j] = src[i + size - 1 - j]!;
  return arr;
}

function readValue(r: Reader, type: number, what: string, depth: number): GgufValue {
  if (type === GgufType.STRING) return r.string(what);
  if (type !== GgufType.ARRAY) return readScalar(r, type, what);
  if (depth >= MAX_ARRAY_DEPTH)
    throw new ModelFormatError(`GGUF ${what} at offset ${r.pos} nests arrays more than ${MAX_ARRAY_DEPTH} deep.`);
  const typeAt = r.pos;
  const elemType = r.u32(`element type of ${what}`);
  if (elemType > GgufType.FLOAT64) {
    throw new ModelFormatError(`GGUF ${what} at offset ${typeAt} has unknown array element type ${elemType}.`);
  }
  const minSize = elemType === GgufType.STRING ? 8 : elemType === GgufType.ARRAY ? 12 : SCALAR_SIZE[elemType]!;
  const n = r.count(`element count of ${what}`, minSize);
  if (elemType === GgufType.BOOL) {
    const out: boolean[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = readScalar(r, elemType, `${what}[${i}]`) as boolean;
    return out;
  }
  if (elemType === GgufType.STRING || elemType === GgufType.ARRAY) {
    const out: GgufValue[] = [];
    for (let i = 0; i < n; i++) out.push(readValue(r, elemType, `${what}[${i}]`, depth + 1));
    return out;
  }
  return readNumericArray(r, elemType, n);
}

/** Parses a GGUF file. Throws `ModelFormatError` for anything malformed, `UnsupportedModelError` for valid files we cannot use. */
export function parseGguf(bytes: Uint8Array, options: ParseGgufOptions = {}): GgufFile {
  const r = new Reader(bytes);
  r.need(4, 'magic');
  if (bytes[0] !== 0x47 || bytes[1] !== 0x47 || bytes[2] !== 0x55 || bytes[3] !== 0x46) {
    const found = Array.from(bytes.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new ModelFormatError(`Not a GGUF file: the first 4 bytes are ${found}, expected 47 47 55 46 ("GGUF").`);
  }
  r.pos = 4;
  const version = r.u32('version');
  if (version !== 2 && version !== 3) {
    if (version === 1)
      throw new UnsupportedModelError('GGUF version 1 files are not supported; convert the model with a recent llama.cpp.');
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    if (swapped === 2 || swapped === 3) throw new UnsupportedModelError('Big-endian GGUF files are not supported.');
    throw new ModelFormatError(`GGUF version at offset 4 is ${version}; only versions 2 and 3 exist.`);
  }
  // Minimal sizes: a KV is key (8 + >=0) + type (4) + value (>=1); a tensor info is name (8) + n_dims (4) + ne (>=8) + type (4) + offset (8).
  const tensorCount = r.count('tensor count', 32);
  const kvCount = r.count('metadata count', 13);

  const metadata: Record<string, GgufValue> = Object.create(null);
  const metadataTypes: Record<string, { type: number; elementType?: number }> = Object.create(null);
  for (let i = 0; i < kvCount; i++) {
    const keyAt = r.pos;
    const key = r.string(`key of metadata entry ${i}`);
    if (key in metadata) throw new ModelFormatError(`GGUF metadata key "${key}" at offset ${keyAt} appears twice.`);
    const typeAt = r.pos;
    const type = r.u32(`value type of "${key}"`);
    if (type > GgufType.FLOAT64) throw new ModelFormatError(`GGUF metadata "${key}" at offset ${typeAt} has unknown value type ${type}.`);
    const elementType = type === GgufType.ARRAY ? peekU32(bytes, r.pos) : undefined;
    metadata[key] = readValue(r, type, `metadata "${key}"`, 0);
    metadataTypes[key] = elementType === undefined ? { type } : { type, elementType };
  }

  let alignment = DEFAULT_ALIGNMENT;
  if ('general.alignment' in metadata) {
    const a = metadata['general.alignment'];
    const t = metadataTypes['general.alignment']!.type;
    if (t !== GgufType.UINT32 || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      throw new ModelFormatError(`GGUF general.alignment must be a uint32 power of two, found ${typeName(t)} ${String(a)}.`);
    }
    alignment = a;
  }

  const infos: GgufTensorInfo[] = [];
  const offsets: number[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const nameAt = r.pos;
    const name = r.string(`name of tensor ${i}`);
    if (names.has(name)) throw new ModelFormatError(`GGUF tensor name "${name}" at offset ${nameAt} appears twice.`);
    names.add(name);
    const dimsAt = r.pos;
    const nDims = r.u32(`n_dims of tensor "${name}"`);
    if (nDims < 1 || nDims > MAX_DIMS) {
      throw new ModelFormatError(`GGUF tensor "${name}" at offset ${dimsAt} has ${nDims} dimensions; 1 to ${MAX_DIMS} are allowed.`);
    }
    const ne: number[] = [];
    let elements = 1;
    for (let d = 0; d < nDims; d++) {
      const neAt = r.pos;
      const v = r.u64(`ne[${d}] of tensor "${name}"`);
      elements *= v;
      if (elements > bytes.byteLength * 8) {
        // Even 1-bit weights could not fit in the file.
        throw new ModelFormatError(
          `GGUF tensor "${name}" at offset ${neAt} has absurd dimensions (ne = [${[...ne, v].join(', ')}...]) for a file of ${bytes.byteLength} bytes.`,
        );
      }
      ne.push(v);
    }
    const typeAt = r.pos;
    const ggmlType = r.u32(`type of tensor "${name}"`);
    const traits = GGML_TYPES.get(ggmlType);
    if (traits === undefined) throw new ModelFormatError(`GGUF tensor "${name}" at offset ${typeAt} has unknown ggml type id ${ggmlType}.`);
    const dtype = DTYPE_OF_GGML.get(ggmlType) ?? null;
    if (dtype === null && !options.allowUnsupportedTypes) {
      throw new UnsupportedModelError(
        `GGUF tensor "${name}" has type ${traits.name}, which kvcompress cannot decode. Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K; ` +
          'requantise the model (llama-quantize) to one of those.',
      );
    }
    if (ne[0]! % traits.blck !== 0) {
      throw new ModelFormatError(
        `GGUF tensor "${name}" of type ${traits.name} has row length ${ne[0]}, not a multiple of its block size ${traits.blck}.`,
      );
    }
    const byteLength = (elements / traits.blck) * traits.size;
    const offAt = r.pos;
    const offset = r.u64(`data offset of tensor "${name}"`);
    if (offset % alignment !== 0) {
      throw new ModelFormatError(
        `GGUF tensor "${name}" data offset ${offset} (at offset ${offAt}) is not a multiple of the alignment ${alignment}.`,
      );
    }
    if (dtype !== null) {
      const block = DTYPE_BLOCK[dtype];
      if (block.values !== traits.blck || block.bytes !== traits.size) throw new Error('ggml type table mismatch'); // a bug, not a file error
    }
    infos.push({ name, ne, shape: ne.slice().reverse(), ggmlType, typeName: traits.name, dtype, fileOffset: 0, byteLength });
    offsets.push(offset);
  }

  const dataOffset = Math.ceil(r.pos / alignment) * alignment;
  if (dataOffset > bytes.byteLength && infos.length > 0) {
    throw new ModelFormatError(`GGUF data section would start at ${dataOffset}, past the end of the ${bytes.byteLength}-byte file.`);
  }

  // Every tensor inside the file, and no two overlapping.
  const order = infos.map((_, i) => i).sort((a, b) => offsets[a]! - offsets[b]!);
  let prevEnd = 0;
  let prevName = '';
  for (const i of order) {
    const t = infos[i]!;
    const offset = offsets[i]!;
    const start = dataOffset + offset;
    const end = start + t.byteLength;
    if (end > bytes.byteLength) {
      throw new ModelFormatError(
        `GGUF tensor "${t.name}" (${t.typeName} [${t.ne.join(', ')}], ${t.byteLength} bytes at file offset ${start}) ends at ${end}, past the end of the ${bytes.byteLength}-byte file.`,
      );
    }
    if (offset < prevEnd) {
      throw new ModelFormatError(
        `GGUF tensors "${prevName}" and "${t.name}" overlap (tensor data ends at ${prevEnd}, next starts at ${offset}).`,
      );
    }
    prevEnd = offset + t.byteLength;
    prevName = t.name;
  }

  const tensorInfos: GgufTensorInfo[] = [];
  const tensors = new Map<string, Tensor>();
  for (let i = 0; i < infos.length; i++) {
    const fileOffset = dataOffset + offsets[i]!;
    const t: GgufTensorInfo = { ...infos[i]!, fileOffset };
    tensorInfos.push(t);
    if (t.dtype !== null) {
      tensors.set(t.name, { name: t.name, shape: t.shape, dtype: t.dtype, data: bytes.subarray(fileOffset, fileOffset + t.byteLength) });
    }
  }
  return { version, alignment, metadata, metadataTypes, tensorInfos, tensors, dataOffset };
}

function peekU32(bytes: Uint8Array, pos: number): number | undefined {
  if (pos + 4 > bytes.byteLength) return undefined;
  return (bytes[pos]! | (bytes[pos + 1]! << 8) | (bytes[pos + 2]! << 16) | (bytes[pos + 3]! << 24)) >>> 0;
}
