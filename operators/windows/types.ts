import { Observable, type Observer, type OperatorFunction } from 'rxjs';
import { activeProbes, finiteOrNull } from '../../runtime/actors/operatorProbes.ts';
import { type Clock, systemClock } from '../../runtime/clock.ts';
import type { Envelope } from '../../runtime/envelope.ts';
import { messageOf, OptionsError, SluiceError } from '../../runtime/errors.ts';
import { intOption, numberOption } from '../../runtime/options.ts';
import type { Aggregate } from '../aggregate.ts';
import type { Timed } from '../watermarks.ts';

export const firings = ['early', 'on-time', 'late', 'partial', 'final'] as const;
/**
 * Why a result was emitted:
 * - `early`: before the watermark reached the window's end (an early trigger);
 * - `on-time`: the watermark reached the end (`watermark >= end - 1`), or a count window filled;
 * - `late`: an input arrived after that but within the allowed lateness;
 * - `partial`: a count window flushed, not full, because its input completed;
 * - `final`: a time window flushed because its input completed (the end of event time) before
 *   the watermark reached its end: it holds what arrived, and nothing more will.
 */
export type Firing = (typeof firings)[number];

export const lateReasons = ['beyond-allowed-lateness', 'missing-event-time', 'no-window'] as const;
/**
 * Why an input went to the late-data side output instead of a window:
 * - `beyond-allowed-lateness`: every window it belongs to is past `end - 1 + allowedLatenessMs`;
 * - `missing-event-time`: it has no event time (or NaN, or an infinity);
 * - `no-window`: it falls between sliding windows (`slideMs > sizeMs`), so no window takes it;
 *   Flink drops such inputs silently unless they are late.
 */
export type LateReason = (typeof lateReasons)[number];

/** Headers set on window results and on late data. */
export const WINDOW_HEADERS = Object.freeze({
  /** A result's idempotency key, `name/key/start-end`: a sink keeps one result per key. */
  idempotencyKey: 'sluice-idempotency-key',
  /** Late data: its `LateReason`. */
  lateReason: 'sluice-late-reason',
  /** Late data: the watermark when it arrived. */
  lateWatermark: 'sluice-late-watermark',
  /** Late data: the name of the window operator that turned it away. */
  window: 'sluice-window',
});

/** The data of a window result envelope. */
export interface WindowResult<R> {
  /** The window's key (`env.key` of its inputs); `undefined` for global windows. */
  readonly key: string | undefined;
  /** Inclusive start: epoch ms for time windows, the first input's index (per key, from 0) for count windows. */
  readonly start: number;
  /** Exclusive end. */
  readonly end: number;
  readonly value: R;
  /** Inputs in the window. */
  readonly count: number;
  readonly firing: Firing;
  /**
   * The watermark the operator had seen when the result fired: for `on-time` results, the one
   * that passed `end - 1`; `Infinity` for `final` results (the end of the input). Count windows,
   * which ignore watermarks, give the last one that went through them (`-Infinity` if none).
   */
  readonly watermark: number;
  /** Whether an earlier result was emitted for this window (or for windows merged into it). */
  readonly isUpdate: boolean;
  /** How many results were emitted for this window (and windows merged into it) before this one. */
  readonly revision: number;
  /** `name/key/start-end`; the same for every revision of a window, and on a replay. */
  readonly idempotencyKey: string;
  /**
   * Session windows: the idempotency keys of earlier results that this one replaces, because the
   * window they were emitted for grew or merged into this one. `undefined` when none.
   */
  readonly supersedes: readonly string[] | undefined;
}

/** The state a window operator holds now: bounded by what is open. */
export interface WindowStats {
  /** Keys with at least one open window (count windows: keys with a partial window). */
  readonly keys: number;
  /**
   * Keys whose windows all closed, still remembered because a key usually opens its next window
   * soon; forgotten after at most two window lengths (plus lateness) of event time without one.
   * Count windows: keys seen (their input counters).
   */
  readonly idleKeys: number;
  readonly openWindows: number;
  /** Input references held in window state (absorbed lineages), released as windows close. */
  readonly absorbed: number;
  /** The watermark the operator has seen (`-Infinity` before the first; count windows ignore it). */
  readonly watermark: number;
  /** Results emitted since the operator was made. */
  readonly results: number;
  /** Inputs sent to the late-data side output since the operator was made. */
  readonly late: number;
}

