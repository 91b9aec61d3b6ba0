// The engine's refusals, as named classes: the HTTP layer maps each to a status code and OpenAI's error shape
// (src/server/errors.ts), the CLI and benchmarks can match on them without string tests.

/** The waiting queue is at --max-queue: try again later (HTTP 429 with Retry-After). */
export class QueueFullError extends Error {
  readonly retryAfterSeconds: number;
  constructor(maxQueue: number, retryAfterSeconds: number) {
    super(`the server is busy: ${maxQueue} requests are already waiting (--max-queue ${maxQueue}); retry in ${retryAfterSeconds} s`);
    this.name = 'QueueFullError';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** The engine is draining for shutdown and takes no new request (HTTP 503). */
export class EngineShutdownError extends Error {
  constructor() {
    super('the server is shutting down and accepts no new requests');
    this.name = 'EngineShutdownError';
  }
}

/** prompt + max_tokens does not fit the context (HTTP 400, vLLM's wording). */
export class ContextLengthError extends Error {
  constructor(maxModelLen: number, promptTokens: number, maxTokens: number | undefined) {
    super(maxTokens === undefined
      ? `This model's maximum context length is ${maxModelLen} tokens. However, your prompt has ${promptTokens} tokens, `
        + 'which leaves no room for a completion. Please reduce the length of the prompt.'
      : `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens `
        + `(${promptTokens} in the prompt, ${maxTokens} in the completion). Please reduce the length of the prompt or completion.`);
    this.name = 'ContextLengthError';
  }
}

/** A request's parameters the engine cannot honour (HTTP 400). */
export class InvalidRequestError extends Error {
  readonly param: string | undefined;
  constructor(message: string, param?: string) {
    super(message);
    this.name = 'InvalidRequestError';
    this.param = param;
  }
}

/** The request's deadline passed while it was still waiting for a slot (HTTP 503): nothing was generated. */
export class QueueTimeoutError extends Error {
  constructor(waitedMs: number) {
    super(`the request waited ${Math.round(waitedMs)} ms for a free sequence slot and reached its deadline before it started`);
    this.name = 'QueueTimeoutError';
  }
}

/** The model (or a generation part) threw during a step; every request in that step ends with it (HTTP 500). */
export class EngineStepError extends Error {
  constructor(cause: unknown) {
    super(`the model step failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'EngineStepError';
  }
}
