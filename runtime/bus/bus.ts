import { type Clock, systemClock, type Timer } from '../clock.ts';
import { type Codec, encodeWith, msgpackCodec } from '../codec.ts';
import {
  checkFields,
  checkHeaders,
  checkLineage,
  checkPublishOptions,
  createEnvelope,
  DEAD_LETTER_HEADER_NAMES,
  EMPTY_HEADERS,
  type Envelope,
  type Headers,
  headerBytes,
  headerUnits,
  type PublishOptions,
  randomToken,
} from '../envelope.ts';
import {
  ClosedError,
  MailboxFullError,
  MaxPayloadError,
  NoRespondersError,
  OptionsError,
  PermissionError,
  type PermissionOperation,
  StreamError,
  TimeoutError,
} from '../errors.ts';
import { absorbDownstream, isRuntimeLineage, releaseDownstream, trackerOf } from '../lineage.ts';
import { intOption, knownKeys, oneOf, optionKeys, optionsObject } from '../options.ts';
import { type Counters, Telemetry, tracingEnabled, withActiveTrace } from '../telemetry.ts';
import { nextMacrotask, spend } from './drainLoop.ts';
import { type DropReason, type Mailbox, Offer } from './mailbox.ts';
import { PermissionChecker, type Permissions } from './permissions.ts';
import { type Match, publishTokens, queueProblem, type Routable, SubjectTrie, validateSubject } from './subjects.ts';
import { Subscription, type SubscriptionOptions } from './subscription.ts';
import type { TypedSubject } from './typedSubject.ts';

export const queueStrategies = ['round-robin', 'least-loaded'] as const;
/** How a queue group picks the member that gets a message. */
export type QueueStrategy = (typeof queueStrategies)[number];

export const payloadMeasures = ['binary', 'encoded'] as const;
/**
 * What the size limit measures. `binary`: strings (UTF-8 bytes) and byte arrays, objects pass
 * unmeasured (in-process they are never encoded); `encoded`: every payload encoded with the bus
 * codec, as it would be on a wire, at the cost of one encode per publish.
 */
export type PayloadMeasure = (typeof payloadMeasures)[number];

export interface BusOptions {
  /** Processing time for timeouts. @default systemClock */
  clock?: Clock;
  /** Largest payload in bytes; NATS's default. @default 1048576 */
  maxPayloadBytes?: number;
  /** @default 'binary' */
  measure?: PayloadMeasure;
  /** Used by `measure: 'encoded'`. @default msgpackCodec */
  codec?: Codec;
  /** Request timeout when a request names none. @default 5000 */
  requestTimeoutMs?: number;
  /** Counters and gauges; one is made when not given. */
  telemetry?: Telemetry;
}

export const DEFAULT_BUS_OPTIONS = Object.freeze({
  maxPayloadBytes: 1024 * 1024,
  measure: 'binary',
  requestTimeoutMs: 5000,
} as const);

const busOptionKeys = optionKeys<keyof BusOptions>({
  clock: true,
  maxPayloadBytes: true,
  measure: true,
  codec: true,
  requestTimeoutMs: true,
  telemetry: true,
});

export interface RequestOptions extends PublishOptions {
  /** @default the bus's requestTimeoutMs */
  timeoutMs?: number;
}

/**
 * When a scatter-gather request (`requestMany`) stops collecting: whichever comes first of the
 * count, the time, a stall and the sentinel.
 */
export interface RequestManyOptions extends PublishOptions {
  /** How long replies are collected, at most. @default the bus's requestTimeoutMs */
  timeoutMs?: number;
  /** Stop once this many replies came. @default no limit */
  maxReplies?: number;
  /** Stop when no reply came for this long since the last one (NATS's `stall` strategy). @default none */
  stallMs?: number;
  /**
   * Stop at the first reply for which this returns true; that reply marks the end and is not
   * collected (NATS's `sentinel` strategy, an empty payload there). @default none
   */
  sentinel?: (reply: Envelope) => boolean;
}

/** A requestMany's limits, checked: what the bus (or its transport) collects replies by. */
export interface RequestManyLimits {
  readonly timeoutMs: number;
  readonly maxReplies: number;
  readonly stallMs: number | undefined;
  readonly sentinel: ((reply: Envelope) => boolean) | undefined;
}

/** A subject given by name or as a typed subject object. */
export type SubjectRef<T> = string | TypedSubject<T>;

/** The bus as one client sees it: everything it does is checked against the client's permissions. */
export interface BusClient {
  /** The client's name, used in permission errors and telemetry. */
  readonly name: string;
  /**
   * Publishes and resolves once every matching mailbox accepted the message (the backpressure
   * signal); a subscription that closes while the publish waits on it no longer holds it back (its
   * copy counts as dropped). Rejects with a `SubjectError`, `PermissionError`, `MaxPayloadError` or,
   * when a matching mailbox under the `fail` policy is full, a `MailboxFullError`; a rejected
   * publish reached no subscriber.
   */
  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void>;
  /**
   * Publishes only if every matching mailbox can accept now; returns false (and delivers to none)
   * when one under `block` or `fail` is full. For hot paths: no promise is made. Invalid subjects,
   * permissions and sizes throw as `publish` rejects; a subject a stream captures throws a
   * `StreamError` (the append's sync cannot be waited for here).
   */
  tryPublish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): boolean;
  /** Forwards an existing envelope (keeping its id, headers and lineage) to its own subject. */
  forward(env: Envelope): Promise<void>;
  subscribe<T = unknown>(subject: SubjectRef<T>, options?: SubscriptionOptions<T>): Subscription<T>;
  /** Sends a request and resolves with the first reply; `NoRespondersError` when nothing listens. */
  request<Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions): Promise<Envelope<Res>>;
  /**
   * Scatter-gather: sends a request and collects the replies of every responder until `maxReplies`
   * came, `timeoutMs` passed, no reply came for `stallMs`, or a reply matched `sentinel`; resolves
   * with those replies in arrival order (none is no error). `NoRespondersError` when nothing listens.
   */
  requestMany<Req, Res = unknown>(
    subject: SubjectRef<Req>,
    data: Req,
    options?: RequestManyOptions,
  ): Promise<Envelope<Res>[]>;
  /** Replies to a request envelope on its `replyTo` subject. */
  respond<T>(request: Envelope, data: T, options?: PublishOptions): Promise<void>;
}

