/**
 * The crash test's input, fixed by its seed: event i of n, and the results a correct run must
 * leave in the sinks, computed here with plain loops, apart from the runtime.
 */
import { seededRandom } from 'sluice/testing';

export interface CrashEvent {
  readonly id: number;
  readonly key: string;
  readonly value: number;
  /** Event time, epoch ms. */
  readonly t: number;
}

/** Keys of the window aggregation. */
export const KEYS = 40;
/** Tumbling window size. */
export const WINDOW_MS = 10_000;
/** Events are at most this much out of order; the watermark allows exactly this. */
export const DISORDER_MS = 800;
export const OUT_OF_ORDERNESS_MS = 1_000;
/** Event time of event 0; event i is about i ms later. */
export const BASE_TIME = 1_700_000_000_000;

/** The n events of a seed, in publishing order (event i becomes stream sequence i + 1). */
export function* events(seed: number, n: number): Generator<CrashEvent> {
  const random = seededRandom(seed);
  for (let id = 0; id < n; id++) {
    const key = `k${Math.floor(random() * KEYS)}`;
    const value = Math.floor(random() * 1000);
    // Never later than the bound allows: no event is late, so every one counts in its window.
    const t = BASE_TIME + id + Math.floor(random() * DISORDER_MS);
    yield { id, key, value, t };
  }
}

/**
 * The last input of the checkpointed job (checkpointJob.ts): far past the other events, it moves
 * the watermark past every window of the input, and is itself in no result.
 */
export const SENTINEL: CrashEvent = { id: -1, key: '_end', value: 0, t: BASE_TIME + 1_000_000_000 };

/** The per-event transformation the job applies. */
export function transform(e: CrashEvent): { id: number; key: string; doubled: number } {
  return { id: e.id, key: e.key, doubled: e.value * 2 };
}

export interface WindowTotals {
  readonly key: string;
  readonly start: number;
  readonly end: number;
  readonly count: number;
  readonly sum: number;
}

/** Count and sum per key per tumbling window, by idempotency key `agg/<key>/<start>-<end>`. */
export function expectedWindows(seed: number, n: number): Map<string, WindowTotals> {
  const out = new Map<string, { key: string; start: number; end: number; count: number; sum: number }>();
  for (const e of events(seed, n)) {
    const start = e.t - (e.t % WINDOW_MS);
    const id = `agg/${e.key}/${start}-${start + WINDOW_MS}`;
    let w = out.get(id);
    if (w === undefined) {
      w = { key: e.key, start, end: start + WINDOW_MS, count: 0, sum: 0 };
      out.set(id, w);
    }
    w.count++;
    w.sum += e.value;
  }
  return out;
}
