/**
 * The burst budget. Delivery runs in the publisher's call and drains run in microtasks, so a
 * consumer that feeds itself (a callback publishing to its own subject, an actor whose outputs come
 * back to it) or a publisher awaiting publishes that resolve at once would never give the event
 * loop back: timers, signals and `stop()` would never run. Each unit of such work (a message taken
 * from a mailbox, a publish resolved at once) spends from a budget shared by the process. Once a
 * burst is spent, drains stop and resume on a macrotask (`setImmediate`: microtasks would starve
 * timers too) and awaited publishes resolve there. What is left waits in its mailbox, in order,
 * and the mailbox's bound pushes back on publishers meanwhile.
 *
 * A message handed to an idle consumer inside the publisher's call does not spend: a publisher
 * that loops synchronously owns its loop, and counting it would only add turns to the fast path.
 * Handing over stops too, at twice the burst: that breaks a chain of publishes from microtasks,
 * each to an idle consumer, while the publishes that end a batch of awaited ones (the common case
 * right after a burst is spent) still go straight through rather than through the mailbox.
 */
/** A burst ends after this long. */
const BURST_MS = 4;
/** The clock is read once every this many units (a power of two), not per message. */
const CLOCK_EVERY = 128;

// Taken at load: fake timers installed afterwards must not stop the runtime from resuming.
const immediate = globalThis.setImmediate;

/** Units left before the next look at the clock; 0 or less sends `spend` to its slow path. */
let credit = 0;
/** Whether a burst is under way: its first unit scheduled the turn that ends it. */
let started = false;
let burstStart = 0;
let exhausted = false;
/** Hand-overs asked for since the burst was spent, and whether they are refused now. */
let late = 0;
let overrun = false;
let nextTurn: Promise<void> | undefined;

function newBurst(): void {
  started = false;
  exhausted = false;
  credit = 0;
  late = 0;
  overrun = false;
}

/**
 * @internal Spends one unit of the current burst: false once it is spent, until the event loop had
 * a turn. One decrement on the hot path; the clock is read once per CLOCK_EVERY units.
 */
export function spend(): boolean {
  return --credit > 0 || check();
}

function check(): boolean {
  if (exhausted) {
    credit = 0;
    return false;
  }
  if (!started) {
    started = true;
    immediate(newBurst);
    burstStart = performance.now();
  } else if (performance.now() - burstStart >= BURST_MS) {
    exhausted = true;
    credit = 0;
    return false;
  }
  credit = CLOCK_EVERY;
  return true;
}

/**
 * @internal Whether a message for an idle consumer must queue rather than be handed over: once the
 * burst has run over twice its length, until the event loop had a turn.
 */
export function handoffRefused(): boolean {
  if (!exhausted) return false;
  if (!overrun && (++late & (CLOCK_EVERY - 1)) === 0 && performance.now() - burstStart >= 2 * BURST_MS) {
    overrun = true;
  }
  return overrun;
}

/** @internal Resolves after the event loop had a turn; one promise is shared by everyone waiting for it. */
export function nextMacrotask(): Promise<void> {
  nextTurn ??= new Promise<void>((resolve) => {
    immediate(() => {
      nextTurn = undefined;
      resolve();
    });
  });
  return nextTurn;
}

/**
 * @internal A consumer's drain loop that never runs inside itself. Delivery runs in the
 * publisher's call, so a message being handled may publish to the consumer that handles it: that
 * call does not start a second drain within the first (which would hand messages out of order),
 * it makes the running one go round once more. The drain asks {@link DrainLoop.spend} before each
 * message it takes and stops when refused: the loop then resumes on a macrotask.
 */
export class DrainLoop {
  readonly #drain: () => void;
  #running = false;
  #again = false;
  #deferred = false;
  readonly #resume = (): void => {
    this.#deferred = false;
    this.run();
  };

  /** `drain` takes what it can; it is called again while calls came in during the last round. */
  constructor(drain: () => void) {
    this.#drain = drain;
  }

  /** Whether a drain (or a step) is running now. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * For the drain, before it takes a message: false when the burst is spent, and then the loop
   * runs again on a macrotask.
   */
  spend(): boolean {
    if (spend()) return true;
    if (!this.#deferred) {
      this.#deferred = true;
      immediate(this.#resume);
    }
    return false;
  }

  /**
   * Starts a round for one message handed over directly, which the caller runs itself, then calls
   * {@link endStep} (from a `finally`): calls that came in meanwhile make the loop drain right after
   * it. The caller checks `running` first. Two calls rather than one taking the handler: the
   * handler's call site would be shared by every consumer, and not inlined.
   */
  beginStep(): void {
    this.#running = true;
    this.#again = false;
  }

  /** Ends the round {@link beginStep} began, after a drain of what came in meanwhile. */
  endStep(): void {
    try {
      while (this.#again) {
        this.#again = false;
        this.#drain();
      }
    } finally {
      this.#running = false;
    }
  }

  run(): void {
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    try {
      do {
        this.#again = false;
        this.#drain();
      } while (this.#again);
    } finally {
      this.#running = false;
    }
  }
}
