import { DEAD_LETTER_HEADERS } from '../actors/deadLetters.ts';
import type { Bus } from '../bus/bus.ts';
import type { Subscription } from '../bus/subscription.ts';
import type { Envelope } from '../envelope.ts';

/** Header a replayed dead letter carries: the id of the letter it came from. */
export const REPLAYED_FROM_HEADER = 'sluice-replayed-from';

/** A dead letter kept by the admin API, numbered in the order it arrived. */
export interface KeptLetter {
  readonly n: number;
  readonly at: number;
  readonly envelope: Envelope;
}

/** What the runtime knows of one dead-letter subject since it was created. */
export interface DeadLetterSubjectInfo {
  readonly subject: string;
  /** The actor (or stream consumer) that sent them. */
  readonly actor: string | undefined;
  /** Received since the runtime was created (actors' letters), or since the API served (others). */
  readonly received: number;
  /** Kept now, for peeking and replay. */
  readonly kept: number;
  readonly replayed: number;
  /** Replayed letters that came back as dead letters again. */
  readonly failedAgain: number;
  readonly purged: number;
  /** The oldest ones dropped from memory to keep within the bound. */
  readonly evicted: number;
  /**
   * Count per reason: the error message cut to 200 characters, with numbers masked as `<n>`; at
   * most 20 reasons, the rest counted as '(other reasons)'.
   */
  readonly reasons: Readonly<Record<string, number>>;
}

interface SubjectCounts {
  actor: string | undefined;
  received: number;
  kept: number;
  replayed: number;
  failedAgain: number;
  purged: number;
  evicted: number;
  reasons: Map<string, number>;
}

const MAX_REASONS = 20;
const OTHER_REASONS = '(other reasons)';

/**
 * Recent dead letters, kept in memory up to a bound so the dashboard and the CLI can peek, replay
 * and purge them. The runtime keeps one from its creation: actors hand it each dead letter they
 * send (heard or not), so the admin API shows letters sent before it served. While the API
 * serves, it also listens on `$DLQ.>` and `$DEAD.>` for dead letters that connector sources and
 * stream consumers publish. Letters kept in a stream are browsed with the stream's message
 * browser instead, and replayed from there.
 */
export class DeadLetterBuffer {
  #max: number;
  readonly #letters = new Map<number, KeptLetter>();
  readonly #subjects = new Map<string, SubjectCounts>();
  readonly #now: () => number;
  /** Letters the actors handed over: the bus listener skips them when they arrive there too. */
  readonly #handed = new WeakSet<Envelope>();
  #n = 0;
  /** No letter numbered below this is kept. */
  #oldestN = 1;
  readonly #listeners = new Set<(letter: KeptLetter) => void>();
  readonly #subscriptions: Subscription[] = [];
  /** Servers listening on the bus now. */
  #listening = 0;

  constructor(max: number, now: () => number) {
    this.#max = max;
    this.#now = now;
  }

