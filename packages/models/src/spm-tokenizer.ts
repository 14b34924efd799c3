/**
 * SentencePiece-style BPE tokenizer with llama.cpp (`llm_tokenizer_spm`) / llama2.c (`run.c`
 * `encode`) semantics, from a list of pieces, scores and token types:
 *
 * - a dummy prefix: one leading space is added to non-empty text; spaces are written as the
 *   vocabulary's space marker (SentencePiece `▁` U+2581 in GGUF, a plain ` ` in llama2.c);
 * - the text is split into characters (code points) looked up in the vocabulary; a character
 *   with no piece becomes its UTF-8 bytes as `<0xNN>` tokens (byte fallback), or `<unk>`
 *   when the vocabulary has no byte tokens;
 * - then, repeatedly, the adjacent pair whose concatenation is a piece with the highest score
 *   is merged (leftmost on ties), as llama2.c's quadratic loop does, but with an indexed
 *   heap: O(n log n), so whole books encode in well under a second per MB.
 *
 * Byte, control, unknown and unused tokens never take part in merges, so plain text never
 * encodes to `<s>` / `</s>`. Decoding writes `<0xNN>` as raw bytes, turns the marker back into
 * spaces and drops the dummy-prefix space of the first piece (at the start and after BOS,
 * as run.c does).
 */
