import type { Logger } from '../actors/actor.ts';
import { DEAD_LETTER_HEADERS, TERMINAL_PREFIX } from '../actors/deadLetters.ts';
import { backoffDelay, DEFAULT_BACKOFF } from '../actors/supervisor.ts';
import { ACCEPTED, type Bus } from '../bus/bus.ts';
import { subjectMatches, validateSubject } from '../bus/subjects.ts';
import type { Clock, Timer } from '../clock.ts';
import { createEnvelope, type Envelope } from '../envelope.ts';
import { CorruptRecordError, messageOf, OptionsError, SluiceError, StreamError } from '../errors.ts';
import { SourceLineage } from '../lineage.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../options.ts';
import type { LogEntry, Store, StoreBatch } from '../store/types.ts';
import type { Telemetry } from '../telemetry.ts';
import { PUSH_BATCH, PushTurns } from './pushTurns.ts';
import { RangeSet } from './rangeSet.ts';
import { STREAM_HEADERS, type StoredMessage, type StreamImpl } from './stream.ts';
import type { ConsumerInfo, ConsumerLag, ConsumerOptions, DeliverPolicy, StreamMessage } from './types.ts';

/** @internal What streams and consumers use of the runtime. */
export interface StreamDeps {
  readonly bus: Bus;
  readonly store: Store;
  readonly clock: Clock;
  readonly log: Logger;
  readonly random: () => number;
  readonly telemetry: Telemetry;
  /** The runtime's turns for push loops (made by its streams when not given). */
  readonly turns?: PushTurns;
}

/** The store namespace of consumer positions: key `<stream>/<consumer>`. */
export const POSITIONS_NAMESPACE = 'sluice.consumers';

/** What a consumer stores: its floor (lowest unsettled sequence) and the runs settled above it. */
export interface StoredPosition {
  readonly floor: number;
  readonly acked?: readonly (readonly [number, number])[];
}

const consumerKeys = optionKeys<keyof ConsumerOptions>({
  filter: true,
  deliver: true,
  ackWaitMs: true,
  backoff: true,
  maxDeliver: true,
  maxAckPending: true,
  deadLetter: true,
  onUnreadablePosition: true,
});

/** @internal The subject a consumer pushes to for the actors that subscribe to it. */
export function deliverSubjectOf(stream: string, consumer: string): string {
  return `$SLUICE.deliver.${stream}.${consumer}`;
}

/** One message delivered and not settled: out with a reader, or waiting to be delivered again. */
class Delivery {
  readonly seq: number;
  attempt = 0;
  /** With a reader now (pulled or pushed); false while it waits for redelivery. */
  out = false;
  timer: Timer | undefined = undefined;
  /** The lineage of its current push, so a settlement of an earlier push is told apart. */
  push: PushLineage | undefined = undefined;
  constructor(seq: number) {
    this.seq = seq;
  }
}

/**
 * The source reference of a pushed message (docs/settlement.md): when the last reference is given
 * back the message is settled, acked, or nacked when one came back with an error.
 */
type PushLineage = SourceLineage<Delivery>;

class Message<T> implements StreamMessage<T> {
  readonly seq: number;
  readonly attempt: number;
  readonly envelope: Envelope<T>;
  readonly #consumer: ConsumerImpl<T>;
  readonly #delivery: Delivery;
  constructor(consumer: ConsumerImpl<T>, delivery: Delivery, envelope: Envelope<T>) {
    this.#consumer = consumer;
    this.#delivery = delivery;
    this.seq = delivery.seq;
    this.attempt = delivery.attempt;
    this.envelope = envelope;
  }
  ack(): void {
    this.#consumer.ackDelivery(this.#delivery);
  }
  nack(delayMs?: number): void {
    if (delayMs !== undefined) intOption('nack.delayMs', delayMs, 0, 0);
    this.#consumer.nackDelivery(this.#delivery, this.attempt, delayMs ?? 0, undefined);
  }
  term(reason?: string): void {
    this.#consumer.termDelivery(this.#delivery, reason);
  }
  inProgress(): void {
    this.#consumer.extendDelivery(this.#delivery, this.attempt);
  }
}

