import { merge, type Observable, Subject } from 'rxjs';
import {
  type Actor,
  type ActorContext,
  type AnyActor,
  actor as defineActor,
  type Logger,
  type PipelineActor,
} from '../runtime/actors/actor.ts';
import type { ActorRef } from '../runtime/actors/actorCell.ts';
import { laneOf } from '../runtime/actors/input.ts';
import { isLiteral } from '../runtime/bus/subjects.ts';
import { VirtualClock } from '../runtime/clock.ts';
import type { Envelope } from '../runtime/envelope.ts';
import { OptionsError } from '../runtime/errors.ts';
import { createRuntime, type Runtime, type ShutdownReport } from '../runtime/runtime.ts';
import { type LateRecord, lateRecords, type SendOptions, type TimedInput } from './pipelineHarness.ts';

export interface ActorHarnessOptions {
  /** Processing time the virtual clock starts at. @default 0 */
  startMs?: number;
  /** Other actors to run beside it (services it calls, downstream actors), as `actor()` made them. */
  with?: readonly OtherActor[];
}

export interface HarnessRestartOptions {
  /** The lane whose pipeline fails. @default every lane, as one incident (one restart) */
  lane?: number;
}

/** Any actor, whatever its input and output types: the same as `AnyActor` from `sluice`. */
export type OtherActor = AnyActor;

const INJECTED = 'restart injected by the test harness';

/**
 * Runs an actor (and any actors it talks to) in a real runtime on a virtual clock, as Kafka
 * Streams' TopologyTestDriver does for a topology: publish inputs with chosen event times, move
 * processing time, read everything published on the bus (outputs, dead letters, late data), and
 * inject a pipeline failure between two steps to see what a restart does. A window operator
 * made outside the actor's pipeline factory is shared by its lanes and restarts: its `stats()`
 * tells the state the actor holds.
 *
 * @example
 * const h = testActor(pageViews); // the README's page-views actor
 * await h.send({ page: '/home', ts: 1_000 });
 * await h.send({ page: '/home', ts: 63_000 }); // event time, not advance(), closes the window
 * expect(h.published('views.per-minute')).toHaveLength(1);
 */
export class ActorHarness {
  readonly clock: VirtualClock;
  readonly runtime: Runtime;
  /** The actor under test. */
  readonly ref: ActorRef;
  /** Warnings and errors the runtime logged. */
  readonly logs: string[] = [];
  readonly #actor: Actor;
  readonly #published: Envelope[] = [];
  /** Per lane, the fault of its running pipeline: erroring it fails that pipeline. */
  readonly #faults = new Map<number, Subject<never>>();

