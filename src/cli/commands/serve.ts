// `megamoe serve`: the OpenAI-compatible server, with vLLM's command line (the seed runs
// `vllm serve MODEL --enable-expert-parallel --kernel-config '{"moe_backend":"deep_gemm_mega_moe"}'`).
//
// Start-up order, so that a wrong command line fails in milliseconds and never after minutes of weight loading:
// flags and --kernel-config are parsed, the backend guards run (mega_moe needs --enable-expert-parallel, the
// backend must be able to run on this machine), the parallel sizes are checked, the model directory must exist;
// only then are the model and the tokenizer loaded, the engine built and the port opened. SIGTERM or SIGINT
// drains: new requests get 503, running and queued ones finish (up to --shutdown-timeout, then they are
// cancelled), and the process exits 0.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import type { FastifyInstance } from 'fastify';
import { getProvider, type BackendName } from '../../backends/index.js';
import { BackendUnavailableError } from '../../backends/index.js';
import { ensureDefaultModel } from '../../model/checkpoint-writer.js';
import { Engine, type EngineObserver } from '../../engine/engine.js';
import { loadEngineParts, probeEngineParts, type LoadPartsOptions } from '../../engine/load-parts.js';
import type { EngineParts } from '../../engine/parts.js';
import { checkExpertParallel, GuardError } from '../../moe/guards.js';
import { buildServer } from '../../server/app.js';
import { createMetrics } from '../../server/metrics.js';
import { deviceArg, intArg, intListArg } from '../args.js';
import { parseKernelConfig, type KernelConfig } from '../kernel-config.js';

export interface ServeOptions {
  model?: string;
  servedModelName?: string[];
  host: string;
  port: number;
  apiKey?: string;
  enableExpertParallel: boolean;
  kernelConfig?: string;
  /** Where the forward runs: cpu (default; the MoE blocks on the chosen backend) or gpu (the whole step on one GPU). */
  device?: 'cpu' | 'gpu';
  maxNumSeqs: number;
  maxModelLen?: number;
  maxNumBatchedTokens?: number;
  maxQueue: number;
  tensorParallelSize: number;
  dataParallelSize: number;
  /** Seconds; 0 = no per-request deadline. */
  requestTimeout: number;
  /** Seconds the drain may take at shutdown before what is left is cancelled. */
  shutdownTimeout: number;
  /** --disable-log-stats: no periodic stats line. */
  disableLogStats?: boolean;
  /** --enforce-eager (vLLM's flag): --device gpu launches every kernel of a decode step instead of replaying CUDA graphs. */
  enforceEager?: boolean;
  /** --cuda-graph-sizes (vLLM's flag): the decode batch sizes captured as CUDA graphs (a batch pads to the next). */
  cudaGraphSizes?: number[];
}

/** How the serving parts are obtained; tests pass their own (the CLI path is otherwise the real one). */
export type PartsLoader = (modelDir: string, opts: LoadPartsOptions) => Promise<EngineParts>;

export class ServeConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServeConfigError';
  }
}

export interface StartupPlan {
  modelDir: string;
  modelNames: string[];
  kernel: KernelConfig;
  backend: BackendName | 'auto';
}

const DEFAULT_MODEL_NAME = 'megamoe-default-tiny';

/**
 * Everything that can be refused without loading a weight: --kernel-config, the mega_moe guards, parallel
 * sizes, the backend's availability on this machine, the model directory. Throws with the fix in the message.
 */