/** Where a subscription's messages go: a mailbox, or (for request inboxes) a direct handler. */
export interface Route extends Routable {
  readonly queue: string | undefined;
  readonly strategy: QueueStrategy;
  readonly mailbox: Mailbox | undefined;
  /**
   * Takes the message itself instead of a mailbox. A promise it returns is part of the publish's
   * acceptance: a stream's capture resolves once the append is synced.
   */
  readonly direct: ((env: Envelope) => Promise<void> | undefined) | undefined;
  /**
   * The stream a capturing route appends to: `tryPublish` cannot wait for the sync, so it is
   * refused on such a subject (see {@link StreamError}).
   */
  readonly capture?: string | undefined;
  /**
   * Hands a message straight to an idle consumer, skipping the mailbox; false when the consumer is
   * busy or has a backlog, and the message must queue to keep its order. `exclusive`: the envelope
   * was made by this publish and goes to this consumer only, so nobody else can observe it and the
   * consumer may take it as its own (an actor sets its input's lineage on it instead of a copy).
   * Called as the route's method (`this` is the route): one function may serve every route.
   */
  readonly handoff?: ((this: Route, env: Envelope, exclusive: boolean) => boolean) | undefined;
  /** Denied subjects of a wildcard subscription that overlaps a deny permission. */
  readonly filter: ((subject: string) => boolean) | undefined;
  /** Messages after which the route removes itself (a subscription's `max`); a transport passes it on. */
  readonly max?: number | undefined;
}

/** @internal What `route(env, true)` returns when every mailbox accepted at once: no need to await it. */
export const ACCEPTED: Promise<void> = Promise.resolve();
const encoder = new TextEncoder();

/**
 * The in-process message bus: NATS subjects and semantics, with mailboxes that push back.
 * Each plain subscription gets a copy of a message; each queue group gets one copy, given to one
 * member. Use {@link Bus.client} to get a view restricted by permissions.
 */
