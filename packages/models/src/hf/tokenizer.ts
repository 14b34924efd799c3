import { Tokenizer as HfLibTokenizer } from '@huggingface/tokenizers';
import { InvalidArgumentError, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import type { Tokenizer } from '../types.ts';
import { type ChatMessage, type ChatTemplate, compileChatTemplate, type RenderChatOptions } from './chat.ts';
import { describe, field, isPlainObject } from './util.ts';

/**
 * `tokenizer.json` + `tokenizer_config.json` as our `Tokenizer`, on `@huggingface/tokenizers`
 * (BPE incl. byte-level and SentencePiece-style byte fallback, Unigram, WordPiece).
 *
 * Differences from the library's own behaviour, to match transformers:
 * - BOS handling is ours: text is encoded without the post-processor's special tokens and
 *   the BOS is prepended when `addBos` (default: `add_bos_token` of tokenizer_config.json,
 *   else whether tokenizer.json's post-processor adds it). A BOS the text already starts
 *   with (chat templates write `{{ bos_token }}`) is not doubled.
 * - `clean_up_tokenization_spaces` defaults to false (the library defaults to true, which
 *   rewrites " ." to "." and " 's" to "'s").
 * - Ids without a token (e.g. the padding rows of a model's larger vocab) decode to nothing,
 *   as in the Rust tokenizers; `decode([])` is `''` (the library throws).
 */
export interface HfTokenizer extends Tokenizer {
  /** Text of the BOS token, if any (for `{{ bos_token }}` in chat templates). */
  readonly bosToken: string | null;
  /** Text of the EOS token named by tokenizer_config.json, if any. */
  readonly eosToken: string | null;
  /** Whether `encode` prepends the BOS when `addBos` is not given. */
  readonly addBosByDefault: boolean;
  tokenToId(token: string): number | null;
  idToToken(id: number): string | null;
  /**
   * Renders a conversation with the tokenizer's chat template and its BOS/EOS texts.
   * Throws `UnsupportedModelError` when the files carry no chat template.
   */
  applyChatTemplate(
    messages: readonly ChatMessage[],
    options?: { readonly addGenerationPrompt?: boolean; readonly variables?: RenderChatOptions['variables'] },
  ): string;
}

export interface HfTokenizerOptions {
  /** A chat template that replaces tokenizer_config.json's (e.g. the file `chat_template.jinja`). */
  readonly chatTemplate?: string | null;
  /** Which template to use when `chat_template` is a list of named ones. Default `"default"`. */
  readonly chatTemplateName?: string;
  /** More ids that end generation (`eos_token_id` of config.json / generation_config.json). */
  readonly extraEosTokenIds?: readonly number[];
}

/**
 * The chat template from a `chat_template` value of tokenizer_config.json: a string, a list
 * of `{ name, template }` (transformers), or a name -> template object. For the list forms
 * the one called `name`, else `"default"`, else the first. `null` when absent.
 */
export function selectChatTemplate(value: unknown, name = 'default'): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  const named = new Map<string, string>();
  if (Array.isArray(value)) {
    for (const [i, entry] of value.entries()) {
      const entryName: unknown = isPlainObject(entry) ? field(entry, 'name') : undefined;
      const template: unknown = isPlainObject(entry) ? field(entry, 'template') : undefined;
      if (typeof entryName !== 'string' || typeof template !== 'string') {
        throw new ModelFormatError(
          `tokenizer_config.json: chat_template[${i}] must be { name, template } strings, found ${describe(entry)}.`,
        );
      }
      if (!named.has(entryName)) named.set(entryName, template);
    }
  } else if (isPlainObject(value)) {
    for (const [entryName, template] of Object.entries(value)) {
      if (typeof template !== 'string')
        throw new ModelFormatError(`tokenizer_config.json: chat_template.${entryName} must be a string, found ${describe(template)}.`);
      named.set(entryName, template);
    }
  } else {
    throw new ModelFormatError(
      `tokenizer_config.json: chat_template must be a string or a list of named templates, found ${describe(value)}.`,
    );
  }
  return named.get(name) ?? named.get('default') ?? named.values().next().value ?? null;
}

/** A special token of tokenizer_config.json: a string, `{ content }` (AddedToken), or null. */
function tokenText(config: Record<string, unknown>, key: string): string | null | undefined {
  if (!Object.hasOwn(config, key)) return undefined;
  const v = config[key];
  if (v === null) return null;
  if (typeof v === 'string') return v;
  const content = isPlainObject(v) ? field(v, 'content') : undefined;
  if (typeof content === 'string') return content;
  throw new ModelFormatError(`tokenizer_config.json: ${key} must be a token string, found ${describe(v)}.`);
}

