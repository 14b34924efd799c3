import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { InvalidArgumentError, ModelFormatError } from '@kvcompress/core';
import { describe, isPlainObject } from './util.ts';

/**
 * Chat templates (Jinja, as in `tokenizer_config.json`'s `chat_template`) rendered with
 * `@huggingface/jinja`, with the variables transformers' `apply_chat_template` passes:
 * `messages`, `bos_token`, `eos_token`, `add_generation_prompt`, plus the globals
 * `raise_exception`, `range`, `strftime_now`, `namespace`.
 */

export interface ChatMessage {
  /** `system`, `user`, `assistant`, ... (whatever the template accepts). */
  readonly role: string;
  readonly content: string;
}

export interface RenderChatOptions {
  /** Text of the BOS token (`{{ bos_token }}`); omitted from the variables when null or absent. */
  readonly bosToken?: string | null;
  /** Text of the EOS token (`{{ eos_token }}`); omitted when null or absent. */
  readonly eosToken?: string | null;
  /** End with the header of an assistant turn, so the model writes the reply. Default false. */
  readonly addGenerationPrompt?: boolean;
  /** More template variables (`date_string`, `tools`, ...). They cannot replace the ones above. */
  readonly variables?: Readonly<Record<string, unknown>>;
}

/** Thrown by the template's `raise_exception(...)`: the template refused the messages. */
class TemplateRaised extends Error {}

/** A parsed chat template; parse once with `compileChatTemplate`, render many times. */
export interface ChatTemplate {
  readonly source: string;
  render(messages: readonly ChatMessage[], options?: RenderChatOptions): string;
}

function range(start: number, stop?: number, step = 1): number[] {
  let from = start;
  let to = stop;
  if (to === undefined) {
    to = from;
    from = 0;
  }
  if (!Number.isInteger(from) || !Number.isInteger(to) || !Number.isInteger(step) || step === 0) {
    throw new TemplateRaised(`range(${from}, ${to}, ${step}) needs integer arguments and a non-zero step.`);
  }
  if (Math.abs((to - from) / step) > 1_000_000) throw new TemplateRaised(`range(${from}, ${to}, ${step}) is too long.`);
  const out: number[] = [];
  if (step > 0) for (let i = from; i < to; i += step) out.push(i);
  else for (let i = from; i > to; i += step) out.push(i);
  return out;
}

/** `strftime_now(format)` of transformers (used by Llama 3.x templates for the date). */
function strftimeNow(format: string): string {
  const date = new Date();
  const pad2 = (n: number): string => String(n).padStart(2, '0');
  return String(format).replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y':
        return String(date.getFullYear());
      case '%m':
        return pad2(date.getMonth() + 1);
      case '%d':
        return pad2(date.getDate());
      case '%b':
        return date.toLocaleString('en-US', { month: 'short' });
      case '%B':
        return date.toLocaleString('en-US', { month: 'long' });
      case '%H':
        return pad2(date.getHours());
      case '%M':
        return pad2(date.getMinutes());
      default:
        return '%';
    }
  });
}

function checkMessages(messages: unknown): ChatMessage[] {
  if (!Array.isArray(messages))
    throw new InvalidArgumentError(`Chat messages must be an array of { role, content }, got ${describe(messages)}.`);
  return messages.map((m: unknown, i) => {
    if (!isPlainObject(m)) throw new InvalidArgumentError(`Chat message ${i} must be an object { role, content }, got ${describe(m)}.`);
    const { role, content } = m;
    if (typeof role !== 'string' || role.length === 0) {
      throw new InvalidArgumentError(`Chat message ${i} needs a non-empty string "role", got ${describe(role)}.`);
    }
    if (typeof content !== 'string')
      throw new InvalidArgumentError(`Chat message ${i} (${role}) needs a string "content", got ${describe(content)}.`);
    return { role, content };
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Parses a chat template. Throws `ModelFormatError` when it does not parse. */
export function compileChatTemplate(source: string): ChatTemplate {
  if (typeof source !== 'string') throw new InvalidArgumentError(`A chat template must be a string, got ${describe(source)}.`);
  let template: Template;
  try {
    // Same lexer options as transformers: trim_blocks and lstrip_blocks.
    template = new Template(source);
  } catch (err) {
    throw new ModelFormatError(`The chat template does not parse: ${errorText(err)}.`);
  }
  const program = template.parsed;
  return {
    source,
    render(messages: readonly ChatMessage[], options: RenderChatOptions = {}): string {
      const checked = checkMessages(messages);
      const env = new Environment();
      const vars: Record<string, unknown> & { bos_token?: string; eos_token?: string } = {
        true: true,
        false: false,
        none: null,
        True: true,
        False: false,
        None: null,
        raise_exception: (message: unknown) => {
          throw new TemplateRaised(String(message));
        },
        range,
        strftime_now: strftimeNow,
        messages: checked,
        add_generation_prompt: options.addGenerationPrompt ?? false,
      };
      if (typeof options.bosToken === 'string') vars.bos_token = options.bosToken;
      if (typeof options.eosToken === 'string') vars.eos_token = options.eosToken;
      for (const [key, value] of Object.entries(options.variables ?? {})) {
        if (Object.hasOwn(vars, key))
          throw new InvalidArgumentError(`Chat template variable "${key}" is set by renderChat itself; pass it through its option.`);
        vars[key] = value;
      }
      try {
        for (const [key, value] of Object.entries(vars)) env.set(key, value);
      } catch (err) {
        throw new InvalidArgumentError(`A chat template variable cannot be passed to the template: ${errorText(err)}.`);
      }
      let result: unknown;
      try {
        result = new Interpreter(env).run(program).value;
      } catch (err) {
        if (err instanceof TemplateRaised) throw new InvalidArgumentError(`The chat template rejected the messages: ${err.message}`);
        throw new ModelFormatError(`The chat template failed while rendering: ${errorText(err)}.`);
      }
      return typeof result === 'string' ? result : String(result);
    },
  };
}

/**
 * Renders `messages` with a Jinja chat template, as transformers' `apply_chat_template`
 * (tokenize=False) does. Throws `ModelFormatError` for a template that does not parse or
 * fails while rendering, and `InvalidArgumentError` for malformed messages or messages the
 * template refuses (its `raise_exception`, e.g. roles that do not alternate).
 */
export function renderChat(template: string, messages: readonly ChatMessage[], options: RenderChatOptions = {}): string {
  return compileChatTemplate(template).render(messages, options);
}
