import type { Span } from '@opentelemetry/api';
import { type Observable, type Subscription as RxSubscription, Subject } from 'rxjs';
import type { Actor, ActorContext, HandlerActor, Logger, MessageContext, PipelineActor } from './actor.ts';
import { ACCEPTED, type Bus, type BusClient, type RequestOptions, type SubjectRef } from './bus.ts';
import type { Clock, Timer } from './clock.ts';
import { createEnvelope, type Envelope, nextId, type PublishOptions } from './envelope.ts';
import { ClosedError, messageOf, OptionsError, RestartLimitError, SettlementError, SluiceError } from './errors.ts';
import { DEAD_LETTER_HEADERS, MessageError } from './failure.ts';
import { outward, releasePublishing, retainPublishing, Tracker, type TrackerOwner } from './lineage.ts';
import { Mailbox } from './mailbox.ts';
import { PermissionChecker } from './permissions.ts';
import { subjectMatches } from './subjects.ts';
import {
  backoffDelay,
  type ResolvedRestart,
  type ResolvedRetry,
  RestartWindow,
  resolveRestart,
  resolveRetry,
} from './supervisor.ts';
import { type Counters, endSpan, injectTrace, startProcessSpan, type Telemetry, tracingEnabled } from './telemetry.ts';
import { validate } from './typedSubject.ts';

/** Where an actor stands. */
export type ActorState = 'running' | 'restarting' | 'stopping' | 'stopped';

/** A running actor, as `runtime.spawn` returns it. */
export interface ActorRef {
  readonly name: string;
  readonly state: ActorState;
  /** Messages waiting in its mailbox. */
  readonly depth: number;
  /** Inputs taken and not yet settled or absorbed. */
  readonly inFlight: number;
  /** Inputs kept by operator state or downstream, not yet settled. */
  readonly absorbed: number;
  /** Pipeline restarts within the current restart window. */
  readonly restarts: number;
  readonly counters: Readonly<Counters>;
  /** Resolves when it has nothing queued and nothing in flight. */
  idle(): Promise<void>;
  /**
   * Stops taking input now; what is queued, or still held by its pipeline or handler, is
   * dead-lettered as stopped. Inputs whose outputs were already emitted settle downstream.
   */
  stop(): Promise<void>;
}

/** @internal What a cell needs from its runtime. */
export interface CellDeps {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly log: Logger;
  readonly random: () => number;
  readonly escalate: (actor: string, error: RestartLimitError) => void;
}

/** The tracker of one input inside a cell: the input, its lane, its span. */
class Input extends Tracker {
  readonly env: Envelope;
  readonly lane: number;
  readonly startedAt: number;
  span: Span | undefined = undefined;
  counted = true;
  abandoned = false;
  done = false;
  /** Handed to a pipeline or handler (not merely waiting in a backlog or for a retry). */
  delivered = false;

  constructor(env: Envelope, owner: TrackerOwner, generation: number, lane: number, startedAt: number) {
    super(env.id, owner, env.lineage, generation);
    // The pipeline sees the input with this tracker as its lineage, so what it emits traces back here.
    this.env = { ...env, lineage: this };
    this.lane = lane;
    this.startedAt = startedAt;
  }
}

interface Lane {
  readonly index: number;
  readonly ctx: ActorContext;
  generation: number;
  /** Pipeline mode: the running pipeline's input, or undefined while it is down. */
  input: Subject<Envelope> | undefined;
  subscription: RxSubscription | undefined;
  /** Inputs waiting for this lane: while its pipeline restarts, or (handler mode) while it is busy. */
  backlog: Input[];
  active: number;
  paused: boolean;
  /** Pipeline mode: its input was completed by a shutdown (end of stream). */
  completed: boolean;
}

/**
 * @internal The running form of an actor: its mailbox, lanes, in-flight accounting, retries,
 * dead letters and supervision. One per spawned actor.
 */
