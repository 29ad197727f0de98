/**
 * The bus's transport: where messages go between subscribers. The in-memory default is the bus
 * itself (`new Bus()`, untouched: no layer, no cost per message). A remote transport (NATS, in
 * `sluice/connectors/nats`) is plugged in with `createRuntime({ transport })`: the runtime then
 * makes a {@link TransportBus}, whose publishes leave through the transport and whose
 * subscriptions are the transport's, feeding the same local mailboxes. The runtime never imports a
 * broker's client: the transport brings it.
 */
import type { Logger } from '../actors/actor.ts';
import { Bus, type BusOptions, type ClientImpl, type RequestManyLimits, type Route } from '../bus/bus.ts';
import type { Match } from '../bus/subjects.ts';
import type { Clock } from '../clock.ts';
import type { Envelope } from '../envelope.ts';
import type { DurableRef, StreamConfig } from '../streams/types.ts';
import type { Telemetry } from '../telemetry.ts';

/** What a transport is given of the runtime when it is bound to its bus. */
export interface TransportHost {
  /** The runtime's bus: sources started on it publish through the transport. */
  readonly bus: TransportBus;
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly log: Logger;
  /**
   * Delivers a message that arrived for one local route (a mailbox, with its overflow policy), as
   * the in-memory bus delivers to one subscriber. `wait: false` returns whether the mailbox took it
   * now; `wait: true` resolves once it did (a `fail` mailbox rejects with `MailboxFullError`).
   */
  deliver(route: Route, env: Envelope, wait: boolean): Promise<void> | boolean;
}

/**
 * A remote transport for the bus. Methods are called by the {@link TransportBus}; none is on the
 * in-memory bus's path.
 */
export interface Transport {
  /** Names the transport in errors and logs. */
  readonly name: string;
  /** Binds the transport to the runtime's bus; called once, by the bus's constructor. */
  bind(host: TransportHost): void;
  /**
   * Sends a message. `wait: true`: resolves once the transport took it as far as it confirms (see
   * the transport's documentation); `wait: false` (`tryPublish`): returns false when it cannot take
   * it now, and throws a `StreamError` for a subject whose publish must be awaited.
   */
  publish(env: Envelope, wait: boolean): Promise<void> | boolean;
  /** Makes `route` receive the messages on its pattern (and queue group); returns its removal. */
  subscribe(pattern: string, route: Route): () => void;
  /** Sends a request and resolves with the first reply; `NoRespondersError`, `TimeoutError`. */
  request(env: Envelope, timeoutMs: number): Promise<Envelope>;
  /** Sends a request and collects replies until `limits` end it. */
  requestMany(env: Envelope, limits: RequestManyLimits): Promise<Envelope[]>;
  /**
   * Whether `subject` is the reply subject of a request this process received and may still
   * answer: a restricted client may publish its reply there, as NATS's allow_responses.
   */
  awaitsReply(subject: string): boolean;
  /** Starts an actor's durable subscription; its messages go to `ref.deliverSubject` on the bus. */
  durable(ref: DurableRef): () => void;
  /** Defines a durable subject (a stream) on the transport's broker. */
  defineStream(config: StreamConfig): void;
  /** A graceful shutdown begins: durable subscriptions take nothing new. */
  quiesce(): void;
  /** The runtime stopped its actors: durable subscriptions give back what is not settled. */
  stopDurables(): Promise<void>;
  /** Closes the transport (the application does, after `runtime.stop()`). */
  close(): Promise<void>;
}

/**
 * Subjects that stay in the process on any transport: a durable subscription's delivery subject
 * carries messages whose acknowledgement follows their settlement here, which cannot cross a wire.
 */
export const LOCAL_PREFIX = '$SLUICE.';

function isLocal(subject: string): boolean {
  return subject.startsWith(LOCAL_PREFIX);
}

/** What a publish to a remote subject reaches: the transport, as one route. */
const REMOTE: Route = Object.freeze({
  queue: undefined,
  strategy: 'round-robin' as const,
  mailbox: undefined,
  direct: undefined,
  filter: undefined,
});
const REMOTE_MATCH: Match<Route> = Object.freeze({ plain: Object.freeze([REMOTE]), groups: Object.freeze([]) });

/**
 * The bus of a runtime on a remote transport. Clients, permissions, subscriptions and actors are
 * the bus's own; what differs is where messages go: a publish leaves through the transport (no
 * local routing: the broker delivers back to this process's subscriptions as to any other's), and
 * a subscription is the transport's, delivering into its local mailbox. Subjects under
 * {@link LOCAL_PREFIX} stay in the process, on an inner in-memory bus.
 */
