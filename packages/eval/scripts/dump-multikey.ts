// Writes niah-multikey evaluation examples as token ids for tooling/train/probe_multikey.py: the prompt ids
// (with BOS), the answer value's ids, and for every needle the token span of its key and of its
// value, so the PyTorch side can see which needle the model reads at the answer.
//   node --conditions=source packages/eval/scripts/dump-multikey.ts MODEL CONTEXT COUNT OUT.json (from the repo root)
import { readFileSync, writeFileSync } from 'node:fs';
import { generateExample, splitSentences } from '@kvcompress/eval';
import { loadModel } from '@kvcompress/models';

const [model = 'models/kvc-20m-4k', context = '2048', count = '20', out = 'multikey.json'] = process.argv.slice(2);
const shared = process.env['KVC_SHARED_DIR'] ?? '../shared';
const text = readFileSync(`${shared}/data/gutenberg/pg11_alice_in_wonderland.txt`, 'utf8');
const loaded = await loadModel(model);
const tok = loaded.tokenizer;
if (tok === null) throw new Error(`${model} has no tokenizer`);
const source = { sentences: splitSentences(text), countTokens: (t: string) => tok.encode(t, { addBos: false }).length };
const examples = [];
for (let i = 0; i < Number(count); i++) {
  const ex = generateExample('niah-multikey', source, Number(context), i, 1);
  const ids = tok.encode(ex.prompt, { addBos: true });
  // Needles, in text order: "One of the special magic numbers for KEY is: VALUE."
  const needles = [...ex.prompt.matchAll(/One of the special magic numbers for (\w+) is: (\d+)\./g)].map((m) => {
    const at = m.index ?? 0;
    const before = tok.encode(ex.prompt.slice(0, at), { addBos: true }).length;
    const upToKey = tok.encode(ex.prompt.slice(0, at + m[0].indexOf(m[1] as string) + (m[1] as string).length), { addBos: true }).length;
    const upToValue = tok.encode(ex.prompt.slice(0, at + m[0].length - 1), { addBos: true }).length;
    return { key: m[1], value: m[2], start: before, keyEnd: upToKey, valueEnd: upToValue };
  });
  const answer = ex.answers[0] as string;
  examples.push({
    index: i,
    ids,
    answer,
    answerIds: tok.encode(` ${answer}`, { addBos: false }),
    // The tokenizer splits digits one by one: a value's ids are the space's, then one per digit.
    digitIds: [...'0123456789'].map((d) => tok.encode(d, { addBos: false })[0]),
    needles,
    asked: needles.findIndex((n) => n.value === answer),
  });
}
writeFileSync(out, JSON.stringify(examples));
console.log(`${examples.length} examples -> ${out}`);
