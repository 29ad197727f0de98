import { type Actor, type AnyActor, containedLogger, type Logger } from './actors/actor.ts';
import { ActorCell, type ActorCell as ActorCellType, type ActorRef, type CellDeps } from './actors/actorCell.ts';
import { DeadLetterBuffer } from './admin/deadLetterBuffer.ts';
import type { AdminHost } from './admin/host.ts';
import type { ServeOptions } from './admin/options.ts';
import type { AdminServer } from './admin/server.ts';
import { Bus, type BusOptions } from './bus/bus.ts';
import { type Clock, systemClock, type Timer } from './clock.ts';
import { messageOf, OptionsError, type RestartLimitError, ShutdownError, StreamError } from './errors.ts';
import { intOption, knownKeys, optionKeys } from './options.ts';
import { type RuntimeStatus, runtimeStatus } from './status.ts';
import type { Store } from './store/types.ts';
import { Streams } from './streams/index.ts';
import type { Stream, StreamConfig } from './streams/types.ts';
import { Telemetry } from './telemetry.ts';
import { type Transport, TransportBus } from './transport/transport.ts';

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
  /**
   * The durable store streams and consumer positions live in (`LmdbStore`, or `MemoryStore` for
   * tests). The runtime does not close it: the application does, after `stop()`.
   */
  store?: Store;
  /**
   * Streams defined at start, as by {@link Runtime.stream}; on a remote transport, the broker's
   * durable subjects (JetStream streams on NATS).
   */
  streams?: readonly StreamConfig[];
  /**
   * Where messages travel: the in-memory bus when not given, or a remote transport such as
   * `natsTransport({...})` from `sluice/connectors/nats`, so that actors in several processes share
   * subjects and queue groups. Durable subjects and `durable(...)` subscriptions are then the
   * transport's. The application closes it after `stop()`.
   */
  transport?: Transport;
  /**
   * Dead letters actors send that the runtime keeps in memory, the oldest dropped first, so the
   * admin API (`runtime.serve`) can show, replay and purge those sent before it served. 0 keeps
   * none (counts per subject and reason are still kept). @default 1000
   */
  deadLetters?: number;
}

/** What an actor had left when a shutdown ended, and what became of it. */
export interface ActorLeft {
  /** Messages still queued in its mailbox. */
  readonly depth: number;
  /** Inputs being handled: a handler or an async step running, an output waiting for mailbox room. */
  readonly inFlight: number;
  /** Inputs kept by its operator state (a window or buffer that ignored the end of input). */
  readonly absorbed: number;
  /**
   * Messages it dead-lettered with a `ShutdownError` as it stopped: the queued ones and the ones it
   * held. A handler still running had its result dropped: nothing it returns is published.
   */
  readonly deadLettered: number;
  /**
   * How many no one received, each logged with its id: dead letters sent where no subscription
   * listened (actors no longer take input by then), and messages from a `$DEAD.` subject, which
   * are never sent again (the chain of dead letters ends there).
   */
  readonly lost: number;
}

/** What a plain subscription (`bus.subscribe`) still had when `stop()` returned. */
export interface SubscriptionLeft {
  /** Messages queued in its mailbox, for its consumer. */
  readonly depth: number;
  /** Messages its consumer was handling (a callback's promise, an iterator's loop body). */
  readonly inFlight: number;
}

/** What `stop()` reports: whether everything finished in time, and what was left and where. */
export interface ShutdownReport {
  /**
   * Whether everything settled in time: no actor has anything queued, in flight or kept in its
   * state, and no subscription has messages queued or being handled.
   */
  readonly drained: boolean;
  readonly durationMs: number;
  readonly deadlineMs: number;
  /** Per actor that had something left when the drain ended or the deadline passed. */
  readonly left: Readonly<Record<string, ActorLeft>>;
  /**
   * Per subscription with something left (by subject, and queue group in brackets). The runtime
   * does not close subscriptions: their consumers are the application's, and may go on.
   */
  readonly subscriptions: Readonly<Record<string, SubscriptionLeft>>;
}

/** Options of {@link Runtime.handleSignals}. */
export interface SignalOptions {
  /**
   * Runs after `stop()` with its report, before the exit: the application's own shutdown steps
   * (closing files, connections). A throw or rejection is logged and makes the exit code 1.
   */
  onShutdown?: (report: ShutdownReport) => void | Promise<void>;
  /**
   * `true`: `process.exit` with 0 when drained, else 1. `false`: no exit, the application decides.
   * A function: called with that code instead of `process.exit`. @default true
   */
  exit?: boolean | ((code: number) => void);
}

