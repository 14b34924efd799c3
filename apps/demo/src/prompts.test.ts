import { loadHfModel } from '@kvcompress/models';
import { describe, expect, it } from 'vitest';
import { defaultModelDir } from '../test/default-model.ts';
import { buildPrompt, PROMPT_PRESETS } from './prompts.ts';

describe('prompt presets', () => {
  it('builds retrieval prompts of about the requested length with the answer inside', async () => {
    const tokenizer = (await loadHfModel(defaultModelDir())).tokenizer!;
    for (const preset of PROMPT_PRESETS) {
      const built = buildPrompt(preset, tokenizer, 0);
      const tokens = tokenizer.encode(built.prompt).length;
      if (preset.contextTokens === undefined) {
        expect(built.answers).toEqual([]);
        continue;
      }
      expect(tokens).toBeLessThanOrEqual(preset.contextTokens);
      expect(tokens).toBeGreaterThan(preset.contextTokens * 0.75);
      for (const answer of built.answers) expect(built.prompt).toContain(answer);
      // Deterministic per index, different across indices.
      expect(buildPrompt(preset, tokenizer, 0).prompt).toBe(built.prompt);
      expect(buildPrompt(preset, tokenizer, 1).prompt).not.toBe(built.prompt);
    }
  });
});
