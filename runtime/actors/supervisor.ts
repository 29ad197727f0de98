import { OptionsError } from '../errors.ts';
import { intOption, knownKeys, numberOption, oneOf, optionKeys } from '../options.ts';

/** Exponential backoff with jitter, the delay before retry `n` or restart `n`. */
export interface BackoffOptions {
  /** Delay before the first retry. @default 100 */
  initialMs?: number;
  /** Upper bound of a delay. @default 30000, or initialMs when that is larger */
  maxMs?: number;
  /** Growth per attempt. @default 2 */
  multiplier?: number;
  /** Fraction of the delay drawn at random (0 to 1), so failing peers do not retry in step. @default 0.2 */
  jitter?: number;
}

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 100, maxMs: 30_000, multiplier: 2, jitter: 0.2 });

/** Per-message retries; after the last attempt the message goes to the dead-letter subject. */
export interface RetryOptions {
  /** Attempts in all, the first included; 1 means no retry. @default 3 */
  maxAttempts?: number;
  backoff?: BackoffOptions;
}

export const DEFAULT_RETRY = Object.freeze({ maxAttempts: 3 });

export const restartLimitActions = ['stop', 'escalate'] as const;
/** What happens after the last allowed restart: stop the actor, or escalate to the runtime. */
export type RestartLimitAction = (typeof restartLimitActions)[number];

/** Restarts of a failed pipeline, as Erlang/Akka supervisors do them. */
export interface RestartOptions {
  /** Restarts allowed within `windowMs`. @default 5 */
  maxRestarts?: number;
  /** @default 60000 */
  windowMs?: number;
  backoff?: BackoffOptions;
  /** @default 'stop' */
  onLimit?: RestartLimitAction;
}

export const DEFAULT_RESTART = Object.freeze({ maxRestarts: 5, windowMs: 60_000, onLimit: 'stop' as const });

export type ResolvedBackoff = Readonly<Required<BackoffOptions>>;
export interface ResolvedRetry {
  readonly maxAttempts: number;
  readonly backoff: ResolvedBackoff;
}
export interface ResolvedRestart {
  readonly maxRestarts: number;
  readonly windowMs: number;
  readonly backoff: ResolvedBackoff;
  readonly onLimit: RestartLimitAction;
}

const backoffKeys = optionKeys<keyof BackoffOptions>({ initialMs: true, maxMs: true, multiplier: true, jitter: true });
const retryKeys = optionKeys<keyof RetryOptions>({ maxAttempts: true, backoff: true });
const restartKeys = optionKeys<keyof RestartOptions>({
  maxRestarts: true,
  windowMs: true,
  backoff: true,
  onLimit: true,
});

function resolveBackoff(o: BackoffOptions | undefined, path: string): ResolvedBackoff {
  knownKeys(path, o, backoffKeys);
  const initialMs = numberOption(`${path}.initialMs`, o?.initialMs, DEFAULT_BACKOFF.initialMs);
  // Unset, the cap is never below the first delay: only a maxMs the user gave can contradict initialMs.
  const maxMs = numberOption(`${path}.maxMs`, o?.maxMs, Math.max(DEFAULT_BACKOFF.maxMs, initialMs));
  if (maxMs < initialMs) {
    throw new OptionsError(`${path}.maxMs`, `must be >= ${path}.initialMs (${initialMs})`, maxMs);
  }
  return Object.freeze({
    initialMs,
    maxMs,
    multiplier: numberOption(`${path}.multiplier`, o?.multiplier, DEFAULT_BACKOFF.multiplier, 1),
    jitter: numberOption(`${path}.jitter`, o?.jitter, DEFAULT_BACKOFF.jitter, 0),
  });
}

export function resolveRetry(o: RetryOptions | undefined, path = 'retry'): ResolvedRetry {
  knownKeys(path, o, retryKeys);
  return Object.freeze({
    maxAttempts: intOption(`${path}.maxAttempts`, o?.maxAttempts, DEFAULT_RETRY.maxAttempts, 1),
    backoff: resolveBackoff(o?.backoff, `${path}.backoff`),
  });
}

export function resolveRestart(o: RestartOptions | undefined, path = 'restart'): ResolvedRestart {
  knownKeys(path, o, restartKeys);
  return Object.freeze({
    maxRestarts: intOption(`${path}.maxRestarts`, o?.maxRestarts, DEFAULT_RESTART.maxRestarts, 0),
    windowMs: intOption(`${path}.windowMs`, o?.windowMs, DEFAULT_RESTART.windowMs, 1),
    backoff: resolveBackoff(o?.backoff, `${path}.backoff`),
    onLimit: oneOf(`${path}.onLimit`, o?.onLimit, restartLimitActions, DEFAULT_RESTART.onLimit),
  });
}

/**
 * The delay before retry or restart number `n` (from 1): `initialMs * multiplier^(n-1)`, capped
 * at `maxMs`, with up to `jitter` of it drawn at random below that ("equal jitter", so the delay
 * never collapses to zero).
 */
export function backoffDelay(n: number, backoff: ResolvedBackoff, random: () => number = Math.random): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.multiplier ** Math.max(0, n - 1));
  const jitter = Math.min(1, backoff.jitter);
  return Math.round(base * (1 - jitter * random()));
}

/**
 * Counts restarts within a sliding time window; says whether one more is allowed and how long to
 * wait before it.
 */
export class RestartWindow {
  readonly #options: ResolvedRestart;
  #times: number[] = [];

  constructor(options: ResolvedRestart) {
    this.#options = options;
  }

  /** Restarts counted within the window ending at `now`. */
  count(now: number): number {
    this.#prune(now);
    return this.#times.length;
  }

  /** Records a failure at `now`: the delay before the restart, or undefined when the limit is reached. */
  next(now: number, random: () => number): number | undefined {
    this.#prune(now);
    if (this.#times.length >= this.#options.maxRestarts) return undefined;
    this.#times.push(now);
    return backoffDelay(this.#times.length, this.#options.backoff, random);
  }

  #prune(now: number): void {
    const from = now - this.#options.windowMs;
    while (this.#times.length > 0 && (this.#times[0] as number) <= from) this.#times.shift();
  }
}
