import { readFileSync } from 'node:fs';
import { dequantize, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { GgufType, ggmlTypeName, parseGguf } from './gguf.ts';
import { type GgufWriteSpec, type GgufWriteTensor, writeGguf } from './gguf-writer.ts';
import { requireShared } from './test-support.ts';

const T = GgufType;

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

const baseTensors: GgufWriteTensor[] = [
  { name: 'a', ne: [3, 2], ggmlType: 0, data: f32Bytes([1, 2, 3, 4, 5, 6]) },
  { name: 'b', ne: [32], ggmlType: 8, data: new Uint8Array(34) },
  { name: 'c', ne: [5], ggmlType: 1, data: new Uint8Array([0, 0x3c, 0, 0x40, 0, 0x42, 0, 0x44, 0, 0x45]) },
];

function spec(overrides: Partial<GgufWriteSpec> = {}): GgufWriteSpec {
  return {
    metadata: [
      ['general.architecture', { type: T.STRING, value: 'llama' }],
      ['v.u8', { type: T.UINT8, value: 200 }],
      ['v.i8', { type: T.INT8, value: -100 }],
      ['v.u16', { type: T.UINT16, value: 60000 }],
      ['v.i16', { type: T.INT16, value: -30000 }],
      ['v.u32', { type: T.UINT32, value: 4000000000 }],
      ['v.i32', { type: T.INT32, value: -2000000000 }],
      ['v.f32', { type: T.FLOAT32, value: 0.5 }],
      ['v.bool', { type: T.BOOL, value: true }],
      ['v.str', { type: T.STRING, value: 'héllo ▁ 😀' }],
      ['v.u64', { type: T.UINT64, value: 2n ** 63n + 5n }],
      ['v.u64small', { type: T.UINT64, value: 12345 }],
      ['v.i64', { type: T.INT64, value: -(2n ** 60n) }],
      ['v.f64', { type: T.FLOAT64, value: Math.PI }],
      ['arr.f32', { type: T.ARRAY, value: { elementType: T.FLOAT32, items: [1.5, -2, 0] } }],
      ['arr.i32', { type: T.ARRAY, value: { elementType: T.INT32, items: [1, -1, 7] } }],
      ['arr.u8', { type: T.ARRAY, value: { elementType: T.UINT8, items: [1, 2, 255] } }],
      ['arr.bool', { type: T.ARRAY, value: { elementType: T.BOOL, items: [true, false, true] } }],
      ['arr.str', { type: T.ARRAY, value: { elementType: T.STRING, items: ['x', '', 'yz'] } }],
      ['arr.i64', { type: T.ARRAY, value: { elementType: T.INT64, items: [-1n, 2n] } }],
      [
        'arr.nested',
        {
          type: T.ARRAY,
          value: {
            elementType: T.ARRAY,
            items: [
              { elementType: T.STRING, items: ['p', 'q'] },
              { elementType: T.UINT16, items: [9] },
              { elementType: T.ARRAY, items: [{ elementType: T.BOOL, items: [] }] },
            ],
          },
        },
      ],
      ['arr.empty', { type: T.ARRAY, value: { elementType: T.FLOAT64, items: [] } }],
    ],
    tensors: baseTensors,
    ...overrides,
  };
}

/** Byte offset of the first occurrence of `needle` (for patching a written file). */
function find(bytes: Uint8Array, needle: Uint8Array | string, from = 0): number {
  const n = typeof needle === 'string' ? new TextEncoder().encode(needle) : needle;
  outer: for (let i = from; i + n.length <= bytes.length; i++) {
    for (let j = 0; j < n.length; j++) if (bytes[i + j] !== n[j]) continue outer;
    return i;
  }
  throw new Error('needle not found');
}

function setU64(bytes: Uint8Array, at: number, v: bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(at, v, true);
}

function setU32(bytes: Uint8Array, at: number, v: number): void {
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(at, v, true);
}

/** Offset of the value-type field of metadata key `key` (right after the key string). */
function keyTypeAt(bytes: Uint8Array, key: string): number {
  return find(bytes, key) + new TextEncoder().encode(key).length;
}

/** Offset of the n_dims field of tensor `name` (searching after the metadata). */
function tensorInfoAt(bytes: Uint8Array, name: string, dataStart: number): number {
  // name strings are preceded by their u64 length; search for len + name
  const enc = new TextEncoder().encode(name);
  const needle = new Uint8Array(8 + enc.length);
  new DataView(needle.buffer).setBigUint64(0, BigInt(enc.length), true);
  needle.set(enc, 8);
  const at = find(bytes, needle);
  if (at >= dataStart) throw new Error('tensor info not found');
  return at + needle.length;
}

function expectFormatError(fn: () => unknown, pattern: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ModelFormatError);
  expect((err as Error).message).toMatch(pattern);
}

