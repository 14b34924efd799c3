import { ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { parseSafetensors, parseSafetensorsIndex, readShardedSafetensors } from './safetensors.ts';
import { encodeValues, writeSafetensors } from './test-fixtures.ts';

/** A file whose header is exactly `header` (any JSON text) followed by `data`. */
function rawFile(header: string, data: Uint8Array = new Uint8Array(0), lengthField?: bigint): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function expectFormatError(fn: () => unknown, pattern: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ModelFormatError);
  expect((caught as Error).message).toMatch(pattern);
}

describe('parseSafetensors', () => {
  it('reads dtypes, shapes, metadata and views the data in place', () => {
    const a = encodeValues([1, 2, 3, 4, 5, 6], 'F32');
    const b = encodeValues([0.5, -2], 'F16');
    const c = encodeValues([1.5, -3, 0.25], 'BF16');
    const bytes = writeSafetensors(
      [
        { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
        { name: 'b', dtype: 'F16', shape: [2], data: b },
        { name: 'c', dtype: 'BF16', shape: [3, 1], data: c },
        { name: 'scalar', dtype: 'F32', shape: [], data: encodeValues([7], 'F32') },
        { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) },
      ],
      { format: 'pt' },
    );
    const file = parseSafetensors(bytes, 'x.safetensors');
    expect(file.fileName).toBe('x.safetensors');
    expect(file.metadata).toEqual({ format: 'pt' });
    expect([...file.tensors.keys()]).toEqual(['a', 'b', 'c', 'scalar', 'empty']);
    expect(file.dataOffset % 8).toBe(0);

    const ta = file.tensors.get('a')!;
    expect(ta).toMatchObject({ name: 'a', dtype: 'f32', shape: [2, 3] });
    expect(ta.data.buffer).toBe(bytes.buffer); // a view, not a copy
    expect(Array.from(new Float32Array(ta.data.slice().buffer))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(file.tensors.get('b')).toMatchObject({ dtype: 'f16', shape: [2] });
    expect(Array.from(file.tensors.get('b')!.data)).toEqual(Array.from(b));
    expect(file.tensors.get('c')).toMatchObject({ dtype: 'bf16', shape: [3, 1] });
    expect(Array.from(file.tensors.get('c')!.data)).toEqual(Array.from(c));
    expect(file.tensors.get('scalar')!.data.length).toBe(4);
    expect(file.tensors.get('empty')!.data.length).toBe(0);
  });

  it('works on a view into a larger buffer', () => {
    const inner = writeSafetensors([{ name: 'w', dtype: 'F32', shape: [2], data: encodeValues([3, 4], 'F32') }]);
    const outer = new Uint8Array(inner.length + 13);
    outer.set(inner, 5);
    const file = parseSafetensors(outer.subarray(5, 5 + inner.length));
    expect(Array.from(file.tensors.get('w')!.data)).toEqual(Array.from(encodeValues([3, 4], 'F32')));
  });

  it('accepts an empty header object and data gaps', () => {
    expect(parseSafetensors(rawFile('{}')).tensors.size).toBe(0);
    const header = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    const file = parseSafetensors(rawFile(header, new Uint8Array(12)));
    expect(file.tensors.get('w')!.data.byteOffset).toBe(8 + header.length + 4);
  });

  it('rejects a file too short for the length field', () => {
    expectFormatError(() => parseSafetensors(new Uint8Array(5)), /5 bytes is too short/);
  });

  it('rejects a header length beyond the file', () => {
    expectFormatError(() => parseSafetensors(rawFile('{}', new Uint8Array(0), 1000n)), /says 1000 bytes but only 2 bytes follow/);
    expectFormatError(() => parseSafetensors(rawFile('{}', new Uint8Array(0), 0xffff_ffff_ffff_ffffn)), /truncated or not safetensors/);
    expectFormatError(() => parseSafetensors(rawFile('{}', new Uint8Array(0), 0n)), /too small/);
  });

  it('rejects headers that are not JSON objects', () => {
    expectFormatError(() => parseSafetensors(rawFile('{"a": ')), /not valid JSON/);
    expectFormatError(() => parseSafetensors(rawFile('[1, 2]')), /must be a JSON object of tensors, found an array of 2/);
    expectFormatError(() => parseSafetensors(rawFile('42')), /found 42/);
    expectFormatError(() => parseSafetensors(rawFile('null')), /found null/);
    const bad = rawFile('{"\u00e9":1}');
    bad[9] = 0xff; // invalid UTF-8
    expectFormatError(() => parseSafetensors(bad), /not valid UTF-8/);
  });

  it('rejects malformed tensor entries, naming the tensor', () => {
    const entry = (e: string, data = 16) => rawFile(`{"t":${e}}`, new Uint8Array(data));
    expectFormatError(() => parseSafetensors(entry('5')), /tensor "t" must be an object/);
    expectFormatError(() => parseSafetensors(entry('{"shape":[1],"data_offsets":[0,4]}')), /"t" has dtype nothing/);
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","data_offsets":[0,4]}')), /has shape nothing/);
    expectFormatError(
      () => parseSafetensors(entry('{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}')),
      /dimensions must be non-negative integers/,
    );
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}')), /non-negative integers/);
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":["2"],"data_offsets":[0,4]}')), /non-negative integers/);
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}')), /9 dimensions/);
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":[1],"data_offsets":[0]}')), /expected \[begin, end\]/);
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}')), /two integers/);
    expectFormatError(
      () => parseSafetensors(entry('{"dtype":"F32","shape":[1],"data_offsets":[8,4]}')),
      /outside the 16-byte data section/,
    );
    expectFormatError(() => parseSafetensors(entry('{"dtype":"F32","shape":[8],"data_offsets":[0,32]}')), /\[0, 32\] outside the 16-byte/);
    expectFormatError(
      () => parseSafetensors(entry('{"dtype":"F32","shape":[3],"data_offsets":[0,8]}')),
      /F32 \[3\], which takes 12 bytes, but data_offsets \[0, 8\] hold 8/,
    );
    expectFormatError(
      () => parseSafetensors(entry('{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}')),
      /takes more than the file bytes/,
    );
    expectFormatError(
      () => parseSafetensors(entry('{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}')),
      /"Q4", which is not a safetensors dtype/,
    );
  });

  it('refuses known but unsupported dtypes with UnsupportedModelError', () => {
    for (const dtype of ['I64', 'F64', 'U8', 'F8_E4M3', 'BOOL']) {
      const bytes = rawFile(`{"weight":{"dtype":"${dtype}","shape":[1],"data_offsets":[0,8]}}`, new Uint8Array(8));
      expect(() => parseSafetensors(bytes)).toThrow(UnsupportedModelError);
      expect(() => parseSafetensors(bytes)).toThrow(new RegExp(`dtype ${dtype}`));
    }
  });

  it('rejects overlapping tensors and duplicate names', () => {
    const overlap = rawFile(
      '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
      new Uint8Array(12),
    );
    expectFormatError(() => parseSafetensors(overlap), /"a" \[0, 8\] and "b" \[4, 12\] overlap/);
    const dup = rawFile(
      '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
      new Uint8Array(8),
    );
    expectFormatError(() => parseSafetensors(dup), /names "a" more than once/);
    // Escaped spellings of the same key are the same name; nested keys do not count.
    const escaped = rawFile(
      '{"__metadata__":{"a":"x","a2":"y"},"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
      new Uint8Array(8),
    );
    expectFormatError(() => parseSafetensors(escaped), /names "a" more than once/);
  });

  it('checks __metadata__', () => {
    expectFormatError(() => parseSafetensors(rawFile('{"__metadata__":[1]}')), /__metadata__ must be an object/);
    expectFormatError(() => parseSafetensors(rawFile('{"__metadata__":{"k":1}}')), /__metadata__.k must be a string/);
  });
});

