// The V4 tokenizer as a synthetic checkpoint carries it, written once per test process into a temp folder.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadTokenizer, writeTokenizerFiles, type DeepSeekTokenizer } from '../../src/tokenizer/index.js';

let dir: string | undefined;
let tok: Promise<DeepSeekTokenizer> | undefined;

export async function tokenizerDir(): Promise<string> {
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-tokenizer-test-'));
    const d = dir;
    process.on('exit', () => fs.rmSync(d, { recursive: true, force: true }));
    await writeTokenizerFiles(dir);
  }
  return dir;
}

export function v4Tokenizer(): Promise<DeepSeekTokenizer> {
  tok ??= tokenizerDir().then(loadTokenizer);
  return tok;
}
