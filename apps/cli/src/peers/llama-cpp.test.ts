import { readFileSync } from 'node:fs';
import { Engine } from '@kvcompress/engine';
import { type LoadedModel, loadLlama2cModel } from '@kvcompress/models';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineTeacherForcedLogProbs } from './engine-logprobs.ts';
import { LlamaCppPeer, type LlamaCppPeerOptions, type TeacherForcingMode } from './llama-cpp.ts';

// The GGUF's 48 tensors are bit-identical to stories260K.bin (PROVENANCE.md), so llama.cpp on
// the GGUF and our engine on the .bin run the same model.
const GGUF = 'models/stories260K/stories260K.gguf';
const BIN = 'models/stories260K/stories260K.bin';
const REFERENCE = 'models/stories260K/reference_greedy.json';
const STORIES = 'data/tinystories-valid/TinyStories-valid-first1000.txt';
const haveFiles = hasShared(GGUF, BIN, REFERENCE, STORIES);

const BOS = 1;
const MAX_CONTEXT = 512;
/** Probabilities below this (ours) are left out of the max-error figure. */
const P_MIN = 1e-4;
/**
 * The error grows with the position: llama.cpp computes RoPE angles in float32 (pos * theta^-2i/d
 * by repeated float32 products), we in float64; at position 400 a float32 angle is off by about
 * 400 * 2^-24 rad. Positions below this are reported apart.
 */
const EARLY = 256;

function referenceIds(): number[] {
  return (JSON.parse(readFileSync(sharedPath(REFERENCE), 'utf8')) as { token_ids: number[] }).token_ids;
}

function stories(): LoadedModel {
  return loadLlama2cModel(new Uint8Array(readFileSync(sharedPath(BIN))));
}

/** The first `count` TinyStories validation stories, tokenized by llama.cpp, BOS first, cut to the context. */
function storyIds(peer: LlamaCppPeer, count: number): number[][] {
  const text = readFileSync(sharedPath(STORIES), 'utf8');
  return text
    .split('<|endoftext|>')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .slice(0, count)
    .map((s) => [BOS, ...peer.tokenize(s)].slice(0, MAX_CONTEXT));
}

interface Agreement {
  positions: number;
  /** max |logp_ours - logp_llama| over (position, token) with p_ours > P_MIN. */
  maxAbsErr: number;
  /** The same over positions < EARLY only. */
  maxAbsErrEarly: number;
  /** The same over every token whose llama.cpp probability is not 0. */
  maxAbsErrAll: number;
  /** Positions whose argmax agrees. */
  argmaxAgree: number;
  /** Positions where our top-1 leads our top-2 by more than `gap` nats. */
  clearPositions: number;
  /** Of those, positions whose argmax agrees. */
  clearAgree: number;
  /** max |sum_v p_llama - 1| over positions. */
  maxMassErr: number;
}

function compare(ours: Float64Array, theirs: Float64Array, vocab: number, gap: number): Agreement {
  const positions = ours.length / vocab;
  const a: Agreement = {
    positions,
    maxAbsErr: 0,
    maxAbsErrEarly: 0,
    maxAbsErrAll: 0,
    argmaxAgree: 0,
    clearPositions: 0,
    clearAgree: 0,
    maxMassErr: 0,
  };
  for (let p = 0; p < positions; p++) {
    const o = p * vocab;
    let best = 0;
    let second = -1;
    let theirBest = 0;
    let mass = 0;
    for (let v = 0; v < vocab; v++) {
      const x = ours[o + v] as number;
      const y = theirs[o + v] as number;
      if (y > (theirs[o + theirBest] as number)) theirBest = v;
      if (v > 0) {
        if (x > (ours[o + best] as number)) {
          second = best;
          best = v;
        } else if (second < 0 || x > (ours[o + second] as number)) {
          second = v;
        }
      }
      if (y === Number.NEGATIVE_INFINITY) continue;
      mass += Math.exp(y);
      const err = Math.abs(x - y);
      a.maxAbsErrAll = Math.max(a.maxAbsErrAll, err);
      if (Math.exp(x) > P_MIN) {
        a.maxAbsErr = Math.max(a.maxAbsErr, err);
        if (p < EARLY) a.maxAbsErrEarly = Math.max(a.maxAbsErrEarly, err);
      }
    }
    a.maxMassErr = Math.max(a.maxMassErr, Math.abs(mass - 1));
    if (best === theirBest) a.argmaxAgree++;
    if ((ours[o + best] as number) - (ours[o + second] as number) > gap) {
      a.clearPositions++;
      if (best === theirBest) a.clearAgree++;
    }
  }
  return a;
}

function merge(parts: readonly Agreement[]): Agreement {
  return parts.reduce((s, a) => ({
    positions: s.positions + a.positions,
    maxAbsErr: Math.max(s.maxAbsErr, a.maxAbsErr),
    maxAbsErrEarly: Math.max(s.maxAbsErrEarly, a.maxAbsErrEarly),
    maxAbsErrAll: Math.max(s.maxAbsErrAll, a.maxAbsErrAll),
    argmaxAgree: s.argmaxAgree + a.argmaxAgree,
    clearPositions: s.clearPositions + a.clearPositions,
    clearAgree: s.clearAgree + a.clearAgree,
    maxMassErr: Math.max(s.maxMassErr, a.maxMassErr),
  }));
}

