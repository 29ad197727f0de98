import { appendFile } from 'node:fs/promises';
import type { Logger } from '../actors/actor.ts';
import { messageOf } from '../errors.ts';

/** Who made a request: the full token, the read token, or no one (a loopback server without a token). */
export type Caller = 'token' | 'read-token' | 'loopback';

/** One action tried through the admin API, allowed or not. */
export interface AuditEntry {
  /** Epoch ms, wall clock. */
  readonly time: number;
  readonly action: string;
  readonly caller: Caller | 'unauthenticated';
  /** The client's address. */
  readonly remote: string;
  /** What the action named: an actor, a subject, a stream and consumer. */
  readonly target: string;
  readonly outcome: 'ok' | 'refused' | 'failed';
  /** What it did ("replayed 3") or why it was refused or failed. */
  readonly detail: string;
}

const KEPT = 1000;
/** Refused requests that named no valid credential: kept apart, so they cannot push out the rest. */
const KEPT_UNAUTHENTICATED = 100;
/** Of those, at most this many a second reach the file and the live feed; a line counts the rest. */
const UNAUTHENTICATED_PER_SECOND = 10;

/** The audit log: the last entries in memory and, when a path is given, every entry in a JSON Lines file. */
export class AuditLog {
  readonly #kept: { readonly n: number; readonly entry: AuditEntry }[] = [];
  /**
   * Anyone who reaches the port can send refused requests: in the same ring, a thousand of them
   * would wipe the record of what operators did, and each would grow the file.
   */
  readonly #unauthenticated: { readonly n: number; readonly entry: AuditEntry }[] = [];
  #n = 0;
  #windowStart = 0;
  #inWindow = 0;
  readonly #path: string | undefined;
  readonly #log: Logger;
  #writing: Promise<void> = Promise.resolve();
  onEntry: ((entry: AuditEntry) => void) | undefined;

  constructor(path: string | undefined, log: Logger) {
    this.#path = path;
    this.#log = log;
  }

  /** The entries kept in memory, oldest first: the last 1,000 by a caller with a credential, and the last 100 refused without one. */
  get entries(): AuditEntry[] {
    const a = this.#kept;
    const b = this.#unauthenticated;
    const out: AuditEntry[] = [];
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      const takeA = j >= b.length || (i < a.length && (a[i] as { n: number }).n < (b[j] as { n: number }).n);
      out.push((takeA ? a[i++] : b[j++])?.entry as AuditEntry);
    }
    return out;
  }

  record(entry: AuditEntry): void {
    const item = { n: this.#n++, entry };
    if (entry.caller === 'unauthenticated') {
      this.#unauthenticated.push(item);
      if (this.#unauthenticated.length > KEPT_UNAUTHENTICATED) this.#unauthenticated.shift();
      if (entry.time - this.#windowStart >= 1000) {
        this.#summarize(entry.time);
        this.#windowStart = entry.time;
      }
      // Past the second's share: counted in #inWindow, said by the summary line above.
      if (++this.#inWindow > UNAUTHENTICATED_PER_SECOND) return;
    } else {
      this.#kept.push(item);
      if (this.#kept.length > KEPT) this.#kept.shift();
    }
    this.#write(entry);
    this.onEntry?.(entry);
  }

  #write(entry: AuditEntry): void {
    const path = this.#path;
    if (path === undefined) return;
    // One write at a time, in order: lines never interleave.
    const line = `${JSON.stringify(entry)}\n`;
    this.#writing = this.#writing.then(() =>
      appendFile(path, line).catch((error: unknown) => {
        this.#log.error(`sluice admin: could not append to the audit log '${path}': ${messageOf(error)}`);
      }),
    );
  }

  /**
   * What the current second left out, said in one line (and counted from nothing again), so the
   * file still tells of it: when the next second begins, and when the log is flushed.
   */
  #summarize(time: number): void {
    if (this.#inWindow > UNAUTHENTICATED_PER_SECOND) {
      this.#write({
        time,
        action: 'unauthenticated',
        caller: 'unauthenticated',
        remote: '',
        target: '',
        outcome: 'refused',
        detail: `${this.#inWindow - UNAUTHENTICATED_PER_SECOND} more requests refused without a credential in a second, not logged one by one`,
      });
    }
    this.#inWindow = 0;
  }

  /** Resolves once every entry so far is in the file, with the count of what the last second left out. */
  flush(): Promise<void> {
    this.#summarize(Date.now());
    return this.#writing;
  }
}
