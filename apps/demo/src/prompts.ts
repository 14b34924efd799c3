// Prompt presets: RULER-style retrieval prompts built by @kvcompress/eval's generators (the
// tasks the default model was trained on), where evicting the wrong tokens visibly loses the
// answer, and a free-text one.
import { generateExample, type RetrievalTask, splitSentences, type TaskSource } from '@kvcompress/eval';
import type { Tokenizer } from '@kvcompress/models';
import { HAYSTACK_TEXT } from './haystack.ts';

export interface PromptPreset {
  readonly id: string;
  readonly label: string;
  /** A retrieval task at about `contextTokens` tokens, or fixed text. */
  readonly task?: RetrievalTask;
  readonly contextTokens?: number;
  readonly text?: string;
}

export const PROMPT_PRESETS: readonly PromptPreset[] = [
  { id: 'passkey-128', label: 'Pass key, ~128 tokens', task: 'passkey', contextTokens: 128 },
  { id: 'passkey-256', label: 'Pass key, ~256 tokens', task: 'passkey', contextTokens: 256 },
  { id: 'passkey-512', label: 'Pass key, ~512 tokens', task: 'passkey', contextTokens: 512 },
  { id: 'passkey-1024', label: 'Pass key, ~1024 tokens', task: 'passkey', contextTokens: 1024 },
  { id: 'niah-single-512', label: 'Needle in a haystack, ~512 tokens', task: 'niah-single', contextTokens: 512 },
  { id: 'niah-multikey-1024', label: 'Four needles, one asked, ~1024 tokens', task: 'niah-multikey', contextTokens: 1024 },
  {
    id: 'story',
    label: 'Free text: a story opening',
    text: 'Once upon a time, a little fox found a key in the forest. The fox wondered which door it would open, so',
  },
];

export interface BuiltPrompt {
  readonly prompt: string;
  /** What a right answer contains (retrieval presets), else empty. */
  readonly answers: readonly string[];
  /** A sensible number of new tokens for the preset. */
  readonly maxNewTokens: number;
}

/** Example `index` of a preset for this tokenizer (deterministic in the index). */
export function buildPrompt(preset: PromptPreset, tokenizer: Tokenizer, index: number): BuiltPrompt {
  if (preset.task === undefined || preset.contextTokens === undefined) {
    return { prompt: preset.text ?? '', answers: [], maxNewTokens: 48 };
  }
  const source: TaskSource = {
    sentences: haystackSentences(),
    countTokens: (text) => tokenizer.encode(text, { addBos: false }).length,
  };
  const example = generateExample(preset.task, source, preset.contextTokens, index, 1);
  return { prompt: example.prompt, answers: example.answers, maxNewTokens: Math.max(example.maxNewTokens, 16) };
}

let sentences: string[] | null = null;
function haystackSentences(): string[] {
  sentences ??= splitSentences(HAYSTACK_TEXT);
  return sentences;
}
