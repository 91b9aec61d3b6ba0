// Issue 9, classes 3 and 5: writes that can be interrupted (make-checkpoint's temp folder on SIGINT/SIGTERM, stale
// temps of killed runs, free space, what --force may replace) and the embedded default rebuilt when damaged.
import { ensureDefaultModel } from '../src/model/checkpoint-writer.js';
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MANIFEST_FILE } from '../src/checkpoint/manifest.js';
import { describeFsError } from '../src/cli/errors.js';
import { ensureDefaultCheckpoint, makeCheckpointSync } from '../src/checkpoint/synthetic.js';
import { ensureFreeSpace, freeBytes, InsufficientSpaceError } from '../src/util/disk-space.js';
import { OWNER_MARKER, registeredTemps } from '../src/util/temp-dirs.js';
import { buildHeader, SafetensorsWriter } from '../src/checkpoint/safetensors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-hardening-write-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const mainJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
let counter = 0;
const fresh = (name: string) => { const d = path.join(tmp, `${name}-${counter++}`); fs.mkdirSync(d); return d; };
const FLASH_LAYER_BYTES = 6.5e9;
const aFile = () => { const f = path.join(fresh('file'), 'f'); fs.writeFileSync(f, 'x'); return f; };

async function interrupted(signal: NodeJS.Signals, t: { skip(why: string): void }): Promise<void> {
  const parent = fresh(`sig-${signal}`);
  if ((freeBytes(parent) ?? 0) < FLASH_LAYER_BYTES * 1.1) { t.skip('needs 7 GB free to start a flash make-checkpoint'); return; }
  const child = spawn(process.execPath, [mainJs, 'make-checkpoint', '--preset', 'flash', '--out', path.join(parent, 'ck'), '--no-progress'], { stdio: 'ignore' });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, sig) => resolve({ code, signal: sig })));
  // Wait until the temp folder exists and its shard has bytes, i.e. the run is mid-write.
  const deadline = Date.now() + 20_000;
  let seen = false;
  while (!seen && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    const temp = fs.readdirSync(parent).find((f) => f.startsWith('ck.partial-'));
    if (temp) {
      try { seen = fs.readdirSync(path.join(parent, temp)).some((f) => f.endsWith('.partial') && fs.statSync(path.join(parent, temp, f)).size > 1e6); } catch { /* racing the writer */ }
    }
  }
  assert.ok(seen, 'the run started writing');
  child.kill(signal);
  const r = await exited;
  assert.equal(r.signal, signal, 'the process still dies of the signal');
  assert.deepEqual(fs.readdirSync(parent), [], 'the temp folder is gone');
}

