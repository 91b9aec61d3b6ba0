// Issue 9, classes 3 (--dump) and 4: paths and limits. --dump validated before any compute and written whole or not
// at all; --model pointing at a file; unwritable output folders name the flag; --tokens bounded by host memory, with
// progress for long CPU runs; --version; extra positional arguments refused.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { moeShapeFromConfig, parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { presetConfig } from '../src/checkpoint/synthetic.js';
import { GuardError } from '../src/moe/guards.js';
import { checkHostTokens, hostBytesPerToken } from '../src/moe/host-memory.js';
import { runExpertsReference } from '../src/moe/experts.js';
import { evalMoeF64 } from '../src/moe/f64-eval.js';
import { routeLayer } from '../src/moe/router.js';
import { makeRandomLayer, moeShape, randomHiddenStates } from '../src/moe/synthetic.js';
import { writeFilesAtomically } from '../src/util/atomic-write.js';
import { registeredTemps } from '../src/util/temp-dirs.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const mainJs = path.resolve(here, '../src/cli/main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-hardening-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const cache = path.join(tmp, 'cache');
function megamoe(...args: string[]) {
  const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: 'utf8', env: { ...process.env, MEGAMOE_CACHE_DIR: cache }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const aFile = path.join(tmp, 'a-file');
fs.writeFileSync(aFile, 'not a folder');

describe('megamoe CLI: arguments', () => {
  test('--version and -V print the package version', () => {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(here, '../../package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = megamoe(flag);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out.trim(), pkg.version);
    }
  });

  test('extra positional arguments are an error, for every command', () => {
    for (const args of [['moe', 'extra'], ['make-checkpoint', '--out', path.join(tmp, 'x'), 'stray'], ['info', 'foo'], ['kernels', 'bar']]) {
      const r = megamoe(...args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.err, /too many arguments/, args.join(' '));
    }
    assert.ok(!fs.existsSync(path.join(tmp, 'x')), 'nothing was written');
  });

  test('--model pointing at a file says to pass the folder; a missing one is named', () => {
    const r = megamoe('moe', '--model', aFile);
    assert.equal(r.code, 1);
    assert.match(r.err, /--model .*a-file is a file; pass the checkpoint folder that holds it \(--model .*\)/);
    const m = megamoe('moe', '--model', path.join(tmp, 'nope'));
    assert.equal(m.code, 1);
    assert.match(m.err, /--model .*nope does not exist; pass the checkpoint folder/);
  });

  test('an unwritable --out names the flag', () => {
    const r = megamoe('make-checkpoint', '--out', path.join(aFile, 'ck'));
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot write to the output folder .*a-file \(exists and is not a folder\): pass --out a folder you can write to/);
  });
});

describe('megamoe moe --dump', () => {
  test('a bad dump target is refused before any compute', () => {
    for (const [target, why] of [[aFile, /exists and is not a folder\): pass --dump a folder you can write to/], [path.join(aFile, 'sub'), /a parent is a file, not a folder\): pass --dump/]] as const) {
      const r = megamoe('moe', '--tokens', '2', '--dump', target);
      assert.equal(r.code, 1);
      assert.match(r.err, why);
      assert.doesNotMatch(r.out, /routing/, 'nothing was computed');
    }
    const d = path.join(tmp, 'dump-blocked');
    fs.mkdirSync(path.join(d, 'output.safetensors'), { recursive: true });
    const r = megamoe('moe', '--tokens', '2', '--dump', d);
    assert.equal(r.code, 1);
    assert.match(r.err, /output\.safetensors exists there and is not a file/);
    assert.doesNotMatch(r.out, /routing/);
    assert.deepEqual(fs.readdirSync(d), ['output.safetensors'], 'no input.safetensors without its output');
    // Dumping into the checkpoint folder would add tensors to the checkpoint.
    const intoModel = megamoe('moe', '--tokens', '2', '--dump', path.join(cache, 'default-tiny-model-v2'));
    assert.equal(intoModel.code, 1);
    assert.match(intoModel.err, /is the checkpoint folder itself; its \*\.safetensors files would become part of the checkpoint/);
    assert.doesNotMatch(intoModel.out, /routing/);
  });

  test('a dump is written whole or not at all', () => {
    const d = path.join(tmp, 'atomic');
    assert.throws(() => writeFilesAtomically(d, [
      { name: 'input.safetensors', write: (p) => fs.writeFileSync(p, 'in') },
      { name: 'output.safetensors', write: () => { throw new Error('disk full'); } },
    ]), /disk full/);
    assert.deepEqual(fs.readdirSync(d), [], 'neither file, and no temp files');
    assert.deepEqual(registeredTemps(), [], 'nothing left registered for signal cleanup');
    const files = writeFilesAtomically(d, [
      { name: 'a', write: (p) => fs.writeFileSync(p, '1') },
      { name: 'b', write: (p) => fs.writeFileSync(p, '2') },
    ]);
    assert.deepEqual(files, [path.join(d, 'a'), path.join(d, 'b')]);
    assert.deepEqual(fs.readdirSync(d).sort(), ['a', 'b']);
    const r = megamoe('moe', '--tokens', '2', '--no-f64', '--dump', path.join(tmp, 'dump-ok'));
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(fs.readdirSync(path.join(tmp, 'dump-ok')).sort(), ['input.safetensors', 'output.safetensors']);
  });
});

