import type { Route } from '../bus/bus.ts';
import { validateSubject } from '../bus/subjects.ts';
import type { Timer } from '../clock.ts';
import { createEnvelope, EMPTY_HEADERS, type Envelope } from '../envelope.ts';
import { messageOf, OptionsError, StreamError } from '../errors.ts';
import type { Lineage } from '../lineage.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../options.ts';
import { encodeRecord } from '../store/record.ts';
import type { LogEntry, SequenceRange, Store, StoreBatch } from '../store/types.ts';
import { ConsumerImpl, type StreamDeps } from './consumer.ts';
import type { ConsumerOptions, RetentionOptions, Stream, StreamConfig, StreamInfo } from './types.ts';

/** Headers a delivered stream message carries, as JetStream's `Nats-Stream`/`Nats-Sequence`. */
export const STREAM_HEADERS = Object.freeze({
  stream: 'sluice-stream',
  sequence: 'sluice-stream-sequence',
});

/** @internal What one stored message holds: short keys, as it is written once per message. */
export interface StoredMessage {
  /** Subject it was published to. */
  readonly s: string;
  readonly d: unknown;
  readonly h?: Record<string, string> | undefined;
  readonly k?: string | undefined;
  /** Event time, only when the publisher gave one other than the append time. */
  readonly e?: number | undefined;
  /** Append time (runtime clock), the default event time. */
  readonly t: number;
  /** Message id. */
  readonly i: string;
}

const configKeys = optionKeys<keyof StreamConfig>({ name: true, subjects: true, retention: true });
const retentionKeys = optionKeys<keyof RetentionOptions>({
  maxAgeMs: true,
  maxBytes: true,
  maxMessages: true,
  checkIntervalMs: true,
});

/** @internal A stream or consumer name: one subject token, so it can name a delivery subject. */
export function checkName(value: unknown, option: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 256 || /[\s.*>/]/.test(value)) {
    throw new OptionsError(
      option,
      'must be a non-empty string of at most 256 characters without white space, dots, slashes or wildcards',
      value,
    );
  }
  return value;
}

/** Whether some subject matches both patterns. */
export function patternsOverlap(a: string, b: string): boolean {
  const x = a.split('.');
  const y = b.split('.');
  for (let i = 0; ; i++) {
    const p = x[i];
    const q = y[i];
    if (p === undefined || q === undefined) return p === q;
    if (p === '>' || q === '>') return true;
    if (p !== '*' && q !== '*' && p !== q) return false;
  }
}

/** @internal The store log of a stream: its name, so a corrupt record's error names the stream. */
function logName(stream: string): string {
  return stream;
}

/**
 * @internal A durable subject: captures the messages published on its subjects (a bus route
 * whose delivery is the append, so the publish resolves once it is synced), gives each a sequence
 * and its append time, applies retention, and holds its durable consumers.
 */
export class StreamImpl implements Stream {
  readonly name: string;
  readonly subjects: readonly string[];
  readonly log: string;
  readonly #deps: StreamDeps;
  readonly #maxAgeMs: number | undefined;
  readonly #maxBytes: number | undefined;
  readonly #maxMessages: number | undefined;
  readonly #unroutes: (() => void)[] = [];
  readonly #consumers = new Map<string, ConsumerImpl>();
  #timer: Timer | undefined;
  readonly #checkMs: number;
  /** Encoded sizes of the stored records from `#sizesFirst` on, when `maxBytes` is set. */
  #sizes: number[] = [];
  #sizesHead = 0;
  #sizesFirst = 1;
  #bytes = 0;
  /** The first stored sequence, as retention last left it: consumers check it on every delivery. */
  #first: number;
  #trimming: Promise<void> | undefined;
  #trimAgain = false;
  #closed = false;

