import type { Actor, Logger } from './actor.ts';
import { ActorCell, type ActorCell as ActorCellType, type ActorRef } from './actorCell.ts';
import { Bus, type BusOptions } from './bus.ts';
import { type Clock, systemClock, type Timer } from './clock.ts';
import { deliveryDeferred, nextMacrotask } from './drainLoop.ts';
import { OptionsError, type RestartLimitError } from './errors.ts';
import { intOption } from './options.ts';
import { Telemetry } from './telemetry.ts';

export interface RuntimeOptions {
  /** Processing time for every timeout, backoff and deadline. @default systemClock */
  clock?: Clock;
  /** The bus, or options for the one the runtime makes. */
  bus?: Bus | Omit<BusOptions, 'clock' | 'telemetry'>;
  /** @default console */
  logger?: Logger;
  /** Time `stop()` gives actors to finish what they hold. @default 10000 */
  shutdownDeadlineMs?: number;
  /** Jitter source for backoffs; tests pass a seeded one. @default Math.random */
  random?: () => number;
  /**
   * Called when an actor whose restart limit is `escalate` fails past it. The default stops the
   * runtime, as an Erlang supervisor that exceeds its intensity stops itself.
   */
  onEscalate?: (actor: string, error: RestartLimitError) => void;
}

/** What `stop()` reports: whether everything finished in time, and what was left per actor. */
export interface ShutdownReport {
  /**
   * Whether every input settled in time: nothing queued, in flight, or still absorbed (kept by
   * operator state that ignored the end of input, or by a consumer downstream that has not
   * finished with an output). An input left absorbed would not be acknowledged to its source.
   */
  readonly drained: boolean;
  readonly durationMs: number;
  readonly deadlineMs: number;
  /** Per actor: messages still queued, inputs in flight, inputs absorbed (state or downstream). */
  readonly left: Readonly<Record<string, { depth: number; inFlight: number; absorbed: number }>>;
}

/** One process's Sluice: a bus, the actors on it, their clock and telemetry. */
export interface Runtime {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  /** Starts an actor; its subscriptions are live when this returns. */
  spawn<In, Out>(actor: Actor<In, Out>): ActorRef;
  /** The running actor of that name. */
  actor(name: string): ActorRef | undefined;
  /** Resolves once every actor has nothing queued and nothing in flight. */
  idle(): Promise<void>;
  /**
   * Graceful shutdown: refuses new input from outside the actors, lets actors finish what is
   * queued and in flight, ends their pipelines so windows flush, and stops them. Resolves with a
   * report of what was left when the deadline passed first.
   */
  stop(options?: { deadlineMs?: number }): Promise<ShutdownReport>;
  /** Stops on SIGINT and SIGTERM, prints the report, and exits (1 when something was left). */
  handleSignals(): () => void;
  readonly stopped: boolean;
}

export function createRuntime(options: RuntimeOptions = {}): Runtime {
  return new RuntimeImpl(options);
}

class RuntimeImpl implements Runtime {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly #cells = new Map<string, ActorCellType>();
  readonly #log: Logger;
  readonly #random: () => number;
  readonly #deadlineMs: number;
  readonly #onEscalate: (actor: string, error: RestartLimitError) => void;
  #stopping: Promise<ShutdownReport> | undefined;

  constructor(options: RuntimeOptions) {
    this.clock = options.clock ?? systemClock;
    if (options.bus instanceof Bus) {
      this.bus = options.bus;
      this.telemetry = options.bus.telemetry;
    } else {
      this.telemetry = new Telemetry();
      this.bus = new Bus({ ...options.bus, clock: this.clock, telemetry: this.telemetry });
    }
    this.#log = options.logger ?? console;
    this.#random = options.random ?? Math.random;
    this.#deadlineMs = intOption('runtime.shutdownDeadlineMs', options.shutdownDeadlineMs, 10_000, 0);
    this.#onEscalate =
      options.onEscalate ??
      ((actor, error) => {
        this.#log.error(`actor '${actor}' escalated: ${error.message}; stopping the runtime`);
        void this.stop();
      });
  }

