import {
  Observable,
  type Observer,
  type Operator,
  type Subscription as RxSubscription,
  type Subscriber,
  type TeardownLogic,
} from 'rxjs';
import type { Envelope } from '../envelope.ts';
import { OptionsError } from '../errors.ts';
import { absorbDownstream, releaseDownstream } from '../lineage.ts';
import { intOption, knownKeys, oneOf, optionKeys } from '../options.ts';
import type { Bus, QueueStrategy, Route } from './bus.ts';
import { DrainLoop, handoffRefused, nextMacrotask, spend } from './drainLoop.ts';
import { type DropReason, Mailbox, type MailboxOptions, Offer } from './mailbox.ts';

export interface SubscriptionOptions<T> {
  /** Subscribers sharing a queue group split the messages; each group gets one copy. */
  queue?: string;
  /** How the group picks a member; the first member's choice holds. @default 'round-robin' */
  queueStrategy?: QueueStrategy;
  mailbox?: MailboxOptions;
  /**
   * Handles each message (NATS style). A returned promise holds the message in flight until it
   * settles; a throw or rejection goes to `onError` and never stops the subscription.
   */
  callback?: (env: Envelope<T>) => void | Promise<void>;
  /** Messages handled at once by `callback`. @default 1 */
  concurrency?: number;
  /**
   * Auto-unsubscribe after this many messages (NATS's `max`): the subscription takes that many,
   * hands them to its consumer, and closes (as a `drain`). Its mailbox's room is checked as each
   * message reaches it rather than before the publish: a full `fail` mailbox rejects that publish
   * after other subscribers may have taken the message. @default no limit
   */
  max?: number;
  /**
   * Errors from `callback`, or thrown by an `observable` observer. @default logs to the console
   * with the subject and message id
   */
  onError?: (error: unknown, env: Envelope<T>) => void;
  /**
   * Called for each message the mailbox let go of undelivered: dropped by a `drop-oldest` or
   * `drop-newest` policy, or queued when the subscription closed. The bus has counted and released
   * it by then, so read it, never keep it. A consumer that must not fall behind unnoticed (a
   * WebSocket gateway dropping a slow browser) learns here that it did. What it throws goes to
   * `onError`. @default none
   */
  onDrop?: (env: Envelope<T>, reason: DropReason) => void;
}

const subscriptionOptionKeys = optionKeys<keyof SubscriptionOptions<unknown>>({
  queue: true,
  queueStrategy: true,
  mailbox: true,
  callback: true,
  concurrency: true,
  max: true,
  onError: true,
  onDrop: true,
});

type Mode = 'none' | 'callback' | 'observable' | 'iterator';

/** A subscription's route, which knows its subscription. */
interface OwnedRoute extends Route {
  readonly owner: Subscription;
}

type Handler = (env: Envelope) => void | Promise<void>;
type ErrorHandler = (error: unknown, env: Envelope) => void;

/**
 * A subscription to a subject pattern. Messages wait in a bounded mailbox until taken by exactly
 * one consumer: the `callback` option, `observable` (RxJS) or `for await` (async iterator). The
 * mailbox pushes back on publishers when the consumer falls behind.
 */
export class Subscription<T = unknown> implements AsyncIterable<Envelope<T>> {
  readonly subject: string;
  readonly queue: string | undefined;
  readonly #bus: Bus;
  readonly #mailbox: Mailbox;
  /** This subscription's entry in the bus, taken out on unsubscribe or drain. */
  readonly #route: Route;
  // What an idle subscription never needs is made on first use (the closed promise, the drain loop,
  // the waiter lists, the observable's error trap): an idle one holds a few hundred bytes, so tens
  // of thousands of rarely used subjects cost megabytes, not tens of them.
  #closed: Promise<void> | undefined = undefined;
  #resolveClosed: (() => void) | undefined = undefined;
  #mode: Mode = 'none';
  #state: 'open' | 'draining' | 'closed' = 'open';
  #active = 0;
  #delivered = 0;
  #errors = 0;
  #loop: DrainLoop | undefined = undefined;
  readonly #concurrency: number;
  // Stored over `Envelope<unknown>`: a field typed with `T` in parameter position would make
  // `Subscription<Order>` unassignable to `Subscription<unknown>`. Only envelopes of this subject reach them.
  readonly #callback: Handler | undefined;
  /** The `onError` option; undefined for the default, which logs. */
  readonly #onError: ErrorHandler | undefined;
  #observer: Subscriber<Envelope<T>> | undefined;
  /** The message its observer is handling now, and what the observer threw meanwhile. */
  #observing: Envelope | undefined;
  #observerError: unknown;
  /** Pending `next()` calls of the async iterator, oldest first. */
  #iteratorWaiters: (() => void)[] | undefined = undefined;

