import { messageOf, StateError } from '../errors.ts';
import { encodeRecord } from '../store/record.ts';
import type { Store } from '../store/types.ts';

/**
 * An actor's keyed state (`ctx.state`), kept in the runtime's store and committed at the actor's
 * checkpoints, together with the source positions it reflects. Reads see the actor's own writes
 * at once; the writes reach the disk with the next checkpoint. Values are stored as MessagePack:
 * plain data (objects, arrays, strings, numbers, big integers, dates, binary), not class instances.
 */
export interface KeyedState {
  get<T = unknown>(key: string): T | undefined;
  has(key: string): boolean;
  put<T = unknown>(key: string, value: T): void;
  delete(key: string): void;
}

/** The store namespace of an actor's keyed state. */
export function stateNamespace(actor: string): string {
  return `sluice.state/${actor}`;
}

/** Marks a key deleted since the last checkpoint. */
const DELETED: unique symbol = Symbol('deleted');
type Pending = unknown | typeof DELETED;
/** A key that had no pending write before an attempt wrote it. */
const ABSENT: unique symbol = Symbol('absent');

/**
 * @internal The state as one attempt at an input sees it: the same reads and writes, and
 * `discard()` to take back what the attempt wrote when it fails. A retry then starts from the
 * state without it, and a dead-lettered input leaves none of its writes in the checkpoint.
 */
export interface StateAttempt extends KeyedState {
  discard(): void;
}

/**
 * @internal Keyed state over a store namespace: writes wait in `pending` until a checkpoint takes
 * them (into `committing`, which reads still see until its commit resolves).
 */
export class StoreState implements KeyedState {
  readonly namespace: string;
  readonly #store: Store;
  readonly #actor: string;
  #pending = new Map<string, Pending>();
  #committing: Map<string, Pending> | undefined = undefined;
  /** Per key written since the last checkpoint, which write was last: a failed attempt takes back only its own. */
  #versions = new Map<string, number>();
  #version = 0;

  constructor(store: Store, actor: string) {
    this.#store = store;
    this.#actor = actor;
    this.namespace = stateNamespace(actor);
  }

  get dirty(): boolean {
    return this.#pending.size > 0;
  }

  /** Writes waiting for the next checkpoint. */
  get size(): number {
    return this.#pending.size;
  }

  get<T = unknown>(key: string): T | undefined {
    this.#checkKey(key);
    let v = this.#pending.get(key);
    if (v === undefined && this.#committing !== undefined) v = this.#committing.get(key);
    if (v === DELETED) return undefined;
    if (v !== undefined) return v as T;
    return this.#store.getKey(this.namespace, key) as T | undefined;
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  put<T = unknown>(key: string, value: T): void {
    this.#checkKey(key);
    if (value === undefined) {
      throw new StateError(this.#actor, `put '${key}': the value is undefined; use delete() to remove a key`);
    }
    try {
      // Checked now, so a value the store cannot hold fails its input instead of a checkpoint.
      encodeRecord(value);
    } catch (error) {
      throw new StateError(this.#actor, `put '${key}': the value cannot be stored: ${messageOf(error)}`);
    }
    this.#pending.set(key, value);
    this.#versions.set(key, ++this.#version);
  }

  delete(key: string): void {
    this.#checkKey(key);
    this.#pending.set(key, DELETED);
    this.#versions.set(key, ++this.#version);
  }

  /**
   * A view for one attempt at an input. Its writes go to the state at once (later inputs read
   * them), and `discard()` restores what each key held before, unless a later write of another
   * attempt replaced it since: that one is kept.
   */
  attempt(): StateAttempt {
    // Per key: what was pending before the attempt's first write, and the version of its last.
    const before = new Map<string, { readonly prior: Pending | typeof ABSENT; version: number }>();
    const record = (key: string, prior: Pending | typeof ABSENT) => {
      const version = this.#versions.get(key) as number;
      const held = before.get(key);
      if (held === undefined) before.set(key, { prior, version });
      else held.version = version;
    };
    return {
      get: <T = unknown>(key: string) => this.get<T>(key),
      has: (key) => this.has(key),
      put: (key, value) => {
        const prior = this.#pending.has(key) ? this.#pending.get(key) : ABSENT;
        this.put(key, value);
        record(key, prior);
      },
      delete: (key) => {
        const prior = this.#pending.has(key) ? this.#pending.get(key) : ABSENT;
        this.delete(key);
        record(key, prior);
      },
      discard: () => {
        for (const [key, { prior, version }] of before) {
          // Taken by a checkpoint meanwhile (versions start afresh) or written by another attempt.
          if (this.#versions.get(key) !== version) continue;
          if (prior === ABSENT) {
            this.#pending.delete(key);
            this.#versions.delete(key);
          } else {
            this.#pending.set(key, prior);
            this.#versions.set(key, ++this.#version);
          }
        }
        before.clear();
      },
    };
  }

  /** Moves the pending writes into a checkpoint's batch; they stay readable until `committed()`. */
  take(put: (key: string, value: unknown) => void, remove: (key: string) => void): void {
    for (const [key, value] of this.#pending) {
      if (value === DELETED) remove(key);
      else put(key, value);
    }
    this.#committing = this.#pending;
    this.#pending = new Map();
    this.#versions = new Map();
  }

  committed(): void {
    this.#committing = undefined;
  }

  #checkKey(key: string): void {
    if (typeof key !== 'string' || key.length === 0) {
      throw new StateError(this.#actor, `the key must be a non-empty string, got ${String(key)}`);
    }
  }
}

/** @internal `ctx.state` of an actor with no checkpoint: every use says what is missing. */
export function unavailableState(actor: string): KeyedState {
  const refuse = (): never => {
    throw new StateError(
      actor,
      'ctx.state needs a checkpoint: give the actor `checkpoint: { intervalMs }` and the runtime a `store`',
    );
  };
  return Object.freeze({ get: refuse, has: refuse, put: refuse, delete: refuse });
}
