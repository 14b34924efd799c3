import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Engine } from '@kvcompress/engine';
import { type LoadedModel, loadModel, type Tokenizer } from '@kvcompress/models';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, POLICY_HEADER } from './server.ts';

const GGUF = 'models/stories260K/stories260K.gguf';
const KEY = 'sk-test-key';
const MODEL = 'stories260K';

/** stories260K with a plain chat template (the model has none), to exercise /v1/chat/completions. */
function withChatTemplate(model: LoadedModel): LoadedModel {
  const t = model.tokenizer as Tokenizer;
  const tokenizer: Tokenizer = {
    vocabSize: t.vocabSize,
    bosTokenId: t.bosTokenId,
    eosTokenIds: t.eosTokenIds,
    encode: (text, o) => t.encode(text, o),
    decode: (ids, o) => t.decode(ids, o),
    chatTemplate:
      '{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}',
  };
  return { ...model, tokenizer };
}

describe.skipIf(!hasShared(GGUF))('OpenAI-compatible server on stories260K', () => {
  let model: LoadedModel;
  let engine: Engine;
  let app: FastifyInstance;
  let base: string;
  let client: OpenAI;

  beforeAll(async () => {
    model = withChatTemplate(await loadModel(sharedPath(GGUF)));
    engine = new Engine({ model, maxSequences: 16, budget: { targetCompressionRate: 2 }, protectedWindow: 16 });
    app = createServer({ engine, modelId: MODEL, apiKey: KEY, maxTokensLimit: 256, maxBodyBytes: 64 * 1024 });
    await app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    client = new OpenAI({ apiKey: KEY, baseURL: `${base}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await app?.close();
  });

  it('lists the model and reports health', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    expect(await (await fetch(`${base}/health`)).json()).toEqual({ status: 'ok' });
  });

  it('completes through the official client, equal to the engine run directly; streaming gives the same text', async () => {
    const prompt = 'Once upon a time, there was a little dog';
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 40, temperature: 0 });
    const direct = await new Engine({ model, maxSequences: 1, budget: { targetCompressionRate: 2 }, protectedWindow: 16 }).complete(
      prompt,
      {
        maxTokens: 40,
        sampling: { temperature: 0 },
      },
    );
    expect(r.choices[0]?.text).toBe(direct.text);
    expect(r.usage?.completion_tokens).toBe(direct.tokens.length);
    const stream = await client.completions.create({ model: MODEL, prompt, max_tokens: 40, temperature: 0, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(direct.text);
    expect(finish).not.toBeNull();
  });

  it('chats, streaming and not', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a story about a cat.' }];
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 30, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0]?.message.role).toBe('assistant');
    expect((r.choices[0]?.message.content ?? '').length).toBeGreaterThan(0);
    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 30, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe(r.choices[0]?.message.content);
  });

  it('rejects bad requests with OpenAI-style 4xx errors and stays up', async () => {
    const post = (body: string, key = KEY) =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body,
      });
    const cases: [Promise<Response>, number, RegExp][] = [
      [post('{"model": "stories260K", "prompt": '), 400, /Invalid request/],
      [post(JSON.stringify({ model: MODEL, prompt: 'hi', temperature: 7 })), 400, /temperature/],
      [post(JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 100000 })), 400, /max_tokens/],
      [post(JSON.stringify({ model: 'gpt-9', prompt: 'hi' })), 404, /does not exist/],
      [post(JSON.stringify({ model: MODEL })), 400, /prompt/],
      [post(JSON.stringify({ model: MODEL, prompt: 'hi' }), 'wrong'), 401, /API key/],
      [post(JSON.stringify({ model: MODEL, prompt: 'x'.repeat(100_000) })), 413, /too large/],
      [post(JSON.stringify({ model: MODEL, prompt: 'story '.repeat(2000) })), 400, /tokens/],
      [post(JSON.stringify({ model: MODEL, prompt: [1, 999999] })), 400, /vocabulary/],
    ];
    for (const [response, status, message] of cases) {
      const res = await response;
      expect(res.status).toBe(status);
      const body = (await res.json()) as { error: { message: string; type: string } };
      expect(body.error.message).toMatch(message);
      expect(typeof body.error.type).toBe('string');
    }
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('kv_compression sets the budget and protected window of one request', async () => {
    const post = (kv: object) =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time, '.repeat(40), max_tokens: 40, temperature: 0, kv_compression: kv }),
      });
    const blocks = async (kv: object) => {
      const res = await post(kv);
      expect(res.status).toBe(200);
      const kvc = ((await res.json()) as { kvcompress: { policy: string; kv_blocks: number; compressions: number } }).kvcompress;
      expect(res.headers.get(POLICY_HEADER)).toBe(kvc.policy);
      return kvc;
    };
    const full = await blocks({ rate: 1 });
    const eight = await blocks({ rate: 8, protected_window: 8 });
    const capped = await blocks({ max_cache_tokens: 64 });
    expect(full.compressions).toBe(0);
    expect(full.policy).toBe('none');
    expect(eight.policy).toBe('kv-compress');
    expect(eight.kv_blocks).toBeLessThan(full.kv_blocks);
    expect(capped.kv_blocks).toBeLessThan(full.kv_blocks);
    expect((await post({ rate: 4, max_cache_tokens: 64 })).status).toBe(400);
    expect((await post({ rate: 0.5 })).status).toBe(400);
    // A budget the protected window can never meet: the engine's InvalidBudgetError, as a 400.
    const impossible = await post({ max_cache_tokens: 8, protected_window: 32 });
    expect(impossible.status).toBe(400);
    expect(((await impossible.json()) as { error: { param: string } }).error.param).toBe('kv_compression');
  });

  it('kv_compression.policy runs one request under another policy, exactly as an engine of that policy would', async () => {
    const prompt = 'Once upon a time, there was a big red ball. '.repeat(8);
    const request = { model: MODEL, prompt, max_tokens: 40, temperature: 0 };
    const direct = (policy: string) =>
      new Engine({ model, maxSequences: 1, policy, budget: { targetCompressionRate: 8 }, protectedWindow: 16 }).complete(prompt, {
        maxTokens: 40,
        sampling: { temperature: 0 },
      });
    const [h2o, kvCompress] = await Promise.all([direct('h2o'), direct('kv-compress')]);
    // The two policies write different text here, so running the server's policy instead would show.
    expect(h2o.text).not.toBe(kvCompress.text);
    // Through the official client: the extension rides in the body; the response says what ran.
    const body = { ...request, kv_compression: { policy: 'h2o', rate: 8 } };
    const { data, response } = await client.completions.create(body).withResponse();
    expect(response.headers.get(POLICY_HEADER)).toBe('h2o');
    const kvc = (data as unknown as { kvcompress: { policy: string; kv_blocks: number; compressions: number } }).kvcompress;
    expect(kvc.policy).toBe('h2o');
    expect(kvc.compressions).toBe(h2o.compressions);
    expect(kvc.kv_blocks).toBe(h2o.blocksPerHead.reduce((a, b) => a + b, 0));
    expect(data.choices[0]?.text).toBe(h2o.text);
    // Streamed: the header names the policy before the first token.
    const stream = await client.completions.create({ ...body, stream: true }).withResponse();
    expect(stream.response.headers.get(POLICY_HEADER)).toBe('h2o');
    let text = '';
    for await (const chunk of stream.data) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(h2o.text);
    // An unknown name: 400 naming the field and listing what this server can run.
    const unknown = { ...request, kv_compression: { policy: 'no-such-policy' } };
    const error = await client.completions.create(unknown).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    const bad = error as InstanceType<typeof OpenAI.BadRequestError>;
    expect(bad.status).toBe(400);
    expect(bad.param).toBe('kv_compression.policy');
    expect(bad.message).toMatch(/no policy named "no-such-policy"; available: .*kv-compress.*snapkv.*h2o.*streaming-llm/);
    // /v1/models lists the server's default and the policies a request may name.
    const models = await (await fetch(`${base}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } })).json();
    const extension = (models as { data: { kvcompress: { policy: string; rate: number; policies: { name: string }[] } }[] }).data[0]
      ?.kvcompress;
    expect(extension?.policy).toBe('kv-compress');
    expect(extension?.rate).toBe(2);
    expect(extension?.policies.map((p) => p.name)).toEqual(expect.arrayContaining(['kv-compress', 'snapkv', 'h2o', 'none']));
  });

  it('a full-cache server (rate 1) compresses the requests that set a budget, under --policy or a named one', async () => {
    const fullServer = createServer({
      engine: new Engine({ model, maxSequences: 2, policy: 'kv-compress', protectedWindow: 16 }),
      modelId: MODEL,
    });
    await fullServer.listen({ host: '127.0.0.1', port: 0 });
    try {
      const url = `http://127.0.0.1:${(fullServer.server.address() as AddressInfo).port}/v1/completions`;
      const post = (kv?: object) =>
        fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: MODEL,
            prompt: 'Once upon a time, '.repeat(30),
            max_tokens: 20,
            temperature: 0,
            kv_compression: kv,
          }),
        });
      const kvc = async (kv?: object) => {
        const res = await post(kv);
        expect(res.status).toBe(200);
        return ((await res.json()) as { kvcompress: { policy: string; compressions: number } }).kvcompress;
      };
      expect(await kvc()).toMatchObject({ policy: 'none', compressions: 0 });
      expect((await kvc({ rate: 4 })).policy).toBe('kv-compress');
      const snap = await kvc({ policy: 'snapkv', max_cache_tokens: 32 });
      expect(snap.policy).toBe('snapkv');
      expect(snap.compressions).toBeGreaterThan(0);
      // A policy without a budget, on a server that has none: 400 saying what to add.
      const noBudget = await post({ policy: 'snapkv' });
      expect(noBudget.status).toBe(400);
      expect(((await noBudget.json()) as { error: { message: string } }).error.message).toMatch(/needs one/);
    } finally {
      await fullServer.close();
    }
  });

  it('a client that disconnects mid-stream cancels its sequence and frees its blocks', async () => {
    const abort = new AbortController();
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 250, temperature: 0, stream: true }),
      signal: abort.signal,
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    abort.abort();
    for (let i = 0; i < 100 && engine.allocator.usedBlocks > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(engine.allocator.usedBlocks).toBe(0);
  });

  it('serves 520 requests at 32 concurrency with faults mixed in; every valid one completes, the pool ends empty', async () => {
    const kinds = ['ok', 'ok', 'ok', 'stream', 'chat', 'badjson', 'badparam', 'wrongkey', 'disconnect', 'toolong'] as const;
    const outcomes: Record<string, number[]> = {};
    let next = 0;
    const one = async (i: number) => {
      const kind = kinds[i % kinds.length] as (typeof kinds)[number];
      const headers = { 'content-type': 'application/json', authorization: `Bearer ${kind === 'wrongkey' ? 'nope' : KEY}` };
      const body = {
        model: MODEL,
        prompt: `Once upon a time ${i}`,
        max_tokens: 12,
        temperature: 0.8,
        seed: i,
        stream: kind === 'stream' || kind === 'disconnect',
      };
      let status: number;
      if (kind === 'chat') {
        const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: `Hi ${i}` }], max_tokens: 12 });
        status = r.choices[0]?.message.content === undefined ? 0 : 200;
      } else if (kind === 'disconnect') {
        const abort = new AbortController();
        const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body), signal: abort.signal });
        await (res.body as ReadableStream<Uint8Array>).getReader().read();
        abort.abort();
        status = -1;
      } else {
        const text =
          kind === 'badjson'
            ? '{"model":'
            : JSON.stringify(
                kind === 'badparam' ? { ...body, top_p: 0 } : kind === 'toolong' ? { ...body, prompt: 'story '.repeat(2000) } : body,
              );
        const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers, body: text });
        status = res.status;
        if (kind === 'stream') {
          const all = await res.text();
          expect(all.trim().endsWith('data: [DONE]')).toBe(true);
        } else {
          const json = (await res.json()) as { choices?: { text: string }[]; error?: unknown };
          if (status === 200) expect(typeof json.choices?.[0]?.text).toBe('string');
          else expect(json.error).toBeDefined();
        }
      }
      const list = outcomes[kind] ?? [];
      list.push(status);
      outcomes[kind] = list;
    };
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        for (let i = next++; i < 520; i = next++) await one(i);
      }),
    );
    for (const k of ['ok', 'stream', 'chat']) expect(new Set(outcomes[k])).toEqual(new Set([200]));
    expect(new Set(outcomes['badjson'])).toEqual(new Set([400]));
    expect(new Set(outcomes['badparam'])).toEqual(new Set([400]));
    expect(new Set(outcomes['toolong'])).toEqual(new Set([400]));
    expect(new Set(outcomes['wrongkey'])).toEqual(new Set([401]));
    for (let i = 0; i < 200 && engine.allocator.usedBlocks > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(engine.allocator.usedBlocks).toBe(0);
    expect((await fetch(`${base}/health`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/kvc_kv_pages_free \d+/);
    expect(metrics).toMatch(/kvc_requests_total\{outcome="length"\} \d+/);
    expect(metrics).toMatch(/kvc_generated_tokens_total \d+/);
  }, 300_000);

  it('answers 429 past its queue bound', async () => {
    const small = createServer({ engine: new Engine({ model, maxSequences: 1 }), modelId: MODEL, maxQueue: 2 });
    await small.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(small.server.address() as AddressInfo).port}/v1/completions`;
    const statuses = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt: `Hi ${i}`, max_tokens: 30 }),
        }).then((r) => r.status),
      ),
    );
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(2);
    await small.close();
  });
});

// Dawn (the `webgpu` package) on SwiftShader, shipped in Debian's chromium: the server on the
// WebGPU backend in Node.js, greedy output equal to the CPU backend's.
const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';
describe.skipIf(!hasShared(GGUF) || !existsSync(SWIFTSHADER))('the server on the WebGPU backend (Dawn in Node.js)', () => {
  it('completes through the official client with the same greedy text as the CPU backend', async () => {
    process.env['VK_ICD_FILENAMES'] ??= SWIFTSHADER;
    const { requestWebGpuDevice, WebGpuBackend } = await import('@kvcompress/webgpu');
    const model = await loadModel(sharedPath(GGUF));
    const engine = new Engine({ model, maxSequences: 4, backend: new WebGpuBackend(await requestWebGpuDevice()) });
    const app = createServer({ engine, modelId: MODEL });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const client = new OpenAI({
        apiKey: 'none',
        baseURL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1`,
        maxRetries: 0,
      });
      const prompt = 'Once upon a time';
      const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 16, temperature: 0 });
      const cpu = await new Engine({ model, maxSequences: 1 }).complete(prompt, { maxTokens: 16, sampling: { temperature: 0 } });
      expect(r.choices[0]?.text).toBe(cpu.text);
      expect(engine.allocator.usedBlocks).toBe(0);
    } finally {
      await app.close();
    }
  }, 120_000);
});