  /** @internal Made by `BusClient.subscribe`. */
  constructor(
    bus: Bus,
    pattern: string,
    options: SubscriptionOptions<T>,
    filter: ((subject: string) => boolean) | undefined,
  ) {
    knownKeys('subscription', options, subscriptionOptionKeys);
    this.subject = pattern;
    this.queue = options.queue;
    this.#bus = bus;
    this.#concurrency = intOption('subscription.concurrency', options.concurrency, 1, 1);
    this.#callback = options.callback as Handler | undefined;
    this.#onError = options.onError as ErrorHandler | undefined;
    this.#mailbox = new Mailbox(
      options.queue === undefined ? pattern : `${pattern} [${options.queue}]`,
      options.mailbox,
    );
    const onDrop = options.onDrop as ((env: Envelope, reason: DropReason) => void) | undefined;
    if (onDrop !== undefined && typeof onDrop !== 'function') {
      throw new OptionsError('subscription.onDrop', 'must be a function of a message and a drop reason', onDrop);
    }
    this.#mailbox.onDrop =
      onDrop === undefined
        ? bus.onDrop
        : (env, reason) => {
            bus.onDrop(env, reason);
            // A throw here would escape into the publish (failing it for the other subscribers after
            // the drop released the message) or into close (leaving the waiting publishers hung).
            try {
              onDrop(env, reason);
            } catch (error) {
              this.#report(error, env);
            }
          };
    this.#mailbox.onReadable = () => this.#schedule();
    const strategy = oneOf(
      'subscription.queueStrategy',
      options.queueStrategy,
      ['round-robin', 'least-loaded'],
      'round-robin',
    );
    const max = options.max === undefined ? undefined : intOption('subscription.max', options.max, 1, 1);
    const owned: OwnedRoute | undefined =
      max === undefined
        ? {
            queue: options.queue,
            strategy,
            mailbox: this.#mailbox,
            direct: undefined,
            // One function for every subscription, called as the route's method: no closure and
            // context per subscription for a delivery to pass through.
            handoff: options.callback === undefined ? undefined : Subscription.#handoffVia,
            filter,
            owner: this as Subscription,
          }
        : undefined;
    const route: Route = owned ?? {
      // Counted as each message arrives, so only a `max` subscription pays for the count.
      queue: options.queue,
      strategy,
      mailbox: undefined,
      direct: (env) => this.#takeCounted(env, max as number),
      filter,
      max,
    };
    this.#route = route;
    bus.insertRoute(pattern, route);
    if (this.#callback !== undefined) this.#mode = 'callback';
    bus.liveSubscriptions.add(this);
  }

  /** Messages waiting in the mailbox. */
  get pending(): number {
    return this.#mailbox.depth;
  }

  /** Messages handed to the consumer so far. */
  get delivered(): number {
    return this.#delivered;
  }

  /**
   * Messages whose consumer failed: the callback threw or rejected, or the observable's observer
   * threw. Each went to `onError`; delivery went on.
   */
  get errors(): number {
    return this.#errors;
  }

  /** Whether the subscription still accepts messages. */
  get isOpen(): boolean {
    return this.#state === 'open';
  }

  /** Resolves once the subscription is closed (by `unsubscribe`, `close` or a finished `drain`). */
  get closed(): Promise<void> {
    // Set to SETTLED when it closed before anyone asked (see #settleClose).
    this.#closed ??= new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    return this.#closed;
  }

  /** Resolves when the mailbox has room (for `tryPublish` callers that want to wait). */
  space(): Promise<void> {
    return this.#mailbox.space();
  }

  /**
   * The messages as an RxJS Observable; one observer at a time. A message is settled when the
   * observer's `next` returns. Unsubscribing from it ends the subscription. An observer that throws
   * does not end it (as a callback that throws): the error goes to `onError` and counts in
   * `errors`, where RxJS would rethrow it on a timer and kill the process. The same holds for the
   * observer at the end of a `pipe`, and for an error that reaches an observer without `error`.
   */
  get observable(): Observable<Envelope<T>> {
    return new ContainedObservable<Envelope<T>>(this.#container(), (subscriber) => {
      this.#claim('observable');
      this.#observer = subscriber;
      if (this.#state === 'closed' && this.#mailbox.depth === 0) subscriber.complete();
      else this.#schedule();
      return () => {
        this.#observer = undefined;
        this.unsubscribe();
      };
    });
  }

