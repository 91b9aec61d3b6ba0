// `megamoe bench serve`: a load generator for a running `megamoe serve` (or any OpenAI-compatible server) on
// loopback, reporting what vLLM's benchmark_serving reports: request and token throughput, and TTFT, TPOT, ITL
// and end-to-end latency as mean / median / p90 / p99. Writes serve.json and serve.md into --out.
//
// How (and why):
//  * Streamed requests (stream_options.include_usage, so token counts are the server's, not guessed), read as
//    server-sent events with fetch: TTFT = first content chunk, ITL = the gaps between content chunks,
//    TPOT = (e2e - TTFT) / (output tokens - 1) per request, as vLLM defines them.
//  * Arrivals: --request-rate inf sends all at once; a finite rate draws exponential gaps (a Poisson process),
//    as vLLM does; --concurrency caps the requests in flight either way.
//  * Prompts: random words (the client has no tokenizer; the server's usage gives the real token counts);
//    lengths uniform in [len * (1 - r), len * (1 + r)] with --range-ratio r; ignore_eos so each request makes
//    exactly its output length. Everything is seeded.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { intArg } from '../cli/args.js';
import { Rng } from '../util/rng.js';
import { resolveCommit } from './staging-routing.js';

export interface ServeBenchOptions {
  url: string;
  model?: string;
  endpoint: 'completions' | 'chat';
  numPrompts: number;
  concurrency: number;
  /** Requests per second; Infinity = all at once. */
  requestRate: number;
  inputLen: number;
  outputLen: number;
  rangeRatio: number;
  seed: number;
  apiKey?: string;
}

export interface RequestRecord {
  ok: boolean;
  status: number;
  error?: string;
  promptTokens: number;
  outputTokens: number;
  ttftMs: number;
  e2eMs: number;
  itlMs: number[];
}

export interface Percentiles { mean: number; median: number; p90: number; p99: number; }

export interface ServeBenchReport {
  meta: { date: string; commit: string; url: string; model: string; endpoint: string; numPrompts: number; concurrency: number;
    requestRate: number | 'inf'; inputLen: number; outputLen: number; rangeRatio: number; seed: number; command: string };
  durationS: number;
  completed: number;
  failed: number;
  /** Failures by reason ("429", "500: ...", "network: ..."). */
  failures: Record<string, number>;
  totalInputTokens: number;
  totalOutputTokens: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  ttftMs: Percentiles;
  tpotMs: Percentiles;
  itlMs: Percentiles;
  e2eMs: Percentiles;
}

const WORDS = ('the of and to in is was that for on with as by at from his her they be this which or an are but not were had '
  + 'have one all been there their more when some would what into time only other new year about first many these may '
  + 'after could where most over such through years made between both under city long world state part during people').split(' ');

export function percentiles(values: readonly number[]): Percentiles {
  if (values.length === 0) return { mean: NaN, median: NaN, p90: NaN, p99: NaN };
  const v = [...values].sort((a, b) => a - b);
  // Linear interpolation between order statistics (numpy's default, which vLLM's benchmark uses).
  const q = (p: number) => {
    const x = (v.length - 1) * p;
    const lo = Math.floor(x);
    const hi = Math.min(lo + 1, v.length - 1);
    return v[lo] + (v[hi] - v[lo]) * (x - lo);
  };
  return { mean: v.reduce((a, b) => a + b, 0) / v.length, median: q(0.5), p90: q(0.9), p99: q(0.99) };
}

function lengthIn(rng: Rng, len: number, ratio: number): number {
  const lo = Math.max(1, Math.round(len * (1 - ratio)));
  const hi = Math.max(lo, Math.round(len * (1 + ratio)));
  return lo + rng.int(hi - lo + 1);
}

