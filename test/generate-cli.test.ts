// `megamoe generate`: option parsing, prompt building, the model-layer seam, and the whole command end to end
// with a scripted model module (a test double written to a temp folder, loaded through MEGAMOE_MODEL_ENTRY).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { importLoadModel, numberArg, promptIds, samplingFor } from '../src/cli/commands/generate.js';
import { tokenizerDir, v4Tokenizer } from './support/tokenizer.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

function megamoe(env: Record<string, string>, ...args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A model module whose greedy continuation spells `text` (token by token), then EOS. */
function scriptedModelModule(dir: string, script: number[]): string {
  const file = path.join(dir, 'scripted-model.mjs');
  fs.writeFileSync(file, `
export async function loadModel(dir, opts) {
  const script = ${JSON.stringify(script)};
  if (opts.backend === 'nope') throw new Error('unknown backend nope');
  if (opts.device !== 'cpu') throw new Error('scripted model: device ' + opts.device);
  return {
    vocabSize: 129280, maxContext: 4096,
    createSequence() { return { length: 0, generated: -1 }; },
    releaseSequence() {},
    async step(items) {
      return items.map((it) => {
        it.seq.length += it.tokens.length; it.seq.generated++;
        const l = new Float32Array(129280);
        l[it.seq.generated < script.length ? script[it.seq.generated] : 1] = 10;
        return l;
      });
    },
  };
}
`);
  return pathToFileURL(file).href;
}

test('numberArg refuses text that is not a number in range', () => {
  const t = numberArg('--temperature', 0, 100);
  assert.equal(t('0.7'), 0.7);
  assert.throws(() => t('0.7x'), /--temperature must be a number in \[0, 100\], got "0.7x"/);
  assert.throws(() => t(''), /number/);
  assert.throws(() => t('-1'), /number/);
  const p = numberArg('--top-p', 0, 1, { minExclusive: true });
  assert.equal(p('1'), 1);
  assert.throws(() => p('0'), /--top-p must be a number in \(0, 1\], got "0"/);
});

test('prompt ids: BOS + text, or the V4 chat encoding (chat and thinking, with a system prompt)', async () => {
  const tok = await v4Tokenizer();
  assert.deepEqual(promptIds({ prompt: '你好', chat: false, thinking: false }, tok), [0, 30594]);
  assert.deepEqual(promptIds({ prompt: '你好', chat: true, thinking: false }, tok), [0, 128803, 30594, 128804, 128822]);
  assert.deepEqual(promptIds({ prompt: '你好', chat: false, thinking: true }, tok), [0, 128803, 30594, 128804, 128821]);
  assert.deepEqual(promptIds({ prompt: 'hi', system: 'system', chat: true, thinking: false }, tok).slice(0, 4), [0, 27824, 128803, 6366]);
  assert.throws(() => promptIds({ prompt: 'x', system: 's', chat: false, thinking: false }, tok), /--system needs --chat/);
});

test('sampling defaults come from generation_config.json; flags win; a seed is always chosen', async () => {
  const dir = await tokenizerDir();
  const s = samplingFor({ topK: 0 }, dir);
  assert.deepEqual([s.temperature, s.topP, s.topK], [1, 1, 0]);
  assert.ok(Number.isInteger(s.seed));
  assert.deepEqual(samplingFor({ temperature: 0, topK: 5, topP: 0.5, seed: 3 }, dir), { temperature: 0, topK: 5, topP: 0.5, seed: 3 });
  assert.equal(samplingFor({ topK: 0 }, path.join(dir, 'no-such-folder')).temperature, 1);
});

test('the model seam: a missing entry says the model is not built; an entry without loadModel is refused', async () => {
  const dir = await tokenizerDir();
  await assert.rejects(importLoadModel(pathToFileURL(path.join(dir, 'nothing-here', 'index.js')).href), /not built in this checkout/);
  const bad = path.join(dir, 'bad-model.mjs');
  fs.writeFileSync(bad, 'export const somethingElse = 1;\n');
  await assert.rejects(importLoadModel(pathToFileURL(bad).href), /does not export loadModel/);
});

test('megamoe generate streams the model\'s text to stdout and statistics to stderr', async () => {
  const tok = await v4Tokenizer();
  const dir = await tokenizerDir();
  const want = 'Hello, 世界! 😀 tokens stream whole.';
  const entry = scriptedModelModule(dir, tok.encode(want));
  const r = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--chat', '--temperature', '0');
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, want + '\n');
  assert.match(r.err, /^\[stop\] prompt 5 tokens, completion \d+ tokens; .*greedy/m);
  const s = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--stop', '世界', '--no-stats', '--temperature', '0');
  assert.equal(s.code, 0, s.err);
  assert.deepEqual([s.out, s.err], ['Hello, \n', '']);
  const m = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--max-tokens', '2', '--temperature', '0');
  assert.match(m.err, /^\[length\] prompt 2 tokens, completion 2 tokens/m);
  const b = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--backend', 'nope');
  assert.equal(b.code, 1);
  assert.match(b.err, /megamoe: unknown backend nope/);
  // --device reaches the model layer (cpu by default, above); anything but cpu / gpu is refused by the option
  const g = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--device', 'gpu');
  assert.equal(g.code, 1);
  assert.match(g.err, /scripted model: device gpu/);
  const x = megamoe({ MEGAMOE_MODEL_ENTRY: entry }, 'generate', '--model', dir, '--prompt', 'hi', '--device', 'tpu');
  assert.notEqual(x.code, 0);
  assert.match(x.err, /--device must be cpu or gpu, got "tpu"/);
});

test('megamoe generate runs on the embedded default (the tiny whole model, real tokenizer)', async () => {
  // A private cache: this generates the embedded default, never in the user's cache.
  const cache = path.join(await tokenizerDir(), 'cache');
  const r = megamoe({ MEGAMOE_MODEL_ENTRY: '', MEGAMOE_CACHE_DIR: cache }, 'generate', '--prompt', 'hi', '--max-tokens', '2', '--temperature', '0');
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /^\[length\] prompt \d+ tokens, completion 2 tokens/m);
});
