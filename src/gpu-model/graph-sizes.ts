// The batch sizes captured as decode CUDA graphs, and the padding of a decode call to the next one (vLLM's
// cudagraph capture sizes: 1, 2, 4, then steps of 8). A call of n one-token items replays the graph of the smallest
// size >= n; the missing items are padding rows on reserved cache slots (GpuModel), whose outputs are dropped. So a
// server whose batch size wanders captures a handful of graphs instead of one per distinct size.
import { GpuModelArgumentError } from './errors.js';

/** 1, 2, 4, then multiples of 8 below maxItems, and maxItems itself (every batch the model takes pads to a graph). */
export function defaultDecodeGraphSizes(maxItems: number): number[] {
  const sizes = [1, 2, 4].filter((s) => s < maxItems);
  for (let s = 8; s < maxItems; s += 8) sizes.push(s);
  sizes.push(maxItems);
  return sizes;
}

/** The sizes sorted and checked against the model's most items per call (maxItems, which a padded call may not pass). */
export function checkDecodeGraphSizes(sizes: readonly number[], maxItems: number): number[] {
  const what = 'GpuModel decodeGraphSizes';
  if (sizes.length === 0) throw new GpuModelArgumentError(what, 'the list is empty', 'pass at least one batch size, or turn decodeGraphs off');
  for (const s of sizes) {
    if (!(Number.isInteger(s) && s >= 1 && s <= maxItems)) {
      throw new GpuModelArgumentError(what, `size ${s} is outside [1, ${maxItems}] (maxItems)`, 'pass batch sizes between 1 and the most items of one call');
    }
  }
  return [...new Set(sizes)].sort((a, b) => a - b);
}

/** The captured size a decode call of n items pads to, or undefined above the largest (that call runs eagerly). */
export function decodeGraphSize(sizes: readonly number[], n: number): number | undefined {
  return sizes.find((s) => s >= n);
}

/** Padding items the worst call needs (the widest gap below a size): one reserved cache slot each. */
export function decodePadSlots(sizes: readonly number[]): number {
  let most = sizes[0] - 1;
  for (let i = 1; i < sizes.length; i++) most = Math.max(most, sizes[i] - sizes[i - 1] - 1);
  return most;
}
