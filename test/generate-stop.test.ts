// Stop strings on streamed text: held back while they could still match, released once they cannot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StopMatcher } from '../src/generate/index.js';

/** Feeds pieces; returns what was emitted (joined), whether it stopped, and the pieces emitted one by one. */
function run(stops: string[], pieces: string[]): { text: string; stopped: boolean; emitted: string[] } {
  const m = new StopMatcher(stops);
  const emitted: string[] = [];
  for (const p of pieces) {
    const r = m.push(p);
    emitted.push(r.text);
    if (r.stopped) return { text: emitted.join(''), stopped: true, emitted };
  }
  emitted.push(m.flush());
  return { text: emitted.join(''), stopped: false, emitted };
}

test('a stop string inside one piece: text before it, and stop', () => {
  assert.deepEqual(run(['STOP'], ['abc STOP def']), { text: 'abc ', stopped: true, emitted: ['abc '] });
});

test('a stop string across pieces is held back, never emitted', () => {
  const r = run(['</answer>'], ['The answer', ' is 4</', 'ans', 'wer> and more']);
  assert.equal(r.text, 'The answer is 4');
  assert.equal(r.stopped, true);
  assert.deepEqual(r.emitted, ['The answer', ' is 4', '', '']);
});

test('a partial match that fails is released as soon as it cannot match', () => {
  const r = run(['STOP'], ['ab S', 'T', 'x', 'y']);
  assert.deepEqual(r.emitted, ['ab ', '', 'STx', 'y', '']);
  assert.equal(r.stopped, false);
  // Held text at the end of the stream is released by flush.
  const m = new StopMatcher(['STOP']);
  assert.equal(m.push('go ST').text, 'go ');
  assert.equal(m.heldLength, 2);
  assert.equal(m.flush(), 'ST');
});

test('several stop strings: the earliest match wins; overlapping prefixes are handled', () => {
  assert.equal(run(['world', 'lo'], ['hello world']).text, 'hel');
  assert.equal(run(['ab'], ['a', 'a', 'b']).text, 'a');
  assert.equal(run(['aab'], ['a', 'a', 'a', 'b']).text, 'a');
  assert.equal(run(['\n\n'], ['line\n', '\nnext']).text, 'line');
});

test('no stop strings (or only empty ones): everything passes through at once', () => {
  assert.deepEqual(run([], ['a', 'b']).emitted, ['a', 'b', '']);
  assert.deepEqual(run([''], ['a', 'b']).emitted, ['a', 'b', '']);
});

test('multi-byte stop strings: CJK and emoji, never splitting a surrogate pair', () => {
  assert.equal(run(['世界'], ['你好世', '界!']).text, '你好');
  const r = run(['😀x'], ['a😀', 'y']);
  assert.deepEqual(r.emitted, ['a', '😀y', '']);
  for (const p of r.emitted) assert.ok(!/[\ud800-\udbff]$/.test(p));
});
