import { InvalidArgumentError, ModelFormatError, UnsupportedModelError } from '@kvcompress/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CHATML_CHAT_TEMPLATE,
  LLAMA3_CHAT_TEMPLATE,
  LLAMA3_SPECIALS,
  MISTRAL_CHAT_TEMPLATE,
  tinyByteLevelTokenizerJson,
  tinySpmTokenizerJson,
} from './test-fixtures.ts';
import { createHfTokenizer, selectChatTemplate } from './tokenizer.ts';

const llama3Config = {
  bos_token: '<|begin_of_text|>',
  eos_token: '<|eot_id|>',
  chat_template: LLAMA3_CHAT_TEMPLATE,
  clean_up_tokenization_spaces: true,
  model_max_length: 131072,
  tokenizer_class: 'PreTrainedTokenizerFast',
};

describe('SentencePiece-style BPE (Llama 2 / Mistral)', () => {
  const tok = createHfTokenizer(tinySpmTokenizerJson(), {
    add_bos_token: true,
    bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: '</s>',
    unk_token: '<unk>',
    chat_template: MISTRAL_CHAT_TEMPLATE,
  });

  it('reads the special tokens', () => {
    expect(tok.vocabSize).toBe(25);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.bosToken).toBe('<s>');
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.eosToken).toBe('</s>');
    expect(tok.addBosByDefault).toBe(true);
    expect(tok.chatTemplate).toBe(MISTRAL_CHAT_TEMPLATE);
    expect(tok.tokenToId('▁hello')).toBe(19);
    expect(tok.idToToken(19)).toBe('▁hello');
    expect(tok.tokenToId('nope')).toBeNull();
    expect(tok.idToToken(1000)).toBeNull();
  });

  it('encodes with BOS by default and decodes back', () => {
    const ids = tok.encode('hello world');
    expect(ids).toEqual([1, 19, 24]);
    expect(tok.encode('hello world', { addBos: false })).toEqual([19, 24]);
    expect(tok.decode(ids)).toBe('hello world');
    expect(tok.decode(ids, { skipSpecial: false })).toBe('<s> hello world');
    expect(tok.encode('')).toEqual([1]);
    expect(tok.decode([])).toBe('');
  });

  it('recognises special tokens in text and does not double the BOS', () => {
    expect(tok.encode('<s>hello</s>')).toEqual([1, 19, 2]);
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hello' }]);
    expect(prompt).toBe('<s>[INST] hello [/INST]');
    expect(tok.encode(prompt).filter((id) => id === 1)).toHaveLength(1);
  });

  it('maps unknown characters to <unk> and drops ids without a token', () => {
    expect(tok.encode('xyz', { addBos: false })).toEqual([3, 0, 14, 0]);
    expect(tok.decode([19, 999, 24])).toBe('hello world');
    expect(() => tok.decode([1.5])).toThrow(InvalidArgumentError);
    expect(() => tok.decode([-1])).toThrow(InvalidArgumentError);
    expect(() => tok.encode(5 as unknown as string)).toThrow(InvalidArgumentError);
  });
});

describe('byte-level BPE (Llama 3)', () => {
  // Ids: 256 bytes, 9 merges, then <|begin_of_text|> 265, <|end_of_text|> 266, ..., <|eot_id|> 269.
  const tok = createHfTokenizer(tinyByteLevelTokenizerJson(), llama3Config, { extraEosTokenIds: [266, 269] });

  it('reads the special tokens and adds the BOS as the post-processor does', () => {
    expect(tok.vocabSize).toBe(256 + 9 + LLAMA3_SPECIALS.length);
    expect(tok.bosTokenId).toBe(265);
    expect(tok.tokenToId('<|eot_id|>')).toBe(269);
    expect(tok.eosTokenIds).toEqual([269, 266]);
    expect(tok.addBosByDefault).toBe(true);
    expect(tok.encode('hello world')).toEqual([265, tok.tokenToId('hello'), tok.tokenToId('Ġworld')]);
  });

  it('round-trips any text exactly (clean_up_tokenization_spaces is honoured only when true)', () => {
    const raw = createHfTokenizer(tinyByteLevelTokenizerJson(), { ...llama3Config, clean_up_tokenization_spaces: false });
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), (s) => {
        expect(raw.decode(raw.encode(s))).toBe(s);
      }),
      { numRuns: 300 },
    );
    expect(raw.decode(raw.encode("it 's ."))).toBe("it 's .");
    expect(tok.decode(tok.encode("it 's ."))).toBe("it's.");
  });

  it('renders and encodes the Llama 3 chat template', () => {
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hello' }], { addGenerationPrompt: true });
    expect(prompt).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const ids = tok.encode(prompt);
    expect(ids[0]).toBe(265);
    expect(ids.filter((id) => id === 265)).toHaveLength(1);
    expect(ids).toContain(tok.tokenToId('<|eot_id|>'));
    expect(tok.decode(ids)).toBe('user\n\nhelloassistant\n\n');
    expect(tok.decode(ids, { skipSpecial: false })).toBe(prompt);
  });
});

