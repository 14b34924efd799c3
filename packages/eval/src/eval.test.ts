import { readFileSync } from 'node:fs';
import { Engine } from '@kvcompress/engine';
import { type LoadedModel, loadModel } from '@kvcompress/models';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { beforeAll, describe, expect, it } from 'vitest';
import { klDivergence } from './divergence.ts';
import { markdownReport, plotGroups, svgPlot } from './report.ts';
import { type CellResult, cellKey, heldOutTokens, runEval, textExampleTokens } from './runner.ts';
import { generateExample, RETRIEVAL_TASKS, scoreAnswer, splitSentences } from './tasks.ts';

const GGUF = 'models/stories260K/stories260K.gguf';
const TEXT = 'data/tinystories-valid/TinyStories-valid-first1000.txt';
const haveShared = hasShared(GGUF, TEXT);

describe('retrieval tasks', () => {
  // Letters-only pseudo-words, so common-words has a vocabulary to draw from.
  const word = (i: number) =>
    Array.from({ length: 5 }, (_, k) => String.fromCharCode(97 + (Math.floor((i * 7919 + 13) / 26 ** k) % 26))).join('');
  const text = Array.from(
    { length: 400 },
    (_, i) => `Sentence number ${i} talks about the ${word(i)} and the ${word(i + 400)} behind house ${i % 37}.`,
  ).join(' ');
  // A stand-in tokenizer: one token per word or punctuation mark.
  const source = { sentences: splitSentences(text), countTokens: (t: string) => (t.match(/\w+|[^\s\w]/g) ?? []).length };

  it.each(RETRIEVAL_TASKS)('%s: deterministic, near the target length, answers present in the prompt', (task) => {
    const a = generateExample(task, source, 600, 3, 42);
    const b = generateExample(task, source, 600, 3, 42);
    const other = generateExample(task, source, 600, 4, 42);
    expect(a).toEqual(b);
    expect(other.prompt).not.toBe(a.prompt);
    const n = source.countTokens(a.prompt) + a.maxNewTokens;
    expect(n).toBeLessThanOrEqual(600);
    expect(n).toBeGreaterThan(600 * 0.8);
    for (const ans of a.answers) expect(a.prompt).toContain(ans);
    // The asked-for answer is not the only number around for the multi-key task.
    if (task === 'niah-multikey') expect((a.prompt.match(/special magic numbers? for \w+ is: \d+/g) ?? []).length).toBe(4);
  });

  it('scores the fraction of answers found, case-insensitively', () => {
    expect(scoreAnswer(' 12345 and 67890', ['12345', '67890'])).toBe(1);
    expect(scoreAnswer(' only 12345', ['12345', '67890'])).toBe(0.5);
    expect(scoreAnswer('ABCDE', ['abcde'])).toBe(1);
    expect(scoreAnswer('nothing', ['1'])).toBe(0);
  });
});