  /**
   * Each `next()` settles the oldest message handed out and not yet settled (in a `for await`, the
   * previous one). Calls to `next()` may overlap: each gets its own message, in call order.
   */
  [Symbol.asyncIterator](): AsyncIterator<Envelope<T>> {
    this.#claim('iterator');
    const handedOut: Envelope<T>[] = [];
    return {
      next: async (): Promise<IteratorResult<Envelope<T>>> => {
        const previous = handedOut.shift();
        if (previous !== undefined) this.#finish(previous, undefined);
        for (;;) {
          if (this.#mailbox.depth > 0) {
            // A loop of `for await` whose body publishes back into this subscription runs in microtasks.
            if (!spend()) {
              await nextMacrotask();
              continue;
            }
            const env = this.#mailbox.take() as Envelope<T>;
            this.#active++;
            this.#delivered++;
            this.#bus.telemetry.counters.delivered++;
            handedOut.push(env);
            return { value: env, done: false };
          }
          if (this.#state !== 'open') {
            this.#settleClose();
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => {
            (this.#iteratorWaiters ??= []).push(resolve);
          });
        }
      },
      return: async (): Promise<IteratorResult<Envelope<T>>> => {
        for (let env = handedOut.shift(); env !== undefined; env = handedOut.shift()) this.#finish(env, undefined);
        this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * Stops now: no more messages; queued ones are dropped, counted and released, and a publish
   * waiting for room in this mailbox resolves with its message dropped the same way.
   */
  unsubscribe(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#bus.removeRoute(this.subject, this.#route);
    // Publishers waiting for room are let go; their messages count as dropped, like the queued ones.
    this.#mailbox.close();
    this.#mailbox.clear();
    this.#settleClose();
  }

  /** As `unsubscribe`, resolving once handlers in progress finished. */
  async close(): Promise<void> {
    this.unsubscribe();
    await this.closed;
  }

  /**
   * Accepts nothing new, hands what is queued to the consumer, and resolves once all of it is handled.
   * A publish still waiting for room is let go, its message dropped and counted.
   */
  async drain(): Promise<void> {
    if (this.#state === 'open') {
      this.#state = 'draining';
      this.#bus.removeRoute(this.subject, this.#route);
      this.#mailbox.close();
      this.#schedule();
      this.#settleClose();
    }
    await this.closed;
  }

  #claim(mode: Mode): void {
    if (this.#mode !== 'none') {
      throw new OptionsError('subscription', `'${this.subject}' is already consumed by its ${this.#mode}`, mode);
    }
    this.#mode = mode;
  }

  /** Wakes every pending `next()`: in call order, each takes a message or waits again. */
  #wakeIterators(): boolean {
    const waiters = this.#iteratorWaiters;
    if (waiters === undefined) return false;
    this.#iteratorWaiters = undefined;
    for (const wake of waiters) wake();
    return true;
  }

  #schedule(): void {
    if (this.#wakeIterators()) return;
    if (this.#mode !== 'callback' && this.#mode !== 'observable') return;
    // Delivery runs in the publisher's call, as an EventEmitter's does: no task per message, and
    // a mailbox fills only when the consumer is really behind (an async callback). A publish from
    // inside a callback to this subscription is queued and taken by the running loop.
    (this.#loop ?? this.#newLoop()).run();
  }

  #newLoop(): DrainLoop {
    this.#loop = new DrainLoop(() => this.#pump());
    return this.#loop;
  }

  #pump(): void {
    if (this.#mode === 'observable') {
      const observer = this.#observer;
      if (observer === undefined) return;
      const loop = this.#loop as DrainLoop;
      while (this.#mailbox.depth > 0 && loop.spend()) {
        const env = this.#mailbox.take() as Envelope<T>;
        this.#active++;
        this.#delivered++;
        this.#bus.telemetry.counters.delivered++;
        this.#observing = env;
        observer.next(env);
        this.#observing = undefined;
        const error = this.#observerError;
        this.#observerError = undefined;
        this.#finish(env, error);
      }
      this.#settleClose();
      return;
    }
    const loop = this.#loop as DrainLoop;
    while (this.#active < this.#concurrency && this.#mailbox.depth > 0 && loop.spend()) {
      this.#handle(this.#mailbox.take() as Envelope<T>);
    }
    this.#settleClose();
  }

  /**
   * The mailbox skipped: an idle callback consumer with nothing queued takes the message in the
   * publisher's call, as a listener would. Same accounting as a message taken from the mailbox.
   */
  #handoff(env: Envelope): boolean {
    // Only a callback subscription has a handoff, and its mode never changes: no test of the mode.
    const loop = this.#loop;
    if (
      loop?.running ||
      this.#state !== 'open' ||
      this.#active >= this.#concurrency ||
      this.#mailbox.depth !== 0 ||
      // A burst overrun (a chain of publishes from microtasks, each to an idle consumer): the
      // message queues, and the loop takes it on a later macrotask.
      handoffRefused()
    ) {
      return false;
    }
    const running = loop ?? this.#newLoop();
    running.beginStep();
    try {
      this.#handle(env as Envelope<T>);
    } finally {
      running.endStep();
    }
    // The callback may have unsubscribed or started a drain, which waited for it to finish.
    if (this.#state !== 'open') this.#settleClose();
    return true;
  }

  /** A callback subscription's `Route.handoff`, called with its route as `this`. */
  static readonly #handoffVia = function handoffVia(this: Route, env: Envelope): boolean {
    // Only the routes made in the constructor carry it, and those are owned.
    return (this as OwnedRoute).owner.#handoff(env);
  };

  #taken = 0;

  /**
   * A `max` subscription's route: takes the message as the bus would deliver it to a mailbox, and
   * once it took `max` stops taking any and drains.
   */
  #takeCounted(env: Envelope, max: number): Promise<void> | undefined {
    // A copy routed before the removal took effect (a publish already under way) is not taken.
    if (this.#state !== 'open' || this.#taken >= max) return undefined;
    this.#taken++;
    absorbDownstream(env.lineage);
    let waiting: Promise<void> | undefined;
    // Only a callback consumer is handed messages (see #handoff); the others read the mailbox.
    if (this.#callback === undefined || !this.#handoff(env)) {
      let offer: Offer;
      try {
        offer = this.#mailbox.offer(env);
      } catch (error) {
        releaseDownstream(env.lineage);
        // Refused, so not taken: it must not use up one of the `max` messages.
        this.#taken--;
        throw error;
      }
      if (offer === Offer.Full) waiting = this.#mailbox.wait(env);
    }
    if (this.#taken === max) {
      this.#bus.removeRoute(this.subject, this.#route);
      // A last message waiting for room would be let go by the drain's close: it drains once in.
      if (waiting === undefined) void this.drain();
      else {
        const drain = (): void => void this.drain();
        waiting.then(drain, drain);
      }
    }
    return waiting;
  }

  #handle(env: Envelope<T>): void {
    this.#active++;
    this.#delivered++;
    this.#bus.telemetry.counters.delivered++;
    let result: void | Promise<void>;
    try {
      result = (this.#callback as Handler)(env);
    } catch (error) {
      this.#finish(env, error);
      return;
    }
    if (result instanceof Promise) {
      result.then(
        () => this.#finishAndPump(env, undefined),
        (error: unknown) => this.#finishAndPump(env, error),
      );
    } else this.#finish(env, undefined);
  }

  #finishAndPump(env: Envelope<T>, error: unknown): void {
    this.#finish(env, error);
    this.#schedule();
    this.#settleClose();
  }