  constructor(tested: AnyActor, options: ActorHarnessOptions = {}) {
    const actor = tested as Actor;
    this.clock = new VirtualClock(options.startMs ?? 0);
    const keep = (m: string) => void this.logs.push(m);
    const logger: Logger = { debug: () => {}, info: () => {}, warn: keep, error: keep };
    // No jitter: a restart's backoff is then exactly the configured delay.
    this.runtime = createRuntime({ clock: this.clock, logger, random: () => 0 });
    this.runtime.bus.subscribe('>', { callback: (env) => void this.#published.push(env) });
    this.#actor = actor;
    for (const other of options.with ?? []) this.runtime.spawn(other);
    this.ref = this.runtime.spawn(this.#withFaults(actor));
  }

  /** Everything published on the bus so far (inputs included), optionally on one subject. */
  published<T = unknown>(subject?: string): Envelope<T>[] {
    const all = this.#published as Envelope<T>[];
    return subject === undefined ? [...all] : all.filter((e) => e.subject === subject);
  }

  /** What the actor published to its `output` subject. */
  outputs<T = unknown>(): Envelope<T>[] {
    const output = this.#actor.output;
    if (output === undefined)
      throw new OptionsError(
        'harness.outputs',
        `actor '${this.#actor.name}' has no output subject; use published(subject)`,
        output,
      );
    return this.published<T>(output);
  }

  /**
   * Late data published on the bus (inputs a window turned away and its `late` option
   * forwarded), optionally on one subject: every envelope with a `sluice-late-reason` header.
   */
  lateData<T = unknown>(subject?: string): LateRecord<T>[] {
    return lateRecords(this.published<T>(subject));
  }

  /** The lane the actor's inputs with this `partitionBy` key go to. */
  laneOf(key: string): number {
    return laneOf(key, this.#actor.lanes);
  }

  /** Messages on the actor's dead-letter subject. */
  get deadLetters(): Envelope[] {
    return this.published(this.#actor.deadLetter);
  }

  /** Publishes an input (to the actor's first subject unless told) and lets it be handled. */
  async send(data: unknown, options: SendOptions = {}): Promise<void> {
    await this.runtime.bus.publish(this.#subjectOf(options.subject), data, {
      ...(options.eventTime === undefined ? {} : { eventTime: options.eventTime }),
      ...(options.key === undefined ? {} : { key: options.key }),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
    });
    await this.#settle();
  }

  /**
   * Publishes many inputs with event times (and keys), `[[data, eventTime, key?], ...]`, in order,
   * waiting only when a mailbox pushes back, then lets them be handled: for long runs, where
   * `send` per input would let the event loop turn each time. A key in an item wins over `options.key`.
   */
  async sendAll(items: Iterable<TimedInput<unknown>>, options: Omit<SendOptions, 'eventTime'> = {}): Promise<void> {
    const subject = this.#subjectOf(options.subject);
    for (const [data, eventTime, key] of items) {
      const k = key ?? options.key;
      const accepted = this.runtime.bus.publish(subject, data, {
        eventTime,
        ...(k === undefined ? {} : { key: k }),
        ...(options.headers === undefined ? {} : { headers: options.headers }),
      });
      // Accepted at once unless a mailbox is full (then it waits) or refused (then it throws here).
      await accepted;
    }
    await this.#settle();
  }

  /** Moves processing time forward, running timers (retries, restarts, early firings) on the way. */
  async advance(ms: number): Promise<void> {
    await this.clock.advance(ms);
    await this.#settle();
  }

  /**
   * Fails the actor's pipeline as an operator error would (no culprit message), then moves time
   * through the supervisor's backoff until it runs again, replaying what it held. With several
   * lanes (`partitionBy`), every lane's pipeline fails unless `options.lane` names one; lanes that
   * fail together count as one restart against the actor's `restart.maxRestarts` and come back
   * after one backoff. Resolves once all of them run again (or the actor stopped at the limit).
   */
  async restart(options: HarnessRestartOptions = {}): Promise<void> {
    if (this.#actor.definition.pipeline === undefined) {
      throw new OptionsError(
        'harness.restart',
        `actor '${this.#actor.name}' has a handler, no pipeline to restart`,
        'handle',
      );
    }
    const lanes = options.lane === undefined ? [...this.#faults.keys()] : [options.lane];
    for (const lane of lanes) {
      if (!this.#faults.has(lane)) {
        throw new OptionsError(
          'harness.restart.lane',
          `actor '${this.#actor.name}' has no running pipeline in that lane (lanes: ${this.#actor.lanes})`,
          lane,
        );
      }
    }
    const faults = lanes.map((lane) => {
      const fault = this.#faults.get(lane) as Subject<never>;
      this.#faults.delete(lane);
      return fault;
    });
    for (const fault of faults) fault.error(new Error(INJECTED));
    // The supervisor's state says 'running' once the first lane is back: wait for each of them.
    const down = () => lanes.some((lane) => !this.#faults.has(lane)) && this.ref.state !== 'stopped';
    await this.#settle();
    for (let i = 0; i < 1000 && down(); i++) {
      const due = this.clock.nextDue();
      if (due === undefined) break;
      await this.clock.advanceTo(due);
    }
    await this.#settle();
  }

  /** Stops the runtime (pipelines complete, so windows flush) and returns its report. */
  stop(): Promise<ShutdownReport> {
    return this.runtime.stop();
  }

  #subjectOf(given: string | undefined): string {
    const subject = given ?? this.#actor.subjects[0]?.name;
    if (subject === undefined || !isLiteral(subject)) {
      throw new OptionsError('harness.send', 'the actor subscribes to a wildcard; name a subject to send on', subject);
    }
    return subject;
  }

  async #settle(): Promise<void> {
    await this.clock.advance(0);
  }

  #withFaults(actor: Actor): Actor {
    const pipeline = actor.definition.pipeline;
    if (pipeline === undefined) return actor;
    const definition = actor.definition as PipelineActor<unknown, unknown>;
    return defineActor({
      ...definition,
      pipeline: (input$: Observable<Envelope<unknown>>, ctx: ActorContext) => {
        const fault = new Subject<never>();
        this.#faults.set(ctx.lane, fault);
        return merge(pipeline(input$, ctx), fault);
      },
    });
  }
}

/** Runs `actor` in an {@link ActorHarness}. */
export function testActor(actor: AnyActor, options?: ActorHarnessOptions): ActorHarness {
  return new ActorHarness(actor, options);
}