describe.skipIf(!haveShared)('a small eval end to end on stories260K (CPU)', () => {
  let model: LoadedModel;
  let text: string;
  let cells: CellResult[];
  const config = () => ({
    modelName: 'stories260K',
    model,
    policies: ['kv-compress', 'snapkv'],
    rates: [1, 4],
    contexts: [200],
    tasks: ['perplexity', 'kl', 'greedy-agreement', 'passkey'] as const,
    examples: 2,
    seed: 7,
    text,
    continuationTokens: 24,
    protectedWindow: 8,
  });

  beforeAll(async () => {
    model = await loadModel(sharedPath(GGUF));
    text = readFileSync(sharedPath(TEXT), 'utf8');
    cells = await runEval(config());
  }, 120_000);

  it('produces every cell; the full cache scores KL 0 and agreement 100%', () => {
    expect(cells).toHaveLength(4 * 2 * 2);
    for (const c of cells.filter((x) => x.rate === 1)) {
      if (c.task === 'kl') expect(c.score).toBe(0);
      if (c.task === 'greedy-agreement') expect(c.score).toBe(1);
    }
    const kl4 = cells.filter((c) => c.task === 'kl' && c.rate === 4);
    for (const c of kl4) expect(c.score).toBeGreaterThan(0);
    // Both policies share the same full-cache baseline.
    const ppl = cells.filter((c) => c.task === 'perplexity' && c.rate === 1);
    expect(ppl[0]?.score).toBe(ppl[1]?.score);
  });

  it('gives the same scores with the examples of a cell batched in one engine', async () => {
    const batched = await runEval({ ...config(), batch: 2 });
    expect(batched.map((c) => cellKey(c))).toEqual(cells.map((c) => cellKey(c)));
    for (const [k, c] of batched.entries()) {
      const want = cells[k] as CellResult;
      // Float rounding only: rows of other sequences may take another matmul code path.
      for (const [i, v] of c.perExample.entries()) expect(v).toBeCloseTo(want.perExample[i] as number, 5);
    }
    await expect(runEval({ ...config(), batch: 0 })).rejects.toThrow(/batch must be an integer >= 1/);
  }, 120_000);

  it('matches a direct computation: full-cache perplexity from forwardLogits, compressed KL from a separate engine', async () => {
    const tokenizer = model.tokenizer;
    if (tokenizer === null) throw new Error('no tokenizer');
    const tokens = heldOutTokens(tokenizer, text);
    const vocab = model.config.vocabSize;
    // Perplexity of the full cache, example 0, through a different path (one prefill of everything).
    const ex0 = textExampleTokens(tokens, 0, 7, 200, 24, model.config.bosTokenId);
    const nll = await new Engine({ model, maxSequences: 1 }).scoreTokens([...ex0.contextIds, ...ex0.continuation]);
    const direct = nll.slice(ex0.contextIds.length - 1).reduce((a, b) => a + b, 0) / ex0.continuation.length;
    const full = cells.find((c) => c.task === 'perplexity' && c.rate === 1) as CellResult;
    expect(full.perExample[0]).toBeCloseTo(direct, 4);
    // KL of KV-Compress at 4x, example 1, recomputed with a fresh engine.
    const ex1 = textExampleTokens(tokens, 1, 7, 200, 24, model.config.bosTokenId);
    const reference = await new Engine({ model, maxSequences: 1 }).forwardLogits([...ex1.contextIds, ...ex1.continuation]);
    const engine = new Engine({
      model,
      maxSequences: 1,
      policy: 'kv-compress',
      budget: { targetCompressionRate: 4 },
      protectedWindow: 8,
      compressOnce: true,
    });
    let sum = 0;
    await engine.complete(ex1.contextIds, {
      teacherForcing: {
        tokens: ex1.continuation,
        onLogits: (k, logits) => {
          const row = reference.subarray((ex1.contextIds.length - 1 + k) * vocab, (ex1.contextIds.length + k) * vocab);
          sum += klDivergence(row, logits);
        },
      },
    });
    const cell = cells.find((c) => c.task === 'kl' && c.rate === 4 && c.policy === 'kv-compress') as CellResult;
    expect(cell.perExample[1]).toBeCloseTo(sum / ex1.continuation.length, 4);
  });

  it('resumes: cells already computed are not recomputed', async () => {
    const computed: CellResult[] = [];
    const again = await runEval({ ...config(), previous: cells, onCell: (c) => computed.push(c) });
    expect(computed).toHaveLength(0);
    expect(again).toEqual(cells);
  });

  it('writes a Markdown table and an SVG plot per (task, context)', () => {
    const md = markdownReport(cells);
    expect(md).toContain('| policy | full | 4x |');
    expect(md).toContain('| kv-compress |');
    const groups = plotGroups(cells);
    expect(groups).toHaveLength(4);
    const svg = svgPlot(groups[0] as CellResult[]);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.match(/<polyline/g)).toHaveLength(2);
  });
});
