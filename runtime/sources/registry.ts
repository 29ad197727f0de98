/**
 * The sources a runtime is fed by, as its status and the admin API show them: each connector
 * source registers when it starts (see `Source` in source.ts), reports its connection as it
 * changes, and is read (lag, counters) only when someone looks.
 */
import { messageOf } from '../errors.ts';
import type { SourceLag } from './source.ts';

/**
 * A source's connection to its broker:
 * - `connecting`: registered, the first connection not made yet;
 * - `connected`: delivering (or ready to);
 * - `reconnecting`: the connection was lost and the client tries again; what was not acknowledged
 *   is delivered again by the broker;
 * - `closed`: `close()` was called; the status stays listed (the last {@link MAX_CLOSED_SOURCES}).
 */
export type SourceConnection = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** One source as `runtime.status()` and the admin API show it. */
export interface SourceStatus {
  readonly name: string;
  /** The connector: `nats`, `kafka`, `redis`, `rabbitmq`, ... */
  readonly kind: string;
  readonly connection: SourceConnection;
  /** When the connection entered its state (epoch ms). */
  readonly since: number;
  /** Connections made again after a loss. */
  readonly reconnects: number;
  /** The last error the source reported (a lost connection, a failed read), kept after it recovers. */
  readonly lastError: { readonly message: string; readonly time: number } | undefined;
  readonly lag: SourceLag;
  /** The source's own counts (its `stats`). */
  readonly counters: Readonly<Record<string, number>>;
}

/** What a source tells the registry about itself; read on demand, never per message. */
export interface SourceProbe {
  /** The source's name (as in its errors and logs). */
  readonly name: string;
  readonly kind: string;
  /** The `sluice.stream` label of its lag gauges (`nats:ORDERS`, `redis:events`, ...). */
  readonly stream: string;
  /** The `sluice.consumer` label of its lag gauges (the durable consumer, group or queue). */
  readonly consumer: string;
  lag(): SourceLag;
  /** Its counts of what it did; any object of numbers (a `stats` getter fits). */
  counters(): object;
}

/** Closed sources kept in the status, newest last; older ones are forgotten. */
export const MAX_CLOSED_SOURCES = 32;

const NO_LAG: SourceLag = Object.freeze({ messages: 0, timeMs: 0, ackPending: 0 });

/**
 * A registered source's handle: the source calls these as its connection changes. Each call is a
 * field write; nothing here runs per message.
 */
export class SourceHealth {
  readonly probe: SourceProbe;
  #connection: SourceConnection = 'connecting';
  #since = Date.now();
  #reconnects = 0;
  #lastError: { message: string; time: number } | undefined;
  #wasConnected = false;
  readonly #onClose: (health: SourceHealth) => void;

  /** @internal */
  constructor(probe: SourceProbe, onClose: (health: SourceHealth) => void) {
    this.probe = probe;
    this.#onClose = onClose;
  }

  get connection(): SourceConnection {
    return this.#connection;
  }

  /** The connection is up (the first time, or again after `reconnecting`). */
  connected(): void {
    if (this.#connection === 'closed' || this.#connection === 'connected') return;
    if (this.#wasConnected) this.#reconnects++;
    this.#wasConnected = true;
    this.#set('connected');
  }

  /** The connection was lost and is being made again; `error` is why, when known. */
  reconnecting(error?: unknown): void {
    if (this.#connection === 'closed') return;
    if (error !== undefined) this.error(error);
    if (this.#connection !== 'reconnecting') this.#set('reconnecting');
  }

  /** Records an error without changing the connection's state (a failed read the source retries). */
  error(error: unknown): void {
    this.#lastError = { message: messageOf(error).slice(0, 500), time: Date.now() };
  }

  /** The source closed: its lag gauges end, and its status stays listed as `closed`. */
  closed(): void {
    if (this.#connection === 'closed') return;
    this.#set('closed');
    this.#onClose(this);
  }

  status(): SourceStatus {
    const closed = this.#connection === 'closed';
    const counters: Record<string, number> = {};
    for (const [k, v] of Object.entries(this.probe.counters())) if (typeof v === 'number') counters[k] = v;
    return {
      name: this.probe.name,
      kind: this.probe.kind,
      connection: this.#connection,
      since: this.#since,
      reconnects: this.#reconnects,
      lastError: this.#lastError,
      lag: closed ? NO_LAG : this.probe.lag(),
      counters,
    };
  }

  #set(state: SourceConnection): void {
    this.#connection = state;
    this.#since = Date.now();
  }
}

/** @internal The sources of one runtime (its telemetry holds it: `runtime.telemetry.sources`). */
export class SourceRegistry {
  readonly #live = new Set<SourceHealth>();
  readonly #closed: SourceHealth[] = [];

  /** Registers a source; `onClose` runs when it reports `closed()`. */
  register(probe: SourceProbe, onClose?: () => void): SourceHealth {
    const health = new SourceHealth(probe, (h) => {
      this.#live.delete(h);
      this.#closed.push(h);
      if (this.#closed.length > MAX_CLOSED_SOURCES) this.#closed.shift();
      onClose?.();
    });
    this.#live.add(health);
    return health;
  }

  /** Every live source, then the last closed ones. */
  list(): SourceStatus[] {
    const out: SourceStatus[] = [];
    for (const h of this.#live) out.push(h.status());
    for (const h of this.#closed) out.push(h.status());
    return out;
  }
}
