import { InvalidArgumentError } from '@kvcompress/core';
import { hashString, SeededRandom } from './random.ts';

/** The retrieval tasks, after RULER (Hsieh et al., 2024), generated from a seed. */
export const RETRIEVAL_TASKS = [
  'passkey',
  'niah-single',
  'niah-multikey',
  'niah-multivalue',
  'niah-multiquery',
  'variable-tracking',
  'kv-retrieval',
  'common-words',
] as const;
export type RetrievalTask = (typeof RETRIEVAL_TASKS)[number];

export interface TaskExample {
  readonly task: RetrievalTask;
  /** The whole prompt, ending where the model's answer starts. */
  readonly prompt: string;
  /** Strings the answer must contain; the score is the fraction found. */
  readonly answers: readonly string[];
  readonly maxNewTokens: number;
}

/** What the generators need: filler text and a way to count tokens. */
export interface TaskSource {
  /** Sentences of natural filler text (the haystack), in order. */
  readonly sentences: readonly string[];
  /** Tokens of a text under the evaluated model's tokenizer. */
  countTokens(text: string): number;
}

/** Splits a text into sentences for haystacks (whitespace normalised, short ones dropped). */
export function splitSentences(text: string): string[] {
  return text
    .replace(/\s+/g, ' ')
    .split(/(?<=[.!?])\s+/)
    .map((s) => s.trim())
    .filter((s) => s.length >= 20 && s.length <= 400);
}

const KEY_WORDS = ['amber', 'basalt', 'cedar', 'delta', 'ember', 'falcon', 'garnet', 'harbor', 'indigo', 'juniper', 'kestrel', 'lantern'];

/**
 * Example `index` of `task` at about `contextTokens` tokens (prompt plus answer), a pure
 * function of (task, index, seed, source).
 */
export function generateExample(task: RetrievalTask, source: TaskSource, contextTokens: number, index: number, seed: number): TaskExample {
  const rng = new SeededRandom(hashString(`${task}:${index}:${seed}`));
  switch (task) {
    case 'passkey': {
      const key = rng.digits(5);
      const needle = `The pass key is ${key}. Remember it. ${key} is the pass key.`;
      return haystackExample(task, source, rng, contextTokens, {
        intro: 'There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.',
        needles: [needle],
        question: 'What is the pass key? The pass key is',
        answers: [key],
        maxNewTokens: 12,
      });
    }
    case 'niah-single':
    case 'niah-multikey':
    case 'niah-multivalue':
    case 'niah-multiquery': {
      const keys = shuffled(KEY_WORDS, rng);
      const needle = (k: string, v: string) => `One of the special magic numbers for ${k} is: ${v}.`;
      if (task === 'niah-single') {
        const k = keys[0] as string;
        const v = rng.digits(7);
        return haystackExample(task, source, rng, contextTokens, {
          intro: 'A special magic number is hidden within the following text. Make sure to memorize it.',
          needles: [needle(k, v)],
          question: `What is the special magic number for ${k} mentioned in the provided text? The special magic number for ${k} is`,
          answers: [v],
          maxNewTokens: 16,
        });
      }
      if (task === 'niah-multikey') {
        // Four needles with different keys: the question names one; the others distract.
        const values = keys.slice(0, 4).map(() => rng.digits(7));
        const asked = rng.int(0, 3);
        return haystackExample(task, source, rng, contextTokens, {
          intro: 'Some special magic numbers are hidden within the following text. Make sure to memorize them.',
          needles: keys.slice(0, 4).map((k, i) => needle(k, values[i] as string)),
          question: `What is the special magic number for ${keys[asked]} mentioned in the provided text? The special magic number for ${keys[asked]} is`,
          answers: [values[asked] as string],
          maxNewTokens: 16,
        });
      }
      if (task === 'niah-multivalue') {
        const k = keys[0] as string;
        const values = [0, 1, 2, 3].map(() => rng.digits(7));
        return haystackExample(task, source, rng, contextTokens, {
          intro: 'Some special magic numbers are hidden within the following text. Make sure to memorize them.',
          needles: values.map((v) => needle(k, v)),
          question: `What are all the special magic numbers for ${k} mentioned in the provided text? The special magic numbers for ${k} are`,
          answers: values,
          maxNewTokens: 48,
        });
      }
      const asked = keys.slice(0, 4);
      const values = asked.map(() => rng.digits(7));
      return haystackExample(task, source, rng, contextTokens, {
        intro: 'Some special magic numbers are hidden within the following text. Make sure to memorize them.',
        needles: asked.map((k, i) => needle(k, values[i] as string)),
        question: `What are the special magic numbers for ${asked.join(', ')} mentioned in the provided text? The special magic numbers for ${asked.join(', ')} are`,
        answers: values,
        maxNewTokens: 48,
      });
    }
    case 'variable-tracking': {
      const value = rng.digits(5);
      const names = Array.from({ length: 5 }, () => letters(rng, 5));
      const needles = names.map((n, i) => (i === 0 ? `VAR ${n} = ${value}.` : `VAR ${n} = VAR ${names[i - 1]}.`));
      return haystackExample(task, source, rng, contextTokens, {
        intro: 'Memorize and track the chain of variable assignments hidden in the following text.',
        needles,
        ordered: true,
        question: `Find all variables that are assigned the value ${value} in the text above. Answer: the variables assigned the value ${value} are`,
        answers: names,
        maxNewTokens: 40,
      });
    }
    case 'kv-retrieval': {
      // A JSON object of random keys to values, grown to the context; one key is asked.
      const intro = 'Extract the value corresponding to the specified key in the JSON object below.\nJSON data:\n{';
      const pairs: string[] = [];
      const budget = contextTokens - 60;
      let used = source.countTokens(intro);
      for (;;) {
        const pair = `"${hex(rng, 8)}-${hex(rng, 4)}": "${hex(rng, 8)}-${hex(rng, 4)}"`;
        const cost = source.countTokens(`${pair}, `);
        if (used + cost > budget && pairs.length > 0) break;
        pairs.push(pair);
        used += cost;
      }
      const asked = pairs[rng.int(0, pairs.length - 1)] as string;
      const [key, value] = asked.split(': ').map((x) => x.slice(1, -1)) as [string, string];
      return {
        task,
        prompt: `${intro}${pairs.join(', ')}}\nKey: "${key}"\nThe value associated with the specified key is: "`,
        answers: [value],
        maxNewTokens: 24,
      };
    }
    case 'common-words': {
      // Ten words repeated often among many that appear once (RULER's CWE).
      const vocabulary = [
        ...new Set(
          source.sentences
            .join(' ')
            .toLowerCase()
            .match(/[a-z]{4,9}/g) ?? [],
        ),
      ];
      if (vocabulary.length < 50) throw new InvalidArgumentError('The haystack text has too few distinct words for common-words.');
      const words = shuffled(vocabulary, rng);
      const common = words.slice(0, 10);
      const maxNewTokens = 60;
      const head =
        'Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n';
      const tail =
        '\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:';
      const budget = contextTokens - maxNewTokens - source.countTokens(head + tail) - 4;
      const itemCost = source.countTokens(` 1000. ${common[0]}`);
      const slots = Math.max(40, Math.floor(budget / itemCost));
      const repeats = Math.max(3, Math.floor(slots / 40));
      const rare = words.slice(10, 10 + Math.max(0, slots - 10 * repeats));
      const build = () => {
        const list: string[] = [...rare];
        for (const w of common) for (let r = 0; r < repeats; r++) list.push(w);
        return shuffled(list, new SeededRandom(hashString(`cwe:${index}:${seed}`)))
          .map((w, k) => `${k + 1}. ${w}`)
          .join(' ');
      };
      let body = build();
      // Trim rare words until the prompt fits (numbering makes item costs uneven).
      for (let tries = 0; tries < 20 && source.countTokens(body) > budget && rare.length > 0; tries++) {
        rare.length = Math.max(0, rare.length - Math.ceil((source.countTokens(body) - budget) / itemCost) - 1);
        body = build();
      }
      return { task, prompt: `${head}${body}${tail}`, answers: common, maxNewTokens };
    }
  }
}

