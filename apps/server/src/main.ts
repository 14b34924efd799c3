// kvc-server: serve a model over the OpenAI API with a compressed KV cache.
//   node --conditions=source apps/server/src/main.ts [--model <path>] [--port 8000] [--rate 4]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvCompressError } from '@kvcompress/core';
import { Engine } from '@kvcompress/engine';
import { loadModel } from '@kvcompress/models';
import { Command, InvalidArgumentError } from 'commander';
import { createServer } from './server.ts';

const positive = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number, got "${v}".`);
  return n;
};

/** The WebGPU backend on Dawn, loaded only when asked for. */
async function webGpuBackend(robustness: boolean) {
  const { requestWebGpuDevice, WebGpuBackend } = await import('@kvcompress/webgpu');
  return new WebGpuBackend(await requestWebGpuDevice({ robustness }));
}

/** The project's own model, committed in the repository (apps/server/src/../../../models). */
const DEFAULT_MODEL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/kvc-20m-4k');

const program = new Command()
  .name('kvc-server')
  .description('An OpenAI-compatible server (completions, chat, streaming, /metrics) over a per-head compressed KV cache.')
  .option(
    '-m, --model <path>',
    'model: .gguf, llama2.c .bin, or a Hugging Face folder (default: $KVC_MODEL, else models/kvc-20m-4k)',
    process.env['KVC_MODEL'] ?? DEFAULT_MODEL,
  )
  .option('--host <host>', 'address to listen on', process.env['KVC_HOST'] ?? '127.0.0.1')
  .option('--port <n>', 'port', positive('port'), Number(process.env['KVC_PORT'] ?? 8000))
  .option('--api-key <key>', 'require "Authorization: Bearer <key>" (default: $KVC_API_KEY; none = open)', process.env['KVC_API_KEY'])
  .option(
    '--policy <name>',
    'default eviction policy (see kvc policies); a request may name another in kv_compression.policy',
    process.env['KVC_POLICY'] ?? 'kv-compress',
  )
  .option(
    '--rate <x>',
    'default compression rate per sequence (1 = full cache); a request may set its own',
    positive('rate'),
    Number(process.env['KVC_RATE'] ?? 1),
  )
  .option('--window <n>', 'default protected recent positions', positive('window'), Number(process.env['KVC_WINDOW'] ?? 64))
  .option('--max-sequences <n>', 'sequences decoded together', positive('max-sequences'), 16)
  .option('--kv-blocks <n>', 'KV blocks in the pool: the memory budget (default: every sequence at full context)', positive('kv-blocks'))
  .option('--max-queue <n>', 'accepted requests in flight before 429', positive('max-queue'), 256)
  .option('--max-tokens-limit <n>', 'largest max_tokens a request may ask', positive('max-tokens-limit'), 4096)
  .option('--model-id <id>', 'the id clients use (default: the file name)')
  .option(
    '--backend <name>',
    'cpu, or webgpu (Dawn: a Vulkan GPU, or SwiftShader via VK_ICD_FILENAMES)',
    process.env['KVC_BACKEND'] ?? 'cpu',
  )
  .option(
    '--no-gpu-robustness',
    "webgpu: turn Dawn's bounds checks on shader memory accesses off (faster decode attention; an indexing bug would then touch other GPU memory of this process)",
  );

program.parse();
const o = program.opts<{
  model: string;
  host: string;
  port: number;
  apiKey?: string;
  policy: string;
  rate: number;
  window: number;
  maxSequences: number;
  kvBlocks?: number;
  maxQueue: number;
  maxTokensLimit: number;
  modelId?: string;
  backend: string;
  gpuRobustness: boolean;
}>();
if (o.backend !== 'cpu' && o.backend !== 'webgpu') {
  console.error(`kvc-server: --backend must be cpu or webgpu, got "${o.backend}".`);
  process.exit(2);
}
try {
  const model = await loadModel(o.model);
  const backend = o.backend === 'webgpu' ? await webGpuBackend(o.gpuRobustness) : undefined;
  const engine = new Engine({
    model,
    backend,
    maxSequences: o.maxSequences,
    kvBlocks: o.kvBlocks,
    // The policy and window are also the defaults of requests that set their own budget.
    policy: o.policy,
    protectedWindow: o.window,
    ...(o.rate > 1 ? { budget: { targetCompressionRate: o.rate } } : {}),
  });
  const app = createServer({
    engine,
    modelId: o.modelId ?? path.basename(o.model),
    apiKey: o.apiKey,
    maxQueue: o.maxQueue,
    maxTokensLimit: o.maxTokensLimit,
  });
  await app.listen({ host: o.host, port: o.port });
  console.log(
    `kvc-server: ${o.modelId ?? path.basename(o.model)} on http://${o.host}:${o.port}/v1 (${o.rate > 1 ? `policy ${o.policy} at ${o.rate}x` : `full cache; policy ${o.policy} for requests that set a budget`}, ${o.backend})`,
  );
  const stop = async () => {
    console.log('kvc-server: shutting down (finishing in-flight requests)');
    await (app as unknown as { shutdown: (ms?: number) => Promise<void> }).shutdown(30_000);
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} catch (error) {
  if (error instanceof KvCompressError) {
    console.error(`kvc-server: ${error.message}`);
    process.exit(2);
  }
  throw error;
}
