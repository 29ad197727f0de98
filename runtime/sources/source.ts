import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Bus } from '../bus/bus.ts';
import type { Clock } from '../clock.ts';
import type { Telemetry } from '../telemetry.ts';

/**
 * How far a source is behind its broker: what the broker holds for it that is not settled yet.
 * Read at collection time by the `sluice.consumer.lag` and `sluice.consumer.lag_time` gauges.
 */
export interface SourceLag {
  /** Messages the broker still holds for this source: not yet delivered, or delivered and not settled. */
  readonly messages: number;
  /** Age of the oldest message not settled yet (broker time where it keeps one); 0 when none. */
  readonly timeMs: number;
  /** Delivered to the bus and not settled yet. */
  readonly ackPending: number;
}

/**
 * A subject an external source (a connector) publishes to, as actors subscribe to it:
 * `subscribe: source.ref`. A durable source's messages carry the `sluice-stream` and
 * `sluice-stream-sequence` headers of their broker position; an actor subscribed through the ref
 * derives its outputs' idempotency keys from them (`<stream>/<sequence>/<actor>/<index>`), as it
 * does for `durable(...)` subscriptions, and counts as durable for its `delivery` declaration.
 */
export interface SourceRef<T = unknown> {
  /** The bus subject (or pattern) the source publishes to. */
  readonly name: string;
  readonly schema: StandardSchemaV1<unknown, T> | undefined;
  readonly source: {
    /** The name in the `sluice-stream` header of its messages: the root of their idempotency keys. */
    readonly stream: string;
    /** Redelivers what was not acknowledged (a JetStream consumer, a Kafka group), or not (core NATS). */
    readonly durable: boolean;
  };
}

/**
 * A connector's source: it takes messages from a broker and publishes them on the bus, no faster
 * than the subscribers' mailboxes take them, and acknowledges each to the broker once its
 * settlement on the bus (docs/settlement.md) says so.
 *
 * - `start` connects and begins delivering; it rejects (a `ConnectorError`) when the broker
 *   cannot be reached or refuses the credentials.
 * - `lag` is cheap and synchronous (telemetry reads it at collection time).
 * - `close` stops taking messages, gives back to the broker what is not settled (it is delivered
 *   again: at-least-once) and closes a connection the source opened. It never rejects.
 *
 * **Registering with the runtime.** A source shows in `runtime.status().sources`, in the admin
 * API (`GET /api/sources`), in `sluice lag` and on the dashboard once it registers in `start`:
 *
 * ```ts
 * this.#health = host.telemetry.registerSource({
 *   name: this.name, kind: 'mqtt', stream: `mqtt:${topic}`, consumer: clientId,
 *   lag: () => this.lag(), counters: () => this.stats,
 * });
 * this.#health.connected();                         // once its connection is up
 * client.on('reconnect', () => this.#health.reconnecting());
 * client.on('connect', () => this.#health.connected());
 * client.on('error', (e) => this.#health.error(e)); // kept as its last error
 * // in close(): this.#health.closed();            // ends its lag gauges too
 * ```
 *
 * `registerSource` also registers the `sluice.consumer.lag` and `sluice.consumer.lag_time` gauges
 * (labelled `stream` and `consumer`): a source does not call `registerLag` besides. Nothing is
 * called per message: `lag()` and `counters()` are read when the status is.
 */
export interface Source<T = unknown> {
  /** Names the source in errors, logs and lag gauges. */
  readonly name: string;
  /** What actors subscribe to. */
  readonly ref: SourceRef<T>;
  lag(): SourceLag;
  close(): Promise<void>;
}

/** What a source's `start` is given of the runtime: `runtime` itself fits. */
export interface SourceHost {
  readonly bus: Bus;
  readonly telemetry: Telemetry;
  readonly clock: Clock;
}

/** @internal Whether a subscribe reference is a {@link SourceRef}. */
export function isSourceRef(ref: unknown): ref is SourceRef {
  if (typeof ref !== 'object' || ref === null) return false;
  const source = (ref as { source?: unknown }).source;
  return typeof source === 'object' && source !== null && typeof (source as { stream?: unknown }).stream === 'string';
}