export class ActorCell implements TrackerOwner, ActorRef {
  readonly name: string;
  readonly counters: Counters;
  readonly #actor: Actor;
  readonly #deps: CellDeps;
  readonly #client: BusClient;
  readonly #mailbox: Mailbox;
  readonly #unroutes: (() => void)[] = [];
  readonly #lanes: Lane[] = [];
  readonly #inputs = new Set<Input>();
  readonly #retry: ResolvedRetry;
  readonly #restart: ResolvedRestart;
  readonly #restartWindow: RestartWindow;
  readonly #timers = new Set<Timer>();
  /** Completed pipelines replaced by {@link ActorCell.#reopen} that had not finished yet. */
  readonly #retired: RxSubscription[] = [];
  readonly #pipeline: PipelineActor<unknown, unknown>['pipeline'] | undefined;
  readonly #handle: HandlerActor<unknown, unknown>['handle'] | undefined;
  readonly #partitionBy: ((env: Envelope) => string) | undefined;
  readonly #laneConcurrency: number;
  readonly #tracing: boolean;
  readonly #hasSchemas: boolean;
  readonly #unregisterGauge: () => void;
  #state: ActorState = 'running';
  #inFlight = 0;
  #absorbed = 0;
  #pumping = false;
  #pumpAgain = false;
  #current: Input | undefined = undefined;
  #idleWaiters: (() => void)[] = [];
  #pendingDeadLetters = 0;
  #completing = false;

  constructor(actor: Actor, deps: CellDeps) {
    const def = actor.definition;
    this.#actor = actor;
    this.#deps = deps;
    this.name = actor.name;
    this.counters = deps.telemetry.countersOf(actor.name);
    this.#client = deps.bus.internalClient(actor.name, def.permissions);
    this.#retry = resolveRetry(def.retry, `actor '${actor.name}'.retry`);
    this.#restart = resolveRestart(def.restart, `actor '${actor.name}'.restart`);
    this.#restartWindow = new RestartWindow(this.#restart);
    this.#pipeline = def.pipeline as PipelineActor<unknown, unknown>['pipeline'] | undefined;
    this.#handle = def.handle as HandlerActor<unknown, unknown>['handle'] | undefined;
    this.#partitionBy = def.partitionBy as ((env: Envelope) => string) | undefined;
    this.#laneConcurrency = this.#partitionBy === undefined ? actor.maxInFlight : 1;
    this.#hasSchemas = actor.subjects.some((s) => s.schema !== undefined);
    this.#tracing = tracingEnabled();

    this.#mailbox = new Mailbox(actor.name, def.mailbox);
    this.#mailbox.onDrop = (env, reason) => {
      this.counters.dropped++;
      deps.bus.dropped(env, reason);
    };
    this.#mailbox.onReadable = () => this.#pump();

