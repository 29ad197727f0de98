import { type SchedulerAction, type SchedulerLike, Subscription } from 'rxjs';

/** A scheduled callback; `cancel` is idempotent. */
export interface Timer {
  cancel(): void;
}

/**
 * The source of processing time. Every timeout, backoff, deadline and processing-time trigger in
 * Sluice runs on a `Clock`, never on the global timers, so tests swap in a {@link VirtualClock}
 * and run time-based logic without sleeping.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /**
   * Runs `callback` once `delayMs` has passed on this clock. A negative or NaN delay means now;
   * `Infinity` means never. Delays beyond Node's timer limit (2^31−1 ms, about 24.8 days) are
   * honoured, not cut short.
   */
  setTimeout(callback: () => void, delayMs: number): Timer;
  /** Resolves after `delayMs`; rejects with the signal's reason if it aborts first. */
  sleep(delayMs: number, signal?: AbortSignal): Promise<void>;
  /** An RxJS scheduler on this clock, for `timer`, `bufferTime`, `debounceTime` and friends. */
  readonly scheduler: SchedulerLike;
}

abstract class BaseClock implements Clock {
  readonly scheduler: SchedulerLike = new ClockScheduler(this);
  abstract now(): number;
  abstract setTimeout(callback: () => void, delayMs: number): Timer;

  sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = () => {
        timer.cancel();
        reject(signal?.reason);
      };
      const timer = this.setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, delayMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

const RESOLVED: Promise<void> = Promise.resolve();

/** Wall-clock time and Node's timers. A pending timer keeps the process alive, as work is still due. */
export class SystemClock extends BaseClock {
  /**
   * Starts undefined so that V8 keeps the field tagged: the reading is then one number object that
   * every envelope of the turn points to (see envelope.ts), where a field holding raw doubles would
   * make each caller box the value anew, 16 bytes per message.
   */
  #cached: number | undefined = undefined;
  #reads = 0;
  readonly #expire = (): void => {
    this.#reads = 0;
  };

