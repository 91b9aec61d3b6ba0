#!/usr/bin/env python3
"""Known token ids for test/tokenizer-ids.test.ts, from a second, independent implementation.

The test's ids were printed by this script with Hugging Face's Rust `tokenizers` library (the implementation
DeepSeek's tokenizer.json is written for; here 0.23.2) on the tokenizer.json that `writeTokenizerFiles` writes.
Not run by CI (no Python packages there); rerun by hand after changing the tokenizer files:

    node -e "import('./dist/src/tokenizer/index.js').then(m => m.writeTokenizerFiles('/tmp/v4tok'))"
    python3 tools/tokenizer-oracle/known_ids.py /tmp/v4tok/tokenizer.json
"""
import json
import sys

from tokenizers import Tokenizer

CASES = [
    "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ",
    "深度求索公司创造了DeepSeek-V4，今天是2025年10月17日。",
    "東京タワーはとても高いです。ひらがなとカタカナ",
    "안녕하세요, 세계!",
    "emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "digits 1234567890 3.14159 -42 1,000,000 ٣٤٥",
    "line one\r\nline two\r\n\r\n  indented\ttab\n",
    "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>system<｜User｜>hi<｜Assistant｜></think>ok<｜end▁of▁sentence｜>",
    "｜DSML｜<｜latest_reminder｜><｜image｜><｜place▁holder▁no▁5｜><|place_holder_mm_span_0100|>",
    "Ünïcödé façade naïve café — “quotes” … ½ ™",
    "def f(x):\n    return x**2  # square\n",
    "   leading and trailing spaces   ",
    "a <｜User｜> b\n<think>\n x </think> y",
    " <｜Assistant｜>  \n\n",
    "<think><think></think>",
    "x<｜end▁of▁sentence｜>y <｜begin▁of▁sentence｜> z",
    "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">",
    "12345678901234567890",
    "\u00a0nbsp\u3000ideographic space",
    "tab\t\t\tend",
    "\r\r\n\n\r",
    "٠١٢ ١٢٣٤",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    "<|EOT|><｜fim▁hole｜>",
    "A\u0301 combining",
]

def main() -> None:
    tok = Tokenizer.from_file(sys.argv[1])
    out = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in CASES]
    print(json.dumps({"tokenizers": __import__("tokenizers").__version__, "cases": out}, ensure_ascii=False, indent=1))

if __name__ == "__main__":
    main()
