import { Observable, type Subscription as RxSubscription, type Subscriber } from 'rxjs';
import { ACCEPTED } from '../bus/bus.ts';
import { checkHeaders, type Envelope, type Headers, nextId } from '../envelope.ts';
import { messageOf, OptionsError, SluiceError } from '../errors.ts';
import { endLazyRun, type Lineage, lazyHandle, lazyTracker } from '../lineage.ts';
import { IDEMPOTENCY_KEY_HEADER } from '../sinks/sink.ts';
import { type OperatorCheckpoint, withCheckpoint } from '../state/operatorState.ts';
import { injectTrace } from '../telemetry.ts';
import type { ActorContext, PipelineActor } from './actor.ts';
import { type Input, inputEnvelope, inputOf } from './input.ts';
import type { Lane, LaneHost } from './lane.ts';
import { OperatorProbes, withProbes } from './operatorProbes.ts';
import { keysOutputs, outputKey } from './outputKeys.ts';

type Pipeline = PipelineActor<unknown, unknown>['pipeline'];

/**
 * @internal A lane of a pipeline actor: the running pipeline, what waits for it while it restarts,
 * and the publishing of what it emits. Its cell decides what a failure means (see
 * {@link LaneHost.pipelineFailed}) and when the lane builds its pipeline again.
 */
export class PipelineLane implements Lane {
  readonly index: number;
  readonly #host: LaneHost;
  readonly #ctx: ActorContext;
  readonly #pipeline: Pipeline;
  /** The actor's `output`: where everything the pipeline emits goes, whatever its subject. */
  readonly #output: string | undefined;
  /** The streams the actor reads durably: outputs of their inputs get keys from positions. */
  readonly #streams: ReadonlySet<string> | undefined;
  #generation = 0;
  /** The running pipeline's input, or undefined while it is down. */
  #input: LaneInput | undefined = undefined;
  #subscription: RxSubscription | undefined = undefined;
  /** Completed pipelines replaced by {@link PipelineLane.#reopen} that had not finished yet. */
  readonly #retired: RxSubscription[] = [];
  /** Inputs waiting while the pipeline restarts, in arrival order. */
  #backlog: Input[] = [];
  /** Its input was completed by a shutdown (end of stream). */
  #completed = false;
  /** The input the pipeline is handling synchronously: the culprit if it throws now. */
  #current: Input | undefined = undefined;
  /**
   * The input handed over without a record (see {@link PipelineLane.deliverLazy}) while its run
   * goes on: its handle, the envelope the pipeline got, where it came from, when, in which
   * generation, and how many of its outputs took a key from its position.
   */
  #lazy: Lineage | undefined = undefined;
  #lazyEnv: Envelope | undefined = undefined;
  #lazyUpstream: Lineage | undefined = undefined;
  #lazyStartedAt = 0;
  #lazyGeneration = 0;
  #lazyOutputs = 0;

  /** The actor's checkpoint as its operators see it, if it has one. */
  readonly #checkpoint: OperatorCheckpoint | undefined;
  /** What its window operators report (watermarks, open windows), read on demand. */
  readonly operators: OperatorProbes;

  constructor(
    host: LaneHost,
    index: number,
    ctx: ActorContext,
    pipeline: Pipeline,
    output: string | undefined,
    streams?: ReadonlySet<string>,
    checkpoint?: OperatorCheckpoint,
  ) {
    this.#checkpoint = checkpoint;
    this.operators = new OperatorProbes(index);
    this.#host = host;
    this.#streams = streams;
    this.index = index;
    this.#ctx = ctx;
    this.#pipeline = pipeline;
    this.#output = output;
  }

  get generation(): number {
    return this.#generation;
  }