import { InvalidArgumentError, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import type { Tokenizer } from './types.ts';

/** llama.cpp token types (`tokenizer.ggml.token_type`). */
export const SpmTokenType = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

export interface SpmVocabulary {
  /** Piece texts, with spaces written as `spaceMarker`. */
  readonly pieces: readonly string[];
  readonly scores: ArrayLike<number>;
  /** `SpmTokenType` of each piece. */
  readonly types: ArrayLike<number>;
  /** Raw bytes of each piece when they are not valid UTF-8 (llama2.c files); null entries use `pieces`. */
  readonly rawPieces?: readonly (Uint8Array | null)[];
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly unkTokenId: number | null;
  /** `▁` for SentencePiece/GGUF vocabularies, ` ` for llama2.c ones. */
  readonly spaceMarker: string;
  /** Add the dummy-prefix space (default true). */
  readonly addSpacePrefix?: boolean;
  /** Default of `encode`'s `addBos` (default true when there is a BOS). */
  readonly addBos?: boolean;
  readonly chatTemplate?: string | null;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8 = new TextEncoder();

function isMergeable(type: number): boolean {
  return type === SpmTokenType.NORMAL || type === SpmTokenType.USER_DEFINED;
}

export class SpmTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly unkTokenId: number | null;
  readonly chatTemplate: string | null;
  readonly addSpacePrefix: boolean;
  readonly spaceMarker: string;
  private readonly addBosDefault: boolean;
  private readonly pieces: readonly string[];
  private readonly scores: Float32Array;
  private readonly types: Uint8Array;
  /** Piece text -> id (first id when a piece repeats), mergeable and byte-less pieces only. */
  private readonly pieceIds = new Map<string, number>();
  /** Id of each BMP character that has a mergeable single-character piece, else -1. */
  private readonly charIds = new Int32Array(0x10000).fill(-1);
  /** Token of each byte value for the fallback, -1 when absent. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  /** (left id * vocabSize + right id) -> merged id. */
  private readonly merges = new Map<number, number>();
  /** Bytes each token decodes to. */
  private readonly tokenBytesTable: Uint8Array[];
  private readonly special: Uint8Array;
  /** User-defined pieces, longest first (matched whole in any text). */
  private readonly userPieces: (readonly [string, number])[] = [];
  /** Control, unknown and user-defined pieces, longest first (matched with `parseSpecial`). */
  private readonly specialPieces: (readonly [string, number])[] = [];

  constructor(vocab: SpmVocabulary) {
    const n = vocab.pieces.length;
    if (n < 1 || n > 1 << 24) throw new ModelFormatError(`A tokenizer needs 1 to 2^24 pieces, got ${n}.`);
    if (vocab.scores.length !== n || vocab.types.length !== n) {
      throw new ModelFormatError(`Tokenizer has ${n} pieces but ${vocab.scores.length} scores and ${vocab.types.length} token types.`);
    }
    const checkId = (id: number | null, what: string): void => {
      if (id !== null && (!Number.isInteger(id) || id < 0 || id >= n)) {
        throw new ModelFormatError(`Tokenizer ${what} id ${id} is outside the vocabulary of ${n} pieces.`);
      }
    };
    checkId(vocab.bosTokenId, 'BOS');
    checkId(vocab.unkTokenId, 'unknown-token');
    for (const id of vocab.eosTokenIds) checkId(id, 'EOS');
    this.vocabSize = n;
    this.bosTokenId = vocab.bosTokenId;
    this.eosTokenIds = [...vocab.eosTokenIds];
    this.unkTokenId = vocab.unkTokenId;
    this.chatTemplate = vocab.chatTemplate ?? null;
    this.addSpacePrefix = vocab.addSpacePrefix ?? true;
    this.spaceMarker = vocab.spaceMarker;
    if ([...this.spaceMarker].length !== 1)
      throw new InvalidArgumentError(`The space marker must be one character, got "${this.spaceMarker}".`);
    this.addBosDefault = (vocab.addBos ?? true) && this.bosTokenId !== null;
    this.pieces = vocab.pieces;
    this.scores = Float32Array.from(vocab.scores);
    this.types = new Uint8Array(n);
    this.special = new Uint8Array(n);
    this.tokenBytesTable = new Array(n);

    for (let id = 0; id < n; id++) {
      const piece = vocab.pieces[id]!;
      let type = vocab.types[id]!;
      if (!(type >= 0 && type <= 6) || !Number.isInteger(type)) type = SpmTokenType.NORMAL;
      if (id === this.bosTokenId || this.eosTokenIds.includes(id)) type = SpmTokenType.CONTROL;
      if (id === this.unkTokenId) type = SpmTokenType.UNKNOWN;
      const byteMatch = type === SpmTokenType.BYTE ? BYTE_PIECE.exec(piece) : null;
      if (type === SpmTokenType.BYTE && byteMatch === null) type = SpmTokenType.NORMAL; // llama.cpp would abort; treat as text
      this.types[id] = type;
      this.special[id] = type === SpmTokenType.CONTROL || type === SpmTokenType.UNKNOWN || type === SpmTokenType.UNUSED ? 1 : 0;
      if (byteMatch !== null) {
        const b = Number.parseInt(byteMatch[1]!, 16);
        if (this.byteIds[b] === -1) this.byteIds[b] = id;
        this.tokenBytesTable[id] = Uint8Array.of(b);
        continue;
      }
      const raw = vocab.rawPieces?.[id] ?? null;
      this.tokenBytesTable[id] =
        raw ?? utf8.encode(isMergeable(type) && this.spaceMarker !== ' ' ? piece.replaceAll(this.spaceMarker, ' ') : piece);
      if (raw !== null || !isMergeable(type) || piece.length === 0 || this.pieceIds.has(piece)) continue;
      this.pieceIds.set(piece, id);
      if (piece.length === 1) {
        const c = piece.charCodeAt(0);
        if (c < 0xd800 || c > 0xdfff) this.charIds[c] = id;
      }
    }

    for (let id = 0; id < n; id++) {
      const type = this.types[id]!;
      const piece = vocab.pieces[id]!;
      if (piece.length === 0 || vocab.rawPieces?.[id]) continue;
      if (type === SpmTokenType.USER_DEFINED) this.userPieces.push([piece, id]);
      if (type === SpmTokenType.USER_DEFINED || type === SpmTokenType.CONTROL || type === SpmTokenType.UNKNOWN)
        this.specialPieces.push([piece, id]);
    }
    const longestFirst = (a: readonly [string, number], b: readonly [string, number]): number => b[0].length - a[0].length || a[1] - b[1];
    this.userPieces.sort(longestFirst);
    this.specialPieces.sort(longestFirst);

    // Every way to write a piece as two pieces is a merge.
    for (const [piece, id] of this.pieceIds) {
      for (let k = 1; k < piece.length; k++) {
        const c = piece.charCodeAt(k);
        if (c >= 0xdc00 && c <= 0xdfff) continue; // would split a surrogate pair
        const a = this.pieceIds.get(piece.slice(0, k));
        if (a === undefined) continue;
        const b = this.pieceIds.get(piece.slice(k));
        if (b === undefined) continue;
        this.merges.set(a * n + b, id);
      }
    }
  }

  /** Builds the tokenizer of a GGUF file with `tokenizer.ggml.model` = `llama` from its metadata. */
  static fromGgufVocab(metadata: Readonly<Record<string, unknown>>): SpmTokenizer {
    const get = (key: string): unknown => (Object.hasOwn(metadata, key) ? metadata[key] : undefined);
    const model = get('tokenizer.ggml.model');
    if (model !== 'llama') {
      throw new UnsupportedModelError(
        `GGUF tokenizer.ggml.model is ${JSON.stringify(model)}; only "llama" (SentencePiece BPE) is supported here.`,
      );
    }
    const tokens = get('tokenizer.ggml.tokens');
    if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === 'string')) {
      throw new ModelFormatError('GGUF tokenizer.ggml.tokens must be an array of strings.');
    }
    const n = tokens.length;
    const scores = numberArray(get('tokenizer.ggml.scores'), n, 'tokenizer.ggml.scores') ?? new Float32Array(n);
    const types = numberArray(get('tokenizer.ggml.token_type'), n, 'tokenizer.ggml.token_type') ?? inferTypes(tokens);
    const bos = optionalId(get('tokenizer.ggml.bos_token_id'), 'tokenizer.ggml.bos_token_id');
    const eos = optionalId(get('tokenizer.ggml.eos_token_id'), 'tokenizer.ggml.eos_token_id');
    const eot = optionalId(get('tokenizer.ggml.eot_token_id'), 'tokenizer.ggml.eot_token_id');
    const eom = optionalId(get('tokenizer.ggml.eom_token_id'), 'tokenizer.ggml.eom_token_id');
    let unk = optionalId(get('tokenizer.ggml.unknown_token_id'), 'tokenizer.ggml.unknown_token_id');
    if (unk === null && get('tokenizer.ggml.unknown_token_id') === undefined) unk = types[0] === SpmTokenType.UNKNOWN ? 0 : null;
    const eosIds = [...new Set([eos, eot, eom].filter((x): x is number => x !== null))];
    const template = get('tokenizer.chat_template');
    return new SpmTokenizer({
      pieces: tokens as string[],
      scores,
      types,
      bosTokenId: bos,
      eosTokenIds: eosIds,
      unkTokenId: unk,
      spaceMarker: '\u2581',
      addSpacePrefix: optionalBool(get('tokenizer.ggml.add_space_prefix'), 'tokenizer.ggml.add_space_prefix') ?? true,
      addBos: optionalBool(get('tokenizer.ggml.add_bos_token'), 'tokenizer.ggml.add_bos_token') ?? true,
      chatTemplate: typeof template === 'string' ? template : null,
    });
  }

  /**
   * Ids of `text`, with BOS first when `addBos` (default: the vocabulary's `add_bos_token`).
   * User-defined pieces in the text are always matched whole (as llama.cpp does); control
   * pieces (`<s>`, `</s>`, `<unk>`) only with `parseSpecial` (default false), e.g. for a
   * rendered chat template. As in llama.cpp, the text after a special piece gets the
   * dummy-prefix space again.
   */
  encode(text: string, options: { readonly addBos?: boolean; readonly parseSpecial?: boolean } = {}): number[] {
    const out: number[] = [];
    if (options.addBos ?? this.addBosDefault) {
      if (this.bosTokenId === null) throw new InvalidArgumentError('This tokenizer has no BOS token, so addBos cannot be true.');
      out.push(this.bosTokenId);
    }
    let prevSpecial = true;
    for (const fragment of this.partition(text, options.parseSpecial ?? false)) {
      if (typeof fragment === 'number') {
        out.push(fragment);
        prevSpecial = true;
        continue;
      }
      if (fragment.length === 0) continue;
      let s = this.addSpacePrefix && prevSpecial ? ' ' + fragment : fragment;
      if (this.spaceMarker !== ' ') s = s.replaceAll(' ', this.spaceMarker);
      this.mergeSymbols(this.initialSymbols(s), out);
      prevSpecial = false;
    }
    return out;
  }

  /** Splits `text` at special pieces (longest first), which become their ids. */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    let fragments: (string | number)[] = [text];
    for (const [piece, id] of parseSpecial ? this.specialPieces : this.userPieces) {
      if (!text.includes(piece)) continue;
      const next: (string | number)[] = [];
      for (const f of fragments) {
        if (typeof f === 'number') {
          next.push(f);
          continue;
        }
        let start = 0;
        for (let k = f.indexOf(piece); k >= 0; k = f.indexOf(piece, start)) {
          if (k > start) next.push(f.slice(start, k));
          next.push(id);
          start = k + piece.length;
        }
        if (start < f.length) next.push(f.slice(start));
      }
      fragments = next;
    }
    return fragments;
  }

  /** Characters to ids: pieces where the vocabulary has them, else byte tokens or `<unk>`. */
  private initialSymbols(s: string): Int32Array {
    let ids = new Int32Array(s.length + 8);
    let m = 0;
    const len = s.length;
    for (let i = 0; i < len; i++) {
      if (m + 4 > ids.length) {
        const grown = new Int32Array(ids.length * 2);
        grown.set(ids);
        ids = grown;
      }
      const c = s.charCodeAt(i);
      let id: number;
      let cp = c;
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < len ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          cp = ((c - 0xd800) << 10) + (d - 0xdc00) + 0x10000;
          id = this.pieceIds.get(s.slice(i, i + 2)) ?? -1;
          i++;
        } else {
          cp = 0xfffd; // a lone surrogate is written as U+FFFD, as TextEncoder does
          id = this.charIds[cp]!;
        }
      } else {
        id = this.charIds[c]!;
      }
      if (id >= 0) {
        ids[m++] = id;
        continue;
      }
      // Byte fallback over the UTF-8 of the code point.
      if (cp < 0x80) {
        m = this.pushByte(ids, m, cp);
      } else if (cp < 0x800) {
        m = this.pushByte(ids, m, 0xc0 | (cp >> 6));
        m = this.pushByte(ids, m, 0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        m = this.pushByte(ids, m, 0xe0 | (cp >> 12));
        m = this.pushByte(ids, m, 0x80 | ((cp >> 6) & 0x3f));
        m = this.pushByte(ids, m, 0x80 | (cp & 0x3f));
      } else {
        m = this.pushByte(ids, m, 0xf0 | (cp >> 18));
        m = this.pushByte(ids, m, 0x80 | ((cp >> 12) & 0x3f));
        m = this.pushByte(ids, m, 0x80 | ((cp >> 6) & 0x3f));
        m = this.pushByte(ids, m, 0x80 | (cp & 0x3f));
      }
    }
    return ids.subarray(0, m);
  }

  /** Appends the byte token of `b`; without one, a single `<unk>` for the whole character. */
  private pushByte(ids: Int32Array, m: number, b: number): number {
    const id = this.byteIds[b]!;
    if (id >= 0) {
      ids[m] = id;
      return m + 1;
    }
    // No byte fallback: one <unk> per character (the lead byte or the first missing byte decides).
    if (m > 0 && ids[m - 1] === this.unkTokenId && b >= 0x80 && b < 0xc0) return m;
    ids[m] = this.unkTokenId ?? 0;
    return m + 1;
  }

  /**
   * Greedy BPE: repeatedly merge the adjacent pair with the highest-scoring merged piece
   * (leftmost first on ties). Each symbol holds its best merge with its right neighbour; an
   * indexed binary heap of symbols orders them by (score desc, position asc).
   */
  private mergeSymbols(ids: Int32Array, out: number[]): void {
    const m = ids.length;
    if (m === 0) return;
    const n = this.vocabSize;
    const merges = this.merges;
    const scores = this.scores;
    const next = new Int32Array(m);
    const prev = new Int32Array(m);
    const cand = new Int32Array(m).fill(-1); // merged id of (i, next[i]) or -1
    const candScore = new Float32Array(m);
    const heap = new Int32Array(m); // symbol positions
    const where = new Int32Array(m).fill(-1); // position in heap or -1
    let size = 0;

    const before = (a: number, b: number): boolean => {
      const sa = candScore[a]!;
      const sb = candScore[b]!;
      return sa > sb || (sa === sb && a < b);
    };
    const up = (k: number): void => {
      const x = heap[k]!;
      while (k > 0) {
        const p = (k - 1) >> 1;
        const y = heap[p]!;
        if (!before(x, y)) break;
        heap[k] = y;
        where[y] = k;
        k = p;
      }
      heap[k] = x;
      where[x] = k;
    };
    const down = (k: number): void => {
      const x = heap[k]!;
      for (;;) {
        let c = 2 * k + 1;
        if (c >= size) break;
        if (c + 1 < size && before(heap[c + 1]!, heap[c]!)) c++;
        const y = heap[c]!;
        if (!before(y, x)) break;
        heap[k] = y;
        where[y] = k;
        k = c;
      }
      heap[k] = x;
      where[x] = k;
    };
    const remove = (i: number): void => {
      const k = where[i]!;
      if (k < 0) return;
      where[i] = -1;
      size--;
      if (k === size) return;
      const last = heap[size]!;
      heap[k] = last;
      where[last] = k;
      up(k);
      down(where[last]!);
    };
    /** Recomputes the candidate of symbol i (with next[i]) and its place in the heap. */
    const refresh = (i: number): void => {
      const j = next[i]!;
      const merged = j < 0 ? undefined : merges.get(ids[i]! * n + ids[j]!);
      if (merged === undefined) {
        cand[i] = -1;
        remove(i);
        return;
      }
      cand[i] = merged;
      candScore[i] = scores[merged]!;
      const k = where[i]!;
      if (k < 0) {
        heap[size] = i;
        where[i] = size;
        size++;
        up(size - 1);
      } else {
        up(k);
        down(where[i]!);
      }
    };

    for (let i = 0; i < m; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < m ? i + 1 : -1;
    }
    for (let i = 0; i + 1 < m; i++) {
      const merged = merges.get(ids[i]! * n + ids[i + 1]!);
      if (merged === undefined) continue;
      cand[i] = merged;
      candScore[i] = scores[merged]!;
      heap[size] = i;
      where[i] = size;
      size++;
    }
    for (let k = (size >> 1) - 1; k >= 0; k--) down(k);

    while (size > 0) {
      const i = heap[0]!;
      const j = next[i]!; // cand[i] >= 0 for every symbol in the heap, so j >= 0
      ids[i] = cand[i]!;
      remove(j);
      const after = next[j]!;
      next[i] = after;
      if (after >= 0) prev[after] = i;
      refresh(i);
      const p = prev[i]!;
      if (p >= 0) refresh(p);
    }
    for (let i = 0; i >= 0; i = next[i]!) out.push(ids[i]!);
  }

  /** Text of `ids`. Special tokens (BOS, EOS, `<unk>`, control) are left out unless `skipSpecial` is false. */
  decode(ids: readonly number[], options: { readonly skipSpecial?: boolean } = {}): string {
    const skipSpecial = options.skipSpecial ?? true;
    let buf = new Uint8Array(Math.max(16, ids.length * 4));
    let len = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidArgumentError(`Token id ${id} at index ${i} is outside the vocabulary of ${this.vocabSize}.`);
      }
      if (skipSpecial && this.special[id] === 1) continue;
      let bytes = this.tokenBytesTable[id]!;
      if (
        this.addSpacePrefix &&
        bytes[0] === 0x20 &&
        (i === 0 || ids[i - 1] === this.bosTokenId) &&
        this.special[id] === 0 &&
        this.types[id] !== SpmTokenType.BYTE
      ) {
        bytes = bytes.subarray(1);
      }
      if (len + bytes.length > buf.length) {
        const grown = new Uint8Array(Math.max(buf.length * 2, len + bytes.length));
        grown.set(buf.subarray(0, len));
        buf = grown;
      }
      buf.set(bytes, len);
      len += bytes.length;
    }
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(buf.subarray(0, len));
  }

  /** The bytes a token stands for, as run.c prints them (no dummy-prefix stripping), for streaming output. */
  tokenBytes(id: number): Uint8Array {
    const b = this.tokenBytesTable[id];
    if (b === undefined) throw new InvalidArgumentError(`Token id ${id} is outside the vocabulary of ${this.vocabSize}.`);
    return b;
  }

  /** The piece of a token as stored in the vocabulary (`▁` marker, `<0x0A>`, `<s>` ...). */
  idToPiece(id: number): string {
    const p = this.pieces[id];
    if (p === undefined) throw new InvalidArgumentError(`Token id ${id} is outside the vocabulary of ${this.vocabSize}.`);
    return p;
  }

  /** Id of a piece (any type), or null. */
  pieceToId(piece: string): number | null {
    const id = this.pieceIds.get(piece);
    if (id !== undefined) return id;
    const i = this.pieces.indexOf(piece);
    return i < 0 ? null : i;
  }

  /** Whether a token is special (control, unknown or unused) and skipped by `decode`. */
  isSpecial(id: number): boolean {
    return this.special[id] === 1;
  }
}

