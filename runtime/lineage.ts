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

/** What a {@link SourceLineage} tells its source. */
export interface SourceSettlement<D> {
  /** Every reference to the message `delivery` came back: `error` is the first failure, if any. */
  sourceSettled(delivery: D, lineage: SourceLineage<D>, error: unknown): void;
}

/**
 * @internal The deliveries of `source` that `lineage` derives from: the {@link SourceLineage}s
 * `source` made, found by following each input's record to the lineage of that input, and merged
 * lineages to their parts. Only the source that made a lineage gets its delivery back, so whoever
 * holds `source` learns nothing of other sources or of the actors in between. Empty when the
 * chain is broken: an envelope made without its input's lineage, or one that came from another
 * process.
 */
export let deliveriesOf: <D>(lineage: Lineage | undefined, source: SourceSettlement<D>) => D[];

/**
 * The lineage a source gives a message it delivers (a stream consumer's push, a broker
 * connector's message): the bus and the actors retain and release it as any lineage, and when the
 * last reference comes back the message is settled, which the source turns into an ack, or a nack
 * when one came back with an error. The source and its delivery are private: whoever gets the
 * message cannot reach them.
 */
export class SourceLineage<D> implements Lineage {
  readonly #source: SourceSettlement<D>;
  readonly #delivery: D;
  readonly #prefix: string;
  readonly #id: string;
  #ids: readonly string[] | undefined;
  #refs = 1;
  #error: unknown = undefined;
  /** The message's id is `prefix + id`, joined only when someone asks for it (few do). */
  constructor(source: SourceSettlement<D>, delivery: D, id: string, prefix = '') {
    this.#source = source;
    this.#delivery = delivery;
    this.#prefix = prefix;
    this.#id = id;
  }
  get ids(): readonly string[] {
    this.#ids ??= [this.#prefix + this.#id];
    return this.#ids;
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
    if (--this.#refs === 0) this.#source.sourceSettled(this.#delivery, this, this.#error);
  }
  releaseAbsorbed(error?: unknown): void {
    this.release(error);
  }
  static {
    deliveriesOf = <D>(lineage: Lineage | undefined, source: SourceSettlement<D>): D[] => {
      const out: D[] = [];
      // A chain without merged lineages, the usual one (the Kafka sink asks for each record of a
      // transaction), is followed without a stack.
      let first = lineage;
      while (first !== undefined && !(first instanceof MergedLineage)) {
        if (first instanceof SourceLineage) {
          if (first.#source === source) out.push(first.#delivery as D);
          return out;
        }
        first = trackerOf(first)?.upstream;
      }
      if (first === undefined) return out;
      const todo: Lineage[] = [first];
      // A lineage's upstream was made before it, so a chain has no cycle: only merged lineages
      // can reach one input twice (a window over a join, say).
      let seen: Set<Lineage> | undefined;
      for (let l = todo.pop(); l !== undefined; l = todo.pop()) {
        if (l instanceof SourceLineage) {
          if (l.#source === source) out.push(l.#delivery as D);
        } else if (l instanceof MergedLineage) {
          seen ??= new Set();
          for (const part of l.parts)
            if (!seen.has(part)) {
              seen.add(part);
              todo.push(part);
            }
        } else {
          const upstream = trackerOf(l)?.upstream;
          if (upstream !== undefined) todo.push(upstream);
        }
      }
      return out;
    };
  }
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

  constructor(id: string, owner: TrackerOwner, upstream: Lineage | undefined, generation: number, handle?: Lineage) {
    this.id = id;
    this.#owner = owner;
    this.upstream = upstream;
    this.generation = generation;
    if (handle === undefined) this.lineage = new TrackerLineage(this);
    else {
      // A lazily recorded input gets its record: the handle its outputs carry now stands for it.
      this.lineage = handle;
      adoptCounts(handle, this);
    }
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
 * tracker used directly as a lineage, as the test harness does); undefined for any other lineage,
 * and for the handle of an input that has no record (see {@link lazyTracker}).
 */
export let trackerOf: (lineage: Lineage | undefined) => Tracker | undefined;

/**
 * @internal The handle of an input delivered without a record, while it has none: its id, and
 * whether it settled by counting. (Its lane knows the input it runs now by the handle itself.)
 */
export interface LazyInput {
  readonly id: string;
  /** Its synchronous run ended with nothing held: it settled by counting. */
  readonly settled: boolean;
}

/**
 * @internal Whether `lineage` is a handle the runtime made (an actor's output carries one): such a
 * handle needs none of the checks a lineage from outside gets. One brand check.
 */
export let isRuntimeLineage: (lineage: Lineage) => boolean;

/** @internal The handle behind `lineage` when it is an input's with no record yet. */
export let lazyTracker: (lineage: Lineage | undefined) => LazyInput | undefined;

/**
 * @internal A handle for an input handed to a pipeline without a record: it counts references
 * by itself, and most inputs (a synchronous run that leaves nothing held) settle by those counts
 * alone, when the run ends. An input still held then gets its record (see {@link endLazyRun}).
 */
export let lazyHandle: (id: string) => Lineage;

/**
 * @internal Ends the synchronous run of a lazily recorded input: `settled` when nothing holds it
 * any more (the handle is settled, by counting, with `used` and `error` as its outcome), `held`
 * when something still does (the caller gives it a record and releases the run's reference on
 * it), `recorded` when it got a record during the run (the caller releases on that record).
 */
export let endLazyRun: (handle: Lineage) => LazyOutcome;

/** @internal How a lazily recorded input's synchronous run ended (see {@link endLazyRun}). */
export type LazyOutcome =
  | { readonly kind: 'settled'; readonly used: boolean }
  | { readonly kind: 'held' }
  | { readonly kind: 'recorded'; readonly tracker: Tracker };

const SETTLED_USED: LazyOutcome = Object.freeze({ kind: 'settled', used: true });
const SETTLED_UNUSED: LazyOutcome = Object.freeze({ kind: 'settled', used: false });
const HELD: LazyOutcome = Object.freeze({ kind: 'held' });

let adoptCounts: (handle: Lineage, tracker: Tracker) => void;
/**
 * Counts a publishing or downstream reference on a handle envelopes carry, with a record or not;
 * false for any other lineage (merged, a bare tracker, one from outside).
 */
let countOn: (lineage: Lineage, count: 'publishing' | 'downstream', by: 1 | -1) => boolean;
/**
 * {@link refer} on a handle envelopes carry, in one call each: its count and its reference
 * together (four of these per actor hop, one function per kind of reference, small enough for the
 * compiler to inline where `refer` as a whole is not). False for any other lineage, which `refer`
 * handles.
 */
let retainOn: (lineage: Lineage) => boolean;
let releaseOn: (lineage: Lineage, error: unknown) => boolean;
let absorbOn: (lineage: Lineage) => boolean;
let releaseAbsorbedOn: (lineage: Lineage, error: unknown) => boolean;

/**
 * What envelopes carry as their lineage: the {@link Lineage} protocol and nothing else. Its state
 * is in private fields, and {@link trackerOf} and the functions above (assigned in the static
 * block, so reachable from no object) are the runtime's only way to it.
 *
 * It stands either for a {@link Tracker} (the input's record), or, for an input handed to a
 * pipeline without one, counts its references itself until its synchronous run ends.
 */
class TrackerLineage implements Lineage {
  #tracker: Tracker | undefined;
  // Without a record: the input's id and the Tracker's counts. (Nothing else: one is made per input.)
  #id = '';
  #inFlight = 1;
  #absorbed = 0;
  #publishing = 0;
  #downstream = 0;
  #used = false;
  #error: unknown = undefined;
  #settled = false;

  constructor(tracker: Tracker | undefined) {
    this.#tracker = tracker;
  }

  get ids(): readonly string[] {
    return this.#tracker === undefined ? [this.#id] : this.#tracker.ids;
  }
  retain(): void {
    const t = this.#tracker;
    if (t !== undefined) t.retain();
    else if (!this.#settled) {
      this.#used = true;
      this.#inFlight++;
    }
  }
  absorb(): void {
    const t = this.#tracker;
    if (t !== undefined) t.absorb();
    else if (!this.#settled) {
      this.#used = true;
      this.#absorbed++;
    }
  }
  // Without a record the run's own reference is held until the run ends, so these never settle
  // the input: `endLazyRun` does.
  release(error?: unknown): void {
    const t = this.#tracker;
    if (t !== undefined) t.release(error);
    else if (!this.#settled) {
      if (error !== undefined && this.#error === undefined) this.#error = error;
      if (this.#inFlight > 0) this.#inFlight--;
    }
  }
  releaseAbsorbed(error?: unknown): void {
    const t = this.#tracker;
    if (t !== undefined) t.releaseAbsorbed(error);
    else if (!this.#settled) {
      if (error !== undefined && this.#error === undefined) this.#error = error;
      if (this.#absorbed > 0) this.#absorbed--;
    }
  }
  static {
    trackerOf = (lineage) => {
      if (typeof lineage !== 'object' || lineage === null) return undefined;
      if (#tracker in lineage) return lineage.#tracker;
      return lineage instanceof Tracker ? lineage : undefined;
    };
    isRuntimeLineage = (lineage) => typeof lineage === 'object' && lineage !== null && #tracker in lineage;
    lazyTracker = (lineage) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return undefined;
      if (lineage.#tracker !== undefined) return undefined;
      return { id: lineage.#id, settled: lineage.#settled };
    };
    lazyHandle = (id) => {
      const handle = new TrackerLineage(undefined);
      handle.#id = id;
      return handle;
    };
    endLazyRun = (handle) => {
      if (!(#tracker in handle)) throw new TypeError('not a lazily recorded input');
      const t = handle.#tracker;
      if (t !== undefined) return { kind: 'recorded', tracker: t };
      if (handle.#inFlight <= 1 && handle.#absorbed === 0 && handle.#error === undefined) {
        handle.#settled = true;
        return handle.#used ? SETTLED_USED : SETTLED_UNUSED;
      }
      return HELD;
    };
    adoptCounts = (handle, tracker) => {
      if (!(#tracker in handle) || handle.#tracker !== undefined) throw new TypeError('not a lazily recorded input');
      tracker.inFlight = handle.#inFlight;
      tracker.absorbed = handle.#absorbed;
      tracker.publishing = handle.#publishing;
      tracker.downstream = handle.#downstream;
      tracker.used = handle.#used;
      tracker.error = handle.#error;
      handle.#tracker = tracker;
    };
    // Settled by counting (`#settled`): what is given back now was never counted (see `lateOutput`).
    // The run's own reference is held until the run ends, so a release never settles a handle here.
    retainOn = (lineage) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return false;
      const t = lineage.#tracker;
      if (t !== undefined) {
        t.publishing++;
        t.retain();
      } else if (!lineage.#settled) {
        lineage.#publishing++;
        lineage.#used = true;
        lineage.#inFlight++;
      }
      return true;
    };
    releaseOn = (lineage, error) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return false;
      const t = lineage.#tracker;
      if (t !== undefined) {
        if (t.publishing > 0) t.publishing--;
        t.release(error);
      } else if (!lineage.#settled) {
        if (error !== undefined && lineage.#error === undefined) lineage.#error = error;
        if (lineage.#publishing > 0) lineage.#publishing--;
        if (lineage.#inFlight > 0) lineage.#inFlight--;
      }
      return true;
    };
    absorbOn = (lineage) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return false;
      const t = lineage.#tracker;
      if (t !== undefined) {
        t.downstream++;
        t.absorb();
      } else if (!lineage.#settled) {
        lineage.#downstream++;
        lineage.#used = true;
        lineage.#absorbed++;
      }
      return true;
    };
    releaseAbsorbedOn = (lineage, error) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return false;
      const t = lineage.#tracker;
      if (t !== undefined) {
        if (t.downstream > 0) t.downstream--;
        t.releaseAbsorbed(error);
      } else if (!lineage.#settled) {
        if (error !== undefined && lineage.#error === undefined) lineage.#error = error;
        if (lineage.#downstream > 0) lineage.#downstream--;
        if (lineage.#absorbed > 0) lineage.#absorbed--;
      }
      return true;
    };
    countOn = (lineage, count, by) => {
      if (typeof lineage !== 'object' || lineage === null || !(#tracker in lineage)) return false;
      const t = lineage.#tracker;
      if (t !== undefined) {
        if (by > 0 || t[count] > 0) t[count] += by;
      } else if (lineage.#settled) {
        // Settled by counting: what is given back now was never counted (see `lateOutput`).
      } else if (count === 'publishing') {
        if (by > 0 || lineage.#publishing > 0) lineage.#publishing += by;
      } else if (by > 0 || lineage.#downstream > 0) lineage.#downstream += by;
      return true;
    };
  }
}

/** Which reference a helper below takes or gives back, on each input a lineage stands for. */
const Ref = { RetainPublishing: 0, ReleasePublishing: 1, AbsorbDownstream: 2, ReleaseDownstream: 3 } as const;
type Ref = (typeof Ref)[keyof typeof Ref];

/**
 * Takes or gives back a publishing or downstream reference on every input `lineage` stands for,
 * counting it apart on each (what is left in those counts tells what the pipeline itself still
 * holds, see {@link Tracker.heldByPipeline}): one pass over a merged lineage's inputs, not one to
 * count and one to refer.
 */
function refer(lineage: Lineage, ref: Ref, error: unknown): void {
  const onHandle =
    ref === Ref.RetainPublishing
      ? retainOn(lineage)
      : ref === Ref.ReleasePublishing
        ? releaseOn(lineage, error)
        : ref === Ref.AbsorbDownstream
          ? absorbOn(lineage)
          : releaseAbsorbedOn(lineage, error);
  if (onHandle) return;
  if (lineage instanceof MergedLineage) {
    const parts = lineage.parts;
    for (let i = 0; i < parts.length; i++) refer(parts[i] as Lineage, ref, error);
    return;
  }
  const count = ref === Ref.RetainPublishing || ref === Ref.ReleasePublishing ? 'publishing' : 'downstream';
  const by = ref === Ref.RetainPublishing || ref === Ref.AbsorbDownstream ? 1 : -1;
  if (!countOn(lineage, count, by)) {
    // A bare tracker used as a lineage (the test harness); any other lineage keeps no such counts.
    const tracker = trackerOf(lineage);
    if (tracker !== undefined && (by > 0 || tracker[count] > 0)) tracker[count] += by;
  }
  if (ref === Ref.RetainPublishing) lineage.retain();
  else if (ref === Ref.ReleasePublishing) lineage.release(error);
  else if (ref === Ref.AbsorbDownstream) lineage.absorb();
  else lineage.releaseAbsorbed(error);
}

/** @internal Retains `lineage` while an output derived from it is published (in flight, as publishing). */
export function retainPublishing(lineage: Lineage | undefined): void {
  if (lineage !== undefined && !retainOn(lineage)) refer(lineage, Ref.RetainPublishing, undefined);
}

/** @internal Gives back what {@link retainPublishing} took, once the publish was accepted or refused. */
export function releasePublishing(lineage: Lineage | undefined, error?: unknown): void {
  if (lineage !== undefined && !releaseOn(lineage, error)) refer(lineage, Ref.ReleasePublishing, error);
}

/**
 * @internal Takes the reference of a mailbox that accepted a message with this lineage (called by
 * the bus). On an actor's tracker it counts as downstream: the message left the pipeline, so a
 * restart does not replay the input for it.
 */
export function absorbDownstream(lineage: Lineage | undefined): void {
  if (lineage !== undefined && !absorbOn(lineage)) refer(lineage, Ref.AbsorbDownstream, undefined);
}

/**
 * @internal Gives back what {@link absorbDownstream} took: the mailbox's consumer is done with the
 * message (an error fails it), or the mailbox let go of it.
 */
export function releaseDownstream(lineage: Lineage | undefined, error?: unknown): void {
  if (lineage !== undefined && !releaseAbsorbedOn(lineage, error)) refer(lineage, Ref.ReleaseDownstream, error);
}