  /** The most kept; lowering it drops the oldest now. */
  get max(): number {
    return this.#max;
  }
  set max(max: number) {
    this.#max = max;
    while (this.#letters.size > this.#max) this.#evictOldest();
  }

  /** Calls `listener` with each letter as it is kept (the live feed), until the returned function is called. */
  onLetter(listener: (letter: KeptLetter) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** A dead letter an actor sent (its envelope as routed). */
  keep(env: Envelope): void {
    this.#handed.add(env);
    this.#add(env);
  }

  /**
   * Listens on the bus for dead letters that no actor handed over (connector sources, stream
   * consumers); returns the function that stops listening. Two servers at once share one
   * subscription, so no letter is kept twice.
   */
  listen(bus: Bus): () => void {
    if (this.#listening++ === 0) {
      for (const pattern of ['$DLQ.>', '$DEAD.>']) {
        // Taken at once: a dead letter is never held back by the admin API.
        this.#subscriptions.push(
          bus.subscribe(pattern, {
            mailbox: { capacity: 10_000, overflow: 'drop-oldest' },
            callback: (env) => {
              if (!this.#handed.has(env)) this.#add(env);
            },
          }),
        );
      }
    }
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      if (--this.#listening > 0) return;
      for (const sub of this.#subscriptions) sub.unsubscribe();
      this.#subscriptions.length = 0;
    };
  }

  #counts(subject: string, actor: string | undefined): SubjectCounts {
    let c = this.#subjects.get(subject);
    if (c === undefined) {
      c = { actor, received: 0, kept: 0, replayed: 0, failedAgain: 0, purged: 0, evicted: 0, reasons: new Map() };
      this.#subjects.set(subject, c);
    }
    return c;
  }

  #add(env: Envelope): void {
    const c = this.#counts(env.subject, env.headers[DEAD_LETTER_HEADERS.actor]);
    c.received++;
    if (env.headers[REPLAYED_FROM_HEADER] !== undefined) c.failedAgain++;
    // Numbers (ids, counts, sequences) are masked, so one cause counts as one reason.
    let reason = (env.headers[DEAD_LETTER_HEADERS.error] ?? '(no reason)').slice(0, 200).replace(/\d+/g, '<n>');
    if (!c.reasons.has(reason) && c.reasons.size >= MAX_REASONS) reason = OTHER_REASONS;
    c.reasons.set(reason, (c.reasons.get(reason) ?? 0) + 1);
    if (this.#max === 0) return;
    const letter: KeptLetter = { n: ++this.#n, at: this.#now(), envelope: env };
    this.#letters.set(letter.n, letter);
    c.kept++;
    if (this.#letters.size > this.#max) this.#evictOldest();
    for (const listener of this.#listeners) listener(letter);
  }

  #evictOldest(): void {
    // Letters are numbered in order, so the oldest is found by number: `values().next()` would walk
    // every letter deleted since V8 last rebuilt the map (runtime/bounded.ts) on each eviction.
    // Each number is passed once, replayed and purged ones included.
    let oldest = this.#letters.get(this.#oldestN);
    while (oldest === undefined) oldest = this.#letters.get(++this.#oldestN);
    this.#letters.delete(oldest.n);
    const o = this.#counts(oldest.envelope.subject, undefined);
    o.kept--;
    o.evicted++;
  }

  subjects(): DeadLetterSubjectInfo[] {
    return [...this.#subjects].map(([subject, c]) => ({
      subject,
      actor: c.actor,
      received: c.received,
      kept: c.kept,
      replayed: c.replayed,
      failedAgain: c.failedAgain,
      purged: c.purged,
      evicted: c.evicted,
      reasons: Object.fromEntries(c.reasons),
    }));
  }

  get kept(): number {
    return this.#letters.size;
  }

  /** Letters after `after` (their number), oldest first, on `subject` if given, at most `limit`. */
  page(subject: string | undefined, after: number, limit: number, match?: (l: KeptLetter) => boolean): KeptLetter[] {
    return this.boundedPage(
      subject,
      after,
      limit,
      match ?? (() => true),
      Number.POSITIVE_INFINITY,
      Number.POSITIVE_INFINITY,
    ).letters;
  }

  /**
   * {@link page}, bounded as a page of a stream is: it stops once it read `maxScan` letters or at
   * `until` (`performance.now()`), whichever comes first, since a filter may stringify every kept
   * payload (up to the bus's largest) in one turn of the event loop. `next` is the number of the
   * last letter read when there may be more, to go on after.
   */
  boundedPage(
    subject: string | undefined,
    after: number,
    limit: number,
    match: (l: KeptLetter) => boolean,
    maxScan: number,
    until: number,
  ): { letters: KeptLetter[]; next: number | undefined } {
    const letters: KeptLetter[] = [];
    let scanned = 0;
    let last = after;
    for (const letter of this.#letters.values()) {
      if (letter.n <= after) continue;
      if (letters.length >= limit || scanned >= maxScan || (scanned > 0 && performance.now() >= until)) {
        return { letters, next: last };
      }
      scanned++;
      last = letter.n;
      if (subject !== undefined && letter.envelope.subject !== subject) continue;
      if (match(letter)) letters.push(letter);
    }
    return { letters, next: undefined };
  }

  get(n: number): KeptLetter | undefined {
    return this.#letters.get(n);
  }

  /** The letters a replay or purge selects, oldest first. */
  select(filter: { subject?: string; ids?: readonly number[]; reason?: string; limit?: number }): KeptLetter[] {
    const limit = filter.limit ?? Number.MAX_SAFE_INTEGER;
    if (filter.ids !== undefined) {
      const out: KeptLetter[] = [];
      for (const id of filter.ids) {
        const l = this.#letters.get(id);
        if (l !== undefined && (filter.subject === undefined || l.envelope.subject === filter.subject)) out.push(l);
        if (out.length >= limit) break;
      }
      return out;
    }
    const reason = filter.reason;
    return this.page(
      filter.subject,
      0,
      limit,
      reason === undefined ? undefined : (l) => (l.envelope.headers[DEAD_LETTER_HEADERS.error] ?? '').includes(reason),
    );
  }

  /** The letter was replayed: it leaves the buffer. */
  replayed(letter: KeptLetter): void {
    if (!this.#letters.delete(letter.n)) return;
    const c = this.#counts(letter.envelope.subject, undefined);
    c.kept--;
    c.replayed++;
  }

  /** Drops the letters kept for `subject` (all subjects when undefined); returns how many. */
  purge(subject: string | undefined): number {
    let n = 0;
    for (const letter of [...this.#letters.values()]) {
      if (subject !== undefined && letter.envelope.subject !== subject) continue;
      this.#letters.delete(letter.n);
      const c = this.#counts(letter.envelope.subject, undefined);
      c.kept--;
      c.purged++;
      n++;
    }
    return n;
  }
}
