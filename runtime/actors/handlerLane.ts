import type { SubjectRef } from '../bus/bus.ts';
import { isThenable } from '../bus/typedSubject.ts';
import { createEnvelope, type PublishOptions } from '../envelope.ts';
import { ClosedError, OptionsError } from '../errors.ts';
import { IDEMPOTENCY_KEY_HEADER } from '../sinks/sink.ts';
import { type StateAttempt, StoreState } from '../state/keyedState.ts';
import { injectTrace } from '../telemetry.ts';
import type { ActorContext, HandlerActor } from './actor.ts';
import { MessageCtx } from './actorContext.ts';
import type { Input } from './input.ts';
import type { Lane, LaneHost } from './lane.ts';
import { keysOutputs, outputKey } from './outputKeys.ts';

type Handle = HandlerActor<unknown, unknown>['handle'];

/**
 * @internal A lane of a handler actor: runs the handler on one input at a time (or up to the
 * actor's `concurrency`) and queues the rest. In an ordered lane (`partitionBy`, concurrency 1) an
 * input that fails holds back only its own key: the later inputs of that key are parked, in
 * order, until it was retried or dead-lettered, while the other keys of the lane go on. So a
 * key's order survives retries, and one poison key does not stall its lane.
 */
export class HandlerLane implements Lane {
  readonly index: number;
  /** A handler is never rebuilt. */
  readonly generation = 0;
  readonly #host: LaneHost;
  readonly #ctx: ActorContext;
  readonly #handle: Handle;
  readonly #output: string | undefined;
  readonly #concurrency: number;
  readonly #ordered: boolean;
  /** The streams the actor reads durably: outputs of their inputs get keys from positions. */
  readonly #streams: ReadonlySet<string> | undefined;
  #backlog: Input[] = [];
  #active = 0;
  /**
   * Keys (of an ordered lane) whose failed input waits for its retry or dead letter, each with the
   * inputs of that key taken since, parked in arrival order. None of them is in the backlog.
   * Created at the first failure: a lane that never fails pays one check per dispatch.
   */
  #waiting: Map<string, Input[]> | undefined = undefined;

  constructor(
    host: LaneHost,
    index: number,
    ctx: ActorContext,
    handle: Handle,
    output: string | undefined,
    concurrency: number,
    ordered: boolean,
    streams?: ReadonlySet<string>,
  ) {
    this.#streams = streams;
    this.#host = host;
    this.index = index;
    this.#ctx = ctx;
    this.#handle = handle;
    this.#output = output;
    this.#concurrency = concurrency;
    this.#ordered = ordered;
  }

  start(): void {}

  dispatch(input: Input): void {
    if (this.#waiting !== undefined && this.#waiting.size > 0) {
      const parked = this.#waiting.get(keyOf(input));
      if (parked !== undefined) {
        this.#host.park(input);
        parked.push(input);
        return;
      }
    }
    if (this.#active >= this.#concurrency || this.#backlog.length > 0) {
      this.#backlog.push(input);
      return;
    }
    this.#run(input);
  }

  retry(input: Input): void {
    // The retried input goes first, then what its key parked meanwhile: both ahead of the backlog,
    // since they came before anything of their key in it (there is none) and other keys keep no
    // order with them. Should it fail again, #hold parks its key's inputs once more.
    this.#backlog = [input, ...this.#release(keyOf(input)), ...this.#backlog];
    this.#drain();
  }

