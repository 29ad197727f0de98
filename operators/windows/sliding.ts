import { OptionsError } from '../../runtime/errors.ts';
import { numberOption } from '../../runtime/options.ts';
import { timeWindowOperator } from './timeWindows.ts';
import { resolveWindowOptions, type WindowOperator, type WindowOptions } from './types.ts';

export interface SlidingOptions<T, A, R> extends WindowOptions<T, A, R> {
  /** Window length in event time, ms. */
  sizeMs: number;
  /** How far apart windows start, ms; `slideMs < sizeMs` makes them overlap. */
  slideMs: number;
  /** Shifts the windows from the epoch; `|offsetMs| < slideMs`. @default 0 */
  offsetMs?: number;
}

/**
 * Sliding (hopping) event-time windows: `[start, start + sizeMs)` starting every `slideMs`,
 * aligned to the epoch (plus `offsetMs`), as Flink's `SlidingEventTimeWindows`. An input belongs
 * to every window that contains it: `sizeMs / slideMs` of them when `slideMs` divides `sizeMs`,
 * none when `slideMs > sizeMs` and it falls in a gap (it then goes to `late`, reason `no-window`).
 * Each window aggregates its inputs on its own, so an input costs one `add` per window.
 *
 * Firing, lateness, late data, results and settlement are those of `tumbling`; an input within
 * the allowed lateness of some of its windows but past that of others goes to the open ones only,
 * and to `late` only when none is open.
 *
 *     in:    --a@3--b@7--w(9)----------------c@12--w(14)-------|
 *     out:   ------------R[-5,5) R[0,10)-----------R[5,15)---R[10,20)|   sliding({ sizeMs: 10, slideMs: 5, aggregate: agg.count() })
 *                        (a)     (a, b)             (b, c)    (c)
 *
 * @example sliding({ name: 'latency', sizeMs: 60_000, slideMs: 10_000, aggregate: agg.mean((r: Req) => r.ms) })
 * @see tumbling, session
 */
export function sliding<T, A, R>(options: SlidingOptions<T, A, R>): WindowOperator<T, R> {
  const resolved = resolveWindowOptions('sliding', options);
  const sizeMs = numberOption('sliding.sizeMs', options.sizeMs, Number.NaN, Number.MIN_VALUE);
  const slideMs = numberOption('sliding.slideMs', options.slideMs, Number.NaN, Number.MIN_VALUE);
  const offsetMs = numberOption('sliding.offsetMs', options.offsetMs, 0, Number.NEGATIVE_INFINITY);
  if (Math.abs(offsetMs) >= slideMs)
    throw new OptionsError('sliding.offsetMs', `must be > -slideMs and < slideMs (${slideMs})`, offsetMs);
  return timeWindowOperator(resolved, { kind: 'aligned', sizeMs, slideMs, offsetMs });
}
