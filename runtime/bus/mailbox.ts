import type { Envelope } from '../envelope.ts';
import { MailboxFullError } from '../errors.ts';
import { intOption, knownKeys, oneOf, optionKeys } from '../options.ts';

export const overflowPolicies = ['block', 'drop-oldest', 'drop-newest', 'fail'] as const;
/**
 * What a full mailbox does with one more message. `block` (the default) makes `publish` wait,
 * which is what keeps memory bounded from sink to source; the drop policies count and release
 * what they drop; `fail` rejects the publish with a {@link MailboxFullError}.
 */
export type OverflowPolicy = (typeof overflowPolicies)[number];

export interface MailboxOptions {
  /** Messages held before `overflow` applies. @default 1024 */
  capacity?: number;
  /** @default 'block' */
  overflow?: OverflowPolicy;
}

/** Slots a mailbox's ring starts with; it grows on demand up to its capacity. */
const INITIAL_RING = 16;
/** The ring of a mailbox that never held a message: never written, as `#grow` replaces it first. */
const NO_RING: (Envelope | undefined)[] = [];

export const DEFAULT_MAILBOX_OPTIONS = Object.freeze({ capacity: 1024, overflow: 'block' } as const);

const mailboxKeys = optionKeys<keyof MailboxOptions>({ capacity: true, overflow: true });

export function resolveMailboxOptions(options: MailboxOptions = {}, path = 'mailbox'): Required<MailboxOptions> {
  knownKeys(path, options, mailboxKeys);
  return {
    capacity: intOption(`${path}.capacity`, options.capacity, DEFAULT_MAILBOX_OPTIONS.capacity, 1),
    overflow: oneOf(`${path}.overflow`, options.overflow, overflowPolicies, DEFAULT_MAILBOX_OPTIONS.overflow),
  };
}

/** Why a mailbox let go of a message it did not deliver. */
export type DropReason = 'drop-oldest' | 'drop-newest' | 'closed';

/**
 * Result of offering a message without waiting: accepted; full under `block` (the caller may wait
 * for space); or dropped, by the `drop-newest` policy or because the mailbox is closed (handed to
 * `onDrop`; the publish still succeeds).
 */
export const Offer = { Accepted: 0, Full: 1, Dropped: 2 } as const;
export type Offer = (typeof Offer)[keyof typeof Offer];

interface Waiter {
  readonly env: Envelope;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/**
 * A bounded FIFO of envelopes between the bus and one consumer (an actor or a subscription).
 * The bus absorbs an envelope's lineage when the mailbox accepts it; whoever takes it out releases
 * it (the consumer when done, the mailbox itself when it drops it).
 */
export class Mailbox {
  readonly name: string;
  readonly capacity: number;
  readonly overflow: OverflowPolicy;
  /** Called when a message arrives in an empty mailbox or space is made while the consumer waits. */
  onReadable: (() => void) | undefined = undefined;
  /**
   * Called for each message let go of undelivered: dropped by a policy (oldest or newest), cleared,
   * or held by a waiting publisher when the mailbox closed. The owner counts it and releases its lineage.
   */
  onDrop: ((env: Envelope, reason: DropReason) => void) | undefined = undefined;

  /** No ring until the first message: most mailboxes of idle subscriptions never get one. */
  #ring: (Envelope | undefined)[] = NO_RING;
  #head = 0;
  #size = 0;
  /**
   * Waiting publishers, a queue read from `#waitHead`: `shift()` would move every other waiter on
   * each take, which made draining n of them O(n²). Undefined while none waits, so the hot path's
   * test for waiters is one comparison.
   */
  #waiters: (Waiter | undefined)[] | undefined = undefined;
  #waitHead = 0;
  #closed = false;
  #spaceWaiters: (() => void)[] | undefined = undefined;

  constructor(name: string, options?: MailboxOptions) {
    const o = resolveMailboxOptions(options);
    this.name = name;
    this.capacity = o.capacity;
    this.overflow = o.overflow;
  }

  /** Messages queued. */
  get depth(): number {
    return this.#size;
  }

