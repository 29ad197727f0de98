import type { SchedulerLike } from 'rxjs';
import { type BusClient, type RequestOptions, replyToOf, type SubjectRef } from '../bus/bus.ts';
import type { Clock } from '../clock.ts';
import type { Envelope, PublishOptions } from '../envelope.ts';
import type { KeyedState } from '../state/keyedState.ts';
import { injectTrace } from '../telemetry.ts';
import type { ActorContext, Logger, MessageContext } from './actor.ts';
import type { Input } from './input.ts';

/** @internal The context of one lane: shared by every message the lane handles. */
export function laneContext(
  name: string,
  lane: number,
  lanes: number,
  client: BusClient,
  clock: Clock,
  log: Logger,
  state: KeyedState,
): ActorContext {
  return Object.freeze({
    name,
    state,
    lane,
    lanes,
    clock,
    scheduler: clock.scheduler,
    bus: client,
    log,
    publish: <T>(subject: SubjectRef<T>, data: T, options?: PublishOptions) => client.publish(subject, data, options),
    request: <Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions) =>
      client.request<Req, Res>(subject, data, options),
  });
}

/** @internal Publishes on behalf of an input, which settles only once the publish is accepted. */
export interface InputPublisher {
  publishFor(
    input: Input,
    subject: SubjectRef<unknown>,
    data: unknown,
    options: PublishOptions | undefined,
  ): Promise<void>;
}

/**
 * @internal The context of one message in a `handle` actor: the lane's context, with publishes
 * tied to the message and the message's trace passed on.
 */
export class MessageCtx implements MessageContext {
  readonly #publisher: InputPublisher;
  readonly #base: ActorContext;
  readonly #input: Input;
  readonly #state: KeyedState | undefined;
  constructor(publisher: InputPublisher, base: ActorContext, input: Input, state?: KeyedState) {
    this.#publisher = publisher;
    this.#base = base;
    this.#input = input;
    this.#state = state;
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
  get scheduler(): SchedulerLike {
    return this.#base.scheduler;
  }
  get bus(): BusClient {
    return this.#base.bus;
  }
  get log(): Logger {
    return this.#base.log;
  }
  get state(): KeyedState {
    return this.#state ?? this.#base.state;
  }
  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void> {
    return this.#publisher.publishFor(this.#input, subject as SubjectRef<unknown>, data, options);
  }
  request<Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions): Promise<Envelope<Res>> {
    const headers =
      this.#input.span === undefined ? options?.headers : injectTrace(this.#input.span, options?.headers ?? {});
    return this.#base.bus.request<Req, Res>(subject, data, { ...options, headers: headers ?? {} });
  }
  respond<T>(data: T, options?: PublishOptions): Promise<void> {
    let replyTo: string;
    try {
      replyTo = replyToOf(this.#input.env, 'respond');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#publisher.publishFor(this.#input, replyTo, data, options);
  }
}
