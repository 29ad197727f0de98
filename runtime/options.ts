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

/**
 * The keys of an options type (`keyof Options`), as a set. Written out as a record of those keys, so the
 * compiler fails when an option is added to the type and not here (it would be refused as unknown).
 */
export function optionKeys<K extends string>(keys: { readonly [P in K]: true }): ReadonlySet<string> {
  return new Set(Object.keys(keys));
}

/**
 * Refuses keys of `value` that are not options (a typo such as `maxInflight` or `capacty`, which
 * JavaScript would otherwise ignore in silence), naming the option path and suggesting the closest
 * known key. `value` must be an object (or undefined, for options left out).
 */
export function knownKeys(path: string, value: unknown, known: ReadonlySet<string>): void {
  if (value === undefined) return;
  optionsObject(path, value);
  for (const key of Object.keys(value)) {
    if (known.has(key)) continue;
    const near = closest(key, known);
    throw new OptionsError(
      `${path}.${key}`,
      `'${key}' is not an option${near === undefined ? '' : `; did you mean '${near}'?`} (known: ${[...known].join(', ')})`,
      (value as Record<string, unknown>)[key],
    );
  }
}

/** Refuses options given as anything but an object (or undefined, for options left out). */
export function optionsObject(path: string, value: unknown): asserts value is object | undefined {
  if (value !== undefined && (typeof value !== 'object' || value === null || Array.isArray(value))) {
    throw new OptionsError(path, 'must be an object of options', value);
  }
}

/** The known key a typo most likely meant: same letters in another case, a part of it, or a few edits away. */
function closest(key: string, known: ReadonlySet<string>): string | undefined {
  const k = key.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(k.length / 3)) + 1;
  for (const candidate of known) {
    const c = candidate.toLowerCase();
    const d = c === k ? 0 : k.length >= 4 && (c.includes(k) || k.includes(c)) ? 1 : editDistance(k, c);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  // Option keys are short: one row of the Levenshtein table is enough.
  if (Math.abs(a.length - b.length) > 3) return Number.POSITIVE_INFINITY;
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(
        (row[j] as number) + 1,
        (next[j - 1] as number) + 1,
        (row[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    row = next;
  }
  return row[b.length] as number;
}
