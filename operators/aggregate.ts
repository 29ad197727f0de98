import { approxDistinct } from './approxDistinct.ts';
import { quantiles } from './quantiles.ts';

/**
 * How a window folds its inputs into one value, incrementally: the window keeps one accumulator
 * (`A`) and never the inputs themselves, so its memory stays constant where the aggregate allows.
 * The shape of Flink's `AggregateFunction`.
 *
 * - `init()` makes the accumulator of a new window.
 * - `add(acc, data, eventTime)` folds one input in. It may update `acc` in place and return it, or
 *   return a new value (numbers, which cost no allocation). `eventTime` is the input's event time
 *   (for count windows, its event time or 0).
 * - `merge(a, b)` combines `b` into `a` when session windows merge; it may reuse and return `a`,
 *   and must leave `b` unchanged. Aggregates without it cannot be used by session windows.
 * - `result(acc)` is the value a firing emits. It must not change `acc` or share a mutable part of
 *   it: with allowed lateness the window keeps adding to `acc` after the result was emitted.
 * - `store(acc)` and `restore(stored)`: for an accumulator that is not plain data (a class
 *   instance, private fields), its plain form in a checkpoint record and back. A checkpoint writes
 *   accumulators as MessagePack, which keeps only own enumerable fields and no class.
 */
export interface Aggregate<T, A, R> {
  init(): A;
  add(acc: A, data: T, eventTime: number): A;
  merge?(a: A, b: A): A;
  result(acc: A): R;
  store?(acc: A): unknown;
  restore?(stored: unknown): A;
}

/** The accumulator of `agg.first` and `agg.last`. */
export interface PickAcc<V> {
  time: number;
  value: V | undefined;
  seen: boolean;
}

/** The accumulator of `agg.mean`. */
export interface MeanAcc {
  sum: number;
  n: number;
}

type AnyAggregate<T> = Aggregate<T, unknown, unknown>;
type ResultOf<G> = G extends { result(acc: never): infer R } ? R : never;

function identity<V>(value: unknown): V {
  return value as V;
}

/** Inputs in the window. */
function count(): Aggregate<unknown, number, number> {
  return COUNT;
}

const COUNT: Aggregate<unknown, number, number> = Object.freeze({
  init: () => 0,
  add: (acc: number) => acc + 1,
  merge: (a: number, b: number) => a + b,
  result: (acc: number) => acc,
});

/** Sum of the data (numbers), or of `select(data)`. */
function sum(): Aggregate<number, number, number>;
function sum<T>(select: (data: T) => number): Aggregate<T, number, number>;
function sum<T>(select: (data: T) => number = identity): Aggregate<T, number, number> {
  return {
    init: () => 0,
    add: (acc, data) => acc + select(data),
    merge: (a, b) => a + b,
    result: (acc) => acc,
  };
}

/** Smallest value; `Infinity` for a window with no inputs (which never fires). */
function min(): Aggregate<number, number, number>;
function min<T>(select: (data: T) => number): Aggregate<T, number, number>;
function min<T>(select: (data: T) => number = identity): Aggregate<T, number, number> {
  return {
    init: () => Number.POSITIVE_INFINITY,
    add: (acc, data) => {
      const v = select(data);
      return v < acc ? v : acc;
    },
    merge: (a, b) => (b < a ? b : a),
    result: (acc) => acc,
  };
}

/** Largest value. */
function max(): Aggregate<number, number, number>;
function max<T>(select: (data: T) => number): Aggregate<T, number, number>;
function max<T>(select: (data: T) => number = identity): Aggregate<T, number, number> {
  return {
    init: () => Number.NEGATIVE_INFINITY,
    add: (acc, data) => {
      const v = select(data);
      return v > acc ? v : acc;
    },
    merge: (a, b) => (b > a ? b : a),
    result: (acc) => acc,
  };
}

/** Arithmetic mean. */
function mean(): Aggregate<number, MeanAcc, number>;
function mean<T>(select: (data: T) => number): Aggregate<T, MeanAcc, number>;
function mean<T>(select: (data: T) => number = identity): Aggregate<T, MeanAcc, number> {
  return {
    init: () => ({ sum: 0, n: 0 }),
    add: (acc, data) => {
      acc.sum += select(data);
      acc.n++;
      return acc;
    },
    merge: (a, b) => {
      a.sum += b.sum;
      a.n += b.n;
      return a;
    },
    result: (acc) => (acc.n === 0 ? Number.NaN : acc.sum / acc.n),
  };
}

