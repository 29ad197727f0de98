/**
 * A JSON Lines file sink: one line `{"key":...,"revision":...,"value":...}` per result, at most one
 * line per key and revision, none torn, across crashes. See docs/sinks.md.
 */
import { constants } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ClosedError, CorruptRecordError, messageOf, OptionsError } from '../../runtime/errors.ts';
import type { Sink, SinkRecord } from '../../runtime/sinks/sink.ts';

export interface FileSinkOptions {
  /** The file; created (with its directory entry synced) when missing. */
  path: string;
}

/** What opening found in the file. */
export interface FileSinkRecovery {
  /** Complete lines kept. */
  readonly lines: number;
  /** Bytes of a torn last line (a write cut short by a crash), cut off on open. */
  readonly truncatedBytes: number;
}

/** One key's result under the reader rule: the line with the highest revision (the last line of the key). */
export interface FileSinkEntry<T> {
  readonly revision: number | undefined;
  readonly value: T;
}

interface Line {
  readonly key: string;
  readonly revision: number | undefined;
  readonly value: unknown;
}

// A key without revision is held at this revision: any replay of it is skipped.
const NO_REVISION = -1;
const CHUNK = 1 << 20;

/**
 * Opens (or creates) a JSON Lines sink. On open it cuts off a torn last line and loads the key and
 * revision of every line, so that a replayed record is skipped: a key already held at the same or
 * a newer revision writes nothing; a newer revision of a key is appended as a new line, and a
 * reader takes, per key, its last line (see {@link readJsonLines}). Each batch is appended in one
 * write and synced (fdatasync) before `write` resolves, so an acknowledged batch is on disk.
 * One writer per file: two processes appending to one file break the guarantee.
 */
export async function fileSink<T = unknown>(options: FileSinkOptions): Promise<FileSink<T>> {
  const path = options?.path;
  if (typeof path !== 'string' || path.length === 0)
    throw new OptionsError('fileSink.path', 'must be a non-empty file path', path);
  const existed = await stat(path).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return false;
      throw error;
    },
  );
  const handle = await open(path, constants.O_RDWR | constants.O_APPEND | constants.O_CREAT, 0o644);
  try {
    // A new file's name must reach the disk too, or a crash can lose the file with its synced lines.
    if (!existed) await syncDirectory(dirname(path));
    const keys = new Map<string, number>();
    const { size, lines, truncatedBytes } = await scan(handle, path, (line) => {
      keys.set(line.key, Math.max(line.revision ?? NO_REVISION, keys.get(line.key) ?? NO_REVISION));
    });
    if (truncatedBytes > 0) {
      await handle.truncate(size);
      await handle.datasync();
    }
    return new FileSink<T>(path, handle, keys, size, { lines, truncatedBytes });
  } catch (error) {
    await handle.close();
    throw error;
  }
}

