/**
 * Lineage: how a message's settlement is traced from every output back to its input.
 *
 * Each input an actor takes gets a tracker. Everything that depends on the input takes a reference
 * to its lineage and gives it back when done. Two kinds of reference:
 * - retained (in flight): the pipeline while it handles the input synchronously, an async step
 *   (`hold`), the actor while a publish of an output waits for mailboxes to accept it;
 * - absorbed (settles later, not in flight): each mailbox an output was accepted into, until its
 *   consumer settles it, and an operator that keeps the input in its state (`absorb`: windows).
 * When the last reference is given back the input is settled: its own upstream lineage is given
 * back in turn, up to the source, which acknowledges it. A reference given back with an error
 * settles the input as failed, and its owner retries or dead-letters it.
 *
 * In flight (for backpressure) is narrower than unsettled: an input whose outputs were accepted
 * downstream, or that was absorbed into operator state, no longer counts against the actor's
 * in-flight limit, or a window that needs more inputs than the limit to close would wait forever.
 */
export interface Lineage {
  /** Ids of the input messages this lineage stands for. */
  readonly ids: readonly string[];
  /** One more dependency that counts as in flight. */
  retain(): void;
  /** One more dependency kept in operator state (a window): settles later, not in flight. */
  absorb(): void;
  /** One dependency is done; an error means it failed, so the inputs are retried or dead-lettered. */
  release(error?: unknown): void;
  /** Ends an absorbed dependency. */
  releaseAbsorbed(error?: unknown): void;
}

/** How an input ended. */
export type Outcome = 'acked' | 'dropped' | 'failed' | 'dead-lettered';

/** Retains `lineage` and returns a release that runs once, for async steps that keep an envelope. */
export function hold(lineage: Lineage | undefined): (error?: unknown) => void {
  if (lineage === undefined) return noop;
  lineage.retain();
  let done = false;
  return (error?: unknown) => {
    if (done) return;
    done = true;
    lineage.release(error);
  };
}

/** As {@link hold}, for state kept by an operator (windows): does not count as in flight. */
export function absorb(lineage: Lineage | undefined): (error?: unknown) => void {
  if (lineage === undefined) return noop;
  lineage.absorb();
  let done = false;
  return (error?: unknown) => {
    if (done) return;
    done = true;
    lineage.releaseAbsorbed(error);
  };
}

/**
 * The lineage of a message derived from several inputs (a window result, a join): retaining or
 * releasing it retains or releases each of them.
 */
export function mergeLineage(parts: readonly (Lineage | undefined)[]): Lineage | undefined {
  const defined = parts.filter((p): p is Lineage => p !== undefined);
  if (defined.length === 0) return undefined;
  if (defined.length === 1) return defined[0];
  return new MergedLineage([...new Set(defined)]);
}

class MergedLineage implements Lineage {
  readonly #parts: readonly Lineage[];
  #ids: readonly string[] | undefined;
  constructor(parts: readonly Lineage[]) {
    this.#parts = parts;
  }
  get ids(): readonly string[] {
    this.#ids ??= Object.freeze(this.#parts.flatMap((p) => p.ids));
    return this.#ids;
  }
  retain(): void {
    for (const p of this.#parts) p.retain();
  }
  absorb(): void {
    for (const p of this.#parts) p.absorb();
  }
  release(error?: unknown): void {
    for (const p of this.#parts) p.release(error);
  }
  releaseAbsorbed(error?: unknown): void {
    for (const p of this.#parts) p.releaseAbsorbed(error);
  }
}

function noop(): void {}

/** What a tracker tells its owner. Internal to the runtime. */
export interface TrackerOwner {
  /** The input no longer counts as in flight (settled, or only absorbed dependencies remain). */
  leftFlight(tracker: Tracker): void;
  /** Every dependency was released: `error` is the first failure, if any. */
  settled(tracker: Tracker, error: unknown): void;
}

/**
 * The lineage node of one input inside an actor. Starts with one in-flight reference, held by the
 * actor while the pipeline handles the input synchronously.
 */
export class Tracker implements Lineage {
  readonly id: string;
  readonly ids: readonly string[];
  readonly owner: TrackerOwner;
  /** What the input itself derives from; released once this input settles. */
  readonly upstream: Lineage | undefined;
  /** The pipeline generation that took the input, so a restart knows what it lost. */
  generation: number;
  /** Whether the pipeline emitted anything derived from it, or held it. */
  used = false;
  inFlight = 1;
  absorbed = 0;
  error: unknown = undefined;
  outcome: Outcome | undefined = undefined;

  constructor(id: string, owner: TrackerOwner, upstream: Lineage | undefined, generation: number) {
    this.id = id;
    this.ids = [id];
    this.owner = owner;
    this.upstream = upstream;
    this.generation = generation;
  }

  get settledOrAbsorbed(): boolean {
    return this.inFlight === 0;
  }

  retain(): void {
    this.used = true;
    this.inFlight++;
  }

  absorb(): void {
    this.used = true;
    this.absorbed++;
  }

  release(error?: unknown): void {
    if (error !== undefined && this.error === undefined) this.error = error;
    if (this.inFlight === 0) return;
    this.inFlight--;
    this.#check();
  }

  releaseAbsorbed(error?: unknown): void {
    if (error !== undefined && this.error === undefined) this.error = error;
    if (this.absorbed === 0) return;
    this.absorbed--;
    this.#check();
  }

  #check(): void {
    if (this.inFlight !== 0) return;
    if (this.absorbed === 0) this.owner.settled(this, this.error);
    else this.owner.leftFlight(this);
  }
}
