import { OptionsError } from '../runtime/errors.ts';
import { intOption } from '../runtime/options.ts';
import type { Aggregate } from './aggregate.ts';

/** What `agg.approxDistinct` can count: values are told apart by type and value (`1` is not `'1'`). */
export type Distinctable = string | number | bigint | boolean;

export interface ApproxDistinctOptions {
  /**
   * `2^precision` registers: the standard error is `1.04 / sqrt(2^precision)` (1.6% at 12,
   * 0.8% at 14) and a window past the exact phase holds `2^precision` bytes. 4 to 16.
   * @default 12
   */
  precision?: number;
}

export const DEFAULT_APPROX_DISTINCT_OPTIONS = Object.freeze({ precision: 12 });

/**
 * Approximate number of distinct values: HyperLogLog (Flajolet, Fusy, Gandouet, Meunier 2007)
 * over a 32-bit MurmurHash3, with its small-range (linear counting) and large-range corrections.
 * Up to `2^precision / 32` distinct values a window keeps their hashes and counts them exactly
 * (barring hash collisions), so small windows stay small; past that it switches to the registers.
 * Accurate to about 1e8 distinct values, where 32-bit hash collisions start to show. Mergeable.
 *
 * @example tumbling({ name: 'visitors', sizeMs: 60_000, aggregate: agg.approxDistinct((v: View) => v.userId) })
 */
export function approxDistinct(options?: ApproxDistinctOptions): Aggregate<Distinctable, HyperLogLog, number>;
export function approxDistinct<T>(
  select: (data: T) => Distinctable,
  options?: ApproxDistinctOptions,
): Aggregate<T, HyperLogLog, number>;
export function approxDistinct<T>(
  selectOrOptions?: ((data: T) => Distinctable) | ApproxDistinctOptions,
  maybeOptions?: ApproxDistinctOptions,
): Aggregate<T, HyperLogLog, number> {
  const select = typeof selectOrOptions === 'function' ? selectOrOptions : undefined;
  const options = (typeof selectOrOptions === 'function' ? maybeOptions : selectOrOptions) ?? {};
  const p = intOption('approxDistinct.precision', options.precision, DEFAULT_APPROX_DISTINCT_OPTIONS.precision, 4);
  if (p > 16) throw new OptionsError('approxDistinct.precision', 'must be an integer >= 4 and <= 16', p);
  return {
    init: () => new HyperLogLog(p),
    add: (acc, data) => {
      acc.add(hash(select === undefined ? (data as Distinctable) : select(data)));
      return acc;
    },
    merge: (a, b) => a.merge(b),
    result: (acc) => acc.estimate(),
    // Its state is in private fields, which a checkpoint record would not keep.
    store: (acc) => acc.toStored(),
    restore: (stored) => HyperLogLog.fromStored(stored as StoredHyperLogLog),
  };
}

/** A HyperLogLog as plain data, for a checkpoint record: its exact hashes, or its registers. */
export interface StoredHyperLogLog {
  readonly p: number;
  readonly exact: number[] | null;
  readonly registers: Uint8Array | null;
}

/** The accumulator of `agg.approxDistinct`. */
export class HyperLogLog {
  readonly p: number;
  readonly m: number;
  #exact: Set<number> | undefined = new Set();
  #registers: Uint8Array | undefined = undefined;

  constructor(p: number) {
    this.p = p;
    this.m = 1 << p;
  }

