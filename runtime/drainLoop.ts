/**
 * @internal A consumer's drain loop that never runs inside itself. Delivery runs in the
 * publisher's call, so a message being handled may publish to the consumer that handles it: that
 * call does not start a second drain within the first (which would hand messages out of order),
 * it makes the running one go round once more.
 */
export class DrainLoop {
  readonly #drain: () => void;
  #running = false;
  #again = false;

  /** `drain` takes what it can; it is called again while calls came in during the last round. */
  constructor(drain: () => void) {
    this.#drain = drain;
  }

  /** Whether a drain (or a step) is running now. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Runs `step` (one message handed over directly) as a round of the loop: calls that came in
   * meanwhile make the loop drain right after it. The caller checks `running` first.
   */
  step(step: () => void): void {
    this.#running = true;
    try {
      this.#again = false;
      step();
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