/**
 * Reads a llama2.c `tokenizer.bin`: int32 max_token_length, then `vocabSize` × { float32
 * score, int32 length, bytes }. Ids 0, 1 and 2 are `<unk>`, BOS and EOS by llama2.c
 * convention; `<0xNN>` pieces are byte-fallback tokens. Vocabularies without byte tokens
 * (character-level ones such as zh-poem's) get no dummy prefix by default: such vocabularies
 * were not trained with SentencePiece's `▁` convention.
 */
export function readLlama2cTokenizer(
  bytes: Uint8Array,
  vocabSize: number,
  options: { readonly addSpacePrefix?: boolean; readonly chatTemplate?: string | null } = {},
): SpmTokenizer {
  if (!Number.isInteger(vocabSize) || vocabSize < 3 || vocabSize > 1 << 24) {
    throw new InvalidArgumentError(`A llama2.c vocabulary size must be an integer from 3 to 2^24, got ${vocabSize}.`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4)
    throw new ModelFormatError(`A llama2.c tokenizer starts with a 4-byte header; the file has ${bytes.byteLength} bytes.`);
  const maxLen = view.getInt32(0, true);
  if (maxLen < 1) throw new ModelFormatError(`llama2.c tokenizer max_token_length at offset 0 is ${maxLen}; it must be positive.`);
  if (vocabSize * 8 > bytes.byteLength - 4) {
    throw new ModelFormatError(
      `A llama2.c tokenizer of ${vocabSize} tokens needs at least ${4 + vocabSize * 8} bytes; the file has ${bytes.byteLength}.`,
    );
  }
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const pieces: string[] = new Array(vocabSize);
  const rawPieces: (Uint8Array | null)[] = new Array(vocabSize).fill(null);
  const scores = new Float32Array(vocabSize);
  const types = new Uint8Array(vocabSize).fill(SpmTokenType.NORMAL);
  let pos = 4;
  for (let id = 0; id < vocabSize; id++) {
    if (pos + 8 > bytes.byteLength) {
      throw new ModelFormatError(
        `llama2.c tokenizer is truncated at token ${id} (offset ${pos}); expected ${vocabSize} tokens. Is the vocabulary size right?`,
      );
    }
    scores[id] = view.getFloat32(pos, true);
    const len = view.getInt32(pos + 4, true);
    if (len < 0 || len > bytes.byteLength - pos - 8) {
      throw new ModelFormatError(
        `llama2.c tokenizer token ${id} at offset ${pos} has length ${len}, beyond the end of the ${bytes.byteLength}-byte file.`,
      );
    }
    const raw = bytes.subarray(pos + 8, pos + 8 + len);
    try {
      pieces[id] = decoder.decode(raw);
    } catch {
      pieces[id] = new TextDecoder('utf-8').decode(raw);
      rawPieces[id] = raw.slice();
    }
    if (BYTE_PIECE.test(pieces[id]!)) types[id] = SpmTokenType.BYTE;
    pos += 8 + len;
  }
  if (pos !== bytes.byteLength) {
    throw new ModelFormatError(
      `llama2.c tokenizer has ${bytes.byteLength - pos} bytes after its ${vocabSize} tokens (offset ${pos}); the vocabulary size is probably wrong.`,
    );
  }
  types[0] = SpmTokenType.UNKNOWN;
  types[1] = SpmTokenType.CONTROL;
  types[2] = SpmTokenType.CONTROL;
  const hasBytes = types.includes(SpmTokenType.BYTE);
  return new SpmTokenizer({
    pieces,
    scores,
    types,
    rawPieces,
    bosTokenId: 1,
    eosTokenIds: [2],
    unkTokenId: 0,
    spaceMarker: ' ',
    addSpacePrefix: options.addSpacePrefix ?? hasBytes,
    addBos: true,
    chatTemplate: options.chatTemplate ?? null,
  });
}

function numberArray(v: unknown, n: number, key: string): ArrayLike<number> | null {
  if (v === undefined) return null;
  const ok =
    (ArrayBuffer.isView(v) && !(v instanceof DataView) && !(v instanceof BigInt64Array) && !(v instanceof BigUint64Array)) ||
    (Array.isArray(v) && v.every((x) => typeof x === 'number'));
  if (!ok) throw new ModelFormatError(`GGUF ${key} must be an array of numbers.`);
  const arr = v as ArrayLike<number>;
  if (arr.length !== n) throw new ModelFormatError(`GGUF ${key} has ${arr.length} entries but tokenizer.ggml.tokens has ${n}.`);
  return arr;
}

function inferTypes(tokens: readonly string[]): Uint8Array {
  const types = new Uint8Array(tokens.length).fill(SpmTokenType.NORMAL);
  tokens.forEach((t, i) => {
    if (BYTE_PIECE.test(t)) types[i] = SpmTokenType.BYTE;
  });
  return types;
}

function optionalId(v: unknown, key: string): number | null {
  if (v === undefined) return null;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ModelFormatError(`GGUF ${key} must be an integer, found ${String(v)}.`);
  if (v === -1 || v === 0xffffffff) return null; // "none"
  return v;
}

function optionalBool(v: unknown, key: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new ModelFormatError(`GGUF ${key} must be a bool, found ${String(v)}.`);
  return v;
}
