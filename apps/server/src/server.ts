import { KvCompressError } from '@kvcompress/core';
import type { DoneEvent, Engine, GenerationEvent, RequestCompression, ResolvedRequestCompression } from '@kvcompress/engine';
import { policies } from '@kvcompress/eviction';
import { renderChat } from '@kvcompress/models';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { z } from 'zod';

export interface ServerOptions {
  readonly engine: Engine;
  /** The id clients pass as `model` (and /v1/models lists). */
  readonly modelId: string;
  /** When set, every /v1 request needs `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Largest request body in bytes. Default 1 MiB. */
  readonly maxBodyBytes?: number;
  /** Longest prompt in tokens. Default: the engine's context minus one. */
  readonly maxPromptTokens?: number;
  /** Largest `max_tokens` a request may ask for. Default 4096. */
  readonly maxTokensLimit?: number;
  /** Requests accepted but not finished, at most; past it, 429. Default 256. */
  readonly maxQueue?: number;
  /** Fastify's logger (default off). */
  readonly logger?: boolean;
}

/** Response header naming the eviction policy that runs the request ('none': full cache). */
export const POLICY_HEADER = 'x-kvcompress-policy';

/** An OpenAI-style error body: { error: { message, type, param, code } }. */
function errorBody(message: string, type: string, code: string | null = null, param: string | null = null) {
  return { error: { message, type, param, code } };
}

/**
 * The policies a request may name in `kv_compression.policy`: the process-wide registry
 * (built-ins and any registered custom policy) and the engine's own default.
 */
function policyNames(engine: Engine): string[] {
  const names = policies.names();
  return names.includes(engine.policy.name) ? names : [engine.policy.name, ...names];
}

/** Request bodies, checked against what this engine can run. */
function requestSchemas(engine: Engine) {
  const stop = z.union([z.string(), z.array(z.string()).max(4)]).optional();
  const common = {
    model: z.string().min(1),
    max_tokens: z.number().int().min(1).optional(),
    max_completion_tokens: z.number().int().min(1).optional(),
    temperature: z.number().min(0).max(2).optional(),
    top_p: z.number().gt(0).max(1).optional(),
    seed: z.number().int().optional(),
    stream: z.boolean().optional(),
    stop,
    user: z.string().optional(),
    n: z.literal(1).optional(),
    /**
     * kvcompress extension: this request's eviction policy, KV budget (rate or max cache
     * tokens) and protected window; what it leaves out is the server's (--policy, --rate, --window).
     */
    kv_compression: z
      .object({
        policy: z
          .string()
          .refine((name) => policyNames(engine).includes(name), {
            error: (issue) => `no policy named ${JSON.stringify(issue.input)}; available: ${policyNames(engine).join(', ')}`,
          })
          .optional(),
        rate: z.number().min(1).max(1024).optional(),
        max_cache_tokens: z.number().int().min(1).optional(),
        protected_window: z.number().int().min(0).optional(),
      })
      .strict()
      .refine((c) => c.rate === undefined || c.max_cache_tokens === undefined, 'give rate or max_cache_tokens, not both')
      .optional(),
  };
  return {
    completion: z.object({ ...common, prompt: z.union([z.string(), z.array(z.number().int().min(0)).min(1)]) }),
    chat: z.object({
      ...common,
      messages: z.array(z.object({ role: z.enum(['system', 'user', 'assistant']), content: z.string() })).min(1),
    }),
  };
}

type RequestSchemas = ReturnType<typeof requestSchemas>;
type ParsedBody = z.infer<RequestSchemas['completion']> | z.infer<RequestSchemas['chat']>;

/**
 * The engine's compression settings for a `kv_compression` extension: rate 1 is the full
 * cache, and what the extension leaves out stays the engine's.
 */
function requestCompression(kv: NonNullable<ParsedBody['kv_compression']>): RequestCompression {
  const budget =
    kv.max_cache_tokens !== undefined
      ? { maxCacheTokens: kv.max_cache_tokens }
      : kv.rate === undefined
        ? undefined
        : kv.rate === 1
          ? null
          : { targetCompressionRate: kv.rate };
  return {
    ...(kv.policy === undefined ? {} : { policy: kv.policy }),
    ...(budget === undefined ? {} : { budget }),
    ...(kv.protected_window === undefined ? {} : { protectedWindow: kv.protected_window }),
  };
}