  /** Adds a 32-bit hash. */
  add(h: number): void {
    if (this.#exact !== undefined) {
      this.#exact.add(h);
      if (this.#exact.size > this.m >>> 5) this.#densify();
      return;
    }
    this.#set(h);
  }

  merge(other: HyperLogLog): HyperLogLog {
    if (other.p !== this.p) throw new RangeError(`cannot merge HyperLogLog of precision ${other.p} into ${this.p}`);
    const exact = other.#exact;
    if (exact !== undefined) {
      for (const h of exact) this.add(h);
      return this;
    }
    if (this.#registers === undefined) this.#densify();
    const mine = this.#registers as Uint8Array;
    const theirs = other.#registers as Uint8Array;
    for (let i = 0; i < mine.length; i++)
      if ((theirs[i] as number) > (mine[i] as number)) mine[i] = theirs[i] as number;
    return this;
  }

  toStored(): StoredHyperLogLog {
    const exact = this.#exact;
    return {
      p: this.p,
      exact: exact === undefined ? null : [...exact],
      registers: exact === undefined ? (this.#registers as Uint8Array) : null,
    };
  }

  static fromStored(stored: StoredHyperLogLog): HyperLogLog {
    const hll = new HyperLogLog(stored.p);
    if (stored.registers !== null) {
      hll.#exact = undefined;
      hll.#registers = Uint8Array.from(stored.registers);
    } else for (const h of stored.exact ?? []) hll.add(h);
    return hll;
  }

  estimate(): number {
    if (this.#exact !== undefined) return this.#exact.size;
    const registers = this.#registers as Uint8Array;
    const m = this.m;
    let sum = 0;
    let zeros = 0;
    for (let i = 0; i < m; i++) {
      const r = registers[i] as number;
      sum += 2 ** -r;
      if (r === 0) zeros++;
    }
    const alpha = m >= 128 ? 0.7213 / (1 + 1.079 / m) : m === 64 ? 0.709 : m === 32 ? 0.697 : 0.673;
    let e = (alpha * m * m) / sum;
    if (e <= 2.5 * m) {
      if (zeros > 0) e = m * Math.log(m / zeros);
    } else if (e > TWO_32 / 30) {
      e = -TWO_32 * Math.log(1 - e / TWO_32);
    }
    return Math.round(e);
  }

  #densify(): void {
    this.#registers = new Uint8Array(this.m);
    const exact = this.#exact;
    this.#exact = undefined;
    if (exact !== undefined) for (const h of exact) this.#set(h);
  }

  #set(h: number): void {
    const p = this.p;
    const index = h >>> (32 - p);
    const rest = (h << p) >>> 0;
    const maxRank = 32 - p + 1;
    const rank = rest === 0 ? maxRank : Math.min(Math.clz32(rest) + 1, maxRank);
    const registers = this.#registers as Uint8Array;
    if (rank > (registers[index] as number)) registers[index] = rank;
  }
}

const TWO_32 = 2 ** 32;
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);

/** MurmurHash3 (x86, 32-bit) of a value; strings by UTF-16 code unit pairs, numbers by their bits. */
function hash(value: Distinctable): number {
  switch (typeof value) {
    case 'string':
      return hashString(value, 0x9747b28c);
    case 'number':
      f64[0] = value === 0 ? 0 : value; // -0 and 0 are one value
      return mix2(u32[0] as number, u32[1] as number, 0x3c6ef372);
    case 'boolean':
      return mix2(value ? 1 : 0, 0, 0x5be0cd19);
    case 'bigint':
      return hashString(value.toString(), 0x1f83d9ab);
    default:
      // Every object would hash as '[object Object]' (counted as one value), undefined would throw
      // a bare TypeError: neither names what is wrong with the input.
      throw new OptionsError(
        'approxDistinct.value',
        'a value to count must be a string, number, bigint or boolean',
        value as unknown,
      );
  }
}

function hashString(s: string, seed: number): number {
  let h = seed;
  const n = s.length;
  let i = 0;
  for (; i + 1 < n; i += 2) h = round(h, s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16));
  if (i < n) h ^= scramble(s.charCodeAt(i));
  return fmix(h ^ (n * 2));
}

function mix2(a: number, b: number, seed: number): number {
  return fmix(round(round(seed, a), b) ^ 8);
}

function scramble(k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, 0x1b873593);
}

function round(h: number, k: number): number {
  h ^= scramble(k);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