async function agreement(
  engine: Engine,
  peer: LlamaCppPeer,
  texts: readonly number[][],
  mode: TeacherForcingMode,
  gap: number,
): Promise<Agreement> {
  const parts: Agreement[] = [];
  for (const ids of texts) {
    const ours = await engineTeacherForcedLogProbs(engine, ids);
    const theirs = await peer.teacherForcedLogProbs(ids, mode);
    expect(theirs.positions).toBe(ids.length - 1);
    parts.push(compare(ours, theirs.logProbs, peer.vocab, gap));
  }
  return merge(parts);
}

function report(label: string, a: Agreement): void {
  console.info(
    `${label}: ${a.positions} positions; max |Δlogp| (p > ${P_MIN}) = ${a.maxAbsErr.toExponential(2)} ` +
      `(${a.maxAbsErrEarly.toExponential(2)} at positions < ${EARLY}), ` +
      `over all tokens = ${a.maxAbsErrAll.toExponential(2)}; argmax agrees at ${a.argmaxAgree}/${a.positions} ` +
      `(${a.clearAgree}/${a.clearPositions} where our top-1 leads by the gap); max |Σp - 1| = ${a.maxMassErr.toExponential(1)}`,
  );
}

describe.skipIf(!haveFiles)('node-llama-cpp as a peer on stories260K', () => {
  // The same arithmetic as ours: float32 K/V and the plain attention path (llama.cpp's CPU
  // flash attention works in float16 whatever the cache type).
  const exact: LlamaCppPeerOptions = { threads: 1, contextSize: MAX_CONTEXT, kvCacheType: 'F32', flashAttention: false };
  let peer: LlamaCppPeer;
  let engine: Engine;
  let texts: number[][];

  beforeAll(async () => {
    peer = await LlamaCppPeer.create(sharedPath(GGUF), exact);
    engine = new Engine({ model: stories(), maxSequences: 1 });
    // 256 positions of the reference story, then four TinyStories validation stories.
    texts = [[BOS, ...referenceIds()], ...storyIds(peer, 4)];
  });

  afterAll(async () => {
    await peer?.dispose();
  });

  it('greedy from BOS: llama.cpp, our engine and reference_greedy.json give the same 256 ids', async () => {
    const reference = referenceIds();
    expect(reference).toHaveLength(256);
    const theirs = await peer.greedy([BOS], 256);
    const done = await engine.complete([BOS], { maxTokens: 256, stopTokens: [] });
    if (done.error !== undefined) throw done.error;
    expect(theirs).toEqual(reference);
    expect([...done.tokens]).toEqual(reference);
  });

  it('teacher-forced next-token log-probabilities agree to float32 precision (float32 KV, no flash attention)', async () => {
    expect(peer.vocab).toBe(engine.model.config.vocabSize);
    const a = await agreement(engine, peer, texts, 'sequential', 1e-3);
    report('llama.cpp exact (F32 KV, no FA), sequential teacher forcing', a);
    expect(a.positions).toBeGreaterThanOrEqual(300);
    expect(a.maxAbsErrEarly).toBeLessThan(1e-4); // measured 2.9e-5
    expect(a.maxAbsErr).toBeLessThan(5e-4); // measured 1.4e-4 (position 367)
    expect(a.maxMassErr).toBeLessThan(1e-4);
    expect(a.clearAgree).toBe(a.clearPositions);
    expect(a.argmaxAgree / a.positions).toBeGreaterThan(0.995);
  });

  it('the batched teacher-forced pass (controlledEvaluate) agrees with ours just as well', async () => {
    const a = await agreement(engine, peer, texts, 'batch', 1e-3);
    report('llama.cpp exact (F32 KV, no FA), batched teacher forcing', a);
    expect(a.maxAbsErrEarly).toBeLessThan(1e-4);
    expect(a.maxAbsErr).toBeLessThan(5e-4);
    expect(a.clearAgree).toBe(a.clearPositions);
  });

  it("with llama.cpp's defaults (float16 KV, flash attention) the distributions agree to float16 precision", async () => {
    const defaults = await LlamaCppPeer.create(sharedPath(GGUF), { threads: 1, contextSize: MAX_CONTEXT });
    try {
      const a = await agreement(engine, defaults, texts, 'batch', 0.1);
      report('llama.cpp defaults (F16 KV, FA auto), batched teacher forcing', a);
      expect(a.maxAbsErr).toBeLessThan(0.15); // measured 0.054
      expect(a.clearAgree).toBe(a.clearPositions);
      expect(a.argmaxAgree / a.positions).toBeGreaterThan(0.98);
    } finally {
      await defaults.dispose();
    }
  });
});
