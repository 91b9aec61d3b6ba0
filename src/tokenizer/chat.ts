// The DeepSeek-V4 prompt encoding. V4 ships a Python encoder (encoding/encoding_dsv4.py, `encode_messages`), not
// a jinja template; this is our implementation of its documented behaviour for system / user / assistant turns,
// checked against the official test vectors (test/tokenizer-chat.test.ts, docs/TOKENIZER.md):
//  - the prompt starts with BOS; system content follows it bare (no role token), several system messages in a
//    row simply concatenate;
//  - consecutive user messages form one user turn, joined by a blank line;
//  - a user turn is <｜User｜>content; when it is the last message or an assistant turn follows, it is followed by
//    <｜Assistant｜> and then <think> (thinking mode, last user turn) or </think> (chat mode, and the earlier
//    turns of a thinking conversation); before another user or system message nothing follows it;
//  - an assistant turn is [reasoning</think>]content<｜end▁of▁sentence｜>: the reasoning part only in thinking
//    mode and only after the last user turn (earlier reasoning is dropped, the official drop_thinking default);
//  - the tokens are the tokenizer's encoding of that string, special-token strings parsed as special tokens.
// Tool calls, tool results, developer / latest_reminder roles, tasks and reasoning-effort prompts are not
// covered (ChatMessage has no fields for them).
import type { ChatMessage, TextTokenizer } from '../generate/contracts.js';
import { ASSISTANT_TOKEN, BOS_TOKEN, EOS_TOKEN, THINK_END, THINK_START, USER_TOKEN } from './special-tokens.js';

/** A chat message with an assistant turn's reasoning (its <think> part), which the V4 encoding can carry. */
export interface ChatMessageWithReasoning extends ChatMessage {
  /** Assistant turns only: the reasoning text, kept in thinking mode after the last user turn. */
  reasoningContent?: string;
}

export interface ChatEncodeOptions {
  /** Thinking mode: the assistant turn opens with <think>; default false (chat mode, opens with </think>). */
  thinking?: boolean;
  /** Prepend BOS; default true. */
  bos?: boolean;
}

/** The V4 prompt as text (what `encode_messages(messages, thinking_mode)` returns for these roles). */
export function encodeChatText(input: readonly ChatMessageWithReasoning[], opts: ChatEncodeOptions = {}): string {
  const thinking = opts.thinking ?? false;
  const messages = mergeUserRuns(input);
  let lastUser = -1;
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === 'user') { lastUser = i; break; }
  let out = opts.bos ?? true ? BOS_TOKEN : '';
  messages.forEach((m, i) => {
    switch (m.role) {
      case 'system':
        out += m.content;
        break;
      case 'user': {
        out += USER_TOKEN + m.content;
        const next = messages[i + 1];
        // The assistant opening follows a user turn that ends the list (the generation prompt) or that an
        // assistant turn answers; before another user or system message there is none (official behaviour).
        if (!next || next.role === 'assistant') out += ASSISTANT_TOKEN + (thinking && i >= lastUser ? THINK_START : THINK_END);
        break;
      }
      case 'assistant': {
        const reasoning = thinking && i > lastUser ? (m.reasoningContent ?? '') + THINK_END : '';
        out += reasoning + m.content + EOS_TOKEN;
        break;
      }
      default:
        throw new Error(`chat: unknown role ${JSON.stringify((m as ChatMessage).role)}`); // refused in mergeUserRuns
    }
  });
  return out;
}

/**
 * Consecutive user messages become one user turn, their contents joined by a blank line: the official encoder
 * turns every user message into content blocks and appends a user message to the user turn before it
 * (merge_tool_messages), rendering the blocks joined by "\n\n".
 */
function mergeUserRuns(messages: readonly ChatMessageWithReasoning[]): ChatMessageWithReasoning[] {
  const out: ChatMessageWithReasoning[] = [];
  messages.forEach((m, i) => {
    if (typeof m.content !== 'string') throw new Error(`chat: message ${i} (${m.role}) has no string content`);
    if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant') {
      throw new Error(`chat: unknown role ${JSON.stringify(m.role)} in message ${i} (expected system, user or assistant)`);
    }
    const prev = out[out.length - 1];
    if (m.role === 'user' && prev?.role === 'user') out[out.length - 1] = { ...prev, content: `${prev.content}\n\n${m.content}` };
    else out.push(m);
  });
  return out;
}

/** The V4 prompt as token ids, ready for generate(). */
export function encodeChat(messages: readonly ChatMessageWithReasoning[], tokenizer: TextTokenizer, opts: ChatEncodeOptions = {}): number[] {
  return tokenizer.encode(encodeChatText(messages, opts));
}

/** An assistant completion split the way the official parser splits it (tool calls not handled). */
export interface ParsedCompletion { reasoningContent: string; content: string }

/**
 * Splits generated text into reasoning and answer, like the official parse_message_from_completion_text without
 * tool calls: in thinking mode everything before the first </think> is reasoning (all of it, while no </think>
 * came); in chat mode it is all content. A trailing EOS string, if the text kept it, is dropped.
 */
export function parseCompletion(text: string, opts: { thinking?: boolean } = {}): ParsedCompletion {
  const body = text.endsWith(EOS_TOKEN) ? text.slice(0, -EOS_TOKEN.length) : text;
  if (!opts.thinking) return { reasoningContent: '', content: body };
  const at = body.indexOf(THINK_END);
  if (at < 0) return { reasoningContent: body, content: '' };
  return { reasoningContent: body.slice(0, at), content: body.slice(at + THINK_END.length) };
}

/**
 * The same split on streamed text: feed chunk texts, get reasoning and content deltas. A piece that could be the
 * start of </think> is held back until it is decided, so no delta ever carries part of the marker.
 */
export class ReasoningSplitter {
  private inReasoning: boolean;
  private held = '';

  constructor(opts: { thinking?: boolean } = {}) {
    this.inReasoning = opts.thinking ?? false;
  }

  push(text: string): ParsedCompletion {
    if (!this.inReasoning) return { reasoningContent: '', content: text };
    const buf = this.held + text;
    const at = buf.indexOf(THINK_END);
    if (at >= 0) {
      this.inReasoning = false;
      this.held = '';
      return { reasoningContent: buf.slice(0, at), content: buf.slice(at + THINK_END.length) };
    }
    let keep = 0;
    for (let k = Math.min(buf.length, THINK_END.length - 1); k > 0; k--) if (THINK_END.startsWith(buf.slice(buf.length - k))) { keep = k; break; }
    this.held = buf.slice(buf.length - keep);
    return { reasoningContent: buf.slice(0, buf.length - keep), content: '' };
  }

  /** The end of the stream: held text was reasoning after all. */
  flush(): ParsedCompletion {
    const r = { reasoningContent: this.held, content: '' };
    this.held = '';
    return r;
  }

  /** Whether the stream is still inside the reasoning part. */
  get reasoning(): boolean { return this.inReasoning; }
}
