import { type Observable, Subject, type Subscription } from 'rxjs';
import type { Timed } from '../operators/watermarks.ts';
import { Watermark } from '../operators/watermarks.ts';
import { type LateReason, WINDOW_HEADERS } from '../operators/windows/types.ts';
import type { ActorContext, Logger } from '../runtime/actors/actor.ts';
import { Bus } from '../runtime/bus/bus.ts';
import { VirtualClock } from '../runtime/clock.ts';
import { createEnvelope, type Envelope } from '../runtime/envelope.ts';
import { OptionsError } from '../runtime/errors.ts';
import { type Outcome, Tracker, type TrackerOwner } from '../runtime/lineage.ts';
import { unavailableState } from '../runtime/state/keyedState.ts';

/**
 * A pipeline as an actor declares it: its input is typed as envelopes, so that an inline factory
 * starts with `eventTime`, `keyBy` or `map` as in an actor. A factory written for a timed input
 * (`Observable<Timed<In>>`) is accepted too. Watermarks pushed by `watermark()` travel in the same
 * stream: the event-time operators pass them on, and `watermarks()` replaces them with its own.
 */
interface PipelineFactoryShape<In, Out> {
  build(input$: Observable<Envelope<In>>, ctx: ActorContext): Observable<Envelope<Out>>;
}
export type PipelineFactory<In, Out> = PipelineFactoryShape<In, Out>['build'];

export interface SendOptions {
  /** Event time, epoch ms. */
  eventTime?: number;
  key?: string;
  headers?: Record<string, string>;
  /** @default the harness's input subject */
  subject?: string;
}

export interface PipelineHarnessOptions {
  /** Processing time the virtual clock starts at. @default 0 */
  startMs?: number;
  /** The name the pipeline sees as `ctx.name`. @default 'test' */
  name?: string;
  /** The subject inputs are sent on. @default 'test.in' */
  subject?: string;
}

/**
 * An input sent as `[data, eventTime]`, or `[data, eventTime, key]`: what `sendAll` takes.
 */
export type TimedInput<In> = readonly [data: In, eventTime: number, key?: string];

/** A late input a window published (its `late` option forwarding it), with the reason from its headers. */
export interface LateRecord<T = unknown> {
  readonly env: Envelope<T>;
  readonly reason: LateReason;
}

/** What happened to one input sent through the harness. */
export interface InputRecord<In> {
  readonly env: Envelope<In>;
  /**
   * Until settled: `undefined`. `failed` with `error`: a window turned it away as late with no
   * `late` option (a `LateDataError`), or the pipeline failed while handling it.
   */
  outcome: Outcome | undefined;
  error: unknown;
}

/**
 * Runs one pipeline in-process on a virtual clock, as Flink's operator test harnesses do: send
 * inputs with chosen event times, push watermarks, move processing time, and read what came out,
 * what the pipeline published on the bus (late data, side outputs) and how each input settled.
 * Everything is synchronous but `advance`, which lets timers and promise chains run.
 * To watch a window's state, make the operator outside the factory and read its `stats()`: it
 * sums over the live subscriptions, so it follows the pipeline across `restart()`.
 *
 * @example
 * const h = testPipeline((in$) => in$.pipe(tumbling({ name: 'views', sizeMs: 60_000, aggregate: agg.count() })));
 * h.send('a', { eventTime: 1_000, key: 'home' });
 * h.watermark(59_999);
 * expect(h.outputs.map((r) => r.data.value)).toEqual([1]);
 */
export class PipelineHarness<In, Out> implements TrackerOwner {
  readonly clock: VirtualClock;
  /** A bus on the virtual clock, given to the pipeline as `ctx.bus`; `published` records what reaches it. */
  readonly bus: Bus;
  /** Output envelopes, in order. */
  readonly outputs: Envelope<Out>[] = [];
  /** Every input sent, with its settlement. */
  readonly inputs: InputRecord<In>[] = [];
  /** Warnings the pipeline's context logged. */
  readonly warnings: string[] = [];
  readonly #factory: PipelineFactory<In, Out>;
  readonly #ctx: ActorContext;
  readonly #subject: string;
  readonly #published: Envelope[] = [];
  readonly #trackers = new Map<Tracker, InputRecord<In>>();
  readonly #settledTrackers = new WeakSet<Tracker>();
  #input: Subject<Timed<In>> | undefined;
  #subscription: Subscription | undefined;
  #generation = 0;
  #completed = false;
  #error: unknown = undefined;
  /** Set apart from `#error`, which may be any value, `undefined` included. */
  #failed = false;

