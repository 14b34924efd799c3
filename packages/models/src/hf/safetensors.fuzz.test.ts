import { elementCount, KvCompressError, validateModelConfig } from '@kvcompress/core';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { configFromHf } from './config.ts';
import { loadHfModelFromFiles } from './load.ts';
import { parseSafetensors, parseSafetensorsIndex } from './safetensors.ts';
import { tinyCheckpointFiles, tinyConfigJson, tinySpmTokenizerJson } from './test-fixtures.ts';
import { createHfTokenizer } from './tokenizer.ts';

/**
 * Fuzzing: truncated, bit-flipped and structurally mutated safetensors files, config.json
 * objects, indexes and tokenizer files must either load into something consistent or fail
 * with a `KvCompressError`, never anything else, and quickly.
 */

const BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2 };

/** Runs `fn`; a throw must be a KvCompressError. Returns the result or undefined. */
function ours<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (err) {
    if (!(err instanceof KvCompressError)) throw new Error(`not a KvCompressError: ${String(err)}`, { cause: err });
    return undefined;
  }
}

function checkParsed(bytes: Uint8Array): void {
  const file = ours(() => parseSafetensors(bytes));
  if (file === undefined) return;
  const spans: Array<[number, number]> = [];
  for (const t of file.tensors.values()) {
    expect(BYTES[t.dtype]).toBeDefined();
    expect(t.data.length).toBe(elementCount(t.shape) * BYTES[t.dtype]!);
    expect(t.data.buffer).toBe(bytes.buffer);
    const start = t.data.byteOffset - bytes.byteOffset;
    expect(start).toBeGreaterThanOrEqual(file.dataOffset);
    expect(start + t.data.length).toBeLessThanOrEqual(bytes.length);
    if (t.data.length > 0) spans.push([start, start + t.data.length]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
}

const valid = tinyCheckpointFiles('qwen2', { dtype: 'BF16' }).get('model.safetensors')!;
const headerLength = Number(new DataView(valid.buffer, valid.byteOffset).getBigUint64(0, true));
const header = JSON.parse(new TextDecoder().decode(valid.subarray(8, 8 + headerLength))) as Record<string, Record<string, unknown>>;
const names = Object.keys(header).filter((k) => k !== '__metadata__');

function withHeader(h: unknown, data = valid.subarray(8 + headerLength)): Uint8Array {
  const text = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

/** Numbers that tend to break bounds checks. */
const edgeNumber = fc.oneof(
  fc.integer({ min: -5, max: 5000 }),
  fc.constantFrom(-0, 0.5, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, Number.MAX_VALUE, Number.NaN, Infinity, -Infinity, 1e-300),
  fc.double(),
);
const jsonish = fc.oneof(
  edgeNumber,
  fc.string({ maxLength: 8 }),
  fc.constant(null),
  fc.boolean(),
  fc.array(edgeNumber, { maxLength: 4 }),
  fc.anything({ maxDepth: 2 }),
);

describe('safetensors fuzz', () => {
  it('the unmutated file parses', () => {
    expect(parseSafetensors(valid).tensors.size).toBe(names.length);
  });

  it('truncated files', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: valid.length }), (n) => checkParsed(valid.slice(0, n))),
      { numRuns: 1500 },
    );
  });

  it('flipped bytes (mostly in the length field and header)', () => {
    const position = fc.oneof(
      fc.integer({ min: 0, max: 7 }),
      fc.integer({ min: 8, max: 8 + headerLength - 1 }),
      fc.integer({ min: 0, max: valid.length - 1 }),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(position, fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), (edits) => {
        const bytes = valid.slice();
        for (const [i, v] of edits) bytes[i] = v;
        checkParsed(bytes);
      }),
      { numRuns: 2500 },
    );
  });

  it('arbitrary header length fields', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (n) => {
        const bytes = valid.slice();
        new DataView(bytes.buffer).setBigUint64(0, n, true);
        checkParsed(bytes);
      }),
      { numRuns: 500 },
    );
  });

  it('structurally mutated headers', () => {
    const field = fc.constantFrom('dtype', 'shape', 'data_offsets', 'extra');
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), tensor: fc.constantFrom(...names), field, value: jsonish }),
      fc.record({ kind: fc.constant('delete' as const), tensor: fc.constantFrom(...names), field }),
      fc.record({
        kind: fc.constant('offset' as const),
        tensor: fc.constantFrom(...names),
        which: fc.constantFrom(0, 1),
        delta: fc.integer({ min: -600, max: 600 }),
      }),
      fc.record({ kind: fc.constant('dim' as const), tensor: fc.constantFrom(...names), which: fc.nat(3), value: edgeNumber }),
      fc.record({
        kind: fc.constant('dtype' as const),
        tensor: fc.constantFrom(...names),
        value: fc.constantFrom('F32', 'F16', 'BF16', 'I64', 'U8', 'f32', ''),
      }),
      fc.record({ kind: fc.constant('replace' as const), tensor: fc.constantFrom(...names, '__metadata__', 'new'), value: jsonish }),
    );
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.integer({ min: -64, max: 64 }), (mutations, dataDelta) => {
        const h = structuredClone(header) as Record<string, unknown>;
        for (const m of mutations) {
          const entry = h[m.tensor] as { dtype?: unknown; shape?: unknown; data_offsets?: unknown; [k: string]: unknown } | undefined;
          if (m.kind === 'replace') h[m.tensor] = m.value;
          else if (typeof entry !== 'object' || entry === null) continue;
          else if (m.kind === 'set') entry[m.field] = m.value;
          else if (m.kind === 'delete') delete entry[m.field];
          else if (m.kind === 'dtype') entry.dtype = m.value;
          else if (m.kind === 'offset' && Array.isArray(entry.data_offsets))
            entry.data_offsets[m.which] = (entry.data_offsets[m.which] as number) + m.delta;
          else if (m.kind === 'dim' && Array.isArray(entry.shape)) entry.shape[m.which] = m.value;
        }
        const data = valid.subarray(8 + headerLength);
        const resized = dataDelta >= 0 ? new Uint8Array([...data, ...new Uint8Array(dataDelta)]) : data.slice(0, data.length + dataDelta);
        checkParsed(withHeader(h, resized));
      }),
      { numRuns: 2500 },
    );
  });

  it('random bytes and random JSON headers', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => checkParsed(bytes)),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 3 }), (h) => checkParsed(withHeader(h))),
      { numRuns: 500 },
    );
  });

  it('mutated index files', () => {
    const weightMap = Object.fromEntries(names.map((n, i) => [n, `model-0000${i % 3}.safetensors`]));
    fc.assert(
      fc.property(fc.constantFrom(...names), jsonish, fc.anything({ maxDepth: 3 }), (name, value, whole) => {
        ours(() => parseSafetensorsIndex({ metadata: { total_size: 1 }, weight_map: { ...weightMap, [name]: value } }));
        ours(() => parseSafetensorsIndex(whole));
        ours(() => parseSafetensorsIndex({ weight_map: whole }));
      }),
      { numRuns: 800 },
    );
  });
});

