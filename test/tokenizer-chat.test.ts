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

test('consecutive user messages form one turn; a user turn before a system message gets no assistant opening', () => {
  const m: ChatMessageWithReasoning[] = [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'system', content: 's' }, { role: 'user', content: 'c' }];
  assert.equal(encodeChatText(m, { thinking: true }), `${BOS}${U}a\n\nb${'s'}${U}c${A}<think>`);
});

// Expected strings from running the official encoder's code paths for these roles (encode_messages ->
// merge_tool_messages, _drop_thinking_messages, render_message; transcribed locally from encoding_dsv4.py, not
// shipped) on random conversations: 120 of them agreed with encodeChatText; these are a varied sample.
const OFFICIAL_LOGIC: { thinking: boolean; messages: ChatMessageWithReasoning[]; text: string }[] = [
  { thinking: false, messages: [{"role": "user", "content": "line\nbreak"}, {"role": "system", "content": "你好"}, {"role": "assistant", "content": "你好", "reasoningContent": "think a"}],
    text: "<｜begin▁of▁sentence｜><｜User｜>line\nbreak你好你好<｜end▁of▁sentence｜>" },
  { thinking: true, messages: [{"role": "user", "content": "line\nbreak"}, {"role": "system", "content": "你好"}, {"role": "assistant", "content": "你好", "reasoningContent": "think a"}],
    text: "<｜begin▁of▁sentence｜><｜User｜>line\nbreak你好think a</think>你好<｜end▁of▁sentence｜>" },
  { thinking: false, messages: [{"role": "user", "content": "Hi"}, {"role": "system", "content": "line\nbreak"}, {"role": "assistant", "content": "你好", "reasoningContent": ""}, {"role": "assistant", "content": "Hi"}, {"role": "system", "content": "ok"}],
    text: "<｜begin▁of▁sentence｜><｜User｜>Hiline\nbreak你好<｜end▁of▁sentence｜>Hi<｜end▁of▁sentence｜>ok" },
  { thinking: true, messages: [{"role": "user", "content": "Hi"}, {"role": "system", "content": "line\nbreak"}, {"role": "assistant", "content": "你好", "reasoningContent": ""}, {"role": "assistant", "content": "Hi"}, {"role": "system", "content": "ok"}],
    text: "<｜begin▁of▁sentence｜><｜User｜>Hiline\nbreak</think>你好<｜end▁of▁sentence｜></think>Hi<｜end▁of▁sentence｜>ok" },
  { thinking: false, messages: [{"role": "assistant", "content": "Hi", "reasoningContent": "推理"}, {"role": "system", "content": "ok"}, {"role": "system", "content": "2+2?"}, {"role": "user", "content": "line\nbreak"}, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "Paris.", "reasoningContent": ""}],
    text: "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>ok2+2?<｜User｜>line\nbreak\n\n你好<｜Assistant｜></think>Paris.<｜end▁of▁sentence｜>" },
  { thinking: true, messages: [{"role": "assistant", "content": "Hi", "reasoningContent": "推理"}, {"role": "system", "content": "ok"}, {"role": "system", "content": "2+2?"}, {"role": "user", "content": "line\nbreak"}, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "Paris.", "reasoningContent": ""}],
    text: "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>ok2+2?<｜User｜>line\nbreak\n\n你好<｜Assistant｜><think></think>Paris.<｜end▁of▁sentence｜>" },
  { thinking: false, messages: [{"role": "system", "content": "Hi"}, {"role": "assistant", "content": "ok", "reasoningContent": ""}, {"role": "assistant", "content": "😀", "reasoningContent": "推理"}, {"role": "user", "content": "Paris."}, {"role": "user", "content": "2+2?"}],
    text: "<｜begin▁of▁sentence｜>Hiok<｜end▁of▁sentence｜>😀<｜end▁of▁sentence｜><｜User｜>Paris.\n\n2+2?<｜Assistant｜></think>" },
  { thinking: true, messages: [{"role": "system", "content": "Hi"}, {"role": "assistant", "content": "ok", "reasoningContent": ""}, {"role": "assistant", "content": "😀", "reasoningContent": "推理"}, {"role": "user", "content": "Paris."}, {"role": "user", "content": "2+2?"}],
    text: "<｜begin▁of▁sentence｜>Hiok<｜end▁of▁sentence｜>😀<｜end▁of▁sentence｜><｜User｜>Paris.\n\n2+2?<｜Assistant｜><think>" },
  { thinking: false, messages: [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Paris.", "reasoningContent": "推理"}, {"role": "assistant", "content": "Paris."}, {"role": "system", "content": "你好"}, {"role": "assistant", "content": "line\nbreak", "reasoningContent": "推理"}, {"role": "user", "content": ""}],
    text: "<｜begin▁of▁sentence｜><｜User｜>你好<｜Assistant｜></think>Paris.<｜end▁of▁sentence｜>Paris.<｜end▁of▁sentence｜>你好line\nbreak<｜end▁of▁sentence｜><｜User｜><｜Assistant｜></think>" },
  { thinking: true, messages: [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Paris.", "reasoningContent": "推理"}, {"role": "assistant", "content": "Paris."}, {"role": "system", "content": "你好"}, {"role": "assistant", "content": "line\nbreak", "reasoningContent": "推理"}, {"role": "user", "content": ""}],
    text: "<｜begin▁of▁sentence｜><｜User｜>你好<｜Assistant｜></think>Paris.<｜end▁of▁sentence｜>Paris.<｜end▁of▁sentence｜>你好line\nbreak<｜end▁of▁sentence｜><｜User｜><｜Assistant｜><think>" },
  { thinking: false, messages: [{"role": "system", "content": "你好"}, {"role": "assistant", "content": "😀", "reasoningContent": "推理"}, {"role": "assistant", "content": "", "reasoningContent": "推理"}, {"role": "system", "content": "你好"}],
    text: "<｜begin▁of▁sentence｜>你好😀<｜end▁of▁sentence｜><｜end▁of▁sentence｜>你好" },
  { thinking: true, messages: [{"role": "system", "content": "你好"}, {"role": "assistant", "content": "😀", "reasoningContent": "推理"}, {"role": "assistant", "content": "", "reasoningContent": "推理"}, {"role": "system", "content": "你好"}],
    text: "<｜begin▁of▁sentence｜>你好推理</think>😀<｜end▁of▁sentence｜>推理</think><｜end▁of▁sentence｜>你好" },
  { thinking: false, messages: [{"role": "assistant", "content": "你好", "reasoningContent": ""}, {"role": "user", "content": ""}, {"role": "user", "content": "line\nbreak"}],
    text: "<｜begin▁of▁sentence｜>你好<｜end▁of▁sentence｜><｜User｜>\n\nline\nbreak<｜Assistant｜></think>" },
  { thinking: true, messages: [{"role": "assistant", "content": "你好", "reasoningContent": ""}, {"role": "user", "content": ""}, {"role": "user", "content": "line\nbreak"}],
    text: "<｜begin▁of▁sentence｜>你好<｜end▁of▁sentence｜><｜User｜>\n\nline\nbreak<｜Assistant｜><think>" },
];

test('random conversations: the official encoder logic\'s strings, in chat and thinking mode', () => {
  for (const c of OFFICIAL_LOGIC) assert.equal(encodeChatText(c.messages, { thinking: c.thinking }), c.text, JSON.stringify(c.messages.map((m) => m.role)));
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
  assert.throws(() => encodeChatText([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'developer' as 'user', content: 'x' }]), /unknown role "developer" in message 2/);
  assert.throws(() => encodeChatText([{ role: 'user', content: undefined as unknown as string }]), /message 0 \(user\) has no string content/);
});

