// The HTTP server: fastify 5 routes over an Engine. OpenAI's /v1/models, /v1/chat/completions and /v1/completions
// (JSON or server-sent events), vLLM's /health, /version and /metrics, and the chat page at /.
//
// Streaming is written on the raw response after reply.hijack() rather than through an SSE plugin: the OpenAI
// stream is only `data: <json>\n\n` lines and a final `data: [DONE]`, with no event ids, retries or named
// events for a plugin to add; @fastify/sse is a 0.x release whose engines field (node >= 20.20.2) is narrower than
// ours (node >= 20); and the route needs the raw socket's 'close' anyway, to cancel the request the moment its
// client disconnects. Admission (validation, context length, queue) happens before the hijack, so every refusal
// is still an ordinary fastify reply with a status code and OpenAI's error body.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { ChatMessage, SamplingParams } from '../generate/contracts.js';
import type { Engine, EngineRequest, EngineResult } from '../engine/engine.js';
import type { EngineParts } from '../engine/parts.js';
import { CHAT_PAGE_HTML } from './chat-page.js';
import { ApiError, toApiError } from './errors.js';
import type { ServerMetrics } from './metrics.js';
import {
  chatCompletionRequestSchema, completionRequestSchema,
  type ApiFinishReason, type ChatCompletionChunk, type ChatCompletionRequest, type ChatCompletionResponse,
  type CompletionChunk, type CompletionRequest, type CompletionResponse, type ModelList, type SamplingFields, type Usage,
} from './protocol.js';

export interface ServerOptions {
  engine: Engine;
  /** The tokenizer and chat template the prompts are encoded with (the engine's own parts). */
  parts: Pick<EngineParts, 'tokenizer' | 'encodeChat'>;
  /** Names clients may use for the model (vLLM's --served-model-name); the first is the one reported. */
  modelNames: readonly string[];
  /** Requests to /v1/* need `Authorization: Bearer <apiKey>` when set (vLLM's --api-key). */
  apiKey?: string;
  metrics: ServerMetrics;
  version: string;
  /** Per-request deadline in ms (generation ends with finish_reason "length" when it passes). */
  requestTimeoutMs?: number;
  /** The model's directory, reported as the model card's root. */
  modelRoot?: string;
}

