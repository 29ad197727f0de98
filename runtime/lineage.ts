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
  /** @internal */
  get parts(): readonly Lineage[] {
    return this.#parts;
  }
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

/**
 * @internal The source reference of one message a source pushed (a stream consumer's, a
 * connector's): the bus and the actors retain and release it as any lineage. When the last
 * reference is given back, `settled` runs once, with the first error given back, if any.
 */
export class CountedLineage implements Lineage {
  readonly ids: readonly string[];
  readonly #settled: (error: unknown) => void;
  #refs = 1;
  #error: unknown = undefined;
  constructor(id: string, settled: (error: unknown) => void) {
    this.ids = [id];
    this.#settled = settled;
  }
  retain(): void {
    this.#refs++;
  }
  absorb(): void {
    this.#refs++;
  }
  release(error?: unknown): void {
    if (error !== undefined && this.#error === undefined) this.#error = error;
    if (this.#refs === 0) return;
    if (--this.#refs === 0) this.#settled(this.#error);
  }
  releaseAbsorbed(error?: unknown): void {
    this.release(error);
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
 *
 * A tracker is never put on an envelope that leaves its owner: envelopes carry {@link lineage}, a
 * handle with the {@link Lineage} methods only. Whoever gets a message (any subscriber) must not
 * reach the tracker's state, the input it stands for, its upstream, or its owner (an actor, whose
 * bus client publishes with the actor's permissions).
 */
export class Tracker implements Lineage {
  readonly id: string;
  readonly #owner: TrackerOwner;
  /** What envelopes derived from this input carry as their lineage. */
  readonly lineage: Lineage;
  /** What the input itself derives from; released once this input settles. */
  readonly upstream: Lineage | undefined;
  /** The pipeline generation that took the input, so a restart knows what it lost. */
  generation: number;
  /** Whether the pipeline emitted anything derived from it, or held it. */
  used = false;
  inFlight = 1;
  absorbed = 0;
  /** Of `inFlight`: references the actor holds while outputs are being published. */
  publishing = 0;
  /** Of `absorbed`: references mailboxes hold on messages derived from it (see {@link absorbDownstream}). */
  downstream = 0;
  error: unknown = undefined;

  constructor(id: string, owner: TrackerOwner, upstream: Lineage | undefined, generation: number) {
    this.id = id;
    this.#owner = owner;
    this.upstream = upstream;
    this.generation = generation;
    this.lineage = new TrackerLineage(this);
  }

  get ids(): readonly string[] {
    return [this.id];
  }

  /**
   * Whether the pipeline itself still holds the input: while it handles it synchronously, in an
   * async step (`hold`) or in operator state (`absorb`). Not when all that is left are outputs
   * being published or accepted downstream: those go on without the pipeline.
   */
  get heldByPipeline(): boolean {
    return this.inFlight > this.publishing || this.absorbed > this.downstream;
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
    if (this.absorbed === 0) this.#owner.settled(this, this.error);
    else this.#owner.leftFlight(this);
  }
}

/**
 * @internal The tracker behind a lineage an envelope carries (or the tracker itself, for a
 * tracker used directly as a lineage, as the test harness does); undefined for any other lineage.
 */
export let trackerOf: (lineage: Lineage | undefined) => Tracker | undefined;

/**
 * A tracker as envelopes carry it: the {@link Lineage} protocol and nothing else. The tracker is a
 * private field, and {@link trackerOf} (assigned in the static block, so reachable from no object)
 * is the runtime's only way back to it.
 */
class TrackerLineage implements Lineage {
  readonly #tracker: Tracker;
  constructor(tracker: Tracker) {
    this.#tracker = tracker;
  }
  get ids(): readonly string[] {
    return this.#tracker.ids;
  }
  retain(): void {
    this.#tracker.retain();
  }
  absorb(): void {
    this.#tracker.absorb();
  }
  release(error?: unknown): void {
    this.#tracker.release(error);
  }
  releaseAbsorbed(error?: unknown): void {
    this.#tracker.releaseAbsorbed(error);
  }
  static {
    trackerOf = (lineage) => {
      if (typeof lineage !== 'object' || lineage === null) return undefined;
      if (#tracker in lineage) return lineage.#tracker;
      return lineage instanceof Tracker ? lineage : undefined;
    };
  }
}

/**
 * Counts, on every tracker a merged lineage stands for, that a reference is also a publishing or a
 * downstream one (`by` 1), or no longer is (`by` -1). What is left in those counts tells what the
 * pipeline itself still holds (see {@link Tracker.heldByPipeline}). The functions below count on a
 * single tracker themselves: that is every message's path.
 */
function shareMerged(lineage: Lineage, count: 'publishing' | 'downstream', by: 1 | -1): void {
  const tracker = trackerOf(lineage);
  if (tracker !== undefined) {
    if (by > 0 || tracker[count] > 0) tracker[count] += by;
  } else if (lineage instanceof MergedLineage) {
    for (const part of lineage.parts) shareMerged(part, count, by);
  }
}

/** @internal Retains `lineage` while an output derived from it is published (in flight, as publishing). */
export function retainPublishing(lineage: Lineage | undefined): void {
  if (lineage === undefined) return;
  const tracker = trackerOf(lineage);
  if (tracker !== undefined) tracker.publishing++;
  else shareMerged(lineage, 'publishing', 1);
  lineage.retain();
}

/** @internal Gives back what {@link retainPublishing} took, once the publish was accepted or refused. */
export function releasePublishing(lineage: Lineage | undefined, error?: unknown): void {
  if (lineage === undefined) return;
  const tracker = trackerOf(lineage);
  if (tracker !== undefined) {
    if (tracker.publishing > 0) tracker.publishing--;
  } else shareMerged(lineage, 'publishing', -1);
  lineage.release(error);
}

/**
 * @internal Takes the reference of a mailbox that accepted a message with this lineage (called by
 * the bus). On an actor's tracker it counts as downstream: the message left the pipeline, so a
 * restart does not replay the input for it.
 */
export function absorbDownstream(lineage: Lineage | undefined): void {
  if (lineage === undefined) return;
  const tracker = trackerOf(lineage);
  if (tracker !== undefined) tracker.downstream++;
  else shareMerged(lineage, 'downstream', 1);
  lineage.absorb();
}

/**
 * @internal Gives back what {@link absorbDownstream} took: the mailbox's consumer is done with the
 * message (an error fails it), or the mailbox let go of it.
 */
export function releaseDownstream(lineage: Lineage | undefined, error?: unknown): void {
  if (lineage === undefined) return;
  const tracker = trackerOf(lineage);
  if (tracker !== undefined) {
    if (tracker.downstream > 0) tracker.downstream--;
  } else shareMerged(lineage, 'downstream', -1);
  lineage.releaseAbsorbed(error);
}
