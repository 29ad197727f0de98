import { ACCEPTED, type Bus, type BusClient } from '../bus/bus.ts';
import { DrainLoop, spend } from '../bus/drainLoop.ts';
import { Mailbox } from '../bus/mailbox.ts';
import { PermissionChecker } from '../bus/permissions.ts';
import { subjectMatches } from '../bus/subjects.ts';
import { validate } from '../bus/typedSubject.ts';
import type { Clock, Timer } from '../clock.ts';
import type { Envelope } from '../envelope.ts';
import {
  ClosedError,
  messageOf,
  OptionsError,
  RestartLimitError,
  SettlementError,
  SluiceError,
  StateError,
  StreamError,
} from '../errors.ts';
import {
  type Lineage,
  releaseDownstream,
  releasePublishing,
  retainPublishing,
  type Tracker,
  type TrackerOwner,
} from '../lineage.ts';
import { Checkpoint, type CheckpointRecord, type CheckpointStats, checkStaged } from '../state/checkpoint.ts';
import { encodeRecord } from '../store/record.ts';
import type { Store } from '../store/types.ts';
import type { ConsumerImpl } from '../streams/consumer.ts';
import type { StreamImpl } from '../streams/stream.ts';
import type { DurableRef } from '../streams/types.ts';
import { type Counters, endSpan, startProcessSpan, type Telemetry, tracingEnabled } from '../telemetry.ts';
import type { Actor, Logger } from './actor.ts';
import { DeadLetters } from './deadLetters.ts';
import { Input, laneOf } from './input.ts';
import { createLanes, type Lane, type LaneHost } from './lane.ts';
import { OpenInputs } from './openInputs.ts';
import type { WindowView } from './operatorProbes.ts';
import type { PipelineLane } from './pipelineLane.ts';
import {
  backoffDelay,
  type ResolvedRestart,
  type ResolvedRetry,
  RestartWindow,
  resolveRestart,
  resolveRetry,
} from './supervisor.ts';

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
  /**
   * Inputs waiting behind a failed input of their key until it was retried or dead-lettered
   * (`partitionBy` handlers). Not in `inFlight`: they count against a bound of their own, also
   * `maxInFlight`, so a poison key does not take the slots of the other keys.
   */
  readonly parked: number;
  /** Pipeline restarts within the current restart window. */
  readonly restarts: number;
  /** Its checkpoints, when it has a `checkpoint` (docs/checkpoints.md). */
  readonly checkpoint?: CheckpointInfo | undefined;
  readonly counters: Readonly<Counters>;
  /** Resolves when it has nothing queued and nothing in flight. */
  idle(): Promise<void>;
  /**
   * Stops taking input now; what is queued, or still held by its pipeline or handler, is
   * dead-lettered as stopped. Inputs whose outputs were already emitted settle downstream.
   */
  stop(): Promise<void>;
}

/** What an actor's checkpoints cost and hold. */
export interface CheckpointInfo extends CheckpointStats {
  /** Inputs settled and waiting for the next checkpoint to be acknowledged upstream. */
  readonly held: number;
  /** `ctx.state` writes waiting for the next checkpoint. */
  readonly pendingWrites: number;
}

/** @internal What a cell needs from its runtime. */
export interface CellDeps {
  readonly bus: Bus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly log: Logger;
  readonly random: () => number;
  readonly escalate: (actor: string, error: RestartLimitError) => void;
  /** Starts a durable subscription (a stream consumer pushing to its delivery subject); returns its end. */
  readonly durable?: (ref: DurableRef) => () => void;
  /** What checkpoints use: the store, the consumers of durable subscriptions, the streams. */
  readonly checkpoints?: {
    readonly store: Store;
    consumerOf(ref: DurableRef): ConsumerImpl;
    stream(name: string): StreamImpl | undefined;
  };
  /** Takes each dead letter the actor sends, as routed (the runtime's recent dead letters). */
  readonly keepDeadLetter?: (letter: Envelope) => void;
}

/**
 * @internal The running form of an actor, one per spawned actor: it takes messages from its
 * mailbox while fewer than `maxInFlight` inputs are in flight, hands each to the lane of its key,
 * settles inputs as their references come back, retries or dead-letters failed ones, restarts
 * failed pipelines, and stops. Its lanes run the pipeline or handler (see lane.ts).
 */