  /** The input being handled synchronously, if any: one handed over without a record gets one now. */
  get current(): Input | undefined {
    if (this.#lazy !== undefined) return this.#recordLazy();
    return this.#current;
  }

  /** Whether an input handed over now would run at once: the pipeline is up, nothing waits, none runs. */
  get ready(): boolean {
    return (
      this.#input !== undefined &&
      !this.#completed &&
      this.#backlog.length === 0 &&
      this.#current === undefined &&
      this.#lazy === undefined
    );
  }

  /**
   * Hands `source` to the running pipeline (the caller checked {@link ready}) with no record of
   * its own, as docs/settlement.md's settlement by counting describes. The pipeline gets the input
   * with a handle that counts references by itself. When the synchronous run ends with nothing
   * held, which is most inputs (filtered, mapped and accepted downstream at once, folded into
   * checkpointed state), the input is settled by those counts: nothing was recorded for it. An
   * input still held then (an async step, a window without a store, an output a mailbox keeps, a
   * failure) gets its record, created only now. `owned`: nobody else holds `source`, so it takes
   * the handle itself instead of a copy.
   */
  deliverLazy(source: Envelope, startedAt: number, owned = false): void {
    const handle = lazyHandle(source.id);
    const upstream = source.lineage;
    // An envelope nobody else can observe (see Route.handoff) takes the handle in place: no copy.
    let env: Envelope;
    if (owned) {
      (source as { lineage: Lineage | undefined }).lineage = handle;
      env = source;
    } else env = inputEnvelope(source, handle);
    const generation = this.#generation;
    this.#lazy = handle;
    this.#lazyEnv = env;
    this.#lazyUpstream = upstream;
    this.#lazyStartedAt = startedAt;
    this.#lazyGeneration = generation;
    this.#lazyOutputs = 0;
    try {
      (this.#input as LaneInput).next(env);
    } catch (error) {
      // As in #deliver: a throw that got past RxJS fails the pipeline, blaming this input.
      this.#host.pipelineFailed(this, error, generation);
    }
    const recorded = this.#lazy === undefined;
    this.#lazy = undefined;
    this.#lazyEnv = undefined;
    this.#lazyUpstream = undefined;
    if (recorded) this.#current = undefined;
    const outcome = endLazyRun(handle);
    if (outcome.kind === 'settled') {
      this.#host.settledByCount(upstream, outcome.used, startedAt);
      return;
    }
    const input =
      outcome.kind === 'recorded'
        ? outcome.tracker
        : this.#newRecord(env, upstream, generation, startedAt, this.#lazyOutputs);
    // The run's own reference: settles the input if only that was left, as #deliver's release.
    input.release();
  }

  /** Gives the input handed over without a record one, mid-run: the actor must name it. */
  #recordLazy(): Input {
    const input = this.#newRecord(
      this.#lazyEnv as Envelope,
      this.#lazyUpstream,
      this.#lazyGeneration,
      this.#lazyStartedAt,
      this.#lazyOutputs,
    );
    this.#lazy = undefined;
    this.#current = input;
    return input;
  }