  constructor(factory: PipelineFactory<In, Out>, options: PipelineHarnessOptions = {}) {
    this.#factory = factory;
    this.clock = new VirtualClock(options.startMs ?? 0);
    this.bus = new Bus({ clock: this.clock });
    this.#subject = options.subject ?? 'test.in';
    this.bus.subscribe('>', { callback: (env) => void this.#published.push(env) });
    const log = this.#logger();
    this.#ctx = Object.freeze({
      name: options.name ?? 'test',
      lane: 0,
      lanes: 1,
      clock: this.clock,
      scheduler: this.clock.scheduler,
      bus: this.bus,
      log,
      state: unavailableState(options.name ?? 'test'),
      publish: (subject, data, opts) => this.bus.publish(subject, data, opts),
      request: (subject, data, opts) => this.bus.request(subject, data, opts),
    } satisfies ActorContext);
    this.#start();
  }

  /** Whether the pipeline completed. */
  get completed(): boolean {
    return this.#completed;
  }

  /**
   * The error the pipeline failed with, if it did. Until `restart()`, every call that feeds the
   * pipeline or moves time throws it, so a failure is never missed: `send` and `sendAll` throw
   * an earlier failure (a failure on the input sent shows in its record, `outcome: 'failed'`),
   * and `watermark`, `complete` and `advance` also throw a failure they caused.
   */
  get error(): unknown {
    return this.#error;
  }

  /** Envelopes published on the harness's bus (late data, side outputs), optionally on one subject. */
  published(subject?: string): Envelope[] {
    return subject === undefined ? [...this.#published] : this.#published.filter((e) => e.subject === subject);
  }

  /**
   * Late data the pipeline published (inputs a window turned away, forwarded by its `late`
   * option), in order, optionally on one subject: every published envelope with a
   * `sluice-late-reason` header.
   *
   * @example
   * const late = testPipeline((in$, ctx) =>
   *   in$.pipe(
   *     tumbling({
   *       name: 'views',
   *       sizeMs: 10,
   *       aggregate: agg.count(),
   *       late: (env) => ctx.bus.forward({ ...env, subject: 'views.late' }),
   *     }),
   *   ),
   * );
   * late.send('a', { eventTime: 25 });
   * late.watermark(29);
   * late.send('b', { eventTime: 5 }); // [0, 10) closed long ago
   * expect(late.lateData('views.late').map((l) => l.reason)).toEqual(['beyond-allowed-lateness']);
   */
  lateData<T = In>(subject?: string): LateRecord<T>[] {
    return lateRecords<T>(this.published(subject) as Envelope<T>[]);
  }

  /** The data of the outputs, for short assertions. */
  get values(): Out[] {
    return this.outputs.map((o) => o.data);
  }

  /** Inputs not yet settled: in flight or kept by operator state. */
  get open(): number {
    return this.inputs.filter((r) => r.outcome === undefined).length;
  }

  /** Sends one input; returns its record, whose `outcome` shows how it settled. */
  send(data: In, options: SendOptions = {}): InputRecord<In> {
    const env = createEnvelope(options.subject ?? this.#subject, data, {
      ...(options.eventTime === undefined ? {} : { eventTime: options.eventTime }),
      ...(options.key === undefined ? {} : { key: options.key }),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
    });
    const record: InputRecord<In> = { env, outcome: undefined, error: undefined };
    this.inputs.push(record);
    this.#deliver(record);
    return record;
  }

  /**
   * Sends several inputs with event times (and keys), in order: `[[data, eventTime, key?], ...]`.
   * A key in an item wins over `options.key`.
   */
  sendAll(items: Iterable<TimedInput<In>>, options: Omit<SendOptions, 'eventTime'> = {}): InputRecord<In>[] {
    const records: InputRecord<In>[] = [];
    for (const [data, eventTime, key] of items) {
      records.push(this.send(data, key === undefined ? { ...options, eventTime } : { ...options, eventTime, key }));
    }
    return records;
  }