  /**
   * Date.now() costs ~40 ns, as much as the rest of a publish: one reading serves up to 64 calls
   * within one synchronous turn (a burst of publishes), never longer than the turn.
   */
  now(): number {
    if (this.#reads === 0) {
      this.#cached = Date.now();
      // A reaction on a settled promise rather than queueMicrotask, which wraps each callback in an
      // async resource and a bound function (68 ns against 25, and more when it runs): the expiry
      // runs at the same point, the end of the synchronous turn.
      void RESOLVED.then(this.#expire);
    }
    if (++this.#reads === 64) this.#reads = 0;
    return this.#cached as number;
  }

  setTimeout(callback: () => void, delayMs: number): Timer {
    if (delayMs <= MAX_TIMER_MS || Number.isNaN(delayMs)) {
      const handle = setTimeout(callback, delayMs > 0 ? delayMs : 0);
      return { cancel: () => clearTimeout(handle) };
    }
    if (delayMs === Number.POSITIVE_INFINITY) return NEVER;
    // Node fires a longer delay after 1 ms (TimeoutOverflowWarning): wait in steps it accepts.
    const due = Date.now() + delayMs;
    let handle: ReturnType<typeof setTimeout>;
    const step = (): void => {
      const rest = due - Date.now();
      if (rest > MAX_TIMER_MS) handle = setTimeout(step, MAX_TIMER_MS);
      else handle = setTimeout(callback, rest > 0 ? rest : 0);
    };
    handle = setTimeout(step, MAX_TIMER_MS);
    return { cancel: () => clearTimeout(handle) };
  }
}

/** The longest delay Node's `setTimeout` takes (a signed 32-bit count of milliseconds). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

const NEVER: Timer = Object.freeze({ cancel: () => {} });

interface VirtualTimer {
  readonly at: number;
  readonly seq: number;
  readonly callback: () => void;
  cancelled: boolean;
}

/**
 * Time that moves only when told to. `advance` runs every timer that falls due, in due order
 * (ties in the order they were set), with `now()` equal to each timer's due time while it runs,
 * and lets promise continuations settle between timers, so `await clock.sleep(…)` chains behave
 * as they would in real time.
 */
export class VirtualClock extends BaseClock {
  #now: number;
  #seq = 0;
  #timers: VirtualTimer[] = [];

  constructor(startMs = 0) {
    super();
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, delayMs: number): Timer {
    // As SystemClock: a negative or NaN delay means now (a NaN due time would never sort or fall
    // due), `Infinity` never, and a delay past Node's timer limit is kept whole.
    if (delayMs === Number.POSITIVE_INFINITY) return NEVER;
    const delay = delayMs > 0 ? delayMs : 0;
    const timer: VirtualTimer = { at: this.#now + delay, seq: this.#seq++, callback, cancelled: false };
    insertSorted(this.#timers, timer);
    return {
      cancel: () => {
        timer.cancelled = true;
      },
    };
  }

  /** Timers set and not yet run or cancelled. */
  get pending(): number {
    return this.#timers.filter((t) => !t.cancelled).length;
  }

  /** The due time of the next timer, if any. */
  nextDue(): number | undefined {
    return this.#timers.find((t) => !t.cancelled)?.at;
  }

  /** Moves time forward by `ms`, running what falls due on the way. */
  async advance(ms: number): Promise<void> {
    await this.advanceTo(this.#now + ms);
  }

  /** Moves time to `targetMs` (never backwards), running what falls due on the way. */
  async advanceTo(targetMs: number): Promise<void> {
    await settle();
    for (;;) {
      const next = this.#timers[0];
      if (next === undefined || next.at > targetMs) break;
      this.#timers.shift();
      if (next.cancelled) continue;
      if (next.at > this.#now) this.#now = next.at;
      next.callback();
      await settle();
    }
    if (targetMs > this.#now) this.#now = targetMs;
  }

  /** Runs timers until none is left, at most `limit` of them (a guard against timers that re-arm forever). */
  async runAll(limit = 100_000): Promise<void> {
    for (let i = 0; i < limit; i++) {
      const due = this.nextDue();
      if (due === undefined) return;
      await this.advanceTo(due);
    }
    throw new Error(`virtual clock: more than ${limit} timers ran; a timer re-arms itself forever`);
  }
}

function insertSorted(timers: VirtualTimer[], timer: VirtualTimer): void {
  let lo = 0;
  let hi = timers.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const t = timers[mid] as VirtualTimer;
    if (t.at < timer.at || (t.at === timer.at && t.seq < timer.seq)) lo = mid + 1;
    else hi = mid;
  }
  timers.splice(lo, 0, timer);
}

/** Lets queued promise continuations and microtasks run (several turns, for chained awaits). */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
  await new Promise<void>((resolve) => setImmediate(resolve));
}

class ClockAction<T> extends Subscription implements SchedulerAction<T> {
  #timer: Timer | undefined;
  readonly #clock: Clock;
  readonly #work: (this: SchedulerAction<T>, state?: T) => void;

  constructor(clock: Clock, work: (this: SchedulerAction<T>, state?: T) => void) {
    super();
    this.#clock = clock;
    this.#work = work;
    this.add(() => this.#timer?.cancel());
  }

  schedule(state?: T, delay = 0): Subscription {
    if (this.closed) return this;
    this.#timer?.cancel();
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      if (!this.closed) this.#work.call(this, state);
    }, delay);
    return this;
  }
}

class ClockScheduler implements SchedulerLike {
  readonly #clock: Clock;
  constructor(clock: Clock) {
    this.#clock = clock;
  }
  now(): number {
    return this.#clock.now();
  }
  schedule<T>(work: (this: SchedulerAction<T>, state?: T) => void, delay = 0, state?: T): Subscription {
    return new ClockAction(this.#clock, work).schedule(state, delay);
  }
}

/** The clock of a process that was given none. */
export const systemClock: Clock = new SystemClock();