  #finish(env: Envelope<T>, error: unknown): void {
    this.#active--;
    if (error !== undefined) {
      this.#errors++;
      this.#report(error, env);
    }
    releaseDownstream(env.lineage, error);
    if (this.#idleWaiters !== undefined) this.#checkIdle();
  }

  #report(error: unknown, env: Envelope): void {
    try {
      if (this.#onError === undefined) logError(this.subject, error, env);
      else this.#onError(error, env);
    } catch {
      // An error handler that throws must not stop delivery.
    }
  }

  #settleClose(): void {
    if (this.#state === 'open' || this.#active > 0 || this.#mailbox.depth > 0) return;
    this.#state = 'closed';
    if (this.#resolveClosed !== undefined) this.#resolveClosed();
    else this.#closed = SETTLED;
    this.#bus.liveSubscriptions.delete(this);
    this.#checkIdle();
    if (this.#observer !== undefined) {
      const observer = this.#observer;
      this.#observer = undefined;
      observer.complete();
    }
    this.#wakeIterators();
  }

  // ---- for the runtime's idle and shutdown ----

  #idleWaiters: (() => void)[] | undefined = undefined;

  /** @internal Whether a consumer is attached: without one, nothing would ever drain the mailbox. */
  get consumed(): boolean {
    return this.#mode !== 'none';
  }

  /** @internal Resolves when nothing is queued and no message is being handled. */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => (this.#idleWaiters ??= []).push(resolve));
  }

  /** @internal What is left, for the shutdown report: messages queued, and being handled. */
  left(): { depth: number; inFlight: number } {
    return { depth: this.#mailbox.depth, inFlight: this.#active };
  }

  #isIdle(): boolean {
    return this.#active === 0 && this.#mailbox.depth === 0;
  }

  #checkIdle(): void {
    const waiters = this.#idleWaiters;
    if (waiters === undefined || !this.#isIdle()) return;
    this.#idleWaiters = undefined;
    for (const w of waiters) w();
  }

  /**
   * What an observer threw, or an error no observer handled: the message being observed fails
   * with it (as a callback's would). Outside any message (an asynchronous operator), it is counted
   * and logged, with no message to name.
   */
  #container(): (error: unknown) => void {
    return (error) => {
      if (this.#observing !== undefined) {
        this.#observerError ??= error;
        return;
      }
      this.#errors++;
      console.error(`sluice: subscription '${this.subject}' observable failed outside a message:`, error);
    };
  }
}