/** vLLM's default max_tokens for /v1/completions (OpenAI's legacy default); chat defaults to the rest of the context. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

export function buildServer(opts: ServerOptions): FastifyInstance {
  const app = Fastify({
    logger: false,
    // Long prompts: 128k tokens of text is well over fastify's default 1 MiB.
    bodyLimit: 16 * 1024 * 1024,
    // Idle keep-alive sockets are closed at shutdown; streams in flight are drained by the engine.
    forceCloseConnections: 'idle',
    // During shutdown the engine refuses with OpenAI's shape itself (EngineShutdownError -> 503).
    return503OnClosing: false,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
  });
  const { engine } = opts;
  const created = Math.floor(Date.now() / 1000);
  const modelName = opts.modelNames[0];
  const apiKeyHash = opts.apiKey === undefined ? undefined : sha256(opts.apiKey);

  app.setErrorHandler((err, req, reply) => {
    const e = toApiError(err, req.url.startsWith('/v1/completions') ? 'prompt' : 'messages');
    void reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `Not found: ${req.method} ${req.url.split('?')[0]}`, { code: 'not_found' });
    void reply.code(404).send(e.body());
  });

  // vLLM checks the key on /v1 only: health checks, metrics scrapes and the page stay open.
  app.addHook('onRequest', async (req) => {
    if (apiKeyHash === undefined || !req.url.startsWith('/v1')) return;
    const h = req.headers.authorization;
    if (!h) throw new ApiError(401, 'Missing API key: send the header "Authorization: Bearer <key>" (the server was started with --api-key).', { code: 'missing_api_key' });
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || !timingSafeEqual(sha256(m[1].trim()), apiKeyHash)) {
      throw new ApiError(401, 'Incorrect API key provided.', { code: 'invalid_api_key' });
    }
  });

  app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(CHAT_PAGE_HTML));

  app.get('/health', async (_req, reply) => {
    if (engine.isShuttingDown) {
      return reply.code(503).send(new ApiError(503, 'shutting down', { code: 'shutting_down' }).body());
    }
    return reply.code(200).send('');
  });

  app.get('/version', async () => ({ version: opts.version }));

  app.get('/metrics', async (_req, reply) => {
    const text = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(text);
  });

  app.get('/v1/models', async (): Promise<ModelList> => ({
    object: 'list',
    data: opts.modelNames.map((id) => ({
      id, object: 'model', created, owned_by: 'megamoe', root: opts.modelRoot ?? id, max_model_len: engine.options.maxModelLen,
    })),
  }));

  const checkModel = (name: string): void => {
    if (!opts.modelNames.includes(name)) {
      throw new ApiError(404, `The model \`${name}\` does not exist. Models served here: ${opts.modelNames.join(', ')}.`, {
        param: 'model', code: 'model_not_found',
      });
    }
  };

  app.post('/v1/chat/completions', { schema: { body: chatCompletionRequestSchema } }, async (request, reply) => {
    const body = request.body as ChatCompletionRequest;
    checkModel(body.model);
    refuseUnsupported(body);
    if (body.logprobs) throw unsupported('logprobs');
    const messages: ChatMessage[] = body.messages.map((m) => ({
      // OpenAI's "developer" role is the newer name of "system".
      role: m.role === 'developer' ? 'system' : m.role,
      content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
    }));
    const promptIds = opts.parts.encodeChat(messages);
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined;
    const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
    const now = Math.floor(Date.now() / 1000);
    const engineReq = toEngineRequest(body, promptIds, maxTokens, opts.requestTimeoutMs);

    if (!body.stream) {
      const result = await runToEnd(engine, engineReq, reply);
      if (!result) return reply; // the client went away
      const response: ChatCompletionResponse = {
        id, object: 'chat.completion', created: now, model: body.model,
        choices: [{ index: 0, message: { role: 'assistant', content: result.text }, finish_reason: apiFinish(result), logprobs: null }],
        usage: usageOf(result),
      };
      return reply.send(response);
    }

    const includeUsage = body.stream_options?.include_usage === true;
    const chunk = (delta: ChatCompletionChunk['choices'][number]['delta'], finish: ApiFinishReason | null): ChatCompletionChunk => ({
      id, object: 'chat.completion.chunk', created: now, model: body.model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
      ...(includeUsage ? { usage: null } : {}),
    });
    await streamSse(engine, engineReq, reply, {
      first: () => chunk({ role: 'assistant', content: '' }, null),
      text: (t) => chunk({ content: t }, null),
      last: (r) => chunk({}, apiFinish(r)),
      usage: includeUsage ? (r) => ({ id, object: 'chat.completion.chunk', created: now, model: body.model, choices: [], usage: usageOf(r) }) : undefined,
    });
    return reply;
  });

  app.post('/v1/completions', { schema: { body: completionRequestSchema } }, async (request, reply) => {
    const body = request.body as CompletionRequest;
    checkModel(body.model);
    refuseUnsupported(body);
    if (body.echo) throw unsupported('echo');
    if (body.logprobs) throw unsupported('logprobs');
    if (body.best_of !== undefined && body.best_of !== null && body.best_of > 1) throw unsupported('best_of');
    if (body.suffix) throw unsupported('suffix');
    let promptIds: number[];
    const p = body.prompt;
    if (typeof p === 'string') {
      // As vLLM (add_special_tokens defaults to true for completions): a text prompt starts with BOS.
      promptIds = [opts.parts.tokenizer.bosId, ...opts.parts.tokenizer.encode(p)];
    } else if (p.length > 0 && typeof p[0] === 'number') {
      promptIds = (p as number[]).slice();
    } else if (p.length === 1) {
      promptIds = [opts.parts.tokenizer.bosId, ...opts.parts.tokenizer.encode((p as string[])[0])];
    } else {
      throw new ApiError(400, `${p.length} prompts in one request are not supported: send one request per prompt (they are batched together on the server)`, { param: 'prompt', code: 'unsupported_value' });
    }
    const maxTokens = body.max_tokens ?? COMPLETIONS_DEFAULT_MAX_TOKENS;
    const id = `cmpl-${randomUUID().replace(/-/g, '')}`;
    const now = Math.floor(Date.now() / 1000);
    const engineReq = toEngineRequest(body, promptIds, maxTokens, opts.requestTimeoutMs);

    if (!body.stream) {
      const result = await runToEnd(engine, engineReq, reply);
      if (!result) return reply;
      const response: CompletionResponse = {
        id, object: 'text_completion', created: now, model: body.model,
        choices: [{ index: 0, text: result.text, finish_reason: apiFinish(result), logprobs: null }],
        usage: usageOf(result),
      };
      return reply.send(response);
    }

    const includeUsage = body.stream_options?.include_usage === true;
    const chunk = (text: string, finish: ApiFinishReason | null): CompletionChunk => ({
      id, object: 'text_completion', created: now, model: body.model,
      choices: [{ index: 0, text, finish_reason: finish, logprobs: null }],
      ...(includeUsage ? { usage: null } : {}),
    });
    await streamSse(engine, engineReq, reply, {
      first: undefined,
      text: (t) => chunk(t, null),
      last: (r) => chunk('', apiFinish(r)),
      usage: includeUsage ? (r) => ({ id, object: 'text_completion', created: now, model: body.model, choices: [], usage: usageOf(r) }) : undefined,
    });
    return reply;
  });

  return app;
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function unsupported(param: string): ApiError {
  return new ApiError(400, `'${param}' is not supported by this server`, { param, code: 'unsupported_parameter' });
}

function refuseUnsupported(body: SamplingFields): void {
  if (body.stream_options && !body.stream) {
    throw new ApiError(400, 'stream_options can only be given when stream is true', { param: 'stream_options', code: 'invalid_value' });
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    throw new ApiError(400, `n = ${body.n} is not supported: only one choice per request (n = 1)`, { param: 'n', code: 'unsupported_value' });
  }
}

function toEngineRequest(body: SamplingFields, promptIds: number[], maxTokens: number | undefined, timeoutMs: number | undefined): EngineRequest {
  const sampling: SamplingParams = {
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    // vLLM spells "off" as -1; the sampler contract as 0.
    topK: body.top_k === undefined || body.top_k === null || body.top_k < 0 ? 0 : body.top_k,
    ...(body.seed === undefined || body.seed === null ? {} : { seed: body.seed }),
  };
  const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
  return {
    promptIds, sampling, maxTokens,
    // An empty stop string would end every request at once; OpenAI ignores it too.
    stopStrings: stop.filter((s) => s.length > 0),
    ignoreEos: body.ignore_eos === true,
    timeoutMs,
  };
}

function apiFinish(r: EngineResult): ApiFinishReason {
  // A deadline is a limit like max_tokens (llama.cpp reports its time limit the same way).
  return r.finishReason === 'stop' ? 'stop' : 'length';
}

function usageOf(r: EngineResult): Usage {
  return { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens };
}

/** Cancels `ac` when the client's connection closes before the response is complete. */
function cancelOnDisconnect(res: ServerResponse, ac: AbortController): () => void {
  const onClose = () => { if (!res.writableFinished) ac.abort(); };
  res.on('close', onClose);
  return () => res.off('close', onClose);
}