interface HaystackSpec {
  readonly intro: string;
  readonly needles: readonly string[];
  /** Keep the needles in order (chains); otherwise each lands at its own random depth. */
  readonly ordered?: boolean;
  readonly question: string;
  readonly answers: readonly string[];
  readonly maxNewTokens: number;
}

/** Filler sentences from a random place in the source up to the token budget, needles inserted at random depths. */
function haystackExample(
  task: RetrievalTask,
  source: TaskSource,
  rng: SeededRandom,
  contextTokens: number,
  spec: HaystackSpec,
): TaskExample {
  const fixed = source.countTokens(`${spec.intro}\n${spec.needles.join(' ')}\n${spec.question}`);
  const budget = contextTokens - fixed - spec.maxNewTokens - 8;
  if (budget < 16) throw new InvalidArgumentError(`A ${task} example needs more than ${contextTokens} context tokens.`);
  const n = source.sentences.length;
  if (n === 0) throw new InvalidArgumentError('The haystack source has no sentences.');
  const filler: string[] = [];
  let used = 0;
  for (let i = rng.int(0, n - 1); ; i = (i + 1) % n) {
    const sentence = source.sentences[i] as string;
    const cost = source.countTokens(` ${sentence}`);
    if (used + cost > budget) break;
    filler.push(sentence);
    used += cost;
    if (filler.length > 100_000) break;
  }
  const depths = spec.needles.map(() => rng.int(0, filler.length));
  if (spec.ordered === true) depths.sort((a, b) => a - b);
  // Insert from the deepest so earlier indices stay valid; equal depths keep needle order.
  const order = spec.needles.map((_, i) => i).sort((a, b) => (depths[b] as number) - (depths[a] as number) || b - a);
  for (const i of order) filler.splice(depths[i] as number, 0, spec.needles[i] as string);
  return {
    task,
    prompt: `${spec.intro}\n${filler.join(' ')}\n${spec.question}`,
    answers: spec.answers,
    maxNewTokens: spec.maxNewTokens,
  };
}

/** Fraction of `answers` found in `output` (RULER's string-match-all), case-insensitive. */
export function scoreAnswer(output: string, answers: readonly string[]): number {
  if (answers.length === 0) return 0;
  const lower = output.toLowerCase();
  let found = 0;
  for (const a of answers) if (lower.includes(a.toLowerCase())) found++;
  return found / answers.length;
}

function shuffled<T>(xs: readonly T[], rng: SeededRandom): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    const t = out[i] as T;
    out[i] = out[j] as T;
    out[j] = t;
  }
  return out;
}

function letters(rng: SeededRandom, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(65 + rng.int(0, 25));
  return s;
}

function hex(rng: SeededRandom, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += '0123456789abcdef'[rng.int(0, 15)];
  return s;
}