/**
 * @internal A durable consumer: a position in a stream that survives restarts. Messages are
 * delivered from the committed position on (`fetch`/`next`, or pushed to the actors attached to
 * it), each settled by ack, nack, term or its ack wait running out. The committed position is the
 * lowest unsettled sequence, as Kafka commits offsets: acks may come in any order, and those above
 * the floor are kept as runs, stored with it. Positions are written with the store's group commit,
 * at most one write outstanding per consumer.
 */
export class ConsumerImpl<T = unknown> {
  readonly stream: string;
  readonly name: string;
  readonly deliverSubject: string;
  readonly #source: StreamImpl;
  readonly #deps: StreamDeps;
  readonly #key: string;
  readonly #filter: string | undefined;
  readonly #ackWaitMs: number;
  readonly #backoff: readonly number[] | undefined;
  readonly #maxDeliver: number;
  readonly #maxAckPending: number;
  readonly #deadLetter: string;

  #floor: number;
  /** The next sequence never delivered yet. */
  #next: number;
  #acked: RangeSet;
  readonly #pending = new Map<number, Delivery>();
  /** Sequences due for redelivery, in the order they fell due. */
  #ready: number[] = [];
  #buffer: LogEntry[] = [];
  #bufferAt = 0;
  #waiters: { resolve: (m: StreamMessage<T>) => void; reject: (error: unknown) => void }[] = [];
  #attached = 0;
  #pushing = false;
  /** Pushed since this consumer's last turn began (see {@link PUSH_BATCH}). */
  #pushedInTurn = 0;
  readonly #turns: PushTurns;
  #taking = false;
  #wakeAgain = false;
  /** The runtime is stopping: nothing new is pushed to actors, so they can drain. */
  #quiescing = false;
  #closed = false;
  #writing: Promise<void> | undefined;
  #dirty = false;
  /** A position write waits for the end of the current synchronous run (see #persist). */
  #scheduled = false;
  /** Its position is stored by checkpoints only (see {@link ConsumerImpl.ownByCheckpoint}). */
  #checkpointed = false;
  readonly #counts = { acked: 0, terminated: 0, deadLettered: 0, redelivered: 0 };
  readonly #unregisterLag: () => void;