/** One process's Sluice: a bus, the actors on it, their clock and telemetry. */
export interface Runtime {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  /** Starts an actor; its subscriptions are live when this returns. Bound: `actors.forEach(runtime.spawn)` works. */
  spawn(actor: AnyActor): ActorRef;
  /** The running actor of that name. */
  actor(name: string): ActorRef | undefined;
  /**
   * Resolves once every actor, and every subscription with a consumer attached, has nothing
   * queued and nothing in flight.
   */
  idle(): Promise<void>;
  /**
   * Graceful shutdown: refuses new input from outside the actors, lets actors and subscriptions
   * finish what is queued and in flight, ends pipelines so windows flush, and stops the actors.
   * What an actor still has when the deadline passes is dead-lettered with a `ShutdownError`;
   * nothing runs on its behalf after this resolves. Resolves, never rejects, with a report (only
   * options that are not valid, such as an unknown key, reject with an `OptionsError`).
   */
  stop(options?: { deadlineMs?: number }): Promise<ShutdownReport>;
  /**
   * Stops on SIGINT and SIGTERM, prints the report, runs `onShutdown`, and exits (1 when something
   * was left). A second signal during the drain stops at once, as if the deadline had passed; one
   * after that (or during `onShutdown`) exits at once with 1. Returns a function that removes the
   * listeners.
   */
  handleSignals(options?: SignalOptions): () => void;
  readonly stopped: boolean;
  /**
   * Defines a durable subject (a stream) in the runtime's store, or returns the one of that name:
   * from now on what is published on its subjects is stored, and the publish resolves once the
   * append is synced. A `StreamError` when the runtime has no store or no stream has that name.
   */
  stream(config: StreamConfig | string): Stream;
  /**
   * Serves the admin API and the dashboard over HTTP (docs/operations.md): on 127.0.0.1 by
   * default, with a bearer token. Resolves once it listens; the application closes it.
   */
  serve(options: ServeOptions): Promise<AdminServer>;
  /**
   * What the runtime is doing now: actors by state, the durable consumers of its streams and the
   * connector sources that feed it (connection, lag in messages and time), and the watermark and
   * open windows of each window operator. Read on demand; nothing is sampled for it.
   */
  status(): RuntimeStatus;
}

const runtimeOptionKeys = optionKeys<keyof RuntimeOptions>({
  clock: true,
  bus: true,
  logger: true,
  shutdownDeadlineMs: true,
  random: true,
  onEscalate: true,
  store: true,
  streams: true,
  transport: true,
  deadLetters: true,
});

const stopOptionKeys = optionKeys<'deadlineMs'>({ deadlineMs: true });
const signalOptionKeys = optionKeys<keyof SignalOptions>({ onShutdown: true, exit: true });