/**
 * A window operator: an RxJS operator from a timed stream (envelopes and watermarks) to window
 * results, with `stats()` to watch its state (summed over its live subscriptions).
 */
export type WindowOperator<T, R> = OperatorFunction<Timed<T>, Envelope<WindowResult<R>>> & {
  stats(): WindowStats;
};

/** Early results, before the watermark closes a window. Both may be set. */
export interface EarlyFiring {
  /** Emit a window's result after every N inputs it got since its last result. */
  everyEvents?: number;
  /**
   * Emit the result of every window that got inputs since its last result, every `everyMs` of
   * processing time (on the `clock`, aligned to multiples of `everyMs`).
   */
  everyMs?: number;
}

/** Options shared by the event-time windows (`tumbling`, `sliding`, `session`). */
export interface WindowOptions<T, A, R> {
  /**
   * The actor or job this window belongs to: the first part of each result's idempotency key
   * `name/key/start-end`, so that two jobs writing to one sink never share keys. Non-empty, no `/`.
   */
  name: string;
  /** How inputs fold into a result: `agg.count()`, `agg.mean(...)`, or your own `{ init, add, merge, result }`. */
  aggregate: Aggregate<T, A, R>;
  /** Group by `env.key` (keyed windows); `false` puts every input in one global window per time range. @default true */
  keyed?: boolean;
  /**
   * How long after its end (in event time) a window still takes inputs: each late input
   * re-emits the window's result, marked `firing: 'late'`, `isUpdate: true`. The window's state
   * and its inputs' references are kept until `watermark >= end - 1 + allowedLatenessMs`.
   * @default 0
   */
  allowedLatenessMs?: number;
  /**
   * The late-data side output: gets each input that no open window takes, a copy with the reason
   * in its headers (`WINDOW_HEADERS`). To publish it, return the forward:
   * `(env) => ctx.bus.forward({ ...env, subject: 'clicks.late' })`. A promise it returns holds the
   * input until it settles, and a rejected one (the bus refused it: permissions, a full `fail`
   * mailbox) fails the input, which the actor retries or dead-letters; any other return value is
   * ignored. Other asynchronous work must `hold(env.lineage)` itself. Without this option, such an input fails with a
   * `LateDataError`, which the actor dead-letters with the reason: late data is never dropped
   * silently.
   * @default fail the input with LateDataError
   */
  late?: (env: Envelope<T>, reason: LateReason) => void;
  /** Early firings; none by default (one result per window when the watermark passes its end). */
  early?: EarlyFiring;
  /** Processing time for `early.everyMs`. @default systemClock */
  clock?: Clock;
  /** Subject of the result envelopes. @default the subject of the window's first input */
  subject?: string;
}

export const DEFAULT_WINDOW_OPTIONS = Object.freeze({ keyed: true, allowedLatenessMs: 0 });

/** @internal Options checked and completed, plus the assigner's parameters. */
export interface ResolvedWindowOptions<T, A, R> {
  readonly name: string;
  readonly aggregate: Aggregate<T, A, R>;
  readonly keyed: boolean;
  readonly allowedLatenessMs: number;
  readonly late: ((env: Envelope<T>, reason: LateReason) => void) | undefined;
  readonly earlyEvents: number;
  readonly earlyMs: number;
  readonly clock: Clock;
  readonly subject: string | undefined;
}

/** @internal */
export function resolveName(operator: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.includes('/'))
    throw new OptionsError(`${operator}.name`, "must be a non-empty string without '/'", name);
  return name;
}

/** @internal */
export function resolveAggregate<T, A, R>(
  operator: string,
  aggregate: Aggregate<T, A, R> | undefined,
  needsMerge = false,
): Aggregate<T, A, R> {
  if (
    aggregate === null ||
    typeof aggregate !== 'object' ||
    typeof aggregate.init !== 'function' ||
    typeof aggregate.add !== 'function' ||
    typeof aggregate.result !== 'function'
  ) {
    throw new OptionsError(`${operator}.aggregate`, 'must be an aggregate with init, add and result', aggregate);
  }
  if (needsMerge && typeof aggregate.merge !== 'function')
    throw new OptionsError(`${operator}.aggregate`, 'must have a merge function: session windows merge', aggregate);
  return aggregate;
}

