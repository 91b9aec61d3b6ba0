// Stop strings on streamed text: text that could still turn into a stop string is held back until it either
// completes one (generation stops; the stop string and anything after it are never emitted) or can no longer
// match (it is released). Works on whole characters: the detokenizer never hands it half a UTF-8 character, and
// a held-back suffix never starts inside a surrogate pair (no stop string starts with a low surrogate).

export interface StopPush {
  /** Text safe to emit now. */
  text: string;
  /** A stop string completed: generation ends, `text` is everything before it. */
  stopped: boolean;
  /** Which stop string matched, when stopped. */
  stopString?: string;
}

export class StopMatcher {
  private held = '';
  private readonly stops: string[];
  private readonly longest: number;

  constructor(stopStrings: readonly string[]) {
    this.stops = stopStrings.filter((s) => s.length > 0);
    this.longest = this.stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  push(text: string): StopPush {
    const buf = this.held + text;
    if (this.stops.length === 0) { this.held = ''; return { text: buf, stopped: false }; }
    // Earliest match wins; a match can only start in the held part or the new text, because everything emitted
    // before was checked to be no prefix of any stop string.
    let at = -1;
    let which: string | undefined;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) { at = i; which = s; }
    }
    if (at >= 0) { this.held = ''; return { text: buf.slice(0, at), stopped: true, stopString: which }; }
    const keep = this.partialMatchLength(buf);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** The end of the stream: held-back text can no longer complete a stop string. */
  flush(): string {
    const t = this.held;
    this.held = '';
    return t;
  }

  /** Characters currently held back. */
  get heldLength(): number {
    return this.held.length;
  }

  /** Length of the longest suffix of buf that is a proper prefix of some stop string. */
  private partialMatchLength(buf: string): number {
    for (let k = Math.min(buf.length, this.longest - 1); k > 0; k--) {
      const tail = buf.slice(buf.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) return k;
    }
    return 0;
  }
}