  gaveUp(input: Input): void {
    const parked = this.#release(keyOf(input));
    if (parked.length === 0) return;
    this.#backlog = parked.concat(this.#backlog);
    // Called while the cell settles the failed input: the key goes on once that is done.
    queueMicrotask(() => this.#drain());
  }

  complete(): boolean {
    return false;
  }

  close(): void {}

  stop(): void {
    this.#backlog = [];
    this.#waiting = undefined;
  }

  /** Publishes on behalf of an input: the input settles only once this is accepted. */
  publishFor(
    input: Input,
    subject: SubjectRef<unknown>,
    data: unknown,
    options: PublishOptions | undefined,
  ): Promise<void> {
    if (input.abandoned) return Promise.reject(new ClosedError(this.#ctx.name, 'the actor was stopped'));
    const name = typeof subject === 'string' ? subject : subject.name;
    let given = options?.headers;
    if (keysOutputs(this.#streams, input.env.headers)) {
      const key = outputKey(this.#streams, this.#ctx.name, input.env.headers, input.outputs, given);
      if (key !== undefined) {
        input.outputs++;
        if (given?.[IDEMPOTENCY_KEY_HEADER] !== key) given = { ...given, [IDEMPOTENCY_KEY_HEADER]: key };
      }
    }
    const headers = input.span === undefined ? given : injectTrace(input.span, given ?? {});
    const env = createEnvelope(
      name,
      data,
      {
        key: input.env.key,
        eventTime: input.env.eventTime,
        ...options,
        headers: headers ?? {},
        lineage: input.lineage,
      },
      this.#ctx.clock.now(),
    );
    return this.#host.publish(env);
  }

  #run(input: Input): void {
    this.#active++;
    input.delivered = true;
    const base = this.#ctx.state;
    const attempt = base instanceof StoreState ? base.attempt() : undefined;
    const ctx = new MessageCtx(this, this.#ctx, input, attempt);
    let result: unknown;
    let thenable: boolean;
    try {
      result = this.#handle(input.env, ctx);
      // Any thenable, not only a native promise: a handler may return one from another library.
      // (Inside the try: reading `then` runs a getter, which may throw.)
      thenable = isThenable(result);
    } catch (error) {
      // `throw undefined` is still a failure: an undefined error would read as success.
      this.#handled(input, error ?? new Error('handler threw undefined'), undefined, attempt);
      return;
    }
    if (thenable) {
      Promise.resolve(result).then(
        (value: unknown) => this.#handled(input, undefined, value, attempt),
        (error: unknown) => this.#handled(input, error ?? new Error('handler rejected'), undefined, attempt),
      );
    } else this.#handled(input, undefined, result, attempt);
  }

  #handled(input: Input, error: unknown, result: unknown, attempt: StateAttempt | undefined): void {
    this.#active--;
    // Stopped while the handler ran: the input was dead-lettered then; its result must not go out too.
    if (input.abandoned) return;
    if (error === undefined && result !== undefined && this.#output !== undefined) {
      const values = Array.isArray(result) ? result : [result];
      // A refused publish fails the input through its publishing reference (retried, then
      // dead-lettered): nothing else awaits this promise, and its rejection must not go unhandled.
      for (const value of values) this.publishFor(input, this.#output, value, undefined).catch(ignore);
    } else if (error === undefined && result !== undefined && this.#output === undefined) {
      error = new OptionsError(
        `actor '${this.#ctx.name}'.output`,
        'a handler that returns a value needs an output subject to publish it to',
        result,
      );
    }
    // Before the release and before any other input runs: a retry must start from the state
    // without this attempt's writes, and a dead letter must leave none in the checkpoint.
    if (error !== undefined) attempt?.discard();
    // Before the release: settling it may dead-letter it at once, which gives the key back.
    if (error !== undefined && this.#ordered) this.#hold(keyOf(input));
    // A handler that returned is done with its message: acknowledged even with no output (a sink).
    // Only a pipeline's filter settles an input as dropped.
    if (error === undefined) input.used = true;
    input.release(error);
    this.#drain();
  }

  #drain(): void {
    while (this.#active < this.#concurrency && this.#backlog.length > 0) {
      this.#run(this.#backlog.shift() as Input);
    }
  }

  /** An input of `key` failed: the key's inputs wait, parked, until it was retried or dead-lettered. */
  #hold(key: string): void {
    const parked: Input[] = [];
    if (this.#backlog.length > 0) {
      const rest: Input[] = [];
      for (const queued of this.#backlog) {
        if (keyOf(queued) === key) {
          this.#host.park(queued);
          parked.push(queued);
        } else rest.push(queued);
      }
      this.#backlog = rest;
    }
    this.#waiting ??= new Map();
    this.#waiting.set(key, parked);
  }

  /** The inputs `key` parked, in order, in flight again; none when the key was not held. */
  #release(key: string): Input[] {
    const parked = this.#waiting?.get(key);
    if (parked === undefined) return [];
    this.#waiting?.delete(key);
    for (const input of parked) this.#host.unpark(input);
    return parked;
  }
}

/** The key an ordered lane keeps the order of: what `partitionBy` gave. */
function keyOf(input: Input): string {
  return input.env.key ?? '';
}

function ignore(): void {}