  constructor(source: StreamImpl, name: string, options: ConsumerOptions<T> = {}, deps: StreamDeps) {
    const where = `stream '${source.name}'.consumer '${name}'`;
    optionsObject(where, options);
    knownKeys(where, options, consumerKeys);
    this.stream = source.name;
    this.name = name;
    this.deliverSubject = deliverSubjectOf(source.name, name);
    this.#source = source;
    this.#turns = deps.turns ?? new PushTurns();
    this.#deps = deps;
    this.#key = `${source.name}/${name}`;
    const filter = options.filter;
    this.#filter = filter === undefined ? undefined : typeof filter === 'string' ? filter : filter.name;
    if (this.#filter !== undefined) validateSubject(this.#filter, 'subscribe');
    this.#ackWaitMs = intOption(`${where}.ackWaitMs`, options.ackWaitMs, 30_000, 1);
    if (options.backoff !== undefined) {
      if (!Array.isArray(options.backoff) || options.backoff.length === 0) {
        throw new OptionsError(`${where}.backoff`, 'must be a non-empty array of delays in ms', options.backoff);
      }
      for (const [i, ms] of options.backoff.entries()) intOption(`${where}.backoff[${i}]`, ms, 0, 0);
      this.#backoff = Object.freeze([...options.backoff]);
    }
    this.#maxDeliver = intOption(`${where}.maxDeliver`, options.maxDeliver, 5, 1);
    this.#maxAckPending = intOption(`${where}.maxAckPending`, options.maxAckPending, 1000, 1);
    this.#deadLetter = options.deadLetter ?? `$DLQ.${source.name}.${name}`;
    validateSubject(this.#deadLetter, 'publish');

    const saved = this.#storedPosition(options.onUnreadablePosition, where);
    if (saved !== undefined) {
      this.#floor = saved.floor;
      this.#acked = saved.acked;
    } else {
      this.#floor = this.#start(options.deliver ?? 'all', where);
      this.#acked = new RangeSet();
      // Stored at once: a consumer that starts at 'new' must not start elsewhere after a restart.
      this.#persist();
    }
    this.#next = this.#floor;
    this.#unregisterLag = deps.telemetry.registerLag(this);
  }

  get position(): number {
    return this.#floor;
  }

  /** The stored position, checked: undefined when there is none, or when it is unreadable and the policy says start anew. */
  #storedPosition(
    policy: ConsumerOptions['onUnreadablePosition'],
    where: string,
  ): { floor: number; acked: RangeSet } | undefined {
    if (policy !== undefined && policy !== 'fail' && policy !== 'deliver') {
      throw new OptionsError(`${where}.onUnreadablePosition`, "must be 'fail' or 'deliver'", policy);
    }
    let problem: string;
    try {
      const saved: unknown = this.#deps.store.getKey(POSITIONS_NAMESPACE, this.#key);
      if (saved === undefined) return undefined;
      const floor = (saved as Partial<StoredPosition> | null)?.floor;
      if (!Number.isSafeInteger(floor) || (floor as number) < 1) {
        throw new RangeError(`its floor is not a positive integer (the record is ${shown(saved)})`);
      }
      return { floor: floor as number, acked: RangeSet.from((saved as StoredPosition).acked) };
    } catch (error) {
      if (!(error instanceof CorruptRecordError) && !(error instanceof RangeError)) throw error;
      problem = messageOf(error);
    }
    const what = `the stored position of consumer '${this.name}' (key '${this.#key}' of '${POSITIONS_NAMESPACE}') cannot be read: ${problem}`;
    if (policy !== 'deliver') {
      throw new StreamError(
        this.stream,
        `${what}; nothing was delivered. Set onUnreadablePosition: 'deliver' to start it from its deliver policy instead, forgetting what it had settled (messages may then be delivered again, or skipped)`,
      );
    }
    this.#deps.log.error(
      `${what}; it starts from its deliver policy (onUnreadablePosition: 'deliver'), forgetting what it had settled`,
    );
    return undefined;
  }