    for (let i = 0; i < actor.lanes; i++) {
      const lane: Lane = {
        index: i,
        ctx: this.#context(i),
        generation: 0,
        input: undefined,
        subscription: undefined,
        backlog: [],
        active: 0,
        paused: false,
        completed: false,
      };
      this.#lanes.push(lane);
      if (this.#pipeline !== undefined) this.#startPipeline(lane);
    }

    // Subscribe last: a message may arrive (and be handled) as soon as a route exists.
    const permissions = new PermissionChecker(def.permissions);
    for (const s of actor.subjects) {
      const denied = permissions.subscribeDenied(s.name);
      if (denied !== undefined) {
        this.#closeRoutes();
        throw deps.bus.denied('subscribe', s.name, actor.name, denied);
      }
      this.#unroutes.push(
        deps.bus.addRoute(s.name, {
          queue: def.queue,
          strategy: def.queueStrategy ?? 'round-robin',
          mailbox: this.#mailbox,
          direct: undefined,
          filter: permissions.deliveryFilter(s.name),
        }),
      );
    }
    this.#unregisterGauge = deps.telemetry.registerGauge(this);
  }

  get state(): ActorState {
    return this.#state;
  }
  get depth(): number {
    return this.#mailbox.depth;
  }
  get inFlight(): number {
    return this.#inFlight;
  }
  get absorbed(): number {
    return this.#absorbed;
  }
  get restarts(): number {
    return this.#restartWindow.count(this.#deps.clock.now());
  }

  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async stop(): Promise<void> {
    this.#halt(new ClosedError(this.name, 'the actor was stopped'));
  }

  // ---- TrackerOwner ----

  leftFlight(tracker: Tracker): void {
    const input = tracker as Input;
    if (input.abandoned || !input.counted) return;
    input.counted = false;
    this.#inFlight--;
    this.#absorbed++;
    this.#pump();
  }

  settled(tracker: Tracker, error: unknown): void {
    const input = tracker as Input;
    if (input.abandoned || input.done) return;
    input.done = true;
    this.#inputs.delete(input);
    if (input.counted) {
      input.counted = false;
      this.#inFlight--;
    } else this.#absorbed--;
    if (this.#deps.telemetry.timing)
      this.#deps.telemetry.recordProcessing(this.name, this.#deps.clock.now() - input.startedAt);
    if (error === undefined) {
      input.outcome = input.used ? 'acked' : 'dropped';
      if (input.used) {
        this.counters.acked++;
        this.#deps.telemetry.counters.acked++;
      } else {
        this.counters.dropped++;
        this.#deps.telemetry.counters.dropped++;
      }
      if (input.span !== undefined) endSpan(input.span, undefined);
      input.upstream?.releaseAbsorbed();
    } else {
      if (input.span !== undefined) endSpan(input.span, error);
      this.#failed(input, error);
    }
    this.#pump();
    this.#checkIdle();
  }

  // ---- intake ----

  #pump(): void {
    if (this.#pumping) {
      this.#pumpAgain = true;
      return;
    }
    this.#pumping = true;
    try {
      do {
        this.#pumpAgain = false;
        while (this.#state === 'running' && this.#inFlight < this.#actor.maxInFlight) {
          const env = this.#mailbox.take();
          if (env === undefined) break;
          this.#accept(env);
        }
      } while (this.#pumpAgain);
    } finally {
      this.#pumping = false;
    }
    this.#checkIdle();
  }

  #accept(env: Envelope): void {
    this.counters.delivered++;
    this.#deps.telemetry.counters.delivered++;
    let data = env.data;
    try {
      const codec = this.#actor.definition.codec;
      if (codec !== undefined && data instanceof Uint8Array) data = codec.decode(data, env.subject);
      if (this.#hasSchemas) {
        const schema = this.#actor.subjects.find(
          (s) => s.schema !== undefined && subjectMatches(s.name, env.subject),
        )?.schema;
        if (schema !== undefined) {
          const checked = validate(schema, data, env.subject);
          if (checked instanceof Promise) {
            // Async schemas hold a slot while they run, so the in-flight limit still bounds memory.
            this.#inFlight++;
            checked.then(
              (value) => {
                this.#inFlight--;
                if (this.#state === 'stopping' || this.#state === 'stopped') {
                  // Stopped while its schema ran: nothing will take it now, so it is dead-lettered.
                  this.#deadLetter(env, new ClosedError(this.name, 'the actor was stopped'), env.attempt, env.lineage);
                  this.#checkIdle();
                } else this.#admit(env, value);
              },
              (error: unknown) => {
                this.#inFlight--;
                this.#rejectInput(env, error);
              },
            );
            return;
          }
          data = checked;
        }
      }
    } catch (error) {
      this.#rejectInput(env, error);
      return;
    }
    this.#admit(env, data);
  }

  /** Input that can never succeed (undecodable, fails its schema, no key): straight to dead letters. */
  #rejectInput(env: Envelope, error: unknown): void {
    this.#deadLetter(env, error, env.attempt, env.lineage);
    this.#pump();
  }

  #admit(env: Envelope, data: unknown): void {
    let key = env.key;
    if (this.#partitionBy !== undefined) {
      try {
        key = this.#partitionBy(data === env.data ? env : { ...env, data });
      } catch (error) {
        this.#rejectInput(env, error);
        return;
      }
    }
    const source = data === env.data && key === env.key ? env : { ...env, data, key };
    const laneIndex = this.#lanes.length === 1 ? 0 : laneOf(key ?? '', this.#lanes.length);
    const lane = this.#lanes[laneIndex] as Lane;
    const input = new Input(
      source,
      this,
      lane.generation,
      laneIndex,
      this.#deps.telemetry.timing ? this.#deps.clock.now() : 0,
    );
    if (this.#tracing) input.span = startProcessSpan(this.name, env.subject, env.id, env.headers);
    this.#inFlight++;
    this.#inputs.add(input);
    this.#dispatch(input, lane);
  }

  #dispatch(input: Input, lane: Lane): void {
    if (this.#pipeline !== undefined) {
      if (lane.completed) {
        // End of stream was signalled, and input still came (an upstream actor's flush): a completed
        // Subject would ignore it, settling it as dropped. A fresh pipeline takes it instead, and the
        // shutdown completes that one in its next round.
        this.#reopen(lane);
        input.generation = lane.generation;
      }
      if (lane.input === undefined || lane.backlog.length > 0) {
        lane.backlog.push(input);
        return;
      }
      this.#deliver(input, lane);
      return;
    }
    if (lane.paused || lane.active >= this.#laneConcurrency || lane.backlog.length > 0) {
      lane.backlog.push(input);
      return;
    }
    this.#run(input, lane);
  }

  // ---- pipeline mode ----

  #startPipeline(lane: Lane): void {
    const input = new Subject<Envelope>();
    lane.input = input;
    const generation = lane.generation;
    let output: Observable<Envelope>;
    try {
      output = (this.#pipeline as PipelineActor<unknown, unknown>['pipeline'])(input.asObservable(), lane.ctx);
    } catch (error) {
      lane.input = undefined;
      this.#pipelineFailed(lane, error, generation);
      return;
    }
    lane.subscription = output.subscribe({
      next: (out) => this.#emit(out, lane),
      error: (error: unknown) => this.#pipelineFailed(lane, error, generation),
      complete: () => {
        if (!this.#completing) {
          this.#pipelineFailed(
            lane,
            new SluiceError('SLUICE_ERR_HANDLER', `actor '${this.name}' pipeline completed while its input was open`),
            generation,
          );
        }
      },
    });
    const backlog = lane.backlog;
    lane.backlog = [];
    for (const waiting of backlog) {
      if (lane.input !== input) {
        lane.backlog.push(waiting);
        continue;
      }
      this.#deliver(waiting, lane);
    }
  }

  #reopen(lane: Lane): void {
    lane.completed = false;
    // The completed pipeline may still be finishing async work: it keeps running, and its late
    // failures no longer restart the lane.
    if (lane.subscription !== undefined && !lane.subscription.closed) this.#retired.push(lane.subscription);
    lane.subscription = undefined;
    lane.input = undefined;
    lane.generation++;
    this.#startPipeline(lane);
  }

  #deliver(input: Input, lane: Lane): void {
    const previous = this.#current;
    this.#current = input;
    input.delivered = true;
    try {
      (lane.input as Subject<Envelope>).next(input.env);
    } finally {
      this.#current = previous;
    }
    // The synchronous reference: if nothing used the input, it settles now as dropped (filtered).
    input.release();
  }

  #emit(out: Envelope, lane: Lane): void {
    const lineage = out.lineage;
    if (lineage instanceof Input && lineage.done) {
      // Emitted after its input settled: an async step that did not hold it (see docs/settlement.md).
      this.counters.settlementErrors++;
      this.#deps.telemetry.counters.settlementErrors++;
      this.#deps.log.warn(
        new SettlementError(
          lineage.id,
          `actor '${this.name}' emitted an output after the input settled; wrap async steps in mapAsync or hold()`,
        ).message,
      );
    }
    const subject = this.#actor.output ?? out.subject;
    const source = lineage instanceof Input ? lineage : undefined;
    let env = out;
    if (subject !== out.subject || (source !== undefined && out.id === source.id) || source?.span !== undefined) {
      env = {
        ...out,
        id: source !== undefined && out.id === source.id ? nextId() : out.id,
        subject,
        headers: source?.span === undefined ? out.headers : injectTrace(source.span, out.headers),
        replyTo: subject === out.subject ? out.replyTo : undefined,
      };
    }
    this.#publishOutput(env, lane);
  }

  #publishOutput(env: Envelope, _lane: Lane | undefined): void {
    const lineage = env.lineage;
    retainPublishing(lineage);
    this.counters.published++;
    // Downstream takes the output through the outward view, so the cell can tell what its pipeline
    // still holds (replayed on a restart) from what only waits on downstream (left to settle there).
    const away = outward(lineage);
    const accepted = this.#client.forward(away === lineage ? env : { ...env, lineage: away });
    if (accepted === ACCEPTED) {
      releasePublishing(lineage);
      return;
    }
    accepted.then(
      () => releasePublishing(lineage),
      (error: unknown) => {
        if (lineage === undefined)
          this.#deps.log.error(`actor '${this.name}' could not publish to '${env.subject}': ${messageOf(error)}`);
        releasePublishing(lineage, error);
      },
    );
  }

  #pipelineFailed(lane: Lane, error: unknown, generation: number): void {
    if (generation !== lane.generation || this.#state === 'stopped') return;
    // `throwError(() => undefined)` still fails the pipeline: an undefined error would read as success.
    error ??= new SluiceError('SLUICE_ERR_HANDLER', `actor '${this.name}' pipeline failed with undefined`, {
      retryable: true,
    });
    lane.generation++;
    lane.input = undefined;
    lane.subscription?.unsubscribe();
    lane.subscription = undefined;

    const culprit = this.#culprit(error);
    // Everything else the dead pipeline held is replayed into the new one, in arrival order, as a
    // restarted Flink job replays from its last checkpoint: downstream may see an output twice.
    const replay: Input[] = [];
    for (const input of this.#inputs) {
      if (input.lane !== lane.index || input.generation !== generation || input === culprit || !input.delivered)
        continue;
      // What only waits on a publish or on downstream was emitted already: replaying it would
      // publish it twice. It settles where it is.
      if (!input.heldByPipeline) continue;
      replay.push(this.#abandon(input));
    }
    lane.backlog = replay.concat(lane.backlog);

    if (culprit !== undefined) {
      // A failure tied to one message is that message's failure: it is retried or dead-lettered,
      // and the pipeline comes back at once without counting against the restart limit.
      // Its own references carry the failure: the synchronous one in #deliver, or mapAsync's hold.
      if (culprit.error === undefined) culprit.error = error;
      this.#deps.log.warn(`actor '${this.name}' failed on message '${culprit.id}': ${messageOf(error)}`);
      queueMicrotask(() => this.#restartLane(lane));
      return;
    }
    const delay = this.#restartWindow.next(this.#deps.clock.now(), this.#deps.random);
    if (delay !== undefined) {
      this.counters.restarts++;
      this.#deps.telemetry.counters.restarts++;
    }
    if (delay === undefined) {
      const limit = new RestartLimitError(this.name, this.#restart.maxRestarts, this.#restart.windowMs, error);
      this.#deps.log.error(limit.message);
      if (this.#restart.onLimit === 'escalate') this.#deps.escalate(this.name, limit);
      this.#halt(limit);
      return;
    }
    this.#deps.log.warn(`actor '${this.name}' pipeline failed, restarting in ${delay} ms: ${messageOf(error)}`);
    this.#state = 'restarting';
    this.#later(delay, () => {
      if (this.#state === 'restarting') this.#state = 'running';
      this.#restartLane(lane);
      this.#pump();
    });
  }

  #restartLane(lane: Lane): void {
    if (this.#state === 'stopped' || this.#state === 'stopping' || lane.input !== undefined) return;
    this.#startPipeline(lane);
  }

  #culprit(error: unknown): Input | undefined {
    if (this.#current !== undefined) return this.#current;
    if (error instanceof MessageError) {
      const lineage = error.envelope.lineage;
      if (lineage instanceof Input && this.#inputs.has(lineage)) return lineage;
      for (const input of this.#inputs) if (input.id === error.messageId) return input;
    }
    return undefined;
  }

  /** Replaces an input whose processing was lost with a fresh tracker for the same delivery. */
  #abandon(input: Input): Input {
    input.abandoned = true;
    this.#inputs.delete(input);
    if (input.span !== undefined) endSpan(input.span, new Error('pipeline restarted'));
    const fresh = new Input(
      { ...input.env, lineage: input.upstream },
      this,
      this.#lanes[input.lane]?.generation ?? 0,
      input.lane,
      input.startedAt,
    );
    if (!input.counted) {
      // It had left flight (absorbed); the replay is in flight again until it is absorbed anew.
      this.#absorbed--;
      this.#inFlight++;
    }
    if (this.#tracing) fresh.span = startProcessSpan(this.name, input.env.subject, input.id, input.env.headers);
    this.#inputs.add(fresh);
    return fresh;
  }

  // ---- handler mode ----

  #run(input: Input, lane: Lane): void {
    lane.active++;
    input.delivered = true;
    const ctx = new MessageCtx(this, lane.ctx, input);
    let result: unknown;
    try {
      result = (this.#handle as HandlerActor<unknown, unknown>['handle'])(input.env, ctx);
    } catch (error) {
      // `throw undefined` is still a failure: an undefined error would read as success.
      this.#handled(input, lane, error ?? new Error('handler threw undefined'), undefined);
      return;
    }
    if (result instanceof Promise) {
      result.then(
        (value: unknown) => this.#handled(input, lane, undefined, value),
        (error: unknown) => this.#handled(input, lane, error ?? new Error('handler rejected'), undefined),
      );
    } else this.#handled(input, lane, undefined, result);
  }

  #handled(input: Input, lane: Lane, error: unknown, result: unknown): void {
    lane.active--;
    if (error === undefined && result !== undefined && this.#actor.output !== undefined) {
      const values = Array.isArray(result) ? result : [result];
      for (const value of values) this.publishFor(input, this.#actor.output, value, undefined);
    } else if (error === undefined && result !== undefined && this.#actor.output === undefined) {
      error = new OptionsError(
        `actor '${this.name}'.output`,
        'a handler that returns a value needs an output subject to publish it to',
        result,
      );
    }
    if (error !== undefined && this.#partitionBy !== undefined) lane.paused = true;
    // A handler that returned is done with its message: acknowledged even with no output (a sink).
    // Only a pipeline's filter settles an input as dropped.
    if (error === undefined) input.used = true;
    input.release(error);
    this.#drainLane(lane);
  }

  #drainLane(lane: Lane): void {
    while (!lane.paused && lane.active < this.#laneConcurrency && lane.backlog.length > 0) {
      this.#run(lane.backlog.shift() as Input, lane);
    }
  }

  /** @internal Publishes on behalf of an input: the input settles only once this is accepted. */
  publishFor(
    input: Input,
    subject: SubjectRef<unknown>,
    data: unknown,
    options: PublishOptions | undefined,
  ): Promise<void> {
    const name = typeof subject === 'string' ? subject : subject.name;
    const headers = input.span === undefined ? options?.headers : injectTrace(input.span, options?.headers ?? {});
    const env = createEnvelope(
      name,
      data,
      {
        key: input.env.key,
        eventTime: input.env.eventTime,
        ...options,
        headers: headers ?? {},
        lineage: input.outward,
      },
      this.#deps.clock.now(),
    );
    input.used = true;
    retainPublishing(input);
    this.counters.published++;
    const accepted = this.#client.forward(env);
    if (accepted === ACCEPTED) {
      releasePublishing(input);
      return ACCEPTED;
    }
    return accepted.then(
      () => releasePublishing(input),
      (error: unknown) => {
        releasePublishing(input, error);
        throw error;
      },
    );
  }

  // ---- failure ----

  #failed(input: Input, error: unknown): void {
    const retryable = !(error instanceof SluiceError) || error.retryable || error instanceof MessageError;
    const attempt = input.env.attempt;
    const lane = this.#lanes[input.lane] as Lane;
    if (retryable && attempt < this.#retry.maxAttempts && this.#state !== 'stopped') {
      this.counters.retried++;
      this.#deps.telemetry.counters.retried++;
      const next = new Input(
        { ...input.env, attempt: attempt + 1, lineage: input.upstream },
        this,
        lane.generation,
        input.lane,
        this.#deps.clock.now(),
      );
      this.#inFlight++;
      this.#inputs.add(next);
      const delay = backoffDelay(attempt, this.#retry.backoff, this.#deps.random);
      this.#later(delay, () => {
        if (this.#tracing) next.span = startProcessSpan(this.name, next.env.subject, next.id, next.env.headers);
        next.generation = lane.generation;
        if (this.#pipeline === undefined) {
          // An ordered lane waited for this retry; it goes first.
          lane.paused = false;
          if (lane.active < this.#laneConcurrency) this.#run(next, lane);
          else lane.backlog.unshift(next);
          this.#drainLane(lane);
        } else this.#dispatch(next, lane);
      });
      return;
    }
    if (this.#pipeline === undefined && lane.paused) {
      lane.paused = false;
      queueMicrotask(() => this.#drainLane(lane));
    }
    this.#deadLetter(input.env, error, attempt, input.upstream);
  }

  /**
   * Moves a message to the dead-letter subject with the reason in headers. The message's source
   * reference passes to the dead letter, so the source is acknowledged once the dead letter is
   * accepted: it is kept, not lost.
   */
  #deadLetter(env: Envelope, error: unknown, attempts: number, upstream: Envelope['lineage']): void {
    this.counters.deadLettered++;
    this.#deps.telemetry.counters.deadLettered++;
    const code = error instanceof SluiceError ? error.code : 'SLUICE_ERR_HANDLER';
    const headers: Record<string, string> = {
      ...env.headers,
      [DEAD_LETTER_HEADERS.error]: messageOf(error),
      [DEAD_LETTER_HEADERS.code]: code,
      [DEAD_LETTER_HEADERS.actor]: this.name,
      [DEAD_LETTER_HEADERS.attempts]: String(attempts),
      [DEAD_LETTER_HEADERS.subject]: env.subject,
      [DEAD_LETTER_HEADERS.messageId]: env.id,
      [DEAD_LETTER_HEADERS.time]: new Date(this.#deps.clock.now()).toISOString(),
    };
    const dlq = this.#actor.deadLetter;
    if (!this.#deps.bus.hasSubscribers(dlq)) {
      this.#deps.log.warn(
        `actor '${this.name}' dead-lettered message '${env.id}' from '${env.subject}' to '${dlq}', which has no subscriber: ${messageOf(error)}`,
      );
    }
    const letter = createEnvelope(
      dlq,
      env.data,
      { key: env.key, eventTime: env.eventTime, headers, lineage: upstream, attempt: attempts },
      this.#deps.clock.now(),
    );
    this.#pendingDeadLetters++;
    const done = () => {
      this.#pendingDeadLetters--;
      upstream?.releaseAbsorbed();
      this.#checkIdle();
    };
    // Dead letters bypass the actor's publish permissions: the runtime, not the actor, sends them.
    const accepted = this.#deps.bus.route(letter, true);
    if (accepted === ACCEPTED) done();
    else
      accepted.then(done, (e: unknown) => {
        this.#deps.log.error(`actor '${this.name}' could not dead-letter message '${env.id}': ${messageOf(e)}`);
        done();
      });
  }

  // ---- lifecycle ----

  /**
   * @internal Ends every pipeline's input so operators flush what they hold (end of stream).
   * Returns how many pipelines it ended: a pipeline reopened by input that came after the last
   * call is ended by the next one.
   */
  completeInputs(): number {
    if (this.#state === 'stopped') return 0;
    this.#completing = true;
    let ended = 0;
    for (const lane of this.#lanes) {
      if (lane.input === undefined || lane.completed) continue;
      lane.completed = true;
      ended++;
      lane.input.complete();
    }
    return ended;
  }

  /** @internal What is left: for the shutdown report. */
  left(): { depth: number; inFlight: number; absorbed: number } {
    return { depth: this.#mailbox.depth, inFlight: this.#inFlight, absorbed: this.#absorbed };
  }

  /** @internal Stops taking input; with a reason, dead-letters what it still holds. */
  close(): void {
    this.#closeRoutes();
    this.#mailbox.close(new ClosedError(this.name, 'the runtime is shutting down'));
    for (const t of this.#timers) t.cancel();
    this.#timers.clear();
    for (const lane of this.#lanes) lane.subscription?.unsubscribe();
    for (const retired of this.#retired.splice(0)) retired.unsubscribe();
    this.#state = 'stopped';
    this.#unregisterGauge();
    this.#checkIdle(true);
  }

  #halt(reason: SluiceError): void {
    if (this.#state === 'stopped') return;
    this.#state = 'stopping';
    this.#closeRoutes();
    this.#mailbox.close(reason);
    for (const t of this.#timers) t.cancel();
    this.#timers.clear();
    for (const lane of this.#lanes) {
      lane.subscription?.unsubscribe();
      lane.subscription = undefined;
      lane.input = undefined;
      lane.backlog = [];
    }
    for (const retired of this.#retired.splice(0)) retired.unsubscribe();
    // Nothing is dropped silently: what was queued or held goes to the dead-letter subject.
    for (let env = this.#mailbox.take(); env !== undefined; env = this.#mailbox.take()) {
      this.#deadLetter(env, reason, env.attempt, env.lineage);
    }
    for (const input of [...this.#inputs]) {
      // Its outputs were emitted and accepted (or are being published): it was handled, and
      // settles when downstream settles them. Dead-lettering it too would deliver it twice.
      if (!input.heldByPipeline && input.delivered) continue;
      input.abandoned = true;
      this.#inputs.delete(input);
      if (input.counted) this.#inFlight--;
      else this.#absorbed--;
      this.#deadLetter(input.env, reason, input.env.attempt, input.upstream);
    }
    this.#state = 'stopped';
    this.#unregisterGauge();
    this.#checkIdle(true);
  }

  #closeRoutes(): void {
    for (const unroute of this.#unroutes) unroute();
    this.#unroutes.length = 0;
  }

  #later(delayMs: number, run: () => void): void {
    const timer = this.#deps.clock.setTimeout(() => {
      this.#timers.delete(timer);
      run();
    }, delayMs);
    this.#timers.add(timer);
  }

  #isIdle(): boolean {
    return (
      this.#mailbox.depth === 0 && this.#inFlight === 0 && this.#pendingDeadLetters === 0 && this.#timers.size === 0
    );
  }

  #checkIdle(force = false): void {
    if (this.#idleWaiters.length === 0 || (!force && !this.#isIdle())) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  #context(lane: number): ActorContext {
    const client = this.#client;
    const deps = this.#deps;
    return Object.freeze({
      name: this.name,
      lane,
      lanes: this.#actor.lanes,
      clock: deps.clock,
      scheduler: deps.clock.scheduler,
      bus: client,
      log: deps.log,
      publish: <T>(subject: SubjectRef<T>, data: T, options?: PublishOptions) => client.publish(subject, data, options),
      request: <Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions) =>
        client.request<Req, Res>(subject, data, options),
    });
  }
}

class MessageCtx implements MessageContext {
  readonly #cell: ActorCell;
  readonly #base: ActorContext;
  readonly #input: Input;
  constructor(cell: ActorCell, base: ActorContext, input: Input) {
    this.#cell = cell;
    this.#base = base;
    this.#input = input;
  }
  get name(): string {
    return this.#base.name;
  }
  get lane(): number {
    return this.#base.lane;
  }
  get lanes(): number {
    return this.#base.lanes;
  }
  get clock(): Clock {
    return this.#base.clock;
  }
  get scheduler() {
    return this.#base.scheduler;
  }
  get bus(): BusClient {
    return this.#base.bus;
  }
  get log(): Logger {
    return this.#base.log;
  }
  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void> {
    return this.#cell.publishFor(this.#input, subject as SubjectRef<unknown>, data, options);
  }
  request<Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions): Promise<Envelope<Res>> {
    const headers =
      this.#input.span === undefined ? options?.headers : injectTrace(this.#input.span, options?.headers ?? {});
    return this.#base.bus.request<Req, Res>(subject, data, { ...options, headers: headers ?? {} });
  }
  respond<T>(data: T, options?: PublishOptions): Promise<void> {
    const env = this.#input.env;
    if (env.replyTo === undefined) {
      return Promise.reject(
        new OptionsError('respond', `message '${env.id}' on '${env.subject}' has no replyTo subject`, env.replyTo),
      );
    }
    return this.#cell.publishFor(this.#input, env.replyTo, data, options);
  }
}

/** FNV-1a: a stable, fast spread of keys over lanes. */
function laneOf(key: string, lanes: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % lanes;
}
