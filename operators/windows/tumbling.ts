import { OptionsError } from '../../runtime/errors.ts';
import { numberOption } from '../../runtime/options.ts';
import { timeWindowOperator } from './timeWindows.ts';
import { resolveWindowOptions, type WindowOperator, type WindowOptions } from './types.ts';

export interface TumblingOptions<T, A, R> extends WindowOptions<T, A, R> {
  /** Window length in event time, ms. */
  sizeMs: number;
  /**
   * Shifts the windows from the epoch: `sizeMs: 86_400_000, offsetMs: -8 * 3_600_000` gives days
   * that start at midnight UTC+8. `|offsetMs| < sizeMs`. @default 0
   */
  offsetMs?: number;
}

/**
 * Tumbling event-time windows: fixed, non-overlapping `[start, start + sizeMs)` aligned to the
 * epoch (plus `offsetMs`), so each input falls in exactly one,
 * `start = ts - ((ts - offsetMs) mod sizeMs)`, as Flink's `TumblingEventTimeWindows`.
 *
 * Input: envelopes and watermarks (`watermarks()` makes them). Per key (`env.key`, or one global
 * key with `keyed: false`), a window fires when the watermark reaches `end - 1`, emitting one
 * `Envelope<WindowResult<R>>` (key, start, end, value, idempotency key `name/key/start-end`,
 * `eventTime: end - 1`, and a lineage merging all the inputs it absorbed). With
 * `allowedLatenessMs`, later inputs re-emit it (`firing: 'late'`, `isUpdate: true`) until
 * `watermark >= end - 1 + allowedLatenessMs`; inputs after that go to `late` with the reason.
 * The input's completion fires every window still open (the end of event time), then completes.
 *
 * Settlement: an input's lineage is absorbed when it enters a window and given back once that
 * window is purged, after its last result was emitted; downstream holds the result's merged
 * lineage, so inputs settle only when the window's results are settled (docs/settlement.md).
 * On an error or an unsubscribe the state is dropped without settling what it held: the actor
 * replays those inputs into the restarted pipeline. `stats()` tells the state held now.
 * Order: results in watermark order; results for one window in the order they were emitted.
 * docs/windows.md has the full semantics and where they differ from Flink.
 *
 *     in:    --a@3--b@12--c@7--w(9)--d@15--w(19)--|
 *     out:   --------------------R[0,10)-------R[10,20)|   tumbling({ sizeMs: 10, aggregate: agg.count() })
 *                                 (a, c: 2)      (b, d: 2)
 *
 * @example
 * clicks$.pipe(
 *   eventTime((c) => c.ts), keyBy((c) => c.page), watermarks({ maxOutOfOrdernessMs: 2_000 }),
 *   tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count() }),
 * )
 * @see sliding, session, countWindow, watermarks, agg
 */
export function tumbling<T, A, R>(options: TumblingOptions<T, A, R>): WindowOperator<T, R> {
  const resolved = resolveWindowOptions('tumbling', options);
  const sizeMs = numberOption('tumbling.sizeMs', options.sizeMs, Number.NaN, Number.MIN_VALUE);
  const offsetMs = numberOption('tumbling.offsetMs', options.offsetMs, 0, Number.NEGATIVE_INFINITY);
  if (Math.abs(offsetMs) >= sizeMs)
    throw new OptionsError('tumbling.offsetMs', `must be > -sizeMs and < sizeMs (${sizeMs})`, offsetMs);
  return timeWindowOperator(resolved, { kind: 'aligned', sizeMs, slideMs: sizeMs, offsetMs });
}
