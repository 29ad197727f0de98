import { DDSketch } from '@datadog/sketches-js';
import { OptionsError } from '../runtime/errors.ts';
import { numberOption } from '../runtime/options.ts';
import type { Aggregate } from './aggregate.ts';

export interface QuantilesOptions {
  /** The quantiles to report, each in [0, 1]; result fields are named `p50`, `p95`, `p99.9`. @default [0.5, 0.95, 0.99] */
  quantiles?: readonly number[];
  /**
   * Relative accuracy: a reported quantile is within this fraction of the true value, of the
   * input at rank `floor(q * (n - 1))`. @default 0.01
   */
  relativeAccuracy?: number;
}

export const DEFAULT_QUANTILES_OPTIONS = Object.freeze({
  quantiles: Object.freeze([0.5, 0.95, 0.99]),
  relativeAccuracy: 0.01,
});

/**
 * The state `agg.quantiles` keeps per window: a DDSketch and the smallest and largest value seen.
 * The sketch itself stays private, so that the package's types do not depend on the library's.
 */
export class QuantileSketch {
  readonly #sketch: DDSketch;
  /** Values added. */
  count = 0;
  /** The smallest value added (`Infinity` while empty). */
  min = Number.POSITIVE_INFINITY;
  /** The largest value added (`-Infinity` while empty). */
  max = Number.NEGATIVE_INFINITY;

  constructor(relativeAccuracy: number) {
    this.#sketch = new DDSketch({ relativeAccuracy });
  }

  add(value: number): void {
    // DDSketch counts NaN as nothing in particular and fails on an infinity with a bare
    // RangeError; the input that brought it should be dead-lettered with the reason instead.
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new OptionsError('quantiles.value', 'a value to rank must be a finite number', value);
    this.#sketch.accept(value);
    this.count++;
    if (value < this.min) this.min = value;
    if (value > this.max) this.max = value;
  }

  merge(other: QuantileSketch): void {
    this.#sketch.merge(other.#sketch);
    this.count += other.count;
    if (other.min < this.min) this.min = other.min;
    if (other.max > this.max) this.max = other.max;
  }

  /** @internal Buckets allocated, to check memory in tests. */
  /** Plain data for a checkpoint record: the sketch in its protobuf form, and the exact summary. */
  toStored(): StoredQuantileSketch {
    return { sketch: this.#sketch.toProto(), count: this.count, min: this.min, max: this.max };
  }

  static fromStored(stored: StoredQuantileSketch, relativeAccuracy: number): QuantileSketch {
    const q = new QuantileSketch(relativeAccuracy);
    q.#sketch.merge(DDSketch.fromProto(Uint8Array.from(stored.sketch)));
    q.count = stored.count;
    q.min = stored.min;
    q.max = stored.max;
    return q;
  }

  get bins(): number {
    return this.#sketch.store.bins.length;
  }

  /**
   * The value at quantile `q`, within the relative accuracy, clamped to the values seen: a
   * bucket's representative value can lie just outside them (a window of equal values would
   * otherwise report a p50 that no input had).
   */
  quantile(q: number): number {
    const v = this.#sketch.getValueAtQuantile(q);
    if (v < this.min) return this.min;
    if (v > this.max) return this.max;
    return v;
  }
}

/** Quantiles by name: `{ p50, p95, p99 }` for the default quantiles. */
/** A `QuantileSketch` as plain data, for a checkpoint record. */
export interface StoredQuantileSketch {
  readonly sketch: Uint8Array;
  readonly count: number;
  readonly min: number;
  readonly max: number;
}

export type QuantileValues = Readonly<Record<string, number>>;

/**
 * Approximate quantiles (p50, p95, p99 by default) with a relative-error guarantee: DDSketch
 * (Masson, Rim, Lee, VLDB 2019), from Datadog's `@datadog/sketches-js`. Memory per window does
 * not grow with the number of inputs, only with the spread of their values: one bucket (a number)
 * per factor `(1 + a) / (1 - a)` between the smallest and the largest, about 1,000 buckets for
 * values from 0.001 to 1,000,000 at 1%. Sketches merge exactly, so session windows keep the
 * guarantee. Works for negative values and zero too. (The library's collapsing variants, which
 * cap the buckets, return wrong high quantiles once they collapse, so they are not used.)
 *
 * @example tumbling({ name: 'latency', sizeMs: 60_000, aggregate: agg.quantiles((r: Req) => r.ms) })
 *          // value: { p50: 12.1, p95: 48.3, p99: 97.0 }
 */
export function quantiles(options?: QuantilesOptions): Aggregate<number, QuantileSketch, QuantileValues>;
export function quantiles<T>(
  select: (data: T) => number,
  options?: QuantilesOptions,
): Aggregate<T, QuantileSketch, QuantileValues>;
export function quantiles<T>(
  selectOrOptions?: ((data: T) => number) | QuantilesOptions,
  maybeOptions?: QuantilesOptions,
): Aggregate<T, QuantileSketch, QuantileValues> {
  const select = typeof selectOrOptions === 'function' ? selectOrOptions : undefined;
  const options = (typeof selectOrOptions === 'function' ? maybeOptions : selectOrOptions) ?? {};
  const qs = options.quantiles ?? DEFAULT_QUANTILES_OPTIONS.quantiles;
  if (!Array.isArray(qs) || qs.length === 0 || qs.some((q) => typeof q !== 'number' || !(q >= 0 && q <= 1))) {
    throw new OptionsError('quantiles.quantiles', 'must be a non-empty list of numbers in [0, 1]', qs);
  }
  const relativeAccuracy = numberOption(
    'quantiles.relativeAccuracy',
    options.relativeAccuracy,
    DEFAULT_QUANTILES_OPTIONS.relativeAccuracy,
    Number.MIN_VALUE,
  );
  if (relativeAccuracy >= 1)
    throw new OptionsError('quantiles.relativeAccuracy', 'must be > 0 and < 1', relativeAccuracy);
  const names = qs.map((q) => `p${+(q * 100).toFixed(6)}`);
  return {
    init: () => new QuantileSketch(relativeAccuracy),
    add: (acc, data) => {
      acc.add(select === undefined ? (data as number) : select(data));
      return acc;
    },
    merge: (a, b) => {
      a.merge(b);
      return a;
    },
    // Its sketch is in a private field, which a checkpoint record would not keep.
    store: (acc) => acc.toStored(),
    restore: (stored) => QuantileSketch.fromStored(stored as StoredQuantileSketch, relativeAccuracy),
    result: (acc) => {
      const out: Record<string, number> = {};
      for (let i = 0; i < qs.length; i++) out[names[i] as string] = acc.quantile(qs[i] as number);
      return out;
    },
  };
}