/** A non-streamed request: the result, or undefined when the client disconnected (nothing is sent then). */
async function runToEnd(engine: Engine, req: EngineRequest, reply: FastifyReply): Promise<EngineResult | undefined> {
  const ac = new AbortController();
  const done = engine.submit({ ...req, signal: ac.signal }); // throws the refusals synchronously, before any reply
  const off = cancelOnDisconnect(reply.raw, ac);
  try {
    const result = await done;
    if (ac.signal.aborted) {
      // Nobody to answer: end the exchange here, or fastify keeps it open as a pending reply and close() waits on it.
      reply.hijack();
      reply.raw.destroy();
      return undefined;
    }
    // Cancelled without the client leaving: the server is shutting down past its grace period.
    if (result.finishReason === 'cancelled') throw new ApiError(503, 'the server shut down before this request finished', { code: 'shutting_down' });
    return result;
  } finally {
    off();
  }
}

interface SseShape {
  first: (() => unknown) | undefined;
  text: (t: string) => unknown;
  last: (r: EngineResult) => unknown;
  usage: ((r: EngineResult) => unknown) | undefined;
}

/** A streamed request: admission first (refusals stay normal replies), then server-sent events on the raw socket. */
async function streamSse(engine: Engine, req: EngineRequest, reply: FastifyReply, shape: SseShape): Promise<void> {
  const res = reply.raw;
  const ac = new AbortController();
  const write = (obj: unknown) => { if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(obj)}\n\n`); };
  const done = engine.submit({
    ...req,
    signal: ac.signal,
    onChunk: (c) => { if (c.text) write(shape.text(c.text)); },
  });
  reply.hijack();
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  if (shape.first) write(shape.first());
  const off = cancelOnDisconnect(res, ac);
  try {
    const result = await done;
    if (ac.signal.aborted) return;
    if (result.finishReason === 'cancelled') {
      write(new ApiError(503, 'the server shut down before this request finished', { code: 'shutting_down' }).body());
    } else {
      write(shape.last(result));
      if (shape.usage) write(shape.usage(result));
    }
  } catch (err) {
    // Headers are gone: an error mid-stream is an error event, as vLLM sends it.
    write(toApiError(err).body());
  } finally {
    off();
    if (!res.writableEnded && !res.destroyed) res.end('data: [DONE]\n\n');
  }
}