export class Bus implements BusClient {
  readonly name = 'bus';
  readonly clock: Clock;
  readonly telemetry: Telemetry;
  readonly maxPayloadBytes: number;
  readonly measure: PayloadMeasure;
  readonly codec: Codec;
  readonly requestTimeoutMs: number;
  readonly #trie = new SubjectTrie<Route, RoutePlan>(
    undefined,
    publishTokens,
    (subject) => this.isInbox(subject),
    undefined,
    (match, subject) => this.#compileCached(match, subject),
  );
  #refusal: string | undefined;
  readonly #tracing = tracingEnabled();
  readonly #counters: Counters;
  /** Per queue name: its live routes and round-robin cursor, dropped with the group's last route. */
  readonly #cursor = new Map<string, QueueCursor>();
  /**
   * Per route without a delivery filter, the plan of every subject that reaches that route alone
   * (most subjects of a wildcard-heavy bus reach one): one plan per route instead of one per
   * subject, so a cold subject allocates none and the cached plans stay few. It holds while its
   * route is in the trie (a group's cursor lives as long as its members), and goes with it.
   */
  readonly #solo = new Map<Route, RoutePlan>();
  readonly #pendingRequests = new Map<string, (env: Envelope) => void>();
  readonly #inboxPrefix = `_INBOX.${randomToken()}`;
  #inboxRoute: Route | undefined;
  /** The mailbox that refused a queue group's pick, read right after `#pick` returns REFUSED. */
  #refusedBy: Mailbox | undefined;
  readonly #root: ClientImpl;
  /**
   * @internal Subscriptions not closed yet, kept by the subscriptions themselves: a runtime's idle
   * and shutdown wait for their consumers as for actors.
   */
  readonly liveSubscriptions = new Set<Subscription>();

  constructor(options: BusOptions = {}) {
    knownKeys('bus', options, busOptionKeys);
    this.clock = options.clock ?? systemClock;
    this.telemetry = options.telemetry ?? new Telemetry();
    this.#counters = this.telemetry.counters;
    this.maxPayloadBytes = intOption(
      'bus.maxPayloadBytes',
      options.maxPayloadBytes,
      DEFAULT_BUS_OPTIONS.maxPayloadBytes,
      1,
    );
    this.measure = oneOf('bus.measure', options.measure, payloadMeasures, DEFAULT_BUS_OPTIONS.measure);
    this.codec = options.codec ?? msgpackCodec;
    this.requestTimeoutMs = intOption(
      'bus.requestTimeoutMs',
      options.requestTimeoutMs,
      DEFAULT_BUS_OPTIONS.requestTimeoutMs,
      1,
    );
    this.#root = new ClientImpl(this, 'bus', undefined, false, 'bus');
  }

  /**
   * A view of the bus whose publishes and subscriptions are checked against `permissions`; an
   * OptionsError when they are not lists of subject patterns.
   */
  client(name: string, permissions?: Permissions): BusClient {
    return new ClientImpl(this, name, permissions, false, `client '${name}'.permissions`);
  }

  /** @internal A client for the runtime's own actors: it still publishes while the bus refuses outside input. */
  internalClient(name: string, permissions?: Permissions): BusClient {
    return new ClientImpl(this, name, permissions, true, `actor '${name}'.permissions`);
  }

  /**
   * Refuses publishes and requests from outside the actors from now on (`ClosedError` naming the
   * reason), while actors finish their work: the first step of a graceful shutdown.
   */
  refuse(reason: string): void {
    this.#refusal ??= reason;
  }

  /** @internal Why outside input is refused, if it is. */
  get refusal(): string | undefined {
    return this.#refusal;
  }

  /** @internal Whether publishes should carry the caller's active trace context. */
  get tracing(): boolean {
    return this.#tracing;
  }

  /** Subscriptions held. */
  get subscriptions(): number {
    return this.#trie.size;
  }

  /** @internal Queue group names with live members (each holds a round-robin cursor). */
  get queueGroups(): number {
    return this.#cursor.size;
  }

  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void> {
    return this.#root.publish(subject, data, options);
  }
  tryPublish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): boolean {
    return this.#root.tryPublish(subject, data, options);
  }
  forward(env: Envelope): Promise<void> {
    return this.#root.forward(env);
  }
  subscribe<T = unknown>(subject: SubjectRef<T>, options?: SubscriptionOptions<T>): Subscription<T> {
    return this.#root.subscribe(subject, options);
  }
  request<Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions): Promise<Envelope<Res>> {
    return this.#root.request(subject, data, options);
  }
  requestMany<Req, Res = unknown>(
    subject: SubjectRef<Req>,
    data: Req,
    options?: RequestManyOptions,
  ): Promise<Envelope<Res>[]> {
    return this.#root.requestMany(subject, data, options);
  }
  respond<T>(request: Envelope, data: T, options?: PublishOptions): Promise<void> {
    return this.#root.respond(request, data, options);
  }

  /** Whether anything subscribes to the literal `subject`. */
  hasSubscribers(subject: string): boolean {
    const m = this.#trie.match(subject);
    return m.plain.length > 0 || m.groups.length > 0;
  }

  // ---- internal, used by clients, subscriptions and actors ----

  /**
   * @internal What the literal `subject` reaches; throws a `SubjectError` when it is not a valid
   * publish subject. Validation runs on a cache miss only, so a hot subject costs one map lookup.
   */
  lookup(subject: string): Match<Route> {
    return this.#trie.match(subject);
  }

  /** @internal Changes whenever routes do: a kept {@link lookup} result holds while it is the same. */
  get routesEpoch(): number {
    return this.#trie.epoch;
  }

  /**
   * {@link #compile} for the trie's cache, where every route of `match` is in the trie: a subject
   * that reaches one route alone gets that route's shared plan (see {@link #solo}).
   */
  #compileCached(match: Match<Route>, subject: string): RoutePlan {
    const solo = soloRoute(match);
    if (solo === undefined) return this.#compile(match, subject);
    let plan = this.#solo.get(solo);
    if (plan === undefined) {
      plan = this.#compile(match, subject);
      this.#solo.set(solo, plan);
    }
    return plan;
  }

  /**
   * What a publish to `subject` does with `match`, worked out once and cached with the match: the
   * routes whose delivery filter lets `subject` through (a filter is a function of the subject
   * alone: the deny patterns fixed when the route subscribed) and each queue group's round-robin
   * cursor. A publish then runs no filter and no map lookup; the next subscribe or unsubscribe
   * clears the cache, so a plan never outlives the routes and cursors it names.
   */
  #compile(match: Match<Route>, subject: string): RoutePlan {
    // Most subjects of a wildcard-heavy bus reach nothing: they share one plan.
    if (match.plain.length === 0 && match.groups.length === 0) return EMPTY_PLAN;
    let filtered = false;
    const targets: Route[] = [];
    for (let i = 0; i < match.plain.length; i++) {
      const r = match.plain[i] as Route;
      if (r.filter === undefined) targets.push(r);
      else {
        filtered = true;
        if (r.filter(subject)) targets.push(r);
      }
    }
    const members: Route[][] = [];
    const cursors: (QueueCursor | undefined)[] = [];
    for (let g = 0; g < match.groups.length; g++) {
      const group = match.groups[g] as readonly Route[];
      const passing: Route[] = [];
      for (let i = 0; i < group.length; i++) {
        const r = group[i] as Route;
        if (r.filter === undefined) passing.push(r);
        else {
          filtered = true;
          if (r.filter(subject)) passing.push(r);
        }
      }
      // A group none of whose members may receive the subject gets no copy.
      if (passing.length === 0) continue;
      members.push(passing);
      // The first member's strategy holds for its group; least-loaded keeps no cursor.
      const first = group[0] as Route;
      cursors.push(first.strategy === 'round-robin' ? this.#cursorOf(first.queue as string, passing) : undefined);
    }
    return new RoutePlan(match, targets, members, cursors, filtered ? subject : undefined);
  }

  /**
   * The round-robin cursor of queue group `queue` for a subject reaching `members` of it. A subject
   * that reaches only some members (overlapping patterns, a deny filter) gets a cursor of its own
   * over them: a cursor is an index into one member list, and sharing the group's with subjects
   * whose lists differ made each pick land on the same members, starving the others.
   */
  #cursorOf(queue: string, members: readonly Route[]): QueueCursor | undefined {
    const group = this.#cursor.get(queue);
    if (group === undefined || members.length === group.routes) return group;
    let key = '';
    for (const r of members) key += `${routeNumber(r)},`;
    const subsets = (group.subsets ??= new Map());
    let cursor = subsets.get(key);
    if (cursor === undefined) {
      cursor = { routes: members.length, next: 0, subsets: undefined };
      subsets.set(key, cursor);
    }
    return cursor;
  }

  /** @internal Counts a publish that matched nothing, for which no envelope was made. */
  publishedToNone(): void {
    this.#counters.published++;
  }

  /** @internal Adds a route for `pattern`; returns its removal. */
  addRoute(pattern: string, route: Route): () => void {
    this.insertRoute(pattern, route);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.#trie.remove(pattern, route);
      this.#forget(route);
    };
  }

  /**
   * @internal As {@link addRoute}, for an owner that keeps `pattern` and `route` itself and takes
   * the route out with {@link removeRoute}: no closure per route (a subscription's own memory).
   */
  insertRoute(pattern: string, route: Route): void {
    this.#trie.insert(pattern, route);
    const queue = route.queue;
    if (queue !== undefined) {
      const group = this.#cursor.get(queue);
      if (group === undefined) this.#cursor.set(queue, { routes: 1, next: 0, subsets: undefined });
      else {
        group.routes++;
        // Subsets name the members they were made for: a member that came or went makes new ones.
        group.subsets = undefined;
      }
    }
  }

  /**
   * @internal The plan `route` runs for `match` on `subject`: compiled once by a caller that routes
   * to the same targets again (a transport delivering to one subscriber), not on each publish.
   */
  compiled(match: Match<Route>, subject: string): Match<Route> {
    return this.#compile(match, subject);
  }

  /** @internal Takes out a route put in by {@link insertRoute}; once it is out, calls do nothing. */
  removeRoute(pattern: string, route: Route): void {
    if (this.#trie.remove(pattern, route)) this.#forget(route);
  }

  /** Forgets what the bus keeps for a route taken out of the trie: its solo plan, its group's cursor. */
  #forget(route: Route): void {
    this.#solo.delete(route);
    const queue = route.queue;
    if (queue === undefined) return;
    const group = this.#cursor.get(queue) as QueueCursor;
    group.subsets = undefined;
    if (--group.routes === 0) this.#cursor.delete(queue);
  }

  /**
   * @internal Size check of a payload and its headers' bytes, counted together as NATS counts a
   * message against max_payload; throws {@link MaxPayloadError}.
   */
  checkSize(subject: string, data: unknown, headers?: Headers): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit: nothing is counted when that bound fits.
    const units = headers === undefined ? 0 : (headerUnits(headers) ?? 0);
    let size: number;
    if (typeof data === 'string') {
      if ((data.length + units) * 3 <= this.maxPayloadBytes) return;
      size = encoder.encode(data).byteLength;
    } else if (data instanceof Uint8Array) size = data.byteLength;
    else if (this.measure === 'encoded') size = encodeWith(this.codec, data, subject).byteLength;
    else size = 0;
    if (size + units * 3 <= this.maxPayloadBytes) return;
    const total = size + (units === 0 ? 0 : headerBytes(headers as Headers));
    if (total > this.maxPayloadBytes) throw new MaxPayloadError(subject, total, this.maxPayloadBytes);
  }

  /**
   * @internal Routes an envelope to all or none of its targets. First every target is checked: a
   * full `fail` mailbox refuses (with `wait`, a promise rejected with {@link MailboxFullError};
   * without, `false`), and without `wait` so does a full `block` mailbox. Only then is the envelope
   * delivered, so a refused publish reached nobody and may be retried without duplicates. With
   * `wait` the result resolves once every `block` mailbox accepted it.
   */
  route(env: Envelope, wait: true, match?: Match<Route>, exclusive?: boolean): Promise<void>;
  route(env: Envelope, wait: false, match?: Match<Route>, exclusive?: boolean): boolean;
  route(
    env: Envelope,
    wait: boolean,
    match: Match<Route> = this.#trie.match(env.subject),
    exclusive = false,
  ): Promise<void> | boolean {
    // A match from the trie is its plan; one made by hand (or a plan whose filters were run for
    // another subject) is compiled here, for this publish only.
    const plan =
      match instanceof RoutePlan && (match.subject === undefined || match.subject === env.subject)
        ? match
        : this.#compile(match, env.subject);
    const targets = plan.targets;
    const n = targets.length;
    const groups = plan.members;
    if (groups.length === 0 && n === 1) {
      // The common case, one subscriber: no second pass, no allocation.
      const r = targets[0] as Route;
      const full = refusing(r, wait);
      if (full !== undefined) return this.#refuse(full, wait);
      this.#counters.published++;
      const waiting = this.#deliver(r, env, exclusive);
      return wait ? (waiting ?? ACCEPTED) : true;
    }

    // Admission first: a queue group's pick, then every plain target. Picks are indexes into the
    // group's members; the first group's is kept in a local, so one group allocates nothing.
    let firstPick = -1;
    let morePicks: number[] | undefined;
    for (let g = 0; g < groups.length; g++) {
      const pick = this.#pick(groups[g] as Route[], plan.cursors[g], wait);
      if (pick === REFUSED) {
        const full = this.#refusedBy as Mailbox;
        this.#refusedBy = undefined;
        return this.#refuse(full, wait);
      }
      if (g === 0) firstPick = pick;
      else (morePicks ??= []).push(pick);
    }
    for (let i = 0; i < n; i++) {
      const full = refusing(targets[i] as Route, wait);
      if (full !== undefined) return this.#refuse(full, wait);
    }

    this.#counters.published++;
    let waits: Promise<void>[] | undefined;
    for (let i = 0; i < n; i++) {
      const w = this.#deliver(targets[i] as Route, env);
      if (w !== undefined) (waits ??= []).push(w);
    }
    for (let g = 0; g < groups.length; g++) {
      const pick = g === 0 ? firstPick : ((morePicks as number[])[g - 1] as number);
      if (pick < 0) continue;
      const members = groups[g] as Route[];
      // Round-robin cursors move only once the publish is admitted, so a refused one skips no member.
      // (A delivery above may have unsubscribed the group's last member: the cursor it moves is then
      // no group's any more, which is harmless.)
      const cursor = plan.cursors[g];
      if (cursor !== undefined && members.length > 1) cursor.next = pick + 1;
      // The only copy when no plain route and no other group takes one.
      const w = this.#deliver(members[pick] as Route, env, exclusive && n === 0 && groups.length === 1);
      if (w !== undefined) (waits ??= []).push(w);
    }
    if (!wait) return true;
    if (waits === undefined) return ACCEPTED;
    return waits.length === 1 ? (waits[0] as Promise<void>) : Promise.all(waits).then(noop);
  }

  /** @internal Releases and counts a message a mailbox let go of. */
  dropped(env: Envelope, _reason: DropReason): void {
    this.#counters.dropped++;
    releaseDownstream(env.lineage);
  }

  /** @internal {@link dropped} as a mailbox's `onDrop`: one function shared by every subscription. */
  readonly onDrop = (env: Envelope, reason: DropReason): void => this.dropped(env, reason);

  /** @internal Counts a permission violation and returns its error. */
  denied(operation: PermissionOperation, subject: string, client: string, rule: string): PermissionError {
    this.#counters.permissionDenied++;
    return new PermissionError(operation, subject, client, rule);
  }

  /** @internal */
  requestVia(client: ClientImpl, env: Envelope, subject: string, timeoutMs: number): Promise<Envelope> {
    if (!this.hasSubscribers(subject)) return Promise.reject(new NoRespondersError(subject));
    this.#ensureInbox();
    const token = env.replyTo as string;
    return new Promise<Envelope>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.#pendingRequests.delete(token);
        reject(new TimeoutError('request', subject, timeoutMs));
      }, timeoutMs);
      this.#pendingRequests.set(token, (reply) => {
        timer.cancel();
        this.#pendingRequests.delete(token);
        resolve(reply);
      });
      client.forward(env).catch((error: unknown) => {
        timer.cancel();
        this.#pendingRequests.delete(token);
        reject(error);
      });
    });
  }

  /**
   * @internal Collects the replies to `env` (whose `replyTo` is a fresh inbox) until one of
   * `limits` ends it. Off the publish path: a reply reaches the collector through the inbox route.
   */
  requestManyVia(client: ClientImpl, env: Envelope, subject: string, limits: RequestManyLimits): Promise<Envelope[]> {
    if (!this.hasSubscribers(subject)) return Promise.reject(new NoRespondersError(subject));
    this.#ensureInbox();
    const token = env.replyTo as string;
    return new Promise<Envelope[]>((resolve, reject) => {
      const replies: Envelope[] = [];
      let stall: Timer | undefined;
      const end = (): void => {
        timer.cancel();
        stall?.cancel();
        this.#pendingRequests.delete(token);
      };
      const finish = (): void => {
        end();
        resolve(replies);
      };
      const timer = this.clock.setTimeout(finish, limits.timeoutMs);
      this.#pendingRequests.set(token, (reply) => {
        let last: boolean;
        try {
          last = limits.sentinel?.(reply) === true;
        } catch (error) {
          // The requester's own function failed: its request fails, not the responder's publish.
          end();
          reject(error);
          return;
        }
        if (last) return finish();
        replies.push(reply);
        if (replies.length >= limits.maxReplies) return finish();
        if (limits.stallMs !== undefined) {
          stall?.cancel();
          stall = this.clock.setTimeout(finish, limits.stallMs);
        }
      });
      client.forward(env).catch((error: unknown) => {
        end();
        reject(error);
      });
    });
  }

  /**
   * @internal A fresh reply subject under this bus's inbox. Its token is 144 random bits: a reply
   * subject is the capability to answer a request (see {@link awaitsReply}), so it must not be guessed.
   */
  inbox(): string {
    return `${this.#inboxPrefix}.${randomToken()}${randomToken()}`;
  }

  /**
   * @internal Whether `subject` is the reply subject of a request still waiting for its reply. As
   * NATS's allow_responses, anyone who got the request may answer it on this subject, once, while
   * it waits, whatever its publish permissions.
   */
  awaitsReply(subject: string): boolean {
    return this.#pendingRequests.has(subject);
  }

  /** @internal Whether `subject` is a reply subject made by {@link inbox}. */
  isInbox(subject: string): boolean {
    return subject.startsWith(this.#inboxPrefix) && subject.charCodeAt(this.#inboxPrefix.length) === 46; // '.'
  }

  #ensureInbox(): void {
    if (this.#inboxRoute !== undefined) return;
    const route: Route = {
      queue: undefined,
      strategy: 'round-robin',
      mailbox: undefined,
      filter: undefined,
      direct: (reply) => {
        // A late reply after a timeout has no taker: that is the requester's choice, not a loss.
        this.#pendingRequests.get(reply.subject)?.(reply);
        return undefined;
      },
    };
    this.#inboxRoute = route;
    this.addRoute(`${this.#inboxPrefix}.*`, route);
  }

  #refuse(full: Mailbox, wait: boolean): false | Promise<never> {
    // A rejection rather than a throw: callers of route(env, true) handle one promise, not two paths.
    if (wait) return Promise.reject(new MailboxFullError(full.name, full.capacity));
    this.#counters.refused++;
    return false;
  }

  #deliver(r: Route, env: Envelope, exclusive = false): Promise<void> | undefined {
    if (r.direct !== undefined) return r.direct(env);
    const mailbox = r.mailbox as Mailbox;
    // A mailbox closed during this publish (its subscriber unsubscribed from an earlier copy's
    // callback) takes it as any closed mailbox does: dropped and counted through its onDrop.
    // The mailbox's reference: released by its consumer, or by onDrop when the mailbox lets go.
    absorbDownstream(env.lineage);
    // An idle consumer takes it now, as it would from the mailbox, and releases it the same way.
    if (r.handoff?.(env, exclusive)) return undefined;
    let offer: Offer;
    try {
      offer = mailbox.offer(env);
    } catch (error) {
      // Only a `fail` mailbox filled by re-entrant publishing after the admission check gets here.
      releaseDownstream(env.lineage);
      throw error;
    }
    if (offer !== Offer.Full) return undefined;
    // Admission checked for space; a mailbox filled since (re-entrant publishing from a drop hook)
    // holds this message as a waiter rather than lose it, even for tryPublish.
    return mailbox.wait(env);
  }

  /**
   * Picks the member of a queue group that gets a message (every member may receive its subject:
   * the plan left out those whose filter refuses it): one that has room, by the group's strategy
   * (round-robin when it has a `cursor`, else least-loaded); failing that one that accepts while
   * full (a drop policy, or `block` when waiting). Returns the member's index, or {@link REFUSED}
   * with the refusing mailbox in `#refusedBy` when every member refuses.
   */
  #pick(members: readonly Route[], cursor: QueueCursor | undefined, wait: boolean): number {
    const n = members.length;
    const start = cursor === undefined ? 0 : cursor.next % n;
    let best = -1;
    let bestDepth = Number.POSITIVE_INFINITY;
    let fallback = -1;
    let refuser: Mailbox | undefined;
    for (let i = 0; i < n; i++) {
      const index = start + i < n ? start + i : start + i - n;
      const m = members[index] as Route;
      if (hasRoom(m)) {
        if (cursor !== undefined) return index;
        const depth = m.mailbox?.depth ?? 0;
        if (depth < bestDepth) {
          best = index;
          bestDepth = depth;
        }
      } else if (fallback < 0) {
        const full = refusing(m, wait);
        if (full === undefined) fallback = index;
        else refuser ??= full;
      }
    }
    if (best >= 0) return best;
    if (fallback >= 0) return fallback;
    if (refuser === undefined) return -1;
    this.#refusedBy = refuser;
    return REFUSED;
  }
}