export class ActorCell implements TrackerOwner, LaneHost, ActorRef {
  readonly name: string;
  readonly counters: Counters;
  /** The runtime's counters, which add up every actor's. */
  readonly #totals: Counters;
  readonly #actor: Actor;
  readonly #deps: CellDeps;
  readonly #client: BusClient;
  readonly #mailbox: Mailbox;
  readonly #deadLetters: DeadLetters;
  readonly #unroutes: (() => void)[] = [];
  readonly #lanes: readonly Lane[];
  readonly #inputs = new OpenInputs();
  readonly #retry: ResolvedRetry;
  readonly #restart: ResolvedRestart;
  readonly #restartWindow: RestartWindow;
  readonly #timers = new Set<Timer>();
  readonly #partitionBy: ((env: Envelope) => string) | undefined;
  readonly #maxInFlight: number;
  /** Whether a metrics SDK collects processing times (see {@link Telemetry.timing}). */
  readonly #timing: boolean;
  readonly #tracing: boolean;
  readonly #hasSchemas: boolean;
  /** Pipeline lanes: inputs may be handed over without a record (see PipelineLane.deliverLazy). */
  readonly #lazyLanes: boolean;
  /**
   * The lane of an actor with nothing to do to an input before its pipeline gets it (no codec,
   * schema, partitionBy, tracing or processing-time histogram, one pipeline lane): an input goes
   * there without the tests of {@link #admit}. Undefined for any other actor.
   */
  readonly #directLane: PipelineLane | undefined;
  /** Inputs handed over with a settlement record, or given one later (see {@link records}). */
  #records = 0;
  readonly #unregisterGauge: () => void;
  #state: ActorState = 'running';
  /** Paused by an operator (the admin API): nothing is taken from the mailbox until resumed. */
  #paused = false;
  readonly #intake = new DrainLoop(() => this.#takeWhileFree());
  #idleWaiters: (() => void)[] = [];
  /** Inputs taken whose async schema validation has not finished yet. */
  readonly #validating = new Set<{ readonly env: Envelope }>();
  #completing = false;
  readonly #checkpoint: Checkpoint | undefined;
  readonly #permissions: PermissionChecker;
  /** The stream that captures an output subject, or null: looked up once per subject. */
  readonly #captures = new Map<string, StreamImpl | null>();

  constructor(actor: Actor, deps: CellDeps) {
    const def = actor.definition;
    this.#actor = actor;
    this.#deps = deps;
    this.name = actor.name;
    this.counters = deps.telemetry.countersOf(actor.name);
    this.#totals = deps.telemetry.counters;
    this.#client = deps.bus.internalClient(actor.name, def.permissions);
    this.#retry = resolveRetry(def.retry, `actor '${actor.name}'.retry`);
    this.#restart = resolveRestart(def.restart, `actor '${actor.name}'.restart`);
    this.#restartWindow = new RestartWindow(this.#restart);
    this.#partitionBy = def.partitionBy as ((env: Envelope) => string) | undefined;
    this.#hasSchemas = actor.subjects.some((s) => s.schema !== undefined);
    this.#lazyLanes = def.pipeline !== undefined;
    this.#maxInFlight = actor.maxInFlight;
    this.#timing = deps.telemetry.timing;
    this.#tracing = tracingEnabled();
    this.#deadLetters = new DeadLetters(actor.name, actor.deadLetter, deps, () => this.#checkIdle());

    this.#mailbox = new Mailbox(actor.name, def.mailbox);
    this.#mailbox.onDrop = (env, reason) => {
      this.counters.dropped++;
      deps.bus.dropped(env, reason);
    };
    this.#mailbox.onReadable = () => this.#pump();

