import type { Lineage } from '../../runtime/lineage.ts';

/** @internal One key's windows. */
export class KeyState<A> {
  readonly key: string | undefined;
  /** Open windows; sessions are kept sorted by start (and never touch each other). */
  readonly wins: Win<A>[] = [];
  /** The watermark when its last window closed; NaN while it has windows. */
  emptiedAt = Number.NaN;
  /** In the list of empty keys waiting for a sweep. */
  listed = false;
  /**
   * The window the key's last input went to, and its start: consecutive inputs of a key mostly
   * go to the same window, and this spares the walk to `wins` (cache misses over many keys).
   */
  cur: Win<A> | undefined = undefined;
  curStart = Number.NaN;
  constructor(key: string | undefined) {
    this.key = key;
  }
}

/** @internal One open window. */
export class Win<A> {
  ks: KeyState<A>;
  start: number;
  end: number;
  acc: A | undefined;
  subject: string;
  /** The watermark has passed `end - 1`: every input now fires a late result. */
  closed: boolean;
  count = 0;
  lineages: Lineage[] | undefined = undefined;
  revision = 0;
  /** Inputs since the last result, for `early.everyEvents`. */
  sinceFire = 0;
  /** The one timer that counts; entries left in the queue at other times are stale. */
  timerAt = Number.NaN;
  alive = true;
  /** Idempotency key of the last result, while the window keeps those bounds. */
  lastKey: string | undefined = undefined;
  supersedes: string[] | undefined = undefined;
  /** In its checkpoint part's list of changed windows. */
  queued = false;
  /** A checkpoint wrote it under its current bounds (so removing it needs a delete). */
  stored = false;

  constructor(ks: KeyState<A>, start: number, end: number, acc: A, subject: string, closed: boolean) {
    this.ks = ks;
    this.start = start;
    this.end = end;
    this.acc = acc;
    this.subject = subject;
    this.closed = closed;
  }
}
