import { type MonoTypeOperatorFunction, Observable } from 'rxjs';
import { type Timed, Watermark } from './watermarks.ts';

/** One input of a hub, for code that feeds a hub by hand (a source connector, a custom merge). */
export interface WatermarkChannel {
  /** This input's latest watermark (idle or not); a lower time than before is ignored. */
  update(watermark: Watermark): void;
  /** This input sent data again after being idle. */
  activate(): void;
  /** This input ended: it no longer holds the combined watermark back. */
  leave(): void;
}

export interface WatermarkHubOptions {
  /** Called with each new combined watermark (or idle status), before the channels get it. */
  onWatermark?: (watermark: Watermark) => void;
}

/**
 * Combines the watermarks of several inputs into one, as Flink combines input channels: the
 * combined watermark is the minimum over the active inputs; idle inputs do not count; when every
 * input is idle it is the maximum over all of them (Flink's "flush" of an all-idle valve). It
 * never goes backwards: an input that wakes up behind the combined watermark catches up first.
 *
 * Use one hub for the `partitionBy` lanes of an actor (each lane sees a subset of the keys, and
 * so its own watermark): each lane pipes its timed stream through `hub.channel()`, which passes
 * the lane's envelopes on and replaces the lane's own watermarks with the combined ones. A lane's
 * windows fire when the slowest active lane has moved on, and a lane that gets no data stops
 * holding the others back once its `watermarks({ idleTimeoutMs })` declares it idle.
 *
 *     lane A:  --a(10)-w(9)-------------b(30)-w(29)---
 *     lane B:  -------------c(20)-w(19)---------------
 *     A out:   --a--------------w(9)----b------w(19)--    (B: w19, so min(29, 19) = 19)
 *
 * @example
 * const hub = new WatermarkHub();
 * // in each lane's pipeline:
 * lane$.pipe(watermarks({ maxOutOfOrdernessMs: 2_000, idleTimeoutMs: 10_000, clock }), hub.channel(), tumbling({ ... }))
 * @see mergeWatermarked, watermarks
 */
export class WatermarkHub {
  readonly #inputs = new Set<Input>();
  readonly #onWatermark: ((watermark: Watermark) => void) | undefined;
  #combined = Number.NEGATIVE_INFINITY;
  #idle = false;

  constructor(options: WatermarkHubOptions = {}) {
    this.#onWatermark = options.onWatermark;
  }

  /** The combined watermark; `-Infinity` until every active input has sent one. */
  get watermark(): number {
    return this.#combined;
  }

  /** Whether every input is idle. */
  get idle(): boolean {
    return this.#idle;
  }

  /** Inputs currently joined. */
  get size(): number {
    return this.#inputs.size;
  }

  /**
   * An operator for one input: envelopes pass on in order; the input's watermarks go to the hub,
   * and every change of the combined watermark is emitted in their place, to each channel. Each
   * subscription is one input; it leaves the hub when it completes, fails or is unsubscribed.
   */
  channel<T>(): MonoTypeOperatorFunction<Timed<T>> {
    return (source) =>
      new Observable<Timed<T>>((subscriber) => {
        const input = this.join((wm) => subscriber.next(wm));
        const sub = source.subscribe({
          next: (item) => {
            if (item instanceof Watermark) input.update(item);
            else {
              if (input.idle) input.activate();
              subscriber.next(item);
            }
          },
          error: (error: unknown) => {
            input.leave();
            subscriber.error(error);
          },
          complete: () => {
            input.leave();
            subscriber.complete();
          },
        });
        return () => {
          sub.unsubscribe();
          input.leave();
        };
      });
  }

  /** Joins an input by hand; `listener` gets each combined watermark (a channel's downstream). */
  join(listener?: (watermark: Watermark) => void): WatermarkChannel & { readonly idle: boolean } {
    const input = new Input(this.#hooks, listener);
    this.#inputs.add(input);
    return input;
  }

  readonly #hooks: Hooks = {
    changed: () => this.#recompute(),
    left: (input) => {
      if (this.#inputs.delete(input)) this.#recompute();
    },
  };

  #recompute(): void {
    if (this.#inputs.size === 0) return;
    let min = Number.POSITIVE_INFINITY;
    let max = Number.NEGATIVE_INFINITY;
    let active = 0;
    for (const input of this.#inputs) {
      if (input.watermark > max) max = input.watermark;
      if (input.idle) continue;
      active++;
      if (input.watermark < min) min = input.watermark;
    }
    const candidate = active > 0 ? min : max;
    const idle = active === 0;
    const advanced = candidate > this.#combined;
    if (!advanced && idle === this.#idle) return;
    if (advanced) this.#combined = candidate;
    this.#idle = idle;
    const wm = new Watermark(this.#combined, idle);
    this.#onWatermark?.(wm);
    // A listener's downstream may leave (complete) while we iterate: iterate over a copy.
    for (const input of [...this.#inputs]) input.listener?.(wm);
  }
}

interface Hooks {
  changed(): void;
  left(input: Input): void;
}

class Input implements WatermarkChannel {
  readonly hooks: Hooks;
  readonly listener: ((watermark: Watermark) => void) | undefined;
  watermark = Number.NEGATIVE_INFINITY;
  idle = false;
  left = false;

  constructor(hooks: Hooks, listener: ((watermark: Watermark) => void) | undefined) {
    this.hooks = hooks;
    this.listener = listener;
  }

  update(watermark: Watermark): void {
    if (this.left) return;
    if (watermark.time > this.watermark) this.watermark = watermark.time;
    this.idle = watermark.idle;
    this.hooks.changed();
  }

  activate(): void {
    if (this.left || !this.idle) return;
    this.idle = false;
    this.hooks.changed();
  }

  leave(): void {
    if (this.left) return;
    this.left = true;
    this.hooks.left(this);
  }
}
