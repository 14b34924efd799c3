/**
 * Fuzzing the llama2.c checkpoint and tokenizer readers with truncated and mutated files:
 * every failure must be a `KvCompressError`, never a TypeError, RangeError, hang or a large
 * allocation (the loader only takes views of the file).
 */
import { readFileSync } from 'node:fs';
import { KvCompressError } from '@kvcompress/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadLlama2cModel } from './llama2c.ts';
import { readLlama2cTokenizer } from './spm-tokenizer.ts';
import { requireShared } from './test-support.ts';

function outcome(run: () => void): string {
  const t0 = performance.now();
  try {
    run();
    return 'ok';
  } catch (e) {
    if (e instanceof KvCompressError) return e.code;
    throw e;
  } finally {
    expect(performance.now() - t0).toBeLessThan(2000);
  }
}

function loadBoth(model: Uint8Array, tok: Uint8Array): void {
  const m = loadLlama2cModel(model);
  const t = readLlama2cTokenizer(tok, m.config.vocabSize);
  t.decode(t.encode('Once upon a time, 😀 <s>\n'));
}

describe('llama2.c readers under mutation', () => {
  it('truncated and byte-mutated stories260K.bin / tok512.bin raise only named errors', (ctx) => {
    const model = new Uint8Array(readFileSync(requireShared('models/stories260K/stories260K.bin', ctx)));
    const tok = new Uint8Array(readFileSync(requireShared('models/stories260K/tok512.bin', ctx)));
    expect(outcome(() => loadBoth(model, tok))).toBe('ok');
    const codes = new Map<string, number>();
    const count = (c: string) => codes.set(c, (codes.get(c) ?? 0) + 1);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: model.length - 1 }), fc.integer({ min: 0, max: tok.length - 1 }), (m, t) => {
        count(outcome(() => loadBoth(model.subarray(0, m), tok)));
        count(outcome(() => loadBoth(model, tok.subarray(0, t))));
      }),
      { numRuns: 1500 },
    );
    // Header fields (the first 28 bytes) and the tokenizer's lengths get hostile values.
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 27 }),
        fc.integer({ min: 0, max: tok.length - 1 }),
        fc.constantFrom(0, 1, 0x7f, 0x80, 0xff),
        fc.integer({ min: 0, max: 255 }),
        (hp, tp, hv, tv) => {
          const m2 = model.slice(0, 4096 + (hp % 7) * 50_000);
          const t2 = tok.slice();
          m2[hp] = hv;
          t2[tp] = tv;
          count(outcome(() => loadBoth(m2, tok)));
          count(outcome(() => loadBoth(model, t2)));
        },
      ),
      { numRuns: 2000 },
    );
    expect(codes.get('MODEL_FORMAT') ?? 0).toBeGreaterThan(1000);
  }, 60_000);
});
