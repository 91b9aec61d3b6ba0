// `megamoe generate`: text in, text out. Loads a model folder (the embedded default tiny model when --model is
// absent) and its tokenizer, encodes the prompt (plain: BOS + text; --chat / --thinking: the DeepSeek-V4 chat
// encoding) and streams the completion to stdout as it is sampled. Statistics go to stderr, so stdout is only
// the generated text. Ctrl-C stops generation and keeps what was made.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, type Command } from 'commander';
import { deviceArg, intArg } from '../args.js';
import { ensureDefaultModel } from '../../model/checkpoint-writer.js';
import { resolveModelDir } from '../args.js';
import type { CausalLM } from '../../model/causal-lm.js';
import type { ChatMessage, SamplingParams, StopParams } from '../../generate/contracts.js';
import { generate } from '../../generate/generate.js';
import { encodeChat, loadTokenizer, TOKENIZER_FILES, type DeepSeekTokenizer } from '../../tokenizer/index.js';

export interface GenerateOptions {
  model?: string;
  prompt: string;
  system?: string;
  chat: boolean;
  thinking: boolean;
  maxTokens: number;
  temperature?: number;
  topK: number;
  topP?: number;
  seed?: number;
  stop: string[];
  backend?: string;
  device: 'cpu' | 'gpu';
  ignoreEos: boolean;
  stats: boolean;
}

/**
 * The function the model layer provides: a model folder -> a CausalLM on the chosen MoE backend, on the CPU (the
 * default) or with `device: 'gpu'` the whole forward on the GPU (src/gpu-model/model.ts).
 */
export type LoadModel = (dir: string, opts: { backend?: string; device?: 'cpu' | 'gpu' }) => Promise<CausalLM>;

// The one place generate reaches the model layer (src/model/index.ts, written alongside this command). Imported
// by a computed specifier so this checkout type-checks and runs without it, failing with a clear message instead.
// MEGAMOE_MODEL_ENTRY (a file: URL of a module exporting loadModel) replaces it: the CLI tests drive the whole
// command with a scripted model that way.
const MODEL_ENTRY: string = process.env.MEGAMOE_MODEL_ENTRY || '../../model/index.js';

export async function importLoadModel(entry: string = MODEL_ENTRY): Promise<LoadModel> {
  let mod: { loadModel?: unknown };
  try {
    mod = (await import(entry)) as { loadModel?: unknown };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // Only the entry itself missing means "not built"; a missing import inside the model layer is its own error.
    const file = fileURLToPath(new URL(entry, import.meta.url));
    if (e.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(`Cannot find module '${file}'`)) {
      throw new Error('the DeepSeek-V4 model is not built in this checkout (src/model/index.ts with loadModel(dir, { backend })); generate needs it');
    }
    throw err;
  }
  if (typeof mod.loadModel !== 'function') throw new Error('src/model/index.ts does not export loadModel(dir, { backend }): the model layer and generate disagree');
  return mod.loadModel as LoadModel;
}

/** A number option in [min, max] (or (min, max]); "1.5x" and "" are refused rather than read as a prefix. */
export function numberArg(name: string, min: number, max: number, opts: { minExclusive?: boolean } = {}) {
  return (text: string): number => {
    const v = Number(text);
    const low = opts.minExclusive ? v <= min : v < min;
    if (text.trim() === '' || !Number.isFinite(v) || low || v > max) {
      throw new InvalidArgumentError(`${name} must be a number in ${opts.minExclusive ? '(' : '['}${min}, ${max}], got "${text}"`);
    }
    return v;
  };
}

/** Sampling defaults: the model folder's generation_config.json (temperature, top_p), as HF does, else V4's 1.0 / 1.0. */
export function samplingFor(opts: Pick<GenerateOptions, 'temperature' | 'topK' | 'topP' | 'seed'>, modelDir: string): SamplingParams {
  let gen: { temperature?: unknown; top_p?: unknown; do_sample?: unknown } = {};
  try {
    gen = JSON.parse(fs.readFileSync(path.join(modelDir, TOKENIZER_FILES.generation), 'utf8')) as typeof gen;
  } catch { /* absent or unreadable: DeepSeek's defaults */ }
  const greedyByConfig = gen.do_sample === false;
  const temperature = opts.temperature ?? (greedyByConfig ? 0 : typeof gen.temperature === 'number' ? gen.temperature : 1);
  const topP = opts.topP ?? (typeof gen.top_p === 'number' ? gen.top_p : 1);
  // A seed is always chosen here, so the statistics line can say how to repeat a sampled run.
  const seed = opts.seed ?? randomBytes(4).readUInt32LE(0);
  return { temperature, topK: opts.topK, topP, seed };
}