/** One streamed request, timed. */
async function timedRequest(o: ServeBenchOptions, model: string, prompt: string, maxTokens: number): Promise<RequestRecord> {
  const started = performance.now();
  const rec: RequestRecord = { ok: false, status: 0, promptTokens: 0, outputTokens: 0, ttftMs: NaN, e2eMs: NaN, itlMs: [] };
  const common = { model, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } };
  const body = o.endpoint === 'chat' ? { ...common, messages: [{ role: 'user', content: prompt }] } : { ...common, prompt };
  try {
    const res = await fetch(`${o.url}/v1/${o.endpoint === 'chat' ? 'chat/completions' : 'completions'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {}) },
      body: JSON.stringify(body),
    });
    rec.status = res.status;
    if (!res.ok || !res.body) {
      const text = await res.text();
      rec.error = res.status === 429 ? '429' : `${res.status}: ${text.slice(0, 120)}`;
      return rec;
    }
    let last = started;
    let buf = '';
    const decoder = new TextDecoder();
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(part, { stream: true });
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') continue;
        const j = JSON.parse(data) as { error?: { message: string }; usage?: { prompt_tokens: number; completion_tokens: number } | null;
          choices: Array<{ text?: string; delta?: { content?: string } }> };
        if (j.error) { rec.error = `stream error: ${j.error.message}`; continue; }
        if (j.usage) { rec.promptTokens = j.usage.prompt_tokens; rec.outputTokens = j.usage.completion_tokens; }
        const piece = j.choices[0]?.text ?? j.choices[0]?.delta?.content ?? '';
        if (piece) {
          const now = performance.now();
          if (Number.isNaN(rec.ttftMs)) rec.ttftMs = now - started;
          else rec.itlMs.push(now - last);
          last = now;
        }
      }
    }
    rec.e2eMs = performance.now() - started;
    rec.ok = rec.error === undefined && !Number.isNaN(rec.ttftMs);
    if (!rec.ok && !rec.error) rec.error = 'no content streamed';
  } catch (err) {
    rec.error = `network: ${(err as Error).message}`;
  }
  return rec;
}

export async function runServeBench(o: ServeBenchOptions, command = ''): Promise<{ report: ServeBenchReport; records: RequestRecord[] }> {
  let model = o.model;
  if (!model) {
    const r = await fetch(`${o.url}/v1/models`, { headers: o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {} });
    if (!r.ok) throw new Error(`GET ${o.url}/v1/models answered ${r.status}: ${await r.text()}`);
    model = ((await r.json()) as { data: Array<{ id: string }> }).data[0]?.id;
    if (!model) throw new Error(`${o.url}/v1/models lists no model: pass --model`);
  }
  const rng = new Rng(o.seed);
  const jobs = Array.from({ length: o.numPrompts }, () => {
    const words = lengthIn(rng, o.inputLen, o.rangeRatio);
    const prompt = Array.from({ length: words }, () => WORDS[rng.int(WORDS.length)]).join(' ');
    const gap = Number.isFinite(o.requestRate) ? -Math.log(1 - rng.uniform()) / o.requestRate : 0;
    return { prompt, maxTokens: lengthIn(rng, o.outputLen, o.rangeRatio), gapS: gap };
  });

  const records: RequestRecord[] = new Array(o.numPrompts);
  let inFlight = 0;
  const slotFreed: Array<() => void> = [];
  const started = performance.now();
  const all: Promise<void>[] = [];
  for (let i = 0; i < jobs.length; i++) {
    if (jobs[i].gapS > 0) await new Promise((r) => setTimeout(r, jobs[i].gapS * 1000));
    while (inFlight >= o.concurrency) await new Promise<void>((r) => slotFreed.push(r));
    inFlight++;
    all.push(timedRequest(o, model, jobs[i].prompt, jobs[i].maxTokens).then((rec) => {
      records[i] = rec;
      inFlight--;
      slotFreed.shift()?.();
    }));
  }
  await Promise.all(all);
  const durationS = (performance.now() - started) / 1000;

  const ok = records.filter((r) => r.ok);
  const failures: Record<string, number> = {};
  for (const r of records) if (!r.ok) failures[r.error ?? 'unknown'] = (failures[r.error ?? 'unknown'] ?? 0) + 1;
  const totalIn = ok.reduce((a, r) => a + r.promptTokens, 0);
  const totalOut = ok.reduce((a, r) => a + r.outputTokens, 0);
  const report: ServeBenchReport = {
    meta: {
      date: new Date().toISOString(), commit: resolveCommit(), url: o.url, model, endpoint: o.endpoint, numPrompts: o.numPrompts,
      concurrency: o.concurrency, requestRate: Number.isFinite(o.requestRate) ? o.requestRate : 'inf', inputLen: o.inputLen,
      outputLen: o.outputLen, rangeRatio: o.rangeRatio, seed: o.seed, command,
    },
    durationS,
    completed: ok.length,
    failed: records.length - ok.length,
    failures,
    totalInputTokens: totalIn,
    totalOutputTokens: totalOut,
    requestThroughput: ok.length / durationS,
    outputThroughput: totalOut / durationS,
    totalTokenThroughput: (totalIn + totalOut) / durationS,
    ttftMs: percentiles(ok.map((r) => r.ttftMs)),
    tpotMs: percentiles(ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1))),
    itlMs: percentiles(ok.flatMap((r) => r.itlMs)),
    e2eMs: percentiles(ok.map((r) => r.e2eMs)),
  };
  return { report, records };
}

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');

export function renderServeMarkdown(r: ServeBenchReport): string {
  const m = r.meta;
  const lat = (name: string, p: Percentiles) => `| ${name} | ${f(p.mean)} | ${f(p.median)} | ${f(p.p90)} | ${f(p.p99)} |`;
  return [
    `## bench serve: ${m.model} at ${m.url} (${m.endpoint})`,
    '',
    `${m.date}, commit ${m.commit}; ${m.numPrompts} prompts, concurrency ${m.concurrency}, request rate ${m.requestRate}, `
      + `input ~${m.inputLen} words, output ${m.outputLen} tokens (range ratio ${m.rangeRatio}), seed ${m.seed}`,
    m.command ? `\n\`${m.command}\`` : '',
    '',
    '| | |',
    '| --- | ---: |',
    `| duration | ${f(r.durationS)} s |`,
    `| completed / failed | ${r.completed} / ${r.failed}${r.failed ? ` (${Object.entries(r.failures).map(([k, v]) => `${k}: ${v}`).join('; ')})` : ''} |`,
    `| input / output tokens | ${r.totalInputTokens} / ${r.totalOutputTokens} |`,
    `| request throughput | ${f(r.requestThroughput)} req/s |`,
    `| output token throughput | ${f(r.outputThroughput)} tok/s |`,
    `| total token throughput | ${f(r.totalTokenThroughput)} tok/s |`,
    '',
    '| latency (ms) | mean | median | p90 | p99 |',
    '| --- | ---: | ---: | ---: | ---: |',
    lat('TTFT', r.ttftMs),
    lat('TPOT', r.tpotMs),
    lat('ITL', r.itlMs),
    lat('E2E', r.e2eMs),
    '',
  ].join('\n');
}