type Next<T> = ((value: T) => void) | null | undefined;
type OnError = ((error: unknown) => void) | null | undefined;
type OnComplete = (() => void) | null | undefined;

/**
 * An Observable whose observers cannot throw out of it: RxJS reports a throw from an observer, or
 * an error that reaches an observer without `error`, by rethrowing it on a timer, which ends the
 * process. Here both go to `contain`. `pipe` keeps the class, so the observer at the end of a pipe
 * is covered too. Subscribers (what operators and `firstValueFrom` pass) handle their own errors
 * and go through untouched.
 */
class ContainedObservable<T> extends Observable<T> {
  readonly #contain: (error: unknown) => void;

  constructor(
    contain: (error: unknown) => void,
    subscribe?: (this: Observable<T>, subscriber: Subscriber<T>) => TeardownLogic,
  ) {
    super(subscribe);
    this.#contain = contain;
  }

  override lift<R>(operator?: Operator<T, R>): Observable<R> {
    const lifted = new ContainedObservable<R>(this.#contain);
    lifted.source = this;
    lifted.operator = operator;
    return lifted;
  }

  override subscribe(
    observerOrNext?: Partial<Observer<T>> | Next<T>,
    error?: OnError,
    complete?: OnComplete,
  ): RxSubscription {
    if (isSubscriber(observerOrNext)) return super.subscribe(observerOrNext);
    const observer: Partial<Observer<T>> =
      typeof observerOrNext === 'function' || observerOrNext === null || observerOrNext === undefined
        ? { next: observerOrNext ?? undefined, error: error ?? undefined, complete: complete ?? undefined }
        : observerOrNext;
    const contain = this.#contain;
    return super.subscribe({
      next: (value) => {
        try {
          observer.next?.(value);
        } catch (thrown) {
          contain(thrown);
        }
      },
      error: (failure: unknown) => {
        if (observer.error === undefined) {
          contain(failure);
          return;
        }
        try {
          observer.error(failure);
        } catch (thrown) {
          contain(thrown);
        }
      },
      complete: () => {
        try {
          observer.complete?.();
        } catch (thrown) {
          contain(thrown);
        }
      },
    });
  }
}

/** As RxJS's own test: an observer that is also a subscription (any RxJS copy's Subscriber). */
function isSubscriber(value: unknown): value is Subscriber<never> {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.next === 'function' &&
    typeof v.error === 'function' &&
    typeof v.complete === 'function' &&
    typeof v.unsubscribe === 'function' &&
    typeof v.add === 'function' &&
    typeof v.remove === 'function'
  );
}

/** What `closed` gives once a subscription closed before anyone asked for it. */
const SETTLED: Promise<void> = Promise.resolve();

/** The default `onError`. */
function logError(subject: string, error: unknown, env: Envelope): void {
  console.error(`sluice: subscription '${subject}' failed on message '${env.id}':`, error);
}
