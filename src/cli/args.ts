// Option parsers shared by the CLI commands: each refuses bad text with commander's InvalidArgumentError, so the
// user sees the option's name, the allowed values and what was given, and nothing runs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError } from 'commander';

/** An integer option in [min, max]; "3abc", "1.5" and "-1" are refused rather than read as a prefix. */
export function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (text: string): number => {
    const v = Number(text);
    if (!/^\s*[0-9]+\s*$/.test(text) || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got "${text}"`);
    }
    return v;
  };
}

/** A list of integers in [min, max], separated by commas or spaces ("1,2,4,8" or "1 2 4 8"). */
export function intListArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  const one = intArg(name, min, max);
  return (text: string): number[] => {
    const parts = text.split(/[\s,]+/).filter((p) => p !== '');
    if (parts.length === 0) throw new InvalidArgumentError(`${name} needs at least one integer, got "${text}"`);
    return parts.map(one);
  };
}

/** An option that must be one of `values`, spelled exactly. */
export function oneOf<T extends string>(name: string, values: readonly T[]) {
  return (text: string): T => {
    if (!(values as readonly string[]).includes(text)) throw new InvalidArgumentError(`${name} must be one of ${values.join(', ')}, got "${text}"`);
    return text as T;
  };
}

/** --device: where the forward runs, cpu (the exact reference) or gpu (the whole step on one Hopper GPU). */
export function deviceArg(text: string): 'cpu' | 'gpu' {
  if (text !== 'cpu' && text !== 'gpu') throw new InvalidArgumentError(`--device must be cpu or gpu, got "${text}"`);
  return text;
}

/**
 * A `--model` (or other checkpoint-folder flag) path, resolved: a file is refused with a message saying to pass the
 * folder that holds it, a missing path is refused by name. Throws InvalidArgumentError.
 */
export function resolveModelDir(p: string, flag = '--model'): string {
  const abs = path.resolve(p);
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch {
    throw new InvalidArgumentError(`${flag} ${abs} does not exist; pass the checkpoint folder (the one holding config.json and the *.safetensors files)`);
  }
  if (!st.isDirectory()) {
    throw new InvalidArgumentError(`${flag} ${abs} is a file; pass the checkpoint folder that holds it (${flag} ${path.dirname(abs)}), the one with config.json and the *.safetensors files`);
  }
  return abs;
}
