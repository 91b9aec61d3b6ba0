// Option parsers shared by the CLI commands: each refuses bad text with commander's InvalidArgumentError, so the
// user sees the option's name, the allowed values and what was given, and nothing runs.
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

/** An option that must be one of `values`, spelled exactly. */
export function oneOf<T extends string>(name: string, values: readonly T[]) {
  return (text: string): T => {
    if (!(values as readonly string[]).includes(text)) throw new InvalidArgumentError(`${name} must be one of ${values.join(', ')}, got "${text}"`);
    return text as T;
  };
}
