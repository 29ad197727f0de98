import { OptionsError } from './errors.ts';

/** Checks `value` (or the default, when undefined) as an integer >= `min`. */
export function intOption(name: string, value: number | undefined, fallback: number, min = 0): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min) throw new OptionsError(name, `must be an integer >= ${min}`, v);
  return v;
}

/** Checks `value` (or the default) as a finite number >= `min`; `Infinity` only when `allowInfinity`. */
export function numberOption(
  name: string,
  value: number | undefined,
  fallback: number,
  min = 0,
  allowInfinity = false,
): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || Number.isNaN(v) || v < min || (!allowInfinity && !Number.isFinite(v))) {
    throw new OptionsError(name, `must be a ${allowInfinity ? '' : 'finite '}number >= ${min}`, v);
  }
  return v;
}

/** Checks `value` (or the default) against the allowed members of a union. */
export function oneOf<T extends string>(name: string, value: T | undefined, allowed: readonly T[], fallback: T): T {
  const v = value ?? fallback;
  if (!allowed.includes(v))
    throw new OptionsError(name, `must be one of ${allowed.map((a) => `'${a}'`).join(', ')}`, v);
  return v;
}