  #start(policy: DeliverPolicy, where: string): number {
    const b = this.#deps.store.bounds(this.#source.log);
    if (policy === 'all') return b.first;
    if (policy === 'new') return b.last + 1;
    if (typeof policy === 'object' && policy !== null) {
      if ('fromSeq' in policy) return Math.max(intOption(`${where}.deliver.fromSeq`, policy.fromSeq, 1, 1), b.first);
      if ('fromTime' in policy) {
        if (typeof policy.fromTime !== 'number' || !Number.isFinite(policy.fromTime)) {
          throw new OptionsError(`${where}.deliver.fromTime`, 'must be a finite time in epoch ms', policy.fromTime);
        }
        // A binary search: a reset by time on a long stream must not hold the event loop.
        return this.#source.seqAtTime(policy.fromTime);
      }
    }
    throw new OptionsError(`${where}.deliver`, "must be 'all', 'new', { fromSeq } or { fromTime }", policy);
  }

  fetch(max = 1): StreamMessage<T>[] {
    intOption('fetch.max', max, 1, 1);
    this.#checkOpen();
    const out: StreamMessage<T>[] = [];
    while (out.length < max) {
      const m = this.#pull();
      if (m === undefined) break;
      out.push(m);
    }
    return out;
  }

  next(): Promise<StreamMessage<T>> {
    try {
      this.#checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    const m = this.#waiters.length === 0 ? this.#pull() : undefined;
    if (m !== undefined) return Promise.resolve(m);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * @internal Moves the position to a sequence or a time (for operators, through the admin API):
   * deliveries start there again, and what was acknowledged above it is forgotten. Refused while
   * messages are delivered and unsettled, unless `force`: their deliveries are then dropped (their
   * settlements are ignored, and they are delivered again if at or after the new position).
   * Returns the new position.
   */
  reset(policy: { readonly fromSeq: number } | { readonly fromTime: number }, force = false): number {
    this.#checkOpen();
    if (this.#pending.size > 0 && !force) {
      throw new StreamError(
        this.stream,
        `consumer '${this.name}' has ${this.#pending.size} messages delivered and not settled: pause the actors that read it until they settle, or force the reset (what they hold may then be handled twice)`,
      );
    }
    if ('fromSeq' in policy) {
      // Past the end, the consumer would skip what is published next, and show no lag while it
      // does: a reset moves within what was stored, up to the next sequence.
      const next = this.#deps.store.bounds(this.#source.log).last + 1;
      if (Number.isSafeInteger(policy.fromSeq) && policy.fromSeq > next) {
        throw new OptionsError(
          `consumer '${this.#key}'.reset.fromSeq`,
          `must be at most the stream's next sequence, ${next}`,
          policy.fromSeq,
        );
      }
    }
    const floor = this.#start(policy, `consumer '${this.#key}'.reset`);
    for (const d of this.#pending.values()) d.timer?.cancel();
    this.#pending.clear();
    this.#ready = [];
    this.#buffer = [];
    this.#bufferAt = 0;
    this.#acked = new RangeSet();
    this.#floor = floor;
    this.#next = floor;
    this.#persist();
    this.wake();
    return floor;
  }

  lag(): ConsumerLag {
    const b = this.#deps.store.bounds(this.#source.log);
    const from = Math.max(this.#floor, b.first);
    const messages = Math.max(0, b.last - from + 1 - this.#acked.count);
    let timeMs = 0;
    if (messages > 0) {
      // The floor is almost always the oldest unsettled message: read it alone first, and the
      // next 63 only when it was settled out of order (each read decodes what it returns).
      let seq = from;
      for (const limit of [1, 63]) {
        const entries = this.#source.read(seq, limit);
        const oldest = entries.find((e) => e.error === undefined && !this.#acked.has(e.seq));
        if (oldest !== undefined) {
          timeMs = Math.max(0, this.#deps.clock.now() - (oldest.value as StoredMessage).t);
          break;
        }
        if (entries.length < limit) break;
        seq = (entries.at(-1)?.seq ?? seq) + 1;
      }
    }
    return { messages, timeMs, ackPending: this.#pending.size };
  }

  info(): ConsumerInfo {
    return { stream: this.stream, name: this.name, position: this.#floor, ...this.lag(), ...this.#counts };
  }

  /** @internal The position record, for a checkpoint that stores it in its own batch. */
  positionRecord(): StoredPosition {
    const runs = this.#acked.runs;
    return runs.length === 0 ? { floor: this.#floor } : { floor: this.#floor, acked: runs };
  }

  /** @internal Adds the position to a batch (a checkpoint commits it with state and outputs). */
  writePosition(batch: StoreBatch): void {
    batch.put(POSITIONS_NAMESPACE, this.#key, this.positionRecord());
    this.#dirty = false;
  }

  /**
   * @internal An actor with a checkpoint reads this consumer: from now on its position is stored
   * only in the actor's checkpoints, with the state that reflects it. A position stored on its own
   * could run ahead of the state, and a restart would skip inputs whose effects were never stored.
   */
  ownByCheckpoint(): void {
    // The position from before the actor took anything (the deliver policy's start) is behind
    // every state: store it now if it waits for its deferred write, or a restart before the first
    // checkpoint would apply the deliver policy again (`new` would skip what came meanwhile).
    if (!this.#checkpointed && this.#dirty && this.#writing === undefined && !this.#closed) this.#write();
    this.#checkpointed = true;
  }

  /** @internal Messages it delivers unsettled at most: a checkpoint must not hold more than that. */
  get maxAckPending(): number {
    return this.#maxAckPending;
  }

  /** @internal Whether the position moved since it was last stored. */
  get positionDirty(): boolean {
    return this.#dirty;
  }

  /** @internal An actor subscribes: messages are pushed to the delivery subject while one is attached. */
  attach(): () => void {
    this.#checkOpen();
    this.#attached++;
    let attached = true;
    queueMicrotask(() => this.wake());
    return () => {
      if (!attached) return;
      attached = false;
      this.#attached--;
    };
  }

  /** @internal Something may be deliverable: an append, a settlement, a redelivery falling due. */
  wake(): void {
    if (this.#closed) return;
    if (this.#taking) {
      // A settlement inside #take (a filtered or corrupt record): delivering from inside it would nest.
      this.#wakeAgain = true;
      return;
    }
    while (this.#waiters.length > 0) {
      const m = this.#pull();
      if (m === undefined) break;
      this.#waiters.shift()?.resolve(m);
    }
    if (this.#attached > 0 && !this.#pushing && !this.#quiescing) void this.#pushLoop();
  }

  /** @internal Stops pushing to actors (a shutdown's drain); settlements still count. */
  quiesce(): void {
    this.#quiescing = true;
  }

  // ---- settlement, called by messages and push lineages ----

  ackDelivery(d: Delivery): void {
    if (this.#pending.get(d.seq) !== d) return;
    this.#counts.acked++;
    this.#settle(d.seq);
  }

  termDelivery(d: Delivery, reason: string | undefined): void {
    if (this.#pending.get(d.seq) !== d) return;
    this.#counts.terminated++;
    if (reason !== undefined) this.#deps.log.info(`consumer '${this.#key}' terminated sequence ${d.seq}: ${reason}`);
    this.#settle(d.seq);
  }

  nackDelivery(d: Delivery, attempt: number, delayMs: number, error: unknown): void {
    if (this.#closed || this.#pending.get(d.seq) !== d || !d.out || d.attempt !== attempt) return;
    d.out = false;
    d.push = undefined;
    d.timer?.cancel();
    d.timer = undefined;
    if (d.attempt >= this.#maxDeliver) {
      this.#deadLetterDelivery(d, error ?? new StreamError(this.stream, `sequence ${d.seq} was not acknowledged`));
      return;
    }
    if (delayMs <= 0) this.#due(d);
    else d.timer = this.#deps.clock.setTimeout(() => this.#due(d), delayMs);
  }

  extendDelivery(d: Delivery, attempt: number): void {
    if (this.#closed || this.#pending.get(d.seq) !== d || !d.out || d.attempt !== attempt || d.timer === undefined)
      return;
    d.timer.cancel();
    d.timer = this.#deps.clock.setTimeout(() => this.#expired(d, attempt), this.#ackWait(attempt));
  }

  sourceSettled(d: Delivery, lineage: PushLineage, error: unknown): void {
    if (d.push !== lineage) return;
    if (error === undefined) this.ackDelivery(d);
    else this.nackDelivery(d, d.attempt, this.#redeliveryDelay(d.attempt), error);
  }

  // ---- internals ----

  #checkOpen(): void {
    if (this.#closed) throw new StreamError(this.stream, `consumer '${this.name}' is closed (its runtime stopped)`);
  }

  #ackWait(attempt: number): number {
    const b = this.#backoff;
    return b === undefined ? this.#ackWaitMs : (b[Math.min(attempt, b.length) - 1] as number);
  }

  #redeliveryDelay(attempt: number): number {
    const b = this.#backoff;
    if (b !== undefined) return b[Math.min(attempt, b.length) - 1] as number;
    return backoffDelay(attempt, DEFAULT_BACKOFF, this.#deps.random);
  }

  #due(d: Delivery): void {
    d.timer = undefined;
    if (this.#pending.get(d.seq) !== d) return;
    this.#ready.push(d.seq);
    this.wake();
  }

  #expired(d: Delivery, attempt: number): void {
    d.timer = undefined;
    this.nackDelivery(
      d,
      attempt,
      0,
      new StreamError(
        this.stream,
        `sequence ${d.seq} was not acknowledged within its ack wait (${this.#ackWait(attempt)} ms)`,
      ),
    );
  }

  /** A pulled message: delivered with an ack-wait timer. */
  #pull(): StreamMessage<T> | undefined {
    const taken = this.#take();
    if (taken === undefined) return undefined;
    const [d, stored] = taken;
    const attempt = d.attempt;
    d.timer = this.#deps.clock.setTimeout(() => this.#expired(d, attempt), this.#ackWait(attempt));
    return new Message(this, d, this.#source.envelope(d.seq, stored, attempt, undefined) as Envelope<T>);
  }

  /**
   * Pushes to the actors attached, one message at a time: each waits until the delivery subject's
   * mailboxes accepted it (a full `block` mailbox holds the loop), and at most `maxAckPending`
   * are unsettled. No ack wait: an actor settles every input it takes (docs/settlement.md).
   */
  async #pushLoop(): Promise<void> {
    this.#pushing = true;
    try {
      while (!this.#closed && !this.#quiescing && this.#attached > 0) {
        if (this.#pushedInTurn >= PUSH_BATCH) {
          // Fair sharing: the other consumers' loops (and the event loop) get a turn first.
          await this.#turns.next();
          this.#pushedInTurn = 0;
          continue;
        }
        const match = this.#deps.bus.lookup(this.deliverSubject);
        if (match.plain.length === 0 && match.groups.length === 0) break;
        const taken = this.#take();
        if (taken === undefined) break;
        const [d, stored] = taken;
        this.#pushedInTurn++;
        const lineage = new SourceLineage<Delivery>(this as ConsumerImpl, d, stored.i);
        d.push = lineage;
        const env = this.#source.envelope(d.seq, stored, d.attempt, lineage);
        let accepted: Promise<void>;
        try {
          accepted = this.#deps.bus.route(env, true, match);
        } catch (error) {
          accepted = Promise.reject(error);
        }
        if (accepted !== ACCEPTED) {
          try {
            await accepted;
          } catch (error) {
            lineage.release(error);
            continue;
          }
        }
        lineage.release();
      }
    } finally {
      this.#pushing = false;
    }
  }

  /** The next message to deliver, redeliveries first, within `maxAckPending`. */
  #take(): [Delivery, StoredMessage] | undefined {
    if (this.#closed) return undefined;
    this.#taking = true;
    try {
      return this.#takeNext();
    } finally {
      this.#taking = false;
      if (this.#wakeAgain) {
        this.#wakeAgain = false;
        queueMicrotask(() => this.wake());
      }
    }
  }

  #takeNext(): [Delivery, StoredMessage] | undefined {
    this.#skipRemoved();
    while (this.#ready.length > 0) {
      const d = this.#pending.get(this.#ready.shift() as number);
      if (d === undefined || d.out) continue;
      const entry = this.#source.read(d.seq, 1)[0];
      if (entry === undefined || entry.seq !== d.seq) {
        this.#settle(d.seq);
        continue;
      }
      if (entry.error !== undefined) {
        this.#corrupt(d, entry.error);
        continue;
      }
      d.attempt++;
      d.out = true;
      this.#counts.redelivered++;
      return [d, entry.value as StoredMessage];
    }
    while (this.#pending.size < this.#maxAckPending) {
      const entry = this.#nextEntry();
      if (entry === undefined) return undefined;
      const stored = entry.value as StoredMessage | undefined;
      if (stored !== undefined && this.#filter !== undefined && !subjectMatches(this.#filter, stored.s)) {
        this.#settle(entry.seq);
        continue;
      }
      const d = new Delivery(entry.seq);
      this.#pending.set(entry.seq, d);
      if (entry.error !== undefined) {
        d.attempt = 1;
        this.#corrupt(d, entry.error);
        continue;
      }
      d.attempt = 1;
      d.out = true;
      return [d, stored as StoredMessage];
    }
    return undefined;
  }

  /** The next stored entry never delivered, read ahead in chunks; skips what was settled before a restart. */
  #nextEntry(): LogEntry | undefined {
    for (;;) {
      if (this.#bufferAt >= this.#buffer.length) {
        this.#buffer = this.#source.read(this.#next, 128);
        this.#bufferAt = 0;
        if (this.#buffer.length === 0) return undefined;
      }
      const entry = this.#buffer[this.#bufferAt++] as LogEntry;
      if (entry.seq < this.#next) continue;
      this.#next = entry.seq + 1;
      if (entry.seq < this.#floor || this.#acked.has(entry.seq)) continue;
      return entry;
    }
  }

  /** Retention removed messages below the floor: they can no longer be delivered. */
  #skipRemoved(): void {
    const first = this.#source.first;
    if (this.#floor >= first) return;
    for (const [seq, d] of this.#pending) {
      if (seq < first) {
        d.timer?.cancel();
        this.#pending.delete(seq);
      }
    }
    this.#floor = this.#acked.advance(first);
    if (this.#next < first) this.#next = first;
    this.#persist();
  }

  #settle(seq: number): void {
    const d = this.#pending.get(seq);
    if (d !== undefined) {
      d.timer?.cancel();
      d.out = false;
      d.push = undefined;
      this.#pending.delete(seq);
    }
    if (this.#closed || seq < this.#floor) return;
    if (seq === this.#floor) this.#floor = this.#acked.advance(seq + 1);
    else this.#acked.add(seq);
    this.#persist();
    this.wake();
  }

  #corrupt(d: Delivery, error: CorruptRecordError): void {
    this.#deps.log.error(`consumer '${this.#key}' dead-letters a corrupt record: ${error.message}`);
    this.#deadLetterDelivery(d, error, true);
  }

  /** Sends the message to the dead-letter subject; it is settled once the dead letter is accepted. */
  #deadLetterDelivery(d: Delivery, error: unknown, corrupt = false): void {
    d.out = true; // held by the dead letter until it is accepted
    let stored: StoredMessage | undefined;
    if (!corrupt) {
      const entry = this.#source.read(d.seq, 1)[0];
      if (entry !== undefined && entry.seq === d.seq && entry.error === undefined)
        stored = entry.value as StoredMessage;
    }
    // A dead letter read from a stream on `$DLQ.>`, as actors do: its dead letter goes to
    // `$DEAD.<stream>.<consumer>`, since the default `$DLQ.<stream>.<consumer>` is one that very
    // stream captures, and the letter would come back to this consumer forever. One read from a
    // `$DEAD.` subject goes nowhere: it stays in its stream, logged, settled as terminated.
    if (stored?.s.startsWith(TERMINAL_PREFIX)) {
      this.#deps.log.error(
        `consumer '${this.#key}' gave up on sequence ${d.seq} from '${stored.s}' (a dead letter of a dead letter is sent nowhere; it stays in the stream): ${messageOf(error)}`,
      );
      this.#counts.terminated++;
      this.#settle(d.seq);
      return;
    }
    const subject =
      stored?.h?.[DEAD_LETTER_HEADERS.error] !== undefined
        ? `${TERMINAL_PREFIX}${this.stream}.${this.name}`
        : this.#deadLetter;
    const now = this.#deps.clock.now();
    const headers: Record<string, string> = {
      ...stored?.h,
      [STREAM_HEADERS.stream]: this.stream,
      [STREAM_HEADERS.sequence]: String(d.seq),
      [DEAD_LETTER_HEADERS.error]: messageOf(error),
      [DEAD_LETTER_HEADERS.code]: error instanceof SluiceError ? error.code : 'SLUICE_ERR_HANDLER',
      [DEAD_LETTER_HEADERS.actor]: `${this.stream}/${this.name}`,
      [DEAD_LETTER_HEADERS.attempts]: String(d.attempt),
      [DEAD_LETTER_HEADERS.subject]: stored?.s ?? '',
      [DEAD_LETTER_HEADERS.messageId]: stored?.i ?? '',
      [DEAD_LETTER_HEADERS.time]: new Date(now).toISOString(),
    };
    const letter = createEnvelope(
      subject,
      stored === undefined ? null : stored.d,
      { key: stored?.k, eventTime: stored === undefined ? now : (stored.e ?? stored.t), headers },
      now,
    );
    const bus = this.#deps.bus;
    if (!bus.hasSubscribers(subject)) {
      this.#deps.log.warn(
        `consumer '${this.#key}' dead-lettered sequence ${d.seq} to '${subject}', which has no subscriber: ${messageOf(error)}`,
      );
    }
    const done = () => {
      this.#counts.deadLettered++;
      // A forced reset dropped this delivery meanwhile: its sequence may be out again, in a newer
      // delivery that this letter must not settle.
      if (this.#pending.get(d.seq) === d) this.#settle(d.seq);
    };
    let accepted: Promise<void>;
    try {
      accepted = bus.route(letter, true);
    } catch (e) {
      accepted = Promise.reject(e);
    }
    if (accepted === ACCEPTED) done();
    else
      accepted.then(done, (e: unknown) => {
        // Refused: kept, and tried again after an ack wait.
        this.#deps.log.error(`consumer '${this.#key}' could not dead-letter sequence ${d.seq}: ${messageOf(e)}`);
        // Closed or reset meanwhile: nothing would cancel the timer (it could keep the process
        // alive after a stop), and a restart or the reset delivers the message again anyway.
        if (this.#closed || this.#pending.get(d.seq) !== d) return;
        d.out = false;
        d.timer = this.#deps.clock.setTimeout(() => this.#due(d), this.#ackWaitMs);
      });
  }

  /**
   * Stores the position once the synchronous run that changed it is over, never in the middle of
   * it: the settlements of one run (the inputs of a window whose result was committed, released in
   * one loop) are stored together or not at all. A position stored halfway through would, after a
   * crash, redeliver only part of such a window's inputs, and the window would be computed again
   * from part of them: a wrong result under the same idempotency key and revision.
   */
  #persist(): void {
    this.#dirty = true;
    if (this.#writing !== undefined || this.#scheduled || this.#checkpointed) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      // Closed meanwhile: close() writes what is dirty itself.
      if (!this.#closed && this.#writing === undefined && this.#dirty && !this.#checkpointed) this.#write();
    });
  }

  #write(): void {
    this.#dirty = false;
    this.#writing = this.#deps.store.putKey(POSITIONS_NAMESPACE, this.#key, this.positionRecord()).then(
      () => {
        this.#writing = undefined;
        if (this.#dirty) this.#persist();
      },
      (error: unknown) => {
        this.#writing = undefined;
        this.#deps.log.error(`consumer '${this.#key}' could not store its position: ${messageOf(error)}`);
      },
    );
  }

  /**
   * Stops delivering and stores the position. Settlements after this are ignored: what was not
   * settled by now is delivered again after a restart (at-least-once).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unregisterLag();
    for (const d of this.#pending.values()) d.timer?.cancel();
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new StreamError(this.stream, `consumer '${this.name}' closed while next() waited`));
    }
    while (this.#writing !== undefined) await this.#writing;
    if (this.#dirty && !this.#checkpointed) {
      this.#dirty = false;
      await this.#deps.store.putKey(POSITIONS_NAMESPACE, this.#key, this.positionRecord()).catch((error: unknown) => {
        this.#deps.log.error(`consumer '${this.#key}' could not store its position: ${messageOf(error)}`);
      });
    }
  }
}

/** A stored value in an error: short, and never a throw of its own (a BigInt, a cycle). */
function shown(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 80)}...` : text;
}