export async function planStartup(opts: ServeOptions, probeParts?: () => Promise<void>): Promise<StartupPlan> {
  const kernel = parseKernelConfig(opts.kernelConfig);
  const backend = kernel.moe_backend;
  if (backend === 'mega_moe') {
    try {
      checkExpertParallel(opts.enableExpertParallel, 'mega_moe');
    } catch (err) {
      if (!(err instanceof GuardError)) throw err;
      throw new GuardError(err.code, 'moe_backend mega_moe (deep_gemm_mega_moe) needs expert parallelism, which is not enabled',
        'add --enable-expert-parallel (one GPU: it runs as EP size 1), or pass --kernel-config \'{"moe_backend":"unfused"}\' or \'{"moe_backend":"reference"}\'');
    }
  }
  const world = opts.tensorParallelSize * opts.dataParallelSize;
  if (opts.tensorParallelSize > 1 && !opts.enableExpertParallel) {
    throw new ServeConfigError(`--tensor-parallel-size ${opts.tensorParallelSize} without --enable-expert-parallel: tensor parallelism is not implemented; `
      + 'megamoe spreads DeepSeek-V4 as DeepSeek deploys it (attention data-parallel, MoE expert-parallel): use --data-parallel-size N --enable-expert-parallel');
  }
  if (world > 1) {
    throw new ServeConfigError(`an expert-parallel world of ${world} GPUs (--tensor-parallel-size ${opts.tensorParallelSize} x --data-parallel-size ${opts.dataParallelSize}) `
      + 'needs the multi-process rank supervisor, which is not built yet (issue 12): serve on one GPU (sizes 1) for now');
  }
  if (opts.device === 'gpu') {
    if (backend === 'reference') {
      throw new ServeConfigError('--device gpu with moe_backend reference: the reference backend runs on the CPU; pass --kernel-config \'{"moe_backend":"unfused"}\' '
        + 'or \'{"moe_backend":"deep_gemm_mega_moe"}\' (with --enable-expert-parallel), or serve on the CPU with --device cpu');
    }
    // The whole step needs a Hopper GPU whatever the MoE backend: probe one now rather than after the checkpoint loads.
    const a = await getProvider(backend === 'mega_moe' ? 'mega_moe' : 'unfused').probe();
    if (!a.ok) throw new BackendUnavailableError(backend, `--device gpu needs a Hopper GPU: ${a.reason}; serve on the CPU with --device cpu`);
  } else if (backend !== 'auto') {
    const a = await getProvider(backend).probe();
    if (!a.ok) throw new BackendUnavailableError(backend, `${a.reason}; choose another with --kernel-config '{"moe_backend":"reference"}' (CPU) or "auto"`);
  }
  let modelDir: string | undefined;
  if (opts.model) {
    modelDir = path.resolve(opts.model);
    if (!fs.existsSync(path.join(modelDir, 'config.json'))) {
      throw new ServeConfigError(`--model ${opts.model}: ${fs.existsSync(modelDir) ? 'no config.json in that directory' : 'no such directory'}; `
        + 'give a DeepSeek-V4 checkpoint directory, or leave --model out to serve the embedded default');
    }
  }
  // Before the embedded default is generated (seconds) or any weight is read: are the model's modules here at all?
  await probeParts?.();
  modelDir ??= ensureDefaultModel();
  const modelNames = opts.servedModelName?.length ? opts.servedModelName : [opts.model ?? DEFAULT_MODEL_NAME];
  return { modelDir, modelNames, kernel, backend };
}

export interface RunningServer {
  app: FastifyInstance;
  engine: Engine;
  url: string;
  /** Drains (new requests 503, running ones finish within graceMs, then cancelled) and closes the port. */
  shutdown(graceMs: number): Promise<void>;
}

/** The version in package.json (dist/src/cli/commands -> the package root, or src/cli/commands under tsx). */
export function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p)) {
      const j = JSON.parse(fs.readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (j.name === 'megamoe' && j.version) return j.version;
    }
    dir = path.dirname(dir);
  }
  return '0.0.0';
}

/** Every observer's hooks, in order (metrics and the stats line both watch the engine). */
function composeObservers(...obs: EngineObserver[]): EngineObserver {
  return {
    onPromptDone: (n, q) => { for (const o of obs) o.onPromptDone?.(n, q); },
    onFirstToken: (s) => { for (const o of obs) o.onFirstToken?.(s); },
    onInterToken: (s) => { for (const o of obs) o.onInterToken?.(s); },
    onStep: (t, i) => { for (const o of obs) o.onStep?.(t, i); },
    onFinished: (r) => { for (const o of obs) o.onFinished?.(r); },
  };
}

/** vLLM's periodic line (every 10 s while there is traffic): prompt and generation throughput, running, waiting, cache. */
function statsLogger(log: (s: string) => void, getEngine: () => Engine | undefined, everyMs = 10_000): { observer: EngineObserver; stop(): void } {
  let prompt = 0;
  let generated = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const e = getEngine();
    const now = performance.now();
    const dt = (now - last) / 1000;
    last = now;
    if (!e || (prompt === 0 && generated === 0 && e.numRunning === 0 && e.numWaiting === 0)) return;
    log(`avg prompt throughput ${(prompt / dt).toFixed(1)} tokens/s, avg generation throughput ${(generated / dt).toFixed(1)} tokens/s, `
      + `running ${e.numRunning} reqs, waiting ${e.numWaiting} reqs, KV cache usage ${(e.kvCacheUsage * 100).toFixed(1)}%`);
    prompt = 0;
    generated = 0;
  }, everyMs);
  timer.unref();
  return {
    observer: { onPromptDone: (n) => { prompt += n; }, onFirstToken: () => { generated++; }, onInterToken: () => { generated++; } },
    stop: () => clearInterval(timer),
  };
}

