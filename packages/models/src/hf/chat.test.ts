import { InvalidArgumentError, ModelFormatError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { type ChatMessage, compileChatTemplate, renderChat } from './chat.ts';
import { CHATML_CHAT_TEMPLATE, LLAMA3_CHAT_TEMPLATE, LLAMA31_CHAT_TEMPLATE, MISTRAL_CHAT_TEMPLATE } from './test-fixtures.ts';

const conversation: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: ' Hi! ' },
  { role: 'assistant', content: 'Hello.' },
  { role: 'user', content: 'Bye?' },
];

describe('renderChat', () => {
  it('renders the Llama 3 template', () => {
    const text = renderChat(LLAMA3_CHAT_TEMPLATE, conversation, {
      bosToken: '<|begin_of_text|>',
      eosToken: '<|eot_id|>',
      addGenerationPrompt: true,
    });
    expect(text).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nBye?<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const noPrompt = renderChat(LLAMA3_CHAT_TEMPLATE, conversation.slice(0, 2), { bosToken: '<|begin_of_text|>' });
    expect(noPrompt.endsWith('Hi!<|eot_id|>')).toBe(true);
  });

  it('renders the Llama 3.1 template (system extraction, default date, tools, date_string)', () => {
    const opts = { bosToken: '<|begin_of_text|>', eosToken: '<|eot_id|>', addGenerationPrompt: true };
    expect(renderChat(LLAMA31_CHAT_TEMPLATE, conversation.slice(0, 2), opts)).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' +
        'Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const noSystem = renderChat(LLAMA31_CHAT_TEMPLATE, [{ role: 'user', content: 'Hi' }], {
      ...opts,
      variables: { date_string: '01 Jan 2025' },
    });
    expect(noSystem).toContain('Today Date: 01 Jan 2025\n\n<|eot_id|><|start_header_id|>user');
    const tools = [
      { type: 'function', function: { name: 'get_time', description: 'Now', parameters: { type: 'object', properties: {} } } },
    ];
    const withTools = renderChat(LLAMA31_CHAT_TEMPLATE, [{ role: 'user', content: 'Time?' }], { ...opts, variables: { tools } });
    expect(withTools).toContain('Environment: ipython\n');
    expect(withTools).toContain('"name": "get_time"');
    expect(withTools).toMatch(/Do not use variables\.\n\n\{[\s\S]*\}\n\nTime\?<\|eot_id\|>/);
    expect(() => renderChat(LLAMA31_CHAT_TEMPLATE, [], { ...opts, variables: { tools } })).toThrow(InvalidArgumentError);
  });

  it('renders ChatML with and without a system message', () => {
    expect(renderChat(CHATML_CHAT_TEMPLATE, [{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(renderChat(CHATML_CHAT_TEMPLATE, conversation.slice(0, 2), { bosToken: null })).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi! <|im_end|>\n',
    );
  });

  it('renders Mistral and turns its raise_exception into InvalidArgumentError', () => {
    const ok = renderChat(
      MISTRAL_CHAT_TEMPLATE,
      [
        { role: 'user', content: 'a' },
        { role: 'assistant', content: 'b' },
        { role: 'user', content: 'c' },
      ],
      { bosToken: '<s>', eosToken: '</s>' },
    );
    expect(ok).toBe('<s>[INST] a [/INST]b</s>[INST] c [/INST]');
    let err: unknown;
    try {
      renderChat(MISTRAL_CHAT_TEMPLATE, conversation, { bosToken: '<s>', eosToken: '</s>' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/rejected the messages: Conversation roles must alternate/);
  });

  it('omits BOS/EOS variables that are null', () => {
    expect(renderChat('[{{ bos_token }}|{{ eos_token }}]', [], { bosToken: null })).toBe('[|]');
    expect(renderChat('{% if bos_token is defined %}yes{% else %}no{% endif %}', [], {})).toBe('no');
  });

  it('offers the transformers globals and extra variables', () => {
    expect(renderChat('{% for i in range(3) %}{{ i }}{% endfor %}', [])).toBe('012');
    expect(renderChat("{{ strftime_now('%Y') }}", [])).toBe(String(new Date().getFullYear()));
    expect(
      renderChat('{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}', conversation),
    ).toBe('4');
    expect(renderChat('{{ date_string }}', [], { variables: { date_string: '26 Jul 2024' } })).toBe('26 Jul 2024');
    expect(() => renderChat('', [], { variables: { messages: [] } })).toThrow(InvalidArgumentError);
  });

  it('reports templates that do not parse or fail at render time as ModelFormatError', () => {
    for (const bad of ['{% if %}', '{% for x in y %}', '{{ 1 + }}', '{% endfor %}']) {
      expect(() => renderChat(bad, []), bad).toThrow(ModelFormatError);
      expect(() => renderChat(bad, []), bad).toThrow(/does not parse/);
    }
    expect(() => renderChat("{{ messages[0]['content'].nope() }}", conversation)).toThrow(/failed while rendering/);
    expect(() => renderChat('{{ range(1, 2, 0) }}', [])).toThrow(InvalidArgumentError);
  });

  it('validates messages', () => {
    const bad: unknown[] = [
      null,
      'hi',
      [{ role: 'user' }],
      [{ role: '', content: 'x' }],
      [{ role: 'user', content: 5 }],
      [null],
      [{ content: 'x' }],
    ];
    for (const messages of bad) {
      expect(() => renderChat(CHATML_CHAT_TEMPLATE, messages as ChatMessage[]), JSON.stringify(messages)).toThrow(InvalidArgumentError);
    }
    expect(() => renderChat(CHATML_CHAT_TEMPLATE, [{ role: 'user', content: 5 } as unknown as ChatMessage])).toThrow(
      /Chat message 0 \(user\) needs a string "content", got 5/,
    );
  });

  it('compiles once and renders many times', () => {
    const t = compileChatTemplate(CHATML_CHAT_TEMPLATE);
    expect(t.source).toBe(CHATML_CHAT_TEMPLATE);
    const a = t.render([{ role: 'user', content: 'x' }]);
    expect(t.render([{ role: 'user', content: 'x' }])).toBe(a);
  });
});