  /** Publishers waiting for space under `block`. */
  get blocked(): number {
    return this.#waiters === undefined ? 0 : this.#waiters.length - this.#waitHead;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether `offer` would accept now without applying the overflow policy. */
  hasSpace(): boolean {
    return this.#size < this.capacity && this.#waiters === undefined;
  }

  /**
   * Offers a message without waiting. Under `fail` a full mailbox throws {@link MailboxFullError};
   * under `drop-oldest` the oldest is dropped to make room; under `drop-newest` this one is dropped.
   * Either drop goes through `onDrop`.
   */
  offer(env: Envelope): Offer {
    if (this.#closed) {
      this.onDrop?.(env, 'closed');
      return Offer.Dropped;
    }
    if (this.#size < this.capacity && this.#waiters === undefined) {
      this.#push(env);
      return Offer.Accepted;
    }
    switch (this.overflow) {
      case 'block':
        return Offer.Full;
      case 'drop-newest':
        this.onDrop?.(env, 'drop-newest');
        return Offer.Dropped;
      case 'drop-oldest': {
        const oldest = this.#shift();
        if (oldest !== undefined) this.onDrop?.(oldest, 'drop-oldest');
        this.#push(env);
        return Offer.Accepted;
      }
      case 'fail':
        throw new MailboxFullError(this.name, this.capacity);
    }
  }

  /** Queues a publisher until there is space (only under `block`); resolves once accepted. */
  wait(env: Envelope): Promise<void> {
    if (this.#closed) {
      // Nothing would ever let this publisher in: drop now rather than hang it.
      this.onDrop?.(env, 'closed');
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      (this.#waiters ??= []).push({ env, resolve, reject });
    });
  }

  /** Takes the oldest message, letting one waiting publisher in. */
  take(): Envelope | undefined {
    const env = this.#shift();
    if (env === undefined) return undefined;
    const waiter = this.#nextWaiter();
    if (waiter !== undefined) {
      this.#push(waiter.env);
      waiter.resolve();
    } else if (this.#spaceWaiters !== undefined) {
      const waiting = this.#spaceWaiters;
      this.#spaceWaiters = undefined;
      for (const w of waiting) w();
    }
    return env;
  }

  /** Puts a message back at the front (a redelivery), over capacity if need be: it was already accepted once. */
  unshift(env: Envelope): void {
    this.#grow();
    this.#head = (this.#head - 1) & (this.#ring.length - 1);
    this.#ring[this.#head] = env;
    this.#size++;
    this.onReadable?.();
  }

  /** Resolves when there is space (for `tryPublish` callers that want to wait without a message). */
  space(): Promise<void> {
    if (this.#size < this.capacity) return Promise.resolve();
    return new Promise((resolve) => (this.#spaceWaiters ??= []).push(resolve));
  }

  /**
   * Stops accepting; queued messages stay for `take`. The message of each waiting publisher was
   * never accepted: it goes to `onDrop` as closed, and its publish rejects with `reason` when one is
   * given, or resolves when not (the consumer is gone, so it no longer holds the publisher back).
   */
  close(reason?: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    const waiters = this.#waiters;
    const head = this.#waitHead;
    this.#waiters = undefined;
    this.#waitHead = 0;
    if (waiters !== undefined) {
      for (let i = head; i < waiters.length; i++) {
        const w = waiters[i] as Waiter;
        this.onDrop?.(w.env, 'closed');
        if (reason === undefined) w.resolve();
        else w.reject(reason);
      }
    }
    const spaceWaiters = this.#spaceWaiters;
    this.#spaceWaiters = undefined;
    if (spaceWaiters !== undefined) for (const w of spaceWaiters) w();
  }

  /** Removes every queued message, handing each to `onDrop` as closed. */
  clear(): number {
    let n = 0;
    for (let env = this.#shift(); env !== undefined; env = this.#shift()) {
      n++;
      this.onDrop?.(env, 'closed');
    }
    return n;
  }

  #nextWaiter(): Waiter | undefined {
    const waiters = this.#waiters;
    if (waiters === undefined) return undefined;
    const head = this.#waitHead;
    const waiter = waiters[head];
    waiters[head] = undefined;
    if (head + 1 === waiters.length) {
      // The last one: no waiters again (see #waiters).
      this.#waiters = undefined;
      this.#waitHead = 0;
    } else if (head >= 1024 && head * 2 >= waiters.length) {
      // Taken slots are half the array: drop them, once per as many takes as there are waiters left.
      this.#waiters = waiters.slice(head + 1);
      this.#waitHead = 0;
    } else this.#waitHead = head + 1;
    return waiter;
  }

  #push(env: Envelope): void {
    this.#grow();
    this.#ring[(this.#head + this.#size) & (this.#ring.length - 1)] = env;
    this.#size++;
    if (this.#size === 1) this.onReadable?.();
  }

  #shift(): Envelope | undefined {
    if (this.#size === 0) return undefined;
    const env = this.#ring[this.#head];
    this.#ring[this.#head] = undefined;
    this.#head = (this.#head + 1) & (this.#ring.length - 1);
    this.#size--;
    return env;
  }

  #grow(): void {
    if (this.#size < this.#ring.length) return;
    if (this.#ring === NO_RING) {
      // A power-of-two ring, so a position wraps with a mask rather than a division. It starts small
      // and doubles as messages queue: most mailboxes of keeping-up consumers stay small.
      let ring = 1;
      while (ring < Math.min(this.capacity, INITIAL_RING)) ring *= 2;
      this.#ring = new Array(ring);
      this.#head = 0;
      return;
    }
    // Unroll the ring into a larger array; capacity bounds growth except for redeliveries.
    const next: (Envelope | undefined)[] = new Array(this.#ring.length * 2);
    for (let i = 0; i < this.#size; i++) next[i] = this.#ring[(this.#head + i) & (this.#ring.length - 1)];
    this.#ring = next;
    this.#head = 0;
  }
}
