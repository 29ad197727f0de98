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
 * so its own watermark): each lane pipes its timed stream through `hub.channel(ctx.lane)`, which
 * passes the lane's envelopes on and replaces the lane's own watermarks with the combined ones. A
 * lane's windows fire when the slowest active lane has moved on, and a lane that gets no data
 * stops holding the others back once its `watermarks({ idleTimeoutMs })` declares it idle. The
 * lane number keeps a lane's place in the hub while the runtime restarts its pipeline: the others
 * do not run ahead of it meanwhile, and the new pipeline takes the place over (see `channel`).
 *
 *     lane A:  --a(10)-w(9)-------------b(30)-w(29)---
 *     lane B:  -------------c(20)-w(19)---------------
 *     A out:   --a--------------w(9)----b------w(19)--    (B: w19, so min(29, 19) = 19)
 *
 * @example
 * const hub = new WatermarkHub();
 * // in each lane's pipeline:
 * pipeline: (lane$, ctx) =>
 *   lane$.pipe(watermarks({ maxOutOfOrdernessMs: 2_000, idleTimeoutMs: 10_000, clock: ctx.clock }), hub.channel(ctx.lane), tumbling({ ... }))
 * @see mergeWatermarked, watermarks
 */
export class WatermarkHub {
  readonly #inputs = new Set<Input>();
  /** Inputs of channels given an id, running or waiting for their next subscription. */
  readonly #byId = new Map<string | number, Input>();
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

  /** Inputs currently joined, counting channels with an id that wait for their next subscription. */
  get size(): number {
    return this.#inputs.size;
  }

  /**
   * An operator for one input: envelopes pass on in order; the input's watermarks go to the hub,
   * and every change of the combined watermark is emitted in their place, to each channel. Each
   * subscription is one input; it leaves the hub when it completes.
   *
   * Without an `id`, it also leaves when it fails or is unsubscribed. With one (a lane's
   * `ctx.lane`), failing or being unsubscribed without completing is what a restart of the lane's
   * pipeline looks like: the input keeps its place and its last watermark, holding the combined
   * watermark back as the lane did, until the next subscription with the same id takes the place
   * over. So a restarting lane does not let the others close windows it could still hold open,
   * and a restarted lane leaves no stale input behind.
   */
  channel<T>(id?: string | number): MonoTypeOperatorFunction<Timed<T>> {
    return (source) =>
      new Observable<Timed<T>>((subscriber) => {
        const listener = (wm: Watermark) => subscriber.next(wm);
        const input = id === undefined ? this.#add(listener, undefined) : this.#takeOver(id, listener);
        const stop = () => (id === undefined ? input.leave() : this.#suspend(id, input));
        const sub = source.subscribe({
          next: (item) => {
            if (item instanceof Watermark) input.update(item);
            else {
              if (input.idle) input.activate();
              subscriber.next(item);
            }
          },
          error: (error: unknown) => {
            stop();
            subscriber.error(error);
          },
          complete: () => {
            input.leave();
            subscriber.complete();
          },
        });
        return () => {
          sub.unsubscribe();
          stop();
        };
      });
  }

  /** Joins an input by hand; `listener` gets each combined watermark (a channel's downstream). */
  join(listener?: (watermark: Watermark) => void): WatermarkChannel & { readonly idle: boolean } {
    return this.#add(listener, undefined);
  }

  #add(listener: ((watermark: Watermark) => void) | undefined, id: string | number | undefined): Input {
    const input = new Input(this.#hooks, listener, id);
    this.#inputs.add(input);
    if (id !== undefined) this.#byId.set(id, input);
    return input;
  }

  /** The place of channel `id`, given to a new subscription; a new place if there is none free. */
  #takeOver(id: string | number, listener: (watermark: Watermark) => void): Input {
    const held = this.#byId.get(id);
    if (held === undefined || held.listener !== undefined) return this.#add(listener, id);
    // Watermark and idleness stay as the failed subscription left them; nothing is emitted now:
    // the new pipeline is replayed what the old one held, and those inputs must not be late.
    held.listener = listener;
    return held;
  }

  /** Channel `id` failed or was unsubscribed: keep its place for the next subscription. */
  #suspend(id: string | number, input: Input): void {
    if (input.left) return;
    // A place taken over by a newer subscription with the same id (two at once): this one leaves.
    if (this.#byId.get(id) !== input) input.leave();
    else input.listener = undefined;
  }

  readonly #hooks: Hooks = {
    changed: () => this.#recompute(),
    left: (input) => {
      if (input.id !== undefined && this.#byId.get(input.id) === input) this.#byId.delete(input.id);
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
  /** Where combined watermarks go; `undefined` while a channel with an id waits for its next subscription. */
  listener: ((watermark: Watermark) => void) | undefined;
  readonly id: string | number | undefined;
  watermark = Number.NEGATIVE_INFINITY;
  idle = false;
  left = false;

  constructor(hooks: Hooks, listener: ((watermark: Watermark) => void) | undefined, id: string | number | undefined) {
    this.hooks = hooks;
    this.listener = listener;
    this.id = id;
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