/** What --device gpu sizes the GPU model with: the flags as vLLM's (docs/SERVER.md, "On the GPU"). */
export function gpuLoadSizes(opts: ServeOptions, batchedTokens: number): NonNullable<LoadPartsOptions['gpu']> {
  const sizes = opts.cudaGraphSizes;
  if (sizes && !opts.enforceEager) {
    const over = sizes.filter((s) => s > opts.maxNumSeqs);
    if (over.length > 0) throw new ServeConfigError(`--cuda-graph-sizes ${over.join(',')} exceed --max-num-seqs ${opts.maxNumSeqs}; pass sizes up to it`);
  }
  return {
    maxSequences: opts.maxNumSeqs, maxRows: batchedTokens, maxContext: opts.maxModelLen, decodeGraphs: !opts.enforceEager,
    ...(sizes ? { decodeGraphSizes: sizes } : {}),
  };
}

/** Plans, loads, builds and listens. Does not install signal handlers (runServe does). */
export async function startServer(opts: ServeOptions, loadParts: PartsLoader = loadEngineParts, log: (s: string) => void = () => {}): Promise<RunningServer> {
  const plan = await planStartup(opts, loadParts === loadEngineParts ? probeEngineParts : undefined);
  const onGpu = opts.device === 'gpu';
  log(`loading ${plan.modelDir} (${onGpu ? 'the whole step on the GPU, ' : ''}moe_backend ${plan.backend}${opts.enableExpertParallel ? ', expert parallel' : ''}) ...`);
  const t0 = performance.now();
  // On the GPU a step's rows are allocated up front: the budget defaults to one 2048-token chunk (vLLM's default
  // for chunked prefill), not to the whole context as on the CPU.
  const batchedTokens = onGpu ? (opts.maxNumBatchedTokens ?? 2048) : opts.maxNumBatchedTokens;
  const parts = await loadParts(plan.modelDir, {
    backend: plan.backend, enableExpertParallel: opts.enableExpertParallel, device: opts.device,
    gpu: onGpu ? gpuLoadSizes(opts, batchedTokens!) : undefined,
  });
  const maxModelLen = opts.maxModelLen ?? parts.model.maxContext;
  if (maxModelLen > parts.model.maxContext) {
    throw new ServeConfigError(`--max-model-len ${maxModelLen} exceeds the model's context of ${parts.model.maxContext} tokens: pass --max-model-len ${parts.model.maxContext} or less`);
  }
  const metrics = createMetrics(plan.modelNames[0]);
  let engineRef: Engine | undefined;
  const stats = opts.disableLogStats ? undefined : statsLogger(log, () => engineRef);
  const engine = new Engine(parts, {
    maxNumSeqs: opts.maxNumSeqs, maxQueue: opts.maxQueue, maxModelLen, maxBatchedTokens: batchedTokens,
    observer: stats ? composeObservers(metrics.observer, stats.observer) : metrics.observer,
  });
  engineRef = engine;
  metrics.bind(engine);
  const app = buildServer({
    engine, parts, modelNames: plan.modelNames, apiKey: opts.apiKey, metrics, version: packageVersion(),
    requestTimeoutMs: opts.requestTimeout > 0 ? opts.requestTimeout * 1000 : undefined, modelRoot: plan.modelDir,
  });
  const address = await app.listen({ host: opts.host, port: opts.port });
  log(`loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; max-model-len ${maxModelLen}, max-num-seqs ${opts.maxNumSeqs}, max-queue ${opts.maxQueue}`);
  let closing: Promise<void> | undefined;
  return {
    app, engine, url: address,
    shutdown(graceMs: number) {
      closing ??= (async () => {
        // Stop listening at once; the engine drains what was admitted.
        const closed = app.close();
        await engine.shutdown(graceMs);
        // Every response has now ended, but clients keep their sockets alive (fastify's keep-alive is 72 s) and
        // close() waits for them (Node does not always count a socket whose last exchange was cancelled as idle):
        // let the last bytes flush, drop the idle ones, and shortly after all.
        await new Promise((r) => setImmediate(r));
        app.server.closeIdleConnections();
        const force = setTimeout(() => app.server.closeAllConnections(), 250);
        await closed;
        clearTimeout(force);
        stats?.stop();
      })();
      return closing;
    },
  };
}