test('parseCompletion: the official split of vector 2\'s last turn; chat mode is all content', async () => {
  const { parseCompletion } = await import('../src/tokenizer/index.js');
  const completion = 'The user asks about the capital of France. It is Paris.</think>The capital of France is Paris.<｜end▁of▁sentence｜>';
  assert.deepEqual(parseCompletion(completion, { thinking: true }), {
    reasoningContent: 'The user asks about the capital of France. It is Paris.', content: 'The capital of France is Paris.',
  });
  assert.deepEqual(parseCompletion('still thinking', { thinking: true }), { reasoningContent: 'still thinking', content: '' });
  assert.deepEqual(parseCompletion('a</think>b'), { reasoningContent: '', content: 'a</think>b' });
});

test('ReasoningSplitter: streamed deltas never carry part of </think>, and add up to parseCompletion', async () => {
  const { parseCompletion, ReasoningSplitter } = await import('../src/tokenizer/index.js');
  const text = 'think </th no, still <think-ing>... done</think>Answer with </ inside';
  for (let size = 1; size <= 7; size++) {
    const sp = new ReasoningSplitter({ thinking: true });
    let r = '', c = '';
    for (let i = 0; i < text.length; i += size) {
      const d = sp.push(text.slice(i, i + size));
      assert.ok(!d.reasoningContent.includes('</think') && !d.content.startsWith('>'), JSON.stringify(d));
      r += d.reasoningContent; c += d.content;
    }
    const f = sp.flush();
    r += f.reasoningContent; c += f.content;
    assert.deepEqual({ reasoningContent: r, content: c }, parseCompletion(text, { thinking: true }), `size ${size}`);
  }
  const chat = new ReasoningSplitter();
  assert.deepEqual(chat.push('a</think>'), { reasoningContent: '', content: 'a</think>' });
  const open = new ReasoningSplitter({ thinking: true });
  assert.deepEqual(open.push('half </thi'), { reasoningContent: 'half ', content: '' });
  assert.deepEqual(open.flush(), { reasoningContent: '</thi', content: '' });
});
