// A checkpoint = one or more safetensors files. This module resolves a path (a .safetensors file, a directory
// with model.safetensors.index.json, or a directory of .safetensors files) into one name -> tensor view, and
// writes checkpoints back, split into shards past a size limit, with the index that Hugging Face tools read.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { allocStorage, HostTensor, numel, type DType } from '../tensor/host.js';
import { CheckpointError } from './errors.js';
import { checkExpectation, SafetensorsFile, SafetensorsWriter, tensorSpecBytes } from './safetensors.js';
import type { TensorExpectation, TensorInfo, TensorSpec } from './safetensors.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Read access to every tensor of a checkpoint, by name, whichever file it lives in. Shards open lazily. */
export class Checkpoint {
  /** The directory (or, for a lone file, the file) this checkpoint was opened from. */
  readonly root: string;
  /** The index file, when the checkpoint is sharded with one. */
  readonly indexFile: string | undefined;
  /** Every safetensors file of the checkpoint (absolute paths). */
  readonly files: readonly string[];
  private readonly location = new Map<string, string>();
  private readonly open = new Map<string, SafetensorsFile>();
  /** Tensors of a virtual checkpoint (Checkpoint.virtual): header and a generator of the bytes, no file. */
  private readonly generated = new Map<string, { info: TensorInfo; fill(out: Uint8Array): void }>();

  private constructor(root: string, indexFile: string | undefined, files: string[]) {
    this.root = root; this.indexFile = indexFile; this.files = files;
  }

