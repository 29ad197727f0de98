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
