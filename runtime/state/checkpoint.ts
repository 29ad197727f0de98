import type { Logger } from '../actors/actor.ts';
import { ACCEPTED, type Bus } from '../bus/bus.ts';
import type { Clock, Timer } from '../clock.ts';
import { checkFields, checkHeaders, type Envelope } from '../envelope.ts';
import { messageOf, OptionsError } from '../errors.ts';
import { deliveriesOf, type Lineage, releaseDownstream, SourceLineage } from '../lineage.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../options.ts';
import type { Store } from '../store/types.ts';
import type { ConsumerImpl } from '../streams/consumer.ts';
import type { StoredMessage, StreamImpl } from '../streams/stream.ts';
import { StoreState } from './keyedState.ts';
import { type CheckpointPart, type OperatorCheckpoint, operatorNamespace } from './operatorState.ts';

/**
 * When an actor's state is checkpointed: every `intervalMs` of the runtime clock, or after
 * `everyInputs` inputs settled, whichever comes first. At least one of them.
 */
export interface CheckpointOptions {
  intervalMs?: number;
  everyInputs?: number;
}

const checkpointKeys = optionKeys<keyof CheckpointOptions>({ intervalMs: true, everyInputs: true });

/** @internal Checks an actor's `checkpoint` option. */
export function resolveCheckpoint(
  options: CheckpointOptions,
  where: string,
): { intervalMs: number | undefined; everyInputs: number | undefined } {
  optionsObject(where, options);
  knownKeys(where, options, checkpointKeys);
  const intervalMs =
    options.intervalMs === undefined ? undefined : intOption(`${where}.intervalMs`, options.intervalMs, 0, 1);
  const everyInputs =
    options.everyInputs === undefined ? undefined : intOption(`${where}.everyInputs`, options.everyInputs, 0, 1);
  if (intervalMs === undefined && everyInputs === undefined) {
    // A checkpoint that never runs would hold every input's acknowledgement forever.
    throw new OptionsError(where, 'give intervalMs, everyInputs or both', options);
  }
  return { intervalMs, everyInputs };
}

/**
 * @internal The checks a publish makes of a message (header rules, id, event time and key, size
 * against the bus's `maxPayloadBytes`), for an output that goes into a checkpoint's batch instead of
 * through the bus: it must not get into a stream a publish could not put it in. Throws as a publish
 * rejects.
 */
export function checkStaged(bus: Bus, env: Envelope): void {
  const headers = checkHeaders(env.headers, 'forward.headers');
  checkFields(env.id, env.eventTime, env.key, 'forward');
  bus.checkSize(env.subject, env.data, headers);
}

/** @internal What a checkpoint needs of its actor. */
export interface CheckpointHost {
  /**
   * Whether the state reflects exactly the inputs settled so far: nothing taken is still being
   * handled, published, or waiting on downstream. Inputs kept by operator state do not count.
   */
  aligned(): boolean;
  /** The checkpoint is taken (or given up): the actor may take input again. */
  resume(): void;
}

/** What a checkpoint has cost so far, for telemetry and benchmarks. */
export interface CheckpointStats {
  readonly commits: number;
  /** Inputs whose settlement the commits carried. */
  readonly inputs: number;
  /** Time from the start of the batch to its durable commit, summed over commits (ms). */
  readonly commitMs: number;
  readonly failures: number;
  /** Bytes the commits wrote (state, window accumulators, outputs, positions: see `StoreBatch.bytes`). */
  readonly bytes: number;
}

/** One committed checkpoint, as the admin API's history shows it. */
export interface CheckpointRecord {
  /** When it committed (epoch ms). */
  readonly time: number;
  /** From the start of its batch to its durable commit (ms). */
  readonly durationMs: number;
  readonly bytes: number;
  /** Inputs whose settlement it carried. */
  readonly inputs: number;
  /** The positions it stored, by `stream/consumer`: a restart resumes there. */
  readonly positions: Readonly<Record<string, number>>;
}

