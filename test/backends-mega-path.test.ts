// Which kernel path the fused layer runs for T tokens (megaPath): no GPU needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { megaPath } from '../src/backends/mega-moe.js';

const FLASH = { experts: 256, topK: 6 };
const PRO = { experts: 384, topK: 6 };

test('auto: 16-token tiles up to 7 rows per expert, 32-token tiles above 7 up to 28, 128-row tiles above', () => {
  const range = { min: 7, max: 28 };
  const flash = (T: number) => megaPath(T, FLASH, 'auto', range);
  assert.equal(flash(1), 'decode');
  assert.equal(flash(256), 'decode', '6 rows per expert');
  assert.equal(flash(298), 'decode', '6.98 rows per expert');
  assert.equal(flash(299), 'decode32', '7.01 rows per expert');
  assert.equal(flash(512), 'decode32', '12 rows per expert');
  assert.equal(flash(1024), 'decode32', '24 rows per expert');
  assert.equal(flash(1194), 'decode32', '27.98 rows per expert');
  assert.equal(flash(1195), 'normal', '28.01 rows per expert');
  assert.equal(flash(4096), 'normal');
  assert.equal(megaPath(512, PRO, 'auto', range), 'decode32', 'pro: 8 rows per expert');
  assert.equal(megaPath(448, PRO, 'auto', range), 'decode', 'pro: exactly 7 rows per expert (the lower end is exclusive)');
  assert.equal(megaPath(1792, PRO, 'auto', range), 'decode32', 'pro: exactly 28 rows per expert (the upper end is inclusive)');
  assert.equal(megaPath(2048, PRO, 'auto', range), 'normal', 'pro: 32 rows per expert');
});

test('decode64 takes the range above decode32\'s; decode32 wins where they overlap', () => {
  const d32 = { min: 7, max: 28 }, d64 = { min: 28, max: 56 };
  const flash = (T: number) => megaPath(T, FLASH, 'auto', d32, d64);
  assert.equal(flash(1024), 'decode32', '24 rows per expert');
  assert.equal(flash(1195), 'decode64', '28.01 rows per expert');
  assert.equal(flash(2048), 'decode64', '48 rows per expert');
  assert.equal(flash(2389), 'decode64', '55.99 rows per expert');
  assert.equal(flash(2390), 'normal', '56.02 rows per expert');
  assert.equal(megaPath(2048, PRO, 'auto', d32, d64), 'decode64', 'pro: 32 rows per expert');
  assert.equal(megaPath(1024, FLASH, 'auto', { min: 7, max: 60 }, d64), 'decode32', 'an overlap goes to decode32');
});

test('a pinned policy and an "off" range keep the unfused rule (switch at 14 rows per expert)', () => {
  const range = { min: 7, max: 28 };
  assert.equal(megaPath(512, FLASH, 'decode', range), 'decode');
  assert.equal(megaPath(512, FLASH, 'normal', range), 'normal');
  assert.equal(megaPath(512, FLASH, 'auto', undefined), 'decode', '12 rows per expert');
  assert.equal(megaPath(1024, FLASH, 'auto', undefined), 'normal', '24 rows per expert');
});