/**
 * The HTTP front of an Engine, shaped like OpenAI's API so existing clients work:
 * POST /v1/completions, POST /v1/chat/completions (streaming as server-sent events or
 * not), GET /v1/models, GET /health, GET /metrics (Prometheus). The engine batches every
 * accepted request continuously within its fixed KV block budget, compressing before it
 * preempts; a client that disconnects cancels its request and frees its blocks.
 */
export function createServer(options: ServerOptions): FastifyInstance {
  const { engine, modelId } = options;
  const maxQueue = options.maxQueue ?? 256;
  const maxTokensLimit = options.maxTokensLimit ?? 4096;
  const maxPromptTokens = options.maxPromptTokens ?? engine.maxContext - 1;
  const app = Fastify({ logger: options.logger ?? false, bodyLimit: options.maxBodyBytes ?? 1 << 20 });
  const schemas = requestSchemas(engine);

  // Metrics: one registry per server, so tests can run several.
  const registry = new Registry();
  const inFlight = new Gauge({ name: 'kvc_requests_in_flight', help: 'Accepted requests not finished yet.', registers: [registry] });
  const queueDepth = new Gauge({ name: 'kvc_queue_depth', help: 'Requests waiting for admission.', registers: [registry] });
  const running = new Gauge({ name: 'kvc_running_sequences', help: 'Sequences being decoded.', registers: [registry] });
  const pagesUsed = new Gauge({ name: 'kvc_kv_pages_used', help: 'KV blocks in use.', registers: [registry] });
  const pagesFree = new Gauge({ name: 'kvc_kv_pages_free', help: 'KV blocks free.', registers: [registry] });
  const compressions = new Counter({ name: 'kvc_compression_rounds_total', help: 'Compression rounds run.', registers: [registry] });
  const tokens = new Counter({ name: 'kvc_generated_tokens_total', help: 'Tokens generated.', registers: [registry] });
  const tokensPerSecond = new Gauge({ name: 'kvc_tokens_per_second', help: 'Decode tokens/s of the last step.', registers: [registry] });
  const requests = new Counter({
    name: 'kvc_requests_total',
    help: 'Requests by outcome.',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'kvc_request_seconds',
    help: 'Request latency, accepted to done.',
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  });
  engine.onStep((s) => {
    running.set(s.running);
    queueDepth.set(s.waiting);
    pagesUsed.set(s.usedBlocks);
    pagesFree.set(s.freeBlocks);
    if (s.kind === 'decode' && s.ms > 0) tokensPerSecond.set((s.rows * 1000) / s.ms);
  });
  engine.onCompression(() => compressions.inc());

  let active = 0;
  let closing = false;

  app.addHook('onRequest', async (request, reply) => {
    if (!request.url.startsWith('/v1/')) return;
    if (options.apiKey !== undefined && request.headers.authorization !== `Bearer ${options.apiKey}`) {
      return reply
        .code(401)
        .send(errorBody('Invalid or missing API key: send "Authorization: Bearer <key>".', 'invalid_request_error', 'invalid_api_key'));
    }
  });

  app.setErrorHandler((error: Error & { statusCode?: number; code?: string }, _request, reply) => {
    const status = error.statusCode ?? 500;
    if (status === 413) return reply.code(413).send(errorBody('The request body is too large.', 'invalid_request_error', 'body_too_large'));
    if (status >= 400 && status < 500) {
      return reply.code(status).send(errorBody(`Invalid request: ${error.message}`, 'invalid_request_error', error.code ?? null));
    }
    return reply.code(500).send(errorBody('Internal server error.', 'server_error'));
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(errorBody(`No route ${request.method} ${request.url}.`, 'invalid_request_error', 'not_found'));
  });

  app.get('/health', async () => ({ status: closing ? 'closing' : 'ok' }));
  app.get('/metrics', async (_request, reply) => {
    const stats = engine.stats();
    pagesUsed.set(stats.usedBlocks);
    pagesFree.set(stats.freeBlocks);
    inFlight.set(active);
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  app.get('/v1/models', async () => {
    // What a request without kv_compression gets, and the policies it may name instead.
    const { config } = engine.resolveCompression();
    const budget = config?.budget;
    return {
      object: 'list',
      data: [
        {
          id: modelId,
          object: 'model',
          created: 0,
          owned_by: 'kvcompress',
          kvcompress: {
            policy: engine.policy.name,
            rate: budget === undefined ? 1 : 'targetCompressionRate' in budget ? budget.targetCompressionRate : null,
            max_cache_tokens: budget !== undefined && 'maxCacheTokens' in budget ? budget.maxCacheTokens : null,
            protected_window: config?.protectedWindow ?? null,
            policies: policyNames(engine).map((name) => ({
              name,
              description: (name === engine.policy.name ? engine.policy : policies.get(name)).description ?? '',
            })),
          },
        },
      ],
    };
  });

  /** Validates, tokenises and limits a request; replies 4xx and returns null when it is bad. */
  function prepare(
    kind: 'completion' | 'chat',
    body: unknown,
    reply: FastifyReply,
  ): {
    ids: number[];
    maxTokens: number;
    parsed: ParsedBody;
    compression: RequestCompression | undefined;
    resolved: ResolvedRequestCompression;
  } | null {
    const schema = kind === 'completion' ? schemas.completion : schemas.chat;
    const parsed = schema.safeParse(body);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const param = issue?.path.join('.') ?? null;
      reply
        .code(400)
        .send(
          errorBody(
            `Invalid request: ${param ? `${param}: ` : ''}${issue?.message ?? 'bad body'}.`,
            'invalid_request_error',
            'invalid_value',
            param,
          ),
        );
      return null;
    }
    const p = parsed.data;
    if (p.model !== modelId) {
      reply
        .code(404)
        .send(
          errorBody(
            `The model "${p.model}" does not exist; this server serves "${modelId}".`,
            'invalid_request_error',
            'model_not_found',
            'model',
          ),
        );
      return null;
    }
    const maxTokens = p.max_completion_tokens ?? p.max_tokens ?? 256;
    if (maxTokens > maxTokensLimit) {
      reply
        .code(400)
        .send(
          errorBody(
            `max_tokens ${maxTokens} exceeds this server's limit of ${maxTokensLimit}.`,
            'invalid_request_error',
            'invalid_value',
            'max_tokens',
          ),
        );
      return null;
    }
    const tokenizer = engine.tokenizer;
    let ids: number[];
    if ('messages' in p) {
      if (tokenizer === null || tokenizer.chatTemplate === null) {
        reply.code(400).send(errorBody('This model has no chat template; use /v1/completions.', 'invalid_request_error', 'unsupported'));
        return null;
      }
      const text = renderChat(tokenizer.chatTemplate, p.messages, { addGenerationPrompt: true });
      ids = tokenizer.encode(text, { addBos: false });
    } else if (typeof p.prompt === 'string') {
      if (tokenizer === null) {
        reply
          .code(400)
          .send(
            errorBody(
              'This model has no tokenizer: send prompt as an array of token ids.',
              'invalid_request_error',
              'unsupported',
              'prompt',
            ),
          );
        return null;
      }
      ids = tokenizer.encode(p.prompt);
    } else ids = [...p.prompt];
    const vocab = engine.model.config.vocabSize;
    if (ids.some((t) => t >= vocab)) {
      reply
        .code(400)
        .send(errorBody(`Token ids must be below the vocabulary size ${vocab}.`, 'invalid_request_error', 'invalid_value', 'prompt'));
      return null;
    }
    if (ids.length === 0 || ids.length > maxPromptTokens) {
      reply
        .code(400)
        .send(
          errorBody(
            `The prompt has ${ids.length} tokens; this server takes 1 to ${maxPromptTokens}.`,
            'invalid_request_error',
            'context_length_exceeded',
            'prompt',
          ),
        );
      return null;
    }
    // Checked here, before any answer starts (a stream's status is sent with its first byte).
    const compression = p.kv_compression === undefined ? undefined : requestCompression(p.kv_compression);
    let resolved: ResolvedRequestCompression;
    try {
      resolved = engine.resolveCompression(compression);
    } catch (error) {
      if (!(error instanceof KvCompressError)) throw error;
      reply.code(400).send(errorBody(error.message, 'invalid_request_error', error.code, 'kv_compression'));
      return null;
    }
    return { ids, maxTokens, parsed: p, compression, resolved };
  }

  async function serve(kind: 'completion' | 'chat', request: FastifyRequest, reply: FastifyReply) {
    if (closing) return reply.code(503).send(errorBody('The server is shutting down.', 'server_error', 'shutting_down'));
    const prepared = prepare(kind, request.body, reply);
    if (prepared === null) return reply;
    if (active >= maxQueue) {
      requests.inc({ outcome: 'rejected' });
      return reply
        .code(429)
        .send(errorBody(`The server is busy (${maxQueue} requests in flight); retry later.`, 'rate_limit_error', 'queue_full'));
    }
    const { ids, maxTokens, parsed, compression, resolved } = prepared;
    const abort = new AbortController();
    // A client that goes away cancels its sequence: the engine frees its blocks. (The
    // response's 'close' fires on a dropped connection; the request's fires once its body is read.)
    reply.raw.on('close', () => {
      if (!reply.raw.writableEnded) abort.abort();
    });
    const stopStrings = parsed.stop === undefined ? [] : typeof parsed.stop === 'string' ? [parsed.stop] : parsed.stop;
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
    const created = Math.floor(Date.now() / 1000);
    const started = performance.now();
    active++;
    inFlight.set(active);
    let done: DoneEvent | null = null;
    try {
      const events = engine.generate(ids, {
        maxTokens,
        signal: abort.signal,
        stopStrings,
        sampling: { temperature: parsed.temperature ?? 1, topP: parsed.top_p ?? 1, seed: parsed.seed },
        ...(compression === undefined ? {} : { compression }),
      });
      if (parsed.stream === true) {
        reply.hijack();
        reply.raw.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          connection: 'keep-alive',
          [POLICY_HEADER]: resolved.policy,
        });
        const send = (data: unknown) => reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
        if (kind === 'chat') send(chatChunk(id, created, modelId, { role: 'assistant', content: '' }, null));
        for await (const e of events as AsyncGenerator<GenerationEvent>) {
          if (e.type === 'token') {
            tokens.inc();
            if (e.text !== '')
              send(
                kind === 'chat'
                  ? chatChunk(id, created, modelId, { content: e.text }, null)
                  : textChunk(id, created, modelId, e.text, null),
              );
          } else done = e;
        }
        if (done !== null && !abort.signal.aborted) {
          if (done.reason === 'error') send(errorBody(done.error?.message ?? 'generation failed', 'server_error'));
          else {
            const finish = done.reason === 'stop' ? 'stop' : 'length';
            send(kind === 'chat' ? chatChunk(id, created, modelId, {}, finish) : textChunk(id, created, modelId, '', finish));
          }
          reply.raw.write('data: [DONE]\n\n');
        }
        reply.raw.end();
        return reply;
      }
      for await (const e of events as AsyncGenerator<GenerationEvent>) {
        if (e.type === 'token') tokens.inc();
        else done = e;
      }
      if (done === null || done.reason === 'abort') return reply;
      if (done.reason === 'error') {
        return reply.code(500).send(errorBody(`Generation failed: ${done.error?.message ?? 'unknown error'}`, 'server_error'));
      }
      const finish = done.reason === 'stop' ? 'stop' : 'length';
      reply.header(POLICY_HEADER, done.policy);
      const usage = {
        prompt_tokens: done.promptTokens,
        completion_tokens: done.tokens.length,
        total_tokens: done.promptTokens + done.tokens.length,
      };
      const kvc = {
        policy: done.policy,
        compressions: done.compressions,
        kv_blocks: done.blocksPerHead.reduce((a, b) => a + b, 0),
        tokens_per_second: done.tokensPerSecond,
      };
      if (kind === 'chat') {
        return {
          id,
          object: 'chat.completion',
          created,
          model: modelId,
          choices: [{ index: 0, message: { role: 'assistant', content: done.text }, finish_reason: finish, logprobs: null }],
          usage,
          kvcompress: kvc,
        };
      }
      return {
        id,
        object: 'text_completion',
        created,
        model: modelId,
        choices: [{ index: 0, text: done.text, finish_reason: finish, logprobs: null }],
        usage,
        kvcompress: kvc,
      };
    } catch (error) {
      if (error instanceof KvCompressError) {
        return reply.code(400).send(errorBody(error.message, 'invalid_request_error', error.code));
      }
      throw error;
    } finally {
      active--;
      inFlight.set(active);
      latency.observe((performance.now() - started) / 1000);
      requests.inc({ outcome: done === null || abort.signal.aborted ? 'cancelled' : done.reason });
    }
  }

  app.post('/v1/completions', (request, reply) => serve('completion', request, reply));
  app.post('/v1/chat/completions', (request, reply) => serve('chat', request, reply));

  /** Stop accepting, let in-flight requests finish (up to `graceMs`, then cancel), close. */
  app.decorate('shutdown', async (graceMs = 30_000) => {
    closing = true;
    const deadline = Date.now() + graceMs;
    while (active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await app.close();
  });
  return app;
}

function chatChunk(id: string, created: number, model: string, delta: object, finish: string | null) {
  return { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }] };
}

function textChunk(id: string, created: number, model: string, text: string, finish: string | null) {
  return { id, object: 'text_completion', created, model, choices: [{ index: 0, text, finish_reason: finish, logprobs: null }] };
}
