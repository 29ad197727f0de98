import { numberOption } from '../../runtime/options.ts';
import { timeWindowOperator } from './timeWindows.ts';
import { resolveWindowOptions, type WindowOperator, type WindowOptions } from './types.ts';

export interface SessionOptions<T, A, R> extends WindowOptions<T, A, R> {
  /** Inactivity that ends a session, in event time, ms: inputs at most `gapMs` apart share one. */
  gapMs: number;
}

/**
 * Session windows: per key, bursts of activity separated by at least `gapMs` of event time, as
 * Flink's `EventTimeSessionWindows`. Each input opens `[ts, ts + gapMs)`; windows that overlap or
 * just touch merge (so inputs exactly `gapMs` apart share a session), and an input that bridges
 * two sessions merges them, their accumulators combined with the aggregate's `merge` (required).
 * A session ends at its last input's time plus `gapMs` and fires when the watermark reaches
 * `end - 1`.
 *
 * Lateness is judged on the merged window, as Flink does: an input whose own window is past the
 * allowed lateness still joins a session it touches that is still open. When a session that
 * already emitted grows or merges, its bounds (and so its idempotency key) change: the next
 * result lists the keys it replaces in `supersedes`, so a sink can delete them.
 *
 *     in:    --a@1--b@4--w(8)--c@20--w(40)-----------|
 *     out:   -------------------------R[1,14) R[20,30)|   session({ gapMs: 10, aggregate: agg.count() })
 *                                     (a, b)  (c)
 *
 * Firing, late data, results and settlement are otherwise those of `tumbling`.
 *
 * @example session({ name: 'user-sessions', gapMs: 30 * 60_000, aggregate: agg.combine({ views: agg.count(), first: agg.first() }) })
 * @see tumbling
 */
export function session<T, A, R>(options: SessionOptions<T, A, R>): WindowOperator<T, R> {
  const resolved = resolveWindowOptions('session', options, true);
  const gapMs = numberOption('session.gapMs', options.gapMs, Number.NaN, Number.MIN_VALUE);
  return timeWindowOperator(resolved, { kind: 'session', gapMs });
}
