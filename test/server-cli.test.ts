// `megamoe serve` as a process: the start-up refusals of the real CLI (they fire before any weight is read), and
// SIGTERM draining. For the SIGTERM tests this file is also the child: run with MEGAMOE_SERVE_CHILD=1 it builds
// the real `serve` command (commander, flags, startServer, signal handling) with the test doubles as the model
// and tokenizer parts (server-fixture.ts), since the real model is not in this checkout yet.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { gpuLoadSizes, register, type ServeOptions } from '../src/cli/commands/serve.js';
import { parseKernelConfig, KernelConfigError } from '../src/cli/kernel-config.js';
import { gpuSkipReason } from '../src/cuda/index.js';
import { makeParts } from './server-fixture.js';

const HERE = fileURLToPath(import.meta.url);
const MAIN = path.join(path.dirname(HERE), '..', 'src', 'cli', 'main.js');

if (process.env.MEGAMOE_SERVE_CHILD === '1') {
  const program = new Command().name('megamoe');
  const stepDelayMs = Number(process.env.MEGAMOE_TEST_STEP_MS ?? '0');
  register(program, async () => (await makeParts({ stepDelayMs })).parts);
  program.parseAsync(process.argv).catch((err: unknown) => {
    console.error(`megamoe: ${(err as Error).message}`);
    process.exitCode = 1;
  });
} else {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-serve-test-'));
  process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
  const modelDir = path.join(tmp, 'model');
  fs.mkdirSync(modelDir);
  fs.writeFileSync(path.join(modelDir, 'config.json'), '{}');

  const cli = (...args: string[]) => spawnSync(process.execPath, [MAIN, 'serve', ...args], { encoding: 'utf8', timeout: 30_000 });

  test('--device gpu sizes: the flags as vLLM\'s; decode CUDA graphs unless --enforce-eager', () => {
    const program = new Command().name('megamoe');
    register(program, async () => { throw new Error('not loaded'); });
    const serve = program.commands.find((c) => c.name() === 'serve');
    assert.ok(serve?.options.some((o) => o.long === '--enforce-eager' && o.attributeName() === 'enforceEager'));
    const base = { maxNumSeqs: 4, maxModelLen: 8192 } as ServeOptions;
    assert.deepEqual(gpuLoadSizes(base, 2048), { maxSequences: 4, maxRows: 2048, maxContext: 8192, decodeGraphs: true });
    assert.equal(gpuLoadSizes({ ...base, enforceEager: true }, 2048).decodeGraphs, false);
    assert.deepEqual(gpuLoadSizes({ ...base, cudaGraphSizes: [1, 4] }, 2048).decodeGraphSizes, [1, 4]);
    assert.throws(() => gpuLoadSizes({ ...base, cudaGraphSizes: [1, 8] }, 2048), /--cuda-graph-sizes 8 exceed --max-num-seqs 4/);
  });

  test('--kernel-config: unknown keys and values are refused with the valid ones', () => {
    assert.deepEqual(parseKernelConfig(undefined), { moe_backend: 'auto' });
    assert.deepEqual(parseKernelConfig('{"moe_backend":"deep_gemm_mega_moe"}'), { moe_backend: 'mega_moe' });
    assert.deepEqual(parseKernelConfig('{"moe_backend":"UNFUSED"}'), { moe_backend: 'unfused' });
    assert.throws(() => parseKernelConfig('{"moe_backnd":"unfused"}'), (e: unknown) => e instanceof KernelConfigError && /unknown key "moe_backnd"; valid keys: moe_backend/.test(e.message));
    assert.throws(() => parseKernelConfig('{"moe_backend":"turbo"}'), /choose one of reference, unfused, mega_moe, deep_gemm_mega_moe, auto/);
    assert.throws(() => parseKernelConfig('{"moe_backend":3}'), KernelConfigError);
    assert.throws(() => parseKernelConfig('[1]'), /expected a JSON object/);
    assert.throws(() => parseKernelConfig('{moe_backend'), /not valid JSON/);
  });

  test('megamoe serve refuses bad start-ups before loading anything, with the fix in the message', () => {
    const missing = path.join(tmp, 'does-not-exist');
    // mega_moe without EP: the guard fires before the (missing) model directory is even looked at.
    let r = cli('--model', missing, '--kernel-config', '{"moe_backend":"deep_gemm_mega_moe"}');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /needs expert parallelism, which is not enabled: add --enable-expert-parallel/);
    r = cli('--model', missing, '--kernel-config', '{"moe_backend":"fast"}');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /moe_backend "fast" is not valid; choose one of/);
    r = cli('--model', missing, '--data-parallel-size', '2', '--enable-expert-parallel');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /expert-parallel world of 2 GPUs .* not built yet/);
    r = cli('--model', missing, '--tensor-parallel-size', '2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /tensor parallelism is not implemented/);
    r = cli('--model', missing, '--max-num-seqs', '0');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--max-num-seqs must be an integer in \[1, /);
    r = cli('--model', missing);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no such directory; give a DeepSeek-V4 checkpoint directory/);
    r = cli('--model', missing, '--device', 'tpu');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--device must be cpu or gpu, got "tpu"/);
    r = cli('--model', missing, '--cuda-graph-sizes', '1,two');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--cuda-graph-sizes must be an integer in \[1, 65536\], got "two"/);
    r = cli('--model', missing, '--device', 'gpu', '--kernel-config', '{"moe_backend":"reference"}');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--device gpu with moe_backend reference: the reference backend runs on the CPU; pass --kernel-config/);
  });

  test('serve --device gpu without a Hopper GPU is refused before the checkpoint loads', { skip: gpuSkipReason() === undefined && 'this machine has a Hopper GPU (test/gpu-serve.test.ts serves on it)' }, () => {
    const r = cli('--model', path.join(tmp, 'does-not-exist'), '--device', 'gpu');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--device gpu needs a Hopper GPU: .*; serve on the CPU with --device cpu/);
  });

  const modelBuilt = fs.existsSync(path.join(path.dirname(HERE), '..', 'src', 'model', 'index.js'));
  test('without the model module, serve says so before generating or reading anything', { skip: modelBuilt && 'src/model/index.ts exists now' }, () => {
    const cache = path.join(tmp, 'empty-cache');
    const r = spawnSync(process.execPath, [MAIN, 'serve'], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, MEGAMOE_CACHE_DIR: cache } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot serve: the DeepSeek-V4 model is not built in this checkout \(src\/model\/index.ts does not exist yet\)/);
    assert.equal(fs.existsSync(cache), false, 'the embedded default was not generated');
  });

  /** Starts the child server; resolves with its URL once it listens. */
  async function startChild(args: string[], stepMs: number): Promise<{ child: ChildProcess; url: string; stderr: () => string; exit: Promise<number | null> }> {
    const child = spawn(process.execPath, [HERE, 'serve', '--model', modelDir, '--port', '0', ...args], {
      env: { ...process.env, MEGAMOE_SERVE_CHILD: '1', MEGAMOE_TEST_STEP_MS: String(stepMs) }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => { err += String(d); });
    const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child did not start: ${err}`)), 15_000);
      child.stdout!.on('data', (d) => {
        out += String(d);
        const m = /listening on (http:\/\/[^\s]+)/.exec(out);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      });
      child.on('exit', () => { clearTimeout(timer); reject(new Error(`child exited: ${err}`)); });
    });
    return { child, url, stderr: () => err, exit };
  }

  /** A streamed completion read by hand: the text, the finish_reason, any error event, and whether [DONE] came. */
  async function streamCompletion(url: string, maxTokens: number, onFirst: () => void, model = modelDir) {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt: 'drain me', max_tokens: maxTokens, temperature: 0, stream: true }),
    });
    assert.equal(res.status, 200);
    let text = '';
    let finish: string | null = null;
    let error: string | undefined;
    let done = false;
    let buf = '';
    let first = true;
    const decoder = new TextDecoder();
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(part, { stream: true });
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, cut).replace(/^data: /, '');
        buf = buf.slice(cut + 2);
        if (ev === '[DONE]') { done = true; continue; }
        const j = JSON.parse(ev) as { error?: { message: string }; choices: Array<{ text: string; finish_reason: string | null }> };
        if (j.error) { error = j.error.message; continue; }
        text += j.choices[0].text;
        finish = j.choices[0].finish_reason ?? finish;
        if (first && j.choices[0].text) { first = false; onFirst(); }
      }
    }
    return { text, finish, error, done };
  }

  test('SIGTERM drains: the running stream completes, new requests are refused, the process exits 0', async () => {
    const { child, url, stderr, exit } = await startChild(['--shutdown-timeout', '20', '--served-model-name', 'deepseek-v4', 'dsv4'], 10);
    const models = await (await fetch(`${url}/v1/models`)).json() as { data: Array<{ id: string }> };
    assert.deepEqual(models.data.map((m) => m.id), ['deepseek-v4', 'dsv4']);
    const r = await streamCompletion(url, 30, () => child.kill('SIGTERM'), 'dsv4');
    assert.equal(r.finish, 'length', stderr());
    assert.equal(r.text.length, 30);
    assert.ok(r.done);
    // The port is closed (or, on a kept-alive socket, the engine answers 503): nothing new is served.
    const after = await fetch(`${url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'dsv4', prompt: 'late', max_tokens: 2 }),
    }).then((x) => x.status, () => 'refused');
    assert.ok(after === 'refused' || after === 503, String(after));
    assert.equal(await exit, 0, stderr());
    assert.match(stderr(), /SIGTERM: draining 1 running and 0 waiting requests/);
  });

  test('SIGTERM with --shutdown-timeout 0: in-flight streams get an error event and [DONE]; exit 0', async () => {
    const { child, url, stderr, exit } = await startChild(['--shutdown-timeout', '0'], 10);
    const started = Date.now();
    const r = await streamCompletion(url, 400, () => child.kill('SIGTERM'));
    assert.match(r.error ?? '', /shut down before this request finished/);
    assert.ok(r.done);
    assert.ok(r.text.length < 400);
    assert.equal(await exit, 0, stderr());
    assert.ok(Date.now() - started < 3000, 'it stopped promptly');
  });
}