/**
 * What a publish to one subject does, compiled once per subject and cached by the trie with its
 * match (see `Bus.#compile`). `plain` and `groups` are the match as found, for callers that
 * inspect it; routing uses the plain arrays below, in indexed loops.
 */
class RoutePlan implements Match<Route> {
  readonly plain: readonly Route[];
  readonly groups: readonly (readonly Route[])[];
  /** Plain routes that take the subject. */
  readonly targets: Route[];
  /** Per queue group with a member that takes the subject: those members. */
  readonly members: Route[][];
  /** Per entry of `members`: the group's round-robin cursor, undefined for least-loaded. */
  readonly cursors: (QueueCursor | undefined)[];
  /** The subject the filters were run for; undefined when no route has one (the plan fits any subject). */
  readonly subject: string | undefined;

  constructor(
    match: Match<Route>,
    targets: Route[],
    members: Route[][],
    cursors: (QueueCursor | undefined)[],
    subject: string | undefined,
  ) {
    this.plain = match.plain;
    this.groups = match.groups;
    this.targets = targets;
    this.members = members;
    this.cursors = cursors;
    this.subject = subject;
  }
}

/** The route a match reaches alone, when it has no delivery filter: its plan fits every such subject. */
function soloRoute(match: Match<Route>): Route | undefined {
  let only: Route | undefined;
  if (match.groups.length === 0) {
    if (match.plain.length !== 1) return undefined;
    only = match.plain[0];
  } else {
    if (match.plain.length !== 0 || match.groups.length !== 1) return undefined;
    const group = match.groups[0] as readonly Route[];
    if (group.length !== 1) return undefined;
    only = group[0];
  }
  return only?.filter === undefined ? only : undefined;
}

