/**
 * Fuzzing the GGUF reader and model loader with truncated and mutated files: every failure
 * must be a `KvCompressError` (ModelFormatError / UnsupportedModelError / ...), never a
 * TypeError, RangeError, hang or huge allocation.
 */
import { readFileSync } from 'node:fs';
import { dequantize, KvCompressError } from '@kvcompress/core';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseGguf, GgufType as T } from './gguf.ts';
import { loadGgufModel } from './gguf-model.ts';
import { writeSyntheticLlamaGguf } from './gguf-writer.ts';
import { requireShared } from './test-support.ts';

/** Slowest single case allowed: anything near this is a complexity bug, not noise. */
const MAX_CASE_MS = 2000;

let worst = 0;

/** Runs the whole pipeline on `bytes`; returns the error code, or 'ok'. Non-KvCompressError failures propagate. */
function check(bytes: Uint8Array): string {
  const t0 = performance.now();
  try {
    parseGguf(bytes, { allowUnsupportedTypes: true });
    const model = loadGgufModel(bytes);
    const tok = model.tokenizer;
    if (tok !== null) {
      const ids = tok.encode('Once upon a time, 😀 <s> ▁x\n');
      tok.decode(ids);
      tok.decode(ids, { skipSpecial: false });
    }
    const first = model.tensors.get('output_norm.weight');
    if (first !== undefined) dequantize(first);
    return 'ok';
  } catch (e) {
    if (e instanceof KvCompressError) return e.code;
    throw e;
  } finally {
    const ms = performance.now() - t0;
    worst = Math.max(worst, ms);
    expect(ms).toBeLessThan(MAX_CASE_MS);
  }
}

/** Applies byte edits in place, runs `check`, and restores the original bytes. */
function withEdits(bytes: Uint8Array, edits: readonly { pos: number; value: number }[]): string {
  const saved = edits.map((e) => bytes[e.pos]!);
  for (const e of edits) bytes[e.pos] = e.value;
  try {
    return check(bytes);
  } finally {
    for (let i = edits.length - 1; i >= 0; i--) bytes[edits[i]!.pos] = saved[i]!;
  }
}

/** Values that tend to break length and count fields. */
const interesting = fc.constantFrom(
  0n,
  1n,
  2n,
  3n,
  31n,
  32n,
  255n,
  256n,
  65535n,
  2n ** 31n - 1n,
  2n ** 31n,
  2n ** 32n - 1n,
  2n ** 32n,
  2n ** 40n,
  2n ** 53n,
  2n ** 53n + 1n,
  2n ** 63n,
  2n ** 64n - 1n,
);

/** Overwrites a u32 or u64 at `pos` with `value` (clipped to the width), in place, runs `check`, restores. */
function withField(bytes: Uint8Array, pos: number, width: 4 | 8, value: bigint): string {
  const edits: { pos: number; value: number }[] = [];
  for (let i = 0; i < width && pos + i < bytes.length; i++) edits.push({ pos: pos + i, value: Number((value >> BigInt(8 * i)) & 0xffn) });
  return withEdits(bytes, edits);
}