/** The library needs every component key present (null when unused) and `added_tokens`. */
function normalizeTokenizerJson(json: unknown): Record<string, unknown> {
  if (!isPlainObject(json)) throw new ModelFormatError(`tokenizer.json must be a JSON object, found ${describe(json)}.`);
  const model = field(json, 'model');
  if (!isPlainObject(model)) throw new ModelFormatError(`tokenizer.json must have a "model" object, found ${describe(model)}.`);
  const out: Record<string, unknown> = { ...json };
  for (const key of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) {
    const v = out[key];
    if (v === undefined) out[key] = null;
    else if (v !== null && !isPlainObject(v))
      throw new ModelFormatError(`tokenizer.json: "${key}" must be an object or null, found ${describe(v)}.`);
    else if (v !== null && typeof field(v, 'type') !== 'string') throw new ModelFormatError(`tokenizer.json: "${key}" has no "type".`);
  }
  const added = field(out, 'added_tokens') ?? [];
  if (!Array.isArray(added)) throw new ModelFormatError(`tokenizer.json: "added_tokens" must be an array, found ${describe(added)}.`);
  for (const [i, t] of added.entries()) {
    const id = isPlainObject(t) ? field(t, 'id') : undefined;
    if (!isPlainObject(t) || typeof field(t, 'content') !== 'string' || typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
      throw new ModelFormatError(
        `tokenizer.json: added_tokens[${i}] must have a string "content" and an integer "id" >= 0, found ${describe(t)}.`,
      );
    }
  }
  return { ...out, added_tokens: added };
}

/** The first special token a TemplateProcessing post-processor puts before the text, if any. */
function postProcessorBos(json: Record<string, unknown>): string | null {
  const pp = field(json, 'post_processor');
  const single = isPlainObject(pp) && field(pp, 'type') === 'TemplateProcessing' ? field(pp, 'single') : undefined;
  const first: unknown = Array.isArray(single) ? single[0] : undefined;
  const special = isPlainObject(first) ? field(first, 'SpecialToken') : undefined;
  const id = isPlainObject(special) ? field(special, 'id') : undefined;
  return typeof id === 'string' ? id : null;
}

class HfTokenizerImpl implements HfTokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly chatTemplate: string | null;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly addBosByDefault: boolean;
  private compiled: ChatTemplate | null = null;
  private readonly lib: HfLibTokenizer;

  constructor(
    lib: HfLibTokenizer,
    fields: {
      vocabSize: number;
      bosToken: string | null;
      bosTokenId: number | null;
      eosToken: string | null;
      eosTokenIds: number[];
      addBosByDefault: boolean;
      chatTemplate: string | null;
    },
  ) {
    this.lib = lib;
    this.vocabSize = fields.vocabSize;
    this.bosToken = fields.bosToken;
    this.bosTokenId = fields.bosTokenId;
    this.eosToken = fields.eosToken;
    this.eosTokenIds = fields.eosTokenIds;
    this.addBosByDefault = fields.addBosByDefault;
    this.chatTemplate = fields.chatTemplate;
  }

  encode(text: string, options?: { readonly addBos?: boolean }): number[] {
    if (typeof text !== 'string') throw new InvalidArgumentError(`encode() needs a string, got ${describe(text)}.`);
    let ids: number[] = [];
    if (text.length > 0) {
      const encoding = this.lib.encode(text, { add_special_tokens: false });
      // The library yields undefined for an unk_token that is not in the vocabulary.
      const bad = (encoding.ids as Array<number | undefined>).indexOf(undefined);
      if (bad >= 0) {
        throw new ModelFormatError(
          `tokenizer.json produced the token ${JSON.stringify(encoding.tokens[bad])}, which is not in its vocabulary.`,
        );
      }
      ids = encoding.ids;
    }
    const addBos = options?.addBos ?? this.addBosByDefault;
    if (addBos && this.bosTokenId !== null && ids[0] !== this.bosTokenId) ids.unshift(this.bosTokenId);
    return ids;
  }

  decode(ids: readonly number[], options?: { readonly skipSpecial?: boolean }): string {
    const known: number[] = [];
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0)
        throw new InvalidArgumentError(`decode() needs non-negative integer token ids, got ${String(id)}.`);
      if (this.lib.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return '';
    return this.lib.decode(known, { skip_special_tokens: options?.skipSpecial ?? true });
  }

  tokenToId(token: string): number | null {
    return this.lib.token_to_id(token) ?? null;
  }

  idToToken(id: number): string | null {
    return Number.isSafeInteger(id) && id >= 0 ? (this.lib.id_to_token(id) ?? null) : null;
  }

  applyChatTemplate(
    messages: readonly ChatMessage[],
    options: { readonly addGenerationPrompt?: boolean; readonly variables?: RenderChatOptions['variables'] } = {},
  ): string {
    if (this.chatTemplate === null) {
      throw new UnsupportedModelError(
        'This tokenizer has no chat template (tokenizer_config.json has no chat_template); format the prompt yourself.',
      );
    }
    this.compiled ??= compileChatTemplate(this.chatTemplate);
    return this.compiled.render(messages, {
      bosToken: this.bosToken,
      eosToken: this.eosToken,
      addGenerationPrompt: options.addGenerationPrompt ?? false,
      ...(options.variables === undefined ? {} : { variables: options.variables }),
    });
  }
}

