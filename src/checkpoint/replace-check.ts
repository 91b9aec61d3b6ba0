// What `make-checkpoint --force` may replace (issue 9): a folder that holds a megamoe or DeepSeek-V4 checkpoint and
// nothing else. A folder with any other file or sub-folder (a home directory, a project, a user's notes) is
// refused, naming what is in the way, so a mistyped --out never deletes anything that is not a checkpoint.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from './errors.js';

/** File names a checkpoint folder may hold (whole-model writers may add theirs here). */
export const CHECKPOINT_FILE_PATTERNS: RegExp[] = [
  /^config\.json$/, /^generation_config\.json$/, /^README\.md$/, /^LICENSE(\..*)?$/, /^\.gitattributes$/,
  /\.safetensors$/, /\.safetensors\.partial$/, /\.safetensors\.index\.json$/,
  /^tokenizer(_config)?\.json$/, /^special_tokens_map\.json$/, /^megamoe-manifest\.json$/, /^\.megamoe-/,
];

/** True when config.json says DeepSeek-V4 or megamoe wrote it. */
function isV4OrMegamoeConfig(file: string): boolean {
  try {
    const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    if (typeof cfg !== 'object' || cfg === null) return false;
    const arch = Array.isArray(cfg.architectures) ? cfg.architectures : [];
    return cfg.model_type === 'deepseek_v4' || cfg.megamoe_synthetic !== undefined
      || arch.some((a) => typeof a === 'string' && a.startsWith('DeepseekV4'));
  } catch {
    return false;
  }
}

/** Throws unless `dir` holds a megamoe/DeepSeek-V4 checkpoint and only checkpoint files. */
export function checkReplaceableCheckpoint(dir: string): void {
  const entries = fs.readdirSync(dir, { withFileTypes: true });
  const foreign = entries.filter((e) => !e.isFile() || !CHECKPOINT_FILE_PATTERNS.some((p) => p.test(e.name)));
  if (foreign.length > 0) {
    const names = foreign.slice(0, 3).map((e) => `"${e.name}"${e.isDirectory() ? ' (folder)' : ''}`).join(', ');
    throw new CheckpointError({ file: dir }, `--force replaces only a checkpoint folder, and this one also holds ${names}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''}; remove them yourself or choose another --out`);
  }
  if (!isV4OrMegamoeConfig(path.join(dir, 'config.json'))) {
    throw new CheckpointError({ file: dir }, '--force replaces only a megamoe or DeepSeek-V4 checkpoint, and this folder has no config.json saying so (model_type "deepseek_v4" or megamoe_synthetic); remove it yourself or choose another --out');
  }
}
