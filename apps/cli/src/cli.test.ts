import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { defaultModelDir, hasShared, sharedDir } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './paths.ts';

const run = promisify(execFile);
const main = path.join(repoRoot, 'apps/cli/src/main.ts');

// Most tests run on stories260K (fast); the default model (models/kvc-20m-4k) has its own.
const STORIES_ENV = { ...process.env, KVC_MODEL: path.join(sharedDir(), 'models/stories260K/stories260K.bin') };

const STORY = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.';

async function kvc(...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return kvcWith(STORIES_ENV, ...args);
}

async function kvcWith(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--conditions=source', main, ...args], { cwd: repoRoot, env });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const e = error as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

describe('kvc on the default model (kvc-20m-4k, committed)', () => {
  it('run: the default pass-key prompt; the full cache answers it, the compressed cache frees memory per head', async () => {
    expect(existsSync(path.join(defaultModelDir, 'config.json'))).toBe(true);
    const { stdout, code } = await kvcWith(process.env, 'run', '--json', '--max-tokens', '8');
    expect(code).toBe(0);
    const r = JSON.parse(stdout);
    expect(r.modelPath).toBe(defaultModelDir);
    expect(r.promptTokens).toBeGreaterThan(400);
    expect(r.full.text).toContain('68214');
    expect(r.compressed.compressions).toBeGreaterThan(0);
    expect(r.memoryRatio).toBeGreaterThan(2);
    expect(new Set(r.compressed.blocksPerHead).size).toBeGreaterThan(1);
  }, 120_000);

  it('--import loads a policy module: it is listed and runs at the same KV memory as the built-in', async () => {
    const example = path.join(repoRoot, 'apps/cli/examples/kv-compress-maxpool.ts');
    const listed = await kvcWith(process.env, 'policies', '--import', example);
    expect(listed.stdout).toMatch(/^kv-compress-maxpool /m);
    const [pooled, plain] = await Promise.all(
      ['kv-compress-maxpool', 'kv-compress'].map(async (policy) => {
        const { stdout, code } = await kvcWith(process.env, 'run', '--import', example, '--policy', policy, '--json', '--max-tokens', '8');
        expect(code).toBe(0);
        return JSON.parse(stdout);
      }),
    );
    expect(pooled.compressed.policy).toBe('kv-compress-maxpool');
    expect(pooled.compressed.blocks).toBe(plain.compressed.blocks);
    // Measured: pooling keeps all five digits of the key at 4x; the plain metric loses three.
    expect(pooled.compressed.text).toContain('68214');
    // The built-in trailing variant (importance flows to the tokens after an attended one)
    // answers it too.
    const t = await kvcWith(process.env, 'run', '--policy', 'kv-compress-trailing', '--json', '--max-tokens', '8');
    expect(t.code).toBe(0);
    const tr = JSON.parse(t.stdout);
    expect(tr.compressed.blocks).toBe(plain.compressed.blocks);
    expect(tr.compressed.text).toContain('68214');
    const broken = await kvcWith(process.env, 'policies', '--import', 'no-such-module.ts');
    expect(broken.code).toBe(2);
    expect(broken.stderr).toMatch(/--import no-such-module.ts failed to load/);
  }, 180_000);
});

describe.skipIf(!hasShared('models/stories260K/stories260K.bin', 'models/stories260K/tok512.bin'))('kvc on stories260K', () => {
  it('run: full cache vs KV-Compress, with memory, divergence and speed', async () => {
    const { stdout, code } = await kvc(
      'run',
      '--prompt',
      STORY,
      '--json',
      '--max-tokens',
      '200',
      '--rate',
      '4',
      '--protected-window',
      '16',
      '--compression-interval',
      '16',
    );
    expect(code).toBe(0);
    const r = JSON.parse(stdout);
    expect(r.full.tokens.length).toBeGreaterThan(0);
    expect(r.full.text.length).toBeGreaterThan(20);
    expect(r.compressed.policy).toBe('kv-compress');
    expect(r.compressed.compressions).toBeGreaterThan(0);
    expect(r.full.kvBytes).toBe(r.full.blocks * 2 * 16 * 8 * 4);
    expect(r.memoryRatio).toBeGreaterThan(2);
    expect(r.memoryRatio).toBeCloseTo(r.full.kvBytes / r.compressed.kvBytes, 6);
    expect(new Set(r.compressed.blocksPerHead).size).toBeGreaterThan(1);
    expect(r.full.tokensPerSecond).toBeGreaterThan(0);
    expect(r.firstDifference).toBeGreaterThanOrEqual(-1);
  }, 60_000);

  it('run: the human-readable report', async () => {
    const { stdout, code } = await kvc('run', '--prompt', STORY, '--max-tokens', '60');
    expect(code).toBe(0);
    expect(stdout).toMatch(/--- full cache ---/);
    expect(stdout).toMatch(/KV memory in use/);
    expect(stdout).toMatch(/decode tokens\/s/);
    expect(stdout).toMatch(/blocks per head after kv-compress/);
  }, 60_000);

  it('inspect: architecture, shapes, tokenizer, KV bytes per token', async () => {
    const { stdout, code } = await kvc('inspect', '--json');
    expect(code).toBe(0);
    const info = JSON.parse(stdout);
    expect(info.config).toMatchObject({ numLayers: 5, numHeads: 8, numKvHeads: 4, headDim: 8, vocabSize: 512 });
    expect(info.parameters).toBe(260032);
    expect(info.kvBytesPerToken.f32).toBe(2 * 5 * 4 * 8 * 4);
    expect(info.tokenizer.vocabSize).toBe(512);
  }, 60_000);

  it('bad input gets a clear message and exit code', async () => {
    const missing = await kvc('inspect', '/nonexistent/model.gguf');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/No model at/);
    const policy = await kvc('run', '--policy', 'nope');
    expect(policy.code).not.toBe(0);
    expect(policy.stderr).toMatch(/Unknown policy "nope"/);
    const rate = await kvc('run', '--rate', '0.5');
    expect(rate.code).not.toBe(0);
    expect(rate.stderr).toMatch(/--rate must be/);
  }, 60_000);
});