describe('make-checkpoint: interrupted and dangerous writes', () => {
  test('SIGINT mid-write removes the temp folder', (t) => interrupted('SIGINT', t));
  test('SIGTERM mid-write removes the temp folder', (t) => interrupted('SIGTERM', t));

  test('a later run cleans stale temp folders of runs that died (owner marker, dead pid), never foreign ones', () => {
    const parent = fresh('stale');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const stale = path.join(parent, `old.partial-${dead}-123`);
    fs.mkdirSync(stale);
    fs.writeFileSync(path.join(stale, OWNER_MARKER), JSON.stringify({ pid: dead, host: os.hostname() }));
    fs.writeFileSync(path.join(stale, 'model.safetensors.partial'), 'x');
    const foreign = path.join(parent, 'mine.partial-1-2'); // no marker: not ours
    fs.mkdirSync(foreign);
    const liveOwner = path.join(parent, `busy.partial-${process.pid}-7`); // owner alive (this process)
    fs.mkdirSync(liveOwner);
    fs.writeFileSync(path.join(liveOwner, OWNER_MARKER), JSON.stringify({ pid: process.pid, host: os.hostname() }));
    makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: path.join(parent, 'new') });
    assert.deepEqual(fs.readdirSync(parent).sort(), [path.basename(liveOwner), 'mine.partial-1-2', 'new'].sort());
    assert.ok(!fs.existsSync(path.join(parent, 'new', OWNER_MARKER)), 'the marker does not end up in the checkpoint');
  });

  test('free space is checked before writing, and the refusal says how much is needed', () => {
    assert.throws(() => ensureFreeSpace(tmp, 6.48e9, 'free space or choose another --out', () => ({ bavail: 1000, bsize: 4096 })),
      (e: unknown) => e instanceof InsufficientSpaceError && e.needed === 6.48e9 && /this needs 6\.48 GB, 4\.1 MB is free: free space or choose another --out/.test(e.message));
    assert.doesNotThrow(() => ensureFreeSpace(tmp, 1e6, 'x', () => ({ bavail: 1e6, bsize: 4096 })));
    // End to end: ask for more pro layers (25.4 GB each) than the disk holds.
    const parent = fresh('space');
    const free = freeBytes(parent) ?? 0;
    const layers = Math.ceil(free / 25.4e9) + 1;
    const r = spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--preset', 'pro', '--layers', String(layers), '--out', path.join(parent, 'ck'), '--no-progress'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 1, `exit ${r.status} ${r.signal ?? ''} ${r.stderr}`);
    assert.match(r.stderr, /not enough free space in .*: this needs [\d.]+ (GB|TB), [\d.]+ (GB|TB|MB|kB) is free: free space there or choose another --out/);
    assert.deepEqual(fs.readdirSync(parent), [], 'nothing was written');
    // A huge --layers is refused from the per-layer size, before the tensors are even planned.
    const t0 = Date.now();
    const huge = spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--preset', 'flash', '--layers', '1000000', '--out', path.join(parent, 'ck')], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(huge.status, 1, huge.stderr);
    assert.match(huge.stderr, /this needs 6471\.\d+ TB/);
    assert.ok(Date.now() - t0 < 15_000);
  });

  test('a shard header past the 100 MB readers accept is refused when writing; an open shard is removed on interruption', () => {
    const specs = Array.from({ length: 1100 }, (_, i) => ({ name: `layers.${i}.ffn.experts.0.w1.weight`, dtype: 'U8' as const, shape: [1] }));
    assert.doesNotThrow(() => buildHeader('/ckpt/model.safetensors', specs));
    // The same check at a 64 kB limit (the real one, 100 MB, takes ~1M tensors to reach).
    assert.throws(() => buildHeader('/ckpt/model.safetensors', specs, undefined, 65_536), /header of 1100 tensors would be \d+ bytes, above the 65536-byte limit .*--shard-size/);
    const p = path.join(fresh('partial'), 'model.safetensors');
    const w = SafetensorsWriter.create(p, [{ name: 'a', dtype: 'U8', shape: [4] }]);
    assert.ok(registeredTemps().includes(`${p}.partial`), 'registered for removal on SIGINT/SIGTERM');
    w.abort();
    assert.ok(!registeredTemps().includes(`${p}.partial`));
    const w2 = SafetensorsWriter.create(p, [{ name: 'a', dtype: 'U8', shape: [1] }]);
    w2.write('a', Uint8Array.of(1));
    w2.close();
    assert.deepEqual(registeredTemps(), []);
  });

  test('bench --out is checked before any benchmark runs', () => {
    const r = spawnSync(process.execPath, [mainJs, 'bench', 'moe', '--out', path.join(aFile(), 'reports')], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot write to the report folder .* \(a parent is a file, not a folder\): pass --out a folder you can write to/);
  });

  test('--force replaces a megamoe checkpoint, never a folder holding anything else', () => {
    const run = (out: string) => spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--out', out, '--force', '--seed', '5'], { encoding: 'utf8' });
    const home = fresh('home');
    fs.writeFileSync(path.join(home, 'thesis.tex'), 'years of work');
    fs.mkdirSync(path.join(home, 'src'));
    let r = run(home);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--force replaces only a checkpoint folder, and this one also holds "src" \(folder\), "thesis\.tex"/);
    assert.equal(fs.readFileSync(path.join(home, 'thesis.tex'), 'utf8'), 'years of work');
    const llama = fresh('llama');
    fs.writeFileSync(path.join(llama, 'config.json'), JSON.stringify({ model_type: 'llama' }));
    fs.writeFileSync(path.join(llama, 'model.safetensors'), 'weights');
    r = run(llama);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--force replaces only a megamoe or DeepSeek-V4 checkpoint/);
    assert.ok(fs.existsSync(path.join(llama, 'model.safetensors')));
    const ours = path.join(fresh('ours'), 'ck');
    makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: ours });
    r = run(ours);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(fs.readFileSync(path.join(ours, 'config.json'), 'utf8')).megamoe_synthetic.seed, 5);
  });
});