/**
 * A tokenizer from parsed `tokenizer.json` and (optionally) `tokenizer_config.json`.
 * Throws `ModelFormatError` for malformed files, `UnsupportedModelError` for components the
 * library does not implement.
 */
export function createHfTokenizer(tokenizerJson: unknown, tokenizerConfig: unknown = {}, options: HfTokenizerOptions = {}): HfTokenizer {
  const json = normalizeTokenizerJson(tokenizerJson);
  if (tokenizerConfig === null || tokenizerConfig === undefined) tokenizerConfig = {};
  if (!isPlainObject(tokenizerConfig))
    throw new ModelFormatError(`tokenizer_config.json must be a JSON object, found ${describe(tokenizerConfig)}.`);
  const config = tokenizerConfig;

  const bosText = tokenText(config, 'bos_token');
  const eosText = tokenText(config, 'eos_token') ?? null;
  // What the library reads from tokenizer_config.json, with token objects reduced to their text.
  const libConfig: Record<string, unknown> & { additional_special_tokens?: string[]; clean_up_tokenization_spaces?: boolean } = {
    ...config,
  };
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
    const text = tokenText(config, key);
    if (text === undefined || text === null) delete libConfig[key];
    else libConfig[key] = text;
  }
  const additional = field(config, 'additional_special_tokens');
  libConfig.additional_special_tokens = Array.isArray(additional)
    ? additional.flatMap((t: unknown) =>
        typeof t === 'string' ? [t] : isPlainObject(t) && typeof field(t, 'content') === 'string' ? [field(t, 'content') as string] : [],
      )
    : [];
  const cleanup = field(config, 'clean_up_tokenization_spaces');
  libConfig.clean_up_tokenization_spaces = typeof cleanup === 'boolean' ? cleanup : false;

  let lib: HfLibTokenizer;
  try {
    lib = new HfLibTokenizer(json, libConfig);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (/^Unknown \w+ type/.test(message))
      throw new UnsupportedModelError(`tokenizer.json: ${message} (not implemented by @huggingface/tokenizers).`);
    throw new ModelFormatError(`tokenizer.json cannot be loaded: ${message}.`);
  }

  const idOf = (text: string, key: string): number => {
    const id = lib.token_to_id(text);
    if (id === undefined)
      throw new ModelFormatError(`tokenizer_config.json: ${key} ${JSON.stringify(text)} is not in the vocabulary of tokenizer.json.`);
    return id;
  };
  // No bos_token key at all: take the BOS the post-processor adds, if it adds one.
  const bosToken = bosText === undefined ? postProcessorBos(json) : bosText;
  const bosTokenId = bosToken === null ? null : idOf(bosToken, 'bos_token');
  const eosTokenIds = [...new Set([...(eosText === null ? [] : [idOf(eosText, 'eos_token')]), ...(options.extraEosTokenIds ?? [])])];

  let addBosByDefault: boolean;
  const addBosFlag = field(config, 'add_bos_token');
  if (bosTokenId === null) addBosByDefault = false;
  else if (typeof addBosFlag === 'boolean') addBosByDefault = addBosFlag;
  else {
    try {
      addBosByDefault = lib.encode('', { add_special_tokens: true }).ids[0] === bosTokenId;
    } catch (err) {
      throw new ModelFormatError(`tokenizer.json: its post_processor fails (${err instanceof Error ? err.message : String(err)}).`);
    }
  }

  let vocabSize = lib.model?.vocab.length ?? 0;
  for (const t of field(json, 'added_tokens') as Array<{ id: number }>) vocabSize = Math.max(vocabSize, t.id + 1);
  if (vocabSize === 0) throw new ModelFormatError('tokenizer.json has an empty vocabulary.');

  const chatTemplate =
    options.chatTemplate !== undefined && options.chatTemplate !== null
      ? options.chatTemplate
      : selectChatTemplate(field(config, 'chat_template'), options.chatTemplateName);

  return new HfTokenizerImpl(lib, {
    vocabSize,
    bosToken,
    bosTokenId,
    eosToken: eosText,
    eosTokenIds,
    addBosByDefault,
    chatTemplate,
  });
}