/** Committed checkpoints an actor keeps in memory for its history, newest last. */
export const CHECKPOINT_HISTORY = 50;

/**
 * @internal The checkpoints of one actor. Inputs it settles are not acknowledged upstream at once:
 * their effects (state writes, outputs to streams) wait here, and at the next checkpoint one store
 * batch commits the state writes, the outputs appended to their streams, and the positions of the
 * actor's durable consumers; only then is that batch's work durable, and a crash replays from the
 * positions stored with it. The checkpoint is aligned: when one is due the actor takes no new
 * input until what it took has settled, so the positions and the state reflect the same inputs.
 */
export class Checkpoint {
  readonly state: StoreState;
  readonly #actor: string;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #host: CheckpointHost;
  readonly #consumers: ConsumerImpl[];
  readonly #everyInputs: number;
  readonly #intervalMs: number | undefined;
  #timer: Timer | undefined;
  /** Upstream references of settled inputs, given back once the checkpoint is taken. */
  #deferred: Lineage[] = [];
  #settledSince = 0;
  #outputs = new Map<StreamImpl, StoredMessage[]>();
  /** Outputs that plain subscribers of their subject get once the checkpoint commits. */
  #echoes: Envelope[] = [];
  /** Those of the last commit not yet accepted by every `block` mailbox: the next checkpoint waits. */
  #delivering: Promise<void> | undefined;
  readonly #bus: Bus;
  #due = false;
  #polling = false;
  #committing: Promise<void> | undefined;
  #closed = false;
  #stats = { commits: 0, inputs: 0, commitMs: 0, failures: 0, bytes: 0 };
  readonly #history: CheckpointRecord[] = [];
  readonly #parts = new Set<CheckpointPart>();
  readonly #handoff = new Map<string, unknown>();
  readonly #operatorNamespace: string;

  constructor(
    actor: string,
    options: { intervalMs: number | undefined; everyInputs: number | undefined },
    deps: { readonly store: Store; readonly clock: Clock; readonly log: Logger; readonly bus: Bus },
    consumers: ConsumerImpl[],
    host: CheckpointHost,
  ) {
    this.#actor = actor;
    this.#store = deps.store;
    this.#clock = deps.clock;
    this.#log = deps.log;
    this.#bus = deps.bus;
    this.#host = host;
    this.#consumers = consumers;
    for (const c of consumers) c.ownByCheckpoint();
    // Held inputs stay unsettled in their consumers, which deliver at most maxAckPending of them:
    // a checkpoint waiting for more inputs than that would wait forever.
    let limit = options.everyInputs ?? Number.POSITIVE_INFINITY;
    for (const c of consumers) limit = Math.min(limit, c.maxAckPending);
    this.#everyInputs = limit;
    this.#intervalMs = options.intervalMs;
    this.state = new StoreState(deps.store, actor);
    this.#operatorNamespace = operatorNamespace(actor);
    this.#schedule();
  }

  /** What the operators of one lane's pipeline see (see {@link withCheckpoint}). */
  forLane(lane: number): OperatorCheckpoint {
    return {
      actor: this.#actor,
      lane,
      store: this.#store,
      namespace: this.#operatorNamespace,
      register: (part) => void this.#parts.add(part),
      handoff: this.#handoff,
    };
  }

  /** A checkpoint is due: the actor takes no new input until it is taken. */
  get due(): boolean {
    return this.#due;
  }

  /** Inputs settled and not yet acknowledged upstream (their checkpoint is still to come). */
  get held(): number {
    return this.#deferred.length;
  }