describe('megamoe moe --tokens is bounded by host memory', () => {
  test('the estimate matches the measured 16.8 KB a token (tiny, with the f64 evaluation)', () => {
    const tiny = moeShapeFromConfig(parseDeepSeekV4Config(presetConfig('tiny', 2, 'fp8')));
    const { bytes } = hostBytesPerToken(tiny, { f64: true });
    assert.ok(bytes > 15e3 && bytes < 19e3, `${bytes}`);
    assert.throws(() => checkHostTokens(1 << 20, tiny, { f64: true }, { available: 8e9 }), (e: unknown) => e instanceof GuardError
      && e.code === 'TOKEN_CAPACITY' && /--tokens 1048576 is more than this machine can run on the CPU: .* need about 18 GB of host memory \(17\.0 KB a token at H 256\), 8\.0 GB is available here: use --tokens <= \d+, or --no-f64/.test(e.message));
    const maxT = checkHostTokens(1000, tiny, { f64: true }, { available: 8e9 });
    assert.doesNotThrow(() => checkHostTokens(maxT, tiny, { f64: true }, { available: 8e9 }));
    assert.throws(() => checkHostTokens(maxT + 1, tiny, { f64: true }, { available: 8e9 }), /use --tokens <= /);
    // The typed-array limit binds too (2^32 elements on Node 20).
    assert.throws(() => checkHostTokens(1 << 20, tiny, { f64: false }, { available: 1e15, maxArrayElements: 2 ** 28 }), /typed-array limit of 268435456/);
  });

  test('the CLI refuses a flash-sized batch it cannot hold, before loading anything', () => {
    const d = path.join(tmp, 'flash-config-only');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(presetConfig('flash', 4, 'fp8')));
    const r = megamoe('moe', '--model', d, '--tokens', String(1 << 20));
    assert.equal(r.code, 1);
    assert.match(r.err, /--tokens 1048576 is more than this machine can run on the CPU: .*: use --tokens <= \d+/);
    assert.equal(r.out, '');
  });

  test('the reference and the f64 evaluation report progress row by row, ending at the total', () => {
    const shape = moeShape({ hidden: 256, inter: 128, experts: 8, topk: 2 });
    const layer = makeRandomLayer({ seed: 1, shape });
    const x = randomHiddenStates(5, 300, 256);
    const r = routeLayer(layer, x);
    const calls: [number, number][] = [];
    runExpertsReference(layer, x, r.topkIds, r.topkWeights, { onProgress: (done, total) => calls.push([done, total]) });
    assert.ok(calls.length >= 8, `${calls.length} updates`);
    assert.deepEqual(calls.at(-1), [300 * 3, 300 * 3]);
    for (let i = 1; i < calls.length; i++) assert.ok(calls[i][0] > calls[i - 1][0]);
    const f64Calls: [number, number][] = [];
    evalMoeF64(layer, x, r.topkIds, r.topkWeights, { onProgress: (done, total) => f64Calls.push([done, total]) });
    assert.ok(f64Calls.length >= 8);
    assert.deepEqual(f64Calls.at(-1), [300 * 3, 300 * 3]);
  });
});