export class FileSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly path: string;
  /** What opening found. */
  readonly recovery: FileSinkRecovery;
  readonly #handle: FileHandle;
  readonly #keys: Map<string, number>;
  #size: number;
  #tail: Promise<void> = Promise.resolve();
  #broken: unknown;
  #closed = false;

  /** @internal use {@link fileSink} */
  constructor(path: string, handle: FileHandle, keys: Map<string, number>, size: number, recovery: FileSinkRecovery) {
    this.name = `file:${path}`;
    this.path = path;
    this.#handle = handle;
    this.#keys = keys;
    this.#size = size;
    this.recovery = recovery;
  }

  /** Keys held. */
  get keys(): number {
    return this.#keys.size;
  }

  /** The revision held for `key` (-1 for a key written without one), or undefined. */
  revisionOf(key: string): number | undefined {
    return this.#keys.get(key);
  }

  write(records: readonly SinkRecord<T>[]): Promise<void> {
    // Judged when the write is asked for: close() waits for the writes queued before it.
    if (this.#closed) return Promise.reject(new ClosedError(this.name));
    // Batches from several lanes append one after the other, never interleaved.
    const run = this.#tail.then(() => this.#append(records));
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #append(records: readonly SinkRecord<T>[]): Promise<void> {
    if (this.#broken !== undefined)
      throw new ClosedError(this.name, `a failed write left the file unknown, reopen it: ${messageOf(this.#broken)}`);
    const taken = new Map<string, number>();
    let text = '';
    for (const record of records) {
      checkRecord(record, this.name);
      const revision = record.revision ?? NO_REVISION;
      const held = taken.get(record.key) ?? this.#keys.get(record.key);
      if (held !== undefined && revision <= held) continue;
      const line: Line = { key: record.key, revision: record.revision, value: record.value };
      const json = JSON.stringify(line);
      text += `${json}\n`;
      taken.set(record.key, revision);
    }
    if (text.length === 0) return;
    const bytes = Buffer.from(text, 'utf8');
    try {
      let written = 0;
      while (written < bytes.length) {
        const { bytesWritten } = await this.#handle.write(bytes, written, bytes.length - written);
        written += bytesWritten;
      }
      await this.#handle.datasync();
    } catch (error) {
      // Take back what may have landed, so the file holds only acknowledged batches.
      try {
        await this.#handle.truncate(this.#size);
        await this.#handle.datasync();
      } catch {
        this.#broken = error;
      }
      throw error;
    }
    this.#size += bytes.length;
    for (const [key, revision] of taken) this.#keys.set(key, revision);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    await this.#handle.close();
  }
}

/**
 * Refuses what the reader would refuse on the next open (see `parseLine`): written, such a line would
 * make the whole file unreadable. The runtime's sink stage checks the same, but `write` is public.
 */
function checkRecord(record: SinkRecord<unknown>, sink: string): void {
  if (typeof record.key !== 'string')
    throw new OptionsError('fileSink.key', `a record's key must be a string (sink '${sink}')`, record.key);
  const revision = record.revision;
  if (revision !== undefined && (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0)) {
    throw new OptionsError(
      'fileSink.revision',
      `the revision of key '${record.key}' must be an integer >= 0 or undefined (sink '${sink}')`,
      revision,
    );
  }
}

/**
 * Reads a file sink's results under its reader rule: per key, the line with the highest revision,
 * which is its last line (a newer revision is only ever appended after an older one). A torn last
 * line is ignored; any other line that is not a record is a `CorruptRecordError`.
 */
export async function readJsonLines<T = unknown>(path: string): Promise<Map<string, FileSinkEntry<T>>> {
  const handle = await open(path, 'r');
  try {
    const out = new Map<string, FileSinkEntry<T>>();
    await scan(handle, path, (line) => {
      out.set(line.key, { revision: line.revision, value: line.value as T });
    });
    return out;
  } finally {
    await handle.close();
  }
}

/** Reads every complete line; returns the size up to the last one and the bytes of a torn tail. */
async function scan(
  handle: FileHandle,
  path: string,
  onLine: (line: Line) => void,
): Promise<{ size: number; lines: number; truncatedBytes: number }> {
  const buffer = Buffer.allocUnsafe(CHUNK);
  let carry: Buffer = Buffer.alloc(0);
  let position = 0;
  let lines = 0;
  for (;;) {
    const { bytesRead } = await handle.read(buffer, 0, CHUNK, position);
    if (bytesRead === 0) break;
    position += bytesRead;
    const chunk =
      carry.length === 0 ? buffer.subarray(0, bytesRead) : Buffer.concat([carry, buffer.subarray(0, bytesRead)]);
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl !== -1; nl = chunk.indexOf(10, start)) {
      lines++;
      if (nl > start) onLine(parseLine(chunk.toString('utf8', start, nl), path, lines));
      start = nl + 1;
    }
    // Copied: the read buffer is reused by the next read.
    carry = Buffer.from(chunk.subarray(start));
  }
  return { size: position - carry.length, lines, truncatedBytes: carry.length };
}

function parseLine(text: string, path: string, lineNumber: number): Line {
  let line: unknown;
  try {
    line = JSON.parse(text);
  } catch (error) {
    throw corrupt(path, lineNumber, 'not JSON', error);
  }
  if (line === null || typeof line !== 'object') throw corrupt(path, lineNumber, 'not an object');
  const { key, revision, value } = line as Record<string, unknown>;
  if (typeof key !== 'string') throw corrupt(path, lineNumber, "no string 'key'");
  if (revision !== undefined && (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0))
    throw corrupt(path, lineNumber, "'revision' is not an integer >= 0");
  return { key, revision, value };
}

// A complete line (ending in a newline) is never the product of a cut-short append, so a bad one
// is damage to report, not a tail to cut off.
function corrupt(path: string, lineNumber: number, detail: string, cause?: unknown): CorruptRecordError {
  return new CorruptRecordError({ stream: path, sequence: lineNumber }, `line ${lineNumber}: ${detail}`, cause);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
