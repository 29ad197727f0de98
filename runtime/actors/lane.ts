import type { BusClient } from '../bus/bus.ts';
import type { Clock } from '../clock.ts';
import type { Envelope } from '../envelope.ts';
import type { Lineage } from '../lineage.ts';
import type { Checkpoint } from '../state/checkpoint.ts';
import { unavailableState } from '../state/keyedState.ts';
import type { Actor, HandlerActor, Logger, PipelineActor } from './actor.ts';
import { laneContext } from './actorContext.ts';
import { HandlerLane } from './handlerLane.ts';
import type { Input } from './input.ts';
import { durableStreamsOf } from './outputKeys.ts';
import { PipelineLane } from './pipelineLane.ts';

/**
 * @internal One lane of an actor: a pipeline, or a handler taking inputs one at a time (or up to
 * its `concurrency` at once). Inputs of one key always go to the same lane.
 */
export interface Lane {
  readonly index: number;
  /** Counts the pipelines the lane has built, so the cell can tell which inputs a failed one held. */
  readonly generation: number;
  /** Builds the pipeline (a handler needs nothing built). */
  start(): void;
  /** Takes an input: handles it now, or queues it while the lane is busy or its pipeline restarts. */
  dispatch(input: Input): void;
  /**
   * Takes an input back after its retry delay and handles it before anything else; in an ordered
   * lane, the inputs of its key that waited behind it follow, in order.
   */
  retry(input: Input): void;
  /** `input` failed for good and goes to dead letters: in an ordered lane, its key goes on without it. */
  gaveUp(input: Input): void;
  /** Ends the pipeline's input (end of stream) so operators flush; false when there was none to end. */
  complete(): boolean;
  /** Unsubscribes and forgets what waits: the cell dead-letters every input it still holds. */
  stop(): void;
}

/** @internal What lanes need from their cell. */
export interface LaneHost {
  /** Whether the runtime is ending pipelines (shutdown): a pipeline that completes now is not a failure. */
  readonly completing: boolean;
  /**
   * Publishes a message derived from one or more inputs, holding their lineage in flight until every
   * matching mailbox accepted it. Rejects when the bus refused it; the inputs then fail as well.
   */
  publish(env: Envelope): Promise<void>;
  /**
   * `input` waits behind a retrying input of its key: it no longer counts against `maxInFlight`
   * but against the parked bound, so other keys go on.
   */
  park(input: Input): void;
  /** A parked input's key goes on: it counts as in flight again. */
  unpark(input: Input): void;
  /** Counts and logs an output emitted after its input (`id`) had settled (an async step that did not hold it). */
  lateOutput(id: string): void;
  /**
   * An input handed to a pipeline without a record ({@link PipelineLane.deliverLazy}) settled when
   * its synchronous run ended, by counting: `used` when anything derived from it or held it.
   */
  settledByCount(upstream: Lineage | undefined, used: boolean, startedAt: number): void;
  /**
   * The record of an input handed to a pipeline without one, which it turns out to need: it is
   * still held when its run ends, or the actor must name it (a failure, a stop). `env` is what the
   * pipeline got; the record stands behind its lineage from now on.
   */
  record(
    lane: PipelineLane,
    env: Envelope,
    upstream: Lineage | undefined,
    generation: number,
    startedAt: number,
  ): Input;
  /**
   * A lane's pipeline failed, or `completed` while its input was open: a completion blames no
   * input and counts as a restart.
   */
  pipelineFailed(lane: PipelineLane, error: unknown, generation: number, completed?: boolean): void;
  /** A pipeline's teardown threw while it was unsubscribed or completed: counted and logged. */
  teardownFailed(lane: PipelineLane, error: unknown): void;
}

/**
 * @internal The lanes of an actor, each with its own context: pipelines, to be started by the
 * cell once it holds them, or handlers. A partitioned handler takes one input at a time per
 * lane, so each key keeps its order.
 */
export function createLanes(
  host: LaneHost,
  actor: Actor,
  client: BusClient,
  deps: { readonly clock: Clock; readonly log: Logger },
  checkpoint: Checkpoint | undefined,
): Lane[] {
  const state = checkpoint?.state ?? unavailableState(actor.name);
  const def = actor.definition;
  const partitioned = def.partitionBy !== undefined;
  const lanes: Lane[] = [];
  const streams = durableStreamsOf(actor);
  for (let i = 0; i < actor.lanes; i++) {
    const ctx = laneContext(actor.name, i, actor.lanes, client, deps.clock, deps.log, state);
    if (def.pipeline !== undefined) {
      const pipeline = def.pipeline as PipelineActor<unknown, unknown>['pipeline'];
      lanes.push(new PipelineLane(host, i, ctx, pipeline, actor.output, streams, checkpoint?.forLane(i)));
    } else {
      const handle = def.handle as HandlerActor<unknown, unknown>['handle'];
      lanes.push(new HandlerLane(host, i, ctx, handle, actor.output, actor.concurrency, partitioned, streams));
    }
  }
  return lanes;
}
