import { Observable, type OperatorFunction } from 'rxjs';
import { type Clock, systemClock, type Timer } from '../runtime/clock.ts';
import type { Envelope } from '../runtime/envelope.ts';
import { numberOption } from '../runtime/options.ts';

/**
 * A watermark: the promise that no more envelopes with an event time `<= time` are expected on
 * this stream. Watermarks travel in-band, between the envelopes of an `Observable<Timed<T>>`, so
 * that their order relative to the data is exact, as in Flink. `idle: true` says the stream that
 * sent it has gone quiet and should not hold back a combined watermark (see `WatermarkHub`); an
 * envelope, or a watermark with `idle: false`, makes it active again.
 *
 * Test kits feed them directly (`input.next(new Watermark(59_999))`) to advance event time.
 */
export class Watermark {
  /** Event time, epoch ms; `-Infinity` before the first one. */
  readonly time: number;
  readonly idle: boolean;
  constructor(time: number, idle = false) {
    this.time = time;
    this.idle = idle;
  }
}

/** What flows into event-time windows: envelopes and, between them, watermarks. */
export type Timed<T> = Envelope<T> | Watermark;

/** Whether an item of a timed stream is a watermark rather than an envelope. */
export function isWatermark(item: unknown): item is Watermark {
  return item instanceof Watermark;
}

export interface WatermarksOptions {
  /**
   * How far behind the largest event time seen an envelope may still arrive on time: the
   * watermark is `maxEventTime - maxOutOfOrdernessMs - 1`, as Flink's bounded out-of-orderness.
   * @default 0
   */
  maxOutOfOrdernessMs?: number;
  /**
   * Processing time without envelopes after which the stream declares itself idle (an idle
   * watermark), so that a `WatermarkHub` or `mergeWatermarked` stops waiting for it. Measured on
   * `clock`. `Infinity` never declares idleness.
   * @default Infinity
   */
  idleTimeoutMs?: number;
  /** Processing time for idleness. @default systemClock */
  clock?: Clock;
}

export const DEFAULT_WATERMARKS_OPTIONS = Object.freeze({
  maxOutOfOrdernessMs: 0,
  idleTimeoutMs: Number.POSITIVE_INFINITY,
});

/**
 * Generates watermarks with bounded out-of-orderness from the envelopes' event times.
 * Each envelope passes on unchanged and in order; right after one that raises the watermark, a
 * `Watermark` follows (every advance is emitted, so window results do not depend on a timer).
 * Watermarks arriving from upstream are dropped and replaced, as Flink's
 * `assignTimestampsAndWatermarks` does. Envelopes without an event time pass without moving it.
 *
 *     in:   --a(10)---b(25)---c(12)---|
 *     out:  --a-w(7)--b-w(22)-c-------|      watermarks({ maxOutOfOrdernessMs: 2 })
 *
 * With `idleTimeoutMs`, `idleTimeoutMs` of processing time without envelopes emits
 * `Watermark(current, idle)`; the next envelope makes the stream active again.
 *
 * @example clicks$.pipe(eventTime((c) => c.ts), keyBy((c) => c.page), watermarks({ maxOutOfOrdernessMs: 2_000 }), tumbling({ ... }))
 * @see WatermarkHub, tumbling, eventTime
 */
export function watermarks<T>(options: WatermarksOptions = {}): OperatorFunction<Timed<T>, Timed<T>> {
  const bound = numberOption(
    'watermarks.maxOutOfOrdernessMs',
    options.maxOutOfOrdernessMs,
    DEFAULT_WATERMARKS_OPTIONS.maxOutOfOrdernessMs,
  );
  const idleTimeoutMs = numberOption(
    'watermarks.idleTimeoutMs',
    options.idleTimeoutMs,
    DEFAULT_WATERMARKS_OPTIONS.idleTimeoutMs,
    1,
    true,
  );
  const clock = options.clock ?? systemClock;
  return (source) =>
    new Observable<Timed<T>>((subscriber) => {
      const gen = new Generator<T>(subscriber, bound, idleTimeoutMs, clock);
      const sub = source.subscribe(gen);
      return () => {
        sub.unsubscribe();
        gen.stop();
      };
    });
}

interface Sink<T> {
  next(value: Timed<T>): void;
  error(error: unknown): void;
  complete(): void;
}

/** One subscription's state. It is its own observer, so the hot path makes no closures. */
class Generator<T> {
  readonly out: Sink<T>;
  readonly bound: number;
  readonly idleTimeoutMs: number;
  readonly clock: Clock;
  maxEventTime = Number.NEGATIVE_INFINITY;
  current = Number.NEGATIVE_INFINITY;
  idle = false;
  lastActivity = 0;
  timer: Timer | undefined = undefined;

  constructor(out: Sink<T>, bound: number, idleTimeoutMs: number, clock: Clock) {
    this.out = out;
    this.bound = bound;
    this.idleTimeoutMs = idleTimeoutMs;
    this.clock = clock;
    if (idleTimeoutMs !== Number.POSITIVE_INFINITY) {
      this.lastActivity = clock.now();
      this.arm(idleTimeoutMs);
    }
  }

  next(item: Timed<T>): void {
    if (item instanceof Watermark) return;
    this.out.next(item);
    let advanced = false;
    const t = item.eventTime;
    // An infinite event time would end event time for good: every later input would be late.
    if (t !== undefined && t > this.maxEventTime && t < Number.POSITIVE_INFINITY) {
      this.maxEventTime = t;
      const wm = t - this.bound - 1;
      if (wm > this.current) {
        this.current = wm;
        advanced = true;
      }
    }
    if (this.idleTimeoutMs !== Number.POSITIVE_INFINITY) this.active(advanced);
    if (advanced) this.out.next(new Watermark(this.current));
  }

  error(error: unknown): void {
    this.stop();
    this.out.error(error);
  }

  complete(): void {
    this.stop();
    this.out.complete();
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
  }

  active(advanced: boolean): void {
    this.lastActivity = this.clock.now();
    if (this.timer === undefined) this.arm(this.idleTimeoutMs);
    if (this.idle) {
      this.idle = false;
      // An advancing watermark says "active" by itself; otherwise say it explicitly.
      if (!advanced) this.out.next(new Watermark(this.current));
    }
  }

  arm(delayMs: number): void {
    // One timer at a time, re-armed lazily: resetting a timer per envelope would cost more.
    this.timer = this.clock.setTimeout(() => this.check(), delayMs);
  }

  check(): void {
    this.timer = undefined;
    const quiet = this.clock.now() - this.lastActivity;
    if (quiet < this.idleTimeoutMs) {
      this.arm(this.idleTimeoutMs - quiet);
      return;
    }
    this.idle = true;
    this.out.next(new Watermark(this.current, true));
  }
}