describe('createHfTokenizer', () => {
  it('handles a tokenizer without BOS (Qwen2) and without tokenizer_config.json', () => {
    const json = tinySpmTokenizerJson(['<|endoftext|>', '<|im_start|>', '<|im_end|>']);
    const qwen = createHfTokenizer(json, { bos_token: null, eos_token: '<|im_end|>', chat_template: CHATML_CHAT_TEMPLATE });
    expect(qwen.bosTokenId).toBeNull();
    expect(qwen.addBosByDefault).toBe(false);
    expect(qwen.encode('hello', { addBos: true })).toEqual([19]);
    expect(qwen.eosTokenIds).toEqual([27]);
    const prompt = qwen.applyChatTemplate([{ role: 'user', content: 'hello' }], { addGenerationPrompt: true });
    expect(qwen.encode(prompt).slice(0, 1)).toEqual([26]);

    // No config at all: BOS from the post-processor, no chat template.
    const bare = createHfTokenizer(json);
    expect(bare.bosTokenId).toBe(1);
    expect(bare.addBosByDefault).toBe(true);
    expect(bare.eosTokenIds).toEqual([]);
    expect(bare.chatTemplate).toBeNull();
    expect(() => bare.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(UnsupportedModelError);
  });

  it('lets add_bos_token switch the BOS off and a chat_template.jinja override the config', () => {
    const tok = createHfTokenizer(
      tinySpmTokenizerJson(),
      { bos_token: '<s>', add_bos_token: false, chat_template: 'a' },
      { chatTemplate: 'b' },
    );
    expect(tok.addBosByDefault).toBe(false);
    expect(tok.encode('hello')).toEqual([19]);
    expect(tok.chatTemplate).toBe('b');
  });

  it('picks a named chat template', () => {
    const list = [
      { name: 'tool_use', template: 'T' },
      { name: 'default', template: 'D' },
    ];
    expect(selectChatTemplate(list)).toBe('D');
    expect(selectChatTemplate(list, 'tool_use')).toBe('T');
    expect(selectChatTemplate([{ name: 'rag', template: 'R' }])).toBe('R');
    expect(selectChatTemplate({ default: 'X' })).toBe('X');
    expect(selectChatTemplate(undefined)).toBeNull();
    expect(selectChatTemplate([])).toBeNull();
    expect(() => selectChatTemplate([{ name: 'x' }])).toThrow(ModelFormatError);
    expect(() => selectChatTemplate(5)).toThrow(ModelFormatError);
    const tok = createHfTokenizer(tinySpmTokenizerJson(), { chat_template: list }, { chatTemplateName: 'tool_use' });
    expect(tok.chatTemplate).toBe('T');
  });

  it('reports malformed files as ModelFormatError and unknown components as UnsupportedModelError', () => {
    const good = tinySpmTokenizerJson();
    const format: Array<[unknown, unknown, RegExp]> = [
      [null, {}, /tokenizer.json must be a JSON object/],
      [{ ...good, model: undefined }, {}, /must have a "model" object/],
      [{ ...good, decoder: 5 }, {}, /"decoder" must be an object or null/],
      [{ ...good, normalizer: {} }, {}, /"normalizer" has no "type"/],
      [{ ...good, added_tokens: {} }, {}, /"added_tokens" must be an array/],
      [{ ...good, added_tokens: [{ id: -1, content: 'x' }] }, {}, /added_tokens\[0\]/],
      [good, [], /tokenizer_config.json must be a JSON object/],
      [good, { bos_token: '<nope>' }, /bos_token "<nope>" is not in the vocabulary/],
      [good, { eos_token: 7 }, /eos_token must be a token string/],
    ];
    for (const [json, config, pattern] of format) {
      expect(() => createHfTokenizer(json, config), String(pattern)).toThrow(ModelFormatError);
      expect(() => createHfTokenizer(json, config), String(pattern)).toThrow(pattern);
    }
    expect(() => createHfTokenizer({ ...good, pre_tokenizer: { type: 'Fancy' } })).toThrow(UnsupportedModelError);
    expect(() => createHfTokenizer({ ...good, model: { type: 'Mystery' } })).toThrow(UnsupportedModelError);
  });

  it('refuses to return undefined ids (an unk_token missing from the vocab)', () => {
    const json = { added_tokens: [], model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [], unk_token: '<unk>', ignore_merges: false } };
    const tok = createHfTokenizer(json);
    expect(tok.encode('ab')).toEqual([0, 1]);
    expect(() => tok.encode('axb')).toThrow(ModelFormatError);
    expect(() => tok.encode('axb')).toThrow(/produced the token "<unk>", which is not in its vocabulary/);
  });

  it('fills in missing component keys the library insists on', () => {
    const { normalizer: _n, pre_tokenizer: _p, post_processor: _pp, added_tokens: _a, ...rest } = tinySpmTokenizerJson();
    const tok = createHfTokenizer(rest, {});
    expect(tok.bosTokenId).toBeNull();
    expect(tok.encode('hello')).toEqual([18]); // no Prepend("▁") normalizer now
  });
});
