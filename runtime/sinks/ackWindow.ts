import { systemClock } from '../clock.ts';

/**
 * @internal The publishes of one batch to a broker that acknowledges each publish (RabbitMQ's
 * confirms, MQTT's PUBACKs): at most `bound` awaiting their acknowledgement at a time, the window
 * moved on by the acknowledgements themselves. No promise per message and one timer per batch, so
 * a publish costs what the client's own call costs.
 */
export interface AckWindowOptions {
  /** Publishes in the batch, numbered from 0. */
  size: number;
  /** At most this many sent and not yet answered. */
  bound: number;
  /**
   * Sends publish `i`, whose answer must reach {@link AckWindow.answer} once, from the client's
   * callback or at once when it could not be sent.
   */
  send: (i: number) => void;
  /** Publish `i` is done: acknowledged (`error` undefined), refused, or failed; called once per publish. */
  settled: (i: number, error: unknown) => void;
  /**
   * Sends the publishes that answers free from a microtask rather than at once: a client that
   * hands over the answers one read brought one per tick then writes what they free in one
   * socket write, not one each.
   */
  deferSends?: boolean;
}

export class AckWindow {
  readonly #size: number;
  readonly #bound: number;
  readonly #send: (i: number) => void;
  readonly #settled: (i: number, error: unknown) => void;
  readonly #defer: boolean;
  readonly #done: Uint8Array;
  #next = 0;
  #inFlight = 0;
  #doneCount = 0;
  /** A send loop is running (or, deferred, scheduled): answers meanwhile leave the sending to it. */
  #sending = false;
  readonly #all: Promise<void>;
  #resolve!: () => void;

  constructor(options: AckWindowOptions) {
    this.#size = options.size;
    this.#bound = options.bound;
    this.#send = options.send;
    this.#settled = options.settled;
    this.#defer = options.deferSends === true;
    this.#done = new Uint8Array(options.size);
    this.#all = new Promise<void>((resolve) => {
      this.#resolve = resolve;
    });
    if (options.size === 0) this.#resolve();
  }

  /** The answer to publish `i`: `error` undefined (or null, as clients give it) when acknowledged. */
  readonly answer = (i: number, error: unknown): void => {
    this.#inFlight--;
    this.#settle(i, error ?? undefined);
  };

  /**
   * Fails every publish not answered yet, sent or not (a closed channel, the time up): none is
   * sent after this, so nothing is left waiting for an answer without a timer.
   */
  failPending(error: Error): void {
    this.#next = this.#size;
    for (let i = 0; i < this.#size; i++) this.#settle(i, error);
  }

  /**
   * Sends the batch and resolves once every publish is settled; what is not answered within
   * `timeoutMs` fails with `timeoutError()`.
   */
  async run(timeoutMs: number, timeoutError: () => Error): Promise<void> {
    // The clock's timer, not Node's: past 2^31-1 ms Node fires after 1 ms, and every batch of a
    // sink given a long timeout failed at once with "no confirm".
    const timer = systemClock.setTimeout(() => this.failPending(timeoutError()), timeoutMs);
    try {
      this.#pump();
      await this.#all;
    } finally {
      timer.cancel();
    }
  }

  #settle(i: number, error: unknown): void {
    if (this.#done[i] === 1) return;
    this.#done[i] = 1;
    this.#doneCount++;
    this.#settled(i, error);
    if (this.#doneCount === this.#size) this.#resolve();
    else if (this.#next < this.#size && !this.#sending) {
      if (!this.#defer) this.#pump();
      else {
        this.#sending = true;
        queueMicrotask(this.#pumpLater);
      }
    }
  }

  readonly #pumpLater = (): void => {
    this.#sending = false;
    this.#pump();
  };

  #pump(): void {
    this.#sending = true;
    while (this.#next < this.#size && this.#inFlight < this.#bound) {
      const i = this.#next++;
      this.#inFlight++;
      this.#send(i);
    }
    this.#sending = false;
  }
}
