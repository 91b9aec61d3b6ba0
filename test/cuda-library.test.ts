// loadFirstLibrary (src/cuda/library.ts), the loader under the libcuda and cuBLASLt bindings, on libc (present on
// every Linux machine): the first candidate that loads and binds wins, and every failure is reported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadFirstLibrary } from '../src/cuda/library.js';

test('the first candidate that loads and binds wins; the others say why they failed', () => {
  const r = loadFirstLibrary(['libdoes-not-exist.so.9', 'libc.so.6'], (lib) => lib.func('int abs(int)') as (x: number) => number, 'a libc symbol');
  assert.ok('value' in r, JSON.stringify(r));
  assert.equal(r.name, 'libc.so.6');
  assert.equal(r.value(-7), 7);
});

test('missing libraries and missing symbols are both reported, never thrown', () => {
  const r = loadFirstLibrary(['libdoes-not-exist.so.9', 'libc.so.6'], (lib) => lib.func('int megamoe_no_such_symbol(int)'), 'a needed symbol');
  assert.ok('errors' in r);
  assert.equal(r.errors.length, 2);
  assert.match(r.errors[0], /^libdoes-not-exist\.so\.9: /);
  assert.match(r.errors[1], /^libc\.so\.6 lacks a needed symbol: /);
});
