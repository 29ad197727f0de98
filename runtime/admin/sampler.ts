import type { AdminHost } from './host.ts';

/** A point of a series: wall-clock time (epoch ms) and a value. */
export type Point = readonly [time: number, value: number];

/** Something that happened to an actor or a connector source, for the errors and restarts timeline. */
export interface TimelineEvent {
  readonly time: number;
  /** The actor, or for `connection` events the source. */
  readonly actor: string;
  readonly kind: 'restart' | 'dead-letter' | 'state' | 'checkpoint-failure' | 'connection';
  readonly detail: string;
}

/** A checkpoint commit seen between two samples (several commits in one interval are summed). */
export interface CheckpointSample {
  readonly time: number;
  readonly actor: string;
  readonly commits: number;
  readonly inputs: number;
  /** Mean time from the start of a batch to its durable commit, over these commits (ms). */
  readonly meanCommitMs: number;
  /** Bytes these commits wrote. */
  readonly bytes: number;
  /** Positions of the actor's durable consumers at the time of the sample. */
  readonly positions: Readonly<Record<string, number>>;
}

interface Last {
  delivered: number;
  published: number;
  acked: number;
  deadLettered: number;
  restarts: number;
  state: string;
  commits: number;
  inputs: number;
  commitMs: number;
  failures: number;
  bytes: number;
}

const TIMELINE_MAX = 500;
const CHECKPOINTS_MAX = 200;

/** A bounded ring of points. */
class Series {
  readonly #max: number;
  readonly points: Point[] = [];
  constructor(max: number) {
    this.#max = max;
  }
  push(p: Point): void {
    this.points.push(p);
    if (this.points.length > this.#max) this.points.shift();
  }
  get last(): number {
    return this.points.at(-1)?.[1] ?? 0;
  }
}

/**
 * @internal Samples the runtime at an interval: rates in and out per actor, lag per consumer, checkpoint
 * commits, restarts and state changes. Each sample is a pass over counters the runtime keeps
 * anyway, so its cost does not grow with traffic.
 */
export class Sampler {
  readonly #host: AdminHost;
  readonly #max: number;
  readonly #last = new Map<string, Last>();
  /** Each source's connection at the last sample. */
  readonly #connections = new Map<string, string>();
  #lastTime = 0;
  readonly rateIn = new Map<string, Series>();
  readonly rateOut = new Map<string, Series>();
  readonly lag = new Map<string, Series>();
  /** Messages behind per connector source, by source name. */
  readonly sourceLag = new Map<string, Series>();
  readonly timeline: TimelineEvent[] = [];
  readonly checkpoints: CheckpointSample[] = [];
  /** Positions per consumer, by stream/consumer; filled in by {@link sample}. */
  readonly #positionsOf: (actor: string) => Record<string, number>;

  constructor(host: AdminHost, max: number, positionsOf: (actor: string) => Record<string, number>) {
    this.#host = host;
    this.#max = max;
    this.#positionsOf = positionsOf;
  }

  #series(map: Map<string, Series>, name: string): Series {
    let s = map.get(name);
    if (s === undefined) {
      s = new Series(this.#max);
      map.set(name, s);
    }
    return s;
  }

  #event(e: TimelineEvent): void {
    this.timeline.push(e);
    if (this.timeline.length > TIMELINE_MAX) this.timeline.shift();
  }

  sample(now = Date.now()): void {
    const seconds = this.#lastTime === 0 ? 0 : (now - this.#lastTime) / 1000;
    this.#lastTime = now;
    for (const cell of this.#host.actors()) {
      const c = cell.counters;
      const cp = cell.checkpoint;
      const cur: Last = {
        delivered: c.delivered,
        published: c.published,
        acked: c.acked,
        deadLettered: c.deadLettered,
        restarts: c.restarts,
        state: cell.state,
        commits: cp?.commits ?? 0,
        inputs: cp?.inputs ?? 0,
        commitMs: cp?.commitMs ?? 0,
        failures: cp?.failures ?? 0,
        bytes: cp?.bytes ?? 0,
      };
      const prev = this.#last.get(cell.name);
      this.#last.set(cell.name, cur);
      if (prev === undefined || seconds <= 0) {
        this.#series(this.rateIn, cell.name).push([now, 0]);
        this.#series(this.rateOut, cell.name).push([now, 0]);
        continue;
      }
      this.#series(this.rateIn, cell.name).push([now, round((cur.delivered - prev.delivered) / seconds)]);
      this.#series(this.rateOut, cell.name).push([now, round((cur.published - prev.published) / seconds)]);
      if (cur.restarts > prev.restarts) {
        this.#event({
          time: now,
          actor: cell.name,
          kind: 'restart',
          detail: `${cur.restarts - prev.restarts} restart(s)`,
        });
      }
      if (cur.deadLettered > prev.deadLettered) {
        this.#event({
          time: now,
          actor: cell.name,
          kind: 'dead-letter',
          detail: `${cur.deadLettered - prev.deadLettered} dead-lettered`,
        });
      }
      if (cur.failures > prev.failures) {
        this.#event({
          time: now,
          actor: cell.name,
          kind: 'checkpoint-failure',
          detail: `${cur.failures - prev.failures} checkpoint(s) failed`,
        });
      }
      if (cur.state !== prev.state) {
        this.#event({ time: now, actor: cell.name, kind: 'state', detail: `${prev.state} -> ${cur.state}` });
      }
      if (cur.commits > prev.commits) {
        const commits = cur.commits - prev.commits;
        this.checkpoints.push({
          time: now,
          actor: cell.name,
          commits,
          inputs: cur.inputs - prev.inputs,
          meanCommitMs: round((cur.commitMs - prev.commitMs) / commits),
          bytes: cur.bytes - prev.bytes,
          positions: this.#positionsOf(cell.name),
        });
        if (this.checkpoints.length > CHECKPOINTS_MAX) this.checkpoints.shift();
      }
    }
    for (const stream of this.#host.streams()) {
      for (const consumer of stream.consumers()) {
        this.#series(this.lag, `${stream.name}/${consumer.name}`).push([now, consumer.lag().messages]);
      }
    }
    for (const source of this.#host.telemetry.sources.list()) {
      if (source.connection !== 'closed') this.#series(this.sourceLag, source.name).push([now, source.lag.messages]);
      const before = this.#connections.get(source.name);
      this.#connections.set(source.name, source.connection);
      if (before !== undefined && before !== source.connection) {
        const why =
          source.connection === 'reconnecting' && source.lastError !== undefined ? `: ${source.lastError.message}` : '';
        this.#event({
          time: now,
          actor: source.name,
          kind: 'connection',
          detail: `${before} -> ${source.connection}${why}`,
        });
      }
    }
  }

  /** The latest rate in and out of an actor (messages per second). */
  rates(actor: string): { in: number; out: number } {
    return { in: this.rateIn.get(actor)?.last ?? 0, out: this.rateOut.get(actor)?.last ?? 0 };
  }

  history(): {
    rateIn: Record<string, readonly Point[]>;
    rateOut: Record<string, readonly Point[]>;
    lag: Record<string, readonly Point[]>;
    sourceLag: Record<string, readonly Point[]>;
  } {
    const of = (m: Map<string, Series>) => Object.fromEntries([...m].map(([k, s]) => [k, s.points]));
    return {
      rateIn: of(this.rateIn),
      rateOut: of(this.rateOut),
      lag: of(this.lag),
      sourceLag: of(this.sourceLag),
    };
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
