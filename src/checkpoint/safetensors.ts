// safetensors, one file: reader and streaming writer.
//
// Layout: an 8-byte little-endian u64 N, N bytes of JSON header, then the data section. The header maps each
// tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data section) and may hold
// a "__metadata__" object of strings. The header may be padded with trailing spaces.
//
// The reader reads a tensor BY OFFSET into that tensor's own buffer (fs.readSync at a position): a real shard is
// several GB, past what one Node Buffer can hold, and a rank needs only its own experts. Every problem is a
// CheckpointError naming the file, the tensor and what is wrong.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { allocStorage, DTYPE_BYTES, HostTensor, isDType, numel } from '../tensor/host.js';
import type { DType } from '../tensor/host.js';
import { CheckpointError } from './errors.js';
import { registerTemp } from '../util/temp-dirs.js';

/** Bits per element of every dtype the safetensors format defines (we can read the ones that are also a DType). */
export const SAFETENSORS_DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, I16: 16, U16: 16, F16: 16, BF16: 16,
  I32: 32, U32: 32, F32: 32, I64: 64, U64: 64, F64: 64, F4: 4, F6_E2M3: 6, F6_E3M2: 6, C64: 64,
};

/** The official implementation refuses headers above 100 MB; a larger N is surely a corrupt length field. */
export const MAX_HEADER_BYTES = 100_000_000;
/** One readSync/writeSync moves at most this much (Node refuses single transfers of 2 GiB and more). */
const IO_CHUNK = 1 << 30;

export interface TensorInfo {
  name: string;
  /** The dtype string exactly as the header gives it (may be one we cannot hand out, e.g. F16). */
  dtype: string;
  shape: readonly number[];
  /** Byte range [begin, end) inside the data section. */
  begin: number;
  end: number;
  /** The file that holds it. */
  file: string;
}

export interface TensorExpectation {
  /** Accepted dtypes (one or several). */
  dtype?: DType | readonly DType[];
  /** Exact shape. */
  shape?: readonly number[];
}

function assertLittleEndianHost(file: string): void {
  // safetensors is little-endian and so are typed arrays on every host Node runs on in practice; say so if not.
  if (os.endianness() !== 'LE') throw new CheckpointError({ file }, 'this host is big-endian; safetensors data is little-endian and is read without byte swapping');
}

function describeShape(shape: readonly number[]): string { return `[${shape.join(', ')}]`; }

/** Reads exactly dst.byteLength bytes at `position`, in chunks; fewer bytes means the file is shorter than it claimed. */
function readFully(fd: number, dst: Uint8Array, position: number, file: string, tensor?: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const want = Math.min(IO_CHUNK, dst.byteLength - done);
    const got = fs.readSync(fd, dst, done, want, position + done);
    if (got === 0) {
      throw new CheckpointError({ file, tensor }, `file ended after ${position + done} bytes while reading ${dst.byteLength} bytes at offset ${position} (truncated file?)`);
    }
    done += got;
  }
}