  get stats(): CheckpointStats {
    return { ...this.#stats };
  }

  /** The last committed checkpoints, oldest first (at most {@link CHECKPOINT_HISTORY}). */
  get history(): readonly CheckpointRecord[] {
    return this.#history;
  }

  /** An input settled: its upstream reference is given back at the next checkpoint. */
  settled(upstream: Lineage | undefined): void {
    if (upstream !== undefined) this.#deferred.push(upstream);
    if (++this.#settledSince >= this.#everyInputs) this.request();
  }

  /**
   * An output to a stream (checked by {@link checkStaged}): appended by the next checkpoint, in its
   * batch, and routed to the subject's plain subscribers once that commits.
   */
  stage(stream: StreamImpl, record: StoredMessage, output: Envelope): void {
    const records = this.#outputs.get(stream);
    if (records === undefined) this.#outputs.set(stream, [record]);
    else records.push(record);
    // Kept only when someone besides the stream listens now, as a publish reaches those it matches.
    // Without lineage (its input is settled by the commit) or reply subject (the stream keeps none).
    if (this.#listened(output.subject)) {
      const headers = checkHeaders(output.headers, 'forward.headers');
      this.#echoes.push({ ...output, headers, attempt: 1, replyTo: undefined, lineage: undefined });
    }
  }

  #listened(subject: string): boolean {
    const match = this.#bus.lookup(subject);
    if (match.groups.length > 0) return true;
    for (const r of match.plain) if (r.capture === undefined) return true;
    return false;
  }

  /**
   * Routes a committed checkpoint's outputs to the plain subscribers and queue groups of their
   * subjects, in order, as a publish would (filters, mailbox policies), but not to the stream
   * again. After the commit: a subscriber never sees an output a crash could take back. The next
   * checkpoint waits until `block` mailboxes accepted them, so a slow subscriber holds the actor
   * back as it would hold a publisher.
   */
  #echo(outputs: Envelope[]): void {
    let waits: Promise<void>[] | undefined;
    for (const env of outputs) {
      const match = this.#bus.lookup(env.subject);
      const plain = match.plain.filter((r) => r.capture === undefined);
      if (plain.length === 0 && match.groups.length === 0) continue;
      let accepted: Promise<void>;
      try {
        accepted = this.#bus.route(env, true, { plain, groups: match.groups });
      } catch (error) {
        accepted = Promise.reject(error);
      }
      if (accepted === ACCEPTED) continue;
      (waits ??= []).push(
        accepted.catch((error: unknown) => {
          // Committed and acknowledged already: the stream keeps it; only this delivery is lost.
          this.#log.warn(
            `actor '${this.#actor}': a subscriber of '${env.subject}' refused a checkpointed output (the stream keeps it): ${messageOf(error)}`,
          );
        }),
      );
    }
    if (waits === undefined) return;
    this.#delivering = Promise.all(waits).then(() => {
      this.#delivering = undefined;
      this.poll();
    });
  }

  request(): void {
    if (this.#closed || this.#due) return;
    this.#due = true;
    this.poll();
  }

  /** Takes the due checkpoint once the actor is aligned (on the next microtask, outside the caller's stack). */
  poll(): void {
    if (!this.#due || this.#polling || this.#committing !== undefined || this.#delivering !== undefined) return;
    this.#polling = true;
    queueMicrotask(() => {
      this.#polling = false;
      if (this.#due && this.#committing === undefined && this.#delivering === undefined && this.#host.aligned())
        this.#commit();
    });
  }

  /**
   * The last checkpoint of a graceful stop: taken if the actor is aligned (else its inputs since the
   * last one are replayed after a restart), then no more.
   */
  async final(): Promise<void> {
    while (this.#committing !== undefined) await this.#committing;
    if (this.#closed) return;
    if (this.#host.aligned()) this.#commit();
    else
      this.#log.warn(
        `actor '${this.#actor}': not aligned at stop; the inputs since its last checkpoint will be replayed`,
      );
    this.close();
    while (this.#committing !== undefined) await this.#committing;
  }

  /** No more checkpoints; what was not committed is given up (replayed after a restart). */
  close(): void {
    this.#closed = true;
    this.#due = false;
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#intervalMs === undefined || this.#closed) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.request();
      this.#schedule();
    }, this.#intervalMs);
  }

  #dirty(): boolean {
    if (this.#deferred.length > 0 || this.state.dirty || this.#outputs.size > 0) return true;
    for (const p of this.#parts) if (p.dirty) return true;
    for (const c of this.#consumers) if (c.positionDirty) return true;
    return false;
  }

  /** Whether `upstream` is a delivery of one of the consumers whose positions this checkpoint stores. */
  #ownDelivery(upstream: Lineage): boolean {
    if (!(upstream instanceof SourceLineage)) return false;
    for (const c of this.#consumers) if (deliveriesOf(upstream, c).length > 0) return true;
    return false;
  }

  #commit(): void {
    this.#settledSince = 0;
    if (!this.#dirty()) {
      this.#due = false;
      this.#host.resume();
      return;
    }
    // Still due until the batch is built: each release below lets its consumer push the next
    // input, and an actor that took it now would put that input's state writes and outputs into
    // this batch while its acknowledgement waits for the next one, so a crash would replay an
    // input whose effects are already stored.
    // Deliveries of the actor's own consumers are acknowledged in memory first, so the positions
    // written below count them; the stored position moves only with this batch, and a crash before
    // it commits replays them all. Any other upstream (a broker's message, another actor's input)
    // acknowledges outside this store at once, so it waits for the commit: acknowledged before,
    // a crash in between would lose its input.
    const deferred = this.#deferred;
    this.#deferred = [];
    const external: Lineage[] = [];
    for (const upstream of deferred) {
      if (this.#ownDelivery(upstream)) releaseDownstream(upstream);
      else external.push(upstream);
    }
    const outputs = this.#outputs;
    this.#outputs = new Map();
    const echoes = this.#echoes;
    this.#echoes = [];
    const after: (() => void)[] = [];
    const started = performance.now();
    const state = this.state;
    const ns = state.namespace;
    let bytes = 0;
    const positions: Record<string, number> = {};
    this.#committing = this.#store
      .batch((b) => {
        state.take(
          (key, value) => b.put(ns, key, value),
          (key) => b.delete(ns, key),
        );
        for (const part of this.#parts) {
          part.write(b, this.#operatorNamespace);
          if (part.retired) this.#parts.delete(part);
        }
        for (const [stream, records] of outputs) after.push(stream.appendIn(b, records));
        for (const c of this.#consumers) {
          c.writePosition(b);
          positions[`${c.stream}/${c.name}`] = c.position;
        }
        bytes = b.bytes;
      })
      .then(
        () => {
          const durationMs = performance.now() - started;
          this.#stats.commits++;
          this.#stats.inputs += deferred.length;
          this.#stats.commitMs += durationMs;
          this.#stats.bytes += bytes;
          this.#history.push({
            time: Date.now(),
            durationMs: Math.round(durationMs * 100) / 100,
            bytes,
            inputs: deferred.length,
            positions,
          });
          if (this.#history.length > CHECKPOINT_HISTORY) this.#history.shift();
          state.committed();
          for (const run of after) run();
          for (const upstream of external) releaseDownstream(upstream);
          if (echoes.length > 0) this.#echo(echoes);
        },
        (error: unknown) => {
          // Failed to commit (the store then refuses writes) or to build (a value it cannot encode):
          // either way no later checkpoint could reflect this one's inputs, so none is taken. The
          // actor's durable inputs are no longer acknowledged, and a restart replays them from the
          // last checkpoint that committed.
          this.#stats.failures++;
          state.committed();
          this.close();
          // Failed, so their sources deliver them again (to this process or another): none of
          // their effects was stored.
          for (const upstream of external) releaseDownstream(upstream, error);
          this.#log.error(
            `actor '${this.#actor}': checkpoint failed, no more are taken (restart to go on from the last one): ${messageOf(error)}`,
          );
        },
      )
      .finally(() => {
        this.#committing = undefined;
        this.poll();
      });
    // Later inputs go on at once: their writes are in the next batch, committed after this one.
    this.#due = false;
    this.#host.resume();
  }
}
