/**
 * A small GGUF writer (v2/v3, little-endian), for tests and tools that build GGUF files.
 * Values carry their GGUF type explicitly so every type can be written.
 */
import { InvalidArgumentError } from '@kvcompress/core';
import { GgufType } from './gguf.ts';

/** A typed metadata value. Arrays give their element type and items (items of nested arrays are `GgufArrayItems`). */
export type GgufWriteValue =
  | { readonly type: Exclude<(typeof GgufType)[keyof typeof GgufType], 9>; readonly value: number | bigint | boolean | string }
  | { readonly type: 9; readonly value: GgufArrayItems };

export interface GgufArrayItems {
  readonly elementType: number;
  readonly items: readonly (number | bigint | boolean | string | GgufArrayItems)[];
}

export interface GgufWriteTensor {
  readonly name: string;
  /** GGUF dimension order (fastest-varying first). */
  readonly ne: readonly number[];
  readonly ggmlType: number;
  readonly data: Uint8Array;
}

export interface GgufWriteSpec {
  readonly version?: number;
  /** Alignment of tensor data (written as `general.alignment` when not 32). */
  readonly alignment?: number;
  readonly metadata: readonly (readonly [string, GgufWriteValue])[];
  readonly tensors?: readonly GgufWriteTensor[];
}

class Writer {
  private buf = new Uint8Array(1024);
  private view = new DataView(this.buf.buffer);
  len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(v: number): void {
    this.ensure(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
  }

  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.len, v, true);
    this.len += 4;
  }

  u64(v: number | bigint): void {
    this.ensure(8);
    this.view.setBigUint64(this.len, BigInt.asUintN(64, BigInt(v)), true);
    this.len += 8;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }

  pad(alignment: number): void {
    while (this.len % alignment !== 0) this.u8(0);
  }

  scalar(type: number, v: number | bigint | boolean | string): void {
    this.ensure(8);
    const p = this.len;
    const num = typeof v === 'number' ? v : Number(v);
    switch (type) {
      case GgufType.UINT8:
        this.view.setUint8(p, num);
        this.len += 1;
        return;
      case GgufType.INT8:
        this.view.setInt8(p, num);
        this.len += 1;
        return;
      case GgufType.UINT16:
        this.view.setUint16(p, num, true);
        this.len += 2;
        return;
      case GgufType.INT16:
        this.view.setInt16(p, num, true);
        this.len += 2;
        return;
      case GgufType.UINT32:
        this.view.setUint32(p, num, true);
        this.len += 4;
        return;
      case GgufType.INT32:
        this.view.setInt32(p, num, true);
        this.len += 4;
        return;
      case GgufType.FLOAT32:
        this.view.setFloat32(p, num, true);
        this.len += 4;
        return;
      case GgufType.BOOL:
        this.view.setUint8(p, v ? 1 : 0);
        this.len += 1;
        return;
      case GgufType.UINT64:
        this.view.setBigUint64(p, BigInt(v as number | bigint), true);
        this.len += 8;
        return;
      case GgufType.INT64:
        this.view.setBigInt64(p, BigInt(v as number | bigint), true);
        this.len += 8;
        return;
      case GgufType.FLOAT64:
        this.view.setFloat64(p, num, true);
        this.len += 8;
        return;
      case GgufType.STRING:
        this.string(String(v));
        return;
      default:
        throw new InvalidArgumentError(`Cannot write GGUF value type ${type} as a scalar.`);
    }
  }

  array(a: GgufArrayItems): void {
    this.u32(a.elementType);
    this.u64(a.items.length);
    for (const item of a.items) {
      if (a.elementType === GgufType.ARRAY) this.array(item as GgufArrayItems);
      else this.scalar(a.elementType, item as number | bigint | boolean | string);
    }
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** Serialises a GGUF file. Tensor data offsets are assigned in order, each padded to the alignment. */
export function writeGguf(spec: GgufWriteSpec): Uint8Array {
  const alignment = spec.alignment ?? 32;
  const w = new Writer();
  w.bytes(new Uint8Array([0x47, 0x47, 0x55, 0x46]));
  w.u32(spec.version ?? 3);
  const tensors = spec.tensors ?? [];
  const metadata = [...spec.metadata];
  if (alignment !== 32 && !metadata.some(([k]) => k === 'general.alignment')) {
    metadata.push(['general.alignment', { type: GgufType.UINT32, value: alignment }]);
  }
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, v] of metadata) {
    w.string(key);
    w.u32(v.type);
    if (v.type === GgufType.ARRAY) w.array(v.value as GgufArrayItems);
    else w.scalar(v.type, v.value as number | bigint | boolean | string);
  }
  let offset = 0;
  for (const t of tensors) {
    w.string(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.ggmlType);
    w.u64(offset);
    offset += Math.ceil(t.data.length / alignment) * alignment;
  }
  w.pad(alignment);
  for (const t of tensors) {
    w.bytes(t.data);
    w.pad(alignment);
  }
  return w.result();
}