function runMutations(
  bytes: Uint8Array,
  headerEnd: number,
  runs: { truncations: number; edits: number; fields: number; shifts: number },
): Map<string, number> {
  const outcomes = new Map<string, number>();
  const count = (o: string) => outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
  const original = bytes.slice();
  const anyPos = fc.integer({ min: 0, max: bytes.length - 1 });
  const headerPos = fc.integer({ min: 0, max: Math.min(headerEnd, bytes.length) - 1 });
  const pos = fc.oneof({ arbitrary: headerPos, weight: 4 }, { arbitrary: anyPos, weight: 1 });

  fc.assert(
    fc.property(
      fc.oneof(fc.integer({ min: 0, max: bytes.length }), fc.integer({ min: 0, max: Math.min(headerEnd + 64, bytes.length) })),
      (n) => {
        count(check(bytes.subarray(0, n)));
      },
    ),
    { numRuns: runs.truncations },
  );
  fc.assert(
    fc.property(fc.array(fc.record({ pos, value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }), (edits) => {
      count(withEdits(bytes, edits));
    }),
    { numRuns: runs.edits },
  );
  fc.assert(
    fc.property(headerPos, fc.constantFrom(4 as const, 8 as const), interesting, (p, width, value) => {
      count(withField(bytes, p, width, value));
    }),
    { numRuns: runs.fields },
  );
  // Insertions and deletions in the header shift every later field.
  fc.assert(
    fc.property(headerPos, fc.integer({ min: -8, max: 8 }), fc.uint8Array({ minLength: 8, maxLength: 8 }), (p, delta, fillBytes) => {
      let mutated: Uint8Array;
      if (delta < 0) {
        mutated = new Uint8Array(bytes.length + delta);
        mutated.set(bytes.subarray(0, p));
        mutated.set(bytes.subarray(Math.min(bytes.length, p - delta)), p);
      } else {
        mutated = new Uint8Array(bytes.length + delta);
        mutated.set(bytes.subarray(0, p));
        mutated.set(fillBytes.subarray(0, delta), p);
        mutated.set(bytes.subarray(p), p + delta);
      }
      count(check(mutated));
    }),
    { numRuns: runs.shifts },
  );
  expect(bytes).toEqual(original); // edits were undone
  return outcomes;
}

/** A small GGUF that exercises every metadata value type and the block formats. */
function syntheticFile(): Uint8Array {
  return writeSyntheticLlamaGguf({
    tied: true,
    bias: true,
    meta: {
      'tokenizer.chat_template': { type: T.STRING, value: '{{ x }}' },
      'llama.rope.freq_base': { type: T.FLOAT32, value: 10000 },
      'x.u8': { type: T.UINT8, value: 1 },
      'x.i16': { type: T.INT16, value: -2 },
      'x.u64': { type: T.UINT64, value: 2n ** 60n },
      'x.i64': { type: T.INT64, value: -5n },
      'x.f64': { type: T.FLOAT64, value: 0.25 },
      'x.bool': { type: T.BOOL, value: false },
      'x.nested': {
        type: T.ARRAY,
        value: {
          elementType: T.ARRAY,
          items: [
            { elementType: T.STRING, items: ['a', 'bc'] },
            { elementType: T.BOOL, items: [true] },
            { elementType: T.UINT64, items: [7n] },
          ],
        },
      },
    },
    extraTensors: [
      { name: 'x.q8', ne: [32, 2], ggmlType: 8, data: new Uint8Array(68).fill(0x11) },
      { name: 'x.q4', ne: [32], ggmlType: 2, data: new Uint8Array(18).fill(0x22) },
      { name: 'x.q4k', ne: [256], ggmlType: 12, data: new Uint8Array(144).fill(0x33) },
      { name: 'x.q6k', ne: [256], ggmlType: 14, data: new Uint8Array(210).fill(0x44) },
      { name: 'x.f16', ne: [3], ggmlType: 1, data: new Uint8Array(6).fill(0x3c) },
    ],
  });
}

describe('GGUF fuzzing', () => {
  beforeAll(() => {
    worst = 0;
  });

  it('synthetic GGUF: truncations and mutations only ever raise KvCompressError', () => {
    const bytes = syntheticFile();
    expect(check(bytes)).toBe('ok');
    // Every truncation that cuts into the data (the final padding is optional).
    const file = parseGguf(bytes);
    const dataEnd = Math.max(...file.tensorInfos.map((t) => t.fileOffset + t.byteLength));
    for (let n = 0; n < dataEnd; n++) expect(check(bytes.subarray(0, n))).not.toBe('ok');
    const outcomes = runMutations(bytes, file.dataOffset, { truncations: 200, edits: 8000, fields: 3000, shifts: 1000 });
    // The mutations reached past the header checks often enough to be meaningful.
    expect(outcomes.get('ok') ?? 0).toBeGreaterThan(50);
    expect(outcomes.get('MODEL_FORMAT') ?? 0).toBeGreaterThan(500);
  });

  it('stories260K.gguf: truncations and mutations only ever raise KvCompressError', (ctx) => {
    const bytes = new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.gguf', ctx)));
    expect(check(bytes)).toBe('ok');
    const headerEnd = parseGguf(bytes).dataOffset;
    const outcomes = runMutations(bytes, headerEnd, { truncations: 1500, edits: 5000, fields: 3000, shifts: 300 });
    expect(outcomes.get('ok') ?? 0).toBeGreaterThan(50);
    expect(outcomes.get('MODEL_FORMAT') ?? 0).toBeGreaterThan(500);
    expect(worst).toBeLessThan(MAX_CASE_MS);
  });
});