const EMPTY_PLAN = new RoutePlan({ plain: Object.freeze([]), groups: Object.freeze([]) }, [], [], [], undefined);

/** What `#pick` returns when every member of a group refuses. */
const REFUSED = -2;

interface QueueCursor {
  /** Routes with this queue name; the entry goes when the last one does. */
  routes: number;
  next: number;
  /** Cursors of subjects that reach only some of the members, by those members (see `Bus.#cursorOf`). */
  subsets: Map<string, QueueCursor> | undefined;
}

/** A number per route, to name a set of queue members; given when a plan first needs one. */
const routeNumbers = new WeakMap<Route, number>();
let lastRouteNumber = 0;

function routeNumber(route: Route): number {
  let n = routeNumbers.get(route);
  if (n === undefined) {
    n = ++lastRouteNumber;
    routeNumbers.set(route, n);
  }
  return n;
}

/** Whether a route takes a message now without applying an overflow policy. */
function hasRoom(r: Route): boolean {
  return r.mailbox === undefined || (!r.mailbox.closed && r.mailbox.hasSpace());
}

/** The full mailbox behind `r` when it refuses a message now: `fail` always, `block` unless waiting. */
function refusing(r: Route, wait: boolean): Mailbox | undefined {
  const mailbox = r.mailbox;
  if (mailbox === undefined) {
    // Only direct routes get here, never a mailbox's hot path.
    if (!wait && r.capture !== undefined) throw captureRefused(r.capture);
    return undefined;
  }
  if (mailbox.closed || mailbox.hasSpace()) return undefined;
  if (mailbox.overflow === 'fail' || (mailbox.overflow === 'block' && !wait)) return mailbox;
  return undefined;
}