/** Options of `writeSyntheticLlamaGguf`. */
export interface SyntheticLlamaOptions {
  arch?: string;
  hidden?: number;
  ff?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number | null;
  vocab?: number;
  tied?: boolean;
  bias?: boolean;
  meta?: Record<string, GgufWriteValue | null>;
  drop?: string;
  reshape?: Record<string, number[]>;
  extraTensors?: GgufWriteTensor[];
  /** Values of a tensor (row-major, `n` of them); zeros when absent. */
  fill?: (name: string, n: number) => Float32Array;
}

/**
 * A tiny llama / qwen2-shaped GGUF with every canonical tensor (F32; zeros unless `fill`
 * gives values) and a small SentencePiece vocabulary, for tests. `meta` adds or (with null)
 * removes metadata keys, `drop` leaves a tensor out, `reshape` changes a tensor's shape.
 */
export function writeSyntheticLlamaGguf(o: SyntheticLlamaOptions = {}): Uint8Array {
  const arch = o.arch ?? 'llama';
  const h = o.hidden ?? 8;
  const ff = o.ff ?? 16;
  const layers = o.layers ?? 2;
  const heads = o.heads ?? 2;
  const kvHeads = o.kvHeads === undefined ? 1 : o.kvHeads;
  const vocab = o.vocab ?? 6;
  const hd = h / heads;
  const tokens = ['<unk>', '<s>', '</s>', '\u2581', 'a', '\u2581a'].slice(0, vocab);
  while (tokens.length < vocab) tokens.push(`t${tokens.length}`);
  const meta: Record<string, GgufWriteValue | null> = {
    'general.architecture': { type: GgufType.STRING, value: arch },
    [`${arch}.embedding_length`]: { type: GgufType.UINT32, value: h },
    [`${arch}.feed_forward_length`]: { type: GgufType.UINT32, value: ff },
    [`${arch}.block_count`]: { type: GgufType.UINT32, value: layers },
    [`${arch}.attention.head_count`]: { type: GgufType.UINT32, value: heads },
    [`${arch}.attention.head_count_kv`]: kvHeads === null ? null : { type: GgufType.UINT32, value: kvHeads },
    [`${arch}.rope.dimension_count`]: { type: GgufType.UINT32, value: hd },
    [`${arch}.attention.layer_norm_rms_epsilon`]: { type: GgufType.FLOAT32, value: 1e-6 },
    [`${arch}.context_length`]: { type: GgufType.UINT32, value: 128 },
    'tokenizer.ggml.model': { type: GgufType.STRING, value: 'llama' },
    'tokenizer.ggml.tokens': { type: GgufType.ARRAY, value: { elementType: GgufType.STRING, items: tokens } },
    'tokenizer.ggml.scores': { type: GgufType.ARRAY, value: { elementType: GgufType.FLOAT32, items: tokens.map(() => 0) } },
    'tokenizer.ggml.token_type': {
      type: GgufType.ARRAY,
      value: { elementType: GgufType.INT32, items: tokens.map((_, i) => (i === 0 ? 2 : i < 3 ? 3 : 1)) },
    },
    'tokenizer.ggml.bos_token_id': { type: GgufType.UINT32, value: 1 },
    'tokenizer.ggml.eos_token_id': { type: GgufType.UINT32, value: 2 },
    ...o.meta,
  };
  const shapes: Array<[string, number[]]> = [
    ['token_embd.weight', [vocab, h]],
    ['output_norm.weight', [h]],
  ];
  if (!o.tied) shapes.push(['output.weight', [vocab, h]]);
  for (let l = 0; l < layers; l++) {
    shapes.push(
      [`blk.${l}.attn_norm.weight`, [h]],
      [`blk.${l}.attn_q.weight`, [heads * hd, h]],
      [`blk.${l}.attn_k.weight`, [(kvHeads ?? heads) * hd, h]],
      [`blk.${l}.attn_v.weight`, [(kvHeads ?? heads) * hd, h]],
      [`blk.${l}.attn_output.weight`, [h, heads * hd]],
      [`blk.${l}.ffn_norm.weight`, [h]],
      [`blk.${l}.ffn_gate.weight`, [ff, h]],
      [`blk.${l}.ffn_up.weight`, [ff, h]],
      [`blk.${l}.ffn_down.weight`, [h, ff]],
    );
    if (o.bias) {
      shapes.push(
        [`blk.${l}.attn_q.bias`, [heads * hd]],
        [`blk.${l}.attn_k.bias`, [(kvHeads ?? heads) * hd]],
        [`blk.${l}.attn_v.bias`, [(kvHeads ?? heads) * hd]],
      );
    }
  }
  const tensors: GgufWriteTensor[] = shapes
    .filter(([name]) => name !== o.drop)
    .map(([name, shape]) => {
      const s = o.reshape?.[name] ?? shape;
      const n = s.reduce((a, b) => a * b, 1);
      const values = o.fill?.(name, n);
      const data = values === undefined ? new Uint8Array(n * 4) : new Uint8Array(values.buffer, values.byteOffset, n * 4);
      return { name, ne: [...s].reverse(), ggmlType: 0, data };
    });
  const spec: GgufWriteSpec = {
    metadata: Object.entries(meta).filter((e): e is [string, GgufWriteValue] => e[1] !== null),
    tensors: [...tensors, ...(o.extraTensors ?? [])],
  };
  return writeGguf(spec);
}