  get stopped(): boolean {
    return this.#stopping !== undefined;
  }

  spawn<In, Out>(actor: Actor<In, Out>): ActorRef {
    if (this.#stopping !== undefined) throw new OptionsError('spawn', 'the runtime is stopping', actor.name);
    if (this.#cells.has(actor.name)) {
      throw new OptionsError('actor.name', 'must be unique in the runtime; one is already running', actor.name);
    }
    const cell = new ActorCell(actor as Actor, {
      bus: this.bus,
      clock: this.clock,
      telemetry: this.telemetry,
      log: this.#log,
      random: this.#random,
      escalate: (name, error) => this.#onEscalate(name, error),
    });
    this.#cells.set(actor.name, cell);
    return cell;
  }

  actor(name: string): ActorRef | undefined {
    return this.#cells.get(name);
  }

  async idle(): Promise<void> {
    // Idle actors can wake each other (one's output is another's input): loop until all are idle at once.
    for (;;) {
      await Promise.all([...this.#cells.values()].map((c) => c.idle()));
      if ([...this.#cells.values()].every((c) => c.depth === 0 && c.inFlight === 0) && !deliveryDeferred()) return;
      // A consumer's drain resumes on the next turn (its burst was spent): what it holds is not done.
      if (deliveryDeferred()) await nextMacrotask();
    }
  }

  stop(options: { deadlineMs?: number } = {}): Promise<ShutdownReport> {
    this.#stopping ??= this.#shutdown(intOption('stop.deadlineMs', options.deadlineMs, this.#deadlineMs, 0));
    return this.#stopping;
  }

  handleSignals(): () => void {
    const onSignal = (signal: NodeJS.Signals) => {
      this.#log.info(`sluice: ${signal} received, draining (deadline ${this.#deadlineMs} ms)`);
      void this.stop().then((report) => {
        this.#log.info(describeReport(report));
        process.exit(report.drained ? 0 : 1);
      });
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    return () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    };
  }

  async #shutdown(deadlineMs: number): Promise<ShutdownReport> {
    const started = this.clock.now();
    this.bus.refuse('the runtime is shutting down');
    let timedOut = false;
    let timer: Timer | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = this.clock.setTimeout(() => {
        timedOut = true;
        resolve();
      }, deadlineMs);
    });
    const drain = (async () => {
      await this.idle();
      // End of input: pipelines complete, so windows and buffers flush what they hold. A flush can
      // reach an actor whose pipeline already completed, which reopens it: repeat until none does.
      for (;;) {
        let ended = 0;
        for (const cell of this.#cells.values()) ended += cell.completeInputs();
        if (ended === 0 || timedOut) break;
        await this.idle();
      }
    })();
    await Promise.race([drain, deadline]);
    timer?.cancel();
    const left: Record<string, { depth: number; inFlight: number; absorbed: number }> = {};
    let drained = !timedOut;
    for (const [name, cell] of this.#cells) {
      const l = cell.left();
      if (l.depth > 0 || l.inFlight > 0 || l.absorbed > 0) {
        left[name] = l;
        drained = false;
      }
      cell.close();
    }
    return Object.freeze({ drained, durationMs: this.clock.now() - started, deadlineMs, left: Object.freeze(left) });
  }
}

/** One readable paragraph of a shutdown report, for logs. */
export function describeReport(report: ShutdownReport): string {
  if (report.drained) return `sluice: stopped cleanly in ${report.durationMs} ms`;
  const parts = Object.entries(report.left).map(
    ([name, l]) => `${name}: ${l.depth} queued, ${l.inFlight} in flight, ${l.absorbed} absorbed`,
  );
  return `sluice: shutdown deadline of ${report.deadlineMs} ms passed; left: ${parts.join('; ') || 'nothing'}`;
}
