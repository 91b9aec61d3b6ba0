#!/usr/bin/env node
// megamoe command line: each command lives in its own module under cli/commands and registers itself here.
import { Command } from 'commander';
import { registerCommands } from './commands/index.js';
import { describeFsError, packageVersion } from './errors.js';

const program = new Command();
program
  .name('megamoe')
  .description('DeepSeek-V4 mixture-of-experts inference on Hopper GPUs')
  .version(packageVersion(), '-V, --version', 'print the megamoe version')
  // Every command (and subcommand, which inherit this) refuses positional arguments it does not declare.
  .allowExcessArguments(false)
  .showHelpAfterError();
registerCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  // Clear, one-line errors for users; the stack only when asked for.
  const message = describeFsError(err) ?? (err instanceof Error ? err.message : String(err));
  console.error(`megamoe: ${message}`);
  if (process.env.MEGAMOE_DEBUG && err instanceof Error && err.stack) console.error(err.stack);
  process.exitCode = 1;
});
