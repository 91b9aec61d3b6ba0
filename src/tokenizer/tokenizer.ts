// A model folder's tokenizer (tokenizer.json + tokenizer_config.json), implementing the TextTokenizer contract on
// @huggingface/tokenizers (pure JS; encoding checked against the Rust `tokenizers` library, docs/TOKENIZER.md).
// Decoding is ours, from token bytes: DeepSeek's BPE is byte-level, so a token is a run of bytes, possibly half a
// UTF-8 character; streaming (detokenizer.ts) and whole decodes share this one byte path and so always agree.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import type { TextTokenizer } from '../generate/contracts.js';
import { TOKENIZER_FILES } from './files.js';
import { SPECIAL_IDS } from './special-tokens.js';

/** A tokenizer that can say which bytes each id stands for: what the streaming detokenizer needs. */
export interface ByteLevelTokenizer extends TextTokenizer {
  /** The bytes id stands for (UTF-8 of its text for an added token); empty for an id outside the vocabulary. */
  tokenBytes(id: number): Uint8Array;
  /** Whether id is an added token marked special (skipped by decode with skipSpecial). */
  isSpecial(id: number): boolean;
}

/** GPT-2's byte <-> printable-character map (bytes_to_unicode), inverted: code point -> byte. */
function byteLevelDecodeTable(): Map<number, number> {
  const bytes: number[] = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) { bytes.push(b); chars.push(256 + n); n++; }
  }
  const table = new Map<number, number>();
  for (let i = 0; i < bytes.length; i++) table.set(chars[i], bytes[i]);
  return table;
}

const BYTE_OF_CHAR = byteLevelDecodeTable();
const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();

interface TokenizerConfigJson {
  bos_token?: string | { content?: string } | null;
  eos_token?: string | { content?: string } | null;
}
interface GenerationConfigJson { bos_token_id?: number | number[]; eos_token_id?: number | number[] }

export class DeepSeekTokenizer implements ByteLevelTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  private readonly tok: Tokenizer;
  private readonly added: Map<number, { content: string; special: boolean }>;
  private readonly bytesCache: (Uint8Array | undefined)[];
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  constructor(tokenizerJson: object, tokenizerConfig: TokenizerConfigJson = {}, generationConfig: GenerationConfigJson = {}) {
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    this.added = new Map();
    for (const [id, t] of this.tok.get_added_tokens_decoder()) this.added.set(id, { content: t.content, special: t.special });
    let maxId = -1;
    for (const id of this.tok.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    this.bytesCache = new Array(this.vocabSize);
    this.bosId = this.specialId('bos', tokenizerConfig.bos_token, generationConfig.bos_token_id, SPECIAL_IDS.bos);
    this.eosId = this.specialId('eos', tokenizerConfig.eos_token, generationConfig.eos_token_id, SPECIAL_IDS.eos);
  }

  /** tokenizer_config's token string first (what HF does), then generation_config's id, then DeepSeek's. */
  private specialId(what: string, token: TokenizerConfigJson['bos_token'], genId: number | number[] | undefined, fallback: number): number {
    const text = typeof token === 'string' ? token : token?.content;
    if (text) {
      const id = this.tok.token_to_id(text);
      if (id === undefined) throw new Error(`tokenizer: ${what}_token ${JSON.stringify(text)} of tokenizer_config.json is not in the vocabulary`);
      return id;
    }
    const g = Array.isArray(genId) ? genId[0] : genId;
    return typeof g === 'number' ? g : fallback;
  }

  encode(text: string): number[] {
    // add_special_tokens false: the contract adds no BOS (the chat encoding writes its own).
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return EMPTY;
    const hit = this.bytesCache[id];
    if (hit) return hit;
    const added = this.added.get(id);
    let bytes: Uint8Array;
    if (added) {
      bytes = utf8.encode(added.content);
    } else {
      const token = this.tok.id_to_token(id);
      bytes = token === undefined ? EMPTY : byteLevelBytes(token);
    }
    this.bytesCache[id] = bytes;
    return bytes;
  }

  isSpecial(id: number): boolean {
    return this.added.get(id)?.special ?? false;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    const parts: Uint8Array[] = [];
    let n = 0;
    for (const id of ids) {
      if (opts.skipSpecial && this.isSpecial(id)) continue;
      const b = this.tokenBytes(id);
      parts.push(b);
      n += b.length;
    }
    const all = new Uint8Array(n);
    let at = 0;
    for (const b of parts) { all.set(b, at); at += b.length; }
    return this.decoder.decode(all);
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

/**
 * A vocabulary token's bytes: each character maps back through the byte-level table. A token with a character
 * outside the table is taken as its own UTF-8 (the Rust ByteLevel decoder's rule).
 */
function byteLevelBytes(token: string): Uint8Array {
  const out: number[] = [];
  for (const ch of token) {
    const b = BYTE_OF_CHAR.get(ch.codePointAt(0)!);
    if (b === undefined) return utf8.encode(token);
    out.push(b);
  }
  return Uint8Array.from(out);
}

function readJson(file: string, required: boolean): object | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`tokenizer: ${file} not found (a model folder needs tokenizer.json; synthetic checkpoints get one from writeTokenizerFiles)`);
    throw err;
  }
  try {
    return JSON.parse(text) as object;
  } catch (err) {
    throw new Error(`tokenizer: ${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/** The tokenizer of a model folder: tokenizer.json (required), tokenizer_config.json and generation_config.json. */
export async function loadTokenizer(modelDir: string): Promise<DeepSeekTokenizer> {
  const json = readJson(path.join(modelDir, TOKENIZER_FILES.tokenizer), true)!;
  const cfg = (readJson(path.join(modelDir, TOKENIZER_FILES.config), false) ?? {}) as TokenizerConfigJson;
  const gen = (readJson(path.join(modelDir, TOKENIZER_FILES.generation), false) ?? {}) as GenerationConfigJson;
  return new DeepSeekTokenizer(json, cfg, gen);
}