/** Kept out of {@link refusing}, which runs on every publish, so that stays small enough to inline. */
function captureRefused(stream: string): StreamError {
  return new StreamError(
    stream,
    'tryPublish cannot be used on a subject the stream captures: it cannot wait for the append to be synced; use publish',
  );
}

function noop(): void {}

/**
 * What an accepted publish resolves with: at once, but after a burst (see drainLoop.ts) only once
 * the event loop had a turn, so `for (...) await bus.publish(...)` lets timers run.
 */
function paced(): Promise<void> {
  return spend() ? ACCEPTED : nextMacrotask();
}

function nameOf<T>(subject: SubjectRef<T>): string {
  // Anything else (undefined from untyped code) goes on to validateSubject, which names it.
  return typeof subject === 'object' && subject !== null ? subject.name : subject;
}

const requestManyKeys = optionKeys<keyof PublishOptions>({
  key: true,
  eventTime: true,
  headers: true,
  replyTo: true,
  lineage: true,
  id: true,
});

/** @internal A bus client: the bus plus one client's permissions and name. */
export class ClientImpl implements BusClient {
  readonly name: string;
  readonly #bus: Bus;
  readonly #permissions: PermissionChecker;
  readonly #literalCache = new Set<string>();
  #lastLiteral: string | undefined = undefined;
  /**
   * The subject this client published to last, what it reached and the routes' epoch then: the
   * bus's own last-subject shortcut misses when publishers alternate (a producer and the actor
   * it feeds), a client's own rarely does.
   */
  #lastSubject: string | undefined = undefined;
  #lastMatch: Match<Route> | undefined = undefined;
  #lastEpoch = -1;
  /**
   * Whether this client's permissions let it publish to `#lastSubject`: a client's permissions never
   * change, so a restricted client (an actor with permissions publishing its outputs) pays their
   * check once per subject it turns to, not on every message. Never set for a subject under the
   * inbox, whose verdict changes as requests come and go.
   */
  #lastAllowed = false;

