// Streaming detokenization: whole UTF-8 characters only, and the pieces add up to decode(all ids).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { TextTokenizer } from '../src/generate/contracts.js';
import { StreamDecoder, completeUtf8Prefix } from '../src/tokenizer/index.js';
import { v4Tokenizer } from './support/tokenizer.js';

function stream(tok: TextTokenizer, ids: number[], skipSpecial = false): string[] {
  const d = new StreamDecoder(tok, { skipSpecial });
  const out = ids.map((id) => d.push(id));
  out.push(d.flush());
  return out;
}

const hasLoneSurrogate = (s: string) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);

test('completeUtf8Prefix: holds back only an unfinished character', () => {
  const b = (...x: number[]) => Uint8Array.from(x);
  assert.equal(completeUtf8Prefix(b()), 0);
  assert.equal(completeUtf8Prefix(b(0x41)), 1);
  assert.equal(completeUtf8Prefix(b(0x41, 0xe4)), 1);             // 1 of 3 bytes of 中
  assert.equal(completeUtf8Prefix(b(0x41, 0xe4, 0xb8)), 1);       // 2 of 3
  assert.equal(completeUtf8Prefix(b(0x41, 0xe4, 0xb8, 0xad)), 4); // 中 complete
  assert.equal(completeUtf8Prefix(b(0xf0, 0x9f, 0x98)), 0);       // 3 of 4 bytes of 😀
  assert.equal(completeUtf8Prefix(b(0xf0, 0x9f, 0x98, 0x80)), 4);
  assert.equal(completeUtf8Prefix(b(0x80)), 1);                   // stray continuation: invalid, not waited for
  assert.equal(completeUtf8Prefix(b(0xff)), 1);                   // never a lead byte
  assert.equal(completeUtf8Prefix(b(0xc0)), 1);                   // overlong lead, invalid
  assert.equal(completeUtf8Prefix(b(0x80, 0x80, 0x80, 0x80)), 4);
});

test('multi-byte characters split across tokens come out whole, once complete', async () => {
  const tok = await v4Tokenizer();
  // " 😀" is two tokens (53769: the space and 3 of the emoji's 4 bytes, 225: the last byte); 👍🏽 and the family
  // emoji split the same way.
  const ids = tok.encode('emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️');
  assert.deepEqual(ids.slice(3, 5), [53769, 225]);
  assert.equal(tok.tokenBytes(53769).length, 4);
  const pieces = stream(tok, ids);
  assert.equal(pieces[3], ' ');
  assert.equal(pieces[4], '😀');
  for (const p of pieces) {
    assert.ok(!p.includes('\ufffd'), `replacement character in ${JSON.stringify(p)}`);
    assert.ok(!hasLoneSurrogate(p), `half a surrogate pair in ${JSON.stringify(p)}`);
  }
  assert.equal(pieces.join(''), 'emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️');
});

test('pieces concatenate to decode(ids) for mixed scripts, with and without special tokens', async () => {
  const tok = await v4Tokenizer();
  const texts = [
    '深度求索公司创造了DeepSeek-V4，今天是2025年10月17日。', '東京タワー ひらがな', '안녕하세요', 'Ünïcödé ½ ™ “q”',
    '<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>', 'a\r\nb\r\n\r\n',
  ];
  for (const t of texts) {
    const ids = tok.encode(t);
    for (const skip of [false, true]) {
      const pieces = stream(tok, ids, skip);
      assert.equal(pieces.join(''), tok.decode(ids, { skipSpecial: skip }), JSON.stringify(t));
      for (const p of pieces) assert.ok(!p.includes('\ufffd') && !hasLoneSurrogate(p), JSON.stringify(p));
    }
  }
  assert.equal(stream(tok, tok.encode('<｜User｜>x<｜end▁of▁sentence｜>'), true).join(''), '<｜User｜>x');
});

test('byte-by-byte tokens (every byte its own token): characters still come out whole', async () => {
  const tok = await v4Tokenizer();
  // Single-byte tokens: id of each raw byte, found through the byte-level alphabet.
  const byteId = new Map<number, number>();
  for (let id = 0; id < 20000 && byteId.size < 256; id++) {
    const b = tok.tokenBytes(id);
    if (b.length === 1 && !byteId.has(b[0]) && !tok.isSpecial(id)) byteId.set(b[0], id);
  }
  assert.equal(byteId.size, 256);
  const text = 'x中😀é𝄞';
  const ids = [...new TextEncoder().encode(text)].map((b) => byteId.get(b)!);
  const pieces = stream(tok, ids);
  assert.deepEqual(pieces.filter((p) => p), ['x', '中', '😀', 'é', '𝄞']);
});

test('an unfinished character at the end becomes U+FFFD on flush, like decode', async () => {
  const tok = await v4Tokenizer();
  const d = new StreamDecoder(tok);
  assert.equal(d.push(53769), ' ');
  assert.equal(d.heldBytes, 3);
  assert.equal(' ' + d.flush(), tok.decode([53769]));
  assert.equal(d.flush(), '');
});

test('a tokenizer without token bytes: the decode-diff fallback holds back U+FFFD until it settles', () => {
  // Toy tokenizer: id = a byte; decode = lossy UTF-8 of the bytes.
  const toy: TextTokenizer = {
    vocabSize: 256, bosId: 0, eosId: 1, encode: (t) => [...new TextEncoder().encode(t)], tokenId: () => undefined,
    decode: (ids) => new TextDecoder().decode(Uint8Array.from(ids)),
  };
  const ids = toy.encode('a中😀b');
  const pieces = stream(toy, ids);
  assert.equal(pieces.join(''), 'a中😀b');
  assert.deepEqual(pieces.filter((p) => p), ['a', '中', '😀', 'b']);
});