describe('parseGguf on synthetic files', () => {
  it('reads every metadata value type, in v2 and v3', () => {
    for (const version of [2, 3]) {
      const f = parseGguf(writeGguf(spec({ version })));
      expect(f.version).toBe(version);
      const m = f.metadata;
      expect(m['general.architecture']).toBe('llama');
      expect([m['v.u8'], m['v.i8'], m['v.u16'], m['v.i16'], m['v.u32'], m['v.i32'], m['v.f32'], m['v.bool']]).toEqual([
        200,
        -100,
        60000,
        -30000,
        4000000000,
        -2000000000,
        0.5,
        true,
      ]);
      expect(m['v.str']).toBe('héllo ▁ 😀');
      expect(m['v.u64']).toBe(2n ** 63n + 5n);
      expect(m['v.u64small']).toBe(12345);
      expect(m['v.i64']).toBe(-(2n ** 60n));
      expect(m['v.f64']).toBe(Math.PI);
      expect(m['arr.f32']).toEqual(new Float32Array([1.5, -2, 0]));
      expect(m['arr.i32']).toEqual(new Int32Array([1, -1, 7]));
      expect(m['arr.u8']).toEqual(new Uint8Array([1, 2, 255]));
      expect(m['arr.bool']).toEqual([true, false, true]);
      expect(m['arr.str']).toEqual(['x', '', 'yz']);
      expect(m['arr.i64']).toEqual(new BigInt64Array([-1n, 2n]));
      expect(m['arr.nested']).toEqual([['p', 'q'], new Uint16Array([9]), [[]]]);
      expect(m['arr.empty']).toEqual(new Float64Array(0));
      expect(f.metadataTypes['arr.str']).toEqual({ type: T.ARRAY, elementType: T.STRING });
      expect(f.metadataTypes['v.u8']).toEqual({ type: T.UINT8 });
      expect(Object.getPrototypeOf(m)).toBe(null);
    }
  });

  it('reverses ne into row-major shapes and views the file bytes without copying', () => {
    const bytes = writeGguf(spec());
    const f = parseGguf(bytes);
    expect(f.alignment).toBe(32);
    expect(f.dataOffset % 32).toBe(0);
    expect(f.tensorInfos.map((t) => [t.name, t.ne, t.shape, t.typeName, t.dtype])).toEqual([
      ['a', [3, 2], [2, 3], 'F32', 'f32'],
      ['b', [32], [32], 'Q8_0', 'q8_0'],
      ['c', [5], [5], 'F16', 'f16'],
    ]);
    const a = f.tensors.get('a')!;
    expect(a.data.buffer).toBe(bytes.buffer);
    expect(a.data.byteOffset).toBe(f.dataOffset);
    expect(Array.from(dequantize(a))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(dequantize(f.tensors.get('c')!))).toEqual([1, 2, 3, 4, 5]);
    expect(f.tensors.get('b')!.data.byteOffset).toBe(f.dataOffset + 32);
  });

  it('honours general.alignment', () => {
    const f = parseGguf(writeGguf(spec({ alignment: 64 })));
    expect(f.alignment).toBe(64);
    expect(f.dataOffset % 64).toBe(0);
    expect(f.tensorInfos[1]!.fileOffset).toBe(f.dataOffset + 64);
    expectFormatError(
      () => parseGguf(writeGguf(spec({ metadata: [['general.alignment', { type: T.UINT32, value: 48 }]], tensors: [] }))),
      /alignment must be a uint32 power of two.*48/,
    );
    expectFormatError(
      () => parseGguf(writeGguf(spec({ metadata: [['general.alignment', { type: T.UINT64, value: 32 }]], tensors: [] }))),
      /alignment must be a uint32 power of two, found uint64/,
    );
  });

  it('accepts an empty file with no tensors and no metadata', () => {
    const f = parseGguf(writeGguf({ metadata: [] }));
    expect(f.tensorInfos).toEqual([]);
    expect(Object.keys(f.metadata)).toEqual([]);
  });

  it('rejects bad magic and versions', () => {
    const good = writeGguf(spec());
    expectFormatError(() => parseGguf(new Uint8Array(0)), /truncated: magic at offset 0/);
    const bad = good.slice();
    bad[0] = 0x00;
    expectFormatError(() => parseGguf(bad), /Not a GGUF file: the first 4 bytes are 00 47 55 46/);
    const v1 = good.slice();
    setU32(v1, 4, 1);
    expect(() => parseGguf(v1)).toThrow(UnsupportedModelError);
    const be = good.slice();
    setU32(be, 4, 0x03000000);
    expect(() => parseGguf(be)).toThrow(/Big-endian/);
    const v9 = good.slice();
    setU32(v9, 4, 9);
    expectFormatError(() => parseGguf(v9), /version at offset 4 is 9/);
  });

  it('rejects every truncation with ModelFormatError', () => {
    const good = writeGguf(spec());
    const f = parseGguf(good);
    const lastTensorEnd = Math.max(...f.tensorInfos.map((t) => t.fileOffset + t.byteLength));
    for (let n = 0; n < lastTensorEnd; n++) {
      expect(() => parseGguf(good.subarray(0, n)), `length ${n}`).toThrow(ModelFormatError);
    }
    expect(() => parseGguf(good.subarray(0, lastTensorEnd))).not.toThrow();
  });

  it('rejects counts the file cannot hold before allocating anything', () => {
    const good = writeGguf(spec());
    // An array claiming 2^40 floats.
    const huge = good.slice();
    setU64(huge, keyTypeAt(huge, 'arr.f32') + 8, 2n ** 40n);
    expectFormatError(() => parseGguf(huge), /element count of metadata "arr.f32" at offset \d+ is 1099511627776/);
    // A string claiming 2^50 bytes; a count above 2^53.
    const str = good.slice();
    setU64(str, keyTypeAt(str, 'v.str') + 4, 2n ** 50n);
    expectFormatError(() => parseGguf(str), /length of metadata "v.str" at offset \d+ is 1125899906842624/);
    const absurd = good.slice();
    setU64(absurd, 8, 2n ** 63n);
    expectFormatError(() => parseGguf(absurd), /tensor count at offset 8 is 9223372036854775808, which is absurdly large/);
    const many = good.slice();
    setU64(many, 16, 1000000n);
    expectFormatError(() => parseGguf(many), /metadata count at offset 16 is 1000000/);
    // A string array whose strings could not fit.
    const strs = good.slice();
    setU64(strs, keyTypeAt(strs, 'arr.str') + 8, BigInt(Math.floor(good.length / 8)));
    expectFormatError(() => parseGguf(strs), /element count of metadata "arr.str"/);
  });

  it('rejects unknown value types, bad bools, bad UTF-8, duplicate keys and deep nesting', () => {
    const good = writeGguf(spec());
    const unknownType = good.slice();
    setU32(unknownType, keyTypeAt(unknownType, 'v.f64'), 13);
    expectFormatError(() => parseGguf(unknownType), /metadata "v.f64" at offset \d+ has unknown value type 13/);
    const unknownElem = good.slice();
    setU32(unknownElem, keyTypeAt(unknownElem, 'arr.f32') + 4, 99);
    expectFormatError(() => parseGguf(unknownElem), /unknown array element type 99/);
    const badBool = good.slice();
    badBool[keyTypeAt(badBool, 'v.bool') + 4] = 2;
    expectFormatError(() => parseGguf(badBool), /bool with byte value 2/);
    const badUtf8 = good.slice();
    badUtf8[find(badUtf8, 'héllo') + 1] = 0xff;
    expectFormatError(() => parseGguf(badUtf8), /metadata "v.str" at offset \d+ is not valid UTF-8/);
    expectFormatError(
      () =>
        parseGguf(
          writeGguf({
            metadata: [
              ['k', { type: T.UINT8, value: 1 }],
              ['k', { type: T.UINT8, value: 2 }],
            ],
          }),
        ),
      /key "k" at offset \d+ appears twice/,
    );
    let nested: { elementType: number; items: unknown[] } = { elementType: T.UINT8, items: [1] };
    for (let i = 0; i < 20; i++) nested = { elementType: T.ARRAY, items: [nested] };
    expectFormatError(
      () => parseGguf(writeGguf({ metadata: [['deep', { type: T.ARRAY, value: nested as never }]] })),
      /nests arrays more than 16 deep/,
    );
  });

  it('keeps keys such as __proto__ as plain data', () => {
    const f = parseGguf(writeGguf({ metadata: [['__proto__', { type: T.STRING, value: 'x' }]] }));
    expect(Object.getOwnPropertyDescriptor(f.metadata, '__proto__')?.value).toBe('x');
    expect(Object.keys(f.metadata)).toEqual(['__proto__']);
  });

  it('rejects bad tensor infos', () => {
    const good = writeGguf(spec());
    const dataStart = parseGguf(good).dataOffset;
    const withB = (patch: (bytes: Uint8Array, at: number) => void): Uint8Array => {
      const b = good.slice();
      patch(b, tensorInfoAt(b, 'b', dataStart));
      return b;
    };
    // n_dims
    expectFormatError(() => parseGguf(withB((b, at) => setU32(b, at, 0))), /tensor "b" at offset \d+ has 0 dimensions/);
    expectFormatError(() => parseGguf(withB((b, at) => setU32(b, at, 5))), /has 5 dimensions/);
    // ne[0] absurd / not a multiple of the block
    expectFormatError(() => parseGguf(withB((b, at) => setU64(b, at + 4, 2n ** 52n))), /tensor "b" at offset \d+ has absurd dimensions/);
    expectFormatError(() => parseGguf(withB((b, at) => setU64(b, at + 4, 33n))), /row length 33, not a multiple of its block size 32/);
    // type id
    expectFormatError(() => parseGguf(withB((b, at) => setU32(b, at + 12, 99))), /tensor "b" at offset \d+ has unknown ggml type id 99/);
    expectFormatError(() => parseGguf(withB((b, at) => setU32(b, at + 12, 4))), /unknown ggml type id 4/); // removed Q4_2
    // offsets: misaligned, overlapping, past the end
    expectFormatError(() => parseGguf(withB((b, at) => setU64(b, at + 16, 8n))), /data offset 8 .* not a multiple of the alignment 32/);
    expectFormatError(() => parseGguf(withB((b, at) => setU64(b, at + 16, 0n))), /tensors "a" and "b" overlap|tensors "b" and "a" overlap/);
    expectFormatError(
      () => parseGguf(withB((b, at) => setU64(b, at + 16, 1024n))),
      /tensor "b" \(Q8_0 \[32\], 34 bytes at file offset \d+\) ends at \d+, past the end/,
    );
    // duplicate names
    expectFormatError(
      () => parseGguf(writeGguf(spec({ tensors: [baseTensors[0]!, { ...baseTensors[2]!, name: 'a' }] }))),
      /tensor name "a" at offset \d+ appears twice/,
    );
    // bad UTF-8 tensor name
    const badName = good.slice();
    badName[tensorInfoAt(badName, 'b', dataStart) - 1] = 0xc0;
    expectFormatError(() => parseGguf(badName), /name of tensor 1 at offset \d+ is not valid UTF-8/);
  });

  it('throws UnsupportedModelError naming unsupported tensor types, unless asked to keep them', () => {
    const q5 = writeGguf(spec({ tensors: [...baseTensors, { name: 'q5', ne: [32], ggmlType: 7, data: new Uint8Array(24) }] }));
    expect(() => parseGguf(q5)).toThrow(UnsupportedModelError);
    expect(() => parseGguf(q5)).toThrow(/tensor "q5" has type Q5_1/);
    const iq = writeGguf(spec({ tensors: [{ name: 'iq', ne: [256], ggmlType: 17, data: new Uint8Array(74) }] }));
    expect(() => parseGguf(iq)).toThrow(/type IQ2_XS/);
    const kept = parseGguf(q5, { allowUnsupportedTypes: true });
    expect(kept.tensorInfos.map((t) => [t.name, t.typeName, t.dtype])).toContainEqual(['q5', 'Q5_1', null]);
    expect(kept.tensors.has('q5')).toBe(false);
    expect(ggmlTypeName(23)).toBe('IQ4_XS');
    expect(ggmlTypeName(31)).toBe('type 31');
  });
});

