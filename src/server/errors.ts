// Every refusal as OpenAI's error shape ({ error: { message, type, param, code } }) with the status code OpenAI
// (and so the official clients' error classes) expect: 400 BadRequestError, 401 AuthenticationError,
// 404 NotFoundError, 429 RateLimitError, 500 InternalServerError, 503 for a server that is going away.
import {
  ContextLengthError, EngineShutdownError, EngineStepError, InvalidRequestError, QueueFullError, QueueTimeoutError,
} from '../engine/errors.js';
import type { ErrorResponse } from './protocol.js';

export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  /** Extra response headers (Retry-After for 429/503). */
  readonly headers: Readonly<Record<string, string>>;
  constructor(status: number, message: string, opts: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.type = opts.type ?? (status === 401 ? 'authentication_error' : status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  body(): ErrorResponse {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** fastify's own errors (bad JSON, body too large, wrong content type) carry a statusCode and an FST_ code. */
interface FastifyLikeError {
  statusCode?: number;
  code?: string;
  message: string;
  validation?: Array<{ instancePath?: string; message?: string; keyword?: string; params?: Record<string, unknown> }>;
  validationContext?: string;
}

/** Any error thrown in a route or by fastify, as the ApiError to send. `promptParam`: where the prompt was ('messages' or 'prompt'). */
export function toApiError(err: unknown, promptParam: 'messages' | 'prompt' = 'messages'): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof QueueFullError) {
    return new ApiError(429, err.message, {
      type: 'rate_limit_error', code: 'queue_full', headers: { 'retry-after': String(err.retryAfterSeconds) },
    });
  }
  if (err instanceof EngineShutdownError) return new ApiError(503, err.message, { code: 'shutting_down', headers: { connection: 'close' } });
  if (err instanceof QueueTimeoutError) return new ApiError(503, err.message, { code: 'queue_timeout', headers: { 'retry-after': '1' } });
  if (err instanceof ContextLengthError) return new ApiError(400, err.message, { param: promptParam, code: 'context_length_exceeded' });
  if (err instanceof InvalidRequestError) return new ApiError(400, err.message, { param: err.param ?? null, code: 'invalid_value' });
  if (err instanceof EngineStepError) return new ApiError(500, err.message, { code: 'engine_error' });
  const f = err as FastifyLikeError;
  if (f && typeof f === 'object' && Array.isArray(f.validation)) {
    // ajv's first complaint, with the field as OpenAI names it (param: "temperature", "messages.0.role").
    const v = f.validation[0] ?? {};
    const missing = v.keyword === 'required' ? String(v.params?.missingProperty ?? '') : '';
    const where = [...(v.instancePath ?? '').split('/').filter(Boolean), ...(missing ? [missing] : [])].join('.');
    const message = missing
      ? `'${where}' is a required property`
      : `${where ? `'${where}' ` : ''}${v.message ?? 'is invalid'}`;
    return new ApiError(400, `Invalid request: ${message}`, { param: where || null, code: 'invalid_type' });
  }
  if (f && typeof f === 'object' && typeof f.statusCode === 'number' && f.statusCode >= 400 && f.statusCode < 500) {
    const code = f.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || f.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || f instanceof SyntaxError
      ? 'invalid_json' : (f.code ?? null);
    const message = code === 'invalid_json' ? `We could not parse the JSON body of your request: ${f.message}` : f.message;
    return new ApiError(f.statusCode, message, { code });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ApiError(500, `internal error: ${message}`, { code: 'internal_error' });
}