    // Refused before anything starts: a denied actor leaves no pipeline or gauge behind.
    const permissions = new PermissionChecker(def.permissions);
    this.#permissions = permissions;
    for (const s of actor.subjects) {
      // A durable subscription's queue group is the runtime's own (its consumer's deliver subject).
      const denied = permissions.subscribeDenied(s.name, s.durable === undefined ? def.queue : undefined);
      if (denied !== undefined) throw deps.bus.denied('subscribe', s.name, actor.name, denied);
    }
    if (actor.checkpoint !== undefined) {
      const cp = deps.checkpoints;
      if (cp === undefined) {
        throw new StateError(actor.name, 'a checkpoint needs a runtime with a store: createRuntime({ store })');
      }
      const consumers = new Set<ConsumerImpl>();
      for (const s of actor.subjects) if (s.durable !== undefined) consumers.add(cp.consumerOf(s.durable));
      this.#checkpoint = new Checkpoint(actor.name, actor.checkpoint, { ...deps, store: cp.store }, [...consumers], {
        aligned: () => this.#aligned(),
        resume: () => this.#pump(),
      });
    }
    // Durable subscriptions start before anything else, so an unknown stream refuses the spawn;
    // their consumers push only once the routes below exist.
    for (const s of actor.subjects) {
      if (s.durable === undefined) continue;
      if (deps.durable === undefined) {
        throw new StreamError(s.durable.stream, `actor '${actor.name}' subscribes durably, but has no runtime streams`);
      }
      this.#unroutes.push(deps.durable(s.durable));
    }
    // Registered before a pipeline is built: a builder that throws may halt the actor at once.
    this.#unregisterGauge = deps.telemetry.registerGauge(this);

    this.#lanes = createLanes(this, actor, this.#client, deps, this.#checkpoint);
    this.#directLane =
      def.codec === undefined &&
      !this.#hasSchemas &&
      this.#partitionBy === undefined &&
      this.#lazyLanes &&
      !this.#tracing &&
      !this.#timing &&
      this.#lanes.length === 1
        ? (this.#lanes[0] as PipelineLane)
        : undefined;
    for (const lane of this.#lanes) if (this.#state !== 'stopped') lane.start();
    // Halted while starting (a builder threw and no restart is allowed): it takes no input.
    if (this.#state === 'stopped') return;

    // Subscribe last: a message may arrive (and be handled) as soon as a route exists.
    for (const s of actor.subjects) {
      const ref = s.durable;
      this.#unroutes.push(
        deps.bus.addRoute(ref?.deliverSubject ?? s.name, {
          // Every subscriber of a durable consumer shares it: each message goes to one of them.
          queue: ref === undefined ? def.queue : (def.queue ?? ref.deliverSubject),
          strategy: def.queueStrategy ?? 'round-robin',
          mailbox: this.#mailbox,
          direct: undefined,
          handoff: this.#handoff,
          filter: permissions.deliveryFilter(s.name),
        }),
      );
    }
  }

  get state(): ActorState {
    return this.#state;
  }
  /** @internal Whether an operator paused it (see {@link pause}). */
  get paused(): boolean {
    return this.#paused;
  }
  /**
   * @internal Stops taking messages from the mailbox: what is in flight goes on, new input waits
   * there (a full mailbox then pushes back on publishers, as a slow actor does). For operators.
   */
  pause(): void {
    this.#paused = true;
  }
  /** @internal Takes input again after {@link pause}. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#pump();
  }
  /** @internal What the admin API shows of the actor's wiring and limits (read-only). */
  describe(): {
    inputs: readonly string[];
    output: string | undefined;
    deadLetter: string;
    capacity: number;
    maxInFlight: number;
    kind: 'pipeline' | 'handler';
  } {
    const def = this.#actor.definition;
    const output = (def as { output?: string | { name: string } }).output;
    return {
      inputs: this.#actor.subjects.map((s) => s.durable?.deliverSubject ?? s.name),
      output: output === undefined ? undefined : typeof output === 'string' ? output : output.name,
      deadLetter: this.#actor.deadLetter,
      capacity: this.#mailbox.capacity,
      maxInFlight: this.#maxInFlight,
      kind: def.pipeline !== undefined ? 'pipeline' : 'handler',
    };
  }
  /** @internal Its last committed checkpoints (empty without a checkpoint). */
  checkpointHistory(): readonly CheckpointRecord[] {
    return this.#checkpoint?.history ?? [];
  }

  /** @internal Its window operators now (watermark, open windows), read from the operators on demand. */
  windows(): WindowView[] {
    const out: WindowView[] = [];
    for (const lane of this.#lanes) {
      const probes = (lane as Partial<PipelineLane>).operators;
      if (probes !== undefined) for (const v of probes.views()) out.push(v);
    }
    return out;
  }

  /** @internal A key of its keyed state as the actor sees it (pending writes included); undefined without a checkpoint. */
  readState(key: string): unknown {
    return this.#checkpoint?.state.get(key);
  }
  get depth(): number {
    return this.#mailbox.depth;
  }
  get inFlight(): number {
    return this.#inputs.inFlight;
  }
  get absorbed(): number {
    return this.#inputs.absorbed;
  }
  get parked(): number {
    return this.#inputs.parked;
  }
  /**
   * @internal Settlement records made for inputs so far: an input settled by counting (a run that
   * held nothing) has none. For tests and benchmarks of what settlement costs.
   */
  get records(): number {
    return this.#records;
  }
  get restarts(): number {
    return this.#restartWindow.count(this.#deps.clock.now());
  }
  get checkpoint(): CheckpointInfo | undefined {
    const cp = this.#checkpoint;
    if (cp === undefined) return undefined;
    return { ...cp.stats, held: cp.held, pendingWrites: cp.state.size };
  }

  /** @internal The last checkpoint of a graceful stop, once its drain ended. */
  async finalCheckpoint(): Promise<void> {
    if (this.#state !== 'stopped') await this.#checkpoint?.final();
  }

  /**
   * Whether the state reflects exactly the inputs settled so far: none is being handled, retried,
   * published or waits on downstream. Inputs kept by operator state (windows) may stay: they are
   * not acknowledged, so a restart replays them into the operator.
   */
  #aligned(): boolean {
    const inputs = this.#inputs;
    if (inputs.inFlight !== 0 || inputs.parked !== 0 || this.#validating.size !== 0) return false;
    if (inputs.absorbed === 0) return true;
    for (const input of inputs) if (input.absorbed <= input.downstream) return false;
    return true;
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
    if (this.#inputs.leaveFlight(tracker as Input)) this.#pump();
    if (this.#checkpoint?.due) this.#checkpoint.poll();
  }

  settled(tracker: Tracker, error: unknown): void {
    const input = tracker as Input;
    if (!this.#inputs.settle(input)) return;
    if (error === undefined) {
      if (input.span !== undefined) endSpan(input.span, undefined);
      this.#succeeded(input.upstream, input.used, input.startedAt);
    } else {
      if (this.#timing) this.#deps.telemetry.recordProcessing(this.name, this.#deps.clock.now() - input.startedAt);
      if (input.span !== undefined) endSpan(input.span, error);
      this.#failed(input, error);
    }
    this.#afterSettle();
  }

  settledByCount(upstream: Lineage | undefined, used: boolean, startedAt: number): void {
    // Its slot was held from the hand-over (see #admit); no record was ever listed.
    this.#inputs.releaseSlot();
    this.#succeeded(upstream, used, startedAt);
    this.#afterSettle();
  }

  /** An input settled without error: acked when anything derived from it or held it, else dropped. */
  #succeeded(upstream: Lineage | undefined, used: boolean, startedAt: number): void {
    if (this.#timing) this.#deps.telemetry.recordProcessing(this.name, this.#deps.clock.now() - startedAt);
    if (used) {
      this.counters.acked++;
      this.#totals.acked++;
    } else {
      this.counters.dropped++;
      this.#totals.dropped++;
    }
    // With a checkpoint, the input is acknowledged once the checkpoint reflecting it commits.
    if (this.#checkpoint === undefined) releaseDownstream(upstream);
    else this.#checkpoint.settled(upstream);
  }

  #afterSettle(): void {
    // A slot is free: take what waits. (Nothing waiting is the common case; the idle check stays.)
    if (this.#mailbox.depth > 0) this.#pump();
    if (this.#checkpoint?.due) this.#checkpoint.poll();
    this.#checkIdle();
  }

  record(
    lane: PipelineLane,
    env: Envelope,
    upstream: Lineage | undefined,
    generation: number,
    startedAt: number,
  ): Input {
    this.#records++;
    const input = new Input(env, this, generation, lane.index, startedAt, { upstream });
    // It takes the slot held for it since the hand-over.
    this.#inputs.adopt(input);
    return input;
  }

  // ---- LaneHost ----

  get completing(): boolean {
    return this.#completing;
  }

  publish(env: Envelope): Promise<void> {
    if (this.#checkpoint !== undefined) {
      const stream = this.#captured(env.subject);
      if (stream !== null) return this.#stage(stream, env);
    }
    const lineage = env.lineage;
    retainPublishing(lineage);
    this.counters.published++;
    const accepted = this.#client.forward(env);
    if (accepted === ACCEPTED) {
      releasePublishing(lineage);
      return ACCEPTED;
    }
    return accepted.then(
      () => releasePublishing(lineage),
      (error: unknown) => {
        releasePublishing(lineage, error);
        throw error;
      },
    );
  }

  /** The stream that captures `subject`, if any (outputs to it go into the checkpoint's batch). */
  #captured(subject: string): StreamImpl | null {
    let stream = this.#captures.get(subject);
    if (stream === undefined) {
      const capture = this.#deps.bus.lookup(subject).plain.find((r) => r.capture !== undefined)?.capture;
      stream = (capture === undefined ? undefined : this.#deps.checkpoints?.stream(capture)) ?? null;
      // Subjects with a key in them could be many: the cache is a convenience, not a registry.
      if (this.#captures.size >= 1024) this.#captures.clear();
      this.#captures.set(subject, stream);
    }
    return stream;
  }

  /**
   * An output to a stream from an actor with a checkpoint: appended in the checkpoint's batch,
   * with the state and positions it comes from (exactly once inside the store). Its input settles
   * now, and is acknowledged when that checkpoint commits.
   */
  #stage(stream: StreamImpl, env: Envelope): Promise<void> {
    // Retained first: a refused output fails its input (retried, then dead-lettered with the
    // reason), as a refused publish does; an accepted one counts it as used (acked, not dropped).
    retainPublishing(env.lineage);
    let record: ReturnType<StreamImpl['record']>;
    try {
      const denied = this.#permissions.publishDenied(env.subject);
      if (denied !== undefined) throw this.#deps.bus.denied('publish', env.subject, this.name, denied);
      checkStaged(this.#deps.bus, env);
      record = stream.record(env);
      // Encoded now as the append of a publish would: one the store cannot hold fails its input
      // here, instead of the checkpoint's batch, which would end the actor's checkpoints.
      encodeRecord(record);
    } catch (error) {
      releasePublishing(env.lineage, error);
      return Promise.reject(error);
    }
    (this.#checkpoint as Checkpoint).stage(stream, record, env);
    this.counters.published++;
    releasePublishing(env.lineage);
    return ACCEPTED;
  }

  park(input: Input): void {
    this.#inputs.park(input);
  }

  unpark(input: Input): void {
    this.#inputs.unpark(input);
  }

  lateOutput(id: string): void {
    this.counters.settlementErrors++;
    this.#totals.settlementErrors++;
    this.#deps.log.warn(
      new SettlementError(
        id,
        `actor '${this.name}' emitted an output after the input settled; wrap async steps in mapAsync or hold()`,
      ).message,
    );
  }

  teardownFailed(lane: PipelineLane, error: unknown): void {
    this.counters.teardownErrors++;
    this.#totals.teardownErrors++;
    this.#deps.log.error(`actor '${this.name}' lane ${lane.index}: a pipeline teardown threw: ${messageOf(error)}`);
  }

  /** Lanes that failed since the pending restart was scheduled; they come back together. */
  #pendingRestart: Set<PipelineLane> | undefined;

  pipelineFailed(lane: PipelineLane, error: unknown, generation: number, completed = false): void {
    if (generation !== lane.generation || this.#state === 'stopped') return;
    // `throwError(() => undefined)` still fails the pipeline: an undefined error would read as success.
    error ??= new SluiceError('SLUICE_ERR_HANDLER', `actor '${this.name}' pipeline failed with undefined`, {
      retryable: true,
    });

    // A pipeline that completed (`take(1)`) blames no input: the one it was handling then settles
    // as the pipeline left it (acked when its output went out, dropped when there was none), and
    // the completion is a restart like any failure with no culprit.
    const handling = lane.current;
    // The culprit: the input the pipeline was handling when it threw, or the one its error names.
    const culprit = completed ? undefined : (handling ?? this.#inputs.named(error));
    // Everything else the dead pipeline held is replayed into the new one, in arrival order, as a
    // restarted Flink job replays from its last checkpoint: downstream may see an output twice.
    const spared = completed ? handling : culprit;
    // Replaced before the pipeline is torn down: its teardowns give back what it held, with an
    // error (mapAsync's queued inputs), which would fail those inputs instead of replaying them.
    // The dead pipeline never gives back what it kept of the culprit (window state, a queued
    // async step) either: a fresh tracker for the same delivery carries the failure instead.
    const replayed = this.#inputs.heldBy(lane.index, generation, spared).map((input) => this.#replace(input));
    const failed = culprit === undefined ? undefined : this.#replace(culprit);
    lane.discard();
    // Made while the dead pipeline's generation was the lane's: they belong to the next one.
    for (const input of replayed) input.generation = lane.generation;
    if (failed !== undefined) failed.generation = lane.generation;
    lane.requeue(replayed);

    if (failed !== undefined) {
      // A failure tied to one message is that message's failure: it is retried or dead-lettered,
      // and the pipeline comes back at once without counting against the restart limit.
      this.#deps.log.warn(`actor '${this.name}' failed on message '${failed.id}': ${messageOf(error)}`);
      failed.release(error);
      queueMicrotask(() => this.#restartLane(lane));
      return;
    }
    if (this.#pendingRestart !== undefined) {
      // Another lane failed while a restart is pending: one incident, one restart, one backoff.
      this.#pendingRestart.add(lane);
      return;
    }
    const delay = this.#restartWindow.next(this.#deps.clock.now(), this.#deps.random);
    if (delay === undefined) {
      const limit = new RestartLimitError(this.name, this.#restart.maxRestarts, this.#restart.windowMs, error);
      this.#deps.log.error(limit.message);
      if (this.#restart.onLimit === 'escalate') this.#deps.escalate(this.name, limit);
      this.#halt(limit, completed ? handling : undefined);
      return;
    }
    this.counters.restarts++;
    this.#totals.restarts++;
    this.#deps.log.warn(`actor '${this.name}' pipeline failed, restarting in ${delay} ms: ${messageOf(error)}`);
    this.#state = 'restarting';
    const lanes = new Set([lane]);
    this.#pendingRestart = lanes;
    this.#later(delay, () => {
      this.#pendingRestart = undefined;
      if (this.#state === 'restarting') this.#state = 'running';
      for (const failed of lanes) this.#restartLane(failed);
      this.#pump();
    });
  }

  // ---- intake ----

  /**
   * The mailbox skipped: an idle actor with nothing queued and a free slot takes the message in
   * the publisher's call, as it would take it from the mailbox at once. Anything else (a backlog,
   * a full actor, a drain running, a due checkpoint) queues, so order and the mailbox's bounds
   * hold as before. It spends from the burst budget as a take does: actors handing messages to
   * each other from their own microtasks would otherwise never give the event loop back.
   */
  readonly #handoff = (env: Envelope, exclusive: boolean): boolean => {
    if (
      this.#intake.running ||
      this.#state !== 'running' ||
      this.#paused ||
      this.#mailbox.depth !== 0 ||
      this.#inputs.inFlight >= this.#maxInFlight ||
      this.#inputs.parked >= this.#maxInFlight ||
      this.#checkpoint?.due ||
      !spend()
    ) {
      return false;
    }
    this.#intake.beginStep();
    try {
      this.#accept(env, exclusive);
    } finally {
      this.#intake.endStep();
    }
    this.#checkIdle();
    return true;
  };

  #pump(): void {
    this.#intake.run();
    this.#checkIdle();
  }

  #takeWhileFree(): void {
    // Each take spends from the burst budget: an actor whose outputs come back to it gives the
    // event loop back, and resumes on a macrotask, with the rest left in its mailbox.
    while (
      this.#state === 'running' &&
      !this.#paused &&
      this.#inputs.inFlight < this.#maxInFlight &&
      // Parked inputs have a bound of their own: memory stays within twice maxInFlight.
      this.#inputs.parked < this.#maxInFlight &&
      this.#mailbox.depth > 0 &&
      // A due checkpoint waits for what was taken to settle: nothing new until it is taken.
      (this.#checkpoint === undefined || !this.#checkpoint.due) &&
      this.#intake.spend()
    ) {
      this.#accept(this.#mailbox.take() as Envelope);
    }
  }

  /**
   * `exclusive`: the bus made `env` for this actor alone (see Route.handoff). An argument, not a
   * field: storing a fresh envelope on the long-lived cell would cost a write barrier per message.
   */
  #accept(env: Envelope, exclusive = false): void {
    this.counters.delivered++;
    this.#totals.delivered++;
    const direct = this.#directLane;
    if (direct?.ready) {
      // As #admit hands it over: the same envelope (owned when the bus made it for this actor), no record.
      this.#inputs.holdSlot();
      direct.deliverLazy(env, 0, exclusive);
      return;
    }
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
            this.#inputs.holdSlot();
            // A token of its own: the same envelope may arrive twice (two overlapping subscriptions).
            const token = { env };
            this.#validating.add(token);
            checked.then(
              (value) => {
                // Stopped while its schema ran: #halt dead-lettered it then, and nothing more happens.
                if (!this.#validating.delete(token)) return;
                this.#inputs.releaseSlot();
                this.#admit(env, value);
              },
              (error: unknown) => {
                if (!this.#validating.delete(token)) return;
                this.#inputs.releaseSlot();
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
    this.#admit(env, data, exclusive);
  }

  /** Input that can never succeed (undecodable, fails its schema, no key): straight to dead letters. */
  #rejectInput(env: Envelope, error: unknown): void {
    this.#deadLetter(env, error, env.attempt, env.lineage);
    this.#pump();
  }

  #admit(env: Envelope, data: unknown, exclusive = false): void {
    let key = env.key;
    if (this.#partitionBy !== undefined) {
      try {
        key = this.#partitionBy(data === env.data ? env : { ...env, data });
        // Untyped code may return a number: every such key would hash to one lane, and the
        // actor's outputs, which carry the key, would be refused later under a confusing name.
        if (typeof key !== 'string') {
          throw new OptionsError(`actor '${this.name}'.partitionBy`, 'must return a string key', key);
        }
      } catch (error) {
        this.#rejectInput(env, error);
        return;
      }
    }
    const same = data === env.data && key === env.key;
    const source = same ? env : { ...env, data, key };
    // A copy made here is the actor's own, as is an envelope the bus made for this actor alone.
    const owned = !same || exclusive;
    const laneIndex = this.#lanes.length === 1 ? 0 : laneOf(key ?? '', this.#lanes.length);
    const lane = this.#lanes[laneIndex] as Lane;
    const startedAt = this.#timing ? this.#deps.clock.now() : 0;
    if (this.#lazyLanes && !this.#tracing && (lane as PipelineLane).ready) {
      // Handed over with no record: most inputs settle by counting when their run ends.
      this.#inputs.holdSlot();
      (lane as PipelineLane).deliverLazy(source, startedAt, owned);
      return;
    }
    this.#records++;
    const input = new Input(source, this, lane.generation, laneIndex, startedAt);
    if (this.#tracing) input.span = startProcessSpan(this.name, env.subject, env.id, env.headers);
    this.#inputs.add(input);
    lane.dispatch(input);
  }

  // ---- failure ----

  #failed(input: Input, error: unknown): void {
    const retryable = !(error instanceof SluiceError) || error.retryable;
    const attempt = input.env.attempt;
    const lane = this.#lanes[input.lane] as Lane;
    // Stopping: the pipeline's teardown gave it back failed (mapAsync fails what it queued) after the
    // timers were cancelled. It is stopped as everything else the actor holds: dead-lettered with the
    // stop's reason, not retried (a timer that would outlive the stop and keep the process alive).
    const stopping = this.#state === 'stopping' ? this.#stopReason : undefined;
    if (retryable && attempt < this.#retry.maxAttempts && this.#state !== 'stopped' && stopping === undefined) {
      this.counters.retried++;
      this.#totals.retried++;
      this.#records++;
      const next = new Input(
        { ...input.env, attempt: attempt + 1, lineage: input.upstream },
        this,
        lane.generation,
        input.lane,
        this.#deps.clock.now(),
      );
      this.#inputs.add(next);
      const delay = backoffDelay(attempt, this.#retry.backoff, this.#deps.random);
      this.#later(delay, () => {
        if (this.#tracing) next.span = startProcessSpan(this.name, next.env.subject, next.id, next.env.headers);
        next.generation = lane.generation;
        lane.retry(next);
        // The inputs its key parked count in flight again: a parked bound that held intake is free.
        this.#pump();
      });
      return;
    }
    lane.gaveUp(input);
    this.#deadLetter(input.env, stopping ?? error, attempt, input.upstream);
  }

  /** Replaces an input whose processing was lost with a fresh tracker for the same delivery. */
  #replace(input: Input): Input {
    // The fresh tracker takes its place, in flight again even if it had been absorbed.
    this.#inputs.abandon(input);
    if (input.span !== undefined) endSpan(input.span, new Error('pipeline restarted'));
    this.#records++;
    const fresh = new Input(
      { ...input.env, lineage: input.upstream },
      this,
      this.#lanes[input.lane]?.generation ?? 0,
      input.lane,
      input.startedAt,
    );
    if (this.#tracing) fresh.span = startProcessSpan(this.name, input.env.subject, input.id, input.env.headers);
    this.#inputs.add(fresh);
    return fresh;
  }

  #restartLane(lane: PipelineLane): void {
    if (this.#state === 'stopped' || this.#state === 'stopping') return;
    lane.start();
  }

  #deadLetter(env: Envelope, error: unknown, attempts: number, upstream: Lineage | undefined): void {
    if (this.#deadLetters.send(env, error, attempts, upstream)) {
      this.counters.deadLettered++;
      this.#totals.deadLettered++;
    } else {
      // A failed dead letter from `$DEAD.`: logged and dropped, so the chain of dead letters ends.
      this.counters.dropped++;
      this.#totals.dropped++;
    }
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
    for (const lane of this.#lanes) if (lane.complete()) ended++;
    return ended;
  }

  /** @internal Dead letters it sent to a subject nobody subscribed to, for the shutdown report. */
  get deadLettersUnheard(): number {
    return this.#deadLetters.unheard;
  }

  /**
   * @internal What is left, for the shutdown report. `absorbed` counts the inputs its own operator
   * state keeps; an input whose outputs only wait on a consumer downstream is that consumer's to
   * report, not this actor's.
   */
  left(): { depth: number; inFlight: number; absorbed: number } {
    let absorbed = 0;
    if (this.#inputs.absorbed > 0) {
      for (const input of this.#inputs) if (!input.counted && input.absorbed > input.downstream) absorbed++;
    }
    return { depth: this.#mailbox.depth, inFlight: this.#inputs.inFlight + this.#inputs.parked, absorbed };
  }

  /** @internal Takes no more input: the first step of the end of a shutdown, taken by every actor at once. */
  unroute(): void {
    this.#closeRoutes();
  }

  /**
   * @internal Stops at the end of a shutdown. Stopped means stopped: what is still queued or held
   * is dead-lettered with `reason`, and a handler or async step still running has its result
   * dropped (see {@link ActorCell.stop}).
   */
  close(reason: SluiceError): void {
    this.#halt(reason);
  }

  /** Why the actor is stopping, while {@link #halt} runs. */
  #stopReason: SluiceError | undefined = undefined;

  /** `spared`: an input being handled by a pipeline that completed, which settles by itself. */
  #halt(reason: SluiceError, spared?: Input): void {
    if (this.#state === 'stopped') return;
    this.#state = 'stopping';
    this.#stopReason = reason;
    // What was not checkpointed is given up: its inputs are not acknowledged, a restart replays them.
    this.#checkpoint?.close();
    this.#closeRoutes();
    this.#mailbox.close(reason);
    this.#cancelTimers();
    for (const lane of this.#lanes) lane.stop();
    // Nothing is dropped silently: what was queued or held goes to the dead-letter subject.
    for (let env = this.#mailbox.take(); env !== undefined; env = this.#mailbox.take()) {
      this.#deadLetter(env, reason, env.attempt, env.lineage);
    }
    // Inputs whose async schema still runs: dead-lettered now, so stopped means stopped.
    for (const { env } of this.#validating) {
      this.#inputs.releaseSlot();
      this.#deadLetter(env, reason, env.attempt, env.lineage);
    }
    this.#validating.clear();
    for (const input of [...this.#inputs]) {
      // Its outputs were emitted and accepted (or are being published): it was handled, and
      // settles when downstream settles them. Dead-lettering it too would deliver it twice.
      if ((!input.heldByPipeline && input.delivered) || input === spared) continue;
      this.#inputs.abandon(input);
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

  #cancelTimers(): void {
    for (const t of this.#timers) t.cancel();
    this.#timers.clear();
  }

  #isIdle(): boolean {
    return (
      this.#mailbox.depth === 0 &&
      this.#inputs.inFlight === 0 &&
      this.#inputs.parked === 0 &&
      this.#deadLetters.pending === 0 &&
      this.#timers.size === 0
    );
  }

  #checkIdle(force = false): void {
    if (this.#idleWaiters.length === 0 || (!force && !this.#isIdle())) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }
}