describe('config.json fuzz', () => {
  const bases = [
    tinyConfigJson('llama'),
    tinyConfigJson('qwen2'),
    tinyConfigJson('mistral'),
    tinyConfigJson('llama', {
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
      eos_token_id: [2, 3],
    }),
  ];
  const keys = [
    ...new Set([...bases.flatMap((b) => Object.keys(b)), 'head_dim', 'rope_parameters', 'architectures', 'model_type', 'attention_bias']),
  ];

  it('mutated fields give a valid config or a KvCompressError', () => {
    const mutation = fc.oneof(
      fc.record({
        key: fc.constantFrom(...keys),
        value: fc.oneof(jsonish, fc.constantFrom('llama', 'qwen2', 'gemma', 'linear', 'llama3')),
      }),
      fc.record({ key: fc.constantFrom(...keys), value: fc.constant(undefined) }),
      fc.record({
        key: fc.constant('rope_scaling'),
        value: fc.record(
          {
            rope_type: fc.constantFrom('llama3', 'linear', 'default', 'yarn', 3),
            type: fc.constantFrom('linear', 'dynamic'),
            factor: edgeNumber,
            low_freq_factor: edgeNumber,
            high_freq_factor: edgeNumber,
            original_max_position_embeddings: edgeNumber,
          },
          { requiredKeys: [] },
        ),
      }),
    );
    let accepted = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(...bases),
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        (base, mutations, withNames) => {
          const cfg: Record<string, unknown> = { ...base };
          for (const m of mutations) {
            if (m.value === undefined) delete cfg[m.key];
            else cfg[m.key] = m.value;
          }
          const config = ours(() => configFromHf(cfg, withNames ? new Set(['model.embed_tokens.weight']) : undefined));
          if (config !== undefined) {
            accepted++;
            validateModelConfig(config);
            expect(config.ropeLayout).toBe('rotate-half');
            expect(config.ropeDim).toBe(config.headDim);
            for (const id of config.eosTokenIds) expect(id).toBeLessThan(config.vocabSize);
          }
        },
      ),
      { numRuns: 3000 },
    );
    expect(accepted).toBeGreaterThan(0);
  });

  it('arbitrary values', () => {
    fc.assert(
      fc.property(fc.anything({ maxDepth: 3 }), (v) => {
        ours(() => configFromHf(v));
      }),
      { numRuns: 500 },
    );
  });
});

describe('whole-checkpoint and tokenizer fuzz', () => {
  it('checkpoints with a corrupted weight file or config fail with KvCompressError', async () => {
    const files = tinyCheckpointFiles('llama', { tokenizer: false });
    const weights = files.get('model.safetensors')!;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: weights.length - 1 }),
        fc.integer({ min: 0, max: 255 }),
        fc.boolean(),
        async (i, v, truncate) => {
          const bytes = truncate ? weights.slice(0, i) : weights.slice();
          if (!truncate) bytes[i] = v;
          const copy = new Map(files);
          copy.set('model.safetensors', bytes);
          try {
            await loadHfModelFromFiles(copy);
          } catch (err) {
            if (!(err instanceof KvCompressError)) throw err;
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('mutated tokenizer files fail with KvCompressError', () => {
    const json = tinySpmTokenizerJson();
    const parts = ['model', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'added_tokens'];
    // The library console.warn()s about a Replace without a pattern instead of throwing.
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    fc.assert(
      fc.property(
        fc.constantFrom(...parts),
        fc.oneof(jsonish, fc.record({ type: fc.constantFrom('BPE', 'Sequence', 'Replace', 'ByteLevel', 'TemplateProcessing', 'x') })),
        fc.record(
          { bos_token: fc.oneof(fc.string({ maxLength: 5 }), fc.constant('<s>'), jsonish), chat_template: jsonish },
          { requiredKeys: [] },
        ),
        (part, value, config) => {
          const tok = ours(() => createHfTokenizer({ ...json, [part]: value }, config));
          if (tok !== undefined) expect(tok.vocabSize).toBeGreaterThan(0);
        },
      ),
      { numRuns: 800 },
    );
    warn.mockRestore();
  });
});