/** @internal */
export function resolveWindowOptions<T, A, R>(
  operator: string,
  options: WindowOptions<T, A, R>,
  needsMerge = false,
): ResolvedWindowOptions<T, A, R> {
  if (options === null || typeof options !== 'object') throw new OptionsError(operator, 'must be an object', options);
  const early = options.early ?? {};
  if (typeof options.late !== 'function' && options.late !== undefined)
    throw new OptionsError(`${operator}.late`, 'must be a function', options.late);
  return {
    name: resolveName(operator, options.name),
    aggregate: resolveAggregate(operator, options.aggregate, needsMerge),
    keyed: options.keyed ?? DEFAULT_WINDOW_OPTIONS.keyed,
    allowedLatenessMs: numberOption(
      `${operator}.allowedLatenessMs`,
      options.allowedLatenessMs,
      DEFAULT_WINDOW_OPTIONS.allowedLatenessMs,
    ),
    late: options.late,
    earlyEvents:
      early.everyEvents === undefined ? 0 : intOption(`${operator}.early.everyEvents`, early.everyEvents, 1, 1),
    earlyMs: early.everyMs === undefined ? 0 : numberOption(`${operator}.early.everyMs`, early.everyMs, 1, 1),
    clock: options.clock ?? systemClock,
    subject: options.subject,
  };
}

/** @internal Where the state of one window subscription sends its results: the operator's subscriber. */
export interface WindowOutput<R> {
  next(value: Envelope<WindowResult<R>>): void;
  error(error: unknown): void;
  complete(): void;
}

/** @internal The state of one subscription of a window operator, observing the timed input. */
export interface WindowRun<T> extends Observer<Timed<T>> {
  /** The subscription ended: cancel timers and drop state (what it held is replayed, not settled). */
  stop(): void;
}

/**
 * @internal Builds a window operator: each subscription gets its own state from `start`, and
 * `stats()` reads the states alive now (an operator made outside a pipeline factory is shared by
 * the lanes and restarts that subscribe it).
 */
export function windowOperator<T, R, S extends WindowRun<T>>(
  start: (out: WindowOutput<R>) => S,
  stats: (live: ReadonlySet<S>) => WindowStats,
  describe?: { readonly name: string; readonly kind: string; nextTimer(run: S): number | undefined },
): WindowOperator<T, R> {
  const live = new Set<S>();
  const operator = (source: Observable<Timed<T>>) =>
    new Observable<Envelope<WindowResult<R>>>((subscriber) => {
      const run = start(subscriber);
      live.add(run);
      // Registered with the actor once per subscription; read only when its status is asked for.
      const unprobe =
        describe === undefined
          ? undefined
          : activeProbes()?.add(() => {
              const s = stats(new Set([run]));
              return {
                operator: describe.name,
                kind: describe.kind,
                watermark: finiteOrNull(s.watermark),
                openWindows: s.openWindows,
                keys: s.keys,
                absorbed: s.absorbed,
                nextTimer: finiteOrNull(describe.nextTimer(run) ?? Number.NaN),
              };
            });
      const subscription = source.subscribe(run);
      return () => {
        subscription.unsubscribe();
        run.stop();
        live.delete(run);
        unprobe?.();
      };
    });
  return Object.assign(operator, { stats: () => stats(live) });
}

/**
 * A window's aggregate failed to make its result (`result()` threw). The window is dropped and
 * each input it held fails with this error, which is not retryable (a retried input would find
 * the window gone), so the actor dead-letters exactly those inputs. Later inputs, and the
 * operator's other windows, go on unaffected.
 */
export class WindowResultError extends SluiceError {
  readonly operator: string;
  readonly key: string | undefined;
  readonly start: number;
  readonly end: number;
  constructor(operator: string, key: string | undefined, start: number, end: number, cause: unknown) {
    super(
      'SLUICE_ERR_HANDLER',
      `window '${operator}' failed to make the result of [${start}, ${end})${key === undefined ? '' : ` for key '${key}'`}: ${messageOf(cause)}`,
      { cause, retryable: false },
    );
    this.name = 'WindowResultError';
    this.operator = operator;
    this.key = key;
    this.start = start;
    this.end = end;
  }
}