describe('the embedded default checkpoint', () => {
  test('damaged cached files (bit flip, truncation, missing file) are detected by hash and size, and rebuilt', () => {
    const dir = path.join(fresh('cache'), 'default-tiny-v1');
    ensureDefaultCheckpoint({ dir });
    assert.ok(fs.existsSync(path.join(dir, MANIFEST_FILE)));
    const shard = path.join(dir, 'model.safetensors');
    const good = fs.readFileSync(shard);
    const reasons: string[] = [];
    const again = () => ensureDefaultCheckpoint({ dir, onRebuild: (why) => reasons.push(why) });

    const flipped = Buffer.from(good); flipped[flipped.length - 100] ^= 0x01;
    fs.writeFileSync(shard, flipped);
    again();
    assert.match(reasons.at(-1)!, /model\.safetensors does not match its SHA-256/);
    assert.deepEqual(fs.readFileSync(shard), good, 'rebuilt byte for byte');

    fs.truncateSync(shard, 1000);
    again();
    assert.match(reasons.at(-1)!, /model\.safetensors is 1000 bytes, \d+ expected/);
    assert.deepEqual(fs.readFileSync(shard), good);

    fs.rmSync(path.join(dir, 'README.md'));
    again();
    assert.match(reasons.at(-1)!, /README\.md is missing/);
    const n = reasons.length;
    again();
    assert.equal(reasons.length, n, 'an intact default is not rebuilt');
  });

  test('the embedded default MODEL (what the CLI uses) is checked the same way: a flipped bit is rebuilt', () => {
    const dir = path.join(fresh('cache-model'), 'default-tiny-model-v2');
    ensureDefaultModel({ dir });
    assert.ok(fs.existsSync(path.join(dir, MANIFEST_FILE)));
    const shard = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort()[0];
    const good = fs.readFileSync(path.join(dir, shard));
    const flipped = Buffer.from(good); flipped[flipped.length - 100] ^= 0x01;
    fs.writeFileSync(path.join(dir, shard), flipped);
    const reasons: string[] = [];
    ensureDefaultModel({ dir, onRebuild: (why) => reasons.push(why) });
    assert.match(reasons.at(-1)!, /does not match its SHA-256/);
    assert.deepEqual(fs.readFileSync(path.join(dir, shard)), good, 'rebuilt byte for byte');
  });

  test('an unwritable cache folder is refused naming MEGAMOE_CACHE_DIR', () => {
    const file = path.join(fresh('notadir'), 'file');
    fs.writeFileSync(file, 'x');
    const r = spawnSync(process.execPath, [mainJs, 'moe', '--tokens', '1'], { encoding: 'utf8', env: { ...process.env, MEGAMOE_CACHE_DIR: path.join(file, 'cache') } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot write to the cache folder .*file\/cache \(a parent is a file, not a folder\): set MEGAMOE_CACHE_DIR to a folder you can write to/);
    // The kernel cache (kernels --check needs only nvcc; without it the command says so instead).
    const k = spawnSync(process.execPath, [mainJs, 'kernels', '--check'], { encoding: 'utf8', env: { ...process.env, MEGAMOE_CACHE_DIR: path.join(file, 'cache') } });
    assert.equal(k.status, 1);
    assert.match(k.stderr, /cannot write to the kernel cache folder .*file\/cache\/kernels \(a parent is a file, not a folder\): set MEGAMOE_CACHE_DIR|nvcc not found/);
    // Any other module's errno error under the cache folder (e.g. the unfused backend compiling) is translated by main.ts.
    const saved = process.env.MEGAMOE_CACHE_DIR;
    process.env.MEGAMOE_CACHE_DIR = path.join(file, 'cache');
    try {
      let err: unknown;
      try { fs.mkdirSync(path.join(file, 'cache', 'kernels'), { recursive: true }); } catch (e) { err = e; }
      assert.match(describeFsError(err) ?? '', /cannot write to the cache folder .* \(a parent is a file, not a folder at .*\): set MEGAMOE_CACHE_DIR to a folder you can write to/);
      assert.equal(describeFsError(new Error('plain')), undefined);
    } finally {
      if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR; else process.env.MEGAMOE_CACHE_DIR = saved;
    }
  });
});