describe('sharded checkpoints', () => {
  const shard1 = writeSafetensors([
    { name: 'x', dtype: 'F32', shape: [1], data: encodeValues([1], 'F32') },
    { name: 'y', dtype: 'F32', shape: [1], data: encodeValues([2], 'F32') },
  ]);
  const shard2 = writeSafetensors([{ name: 'z', dtype: 'BF16', shape: [2], data: encodeValues([3, 4], 'BF16') }]);
  const files = new Map([
    ['s1.safetensors', shard1],
    ['s2.safetensors', shard2],
  ]);

  it('reads each shard once and orders tensors as the index', async () => {
    const index = parseSafetensorsIndex({
      metadata: { total_size: 12 },
      weight_map: { z: 's2.safetensors', x: 's1.safetensors', y: 's1.safetensors' },
    });
    expect(index.shards).toEqual(['s2.safetensors', 's1.safetensors']);
    expect(index.metadata).toEqual({ total_size: 12 });
    const reads: string[] = [];
    const result = await readShardedSafetensors(index, (f) => {
      reads.push(f);
      return files.get(f)!;
    });
    expect(reads).toEqual(['s2.safetensors', 's1.safetensors']);
    expect([...result.tensors.keys()]).toEqual(['z', 'x', 'y']);
    expect(result.tensors.get('z')!.dtype).toBe('bf16');
  });

  it('rejects tensors in the wrong shard, unlisted or missing', async () => {
    const read = (f: string) => files.get(f)!;
    const wrong = parseSafetensorsIndex({ weight_map: { x: 's2.safetensors', y: 's1.safetensors', z: 's2.safetensors' } });
    await expect(readShardedSafetensors(wrong, read)).rejects.toThrow(/s1.safetensors holds tensor "x", which .* places in s2.safetensors/);
    const unlisted = parseSafetensorsIndex({ weight_map: { x: 's1.safetensors' } });
    await expect(readShardedSafetensors(unlisted, read)).rejects.toThrow(
      /holds tensor "y", which model.safetensors.index.json does not list/,
    );
    const missing = parseSafetensorsIndex({
      weight_map: { x: 's1.safetensors', y: 's1.safetensors', z: 's2.safetensors', w: 's2.safetensors' },
    });
    await expect(readShardedSafetensors(missing, read)).rejects.toThrow(/lists 1 tensor\(s\) that their shards do not hold: w/);
  });

  it('validates the index', () => {
    expectFormatError(() => parseSafetensorsIndex([]), /must be a JSON object/);
    expectFormatError(() => parseSafetensorsIndex({}), /"weight_map" object/);
    expectFormatError(() => parseSafetensorsIndex({ weight_map: {} }), /weight_map is empty/);
    expectFormatError(() => parseSafetensorsIndex({ weight_map: { a: 3 } }), /weight_map\["a"\] must be a file name/);
    for (const bad of ['../secret.safetensors', '/etc/passwd', 'a\\b', 'C:x', 'a//b', '']) {
      expectFormatError(() => parseSafetensorsIndex({ weight_map: { a: bad } }), /not a file name in the checkpoint directory/);
    }
    expectFormatError(() => parseSafetensorsIndex({ weight_map: { a: 'x' }, metadata: 5 }), /"metadata" must be an object/);
  });
});
