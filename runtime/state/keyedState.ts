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
  }

  delete(key: string): void {
    this.#checkKey(key);
    this.#pending.set(key, DELETED);
  }

  /** Moves the pending writes into a checkpoint's batch; they stay readable until `committed()`. */
  take(put: (key: string, value: unknown) => void, remove: (key: string) => void): void {
    for (const [key, value] of this.#pending) {
      if (value === DELETED) remove(key);
      else put(key, value);
    }
    this.#committing = this.#pending;
    this.#pending = new Map();
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
