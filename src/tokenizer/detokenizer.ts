// Streaming detokenization. DeepSeek's BPE is byte-level, so one token can end in the middle of a UTF-8 character
// (an emoji or a CJK character often spans two or three tokens). StreamDecoder accumulates bytes and emits only
// complete characters; what it emits, concatenated, is exactly decode(all ids) of the same tokenizer.
import type { TextTokenizer } from '../generate/contracts.js';
import type { ByteLevelTokenizer } from './tokenizer.js';

function isByteLevel(t: TextTokenizer): t is ByteLevelTokenizer {
  return typeof (t as Partial<ByteLevelTokenizer>).tokenBytes === 'function' && typeof (t as Partial<ByteLevelTokenizer>).isSpecial === 'function';
}

/**
 * Length of the longest prefix of bytes[0, n) that holds no incomplete UTF-8 sequence at its end. Invalid bytes
 * count as complete (they decode to U+FFFD at once): only a truly unfinished character is held back.
 */
export function completeUtf8Prefix(bytes: ArrayLike<number>, n = bytes.length): number {
  for (let i = n - 1; i >= 0 && i >= n - 4; i--) {
    const b = bytes[i];
    if ((b & 0xc0) === 0x80) continue; // continuation byte: look further back for its lead
    const need = b < 0x80 ? 1 : (b & 0xe0) === 0xc0 && b >= 0xc2 ? 2 : (b & 0xf0) === 0xe0 ? 3 : (b & 0xf8) === 0xf0 && b <= 0xf4 ? 4 : 1;
    return i + need > n ? i : n;
  }
  return n; // four or more continuation bytes in a row: invalid, nothing to wait for
}

export class StreamDecoder {
  private pending: number[] = [];
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  // Fallback for a tokenizer without token bytes: re-decode everything and emit the new tail.
  private readonly ids: number[] = [];
  private emitted = 0;

  constructor(private readonly tokenizer: TextTokenizer, private readonly opts: { skipSpecial?: boolean } = {}) {}

  /** Adds one token; returns the text that became complete (possibly ''). */
  push(id: number): string {
    const t = this.tokenizer;
    if (!isByteLevel(t)) return this.pushByDecode(id);
    if (this.opts.skipSpecial && t.isSpecial(id)) return '';
    const b = t.tokenBytes(id);
    for (let i = 0; i < b.length; i++) this.pending.push(b[i]);
    const cut = completeUtf8Prefix(this.pending);
    if (cut === 0) return '';
    const text = this.decoder.decode(Uint8Array.from(this.pending.slice(0, cut)));
    this.pending = this.pending.slice(cut);
    return text;
  }

  /** Ends the stream: whatever is held back, with U+FFFD for an unfinished character. */
  flush(): string {
    if (!isByteLevel(this.tokenizer)) {
      const all = this.tokenizer.decode(this.ids, { skipSpecial: this.opts.skipSpecial });
      const text = all.slice(this.emitted);
      this.emitted = all.length;
      return text;
    }
    if (this.pending.length === 0) return '';
    const text = this.decoder.decode(Uint8Array.from(this.pending));
    this.pending = [];
    return text;
  }

  /** Bytes held back waiting for the rest of a character (0 for the fallback path). */
  get heldBytes(): number {
    return this.pending.length;
  }

  private pushByDecode(id: number): string {
    this.ids.push(id);
    const all = this.tokenizer.decode(this.ids, { skipSpecial: this.opts.skipSpecial });
    // A trailing U+FFFD may be a character still arriving: hold it until more tokens (or flush) settle it.
    let end = all.length;
    while (end > this.emitted && all.charCodeAt(end - 1) === 0xfffd) end--;
    // Never end on the high half of a surrogate pair.
    if (end > this.emitted && (all.charCodeAt(end - 1) & 0xfc00) === 0xd800) end--;
    const text = all.slice(this.emitted, end);
    this.emitted = end;
    return text;
  }
}
