import type { Span } from '@opentelemetry/api';
import type { Envelope } from '../envelope.ts';
import { type Lineage, Tracker, type TrackerOwner, trackerOf } from '../lineage.ts';

/** @internal The tracker of one input inside a cell: the input, its lane, its span. */
export class Input extends Tracker {
  /** The input as its pipeline or handler sees it, with this tracker as its lineage. */
  readonly env: Envelope;
  readonly lane: number;
  /** When it was taken, for the processing-time histogram; 0 when nothing collects it. */
  readonly startedAt: number;
  span: Span | undefined = undefined;
  /** Counted as in flight; once false, as absorbed (until settled). */
  counted = true;
  /** Waits behind a retrying input of its key: counted as parked, not in flight (see OpenInputs). */
  parked = false;
  /** Replaced by a replay, or dead-lettered by a stop: what is still released on it is ignored. */
  abandoned = false;
  done = false;
  /** Handed to a pipeline or handler (not merely waiting in a backlog or for a retry). */
  delivered = false;
  /** Its outputs given a key so far (derived from its position, or copied from it): the next one's index (see outputKeys.ts). */
  outputs = 0;
  /** Links in its cell's {@link OpenInputs}. */
  prev: Input | undefined = undefined;
  next: Input | undefined = undefined;

  /**
   * `env` as it came from the mailbox; with `lazy`, the envelope its pipeline got without a record
   * (lineage: the handle), whose handle this record now stands behind, and what it came from.
   */
  constructor(
    env: Envelope,
    owner: TrackerOwner,
    generation: number,
    lane: number,
    startedAt: number,
    lazy?: { readonly upstream: Lineage | undefined },
  ) {
    if (lazy !== undefined) {
      super(env.id, owner, lazy.upstream, generation, env.lineage);
      this.env = env;
    } else {
      super(env.id, owner, env.lineage, generation);
      // The pipeline sees the input with this tracker's lineage, so what it emits traces back here.
      this.env = inputEnvelope(env, this.lineage);
    }
    this.lane = lane;
    this.startedAt = startedAt;
  }
}

/**
 * @internal The envelope a pipeline or handler gets for `env`, with `lineage` its own. A literal in
 * the bus's field order, not a spread: one hidden class for every input.
 */
export function inputEnvelope(env: Envelope, lineage: Lineage): Envelope {
  return {
    id: env.id,
    subject: env.subject,
    data: env.data,
    key: env.key,
    eventTime: env.eventTime,
    headers: env.headers,
    attempt: env.attempt,
    replyTo: env.replyTo,
    lineage,
  };
}

/** @internal The input of an actor that `lineage` (an envelope's) stands for, if it is one. */
export function inputOf(lineage: Lineage | undefined): Input | undefined {
  const tracker = trackerOf(lineage);
  return tracker instanceof Input ? tracker : undefined;
}

/** FNV-1a: a stable, fast spread of keys over lanes. */
export function laneOf(key: string, lanes: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % lanes;
}
