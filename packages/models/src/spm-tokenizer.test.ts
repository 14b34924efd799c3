import { readFileSync } from 'node:fs';
import { InvalidArgumentError, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseGguf } from './gguf.ts';
import { readLlama2cTokenizer, SpmTokenizer, SpmTokenType } from './spm-tokenizer.ts';
import { requireShared } from './test-support.ts';

type Ctx = { skip: (note?: string) => never };

function readShared(rel: string, ctx: Ctx): Uint8Array {
  return new Uint8Array(readFileSync(requireShared(rel, ctx)));
}

/** Pieces and scores of a llama2.c tokenizer.bin, read independently of the code under test. */
function readPieces(bytes: Uint8Array, n: number): { pieces: string[]; scores: number[] } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pieces: string[] = [];
  const scores: number[] = [];
  let p = 4;
  for (let i = 0; i < n; i++) {
    scores.push(dv.getFloat32(p, true));
    const len = dv.getInt32(p + 4, true);
    pieces.push(new TextDecoder().decode(bytes.subarray(p + 8, p + 8 + len)));
    p += 8 + len;
  }
  return { pieces, scores };
}

/** llama2.c run.c `encode`, transcribed literally (quadratic), as the reference. */
function runCEncode(pieces: string[], scores: number[], text: string, bos: boolean): number[] {
  const lookup = new Map<string, number>();
  pieces.forEach((p, i) => {
    if (!lookup.has(p)) lookup.set(p, i);
  });
  const tokens: number[] = [];
  if (bos) tokens.push(1);
  if (text !== '') tokens.push(lookup.get(' ')!);
  for (const ch of text) {
    const id = lookup.get(ch);
    if (id !== undefined) tokens.push(id);
    else for (const b of new TextEncoder().encode(ch)) tokens.push(b + 3);
  }
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = bos ? 1 : 0; i < tokens.length - 1; i++) {
      const id = lookup.get(pieces[tokens[i]!]! + pieces[tokens[i + 1]!]!);
      if (id !== undefined && scores[id]! > bestScore) {
        bestScore = scores[id]!;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

/** llama2.c run.c `decode` + printing, as the reference. */
function runCDecode(pieces: string[], ids: number[], prevStart = 1): string {
  const bytes: number[] = [];
  let prev = prevStart;
  for (const id of ids) {
    let piece = pieces[id]!;
    if (prev === 1 && piece.startsWith(' ')) piece = piece.slice(1);
    const m = /^<0x([0-9A-F]{2})>$/.exec(piece);
    if (m) bytes.push(Number.parseInt(m[1]!, 16));
    else bytes.push(...new TextEncoder().encode(piece));
    prev = id;
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

const alphabet = [...'abcdefghijklmnopqrstuvwxyz  ABCLOST.,!?\'"\n\t<>/-0123456789éü中😀‐™'];
const text = fc.array(fc.constantFrom(...alphabet), { maxLength: 120 }).map((a) => a.join(''));

describe('llama2.c tokenizer: stories260K tok512.bin', () => {
  it('decodes the reference greedy ids to the reference text, and encodes the text back to the same ids', (ctx) => {
    const tok = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    const ref = JSON.parse(new TextDecoder().decode(readShared('models/stories260K/reference_greedy.json', ctx))) as {
      token_ids: number[];
      text: string;
    };
    expect(ref.token_ids).toHaveLength(256);
    expect(tok.decode([1, ...ref.token_ids])).toBe(ref.text);
    expect(tok.decode(ref.token_ids)).toBe(ref.text);
    expect(tok.encode(ref.text)).toEqual([1, ...ref.token_ids]);
    expect(tok.encode(ref.text, { addBos: false })).toEqual(ref.token_ids);
    expect(tok.vocabSize).toBe(512);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.idToPiece(403)).toBe(' Once');
  });

  it('matches run.c encode and decode on random text', (ctx) => {
    const bytes = readShared('models/stories260K/tok512.bin', ctx);
    const tok = readLlama2cTokenizer(bytes, 512);
    const { pieces, scores } = readPieces(bytes, 512);
    fc.assert(
      fc.property(text, (s) => {
        const ids = tok.encode(s);
        expect(ids).toEqual(runCEncode(pieces, scores, s, true));
        expect(tok.decode(ids)).toBe(runCDecode(pieces, ids.slice(1)));
        expect(tok.decode(ids)).toBe(s); // lossless: byte fallback covers everything
      }),
      { numRuns: 400 },
    );
  });

  it('special tokens: never produced from text, skipped when decoding unless asked', (ctx) => {
    const tok = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    const ids = tok.encode('<s> hi </s> <unk>');
    expect(ids.slice(1)).not.toContain(1);
    expect(ids).not.toContain(2);
    expect(ids).not.toContain(0);
    expect(tok.decode(ids)).toBe('<s> hi </s> <unk>');
    expect(tok.decode([1, 403, 2])).toBe('Once');
    expect(tok.decode([1, 403, 2], { skipSpecial: false })).toBe('\n<s>\nOnce\n</s>\n');
    expect(tok.encode('')).toEqual([1]);
    expect(tok.encode('', { addBos: false })).toEqual([]);
    expect(tok.isSpecial(1)).toBe(true);
    expect(tok.isSpecial(403)).toBe(false);
    expect(() => tok.decode([512])).toThrow(InvalidArgumentError);
    expect(() => tok.decode([-1])).toThrow(InvalidArgumentError);
    expect(() => tok.decode([1.5])).toThrow(InvalidArgumentError);
  });

  it('parseSpecial matches llama2.c control pieces as stored ("\\n<s>\\n")', (ctx) => {
    const tok = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    expect(tok.encode('Hi\n</s>\nBye', { addBos: false, parseSpecial: true })).toEqual([
      ...tok.encode('Hi', { addBos: false }),
      2,
      ...tok.encode('Bye', { addBos: false }),
    ]);
  });

  it('byte fallback: newlines, accents, CJK and emoji round-trip; lone surrogates become U+FFFD', (ctx) => {
    const tok = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    const s = 'Line one\nLine two\ttab — café 中文 😀';
    const ids = tok.encode(s, { addBos: false });
    expect(ids).toContain(13); // <0x0A>
    expect(tok.decode(ids)).toBe(s);
    expect(tok.decode(tok.encode('a\ud800b'))).toBe('a\ufffdb');
    // A leading space survives (the dummy prefix adds a second one, decode strips one).
    expect(tok.decode(tok.encode('  two spaces'))).toBe('  two spaces');
    // tokenBytes is what run.c prints, without stripping.
    expect(new TextDecoder().decode(tok.tokenBytes(403))).toBe(' Once');
    expect(Array.from(tok.tokenBytes(13))).toEqual([10]);
  });

  it('encodes a whole book quickly and losslessly', (ctx) => {
    const tok = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    const book = new TextDecoder().decode(readShared('data/gutenberg/pg1342_pride_and_prejudice.txt', ctx));
    const t0 = performance.now();
    const ids = tok.encode(book);
    const ms = performance.now() - t0;
    expect(ids.length).toBeGreaterThan(100_000);
    expect(tok.decode(ids)).toBe(book);
    expect(ms).toBeLessThan(10_000);
    // And the fast path agrees with run.c on a slice of real prose.
    const { pieces, scores } = readPieces(readShared('models/stories260K/tok512.bin', ctx), 512);
    const slice = book.slice(5000, 8000);
    expect(tok.encode(slice)).toEqual(runCEncode(pieces, scores, slice, true));
  });
});

describe('GGUF vocabulary', () => {
  it('stories260K.gguf embeds the same tokenizer as tok512.bin: identical ids and text', (ctx) => {
    const gguf = parseGguf(readShared('models/stories260K/stories260K.gguf', ctx));
    const fromGguf = SpmTokenizer.fromGgufVocab(gguf.metadata);
    const fromBin = readLlama2cTokenizer(readShared('models/stories260K/tok512.bin', ctx), 512);
    expect(fromGguf.vocabSize).toBe(512);
    expect(fromGguf.spaceMarker).toBe('\u2581');
    expect(fromGguf.idToPiece(403)).toBe('\u2581Once');
    const ref = JSON.parse(new TextDecoder().decode(readShared('models/stories260K/reference_greedy.json', ctx))) as {
      token_ids: number[];
      text: string;
    };
    expect(fromGguf.encode(ref.text)).toEqual([1, ...ref.token_ids]);
    expect(fromGguf.decode([1, ...ref.token_ids])).toBe(ref.text);
    fc.assert(
      fc.property(text, (s) => {
        const ids = fromGguf.encode(s);
        expect(ids).toEqual(fromBin.encode(s));
        expect(fromGguf.decode(ids)).toBe(fromBin.decode(ids));
        expect(fromGguf.decode(ids)).toBe(s);
      }),
      { numRuns: 300 },
    );
  });

  const vocab = {
    'tokenizer.ggml.model': 'llama',
    'tokenizer.ggml.tokens': ['<unk>', '<s>', '</s>', '\u2581', 'a', 'b', '\u2581a', 'ab', '\u2581ab', '<0x0A>', 'c'],
    'tokenizer.ggml.scores': new Float32Array([0, 0, 0, -1, -1, -1, -2, -3, -1, 0, -1]),
    'tokenizer.ggml.token_type': new Int32Array([2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 1]),
    'tokenizer.ggml.bos_token_id': 1,
    'tokenizer.ggml.eos_token_id': 2,
    'tokenizer.ggml.unknown_token_id': 0,
    'tokenizer.chat_template': '{{ messages }}',
  };

  it('merges by highest score, leftmost first, and honours the metadata flags', () => {
    const tok = SpmTokenizer.fromGgufVocab(vocab);
    // "▁ab": "▁a" (-2) vs "ab" (-3): ▁a first, then "▁a"+"b" = "▁ab" (-1).
    expect(tok.encode('ab')).toEqual([1, 8]);
    expect(tok.encode('ab ab', { addBos: false })).toEqual([8, 8]);
    // Unknown character with no byte token: <unk>, once per character.
    expect(tok.encode('é', { addBos: false })).toEqual([3, 0]);
    expect(tok.encode('a\nc', { addBos: false })).toEqual([6, 9, 10]);
    expect(tok.decode([1, 6, 9, 10])).toBe('a\nc');
    expect(tok.decode([6, 0, 5], { skipSpecial: false })).toBe('a<unk>b');
    expect(tok.chatTemplate).toBe('{{ messages }}');
    const noPrefix = SpmTokenizer.fromGgufVocab({
      ...vocab,
      'tokenizer.ggml.add_space_prefix': false,
      'tokenizer.ggml.add_bos_token': false,
    });
    expect(noPrefix.encode('ab')).toEqual([7]);
    expect(noPrefix.decode([8])).toBe(' ab');
  });

  it('parseSpecial turns control pieces in the text into their ids; user-defined pieces always are', () => {
    const tok = SpmTokenizer.fromGgufVocab(vocab);
    expect(tok.encode('<s>ab</s>', { addBos: false })).not.toContain(1);
    // After a special piece the text gets the dummy prefix again (llama.cpp).
    expect(tok.encode('<s>ab</s>ab', { addBos: false, parseSpecial: true })).toEqual([1, 8, 2, 8]);
    expect(tok.encode('ab</s>', { parseSpecial: true })).toEqual([1, 8, 2]);
    expect(tok.encode('</s>', { addBos: false, parseSpecial: true })).toEqual([2]);
    const withUser = SpmTokenizer.fromGgufVocab({
      ...vocab,
      'tokenizer.ggml.tokens': [...vocab['tokenizer.ggml.tokens'], '<|user|>', '<|user|>x'],
      'tokenizer.ggml.scores': new Float32Array([...vocab['tokenizer.ggml.scores'], 0, 0]),
      'tokenizer.ggml.token_type': new Int32Array([...vocab['tokenizer.ggml.token_type'], 4, 4]),
    });
    // Longest user-defined piece first.
    expect(withUser.encode('a<|user|>xb<|user|>', { addBos: false })).toEqual([6, 12, 3, 5, 11]);
    expect(withUser.decode([6, 12, 3, 5, 11])).toBe('a<|user|>x b<|user|>');
  });

  it('ties go to the leftmost pair', () => {
    const tok = SpmTokenizer.fromGgufVocab({
      ...vocab,
      'tokenizer.ggml.tokens': ['<unk>', '<s>', '</s>', 'x', 'xx'],
      'tokenizer.ggml.scores': new Float32Array([0, 0, 0, 0, -1]),
      'tokenizer.ggml.token_type': new Int32Array([2, 3, 3, 1, 1]),
      'tokenizer.ggml.add_space_prefix': false,
    });
    expect(tok.encode('xxx', { addBos: false })).toEqual([4, 3]);
    expect(tok.encode('xxxxx', { addBos: false })).toEqual([4, 4, 3]);
  });

  it('rejects malformed or foreign vocabularies', () => {
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.model': 'gpt2' })).toThrow(UnsupportedModelError);
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.model': 'gpt2' })).toThrow(/"gpt2"/);
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.scores': new Float32Array(3) })).toThrow(
      /3 entries but tokenizer.ggml.tokens has 11/,
    );
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.tokens': [1, 2] })).toThrow(ModelFormatError);
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.bos_token_id': 99 })).toThrow(/BOS id 99 is outside/);
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.add_bos_token': 1 })).toThrow(/must be a bool/);
    expect(() => SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.tokens': [] })).toThrow(ModelFormatError);
    const noTypes = SpmTokenizer.fromGgufVocab({ ...vocab, 'tokenizer.ggml.token_type': undefined });
    expect(noTypes.encode('\n', { addBos: false })).toEqual([3, 9]); // <0x0A> still recognised as a byte token
    expect(SpmTokenType.BYTE).toBe(6);
  });
});

describe('other llama2.c vocabularies', () => {
  it('aidreams260K: its own BPE vocabulary round-trips and matches run.c', (ctx) => {
    const bytes = readShared('models/aidreams260K/tok512.bin', ctx);
    const tok = readLlama2cTokenizer(bytes, 512);
    const { pieces, scores } = readPieces(bytes, 512);
    const s = 'Echoes of vectors unfold, a gentle hum of precision, as I sense the nodes.';
    const ids = tok.encode(s);
    expect(ids.length).toBeLessThan(s.length / 2);
    expect(ids).toEqual(runCEncode(pieces, scores, s, true));
    expect(tok.decode(ids)).toBe(s);
    fc.assert(
      fc.property(text, (t) => {
        expect(tok.encode(t)).toEqual(runCEncode(pieces, scores, t, true));
      }),
      { numRuns: 200 },
    );
  });

  it('zh-poem: character-level, no byte fallback, no dummy prefix, unknown characters are <unk>', (ctx) => {
    const bytes = readShared('models/zh-poem-750K/poem_tok.bin', ctx);
    const tok = readLlama2cTokenizer(bytes, 2048);
    const { pieces } = readPieces(bytes, 2048);
    expect(tok.addSpacePrefix).toBe(false);
    const prompt = '主题：明月 体裁：五绝\n';
    const ids = tok.encode(prompt);
    expect(ids[0]).toBe(1);
    expect(ids.slice(1)).toEqual([...prompt].map((c) => pieces.indexOf(c)));
    expect(ids).not.toContain(-1);
    expect(tok.decode(ids)).toBe(prompt);
    const poem = '江上春云起，江南水僻春。';
    expect(tok.decode(tok.encode(poem))).toBe(poem);
    // Characters outside the vocabulary (emoji, Latin letters it lacks) are one <unk> each.
    const odd = tok.encode('😀月', { addBos: false });
    expect(odd).toEqual([0, pieces.indexOf('月')]);
    expect(tok.decode(odd)).toBe('月');
    expect(tok.decode(odd, { skipSpecial: false })).toBe('<unk>月');
    expect(tok.decode([1, 3, 2], { skipSpecial: false })).toBe('<s>\n</s>');
  });

  it('rejects a wrong vocabulary size or a damaged file', (ctx) => {
    const bytes = readShared('models/stories260K/tok512.bin', ctx);
    expect(() => readLlama2cTokenizer(bytes, 500)).toThrow(/bytes after its 500 tokens.*vocabulary size is probably wrong/);
    expect(() => readLlama2cTokenizer(bytes, 600)).toThrow(ModelFormatError);
    expect(() => readLlama2cTokenizer(bytes.subarray(0, 5000), 512)).toThrow(/truncated|beyond the end/);
    expect(() => readLlama2cTokenizer(bytes, 0)).toThrow(InvalidArgumentError);
    const broken = bytes.slice();
    new DataView(broken.buffer).setInt32(8, 1 << 30, true); // length of token 0
    expect(() => readLlama2cTokenizer(broken, 512)).toThrow(/token 0 at offset 4 has length 1073741824/);
  });
});
