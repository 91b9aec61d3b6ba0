// The OpenAI API as this server speaks it: request, response and streaming-chunk types, and the JSON schemas
// fastify validates requests with (ajv, no type coercion: a string where a number belongs is a 400, as with
// OpenAI). Kept apart from the routes, as vLLM's protocol.py and web-llm's openai_api_protocols are, so the
// benchmark client and the tests can share the types. Fields OpenAI defines and this server does not implement
// are refused by name in routes.ts (refuseUnsupported) rather than silently ignored; unknown fields are ignored,
// as vLLM does.

// ---------- errors ----------

/** OpenAI's error body: every refusal of every endpoint has this shape. */
export interface ErrorResponse {
  error: {
    message: string;
    type: string;
    param: string | null;
    code: string | null;
  };
}

// ---------- shared ----------

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export type ApiFinishReason = 'stop' | 'length';

export interface StreamOptions {
  include_usage?: boolean;
}

/** Sampling and stopping fields common to both endpoints. */
export interface SamplingFields {
  model: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  /** vLLM's extension; -1 or 0 = off. */
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: StreamOptions | null;
  n?: number | null;
  /** vLLM's extension: keep generating past EOS. */
  ignore_eos?: boolean | null;
  user?: string;
}

// ---------- chat ----------

export interface ChatContentPart {
  type: 'text';
  text: string;
}

export interface ChatMessageParam {
  role: 'system' | 'developer' | 'user' | 'assistant';
  content: string | ChatContentPart[];
  name?: string;
}

export interface ChatCompletionRequest extends SamplingFields {
  messages: ChatMessageParam[];
  /** OpenAI's newer name for max_tokens; wins when both are given. */
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
}

export interface ChatCompletionResponse {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: 'assistant'; content: string };
    finish_reason: ApiFinishReason;
    logprobs: null;
  }>;
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: 'assistant'; content?: string };
    finish_reason: ApiFinishReason | null;
    logprobs: null;
  }>;
  usage?: Usage | null;
}

// ---------- completions ----------

export interface CompletionRequest extends SamplingFields {
  /** Text, one text in an array, or token ids (vLLM accepts ids too). */
  prompt: string | string[] | number[];
  echo?: boolean | null;
  logprobs?: number | null;
  best_of?: number | null;
  suffix?: string | null;
}

export interface CompletionResponse {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: ApiFinishReason; logprobs: null }>;
  usage: Usage;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: ApiFinishReason | null; logprobs: null }>;
  usage?: Usage | null;
}

// ---------- models ----------

export interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  root: string;
  max_model_len: number;
}

export interface ModelList {
  object: 'list';
  data: ModelCard[];
}

// ---------- JSON schemas (ajv draft-07, as fastify 5 uses) ----------

const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: 'null' }] });

/** The OpenAI ranges: temperature [0, 2], top_p (0, 1]; stop at most 4 strings, as OpenAI allows. */
const samplingProperties = {
  model: { type: 'string', minLength: 1 },
  max_tokens: nullable({ type: 'integer', minimum: 1 }),
  temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
  top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
  top_k: nullable({ type: 'integer', minimum: -1 }),
  seed: nullable({ type: 'integer' }),
  stop: nullable({
    anyOf: [
      { type: 'string' },
      { type: 'array', items: { type: 'string' }, maxItems: 4 },
    ],
  }),
  stream: nullable({ type: 'boolean' }),
  stream_options: nullable({
    type: 'object',
    properties: { include_usage: { type: 'boolean' } },
  }),
  n: nullable({ type: 'integer', minimum: 1 }),
  ignore_eos: nullable({ type: 'boolean' }),
  user: { type: 'string' },
} as const;

export const chatCompletionRequestSchema = {
  type: 'object',
  required: ['model', 'messages'],
  properties: {
    ...samplingProperties,
    max_completion_tokens: nullable({ type: 'integer', minimum: 1 }),
    logprobs: nullable({ type: 'boolean' }),
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant'] },
          content: {
            anyOf: [
              { type: 'string' },
              {
                type: 'array',
                items: {
                  type: 'object',
                  required: ['type', 'text'],
                  properties: { type: { type: 'string', enum: ['text'] }, text: { type: 'string' } },
                },
              },
            ],
          },
          name: { type: 'string' },
        },
      },
    },
  },
} as const;

export const completionRequestSchema = {
  type: 'object',
  required: ['model', 'prompt'],
  properties: {
    ...samplingProperties,
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', items: { type: 'string' }, minItems: 1 },
        { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 },
      ],
    },
    echo: nullable({ type: 'boolean' }),
    logprobs: nullable({ type: 'integer', minimum: 0 }),
    best_of: nullable({ type: 'integer', minimum: 1 }),
    suffix: nullable({ type: 'string' }),
  },
} as const;