export class TransportBus extends Bus {
  readonly transport: Transport;
  /** @internal The in-process bus of local subjects (durable delivery). */
  readonly local: Bus;
  readonly #single = new WeakMap<Route, Match<Route>>();
  /** How each remote subscription put in by {@link insertRoute} is taken out. */
  readonly #removals = new Map<Route, () => void>();

  constructor(transport: Transport, options: BusOptions & { log?: Logger } = {}) {
    const { log, ...busOptions } = options;
    super(busOptions);
    this.transport = transport;
    this.local = new Bus({ ...busOptions, clock: this.clock, telemetry: this.telemetry });
    transport.bind({
      bus: this,
      clock: this.clock,
      telemetry: this.telemetry,
      log: log ?? console,
      deliver: (route, env, wait) => this.#deliverTo(route, env, wait),
    });
  }

  /** @internal Validates the subject as the bus does; a remote subject reaches the transport, whoever listens. */
  override lookup(subject: string): Match<Route> {
    if (isLocal(subject)) return this.local.lookup(subject);
    super.lookup(subject);
    return REMOTE_MATCH;
  }

  /** @internal */
  override route(env: Envelope, wait: true, match?: Match<Route>): Promise<void>;
  /** @internal */
  override route(env: Envelope, wait: false, match?: Match<Route>): boolean;
  /** @internal */
  override route(env: Envelope, wait: boolean, match?: Match<Route>): Promise<void> | boolean {
    if (isLocal(env.subject)) return wait ? this.local.route(env, true, match) : this.local.route(env, false, match);
    if (match !== undefined && match !== REMOTE_MATCH) {
      // A match of one route: a message that arrived from the transport, for that subscriber.
      return wait ? super.route(env, true, match) : super.route(env, false, match);
    }
    return this.transport.publish(env, wait);
  }

  /** @internal */
  override addRoute(pattern: string, route: Route): () => void {
    if (isLocal(pattern)) return this.local.addRoute(pattern, route);
    const remove = this.transport.subscribe(pattern, route);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      remove();
    };
  }

  /** @internal Subscriptions keep their route and take it out with {@link removeRoute}. */
  override insertRoute(pattern: string, route: Route): void {
    if (isLocal(pattern)) {
      this.local.insertRoute(pattern, route);
      return;
    }
    this.#removals.set(route, this.transport.subscribe(pattern, route));
  }

  /** @internal */
  override removeRoute(pattern: string, route: Route): void {
    if (isLocal(pattern)) {
      this.local.removeRoute(pattern, route);
      return;
    }
    const remove = this.#removals.get(route);
    if (remove === undefined) return;
    this.#removals.delete(route);
    remove();
  }

  /** Remote subscribers are not known here: a remote subject counts as heard. */
  override hasSubscribers(subject: string): boolean {
    return isLocal(subject) ? this.local.hasSubscribers(subject) : true;
  }

  /** @internal */
  override requestVia(_client: ClientImpl, env: Envelope, _subject: string, timeoutMs: number): Promise<Envelope> {
    return this.transport.request(env, timeoutMs);
  }

  /** @internal */
  override requestManyVia(
    _client: ClientImpl,
    env: Envelope,
    _subject: string,
    limits: RequestManyLimits,
  ): Promise<Envelope[]> {
    return this.transport.requestMany(env, limits);
  }

  /** @internal The broker's reply subjects of requests received here count as this bus's own inboxes. */
  override isInbox(subject: string): boolean {
    return super.isInbox(subject) || this.transport.awaitsReply(subject);
  }

  /** @internal */
  override awaitsReply(subject: string): boolean {
    return super.awaitsReply(subject) || this.transport.awaitsReply(subject);
  }

  override refuse(reason: string): void {
    super.refuse(reason);
    this.local.refuse(reason);
  }

  #deliverTo(route: Route, env: Envelope, wait: boolean): Promise<void> | boolean {
    let match = this.#single.get(route);
    if (match === undefined) {
      // Compiled once per route (a filtered route's plan is compiled again for other subjects).
      match = this.compiled(Object.freeze({ plain: Object.freeze([route]), groups: Object.freeze([]) }), env.subject);
      this.#single.set(route, match);
    }
    return wait ? super.route(env, true, match) : super.route(env, false, match);
  }
}