/** The command's body: start, print how to talk to it, drain on SIGTERM/SIGINT and exit 0. */
export async function runServe(opts: ServeOptions, loadParts: PartsLoader = loadEngineParts): Promise<void> {
  const log = (s: string) => console.error(`megamoe serve: ${s}`);
  const server = await startServer(opts, loadParts, log);
  const name = (opts.servedModelName?.[0]) ?? opts.model ?? DEFAULT_MODEL_NAME;
  const auth = opts.apiKey ? ` -H "Authorization: Bearer $KEY"` : '';
  console.log(`megamoe serve: listening on ${server.url} (model "${name}")`);
  console.log(`  curl ${server.url}/v1/chat/completions -H "Content-Type: application/json"${auth} \\`);
  console.log(`    -d '{"model":"${name}","messages":[{"role":"user","content":"Hello"}],"max_tokens":32}'`);
  console.log(`  node -e 'const OpenAI=require("openai");new OpenAI({baseURL:"${server.url}/v1",apiKey:${opts.apiKey ? 'process.env.KEY' : '"none"'}})`
    + `.chat.completions.create({model:"${name}",messages:[{role:"user",content:"Hello"}]}).then(r=>console.log(r.choices[0].message.content))'`);
  console.log(`  chat page: ${server.url}/   metrics: ${server.url}/metrics`);
  await new Promise<void>((resolve) => {
    let signalled = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) {
        log(`${sig} again: exiting now`);
        process.exit(1);
      }
      signalled = true;
      log(`${sig}: draining ${server.engine.numRunning} running and ${server.engine.numWaiting} waiting requests (up to ${opts.shutdownTimeout} s)`);
      void server.shutdown(opts.shutdownTimeout * 1000).then(() => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        log('stopped');
        resolve();
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  process.exitCode = 0;
  // The model may hold native handles (GPU contexts, worker pools) that keep the loop alive: leave regardless.
  setTimeout(() => process.exit(0), 1000).unref();
}

export function register(program: Command, loadParts: PartsLoader = loadEngineParts): void {
  program
    .command('serve')
    .description('OpenAI-compatible HTTP server (chat/completions, completions, models, metrics) with continuous batching')
    .argument('[model]', 'checkpoint directory (as vLLM\'s positional MODEL; same as --model)')
    .option('--model <dir>', 'DeepSeek-V4 checkpoint directory (default: the embedded tiny checkpoint)')
    .option('--served-model-name <names...>', 'name(s) clients use for the model, as vLLM (space-separated; the first is reported; default: --model)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0: any free port)', intArg('--port', 0, 65535), 8000)
    .option('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1/* (default: $MEGAMOE_API_KEY, else none)')
    .option('--enable-expert-parallel', 'expert parallelism for the MoE layers (mega_moe requires it)', false)
    .option('--device <cpu|gpu>', 'where the forward runs: cpu (the MoE blocks on --kernel-config\'s backend) or gpu (the whole step on one Hopper GPU; moe_backend unfused or mega_moe)', deviceArg, 'cpu')
    .option('--kernel-config <json>', 'kernel settings as JSON, e.g. \'{"moe_backend":"unfused"}\'; moe_backend: reference, unfused, mega_moe (deep_gemm_mega_moe), auto')
    .option('--max-num-seqs <n>', 'requests generating at once', intArg('--max-num-seqs', 1, 65536), 16)
    .option('--max-model-len <n>', 'longest prompt + completion in tokens (default: the model\'s context)', intArg('--max-model-len', 2))
    .option('--max-num-batched-tokens <n>', 'tokens per model step, prefill chunks and decodes together (default: max(max-model-len, 2048))', intArg('--max-num-batched-tokens', 1))
    .option('--max-queue <n>', 'requests that may wait for a free slot; one more gets 429 with Retry-After', intArg('--max-queue', 0), 256)
    .option('--tensor-parallel-size <n>', 'GPUs per data-parallel group (vLLM\'s -tp)', intArg('--tensor-parallel-size', 1, 1024), 1)
    .option('--data-parallel-size <n>', 'data-parallel ranks; with --enable-expert-parallel the EP size is tp x dp (vLLM\'s -dp)', intArg('--data-parallel-size', 1, 1024), 1)
    .option('--request-timeout <s>', 'per-request deadline in seconds (0: none); generation stops with finish_reason "length"', intArg('--request-timeout', 0), 600)
    .option('--disable-log-stats', 'no periodic throughput / queue line on stderr')
    .option('--enforce-eager', 'with --device gpu: launch each kernel of a decode step instead of replaying a CUDA graph per (batch, context bucket), as vLLM\'s flag')
    .option('--cuda-graph-sizes <list>', 'with --device gpu: the decode batch sizes captured as CUDA graphs, e.g. "1,2,4,8,16"; a batch pads to the next size, one above the largest runs eagerly (default 1, 2, 4, multiples of 8 and --max-num-seqs), as vLLM\'s flag', intListArg('--cuda-graph-sizes', 1, 65536))
    .option('--shutdown-timeout <s>', 'on SIGTERM, seconds to let requests finish before cancelling them', intArg('--shutdown-timeout', 0), 30)
    .action(async (positional: string | undefined, opts: ServeOptions) => {
      if (positional && opts.model && path.resolve(positional) !== path.resolve(opts.model)) {
        throw new ServeConfigError(`two models given: "${positional}" and --model ${opts.model}; give one`);
      }
      const apiKey = opts.apiKey ?? process.env.MEGAMOE_API_KEY;
      await runServe({ ...opts, model: opts.model ?? positional, apiKey: apiKey || undefined }, loadParts);
    });
}