  /**
   * Pushes a watermark into the pipeline's input, to move event time in pipelines that take
   * watermarks (windows). `eventTime` and `keyBy` pass it on; `watermarks()` drops it and makes
   * its own from the event times, as Flink's does: there, send inputs with later event times.
   */
  watermark(time: number, idle = false): void {
    this.#live().next(new Watermark(time, idle));
    this.#raise();
  }

  /** Moves processing time forward, running timers (early firings, idleness, backoffs) on the way. */
  async advance(ms: number): Promise<void> {
    this.#raise();
    await this.clock.advance(ms);
    this.#raise();
  }

  /** Completes the input (the end of the stream): windows flush what they hold. */
  complete(): void {
    this.#live().complete();
    this.#raise();
  }

  /**
   * Fails the running pipeline and builds it anew from its factory, replaying the inputs it still
   * held in arrival order, as the runtime does when it restarts an actor's pipeline.
   */
  restart(): void {
    this.#subscription?.unsubscribe();
    const replay: InputRecord<In>[] = [];
    for (const [tracker, record] of this.#trackers) {
      if (record.outcome === undefined) replay.push(record);
      this.#trackers.delete(tracker);
    }
    this.#generation++;
    this.#failed = false;
    this.#error = undefined;
    this.#completed = false;
    this.#start();
    for (const record of replay) this.#deliver(record);
  }

  // ---- TrackerOwner ----

  leftFlight(): void {}

  settled(tracker: Tracker, error: unknown): void {
    const record = this.#trackers.get(tracker);
    if (record === undefined || tracker.generation !== this.#generation) return;
    this.#trackers.delete(tracker);
    this.#settledTrackers.add(tracker);
    record.error = error;
    record.outcome = error !== undefined ? 'failed' : tracker.used ? 'acked' : 'dropped';
  }

  #start(): void {
    const input = new Subject<Timed<In>>();
    this.#input = input;
    // Watermarks go through the same stream (see PipelineFactory).
    this.#subscription = this.#factory(input.asObservable() as Observable<Envelope<In>>, this.#ctx).subscribe({
      next: (out) => {
        if (out.lineage instanceof Tracker && this.#settledTrackers.has(out.lineage)) {
          // The runtime warns and counts this too: an async step that did not hold its input.
          this.warnings.push(
            `output for input '${out.lineage.id}' came after the input settled; wrap async steps in mapAsync or hold()`,
          );
        }
        // The harness is the sink: an output is committed as soon as it is collected.
        out.lineage?.retain();
        this.outputs.push(out);
        out.lineage?.release();
      },
      error: (error: unknown) => {
        this.#failed = true;
        this.#error = error;
      },
      complete: () => {
        this.#completed = true;
      },
    });
  }

  #deliver(record: InputRecord<In>): void {
    const input = this.#live();
    const tracker = new Tracker(record.env.id, this, undefined, this.#generation);
    this.#trackers.set(tracker, record);
    input.next({ ...record.env, lineage: tracker });
    // If the pipeline failed on this input, the runtime would take it for the culprit: it fails with the error.
    tracker.release(this.#failed ? (this.#error ?? new Error('the pipeline failed')) : undefined);
  }

  /** Throws the error the pipeline failed with, if it did (see `error`). */
  #raise(): void {
    if (this.#failed) throw this.#error ?? new Error('the pipeline failed with no error value');
  }

  #live(): Subject<Timed<In>> {
    this.#raise();
    if (this.#input === undefined || this.#completed) {
      throw new OptionsError('harness', 'the pipeline has completed', 'complete');
    }
    return this.#input;
  }

  #logger(): Logger {
    const keep = (m: string) => void this.warnings.push(m);
    return { debug: () => {}, info: () => {}, warn: keep, error: keep };
  }
}

/** @internal The late records among `published`: shared by both harnesses. */
export function lateRecords<T>(published: readonly Envelope<T>[]): LateRecord<T>[] {
  const late: LateRecord<T>[] = [];
  for (const env of published) {
    const reason = env.headers[WINDOW_HEADERS.lateReason];
    if (reason !== undefined) late.push({ env, reason: reason as LateReason });
  }
  return late;
}

/** Runs `pipeline` in a {@link PipelineHarness}. */
export function testPipeline<In, Out>(
  pipeline: PipelineFactory<In, Out>,
  options?: PipelineHarnessOptions,
): PipelineHarness<In, Out> {
  return new PipelineHarness(pipeline, options);
}
