import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';

const GGUF = 'models/stories260K/stories260K.gguf';
const main = path.join(import.meta.dirname, 'main.ts');

/** Resolves with the process's exit code; the server prints its URL once it listens. */
function startServer(port: number): { child: ChildProcess; ready: Promise<void>; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--conditions=source', main, '--model', sharedPath(GGUF), '--port', String(port), '--rate', '4'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('/v1 (')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`server exited (${code}) before listening: ${out}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, ready, exited };
}

describe.skipIf(!hasShared(GGUF))('kvc-server process', () => {
  it('on SIGTERM stops accepting, finishes the in-flight stream, and exits 0', async () => {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const { child, ready, exited } = startServer(port);
    await ready;
    const base = `http://127.0.0.1:${port}`;
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K.gguf', prompt: 'Once upon a time', max_tokens: 400, stream: true, stop: [] }),
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value);
    // The stream is under way: ask the server to stop.
    child.kill('SIGTERM');
    // A new request while it drains is refused with an OpenAI-style 503 (or the port is closed).
    await new Promise((r) => setTimeout(r, 200));
    const late = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K.gguf', prompt: 'Hi', max_tokens: 4 }),
    }).then(
      async (r) => ({ status: r.status, body: (await r.json()) as { error?: { code?: string } } }),
      () => ({ status: 0, body: {} as { error?: { code?: string } } }),
    );
    if (late.status !== 0) {
      expect(late.status).toBe(503);
      expect(late.body.error?.code).toBe('shutting_down');
    }
    let chunksAfterStop = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
      chunksAfterStop++;
    }
    // It was still generating when the signal came, and went on.
    expect(chunksAfterStop).toBeGreaterThan(1);
    // The in-flight stream ran to its end: a finish reason, then [DONE].
    expect(text).toMatch(/"finish_reason":"(length|stop)"/);
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(await exited).toBe(0);
  }, 120_000);
});