describe('parseGguf on stories260K.gguf', () => {
  it('reads the real file: 48 F32 tensors identical to stories260K.bin', (ctx) => {
    const bytes = new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.gguf', ctx)));
    const bin = new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.bin', ctx)));
    const f = parseGguf(bytes);
    expect(f.version).toBe(3);
    expect(f.tensorInfos).toHaveLength(48);
    expect(f.tensorInfos.every((t) => t.typeName === 'F32')).toBe(true);
    expect(f.metadata['general.architecture']).toBe('llama');
    expect(f.metadata['llama.embedding_length']).toBe(64);
    expect((f.metadata['tokenizer.ggml.tokens'] as string[]).length).toBe(512);
    const embd = f.tensors.get('token_embd.weight')!;
    expect(embd.shape).toEqual([512, 64]);
    // llama2.c legacy layout: 7-int header, then tok_emb [512, 64].
    expect(Buffer.from(embd.data).equals(Buffer.from(bin.subarray(28, 28 + 512 * 64 * 4)))).toBe(true);
    expect(f.tensors.get('blk.0.ffn_gate.weight')!.shape).toEqual([172, 64]);
    expect(f.tensors.get('blk.0.ffn_down.weight')!.shape).toEqual([64, 172]);
    expect(f.tensors.get('blk.0.attn_k.weight')!.shape).toEqual([32, 64]);
  });
});
