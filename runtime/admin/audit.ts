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

/** The audit log: the last entries in memory and, when a path is given, every entry in a JSON Lines file. */
export class AuditLog {
  readonly entries: AuditEntry[] = [];
  readonly #path: string | undefined;
  readonly #log: Logger;
  #writing: Promise<void> = Promise.resolve();
  onEntry: ((entry: AuditEntry) => void) | undefined;

  constructor(path: string | undefined, log: Logger) {
    this.#path = path;
    this.#log = log;
  }

  record(entry: AuditEntry): void {
    this.entries.push(entry);
    if (this.entries.length > KEPT) this.entries.shift();
    const path = this.#path;
    if (path !== undefined) {
      // One write at a time, in order: lines never interleave.
      const line = `${JSON.stringify(entry)}\n`;
      this.#writing = this.#writing.then(() =>
        appendFile(path, line).catch((error: unknown) => {
          this.#log.error(`sluice admin: could not append to the audit log '${path}': ${messageOf(error)}`);
        }),
      );
    }
    this.onEntry?.(entry);
  }

  /** Resolves once every entry so far is in the file. */
  flush(): Promise<void> {
    return this.#writing;
  }
}