  readonly #internal: boolean;

  constructor(bus: Bus, name: string, permissions: Permissions | undefined, internal: boolean, option: string) {
    this.#bus = bus;
    this.name = name;
    this.#permissions = new PermissionChecker(permissions, option);
    this.#internal = internal;
  }

  /** Refusal during shutdown and the caller's trace context, for messages that enter the bus here. */
  #entering(options: PublishOptions | undefined): PublishOptions | undefined {
    if (!this.#internal && this.#bus.refusal !== undefined) throw new ClosedError('bus', this.#bus.refusal);
    if (!this.#bus.tracing) return options;
    const headers = withActiveTrace(options?.headers);
    return headers === options?.headers ? options : { ...options, headers: headers ?? {} };
  }

  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void> {
    try {
      const name = nameOf(subject);
      const checked = options === undefined ? undefined : ownOptions(options, 'publish');
      const match = this.#checkPublish(name, data, checked);
      const entering = this.#entering(checked);
      if (match.plain.length === 0 && match.groups.length === 0) {
        // Nobody listens: nothing to build an envelope for.
        this.#bus.publishedToNone();
        return paced();
      }
      // Made here and held by nobody else: a single consumer may take it as its own.
      const env = createEnvelope(name, data, entering, this.#bus.clock.now());
      const accepted = this.#bus.route(env, true, match, true);
      return accepted === ACCEPTED ? paced() : accepted;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  tryPublish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): boolean {
    const name = nameOf(subject);
    const checked = options === undefined ? undefined : ownOptions(options, 'tryPublish');
    const match = this.#checkPublish(name, data, checked);
    const entering = this.#entering(checked);
    if (match.plain.length === 0 && match.groups.length === 0) {
      this.#bus.publishedToNone();
      return true;
    }
    return this.#bus.route(createEnvelope(name, data, entering, this.#bus.clock.now()), false, match, true);
  }

  forward(env: Envelope): Promise<void> {
    try {
      // An envelope given whole is checked as publish options are. Its attempt counted deliveries to
      // its last consumer; on the bus it is a new message, at attempt 1 (a copy only when it differs,
      // or when its headers were not checked here before: the same frozen headers pass each hop).
      let out = env;
      if (env.attempt !== 1 || headerUnits(env.headers) === undefined) {
        out = { ...env, headers: checkHeaders(env.headers, 'forward.headers'), attempt: 1 };
      }
      checkFields(out.id, out.eventTime, out.key, 'forward');
      // An actor's output carries its input's handle (with a record or not); any other lineage
      // came from outside.
      if (out.lineage !== undefined && !isRuntimeLineage(out.lineage) && trackerOf(out.lineage) === undefined)
        checkLineage(out.lineage, 'forward.lineage');
      const match = this.#checkPublish(out.subject, out.data, out);
      return this.#bus.route(out, true, match);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  subscribe<T = unknown>(subject: SubjectRef<T>, options: SubscriptionOptions<T> = {}): Subscription<T> {
    const pattern = nameOf(subject);
    validateSubject(pattern, 'subscribe');
    optionsObject('subscription', options);
    if (options.queue !== undefined) validateQueue(options.queue, 'queue');
    const reason = this.#permissions.subscribeDenied(pattern, options.queue);
    if (reason !== undefined) throw this.#bus.denied('subscribe', pattern, this.name, reason);
    return new Subscription<T>(this.#bus, pattern, options, this.#permissions.deliveryFilter(pattern));
  }

  request<Req, Res = unknown>(
    subject: SubjectRef<Req>,
    data: Req,
    options: RequestOptions = {},
  ): Promise<Envelope<Res>> {
    try {
      const name = nameOf(subject);
      // The reply subject is the bus's to choose: one given here would let the caller pick where
      // the responder publishes.
      const { timeoutMs: given, replyTo: _ignored, ...rest } = ownOptions(options, 'request') as RequestOptions;
      this.#checkPublish(name, data, rest);
      const timeoutMs = intOption('request.timeoutMs', given, this.#bus.requestTimeoutMs, 1);
      const env = createEnvelope(
        name,
        data,
        { ...this.#entering(rest), replyTo: this.#bus.inbox() },
        this.#bus.clock.now(),
      );
      return this.#bus.requestVia(this, env, name, timeoutMs) as Promise<Envelope<Res>>;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  requestMany<Req, Res = unknown>(
    subject: SubjectRef<Req>,
    data: Req,
    options: RequestManyOptions = {},
  ): Promise<Envelope<Res>[]> {
    try {
      const name = nameOf(subject);
      const {
        timeoutMs,
        maxReplies,
        stallMs,
        sentinel,
        replyTo: _ignored,
        ...rest
      } = ownOptions(options, 'requestMany') as RequestManyOptions;
      knownKeys('requestMany', rest, requestManyKeys);
      this.#checkPublish(name, data, rest);
      if (sentinel !== undefined && typeof sentinel !== 'function') {
        throw new OptionsError('requestMany.sentinel', 'must be a function of a reply', sentinel);
      }
      const limits: RequestManyLimits = {
        timeoutMs: intOption('requestMany.timeoutMs', timeoutMs, this.#bus.requestTimeoutMs, 1),
        maxReplies: intOption('requestMany.maxReplies', maxReplies, Number.MAX_SAFE_INTEGER, 1),
        stallMs: stallMs === undefined ? undefined : intOption('requestMany.stallMs', stallMs, 1, 1),
        sentinel,
      };
      const env = createEnvelope(
        name,
        data,
        { ...this.#entering(rest), replyTo: this.#bus.inbox() },
        this.#bus.clock.now(),
      );
      return this.#bus.requestManyVia(this, env, name, limits) as Promise<Envelope<Res>[]>;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  respond<T>(request: Envelope, data: T, options?: PublishOptions): Promise<void> {
    try {
      const replyTo = replyToOf(request, 'respond.request');
      const checked = options === undefined ? undefined : ownOptions(options, 'respond');
      // The reply subject is checked as any publish: a requester's inbox is open while the request
      // waits (see #checkPublish), and any other subject needs this client's own permission, or a
      // crafted `replyTo` would get around the publish permissions.
      const match = this.#checkPublish(replyTo, data, checked);
      return this.#bus.route(createEnvelope(replyTo, data, checked, this.#bus.clock.now()), true, match);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Checks a publish (subject, reply subject, payload and header size) and returns what it reaches
   * (the lookup also validates the subject). Two rules keep a restricted client inside its
   * permissions:
   * - a reply subject of a request that waits for its reply may be published to once by anyone
   *   who got the request (NATS's allow_responses); any other subject under the bus's inbox is an
   *   ordinary subject, which the permissions must allow;
   * - a `replyTo` is where a responder will publish for this client, so it must be a subject this
   *   client may publish to itself, or a waiting request's reply subject (passed on with the
   *   request): a service cannot be made a deputy that publishes where the requester may not.
   */
  #checkPublish(subject: string, data: unknown, options: PublishOptions | undefined): Match<Route> {
    const bus = this.#bus;
    let match: Match<Route>;
    // (Untyped code may pass undefined, equal to an unset #lastSubject: that must reach validation.)
    if (subject === this.#lastSubject && this.#lastEpoch === bus.routesEpoch && subject !== undefined) {
      match = this.#lastMatch as Match<Route>;
    } else {
      match = bus.lookup(subject);
      if (subject !== this.#lastSubject) this.#lastAllowed = false;
      this.#lastSubject = subject;
      this.#lastMatch = match;
      this.#lastEpoch = bus.routesEpoch;
    }
    const replyTo = options?.replyTo;
    if (replyTo !== undefined) this.#checkLiteral(replyTo);
    if (!this.#permissions.unrestricted) {
      if (this.#lastAllowed) {
        // Allowed before, and permissions do not change (see #lastAllowed).
      } else if (!this.#bus.isInbox(subject)) {
        const reason = this.#permissions.publishDenied(subject);
        if (reason !== undefined) throw this.#bus.denied('publish', subject, this.name, reason);
        this.#lastAllowed = true;
      } else if (!this.#bus.awaitsReply(subject)) {
        const reason = this.#permissions.publishDenied(subject);
        if (reason !== undefined) {
          throw this.#bus.denied(
            'publish',
            subject,
            this.name,
            `${reason}, and it is no reply subject of a request waiting for its reply`,
          );
        }
      }
      const headers = options?.headers;
      if (headers !== undefined && headers !== EMPTY_HEADERS) {
        for (const name of DEAD_LETTER_HEADER_NAMES) {
          if (headers[name] !== undefined) {
            throw this.#bus.denied(
              'publish',
              subject,
              this.name,
              `header '${name}' is set by the runtime on dead letters only: a replay publishes to 'sluice-original-subject' with the runtime's rights`,
            );
          }
        }
      }
      if (replyTo !== undefined && !this.#bus.awaitsReply(replyTo)) {
        const reason = this.#permissions.publishDenied(replyTo);
        if (reason !== undefined) {
          throw this.#bus.denied(
            'publish',
            replyTo,
            this.name,
            `a replyTo must be a subject the publisher may publish to itself: ${reason}`,
          );
        }
      }
    }
    this.#bus.checkSize(subject, data, options?.headers);
    return match;
  }

  /** Reply subjects only: publish subjects are validated by the bus's lookup, on a cache miss. */
  #checkLiteral(subject: string): void {
    // A client mostly publishes to the subject it published to last: one comparison, no lookup.
    // (Untyped code may pass undefined, which must reach validateSubject to be named.)
    if (subject === this.#lastLiteral && subject !== undefined) return;
    if (!this.#literalCache.has(subject)) {
      validateSubject(subject, 'publish');
      if (this.#literalCache.size > 8192) this.#literalCache.clear();
      this.#literalCache.add(subject);
    }
    this.#lastLiteral = subject;
  }
}

/**
 * Checks what a caller may set on a message (an OptionsError naming `option` and the rule) and
 * returns the options with their headers checked, frozen and measured: a copy only when headers
 * are given.
 */
function ownOptions(options: PublishOptions, option: string): PublishOptions {
  if (typeof options !== 'object' || options === null) {
    throw new OptionsError(option, 'options are an object', options);
  }
  checkPublishOptions(options, option);
  const headers = options.headers;
  if (headers === undefined) return options;
  const checked = checkHeaders(headers, `${option}.headers`);
  return checked === headers ? options : { ...options, headers: checked };
}

/**
 * @internal The subject a reply to `request` goes to; an OptionsError naming `option` when the
 * message has none.
 */
export function replyToOf(request: Envelope, option: string): string {
  if (request.replyTo === undefined) {
    throw new OptionsError(
      option,
      `message '${request.id}' on '${request.subject}' has no replyTo subject to respond to (it did not come from request())`,
      request.replyTo,
    );
  }
  return request.replyTo;
}

/** @internal Throws an OptionsError naming `option` unless `queue` is a valid queue group name. */
export function validateQueue(queue: unknown, option: string): void {
  const problem = queueProblem(queue);
  if (problem !== undefined) throw new OptionsError(option, problem, queue);
}
