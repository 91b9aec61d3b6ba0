// The list of CLI commands. Each module exports `register(program)`.
import type { Command } from 'commander';
import { register as registerBench } from './bench.js';
import { register as registerGenerate } from './generate.js';
import { register as registerInfo } from './info.js';
import { register as registerKernels } from './kernels.js';
import { register as registerMakeCheckpoint } from './make-checkpoint.js';
import { register as registerMoe } from './moe.js';
import { register as registerServe } from './serve.js';
import { register as registerVerify } from './verify.js';

export function registerCommands(program: Command): void {
  registerBench(program);
  registerGenerate(program);
  registerInfo(program);
  registerKernels(program);
  registerMakeCheckpoint(program);
  registerMoe(program);
  registerServe(program);
  registerVerify(program);
}
