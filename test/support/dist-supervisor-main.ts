// A supervisor process for the signal tests: starts 3 sleeping ranks, prints "pid <rank> <pid>" per rank and
// "ready" after the ready barrier, then waits to be signalled. Does nothing without --run: `node --test dist/test/`
// runs every .js file under test/, this one included.
import { runRanks } from '../../src/dist/supervisor.js';

const program = new URL('./dist-rank-program.js', import.meta.url);
if (process.argv.includes('--run')) runRanks({
  worldSize: 3, program, args: { mode: 'sleep', victim: 2 }, killGraceMs: 500,
  onSpawn: (rank, pid) => process.stdout.write(`pid ${rank} ${pid}\n`),
  onBarrier: (name) => { if (name === 'ready') process.stdout.write('ready\n'); },
}).then(() => process.exit(0), (err: Error) => {
  process.stderr.write(`${err.message}\n`);
  process.exit(9);
});