  /**
   * Opens `p`: a `.safetensors` file, an `*.index.json` file, or a directory holding either
   * `model.safetensors.index.json` (sharded) or one or more `*.safetensors` files.
   */
  static open(p: string): Checkpoint {
    const abs = path.resolve(p);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
    } catch {
      throw new CheckpointError({ file: abs }, 'no such file or directory (pass a checkpoint directory, an index.json or a .safetensors file)');
    }
    if (stat.isFile()) {
      if (abs.endsWith('.json')) return Checkpoint.fromIndex(path.dirname(abs), abs);
      const ckpt = new Checkpoint(abs, undefined, [abs]);
      const file = ckpt.shard(abs);
      for (const name of file.names()) ckpt.location.set(name, abs);
      return ckpt;
    }
    const index = path.join(abs, INDEX_FILE);
    if (fs.existsSync(index)) return Checkpoint.fromIndex(abs, index);
    const entries = fs.readdirSync(abs);
    const others = entries.filter((f) => f.endsWith('.safetensors.index.json'));
    if (others.length === 1) return Checkpoint.fromIndex(abs, path.join(abs, others[0]));
    if (others.length > 1) throw new CheckpointError({ file: abs }, `several index files (${others.join(', ')}); pass the one to use`);
    const shards = entries.filter((f) => f.endsWith('.safetensors')).sort().map((f) => path.join(abs, f));
    if (shards.length === 0) throw new CheckpointError({ file: abs }, `no ${INDEX_FILE} and no *.safetensors files in this directory`);
    const ckpt = new Checkpoint(abs, undefined, shards);
    try {
      for (const shard of shards) {
        for (const name of ckpt.shard(shard).names()) {
          const other = ckpt.location.get(name);
          if (other) throw new CheckpointError({ file: shard, tensor: name }, `also present in ${other}; without an index the files must not repeat tensors`);
          ckpt.location.set(name, shard);
        }
      }
    } catch (err) {
      ckpt.close(); // every shard opened so far holds a file descriptor
      throw err;
    }
    return ckpt;
  }

  private static fromIndex(dir: string, indexPath: string): Checkpoint {
    let parsed: unknown;
    try {
      parsed = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
    } catch (err) {
      throw new CheckpointError({ file: indexPath }, `cannot read index: ${(err as Error).message}`);
    }
    if (!isPlainObject(parsed) || !isPlainObject(parsed.weight_map)) {
      throw new CheckpointError({ file: indexPath }, 'index has no "weight_map" object');
    }
    const byShard = new Map<string, string>(); // shard -> first tensor mapped to it (for error messages)
    const location = new Map<string, string>();
    for (const [name, shard] of Object.entries(parsed.weight_map)) {
      if (typeof shard !== 'string' || shard.length === 0) {
        throw new CheckpointError({ file: indexPath, tensor: name }, `weight_map entry is ${JSON.stringify(shard)}, expected a shard file name`);
      }
      const shardPath = path.resolve(dir, shard);
      if (!byShard.has(shardPath)) byShard.set(shardPath, name);
      location.set(name, shardPath);
    }
    for (const [shardPath, firstTensor] of byShard) {
      if (!fs.existsSync(shardPath)) {
        throw new CheckpointError({ file: shardPath, tensor: firstTensor }, `missing shard: ${path.basename(indexPath)} maps this tensor (and maybe others) to it, but the file does not exist`);
      }
    }
    const ckpt = new Checkpoint(dir, indexPath, [...byShard.keys()].sort());
    for (const [name, shard] of location) ckpt.location.set(name, shard);
    return ckpt;
  }

  /**
   * A checkpoint whose tensors exist only as generators (synthetic weights made in memory on read, e.g. a flash
   * model for `bench model` whose experts never leave the GPU): each read calls the tensor's `fill` into fresh
   * storage, nothing is cached. `root` names it in errors.
   */
  static virtual(root: string, tensors: ReadonlyArray<TensorSpec & { fill(out: Uint8Array): void }>): Checkpoint {
    const ckpt = new Checkpoint(root, undefined, []);
    let begin = 0;
    for (const t of tensors) {
      if (ckpt.generated.has(t.name)) throw new CheckpointError({ file: root, tensor: t.name }, 'appears twice in the virtual checkpoint');
      const bytes = tensorSpecBytes(t);
      ckpt.generated.set(t.name, { info: { name: t.name, dtype: t.dtype, shape: t.shape, begin, end: begin + bytes, file: root }, fill: t.fill });
      begin += bytes;
    }
    return ckpt;
  }

  names(): string[] { return [...this.location.keys(), ...this.generated.keys()]; }

  has(name: string): boolean { return this.location.has(name) || this.generated.has(name); }

  /** Header entry of a tensor (opens its shard's header if needed). */
  info(name: string): TensorInfo {
    const g = this.generated.get(name);
    if (g) return g.info;
    const file = this.location.get(name);
    if (!file) throw new CheckpointError({ file: this.indexFile ?? this.root, tensor: name }, `tensor not found in the checkpoint (${this.location.size} tensors)`);
    const shard = this.shard(file);
    if (!shard.has(name)) {
      throw new CheckpointError({ file, tensor: name }, `the index ${path.basename(this.indexFile ?? '')} places this tensor in this shard, but its header does not hold it`);
    }
    return shard.info(name);
  }

  /** Reads a tensor, refusing it (by file and name) when dtype or shape differ from `expect`. */
  read(name: string, expect: TensorExpectation = {}): HostTensor {
    const info = this.info(name);
    checkExpectation(info, expect);
    const g = this.generated.get(name);
    if (g) {
      const dtype = info.dtype as DType; // a virtual tensor's dtype is a TensorSpec's
      const storage = allocStorage(dtype, numel(info.shape));
      g.fill(new Uint8Array(storage.buffer, storage.byteOffset, storage.byteLength));
      return new HostTensor(dtype, info.shape, storage);
    }
    return this.shard(info.file).read(name);
  }

  /** Reads a tensor's raw bytes (into `dst` when given). */
  readBytes(name: string, dst?: Uint8Array): Uint8Array {
    const info = this.info(name);
    const g = this.generated.get(name);
    if (g) {
      const out = dst ?? new Uint8Array(info.end - info.begin);
      if (out.byteLength !== info.end - info.begin) throw new CheckpointError({ file: this.root, tensor: name }, `destination holds ${out.byteLength} bytes, the tensor has ${info.end - info.begin}`);
      g.fill(out);
      return out;
    }
    return this.shard(info.file).readBytes(name, dst);
  }

  /** The `__metadata__` of the file holding `name` (or of the single file). */
  metadataOf(name: string): Readonly<Record<string, string>> {
    if (this.generated.has(name)) return {};
    return this.shard(this.info(name).file).metadata;
  }

  close(): void {
    for (const f of this.open.values()) f.close();
    this.open.clear();
  }

  private shard(file: string): SafetensorsFile {
    let f = this.open.get(file);
    if (!f) { f = SafetensorsFile.open(file); this.open.set(file, f); }
    return f;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

export interface ShardPlan {
  file: string;
  specs: TensorSpec[];
  bytes: number;
}

/**
 * Splits tensors, in order, into shards of at most `maxShardBytes` data bytes (a tensor larger than the limit
 * gets a shard of its own). One shard is named model.safetensors; several are model-0000i-of-0000n.safetensors.
 */
export function planShards(specs: readonly TensorSpec[], maxShardBytes = Infinity): ShardPlan[] {
  if (!(maxShardBytes > 0)) throw new Error(`planShards: shard size must be positive, got ${maxShardBytes}`);
  const groups: { specs: TensorSpec[]; bytes: number }[] = [];
  let cur: { specs: TensorSpec[]; bytes: number } | undefined;
  for (const spec of specs) {
    const size = tensorSpecBytes(spec);
    if (!cur || (cur.specs.length > 0 && cur.bytes + size > maxShardBytes)) {
      cur = { specs: [], bytes: 0 };
      groups.push(cur);
    }
    cur.specs.push(spec);
    cur.bytes += size;
  }
  if (groups.length === 0) groups.push({ specs: [], bytes: 0 });
  const n = groups.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  return groups.map((g, i) => ({ ...g, file: n === 1 ? SINGLE_FILE : `model-${pad(i + 1)}-of-${pad(n)}.safetensors` }));
}

export interface CheckpointWriteOptions {
  /** Start a new shard when the next tensor would take the current one past this many bytes. */
  maxShardBytes?: number;
  /** `__metadata__` of every shard. */
  metadata?: Record<string, string>;
}

/**
 * Streams a checkpoint into a directory: tensors declared up front, their bytes written in that order; each
 * shard is a SafetensorsWriter (so unfinished shards stay *.partial), and the index is written by close() when
 * there is more than one shard.
 */
export class CheckpointWriter {
  readonly dir: string;
  readonly shards: readonly ShardPlan[];
  private readonly shardOf = new Map<string, number>();
  private readonly metadata: Record<string, string> | undefined;
  private current: SafetensorsWriter | undefined;
  private currentIndex = -1;
  private closed = false;

  private constructor(dir: string, shards: ShardPlan[], metadata?: Record<string, string>) {
    this.dir = dir; this.shards = shards; this.metadata = metadata;
    shards.forEach((s, i) => { for (const spec of s.specs) this.shardOf.set(spec.name, i); });
  }

  static create(dir: string, specs: readonly TensorSpec[], options: CheckpointWriteOptions = {}): CheckpointWriter {
    const seen = new Set<string>();
    for (const s of specs) {
      if (seen.has(s.name)) throw new CheckpointError({ file: dir, tensor: s.name }, 'declared twice');
      seen.add(s.name);
    }
    fs.mkdirSync(dir, { recursive: true });
    const writer = new CheckpointWriter(dir, planShards(specs, options.maxShardBytes ?? Infinity), options.metadata);
    writer.openShard(0);
    return writer;
  }

  /** Total tensor bytes across shards. */
  get totalBytes(): number { return this.shards.reduce((a, s) => a + s.bytes, 0); }

  write(name: string, data: ArrayBufferView): void {
    this.shardFor(name).write(name, data);
  }

  /** write() on the thread pool (see SafetensorsWriter.writeAsync): await each call before the next. */
  writeAsync(name: string, data: ArrayBufferView): Promise<void> {
    return this.shardFor(name).writeAsync(name, data);
  }

  /** The shard writer of tensor `name`, finishing earlier shards on the way. */
  private shardFor(name: string): SafetensorsWriter {
    const i = this.shardOf.get(name);
    if (i === undefined) throw new CheckpointError({ file: this.dir, tensor: name }, 'was not declared when the writer was created');
    while (this.currentIndex < i) {
      this.current!.close(); // throws, naming the tensor, if the current shard is unfinished
      this.openShard(this.currentIndex + 1);
    }
    return this.current!;
  }

  /** Finishes the last shard and writes the index (sharded checkpoints only). Returns the files written. */
  close(): string[] {
    if (this.closed) return this.shards.map((s) => path.join(this.dir, s.file));
    while (this.currentIndex < this.shards.length - 1) { this.current!.close(); this.openShard(this.currentIndex + 1); }
    this.current!.close();
    this.closed = true;
    const files = this.shards.map((s) => path.join(this.dir, s.file));
    if (this.shards.length > 1) {
      const weightMap: Record<string, string> = {};
      for (const name of [...this.shardOf.keys()].sort()) weightMap[name] = this.shards[this.shardOf.get(name)!].file;
      const index = { metadata: { total_size: this.totalBytes }, weight_map: weightMap };
      const indexPath = path.join(this.dir, INDEX_FILE);
      fs.writeFileSync(indexPath, JSON.stringify(index, null, 2) + '\n');
      files.push(indexPath);
    }
    return files;
  }

  abort(): void {
    this.current?.abort();
    this.closed = true;
  }

  private openShard(i: number): void {
    const plan = this.shards[i];
    this.current = SafetensorsWriter.create(path.join(this.dir, plan.file), plan.specs, { metadata: this.metadata });
    this.currentIndex = i;
  }
}

/** Writes whole host tensors as a (possibly sharded) checkpoint directory. */
export function writeCheckpoint(dir: string, tensors: Iterable<readonly [string, HostTensor]>,
  options: CheckpointWriteOptions = {}): string[] {
  const entries = [...tensors];
  const writer = CheckpointWriter.create(dir, entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })), options);
  try {
    for (const [name, t] of entries) if (t.byteLength > 0) writer.write(name, t.data);
    return writer.close();
  } catch (err) {
    writer.abort();
    throw err;
  }
}
