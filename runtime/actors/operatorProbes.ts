/**
 * What the stateful operators of an actor's pipeline report of themselves (window operators:
 * watermark and open windows), for the runtime's status and the dashboard. An operator registers
 * when its pipeline subscribes it and leaves when it unsubscribes; the report is read only when
 * someone asks, so nothing is paid per message.
 */

/** One window operator of an actor's pipeline, as `runtime.status()` and the admin API show it. */
export interface WindowView {
  /** The operator's `name` option. */
  readonly operator: string;
  /** `tumbling`, `sliding`, `session` or `count`. */
  readonly kind: string;
  /** The pipeline lane (actors with `lanes` run one pipeline per lane). */
  readonly lane: number;
  /** The event-time watermark it has seen (epoch ms); null before the first one (and for count windows). */
  readonly watermark: number | null;
  readonly openWindows: number;
  /** Keys with an open window. */
  readonly keys: number;
  /** Inputs held by its open windows. */
  readonly absorbed: number;
  /**
   * Event time of its earliest timer: no window fires (or, past its lateness, is dropped) before
   * the watermark reaches it. For aligned windows that is the oldest open window's `end - 1`; a
   * session that grew may still have the timer of its earlier end here. Null when no timer is set
   * (nothing open, or count windows, which keep none).
   */
  readonly nextTimer: number | null;
}

/** An operator's report of itself. */
export type OperatorReport = Omit<WindowView, 'lane'>;

/** @internal The operators of one lane's current pipeline. */
export class OperatorProbes {
  readonly lane: number;
  readonly #probes = new Set<() => OperatorReport>();

  constructor(lane: number) {
    this.lane = lane;
  }

  /** Adds an operator's report; the returned function removes it (the operator unsubscribed). */
  add(report: () => OperatorReport): () => void {
    this.#probes.add(report);
    return () => this.#probes.delete(report);
  }

  views(): WindowView[] {
    const out: WindowView[] = [];
    for (const read of this.#probes) out.push({ ...read(), lane: this.lane });
    return out;
  }
}

let active: OperatorProbes | undefined;

/** @internal The probes of the pipeline being built or subscribed now. */
export function activeProbes(): OperatorProbes | undefined {
  return active;
}

/** @internal Runs `build` with `probes` as the active ones (pipeline construction and subscription). */
export function withProbes<R>(probes: OperatorProbes, build: () => R): R {
  const previous = active;
  active = probes;
  try {
    return build();
  } finally {
    active = previous;
  }
}

/** A number for JSON: infinities (a watermark before the first) are null. */
export function finiteOrNull(n: number): number | null {
  return Number.isFinite(n) ? n : null;
}
