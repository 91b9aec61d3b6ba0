// The DeepSeek-V4 chat encoding against the official encoder's documented examples: the test vectors shipped
// with DeepSeek-V4's encoding/encoding_dsv4.py (tests/test_input_N.json -> test_output_N.txt; read in public
// copies, e.g. robertelee78/hf2q tests/fixtures/deepseek_v4_encoding/). Vector 2 is used whole; vector 4's
// system / user / assistant turns are used with its latest_reminder message and task left out (roles this
// encoder does not cover), which by the encoder's rules removes exactly those pieces from the expected string.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeChat, encodeChatText, type ChatMessageWithReasoning } from '../src/tokenizer/index.js';
import { v4Tokenizer } from './support/tokenizer.js';

const BOS = '<｜begin▁of▁sentence｜>', EOS = '<｜end▁of▁sentence｜>', U = '<｜User｜>', A = '<｜Assistant｜>';

test('official vector 2: thinking mode, earlier reasoning dropped, last reasoning kept', () => {
  const messages: ChatMessageWithReasoning[] = [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'Hello' },
    { role: 'assistant', reasoningContent: 'The user said hello, I should greet back.', content: 'Hi there! How can I help you?' },
    { role: 'user', content: 'What is the capital of France?' },
    { role: 'assistant', reasoningContent: 'The user asks about the capital of France. It is Paris.', content: 'The capital of France is Paris.' },
  ];
  const gold = '<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hello<｜Assistant｜></think>Hi there! How can I help you?<｜end▁of▁sentence｜><｜User｜>What is the capital of France?<｜Assistant｜><think>The user asks about the capital of France. It is Paris.</think>The capital of France is Paris.<｜end▁of▁sentence｜>';
  assert.equal(encodeChatText(messages, { thinking: true }), gold);
  assert.ok(!encodeChatText(messages, { thinking: true }).includes('The user said hello'));
});

test('official vector 4 (chat mode) without its latest_reminder and task', () => {
  const system = '该助手为DeepSeek-V3，由深度求索公司创造。\n今天是2025年10月17日，星期五。';
  const q1 = '热海大滚锅是世界著名温泉吗', a1 = '关于热海大滚锅是否是世界著名温泉，可以这样总结：它在**中国乃至全球的地热奇观中占有重要地位**。';
  const q2 = '世界著名温泉有哪些';
  const messages: ChatMessageWithReasoning[] = [
    { role: 'system', content: system }, { role: 'user', content: q1 }, { role: 'assistant', content: a1 },
    { role: 'user', content: q2 }, { role: 'assistant', content: 'Search' },
  ];
  assert.equal(encodeChatText(messages), `${BOS}${system}${U}${q1}${A}</think>${a1}${EOS}${U}${q2}${A}</think>Search${EOS}`);
});

test('generation prompts: chat opens with </think>, thinking with <think>; reasoning ignored in chat mode', () => {
  const q: ChatMessageWithReasoning[] = [{ role: 'user', content: 'Why?' }];
  assert.equal(encodeChatText(q), `${BOS}${U}Why?${A}</think>`);
  assert.equal(encodeChatText(q, { thinking: false }), `${BOS}${U}Why?${A}</think>`);
  assert.equal(encodeChatText(q, { thinking: true }), `${BOS}${U}Why?${A}<think>`);
  const multi: ChatMessageWithReasoning[] = [
    { role: 'system', content: 'S1' }, { role: 'system', content: 'S2' },
    { role: 'user', content: 'a' }, { role: 'assistant', content: 'b', reasoningContent: 'r' }, { role: 'user', content: 'c' },
  ];
  assert.equal(encodeChatText(multi, { thinking: true }), `${BOS}S1S2${U}a${A}</think>b${EOS}${U}c${A}<think>`);
  assert.equal(encodeChatText(multi), `${BOS}S1S2${U}a${A}</think>b${EOS}${U}c${A}</think>`);
  assert.equal(encodeChatText(q, { bos: false }), `${U}Why?${A}</think>`);
});

test('a user turn followed by another user or system message gets no assistant opening', () => {
  const m: ChatMessageWithReasoning[] = [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'system', content: 's' }, { role: 'user', content: 'c' }];
  assert.equal(encodeChatText(m, { thinking: true }), `${BOS}${U}a${U}b${'s'}${U}c${A}<think>`);
});

test('encodeChat: ids of the V4 prompt, special tokens as single ids', async () => {
  const tok = await v4Tokenizer();
  const ids = encodeChat([{ role: 'user', content: '你好' }], tok, { thinking: true });
  assert.deepEqual(ids, [0, 128803, 30594, 128804, 128821]);
  assert.deepEqual(encodeChat([{ role: 'system', content: 'system' }, { role: 'user', content: 'hi' }, { role: 'assistant', content: 'ok' }], tok),
    [0, 27824, 128803, 6366, 128804, 128822, 633, 1]);
  assert.deepEqual(encodeChat([{ role: 'user', content: '你好' }], tok), [0, 128803, 30594, 128804, 128822]);
});

test('bad messages are refused with the role and index', () => {
  assert.throws(() => encodeChatText([{ role: 'tool' as 'user', content: 'x' }]), /unknown role "tool" in message 0/);
  assert.throws(() => encodeChatText([{ role: 'user', content: undefined as unknown as string }]), /message 0 \(user\) has no string content/);
});
