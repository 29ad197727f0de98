/**
 * What connector sources share of their start, timers and close: the scaffolding each of them
 * would otherwise write again (their option checks are in options.ts). Held by composition (a
 * source keeps a {@link SourceLifecycle}), so a source's public class stays its own.
 */

import type { Logger } from '../actors/actor.ts';
import type { BusClient } from '../bus/bus.ts';
import type { Permissions } from '../bus/permissions.ts';
import type { Timer } from '../clock.ts';
import { ConnectorError, messageOf } from '../errors.ts';
import type { SourceHealth } from './registry.ts';
import type { SourceHost, SourceLag } from './source.ts';

/**
 * @internal One run of a connector source: started once, closed once. It holds what `start` is
 * given (the host, the logger, the source's bus client), the source's registration with the
 * runtime's source registry, and the timers that `close` cancels.
 */
export class SourceLifecycle {
  readonly #source: { readonly name: string; lag(): SourceLag };
  readonly #name: string;
  readonly #counters: () => object;
  host: SourceHost | undefined;
  client: BusClient | undefined;
  log: Logger = console;
  health: SourceHealth | undefined;
  closed = false;
  #started = false;
  readonly #timers = new Set<Timer>();
  /** Resolves the pending {@link sleep}s: `close` cancels their timers, so it ends them itself. */
  readonly #sleepers = new Set<() => void>();
  /** Resolves the pending {@link changed}: something happened that may let a read loop go on. */
  #wake: (() => void) | undefined;
  #noSubscriberWarned = false;

  /** Of `source` once it has its name; `counters` are its own counts, read when its status is. */
  constructor(source: { readonly name: string; lag(): SourceLag }, counters: () => object) {
    this.#source = source;
    this.#name = source.name;
    this.#counters = counters;
  }

  /**
   * The first step of `start`: refuses a second start, then takes the host, the logger and a bus
   * client named as the source.
   */
  begin(host: SourceHost, options: { logger?: Logger }, permissions?: Permissions): BusClient {
    if (this.#started) throw new ConnectorError(this.#name, 'already started');
    this.#started = true;
    this.host = host;
    this.log = options.logger ?? console;
    const client = host.bus.client(this.#name, permissions);
    this.client = client;
    return client;
  }

  /** Registers the source with the runtime's source registry (with its lag gauges), connected. */
  register(kind: string, stream: string, consumer: string): SourceHealth {
    const health = (this.host as SourceHost).telemetry.registerSource({
      name: this.#name,
      kind,
      stream,
      consumer,
      lag: () => this.#source.lag(),
      counters: this.#counters,
    });
    this.health = health;
    health.connected();
    return health;
  }

  /**
   * The first step of `close`: false when it was closed already; else it is closed now, its
   * status says so and its timers are cancelled.
   */
  end(): boolean {
    if (this.closed) return false;
    this.closed = true;
    this.health?.closed();
    for (const t of this.#timers) t.cancel();
    this.#timers.clear();
    // A loop waiting in sleep goes on to see `closed` and ends, rather than waiting for ever.
    for (const wake of this.#sleepers) wake();
    this.#sleepers.clear();
    return true;
  }

  now(): number {
    return this.host?.clock.now() ?? Date.now();
  }

  /** Runs `run` after `ms` on the host's clock, unless the source closed by then (or `always`). */
  later(ms: number, run: () => void, always = false): void {
    const timer = (this.host as SourceHost).clock.setTimeout(() => {
      this.#timers.delete(timer);
      if (always || !this.closed) run();
    }, ms);
    this.#timers.add(timer);
  }

  /**
   * Resolves after `ms` on the host's clock, or when the source closes, whichever comes first (at
   * once when it is closed already): a caller checks {@link closed} after it.
   */
  sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        this.#sleepers.delete(wake);
        resolve();
      };
      this.#sleepers.add(wake);
      this.later(ms, wake, true);
    });
  }

  /** Runs `run` every `ms` (each time `ms` after the last run ended) until the source closes. */
  every(ms: number, run: () => Promise<void> | undefined): void {
    const schedule = () => {
      this.later(ms, () => {
        Promise.resolve(run())
          .catch(() => undefined)
          .finally(() => {
            if (!this.closed) schedule();
          });
      });
    };
    schedule();
  }

  /** Resolves when something changed that may let a read loop go on ({@link wake}), or after `timeoutMs`. */
  changed(timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: Timer | undefined;
      const done = () => {
        timer?.cancel();
        if (this.#wake === done) this.#wake = undefined;
        resolve();
      };
      this.#wake = done;
      if (timeoutMs !== undefined) timer = (this.host as SourceHost).clock.setTimeout(done, timeoutMs);
    });
  }

  /** Lets a read loop waiting in {@link changed} go on: a settlement, a close. */
  wake(): void {
    this.#wake?.();
  }

  /**
   * A failed read (a disconnect, a server restart), the `failures`-th in a row: kept as the
   * source's last error, logged now and then, and the delay before the next try returned.
   */
  failed(what: string, failures: number, error: unknown): number {
    this.health?.error(error);
    const delay = Math.min(5_000, 100 * 2 ** Math.min(failures, 6));
    if (failures === 1 || failures % 20 === 0) {
      this.log.warn(`${this.#name}: ${what} failed (${messageOf(error)}); retrying in ${delay} ms`);
    }
    return delay;
  }

  /** Says once that nothing subscribes to `subject`, so `waiting` (what waits where) until something does. */
  noSubscriber(subject: string, waiting: string): void {
    if (this.#noSubscriberWarned) return;
    this.#noSubscriberWarned = true;
    this.log.warn(`${this.#name}: nothing subscribes to '${subject}'; ${waiting} until something does`);
  }
}

/**
 * @internal The lag of a source that holds `held` (delivered and not settled; `timeOf` is each
 * one's broker time, or its arrival) while the broker keeps `waiting` more for it, the oldest of
 * those from `waitingSinceMs` (0 when not known). An age is at least `floorMs` when there is one.
 */
export function heldLag<H>(
  held: ReadonlyMap<unknown, H>,
  timeOf: (h: H) => number,
  waiting: number,
  waitingSinceMs: number,
  floorMs: number,
): SourceLag {
  let oldest = Number.POSITIVE_INFINITY;
  for (const h of held.values()) {
    const t = timeOf(h);
    if (t < oldest) oldest = t;
  }
  if (oldest === Number.POSITIVE_INFINITY && waiting > 0) oldest = waitingSinceMs;
  return {
    messages: waiting + held.size,
    timeMs: oldest === Number.POSITIVE_INFINITY || oldest === 0 ? 0 : Math.max(floorMs, Date.now() - oldest),
    ackPending: held.size,
  };
}