function writeFully(fd: number, src: Uint8Array): void {
  let done = 0;
  while (done < src.byteLength) {
    done += fs.writeSync(fd, src, done, Math.min(IO_CHUNK, src.byteLength - done));
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Validates one header entry and returns its TensorInfo (offsets not yet checked against the file). */
function parseEntry(file: string, name: string, entry: unknown): TensorInfo {
  if (!isPlainObject(entry)) throw new CheckpointError({ file, tensor: name }, `header entry is ${JSON.stringify(entry)}, expected an object {dtype, shape, data_offsets}`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string') throw new CheckpointError({ file, tensor: name }, `header entry has no string "dtype" (got ${JSON.stringify(dtype)})`);
  const bits = SAFETENSORS_DTYPE_BITS[dtype];
  if (bits === undefined) {
    throw new CheckpointError({ file, tensor: name }, `unknown dtype "${dtype}"; safetensors dtypes are ${Object.keys(SAFETENSORS_DTYPE_BITS).join(', ')}`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw new CheckpointError({ file, tensor: name }, `"shape" must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger) || offsets[0] > offsets[1]) {
    throw new CheckpointError({ file, tensor: name }, `"data_offsets" must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as number[];
  const elementBits = numel(shape) * bits;
  if (elementBits % 8 !== 0) {
    throw new CheckpointError({ file, tensor: name }, `${dtype}${describeShape(shape)} is not a whole number of bytes`);
  }
  if (end - begin !== elementBits / 8) {
    throw new CheckpointError({ file, tensor: name }, `size mismatch: ${dtype}${describeShape(shape)} needs ${elementBits / 8} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
  }
  return { name, dtype, shape: Object.freeze([...shape]), begin, end, file };
}

export class SafetensorsFile {
  readonly path: string;
  /** The header's "__metadata__" strings (empty object when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** File offset of the data section (8 + header length). */
  readonly dataStart: number;
  readonly fileSize: number;
  private fd: number | undefined;
  private readonly tensors: Map<string, TensorInfo>;

  private constructor(path: string, fd: number, fileSize: number, dataStart: number,
    metadata: Record<string, string>, tensors: Map<string, TensorInfo>) {
    this.path = path; this.fd = fd; this.fileSize = fileSize; this.dataStart = dataStart;
    this.metadata = Object.freeze(metadata); this.tensors = tensors;
  }

  /** Opens the file and validates its whole header (not the data): sizes, offsets, overlaps, file length. */
  static open(path: string): SafetensorsFile {
    assertLittleEndianHost(path);
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new CheckpointError({ file: path }, code === 'ENOENT' ? 'no such file' : `cannot open: ${(err as Error).message}`);
    }
    try {
      return SafetensorsFile.parse(path, fd);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  private static parse(path: string, fd: number): SafetensorsFile {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new CheckpointError({ file: path }, 'not a regular file');
    const fileSize = stat.size;
    if (fileSize < 8) throw new CheckpointError({ file: path }, `file is ${fileSize} bytes, shorter than the 8-byte header length (truncated or not a safetensors file)`);
    const lenBytes = new Uint8Array(8);
    readFully(fd, lenBytes, 0, path);
    const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (headerLen < 2n || headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new CheckpointError({ file: path }, `bad header length ${headerLen} (must be 2..${MAX_HEADER_BYTES}); not a safetensors file?`);
    }
    const n = Number(headerLen);
    if (8 + n > fileSize) {
      throw new CheckpointError({ file: path }, `header length ${n} runs past the end of the ${fileSize}-byte file (truncated file?)`);
    }
    const headerBytes = new Uint8Array(n);
    readFully(fd, headerBytes, 8, path);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    } catch {
      throw new CheckpointError({ file: path }, 'header is not valid UTF-8');
    }
    if (!text.startsWith('{')) throw new CheckpointError({ file: path }, `header does not start with "{" (starts with ${JSON.stringify(text.slice(0, 16))})`);
    let header: unknown;
    try {
      header = JSON.parse(text);
    } catch (err) {
      throw new CheckpointError({ file: path }, `header is not valid JSON: ${(err as Error).message}`);
    }
    if (!isPlainObject(header)) throw new CheckpointError({ file: path }, 'header JSON is not an object');

    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    let metadata: Record<string, string> = {};
    const tensors = new Map<string, TensorInfo>();
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') {
        if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
          throw new CheckpointError({ file: path }, '"__metadata__" must be an object of string values');
        }
        metadata = { ...(entry as Record<string, string>) };
        continue;
      }
      const info = parseEntry(path, name, entry);
      if (info.end > dataSize) {
        throw new CheckpointError({ file: path, tensor: name }, `data_offsets [${info.begin}, ${info.end}] run past the end of the data section (${dataSize} bytes; truncated file?)`);
      }
      tensors.set(name, info);
    }
    // Two tensors must never share bytes: sort by start and compare neighbours (empty tensors overlap nothing).
    const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]; const cur = sorted[i];
      if (cur.begin < prev.end) {
        throw new CheckpointError({ file: path, tensor: cur.name }, `data_offsets [${cur.begin}, ${cur.end}] overlap tensor "${prev.name}" [${prev.begin}, ${prev.end}]`);
      }
    }
    return new SafetensorsFile(path, fd, fileSize, dataStart, metadata, tensors);
  }

  names(): string[] { return [...this.tensors.keys()]; }

  has(name: string): boolean { return this.tensors.has(name); }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new CheckpointError({ file: this.path, tensor: name }, `tensor not found (the file holds ${this.tensors.size} tensors)`);
    return info;
  }

  /** The tensor's raw bytes, read at its offset into `dst` (a fresh buffer when omitted). */
  readBytes(name: string, dst?: Uint8Array): Uint8Array {
    const info = this.info(name);
    const size = info.end - info.begin;
    const out = dst ?? new Uint8Array(size);
    if (out.byteLength !== size) throw new CheckpointError({ file: this.path, tensor: name }, `destination holds ${out.byteLength} bytes, the tensor has ${size}`);
    readFully(this.requireFd(name), out, this.dataStart + info.begin, this.path, name);
    return out;
  }

  /**
   * Reads one tensor into its own typed storage. `expect` checks dtype and shape first, so a wrong tensor is
   * refused by name before any bytes move.
   */
  read(name: string, expect: TensorExpectation = {}): HostTensor {
    const info = this.info(name);
    checkExpectation(info, expect);
    if (!isDType(info.dtype)) {
      throw new CheckpointError({ file: this.path, tensor: name }, `dtype ${info.dtype} is a valid safetensors dtype but megamoe has no host storage for it (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
    }
    const dtype: DType = info.dtype;
    const storage = allocStorage(dtype, numel(info.shape));
    const bytes = new Uint8Array(storage.buffer, storage.byteOffset, storage.byteLength);
    readFully(this.requireFd(name), bytes, this.dataStart + info.begin, this.path, name);
    return new HostTensor(dtype, info.shape, storage);
  }

  close(): void {
    if (this.fd !== undefined) { fs.closeSync(this.fd); this.fd = undefined; }
  }

  private requireFd(name: string): number {
    if (this.fd === undefined) throw new CheckpointError({ file: this.path, tensor: name }, 'file was already closed');
    return this.fd;
  }
}

/** Refuses a tensor whose dtype or shape is not what the caller needs, naming file, tensor, found and expected. */
export function checkExpectation(info: TensorInfo, expect: TensorExpectation): void {
  if (expect.dtype !== undefined) {
    const allowed: readonly string[] = typeof expect.dtype === 'string' ? [expect.dtype] : expect.dtype;
    if (!allowed.includes(info.dtype)) {
      throw new CheckpointError({ file: info.file, tensor: info.name }, `dtype mismatch: stored as ${info.dtype}, expected ${allowed.join(' or ')}`);
    }
  }
  if (expect.shape !== undefined) {
    const same = expect.shape.length === info.shape.length && expect.shape.every((d, i) => d === info.shape[i]);
    if (!same) throw new CheckpointError({ file: info.file, tensor: info.name }, `shape mismatch: stored as ${describeShape(info.shape)}, expected ${describeShape(expect.shape)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

export function tensorSpecBytes(spec: TensorSpec): number {
  return numel(spec.shape) * DTYPE_BYTES[spec.dtype];
}

export interface SafetensorsWriteOptions {
  /** Strings stored under "__metadata__". */
  metadata?: Record<string, string>;
}

/** Builds the padded header (JSON + spaces to an 8-byte boundary, so the data section starts aligned). */
export function buildHeader(file: string, specs: readonly TensorSpec[], metadata?: Record<string, string>,
  maxHeaderBytes = MAX_HEADER_BYTES): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new CheckpointError({ file }, `__metadata__ value of "${k}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const spec of specs) {
    if (!spec.name || spec.name === '__metadata__') throw new CheckpointError({ file, tensor: spec.name }, 'invalid tensor name');
    if (Object.prototype.hasOwnProperty.call(header, spec.name)) throw new CheckpointError({ file, tensor: spec.name }, 'declared twice');
    if (!isDType(spec.dtype)) throw new CheckpointError({ file, tensor: spec.name }, `unknown dtype ${String(spec.dtype)}`);
    if (!spec.shape.every(isNonNegativeInteger)) throw new CheckpointError({ file, tensor: spec.name }, `invalid shape ${describeShape(spec.shape)}`);
    const size = tensorSpecBytes(spec);
    header[spec.name] = { dtype: spec.dtype, shape: [...spec.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded > maxHeaderBytes) {
    throw new CheckpointError({ file }, `the header of ${specs.length} tensors would be ${padded} bytes, above the ${maxHeaderBytes}-byte limit safetensors readers accept; split the tensors over several files (make-checkpoint --shard-size)`);
  }
  const out = new Uint8Array(8 + padded);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.byteLength); // the format allows trailing spaces as padding
  return out;
}

function viewBytes(data: ArrayBufferView): Uint8Array {
  return data instanceof Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Streams tensors into one file: the header (all names, dtypes, shapes declared up front) goes first, then each
 * tensor's bytes in the declared order, whole or in pieces. The file is written as `<path>.partial` and renamed
 * on close(), so an interrupted run never leaves something that looks like a finished file.
 */
export class SafetensorsWriter {
  readonly path: string;
  readonly specs: readonly TensorSpec[];
  private readonly tempPath: string;
  private fd: number | undefined;
  private next = 0;
  private writtenOfCurrent = 0;
  private busy = false;
  private tempGuard: { release(): void } | undefined;

  private constructor(path: string, specs: readonly TensorSpec[], fd: number, tempPath: string) {
    this.path = path; this.specs = specs; this.fd = fd; this.tempPath = tempPath;
  }

  static create(path: string, specs: readonly TensorSpec[], options: SafetensorsWriteOptions = {}): SafetensorsWriter {
    assertLittleEndianHost(path);
    const header = buildHeader(path, specs, options.metadata);
    const tempPath = `${path}.partial`;
    const fd = fs.openSync(tempPath, 'w');
    const writer = new SafetensorsWriter(path, [...specs], fd, tempPath);
    writer.tempGuard = registerTemp(tempPath); // an interrupted process removes its .partial file
    try {
      writeFully(fd, header);
    } catch (err) {
      writer.abort();
      throw err;
    }
    writer.skipEmpty();
    return writer;
  }

  /** The name of the tensor whose bytes are due next, or undefined when all are written. */
  get pending(): string | undefined { return this.specs[this.next]?.name; }

  /** Appends bytes of tensor `name` (the next one due); a tensor may come in several pieces. */
  write(name: string, data: ArrayBufferView): void {
    const bytes = this.accept(name, data);
    writeFully(this.fd!, bytes);
    this.advance(bytes.byteLength);
  }

  /**
   * Same as write(), but the bytes go out on libuv's thread pool, so the caller can prepare the next tensor
   * meanwhile. One write at a time: await it before the next call, and leave `data` untouched until then.
   */
  async writeAsync(name: string, data: ArrayBufferView): Promise<void> {
    const bytes = this.accept(name, data);
    const fd = this.fd!;
    this.busy = true;
    try {
      let done = 0;
      while (done < bytes.byteLength) {
        done += await new Promise<number>((resolve, reject) => {
          fs.write(fd, bytes, done, Math.min(IO_CHUNK, bytes.byteLength - done), null, (err, n) => (err ? reject(err) : resolve(n)));
        });
      }
    } finally {
      this.busy = false;
    }
    this.advance(bytes.byteLength);
  }

  /** Validates the next piece of tensor `name` and returns it as bytes. */
  private accept(name: string, data: ArrayBufferView): Uint8Array {
    if (this.fd === undefined) throw new CheckpointError({ file: this.path, tensor: name }, 'writer is closed');
    if (this.busy) throw new CheckpointError({ file: this.path, tensor: name }, 'a previous writeAsync() is still in flight; await it first');
    const spec = this.specs[this.next];
    if (!spec) throw new CheckpointError({ file: this.path, tensor: name }, 'all declared tensors are already written');
    if (spec.name !== name) throw new CheckpointError({ file: this.path, tensor: name }, `out of order: tensor "${spec.name}" is due next (tensors are written in the order declared)`);
    const bytes = viewBytes(data);
    const size = tensorSpecBytes(spec);
    if (this.writtenOfCurrent + bytes.byteLength > size) {
      throw new CheckpointError({ file: this.path, tensor: name }, `got ${this.writtenOfCurrent + bytes.byteLength} bytes, but ${spec.dtype}${describeShape(spec.shape)} has ${size}`);
    }
    return bytes;
  }

  private advance(written: number): void {
    this.writtenOfCurrent += written;
    if (this.writtenOfCurrent === tensorSpecBytes(this.specs[this.next])) { this.next++; this.writtenOfCurrent = 0; this.skipEmpty(); }
  }

  /** Checks that every declared tensor was written, then moves the file into place. */
  close(): void {
    if (this.fd === undefined) return;
    if (this.busy) throw new CheckpointError({ file: this.path }, 'close() while a writeAsync() is in flight; await it first');
    if (this.next < this.specs.length) {
      const missing = this.specs[this.next].name;
      this.abort();
      throw new CheckpointError({ file: this.path, tensor: missing }, `closed before all tensors were written (${this.specs.length - this.next} missing)`);
    }
    fs.closeSync(this.fd);
    this.fd = undefined;
    fs.renameSync(this.tempPath, this.path);
    this.tempGuard?.release();
  }

  /** Drops the partial file. */
  abort(): void {
    if (this.fd !== undefined) { fs.closeSync(this.fd); this.fd = undefined; }
    fs.rmSync(this.tempPath, { force: true });
    this.tempGuard?.release();
  }

  private skipEmpty(): void {
    while (this.next < this.specs.length && tensorSpecBytes(this.specs[this.next]) === 0) this.next++;
  }
}

/** Writes whole host tensors into one safetensors file (for small files and tests). */
export function writeSafetensors(path: string, tensors: Iterable<readonly [string, HostTensor]> | Record<string, HostTensor>,
  options: SafetensorsWriteOptions = {}): void {
  const entries: (readonly [string, HostTensor])[] = Symbol.iterator in tensors
    ? [...(tensors as Iterable<readonly [string, HostTensor]>)]
    : Object.entries(tensors as Record<string, HostTensor>);
  const writer = SafetensorsWriter.create(path, entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })), options);
  try {
    for (const [name, t] of entries) if (t.byteLength > 0) writer.write(name, t.data);
    writer.close();
  } catch (err) {
    writer.abort();
    throw err;
  }
}
