import { from, type Observable } from 'rxjs';
import type { Envelope, Lineage } from 'sluice';
import { createEnvelope } from 'sluice';
import type { LateReason, Timed, WindowOperator, WindowResult } from 'sluice/operators';

/** An input envelope with an event time and a key. */
export function ev<T>(data: T, eventTime: number | undefined, key?: string, lineage?: Lineage): Envelope<T> {
  return createEnvelope('in', data, { ...(eventTime === undefined ? {} : { eventTime }), key, lineage });
}

export interface Collected<T, R> {
  results: Envelope<WindowResult<R>>[];
  late: { env: Envelope<T>; reason: LateReason }[];
  completed: boolean;
}

/** A `late` handler and the list it fills. */
export function lateSink<T>(): {
  late: (env: Envelope<T>, reason: LateReason) => void;
  got: { env: Envelope<T>; reason: LateReason }[];
} {
  const got: { env: Envelope<T>; reason: LateReason }[] = [];
  return { late: (env, reason) => got.push({ env, reason }), got };
}

/** Runs items (envelopes and watermarks) through an operator synchronously and collects what comes out. */
export function run<T, R>(
  op: WindowOperator<T, R>,
  items: readonly Timed<T>[] | Observable<Timed<T>>,
  late?: { env: Envelope<T>; reason: LateReason }[],
): Collected<T, R> {
  const out: Collected<T, R> = { results: [], late: late ?? [], completed: false };
  const source = Array.isArray(items) ? from(items as Timed<T>[]) : (items as Observable<Timed<T>>);
  source.pipe(op).subscribe({
    next: (r) => out.results.push(r),
    complete: () => {
      out.completed = true;
    },
  });
  return out;
}

/** A lineage that counts what is done to it, standing for one input's tracker. */
export class CountingLineage implements Lineage {
  readonly ids: readonly string[];
  retained = 0;
  absorbed = 0;
  released = 0;
  releasedAbsorbed = 0;
  errors: unknown[] = [];
  constructor(id: string) {
    this.ids = [id];
  }
  retain(): void {
    this.retained++;
  }
  absorb(): void {
    this.absorbed++;
  }
  release(error?: unknown): void {
    this.released++;
    if (error !== undefined) this.errors.push(error);
  }
  releaseAbsorbed(error?: unknown): void {
    this.releasedAbsorbed++;
    if (error !== undefined) this.errors.push(error);
  }
  /** Absorbed references not given back yet. */
  get holding(): number {
    return this.absorbed - this.releasedAbsorbed;
  }
}