export function createRuntime(options: RuntimeOptions = {}): Runtime {
  knownKeys('runtime', options, runtimeOptionKeys);
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
  readonly #streams: Streams | undefined;
  readonly #transport: Transport | undefined;
  readonly #checkpointDeps: CellDeps['checkpoints'];
  readonly #store: Store | undefined;
  /** Ends the running drain now, as if its deadline had passed. */
  #forceStop: (() => void) | undefined;
  /** What the status and the admin API read of this runtime. */
  readonly #host: AdminHost;
  /** Recent dead letters, kept from the start so that the admin API shows those sent before it served. */
  readonly #letters: DeadLetterBuffer;

  constructor(options: RuntimeOptions) {
    this.clock = options.clock ?? systemClock;
    this.spawn = this.spawn.bind(this);
    this.#log = containedLogger(options.logger ?? console);
    this.#transport = options.transport;
    if (options.transport !== undefined) {
      if (options.bus instanceof Bus) {
        throw new OptionsError(
          'runtime.bus',
          'with a transport, give bus options, not a bus: the runtime makes the bus of its transport',
          'Bus',
        );
      }
      this.telemetry = new Telemetry();
      this.bus = new TransportBus(options.transport, {
        ...options.bus,
        clock: this.clock,
        telemetry: this.telemetry,
        log: this.#log,
      });
    } else if (options.bus instanceof Bus) {
      this.bus = options.bus;
      this.telemetry = options.bus.telemetry;
    } else {
      this.telemetry = new Telemetry();
      this.bus = new Bus({ ...options.bus, clock: this.clock, telemetry: this.telemetry });
    }
    this.#random = options.random ?? Math.random;
    this.#deadlineMs = intOption('runtime.shutdownDeadlineMs', options.shutdownDeadlineMs, 10_000, 0);
    this.#onEscalate =
      options.onEscalate ??
      ((actor, error) => {
        this.#log.error(`actor '${actor}' escalated: ${error.message}; stopping the runtime`);
        void this.stop();
      });
    this.#store = options.store;
    const keep = intOption('runtime.deadLetters', options.deadLetters, 1000, 0);
    this.#letters = new DeadLetterBuffer(keep, () => Date.now());
    if (this.#transport !== undefined) {
      // Durable subjects are the transport's; the store (if any) still serves sinks and state.
      for (const config of options.streams ?? []) this.#transport.defineStream(config);
    } else if (options.store !== undefined) {
      this.#streams = new Streams({
        bus: this.bus,
        store: options.store,
        clock: this.clock,
        log: this.#log,
        random: this.#random,
        telemetry: this.telemetry,
      });
      for (const config of options.streams ?? []) this.#streams.define(config);
      const streams = this.#streams;
      this.#checkpointDeps = {
        store: options.store,
        consumerOf: (ref) => streams.consumerOf(ref),
        stream: (name) => streams.find(name),
      };
    } else if (options.streams !== undefined && options.streams.length > 0) {
      throw new OptionsError('runtime.streams', 'streams need a store: give the runtime a store', options.streams);
    }
    const cells = this.#cells;
    const streams = this.#streams;
    const runtime = this;
    this.#host = {
      bus: this.bus,
      clock: this.clock,
      telemetry: this.telemetry,
      store: this.#store,
      get stopped() {
        return runtime.stopped;
      },
      actors: () => [...cells.values()],
      streams: () => streams?.all() ?? [],
    };
  }

  stream(config: StreamConfig | string): Stream {
    const name = typeof config === 'string' ? config : String(config?.name);
    if (this.#transport !== undefined) {
      throw new StreamError(
        name,
        `on the '${this.#transport.name}' transport streams are the broker's: define them with createRuntime({ streams }) and read them with durable(...)`,
      );
    }
    if (this.#streams === undefined) {
      throw new StreamError(name, 'the runtime has no store: createRuntime({ store }) to use streams');
    }
    return typeof config === 'string' ? this.#streams.get(config) : this.#streams.define(config);
  }

  get stopped(): boolean {
    return this.#stopping !== undefined;
  }

  async serve(options: ServeOptions): Promise<AdminServer> {
    // Loaded on first use: a job that never serves does not load node:http.
    const { serve } = await import('./admin/server.ts');
    return serve(this.#host, this.#letters, options, this.#log);
  }

  status(): RuntimeStatus {
    return runtimeStatus(this.#host);
  }

  spawn(actor: AnyActor): ActorRef {
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
      durable: (ref) => {
        if (this.#transport !== undefined) return this.#transport.durable(ref);
        if (this.#streams === undefined) {
          throw new StreamError(ref.stream, `actor '${actor.name}' subscribes durably, but the runtime has no store`);
        }
        return this.#streams.attach(ref);
      },
      checkpoints: this.#checkpointDeps,
      keepDeadLetter: (letter) => this.#letters.keep(letter),
    });
    this.#cells.set(actor.name, cell);
    return cell;
  }

  actor(name: string): ActorRef | undefined {
    return this.#cells.get(name);
  }

  async idle(): Promise<void> {
    // Idle actors can wake each other (one's output is another's input): loop until all are idle at
    // once. Subscriptions count too (a sink is one); one with no consumer yet could never drain.
    for (;;) {
      const subscriptions = [...this.bus.liveSubscriptions].filter((s) => s.consumed);
      await Promise.all([...[...this.#cells.values()].map((c) => c.idle()), ...subscriptions.map((s) => s.idle())]);
      // A drain that resumes on the next turn (its burst was spent) leaves its messages in the
      // mailbox, so the depths below still count them.
      if (
        [...this.#cells.values()].every((c) => c.depth === 0 && c.inFlight === 0) &&
        subscriptions.every((s) => isEmpty(s.left()))
      ) {
        return;
      }
    }
  }

  stop(options: { deadlineMs?: number } = {}): Promise<ShutdownReport> {
    let deadlineMs: number;
    try {
      knownKeys('stop', options, stopOptionKeys);
      deadlineMs = intOption('stop.deadlineMs', options.deadlineMs, this.#deadlineMs, 0);
    } catch (error) {
      // A typo must not fall back to the default deadline in silence; a promise API rejects.
      return Promise.reject(error);
    }
    this.#stopping ??= this.#shutdown(deadlineMs);
    return this.#stopping;
  }

  handleSignals(options: SignalOptions = {}): () => void {
    knownKeys('handleSignals', options, signalOptionKeys);
    const exit = options.exit ?? true;
    const exitWith = (code: number): void => {
      if (exit === true) process.exit(code);
      else if (typeof exit === 'function') exit(code);
    };
    let received = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      received++;
      if (received > 1) {
        if (this.#forceStop !== undefined) {
          this.#log.warn(`sluice: ${signal} received again, stopping now`);
          this.#forceStop();
        } else {
          // The drain is over: only `onShutdown` can still be running, and it is told to go.
          this.#log.warn(`sluice: ${signal} received again, exiting now`);
          exitWith(1);
        }
        return;
      }
      this.#log.info(`sluice: ${signal} received, draining (deadline ${this.#deadlineMs} ms)`);
      this.stop()
        .then(async (report) => {
          this.#log.info(describeReport(report));
          let code = report.drained ? 0 : 1;
          if (options.onShutdown !== undefined) {
            try {
              await options.onShutdown(report);
            } catch (error) {
              this.#log.error(`sluice: onShutdown failed: ${messageOf(error)}`);
              code = 1;
            }
          }
          return code;
        })
        .catch((error: unknown) => {
          // stop() does not reject; this is the last guard, so the process never dies without a word.
          this.#log.error(`sluice: shutdown failed: ${messageOf(error)}`);
          return 1;
        })
        .then(exitWith);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    return () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    };
  }

  async #shutdown(deadlineMs: number): Promise<ShutdownReport> {
    const started = this.clock.now();
    this.bus.refuse('the runtime is shutting down');
    // Stored messages are input from outside as well: actors drain what was pushed, no more.
    this.#streams?.quiesce();
    this.#transport?.quiesce();
    // An actor an operator paused drains too: a pause must not turn a graceful stop into a timeout.
    for (const cell of this.#cells.values()) cell.resume();
    let timedOut = false;
    let forced = false;
    let timer: Timer | undefined;
    const deadline = new Promise<void>((resolve) => {
      const end = () => {
        timedOut = true;
        resolve();
      };
      this.#forceStop = () => {
        forced = true;
        end();
      };
      timer = this.clock.setTimeout(end, deadlineMs);
    });
    const drain = (async () => {
      await this.idle();
      // End of input: pipelines complete, so windows and buffers flush what they hold. A flush can
      // reach an actor whose pipeline already completed, which reopens it: repeat until none does.
      for (;;) {
        let ended = 0;
        for (const cell of this.#cells.values()) {
          ended += this.#guard(cell.name, 'end its input', () => cell.completeInputs()) ?? 0;
        }
        if (ended === 0 || timedOut) break;
        await this.idle();
      }
    })();
    await Promise.race([drain, deadline]);
    timer?.cancel();
    this.#forceStop = undefined;
    // The last checkpoints, before the consumers close: they store the positions of their actors.
    await Promise.all(
      [...this.#cells.values()].map((cell) =>
        cell.finalCheckpoint().catch((error: unknown) => {
          this.#log.error(`actor '${cell.name}': its last checkpoint failed: ${messageOf(error)}`);
        }),
      ),
    );
    // Streams stop before actors let go of what they hold: a consumer's position keeps only what
    // settled by now, and what actors dead-letter as they stop is delivered again after a restart.
    await this.#streams?.close();
    await this.#transport?.stopDurables();

    // What each actor has left now, before anything is dead-lettered.
    const cells = [...this.#cells.values()];
    const before = new Map<ActorCellType, { depth: number; inFlight: number; absorbed: number }>();
    const deadLettered = new Map<ActorCellType, { sent: number; unheard: number }>();
    for (const cell of cells) {
      const l = this.#guard(cell.name, 'report', () => cell.left()) ?? { depth: 0, inFlight: 0, absorbed: 0 };
      before.set(cell, l);
      deadLettered.set(cell, { sent: cell.counters.deadLettered, unheard: cell.deadLettersUnheard });
    }
    // Stopped means stopped. First no actor takes input any more, so that what one dead-letters
    // does not land in another that is stopping too; then each dead-letters what it still has.
    for (const cell of cells) this.#guard(cell.name, 'stop taking input', () => cell.unroute());
    for (const cell of cells) {
      const l = before.get(cell) as { depth: number; inFlight: number; absorbed: number };
      const n = l.depth + l.inFlight + l.absorbed;
      const reason = forced
        ? new ShutdownError(
            deadlineMs,
            n,
            `shutdown forced after ${this.clock.now() - started} ms with ${n} messages in flight`,
          )
        : timedOut
          ? new ShutdownError(deadlineMs, n)
          : new ShutdownError(
              deadlineMs,
              n,
              `shutdown ended with ${n} messages kept by operator state after end of input`,
            );
      this.#guard(cell.name, 'stop', () => cell.close(reason));
    }
    // Outputs refused by a stopping mailbox fail their inputs a few promise steps later, and those
    // are dead-lettered then: let that happen before counting.
    await new Promise<void>((resolve) => setImmediate(resolve));

    const left: Record<string, ActorLeft> = {};
    for (const cell of cells) {
      const l = before.get(cell) as { depth: number; inFlight: number; absorbed: number };
      const counted = deadLettered.get(cell) as { sent: number; unheard: number };
      const sent = cell.counters.deadLettered - counted.sent;
      if (isEmpty(l) && l.absorbed === 0 && sent === 0) continue;
      // Counted as each was sent, to where it went: a dead letter of a dead letter goes to
      // `$DEAD.<actor>`, not to the actor's dead-letter subject, and one from `$DEAD.` nowhere.
      const lost = cell.deadLettersUnheard - counted.unheard;
      left[cell.name] = Object.freeze({ ...l, deadLettered: sent, lost });
    }
    const subscriptions: Record<string, SubscriptionLeft> = {};
    for (const sub of this.bus.liveSubscriptions) {
      const l = sub.left();
      if (isEmpty(l)) continue;
      const name = sub.queue === undefined ? sub.subject : `${sub.subject} [${sub.queue}]`;
      const seen = subscriptions[name];
      subscriptions[name] = Object.freeze(
        seen === undefined ? l : { depth: seen.depth + l.depth, inFlight: seen.inFlight + l.inFlight },
      );
    }
    const drained = !timedOut && Object.keys(left).length === 0 && Object.keys(subscriptions).length === 0;
    return Object.freeze({
      drained,
      durationMs: this.clock.now() - started,
      deadlineMs,
      left: Object.freeze(left),
      subscriptions: Object.freeze(subscriptions),
    });
  }

  /** Runs one actor's step of the shutdown: a throw is logged, and the shutdown goes on for the others. */
  #guard<T>(actor: string, step: string, run: () => T): T | undefined {
    try {
      return run();
    } catch (error) {
      this.#log.error(`sluice: actor '${actor}' failed to ${step} during shutdown: ${messageOf(error)}`);
      return undefined;
    }
  }
}

function isEmpty(l: { depth: number; inFlight: number }): boolean {
  return l.depth === 0 && l.inFlight === 0;
}

/** One readable paragraph of a shutdown report, for logs. */
export function describeReport(report: ShutdownReport): string {
  if (report.drained) return `sluice: stopped cleanly in ${report.durationMs} ms`;
  const parts = Object.entries(report.left).map(([name, l]) => {
    let part = `${name}: ${l.depth} queued, ${l.inFlight} in flight, ${l.absorbed} absorbed`;
    if (l.deadLettered > 0) part += `, ${l.deadLettered} dead-lettered`;
    if (l.lost > 0) part += ` (${l.lost} lost: received by no one, each logged)`;
    return part;
  });
  for (const [subject, l] of Object.entries(report.subscriptions)) {
    parts.push(`subscription '${subject}': ${l.depth} queued, ${l.inFlight} in flight`);
  }
  const how =
    report.durationMs >= report.deadlineMs
      ? `shutdown deadline of ${report.deadlineMs} ms passed`
      : `stopped after ${report.durationMs} ms without draining`;
  return `sluice: ${how}; left: ${parts.join('; ') || 'nothing'}`;
}