export function writeServeReport(report: ServeBenchReport, dir: string): { json: string; markdown: string } {
  mkdirSync(dir, { recursive: true });
  const json = join(dir, 'serve.json');
  const markdown = join(dir, 'serve.md');
  writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(markdown, renderServeMarkdown(report));
  return { json, markdown };
}

function rateArg(text: string): number {
  if (text === 'inf') return Infinity;
  const v = Number(text);
  if (!(Number.isFinite(v) && v > 0)) throw new InvalidArgumentError(`--request-rate must be a positive number or "inf", got "${text}"`);
  return v;
}

function ratioArg(text: string): number {
  const v = Number(text);
  if (!(Number.isFinite(v) && v >= 0 && v < 1)) throw new InvalidArgumentError(`--range-ratio must be in [0, 1), got "${text}"`);
  return v;
}

export function registerServeBench(bench: Command): void {
  bench
    .command('serve')
    .description('load generator for a running `megamoe serve` (throughput, TTFT, TPOT, ITL percentiles, like vLLM\'s benchmark_serving)')
    .option('--url <url>', 'server base URL', 'http://127.0.0.1:8000')
    .option('--model <name>', 'model name (default: the first from /v1/models)')
    .option('--endpoint <kind>', 'completions | chat', 'completions')
    .option('--num-prompts <n>', 'requests to send', intArg('--num-prompts', 1, 1_000_000), 64)
    .option('--concurrency <n>', 'most requests in flight', intArg('--concurrency', 1, 100_000), 16)
    .option('--request-rate <r>', 'requests per second (Poisson arrivals), or inf', rateArg, Infinity)
    .option('--input-len <n>', 'prompt length in words', intArg('--input-len', 1), 32)
    .option('--output-len <n>', 'output tokens per request (ignore_eos)', intArg('--output-len', 1), 64)
    .option('--range-ratio <r>', 'lengths uniform in [len*(1-r), len*(1+r)]', ratioArg, 0)
    .option('--seed <s>', 'seed for prompts, lengths and arrivals', intArg('--seed', 0, 0xffffffff), 0)
    .option('--api-key <key>', 'Bearer key, if the server has one (default: $MEGAMOE_API_KEY)')
    .option('--out <dir>', 'write serve.json and serve.md there')
    .action(async (opts: Omit<ServeBenchOptions, 'endpoint'> & { endpoint: string; out?: string }) => {
      if (opts.endpoint !== 'completions' && opts.endpoint !== 'chat') throw new Error(`--endpoint must be completions or chat, got "${opts.endpoint}"`);
      const command = `megamoe ${process.argv.slice(2).join(' ')}`;
      const { report } = await runServeBench({
        ...opts, endpoint: opts.endpoint, url: opts.url.replace(/\/+$/, ''), apiKey: opts.apiKey ?? process.env.MEGAMOE_API_KEY,
      }, command);
      console.log(renderServeMarkdown(report));
      if (opts.out) {
        const w = writeServeReport(report, opts.out);
        console.log(`wrote ${w.json} and ${w.markdown}`);
      }
      if (report.completed === 0) process.exitCode = 1;
    });
}
