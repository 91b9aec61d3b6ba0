// /metrics in Prometheus text format with vLLM's metric names (docs.vllm.ai "Production Metrics", V1 engine), so
// dashboards built for vLLM graph megamoe unchanged: every series carries model_name. A private registry per
// server, so two servers in one process (the tests) do not collide.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Engine, EngineObserver, EngineResult } from '../engine/engine.js';

// vLLM's bucket boundaries (seconds), so histograms line up with theirs.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export interface ServerMetrics {
  registry: Registry;
  /** Hand to the Engine's options.observer. */
  observer: EngineObserver;
  /** The engine whose gauges are read at scrape time (set once it exists). */
  bind(engine: Engine): void;
}

export function createMetrics(modelName: string): ServerMetrics {
  const registry = new Registry();
  const labelNames = ['model_name'] as const;
  const labels = { model_name: modelName };
  let engine: Engine | undefined;

  // Gauges read the engine when scraped (collect), so they are never stale.
  new Gauge({
    name: 'vllm:num_requests_running', help: 'Number of requests in model execution batches.', labelNames, registers: [registry],
    collect() { this.set(labels, engine?.numRunning ?? 0); },
  });
  new Gauge({
    name: 'vllm:num_requests_waiting', help: 'Number of requests waiting to be processed.', labelNames, registers: [registry],
    collect() { this.set(labels, engine?.numWaiting ?? 0); },
  });
  new Gauge({
    name: 'vllm:kv_cache_usage_perc', help: 'KV-cache usage. 1 means 100 percent usage.', labelNames, registers: [registry],
    collect() { this.set(labels, engine?.kvCacheUsage ?? 0); },
  });
  const promptTokens = new Counter({ name: 'vllm:prompt_tokens_total', help: 'Number of prefill tokens processed.', labelNames, registers: [registry] });
  const generationTokens = new Counter({ name: 'vllm:generation_tokens_total', help: 'Number of generation tokens processed.', labelNames, registers: [registry] });
  const success = new Counter({
    name: 'vllm:request_success_total', help: 'Count of successfully processed requests.', labelNames: ['model_name', 'finished_reason'], registers: [registry],
  });
  const ttft = new Histogram({ name: 'vllm:time_to_first_token_seconds', help: 'Histogram of time to first token in seconds.', labelNames, buckets: TTFT_BUCKETS, registers: [registry] });
  const itl = new Histogram({ name: 'vllm:inter_token_latency_seconds', help: 'Histogram of inter-token latency in seconds.', labelNames, buckets: ITL_BUCKETS, registers: [registry] });
  // vLLM's older name for the same figure, still graphed by many dashboards.
  const tpot = new Histogram({ name: 'vllm:time_per_output_token_seconds', help: 'Histogram of time per output token in seconds.', labelNames, buckets: ITL_BUCKETS, registers: [registry] });
  const e2e = new Histogram({ name: 'vllm:e2e_request_latency_seconds', help: 'Histogram of end to end request latency in seconds.', labelNames, buckets: E2E_BUCKETS, registers: [registry] });
  const queueTime = new Histogram({ name: 'vllm:request_queue_time_seconds', help: 'Histogram of time spent in WAITING phase for request.', labelNames, buckets: E2E_BUCKETS, registers: [registry] });
  const promptLen = new Histogram({
    name: 'vllm:request_prompt_tokens', help: 'Number of prefill tokens processed.', labelNames, registers: [registry],
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000],
  });
  const genLen = new Histogram({
    name: 'vllm:request_generation_tokens', help: 'Number of generation tokens processed.', labelNames, registers: [registry],
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000],
  });
  const iterationTokens = new Histogram({
    name: 'vllm:iteration_tokens_total', help: 'Histogram of number of tokens per engine_step.', labelNames, registers: [registry],
    buckets: [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
  });

  const observer: EngineObserver = {
    onPromptDone(n, queuedSeconds) {
      promptTokens.inc(labels, n);
      queueTime.observe(labels, queuedSeconds);
    },
    onFirstToken(s) { ttft.observe(labels, s); generationTokens.inc(labels, 1); },
    onInterToken(s) { itl.observe(labels, s); tpot.observe(labels, s); generationTokens.inc(labels, 1); },
    onStep(tokens) { iterationTokens.observe(labels, tokens); },
    onFinished(r: EngineResult) {
      if (r.finishReason === 'cancelled') return;
      success.inc({ ...labels, finished_reason: r.finishReason === 'deadline' ? 'length' : r.finishReason });
      e2e.observe(labels, r.e2eMs / 1000);
      promptLen.observe(labels, r.promptTokens);
      genLen.observe(labels, r.completionTokens);
    },
  };
  return { registry, observer, bind(e) { engine = e; } };
}
