// Rank identity (src/dist/rank.ts) and the control channel's message checks (src/dist/protocol.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assignDevices, rankEnv, rankFromEnv, validateRankIdentity } from '../src/dist/rank.js';
import { runRanks } from '../src/dist/supervisor.js';
import { checkKey, decodeBlob, encodeBlob, parseRankMessage, parseSupervisorMessage } from '../src/dist/protocol.js';

test('rankFromEnv reads the identity the supervisor writes, and refuses what it did not', () => {
  const env = rankEnv({ rank: 2, worldSize: 4, device: 0 });
  assert.deepEqual(env, { MEGAMOE_RANK: '2', MEGAMOE_WORLD_SIZE: '4', MEGAMOE_DEVICE: '0' });
  assert.deepEqual(rankFromEnv(env), { rank: 2, worldSize: 4, device: 0 });
  assert.throws(() => rankFromEnv({}), /MEGAMOE_RANK is not set: this process was not started by the megamoe rank supervisor/);
  assert.throws(() => rankFromEnv({ ...env, MEGAMOE_RANK: '-1' }), /MEGAMOE_RANK must be a non-negative integer, got '-1'/);
  assert.throws(() => rankFromEnv({ ...env, MEGAMOE_RANK: '4' }), /rank must be an integer in \[0, 3\] for a world of 4, got 4/);
  assert.throws(() => rankFromEnv({ ...env, MEGAMOE_WORLD_SIZE: '0' }), /world size must be an integer in \[1, 128\]/);
  assert.throws(() => validateRankIdentity({ rank: 0, worldSize: 1, device: 1.5 }), /device must be a non-negative integer/);
});

test('assignDevices: rank i on device i, one device for all (single-GPU mode), or an explicit map', () => {
  assert.deepEqual(assignDevices(4), [0, 1, 2, 3]);
  assert.deepEqual(assignDevices(3, [0]), [0, 0, 0]);
  assert.deepEqual(assignDevices(2, [1, 0]), [1, 0]);
  assert.throws(() => assignDevices(3, [0, 1]), /one device for all ranks or one per rank \(3\), got 2/);
  assert.throws(() => assignDevices(2, [0, -1]), /-1 is not a device ordinal/);
  assert.throws(() => assignDevices(0), /world size/);
});

test('control messages are checked field by field; blobs round-trip', () => {
  const blob = Uint8Array.from([0, 1, 254, 255, 128]);
  assert.deepEqual(decodeBlob(encodeBlob(blob)), blob);
  assert.deepEqual(decodeBlob(encodeBlob(blob.subarray(1, 3))), Uint8Array.from([1, 254]));
  assert.ok(parseRankMessage({ t: 'put', key: 'ipc@1', data: encodeBlob(blob) }));
  assert.equal(parseRankMessage({ t: 'put', key: 'has space', data: '' }), null);
  assert.equal(parseRankMessage({ t: 'barrier' }), null);
  assert.equal(parseRankMessage({ t: 'nope' }), null);
  assert.equal(parseRankMessage(null), null);
  assert.equal(parseRankMessage({ t: 'hello', rank: 1.5, pid: 3 }), null);
  assert.ok(parseRankMessage({ t: 'error', phase: 'x', name: 'GuardError', message: 'm' }));
  assert.ok(parseSupervisorMessage({ t: 'abort', message: 'rank 1 died' }));
  assert.equal(parseSupervisorMessage({ t: 'value', key: 'k' }), null);
  assert.throws(() => checkKey('barrier', ''), /barrier must be 1-200 characters/);
  assert.throws(() => encodeBlob(new Uint8Array(16 * 1024 * 1024 + 1)), /at most 16777216 bytes/);
});

test('runRanks refuses a bad world before starting anything (a rejection, not a throw)', async () => {
  await assert.rejects(runRanks({ worldSize: 0, program: '/nonexistent.js' }), /world size must be an integer in \[1, 128\], got 0/);
  await assert.rejects(runRanks({ worldSize: 2, program: '/nonexistent.js', devices: [0, 1, 2] }), /one device for all ranks or one per rank \(2\), got 3/);
});
