#!/usr/bin/env node
// megamoe command line: each command lives in its own module under cli/commands and registers itself here.
import { Command } from 'commander';
import { registerCommands } from './commands/index.js';

const program = new Command();
program
  .name('megamoe')
  .description('DeepSeek-V4 mixture-of-experts inference on Hopper GPUs')
  .showHelpAfterError();
registerCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  // Clear, one-line errors for users; the stack only when asked for.
  const message = err instanceof Error ? err.message : String(err);
  console.error(`megamoe: ${message}`);
  if (process.env.MEGAMOE_DEBUG && err instanceof Error && err.stack) console.error(err.stack);
  process.exitCode = 1;
});