/** The value with the earliest event time (of equal times, the one that arrived first). */
function first<T>(): Aggregate<T, PickAcc<T>, T>;
function first<T, V>(select: (data: T) => V): Aggregate<T, PickAcc<V>, V>;
function first<T, V>(select: (data: T) => V = identity): Aggregate<T, PickAcc<V>, V> {
  return {
    init: () => ({ time: 0, value: undefined, seen: false }),
    add: (acc, data, time) => {
      if (!acc.seen || time < acc.time) {
        acc.time = time;
        acc.value = select(data);
        acc.seen = true;
      }
      return acc;
    },
    // Merged session windows never share an event time, so ties cannot arise here.
    merge: (a, b) => (b.seen && (!a.seen || b.time < a.time) ? b : a),
    result: (acc) => acc.value as V,
  };
}

/** The value with the latest event time (of equal times, the one that arrived last). */
function last<T>(): Aggregate<T, PickAcc<T>, T>;
function last<T, V>(select: (data: T) => V): Aggregate<T, PickAcc<V>, V>;
function last<T, V>(select: (data: T) => V = identity): Aggregate<T, PickAcc<V>, V> {
  return {
    init: () => ({ time: 0, value: undefined, seen: false }),
    add: (acc, data, time) => {
      if (!acc.seen || time >= acc.time) {
        acc.time = time;
        acc.value = select(data);
        acc.seen = true;
      }
      return acc;
    },
    merge: (a, b) => (b.seen && (!a.seen || b.time >= a.time) ? b : a),
    result: (acc) => acc.value as V,
  };
}

/**
 * Every value, in arrival order (merged session windows: earlier session first). Memory grows
 * with the window: the one built-in aggregate that keeps its inputs.
 */
function collect<T>(): Aggregate<T, T[], T[]>;
function collect<T, V>(select: (data: T) => V): Aggregate<T, V[], V[]>;
function collect<T, V>(select: (data: T) => V = identity): Aggregate<T, V[], V[]> {
  return {
    init: () => [],
    add: (acc, data) => {
      acc.push(select(data));
      return acc;
    },
    merge: (a, b) => {
      for (const v of b) a.push(v);
      return a;
    },
    // A copy: late inputs keep being added to `acc` after this result was emitted.
    result: (acc) => acc.slice(),
  };
}

/**
 * Several aggregates over the same window, with one result object: `{ views: count(), p: quantiles(...) }`
 * gives `{ views: number, p: { p50, p95, p99 } }`. Mergeable when every part is.
 */
function combine<T, S extends Record<string, AnyAggregate<T>>>(
  parts: S,
): Aggregate<T, unknown[], { [K in keyof S]: ResultOf<S[K]> }> {
  const names = Object.keys(parts);
  const list = names.map((n) => parts[n] as AnyAggregate<T>);
  const mergeable = list.every((p) => p.merge !== undefined);
  const agg: Aggregate<T, unknown[], { [K in keyof S]: ResultOf<S[K]> }> = {
    init: () => list.map((p) => p.init()),
    add: (acc, data, time) => {
      for (let i = 0; i < list.length; i++) acc[i] = (list[i] as AnyAggregate<T>).add(acc[i], data, time);
      return acc;
    },
    result: (acc) => {
      const out: Record<string, unknown> = {};
      for (let i = 0; i < list.length; i++) out[names[i] as string] = (list[i] as AnyAggregate<T>).result(acc[i]);
      return out as { [K in keyof S]: ResultOf<S[K]> };
    },
  };
  if (list.some((p) => p.store !== undefined)) {
    agg.store = (acc) => list.map((p, i) => (p.store === undefined ? acc[i] : p.store(acc[i])));
    agg.restore = (stored) =>
      list.map((p, i) => (p.restore === undefined ? (stored as unknown[])[i] : p.restore((stored as unknown[])[i])));
  }
  if (mergeable) {
    agg.merge = (a, b) => {
      for (let i = 0; i < list.length; i++) {
        const part = list[i] as AnyAggregate<T>;
        a[i] = (part.merge as (x: unknown, y: unknown) => unknown)(a[i], b[i]);
      }
      return a;
    };
  }
  return agg;
}

/**
 * The built-in aggregates, for the `aggregate` option of the window operators. Grouped in one
 * object so their names (`count`, `min`, `max`, `first`, `last`) do not clash with RxJS operators.
 *
 * @example tumbling({ name: 'views', sizeMs: 60_000, aggregate: agg.count() })
 * @example sliding({ name: 'latency', sizeMs: 60_000, slideMs: 10_000, aggregate: agg.quantiles((r: Req) => r.ms) })
 */
export const agg = Object.freeze({
  count,
  sum,
  min,
  max,
  mean,
  first,
  last,
  collect,
  combine,
  approxDistinct,
  quantiles,
});
