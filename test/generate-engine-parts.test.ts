// The serving engine's parts (src/generate/engine-parts.ts) built from a real tokenizer folder, as `megamoe serve`
// builds them: chat ids as encodeChat's, whole characters from the detokenizer, partial stop strings held back,
// seeded sampling reproducible.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CausalLM } from '../src/model/causal-lm.js';
import type { ChatMessage } from '../src/generate/contracts.js';
import { createEngineParts } from '../src/generate/engine-parts.js';
import { VOCAB_SIZE, encodeChat, loadTokenizer, writeTokenizerFiles } from '../src/tokenizer/index.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-engine-parts-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
const ready = writeTokenizerFiles(dir);

/** Only vocabSize is read by createEngineParts; the model is never stepped here. */
function modelWithVocab(vocabSize: number): CausalLM {
  const never = () => { throw new Error('not stepped in this test'); };
  return { vocabSize, maxContext: 4096, createSequence: never, step: never, releaseSequence: never };
}

test('engine parts: the tokenizer is the folder\'s, and chat ids are encodeChat\'s', async () => {
  await ready;
  const parts = await createEngineParts(dir, modelWithVocab(VOCAB_SIZE));
  const tok = await loadTokenizer(dir);
  assert.equal(parts.tokenizer.vocabSize, VOCAB_SIZE);
  assert.equal(parts.tokenizer.eosId, tok.eosId);
  const chats: ChatMessage[][] = [
    [{ role: 'user', content: 'Hello!' }],
    [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: '你好，1+1=?' }, { role: 'assistant', content: '2' }, { role: 'user', content: 'and 2+2?' }],
    [{ role: 'user', content: 'one' }, { role: 'user', content: 'two 😀' }],
  ];
  for (const m of chats) {
    const ids = parts.encodeChat(m);
    assert.deepEqual(ids, encodeChat(m, tok), JSON.stringify(m));
    assert.equal(ids[0], tok.bosId);
  }
});

test('engine parts: the detokenizer streams whole UTF-8 characters', async () => {
  await ready;
  const parts = await createEngineParts(dir, modelWithVocab(VOCAB_SIZE));
  const text = 'emoji: 😀👍🏽 中文 é';
  const ids = parts.tokenizer.encode(text);
  const detok = parts.createDetokenizer(parts.tokenizer);
  const pieces = ids.map((id) => detok.push(id));
  pieces.push(detok.flush());
  // " 😀" is two tokens (the space with 3 of the emoji's 4 bytes, then the last byte): the first yields only the space.
  assert.ok(pieces.some((p, i) => i < ids.length && p === ' '), `no token ended inside a character: ${JSON.stringify(pieces)}`);
  assert.ok(pieces.includes('😀'));
  for (const p of pieces) {
    assert.ok(!p.includes('\ufffd'), `replacement character in ${JSON.stringify(p)}`);
    assert.ok(!/[\ud800-\udbff]$/.test(p), `half a surrogate pair at the end of ${JSON.stringify(p)}`);
  }
  assert.equal(pieces.join(''), text);
  // EOS is a stop id for the engine; its text is never streamed.
  const d2 = parts.createDetokenizer(parts.tokenizer);
  assert.equal(d2.push(parts.tokenizer.eosId) + d2.flush(), '');
});

test('engine parts: the stop matcher holds back a partial stop string', async () => {
  await ready;
  const parts = await createEngineParts(dir, modelWithVocab(VOCAB_SIZE));
  const m = parts.createStopMatcher(['</answer>', 'STOP']);
  assert.deepEqual(m.push('The answer is 4</ans'), { text: 'The answer is 4', stopped: false });
  assert.deepEqual(m.push('x'), { text: '</ansx', stopped: false }); // no longer a prefix: released
  assert.deepEqual(m.push('er> ST'), { text: 'er> ', stopped: false });
  assert.deepEqual(m.push('OP and more'), { text: '', stopped: true });
  const m2 = parts.createStopMatcher(['</answer>']);
  assert.deepEqual(m2.push('done</an'), { text: 'done', stopped: false });
  assert.equal(m2.flush(), '</an'); // generation ended for another reason: the tail is released
  assert.deepEqual(parts.createStopMatcher([]).push('x</'), { text: 'x</', stopped: false });
});

test('engine parts: the sampler is seeded-reproducible', async () => {
  await ready;
  const parts = await createEngineParts(dir, modelWithVocab(VOCAB_SIZE));
  const logits = new Float32Array(VOCAB_SIZE);
  for (let i = 0; i < logits.length; i++) logits[i] = Math.sin(i * 12.9898) * 3; // fixed, not peaked
  const draw = (seed: number, params = { temperature: 1, topK: 50, topP: 0.9 }) => {
    const s = parts.createSampler({ ...params, seed });
    return Array.from({ length: 32 }, () => s.sample(logits));
  };
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
  assert.ok(new Set(draw(7)).size > 1, 'temperature 1 over 50 candidates drew one token 32 times');
  // Any integer seed (the server's schema allows negatives and past 2^32) is reduced modulo 2^32, not refused.
  assert.deepEqual(draw(-1), draw(2 ** 32 - 1));
  assert.deepEqual(draw(2 ** 40 + 7), draw(7));
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  assert.deepEqual(draw(1, { temperature: 0, topK: 0, topP: 1 }), Array(32).fill(best));
});

test('engine parts: a tokenizer larger than the model\'s embedding is refused', async () => {
  await ready;
  await assert.rejects(createEngineParts(dir, modelWithVocab(1024)), /129280 ids but the model's embedding only 1024/);
  await assert.rejects(createEngineParts(path.join(dir, 'absent'), modelWithVocab(VOCAB_SIZE)), /tokenizer\.json not found/);
});