  constructor(config: StreamConfig, deps: StreamDeps) {
    optionsObject('stream', config);
    knownKeys('stream', config, configKeys);
    this.name = checkName(config.name, 'stream.name');
    const where = `stream '${this.name}'`;
    if (!Array.isArray(config.subjects) || config.subjects.length === 0) {
      throw new OptionsError(`${where}.subjects`, 'must be a non-empty array of subject patterns', config.subjects);
    }
    for (const s of config.subjects) validateSubject(s, 'subscribe');
    this.subjects = Object.freeze([...config.subjects]);
    const r = config.retention ?? {};
    optionsObject(`${where}.retention`, r);
    knownKeys(`${where}.retention`, r, retentionKeys);
    this.#maxAgeMs = r.maxAgeMs === undefined ? undefined : intOption(`${where}.retention.maxAgeMs`, r.maxAgeMs, 0, 1);
    this.#maxBytes = r.maxBytes === undefined ? undefined : intOption(`${where}.retention.maxBytes`, r.maxBytes, 0, 1);
    this.#maxMessages =
      r.maxMessages === undefined ? undefined : intOption(`${where}.retention.maxMessages`, r.maxMessages, 0, 1);
    this.#checkMs = intOption(
      `${where}.retention.checkIntervalMs`,
      r.checkIntervalMs,
      Math.min(this.#maxAgeMs ?? 1000, 1000),
      1,
    );
    this.log = logName(this.name);
    this.#deps = deps;
    this.#first = deps.store.bounds(this.log).first;
    if (this.#maxBytes !== undefined) this.#countBytes();
  }

  /** Starts capturing; separate from the constructor so a refused definition leaves no route. */
  start(): void {
    for (const subject of this.subjects) {
      const route: Route = {
        queue: undefined,
        strategy: 'round-robin',
        mailbox: undefined,
        handoff: undefined,
        filter: undefined,
        direct: (env) => this.#capture(env),
        capture: this.name,
      };
      this.#unroutes.push(this.#deps.bus.addRoute(subject, route));
    }
    if (this.#maxAgeMs !== undefined) {
      this.#trimAge();
      this.#schedule();
    }
    this.#enforce();
  }

  get store(): Store {
    return this.#deps.store;
  }

  /** @internal Its consumers made so far in this process (for the admin API). */
  consumers(): ConsumerImpl[] {
    return [...this.#consumers.values()];
  }

  /** @internal Its retention limits, as configured (for the admin API). */
  get retention(): { maxAgeMs?: number; maxBytes?: number; maxMessages?: number } {
    return { maxAgeMs: this.#maxAgeMs, maxBytes: this.#maxBytes, maxMessages: this.#maxMessages };
  }

  info(): StreamInfo {
    const b = this.#deps.store.bounds(this.log);
    return {
      name: this.name,
      subjects: this.subjects,
      first: b.first,
      last: b.last,
      messages: b.count,
      bytes: this.#maxBytes === undefined ? undefined : this.#bytes,
    };
  }

  get(seq: number): Envelope | undefined {
    const value = this.#deps.store.get(this.log, seq);
    return value === undefined ? undefined : this.envelope(seq, value as StoredMessage, 1, undefined);
  }

  consumer<T = unknown>(name: string, options?: ConsumerOptions<T>): ConsumerImpl<T> {
    const existing = this.#consumers.get(name);
    if (existing !== undefined) return existing as ConsumerImpl<T>;
    const consumer = new ConsumerImpl<T>(
      this,
      checkName(name, `stream '${this.name}'.consumer name`),
      options,
      this.#deps,
    );
    this.#consumers.set(name, consumer as ConsumerImpl);
    return consumer;
  }

  /** @internal The envelope of a stored message, as delivered (attempt and lineage of the delivery). */
  envelope(seq: number, m: StoredMessage, attempt: number, lineage: Lineage | undefined): Envelope {
    return createEnvelope(m.s, m.d, {
      id: m.i,
      key: m.k,
      eventTime: m.e ?? m.t,
      headers: { ...m.h, [STREAM_HEADERS.stream]: this.name, [STREAM_HEADERS.sequence]: String(seq) },
      attempt,
      lineage,
    });
  }

  /** @internal The first sequence retention left (no store read). */
  get first(): number {
    return this.#first;
  }

  /** @internal Entries from `from` on, at most `limit`. */
  read(from: number, limit: number): LogEntry[] {
    return this.#deps.store.read(this.log, from, { limit });
  }

  /**
   * @internal The first stored sequence appended at or after `time` (last + 1 when none was):
   * append times grow with the sequence, so a binary search, O(log n) reads.
   */
  seqAtTime(time: number): number {
    const b = this.#deps.store.bounds(this.log);
    let lo = b.first;
    let hi = b.last + 1;
    // An entry retention removed or that is corrupt moves the search up: nothing below it can be
    // read either.
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const entry = this.read(mid, 1)[0];
      const t = entry === undefined || entry.error !== undefined ? -Infinity : (entry.value as StoredMessage).t;
      if (t >= time) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** @internal The record an envelope is stored as, with its append time now. */
  record(env: Envelope): StoredMessage {
    const t = this.#deps.clock.now();
    return {
      s: env.subject,
      d: env.data,
      h: env.headers === EMPTY_HEADERS || Object.keys(env.headers).length === 0 ? undefined : { ...env.headers },
      k: env.key,
      e: env.eventTime === t ? undefined : env.eventTime,
      t,
      i: env.id,
    };
  }

  /**
   * @internal Appends records inside a checkpoint's batch (outputs committed with the state and
   * positions they come from). Returns what to run once the batch committed: retention, and waking
   * the consumers. `given` learns the sequences the records get (while the batch is built).
   */
  appendIn(batch: StoreBatch, records: readonly StoredMessage[], given?: (range: SequenceRange) => void): () => void {
    if (this.#closed) throw new StreamError(this.name, 'closed: the runtime is stopping');
    // Counted only once the batch gave the records their sequences: sizes of records a failed
    // build never appended would stay in the count, and retention would remove stored messages
    // to make room for them.
    const sizes = this.#maxBytes === undefined ? undefined : records.map((r) => encodeRecord(r).byteLength);
    const range = batch.append(this.log, records);
    if (sizes !== undefined) {
      for (const size of sizes) {
        this.#sizes.push(size);
        this.#bytes += size;
      }
    }
    given?.(range);
    return () => {
      this.#enforce();
      for (const c of this.#consumers.values()) c.wake();
    };
  }

  #capture(env: Envelope): Promise<void> {
    if (this.#closed)
      return Promise.reject(new OptionsError('publish', `stream '${this.name}' is closed`, env.subject));
    const record = this.record(env);
    let size = 0;
    if (this.#maxBytes !== undefined) {
      try {
        size = encodeRecord(record).byteLength;
      } catch (error) {
        return Promise.reject(error);
      }
    }
    const appended = this.#deps.store.append(this.log, [record]);
    // Sequences are given in call order, so sizes line up with them.
    if (this.#maxBytes !== undefined) {
      this.#sizes.push(size);
      this.#bytes += size;
    }
    return appended.then(() => {
      this.#enforce();
      for (const c of this.#consumers.values()) c.wake();
    });
  }

  /** Count and byte limits: what is over them goes, oldest first. */
  #enforce(): void {
    if (this.#closed || (this.#maxMessages === undefined && this.#maxBytes === undefined)) return;
    const b = this.#deps.store.bounds(this.log);
    let cut = b.first - 1;
    if (this.#maxMessages !== undefined && b.count > this.#maxMessages) cut = b.last - this.#maxMessages;
    if (this.#maxBytes !== undefined) {
      this.#dropSizesThrough(cut);
      while (this.#bytes > this.#maxBytes && this.#sizesHead < this.#sizes.length)
        this.#dropSizesThrough(this.#sizesFirst);
      cut = Math.max(cut, this.#sizesFirst - 1);
    }
    if (cut >= b.first) this.#trim(cut);
  }

  #dropSizesThrough(seq: number): void {
    while (this.#sizesFirst <= seq && this.#sizesHead < this.#sizes.length) {
      this.#bytes -= this.#sizes[this.#sizesHead] as number;
      this.#sizesHead++;
      this.#sizesFirst++;
    }
    if (this.#sizesHead > 1024 && this.#sizesHead * 2 > this.#sizes.length) {
      this.#sizes = this.#sizes.slice(this.#sizesHead);
      this.#sizesHead = 0;
    }
  }

  #trim(through: number): void {
    if (this.#trimming !== undefined) {
      this.#trimAgain = true;
      return;
    }
    this.#trimming = this.#deps.store.deleteThrough(this.log, through).then(
      () => {
        this.#trimming = undefined;
        this.#first = Math.max(this.#first, through + 1);
        if (this.#trimAgain) {
          this.#trimAgain = false;
          this.#enforce();
          this.#trimAge();
        }
      },
      (error: unknown) => {
        this.#trimming = undefined;
        this.#deps.log.error(`stream '${this.name}': retention failed: ${messageOf(error)}`);
      },
    );
  }

  /** Age retention: removes the messages appended more than `maxAgeMs` ago. */
  #trimAge(): void {
    if (this.#maxAgeMs === undefined || this.#closed) return;
    const oldest = this.#deps.clock.now() - this.#maxAgeMs;
    const b = this.#deps.store.bounds(this.log);
    let cut = b.first - 1;
    scan: for (let from = b.first; from <= b.last; ) {
      const entries = this.read(from, 256);
      if (entries.length === 0) break;
      for (const e of entries) {
        // A corrupt record has no time: it goes with the older messages around it.
        if (e.error === undefined && (e.value as StoredMessage).t > oldest) break scan;
        cut = e.seq;
      }
      from = cut + 1;
    }
    if (cut >= b.first) {
      if (this.#maxBytes !== undefined) this.#dropSizesThrough(cut);
      this.#trim(cut);
    }
  }

  #schedule(): void {
    this.#timer = this.#deps.clock.setTimeout(() => {
      this.#trimAge();
      if (!this.#closed) this.#schedule();
    }, this.#checkMs);
  }

  /** Sizes of what the store holds already, for `maxBytes` across a restart. */
  #countBytes(): void {
    const b = this.#deps.store.bounds(this.log);
    this.#sizesFirst = b.first;
    for (let from = b.first; from <= b.last; ) {
      const entries = this.read(from, 1024);
      if (entries.length === 0) break;
      for (const e of entries) {
        // Gaps cannot occur inside [first, last]; a corrupt record counts as nothing.
        const size = e.error === undefined ? encodeRecord(e.value).byteLength : 0;
        this.#sizes.push(size);
        this.#bytes += size;
        from = e.seq + 1;
      }
    }
  }

  /** @internal Stops pushing to actors, for a shutdown's drain. */
  quiesce(): void {
    for (const c of this.#consumers.values()) c.quiesce();
  }

  /** Stops capturing and delivering; waits for the consumers' positions to be stored. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer?.cancel();
    for (const unroute of this.#unroutes) unroute();
    await Promise.all([...this.#consumers.values()].map((c) => c.close()));
    await this.#trimming;
  }
}
