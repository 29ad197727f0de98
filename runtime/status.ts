/**
 * `runtime.status()`: what a runtime is doing, in one plain object, read on demand (the admin
 * API's `GET /api/status` serves it with a few fields of its own).
 */
import type { WindowView } from './actors/operatorProbes.ts';
import type { AdminHost } from './admin/host.ts';
import type { SourceStatus } from './sources/registry.ts';
import type { ConsumerInfo } from './streams/types.ts';

/** Actors counted by state. */
export interface ActorCounts {
  readonly total: number;
  readonly running: number;
  readonly paused: number;
  readonly restarting: number;
  readonly stopped: number;
}

/** An actor's window operators (only actors that have some are listed). */
export interface ActorWindows {
  readonly actor: string;
  readonly windows: readonly WindowView[];
}

export interface RuntimeStatus {
  /** `stop()` was called. */
  readonly stopped: boolean;
  readonly actors: ActorCounts;
  /** Streams in the embedded store. */
  readonly streams: number;
  /** Live bus subscriptions (actors' routes included). */
  readonly subscriptions: number;
  /** The durable consumers of the embedded streams, with their lag (messages and time behind). */
  readonly consumers: readonly ConsumerInfo[];
  /**
   * The connector sources that feed this runtime (NATS, Kafka, Redis, RabbitMQ, ...): connection
   * state, last error, lag and counts. Closed ones stay listed (the last 32).
   */
  readonly sources: readonly SourceStatus[];
  /** Watermark and open windows of each window operator, per actor. */
  readonly windows: readonly ActorWindows[];
}

/** @internal */
export function runtimeStatus(host: AdminHost): RuntimeStatus {
  const actors = host.actors();
  const count = (f: (c: (typeof actors)[number]) => boolean) => actors.filter(f).length;
  const consumers: ConsumerInfo[] = [];
  for (const stream of host.streams()) for (const c of stream.consumers()) consumers.push(c.info());
  const windows: ActorWindows[] = [];
  for (const cell of actors) {
    const w = cell.windows();
    if (w.length > 0) windows.push({ actor: cell.name, windows: w });
  }
  return {
    stopped: host.stopped,
    actors: {
      total: actors.length,
      running: count((c) => c.state === 'running' && !c.paused),
      paused: count((c) => c.paused),
      restarting: count((c) => c.state === 'restarting'),
      stopped: count((c) => c.state === 'stopped' || c.state === 'stopping'),
    },
    streams: host.streams().length,
    subscriptions: host.bus.subscriptions,
    consumers,
    sources: host.telemetry.sources.list(),
    windows,
  };
}
