// Launcher of random_fill.cu: seeded random e4m3 weight codes, f32 block scales and bf16 hidden states generated on
// the GPU (benchmarks and large-shape tests; a checkpoint's real weights go through checkpoint/ instead).
import { arg, loadKernel, registerKernel, type DeviceBuffer, type Kernel, type StreamLike } from '../cuda/index.js';

const SOURCE = 'random_fill.cu';
const THREADS = 256;
/** Grid-stride loops: enough blocks to fill every SM several times, never more. */
const MAX_BLOCKS = 132 * 16;

registerKernel({
  name: 'random_fill',
  source: SOURCE,
  entry: 'megamoe_fill_e4m3, megamoe_fill_scales, megamoe_fill_bf16_normal',
  variants: [{ label: 'default', defines: {} }],
});

/**
 * The code RMS the weights get. Scales for a weight with fan-in K are then std / CODE_STD (times a uniform factor
 * in [0.75, 1.25]), so W ~ N(0, 1/K)-ish and the MoE's activations stay of order 1 for x ~ N(0, 1).
 */
export const RANDOM_CODE_STD = 64;

export class RandomFill {
  private constructor(private readonly kCodes: Kernel, private readonly kScales: Kernel, private readonly kBf16: Kernel) {}

  static async create(): Promise<RandomFill> {
    const [codes, scales, bf16] = await Promise.all([
      loadKernel({ source: SOURCE, entry: 'megamoe_fill_e4m3' }),
      loadKernel({ source: SOURCE, entry: 'megamoe_fill_scales' }),
      loadKernel({ source: SOURCE, entry: 'megamoe_fill_bf16_normal' }),
    ]);
    return new RandomFill(codes, scales, bf16);
  }

  private static blocks(n: number): number {
    return Math.max(1, Math.min(MAX_BLOCKS, Math.ceil(n / THREADS)));
  }

  /** `bytes` e4m3 codes at `buf` + `offset` (both multiples of 16). */
  e4m3(buf: DeviceBuffer, seed: number, options: { offset?: number; bytes?: number; codeStd?: number; stream?: StreamLike } = {}): void {
    const offset = options.offset ?? 0;
    const bytes = options.bytes ?? buf.byteLength - offset;
    if (offset % 16 !== 0 || bytes % 16 !== 0 || offset + bytes > buf.byteLength) {
      throw new RangeError(`random e4m3 fill: range [${offset}, ${offset + bytes}) must be 16-byte aligned and inside the ${buf.byteLength}-byte buffer`);
    }
    if (bytes === 0) return;
    const n16 = bytes / 16;
    this.kCodes.launch({ grid: RandomFill.blocks(n16), block: THREADS, stream: options.stream },
      [buf.ptr + BigInt(offset), arg.u64(n16), arg.u64(seed), arg.f32(options.codeStd ?? RANDOM_CODE_STD)]);
  }

  /** `count` f32 scales base * (0.75 + 0.5 u) at `buf` + `offset` bytes. */
  scales(buf: DeviceBuffer, seed: number, base: number, options: { offset?: number; count?: number; stream?: StreamLike } = {}): void {
    const offset = options.offset ?? 0;
    const count = options.count ?? (buf.byteLength - offset) / 4;
    if (offset % 4 !== 0 || !Number.isInteger(count) || offset + count * 4 > buf.byteLength) {
      throw new RangeError(`random scale fill: ${count} f32 at byte ${offset} do not fit the ${buf.byteLength}-byte buffer`);
    }
    if (count === 0) return;
    this.kScales.launch({ grid: RandomFill.blocks(count), block: THREADS, stream: options.stream },
      [buf.ptr + BigInt(offset), arg.u64(count), arg.u64(seed), arg.f32(base)]);
  }

  /** `count` bf16 values ~ N(0, 1) at the start of `buf`. */
  bf16Normal(buf: DeviceBuffer, seed: number, count: number, stream?: StreamLike): void {
    if (!Number.isInteger(count) || count * 2 > buf.byteLength) {
      throw new RangeError(`random bf16 fill: ${count} values do not fit the ${buf.byteLength}-byte buffer`);
    }
    if (count === 0) return;
    this.kBf16.launch({ grid: RandomFill.blocks(count), block: THREADS, stream }, [buf, arg.u64(count), arg.u64(seed)]);
  }
}