  #newRecord(
    env: Envelope,
    upstream: Lineage | undefined,
    generation: number,
    startedAt: number,
    outputs: number,
  ): Input {
    const input = this.#host.record(this, env, upstream, generation, startedAt);
    input.delivered = true;
    input.outputs = outputs;
    return input;
  }

  /** Builds the pipeline, unless one is running, and hands it what waited in the backlog. */
  start(): void {
    if (this.#input !== undefined) return;
    const input = new LaneInput();
    this.#input = input;
    const generation = this.#generation;
    let output: Observable<Envelope>;
    try {
      output = withProbes(this.operators, () =>
        withCheckpoint(this.#checkpoint, () => this.#pipeline(input.observable, this.#ctx)),
      );
    } catch (error) {
      this.#input = undefined;
      this.#host.pipelineFailed(this, error, generation);
      return;
    }
    this.#subscription = withProbes(this.operators, () =>
      withCheckpoint(this.#checkpoint, () => this.#subscribe(output, generation)),
    );
    const backlog = this.#backlog;
    this.#backlog = [];
    for (const waiting of backlog) {
      if (this.#input !== input) {
        this.#backlog.push(waiting);
        continue;
      }
      this.#deliver(waiting);
    }
  }

  #subscribe(output: Observable<Envelope>, generation: number): RxSubscription {
    return output.subscribe({
      next: (out) => this.#emit(out),
      error: (error: unknown) => this.#host.pipelineFailed(this, error, generation),
      complete: () => {
        if (!this.#host.completing) {
          this.#host.pipelineFailed(
            this,
            new SluiceError(
              'SLUICE_ERR_HANDLER',
              `actor '${this.#ctx.name}' pipeline completed while its input was open`,
            ),
            generation,
            true,
          );
        }
      },
    });
  }

  dispatch(input: Input): void {
    if (this.#completed) {
      // End of stream was signalled, and input still came (an upstream actor's flush): a completed
      // input would ignore it, settling it as dropped. A fresh pipeline takes it instead, and the
      // shutdown completes that one in its next round.
      this.#reopen();
      input.generation = this.#generation;
    }
    if (this.#input === undefined || this.#backlog.length > 0) {
      this.#backlog.push(input);
      return;
    }
    this.#deliver(input);
  }

  retry(input: Input): void {
    this.dispatch(input);
  }

  gaveUp(): void {}

  complete(): boolean {
    if (this.#input === undefined || this.#completed) return false;
    this.#completed = true;
    // Completing runs the pipeline's teardowns (`finalize`), which may throw.
    const error = this.#input.complete();
    if (error !== undefined) this.#host.teardownFailed(this, error);
    return true;
  }

  stop(): void {
    // An input running without a record gets one, so the cell dead-letters it as it does the rest.
    if (this.#lazy !== undefined) this.#recordLazy();
    const subscription = this.#subscription;
    this.#subscription = undefined;
    this.#input = undefined;
    this.#backlog = [];
    this.#unsubscribe(subscription);
    for (const retired of this.#retired.splice(0)) this.#unsubscribe(retired);
  }

  /** Drops the failed pipeline; what it took from now on waits in the backlog for the next one. */
  discard(): void {
    this.#generation++;
    this.#input = undefined;
    // The next pipeline's input is open: a shutdown that ended this one must end that one too,
    // or what it is given back (the inputs this one held) would stay in it past the end of input.
    this.#completed = false;
    const subscription = this.#subscription;
    this.#subscription = undefined;
    this.#unsubscribe(subscription);
  }

  /**
   * Unsubscribes, running the pipeline's teardowns: one that throws (`finalize(() => { throw })`)
   * makes RxJS throw an `UnsubscriptionError`, which must neither escape into the bus nor be
   * rethrown by RxJS on a timer, where it would kill the process. It is counted and logged.
   */
  #unsubscribe(subscription: RxSubscription | undefined): void {
    if (subscription === undefined) return;
    try {
      subscription.unsubscribe();
    } catch (error) {
      this.#host.teardownFailed(this, error);
    }
  }

  /** Puts inputs to replay ahead of what already waits. */
  requeue(inputs: Input[]): void {
    this.#backlog = inputs.concat(this.#backlog);
  }

  #reopen(): void {
    this.#completed = false;
    // The completed pipeline may still be finishing async work: it keeps running, and its late
    // failures no longer restart the lane.
    if (this.#subscription !== undefined && !this.#subscription.closed) this.#retired.push(this.#subscription);
    this.#subscription = undefined;
    this.#input = undefined;
    this.#generation++;
    this.start();
  }

  #deliver(input: Input): void {
    const previous = this.#current;
    this.#current = input;
    input.delivered = true;
    const generation = this.#generation;
    try {
      (this.#input as LaneInput).next(input.env);
    } catch (error) {
      // RxJS routes an operator's throw to the error callback; what still gets here was thrown on
      // that path (a teardown of the failing pipeline): it fails the pipeline, blaming this input.
      this.#host.pipelineFailed(this, error, generation);
    } finally {
      this.#current = previous;
    }
    // The synchronous reference: if nothing used the input, it settles now as dropped (filtered).
    input.release();
  }

  #emit(out: Envelope): void {
    // Untyped code and casts get past the types: anything but an envelope would be published
    // without id or subject, or crash on the lineage read below.
    if (typeof out !== 'object' || out === null || typeof out.subject !== 'string' || typeof out.id !== 'string') {
      this.#notAnEnvelope(out);
      return;
    }
    const lineage = out.lineage;
    // Where the output comes from: the input running now without a record (its handle), or an
    // input with a record. Either gives its id, subject and headers, and counts keyed outputs.
    let source: Input | undefined;
    let sourceEnv: Envelope | undefined;
    if (lineage !== undefined && lineage === this.#lazy) sourceEnv = this.#lazyEnv;
    else {
      source = inputOf(lineage);
      if (source !== undefined) {
        sourceEnv = source.env;
        // Emitted after its input settled: an async step that did not hold it (see docs/settlement.md).
        if (source.done) this.#host.lateOutput(source.id);
      } else {
        const lazy = lazyTracker(lineage);
        if (lazy?.settled) this.#host.lateOutput(lazy.id);
      }
    }
    if (this.#output === undefined && sourceEnv !== undefined && out.subject === sourceEnv.subject) {
      // Published back to the subject it came from, the output would come round as input forever.
      const from = lineage as Lineage;
      from.retain();
      from.release(
        new OptionsError(
          `actor '${this.#ctx.name}'.output`,
          "an output kept its input's subject and would loop back into the actor; set 'output' or give the envelope its own subject",
          out.subject,
        ),
      );
      return;
    }
    const subject = this.#output ?? out.subject;
    let headers = out.headers;
    if (sourceEnv !== undefined && keysOutputs(this.#streams, sourceEnv.headers)) {
      const index = source === undefined ? this.#lazyOutputs : source.outputs;
      const key = outputKey(this.#streams, this.#ctx.name, sourceEnv.headers, index, headers);
      if (key !== undefined) {
        if (source === undefined) this.#lazyOutputs++;
        else source.outputs++;
        if (headers?.[IDEMPOTENCY_KEY_HEADER] !== key) headers = keyed(headers, key);
      }
    }
    const span = source?.span;
    const sourceId = sourceEnv?.id;
    let env = out;
    if (subject !== out.subject || out.id === sourceId || span !== undefined || headers !== out.headers) {
      // A literal, not a spread of what the pipeline emitted (any shape): the envelope's fields only.
      env = {
        id: out.id === sourceId ? nextId() : out.id,
        subject,
        data: out.data,
        key: out.key,
        eventTime: out.eventTime,
        headers: span === undefined ? headers : injectTrace(span, headers),
        // A new message starts at attempt 1, as `forward` would make it with a second copy.
        attempt: 1,
        replyTo: subject === out.subject ? out.replyTo : undefined,
        lineage: out.lineage,
      };
    }
    const accepted = this.#host.publish(env);
    if (accepted === ACCEPTED) return;
    accepted.catch((error: unknown) => {
      // With a lineage, the failure is the inputs' and they are retried or dead-lettered; without
      // one, nothing else would tell.
      if (lineage === undefined)
        this.#ctx.log.error(`actor '${this.#ctx.name}' could not publish to '${env.subject}': ${messageOf(error)}`);
    });
  }

  /**
   * Fails the input a non-envelope came from: the one its `lineage` names, else the one being
   * handled now. With neither (emitted later, from a timer or an async step without lineage),
   * no input is to blame and the pipeline fails as a whole.
   */
  #notAnEnvelope(value: unknown): void {
    const lineage = (
      typeof value === 'object' && value !== null ? (value as { lineage?: unknown }).lineage : undefined
    ) as Lineage | undefined;
    // An input that settled without a record is done: only the one running now can be blamed.
    const lazy = lazyTracker(lineage);
    const source = inputOf(lineage) ?? (lazy === undefined || !lazy.settled ? this.current : undefined);
    const error = new SluiceError(
      'SLUICE_ERR_HANDLER',
      `actor '${this.#ctx.name}' pipeline emitted ${preview(value)}, not an envelope: emit { ...env, data } to keep the input's id, subject and lineage`,
    );
    if (source !== undefined && !source.done && !source.abandoned) {
      // Not retryable: the same input would make the same pipeline emit the same thing.
      this.#ctx.log.warn(`${error.message} (message '${source.id}')`);
      source.retain();
      source.release(error);
      return;
    }
    this.#host.pipelineFailed(this, error, this.#generation);
  }
}

/**
 * `headers` with the idempotency key `key`, checked here as `forward` checks an envelope's headers,
 * so that it takes the output as it is instead of copying it once more to set checked ones. Headers
 * that fail the check are left as they are: `forward` refuses them with its own error.
 */
function keyed(headers: Headers | undefined, key: string): Headers {
  const merged = { ...headers, [IDEMPOTENCY_KEY_HEADER]: key };
  try {
    return checkHeaders(merged, 'forward.headers');
  } catch {
    return merged;
  }
}

/** What a pipeline emitted instead of an envelope, for the error: its type and a short preview. */
function preview(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'string') return `string '${value.length > 40 ? `${value.slice(0, 40)}...` : value}'`;
  if (typeof value === 'function') return 'a function';
  if (typeof value !== 'object') return `${typeof value} ${String(value)}`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  // Keys, not contents: they show what is missing, and the contents may be large or circular.
  const keys = Object.keys(value);
  return `an object with ${keys.length === 0 ? 'no keys' : `keys ${keys.slice(0, 6).join(', ')}${keys.length > 6 ? ', ...' : ''}`}`;
}

/**
 * The input of one pipeline, with an RxJS Subject's behaviour: every subscriber gets each input
 * (a pipeline may subscribe more than once, as `partition` does); one that subscribes after the
 * end completes at once; a subscriber added or removed while an input is handed out does not
 * change who gets that one. Written out because it carries every input: `Subject.next` in the
 * CommonJS build of RxJS 7, which Node loads, allocates a closure, an iterator and its results
 * for each value.
 */
class LaneInput {
  readonly observable: Observable<Envelope>;
  /** Replaced, never changed in place, so that `next` can walk the array it started with. */
  #subscribers: readonly Subscriber<Envelope>[] = [];
  #stopped = false;

  constructor() {
    this.observable = new Observable<Envelope>((subscriber) => {
      if (this.#stopped) {
        subscriber.complete();
        return;
      }
      this.#subscribers = [...this.#subscribers, subscriber];
      return () => {
        this.#subscribers = this.#subscribers.filter((s) => s !== subscriber);
      };
    });
  }

  next(env: Envelope): void {
    if (this.#stopped) return;
    const subscribers = this.#subscribers;
    for (let i = 0; i < subscribers.length; i++) (subscribers[i] as Subscriber<Envelope>).next(env);
  }

  /** Completes every subscriber, even when a teardown throws; returns the first such error. */
  complete(): unknown {
    if (this.#stopped) return undefined;
    this.#stopped = true;
    const subscribers = this.#subscribers;
    this.#subscribers = [];
    let failure: unknown;
    for (const subscriber of subscribers) {
      try {
        subscriber.complete();
      } catch (error) {
        failure ??= error;
      }
    }
    return failure;
  }
}