describe('kvc without a model', () => {
  it('explains how to point --model somewhere', async () => {
    const { stderr, code } = await kvcWith({ ...process.env, KVC_MODEL: path.join(repoRoot, 'no-such-model') }, 'inspect');
    expect(code).toBe(2);
    expect(stderr).toMatch(/--model/);
  });
});

describe.skipIf(!hasShared('models/stories260K/stories260K.gguf', 'data/tinystories-valid/TinyStories-valid-first1000.txt'))(
  'kvc eval',
  () => {
    it('writes cells, results, a table and plots; a second run resumes without recomputing', async () => {
      const out = mkdtempSync(path.join(tmpdir(), 'kvc-eval-'));
      const args = ['eval', '--policies', 'kv-compress,streaming-llm', '--rates', '1,4', '--contexts', '320', '--tasks', 'kl,passkey'];
      const first = await kvc(...args, '--examples', '2', '--continuation', '16', '--out', out);
      expect(first.code).toBe(0);
      const files = readdirSync(out).sort();
      expect(files).toEqual(['cells.jsonl', 'plot-kl-320.svg', 'plot-passkey-320.svg', 'results.json', 'results.md']);
      const cells = readFileSync(path.join(out, 'cells.jsonl'), 'utf8').trim().split('\n');
      expect(cells).toHaveLength(2 * 2 * 2);
      expect(readFileSync(path.join(out, 'results.md'), 'utf8')).toContain('| streaming-llm |');
      const again = await kvc(...args, '--examples', '2', '--continuation', '16', '--out', out);
      expect(again.code).toBe(0);
      expect(readFileSync(path.join(out, 'cells.jsonl'), 'utf8').trim().split('\n')).toHaveLength(cells.length);
    }, 120_000);

    it('rejects unknown tasks and policies with a clear message', async () => {
      const bad = await kvc('eval', '--tasks', 'telepathy');
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toMatch(/Unknown task "telepathy"/);
      const badPolicy = await kvc('eval', '--policies', 'oracle');
      expect(badPolicy.code).not.toBe(0);
      expect(badPolicy.stderr).toMatch(/Unknown policy "oracle"/);
    });
  },
);

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';
describe.skipIf(!hasShared('models/stories260K/stories260K.bin', 'models/stories260K/tok512.bin') || !existsSync(SWIFTSHADER))(
  'kvc run --backend webgpu (Dawn on SwiftShader)',
  () => {
    it('gives the same text as the CPU backend, full cache and compressed', async () => {
      const args = [
        'run',
        '--prompt',
        STORY,
        '--json',
        '--max-tokens',
        '12',
        '--rate',
        '4',
        '--protected-window',
        '4',
        '--compression-interval',
        '4',
      ];
      const cpu = await kvc(...args);
      const gpu = await kvcWith({ ...STORIES_ENV, VK_ICD_FILENAMES: SWIFTSHADER }, ...args, '--backend', 'webgpu');
      expect(gpu.code).toBe(0);
      const a = JSON.parse(cpu.stdout);
      const b = JSON.parse(gpu.stdout);
      expect(b.full.text).toBe(a.full.text);
      expect(b.compressed.text).toBe(a.compressed.text);
      // Dawn's bounds checks off (--no-gpu-robustness): the same text.
      const unchecked = await kvcWith(
        { ...STORIES_ENV, VK_ICD_FILENAMES: SWIFTSHADER },
        ...args,
        '--backend',
        'webgpu',
        '--no-gpu-robustness',
      );
      expect(unchecked.code).toBe(0);
      const c = JSON.parse(unchecked.stdout);
      expect(c.full.text).toBe(a.full.text);
      expect(c.compressed.text).toBe(a.compressed.text);
    }, 180_000);
  },
);