/** The prompt ids: BOS + text, or the V4 chat encoding of [system], user. */
export function promptIds(opts: Pick<GenerateOptions, 'prompt' | 'system' | 'chat' | 'thinking'>, tokenizer: DeepSeekTokenizer): number[] {
  if (!opts.chat && !opts.thinking) {
    if (opts.system !== undefined) throw new Error('--system needs --chat or --thinking');
    return [tokenizer.bosId, ...tokenizer.encode(opts.prompt)];
  }
  const messages: ChatMessage[] = [];
  if (opts.system !== undefined) messages.push({ role: 'system', content: opts.system });
  messages.push({ role: 'user', content: opts.prompt });
  return encodeChat(messages, tokenizer, { thinking: opts.thinking });
}

async function run(opts: GenerateOptions): Promise<void> {
  const loadModel = await importLoadModel();
  const dir = opts.model ? resolveModelDir(opts.model) : ensureDefaultModel();
  const tokenizer = await loadTokenizer(dir);
  const t0 = performance.now();
  const model = await loadModel(dir, { backend: opts.backend, device: opts.device });
  const tLoad = performance.now() - t0;
  if (tokenizer.vocabSize > model.vocabSize) {
    throw new Error(`the tokenizer has ${tokenizer.vocabSize} ids but the model's embedding only ${model.vocabSize}: not this model's tokenizer`);
  }
  const ids = promptIds(opts, tokenizer);
  const sampling = samplingFor(opts, dir);
  const stop: StopParams = { maxTokens: opts.maxTokens, stopStrings: opts.stop, stopIds: opts.ignoreEos ? [] : [tokenizer.eosId] };

  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once('SIGINT', onSigint);
  let tFirst: number | undefined;
  const tStart = performance.now();
  try {
    const r = await generate({
      model, tokenizer, promptIds: ids, sampling, stop, signal: abort.signal,
      onChunk: (c) => { tFirst ??= performance.now(); if (c.text) process.stdout.write(c.text); },
    });
    const tEnd = performance.now();
    process.stdout.write('\n');
    if (opts.stats) {
      const decodeTokens = Math.max(0, r.completionTokens - 1);
      const decodeS = tFirst === undefined ? 0 : (tEnd - tFirst) / 1000;
      const rate = decodeTokens > 0 && decodeS > 0 ? `, ${(decodeTokens / decodeS).toFixed(1)} tok/s decode` : '';
      const seed = sampling.temperature === 0 || sampling.topK === 1 ? 'greedy' : `seed ${sampling.seed}`;
      console.error(`[${r.finishReason}] prompt ${r.promptTokens} tokens, completion ${r.completionTokens} tokens; load ${(tLoad / 1000).toFixed(2)} s, ` +
        `first token ${tFirst === undefined ? '-' : `${(tFirst - tStart).toFixed(0)} ms`}${rate}; ${seed}`);
    }
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('generate text with a DeepSeek-V4 model, streaming to stdout (default: the embedded tiny model)')
    .requiredOption('--prompt <text>', 'the prompt (plain text; with --chat, the user message)')
    .option('--model <dir>', 'model folder with config.json, weights and tokenizer.json (default: the embedded tiny model)')
    .option('--chat', 'encode the prompt as a DeepSeek-V4 chat turn (chat mode: the answer opens with </think>)', false)
    .option('--thinking', 'DeepSeek-V4 chat in thinking mode (the answer opens with <think>); implies --chat', false)
    .option('--system <text>', 'system prompt (with --chat or --thinking)')
    .option('--max-tokens <n>', 'most tokens to generate', intArg('--max-tokens', 0), 128)
    .option('--temperature <t>', '0 = greedy (default: generation_config.json, else 1.0)', numberArg('--temperature', 0, 100))
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', intArg('--top-k', 0), 0)
    .option('--top-p <p>', 'nucleus sampling mass in (0, 1] (default: generation_config.json, else 1.0 = off)', numberArg('--top-p', 0, 1, { minExclusive: true }))
    .option('--seed <s>', 'sampling seed (same seed, same text; default random)', intArg('--seed', 0, 0xffffffff))
    .option('--stop <strings...>', 'stop when the text contains any of these (not printed)', [] as string[])
    .option('--backend <name>', 'MoE backend for the model (default: the model layer\'s choice)')
    .option('--device <cpu|gpu>', 'where the forward runs: cpu (the exact reference) or gpu (the whole step on one Hopper GPU)', deviceArg, 'cpu')
    .option('--ignore-eos', 'keep going past the end-of-sentence token', false)
    .option('--no-stats', 'no statistics line on stderr')
    .action(async (opts: GenerateOptions) => run(opts));
}
