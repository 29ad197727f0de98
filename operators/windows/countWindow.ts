import { type Envelope, nextId } from '../../runtime/envelope.ts';
import { OptionsError } from '../../runtime/errors.ts';
import { type Lineage, mergeLineage } from '../../runtime/lineage.ts';
import { intOption } from '../../runtime/options.ts';
import { activeCheckpoint, type OperatorCheckpoint } from '../../runtime/state/operatorState.ts';
import type { StoreBatch } from '../../runtime/store/types.ts';
import type { Aggregate } from '../aggregate.ts';
import { type Timed, Watermark } from '../watermarks.ts';
import {
  type Firing,
  resolveAggregate,
  resolveName,
  type WindowOperator,
  type WindowOutput,
  type WindowResult,
  WindowResultError,
  type WindowStats,
  windowOperator,
} from './types.ts';

export interface CountWindowOptions<T, A, R> {
  /** First part of each result's idempotency key `name/key/start-end`. Non-empty, no `/`. */
  name: string;
  /** How inputs fold into a result. */
  aggregate: Aggregate<T, A, R>;
  /** Inputs per window. */
  size: number;
  /** A window fires every `slide` inputs, over the last `size`; `slide < size` overlaps them. @default size (tumbling) */
  slide?: number;
  /** Group by `env.key`; `false` counts all inputs together. @default true */
  keyed?: boolean;
  /** Subject of the result envelopes. @default the subject of the window's first input */
  subject?: string;
}

/**
 * Count windows, per key: tumbling (`size` inputs each) or sliding (every `slide` inputs, over the
 * last `size`), as Flink's `countWindow(size)` and `countWindow(size, slide)`. They follow arrival
 * order, not event time: watermarks are ignored and nothing is late. A result's `start`/`end` are
 * input indexes per key (`[0, 100)`, `[100, 200)`), counted by this pipeline (one counter per key
 * seen, the only state kept after a window closes); its idempotency key is
 * `name/key/firstInputId+count`, which a replay after a restart reproduces even though the indexes
 * start again. The result's event time is the largest among its inputs.
 *
 * Unlike Flink, which drops a count window that never fills, the input's completion flushes each
 * partial window (`firing: 'partial'`), so every input ends up in a result and settles.
 *
 * Tumbling windows keep one accumulator each. Sliding ones keep their last `size` inputs and
 * aggregate them anew at each firing; each input is given back (settled) once it has left the
 * last window that includes it.
 *
 * In the pipeline of an actor with a `checkpoint` (docs/checkpoints.md), the windows live in the
 * checkpoint instead: one record per key (the counter, the open window's accumulator and first id;
 * sliding: the data of its last `size` inputs), restored after a restart, so the indexes and the
 * idempotency keys go on as in a run without it. Each input then settles at once and is
 * acknowledged when the checkpoint commits; results carry no lineage, and a graceful stop leaves
 * the open windows in the store rather than flushing them.
 *
 *     in:    --a--b--c--d--e--|
 *     out:   -----R[0,2)-R[2,4)-R[4,5)|     countWindow({ size: 2, aggregate: agg.count() }) (the last one partial)
 *
 * @example countWindow({ name: 'batches', size: 100, aggregate: agg.collect() })
 * @see tumbling
 */
export function countWindow<T, A, R>(options: CountWindowOptions<T, A, R>): WindowOperator<T, R> {
  if (options === null || typeof options !== 'object')
    throw new OptionsError('countWindow', 'must be an object', options);
  const name = resolveName('countWindow', options.name);
  const aggregate = resolveAggregate('countWindow', options.aggregate);
  const size = intOption('countWindow.size', options.size, Number.NaN, 1);
  const slide = intOption('countWindow.slide', options.slide, size, 1);
  if (slide > size) throw new OptionsError('countWindow.slide', `must be <= size (${size})`, slide);
  const config: Config<T, A, R> = {
    name,
    aggregate,
    size,
    slide,
    keyed: options.keyed ?? true,
    subject: options.subject,
  };
  const totals = { results: 0 };
  const stats = (live: ReadonlySet<CountWindows<T, A, R>>): WindowStats => {
    let keys = 0;
    let seen = 0;
    let absorbed = 0;
    for (const w of live) {
      keys += w.open;
      seen += w.keys.size;
      absorbed += w.absorbed;
    }
    return {
      keys,
      idleKeys: seen - keys,
      openWindows: keys,
      absorbed,
      watermark: Number.NEGATIVE_INFINITY,
      results: totals.results,
      late: 0,
    };
  };
  return windowOperator((out: WindowOutput<R>) => new CountWindows(config, out, totals), stats, {
    name,
    kind: 'count',
    nextTimer: () => undefined,
  });
}

interface Config<T, A, R> {
  readonly name: string;
  readonly aggregate: Aggregate<T, A, R>;
  readonly size: number;
  readonly slide: number;
  readonly keyed: boolean;
  readonly subject: string | undefined;
}

/** Per key: the index of the next input, and the open window. */
class KeyCount<T, A> {
  readonly key: string | undefined;
  /** Inputs seen for this key; the next input's index. */
  seen = 0;
  /** Inputs since the last firing. */
  pending = 0;
  subject = '';
  maxEventTime = Number.NEGATIVE_INFINITY;
  /** Tumbling: the accumulator and the lineages of the open window. */
  acc: A | undefined = undefined;
  lineages: Lineage[] | undefined = undefined;
  /** Tumbling: the id of the open window's first input, which names the window. */
  firstId = '';
  /** Sliding: the last `size` inputs (a ring). */
  ring: Slot<T>[] | undefined = undefined;

  constructor(key: string | undefined) {
    this.key = key;
  }
}

/** One input a sliding window keeps: its lineage only when no checkpoint holds it. */
interface Slot<T> {
  readonly id: string;
  readonly data: T;
  readonly eventTime: number | undefined;
  readonly lineage: Lineage | undefined;
}

class CountWindows<T, A, R> {
  readonly config: Config<T, A, R>;
  readonly out: WindowOutput<R>;
  readonly totals: { results: number };
  readonly sliding: boolean;
  /** One counter per key seen (for deterministic indexes); the window state only while open. */
  readonly keys = new Map<string | undefined, KeyCount<T, A>>();
  open = 0;
  absorbed = 0;
  done = false;
  /** The last watermark that went through: results carry it, nothing else uses it. */
  watermark = Number.NEGATIVE_INFINITY;
  /** The actor's checkpoint, when it has one: the windows then live in its state, not their inputs. */
  readonly part: CountPart<T, A> | undefined;

  constructor(config: Config<T, A, R>, out: WindowOutput<R>, totals: { results: number }) {
    this.config = config;
    this.out = out;
    this.totals = totals;
    this.sliding = config.slide < config.size;
    const cp = activeCheckpoint();
    if (cp !== undefined) {
      const id = `${config.name}/${cp.lane}`;
      const handed = cp.handoff.get(id) as CountHandoff<T, A> | undefined;
      if (handed !== undefined) {
        // A restarted pipeline: what settled since the last checkpoint is only in the failed one.
        cp.handoff.delete(id);
        for (const [key, k] of handed.keys) this.keys.set(key, k);
        this.open = handed.open;
        this.watermark = handed.watermark;
        this.part = handed.part;
        this.part.windows = this as CountWindows<T, A, unknown>;
      } else {
        this.part = new CountPart<T, A>(this as CountWindows<T, A, unknown>, `${id}/`, cp.handoff);
        cp.register(this.part);
        this.restore(cp);
      }
    }
  }

  /** The counters and open windows of the last checkpoint. */
  restore(cp: OperatorCheckpoint): void {
    const part = this.part as CountPart<T, A>;
    for (const entry of cp.store.scan(cp.namespace, part.prefix)) {
      if (entry.error !== undefined) throw entry.error;
      if (entry.key === part.watermarkKey) {
        this.watermark = entry.value as number;
        continue;
      }
      const r = entry.value as StoredCount<T>;
      const k = new KeyCount<T, A>(r.k === null ? undefined : r.k);
      k.seen = r.n;
      k.pending = r.p;
      k.subject = r.j;
      k.maxEventTime = r.t ?? Number.NEGATIVE_INFINITY;
      const restore = this.config.aggregate.restore;
      k.acc = r.a === null ? undefined : restore === undefined ? (r.a as A) : restore(r.a);
      k.firstId = r.i;
      if (r.r !== null)
        k.ring = r.r.map(([id, data, t]) => ({ id, data, eventTime: t ?? undefined, lineage: undefined }));
      this.keys.set(k.key, k);
      if (this.sliding ? k.seen > 0 : k.pending > 0) this.open++;
    }
  }

  next(item: Timed<T>): void {
    if (this.done) return;
    if (item instanceof Watermark) {
      if (item.time > this.watermark) {
        this.watermark = item.time;
        if (this.part !== undefined) this.part.watermarkDirty = true;
      }
      return;
    }
    try {
      this.take(item);
    } catch (error) {
      this.stop();
      this.out.error(error);
    }
  }

  error(error: unknown): void {
    if (this.done) return;
    // As time windows: what is held is replayed by the actor, not settled here.
    this.stop();
    this.out.error(error);
  }

  complete(): void {
    if (this.done) return;
    if (this.part !== undefined) {
      // Checkpointed windows stay open across a stop: they are in the store and go on after the
      // restart, so the results are those of a run without the stop (as time windows).
      this.stop();
      this.out.complete();
      return;
    }
    try {
      for (const k of this.keys.values()) {
        if (k.pending > 0) this.flushPartial(k);
        if (k.ring !== undefined) {
          const ring = k.ring;
          k.ring = undefined;
          for (const slot of ring) slot.lineage?.releaseAbsorbed();
        }
      }
    } catch (error) {
      this.stop();
      this.out.error(error);
      return;
    }
    this.stop();
    this.out.complete();
  }

  stop(): void {
    if (this.done) return;
    this.done = true;
    const part = this.part;
    if (part !== undefined) {
      // What settled since the last checkpoint is only here: the next instance of this operator
      // (a restarted pipeline) goes on from it rather than from the store.
      part.handoff.set(part.id, {
        part,
        keys: new Map(this.keys),
        open: this.open,
        watermark: this.watermark,
      } satisfies CountHandoff<T, A>);
    }
    this.keys.clear();
    this.open = 0;
    this.absorbed = 0;
  }

  take(env: Envelope<T>): void {
    const key = this.config.keyed ? env.key : undefined;
    let k = this.keys.get(key);
    if (k === undefined) {
      k = new KeyCount<T, A>(key);
      this.keys.set(key, k);
    }
    const { aggregate, size, slide } = this.config;
    const t = env.eventTime;
    // Folded first: an aggregate that throws leaves the key as it was (a checkpointed pipeline
    // hands it over to the restarted one).
    const acc = this.sliding
      ? undefined
      : aggregate.add(k.pending === 0 ? aggregate.init() : (k.acc as A), env.data, t ?? 0);
    if (k.pending === 0 && (!this.sliding || k.seen === 0)) {
      k.subject = env.subject;
      this.open++;
    }
    k.seen++;
    k.pending++;
    if (t !== undefined && t > k.maxEventTime) k.maxEventTime = t;
    const lineage = env.lineage;
    const part = this.part;
    if (part !== undefined) {
      // In the checkpoint's state: the input settles now, acknowledged when that state commits.
      // Retained and released at once, so it counts as used (acked), not as filtered out.
      part.changed.add(k);
      if (lineage !== undefined) {
        lineage.retain();
        lineage.release();
      }
    }
    if (!this.sliding) {
      if (k.pending === 1) k.firstId = env.id;
      k.acc = acc;
      if (lineage !== undefined && part === undefined) {
        lineage.absorb();
        (k.lineages ??= []).push(lineage);
        this.absorbed++;
      }
      if (k.pending === size) {
        const failed = this.emit(k, k.acc as A, k.seen - size, k.seen, size, 'on-time', k.lineages, k.firstId);
        this.closeTumbling(k, failed);
      }
      return;
    }
    // Sliding: keep the last `size` inputs; the one pushed out has left its last window.
    const ring = (k.ring ??= []);
    let evicted: Slot<T> | undefined;
    if (ring.length === size) evicted = ring.shift();
    const held = part === undefined ? lineage : undefined;
    ring.push({ id: env.id, data: env.data, eventTime: t, lineage: held });
    if (held !== undefined) {
      held.absorb();
      this.absorbed++;
    }
    if (evicted?.lineage !== undefined) {
      this.absorbed--;
      evicted.lineage.releaseAbsorbed();
    }
    if (k.pending === slide) this.fireSliding(k, 'on-time');
  }

  fireSliding(k: KeyCount<T, A>, firing: Firing): void {
    const { aggregate } = this.config;
    const ring = k.ring as Slot<T>[];
    let acc = aggregate.init();
    let maxTime = Number.NEGATIVE_INFINITY;
    const lineages: Lineage[] = [];
    for (const slot of ring) {
      acc = aggregate.add(acc, slot.data, slot.eventTime ?? 0);
      if (slot.eventTime !== undefined && slot.eventTime > maxTime) maxTime = slot.eventTime;
      if (slot.lineage !== undefined) lineages.push(slot.lineage);
    }
    k.maxEventTime = maxTime;
    k.pending = 0;
    this.part?.changed.add(k);
    this.emit(k, acc, k.seen - ring.length, k.seen, ring.length, firing, lineages, (ring[0] as Slot<T>).id);
  }

  flushPartial(k: KeyCount<T, A>): void {
    if (this.sliding) {
      this.fireSliding(k, 'partial');
      return;
    }
    const failed = this.emit(k, k.acc as A, k.seen - k.pending, k.seen, k.pending, 'partial', k.lineages, k.firstId);
    this.closeTumbling(k, failed);
  }

  /** Closes the open tumbling window; its inputs settle, failed with `error` if its result failed. */
  closeTumbling(k: KeyCount<T, A>, error?: WindowResultError): void {
    const lineages = k.lineages;
    k.lineages = undefined;
    k.acc = undefined;
    k.pending = 0;
    k.maxEventTime = Number.NEGATIVE_INFINITY;
    this.open--;
    this.part?.changed.add(k);
    if (lineages !== undefined) {
      this.absorbed -= lineages.length;
      for (const l of lineages) l.releaseAbsorbed(error);
    }
  }

  emit(
    k: KeyCount<T, A>,
    acc: A,
    start: number,
    end: number,
    count: number,
    firing: Firing,
    lineages: Lineage[] | undefined,
    firstId: string,
  ): WindowResultError | undefined {
    const key = k.key;
    // Indexes restart with a pipeline (a restart replays only the open window's inputs), ids do not:
    // the window's first input and its size name it the same on any replay.
    const idempotencyKey = `${this.config.name}/${key ?? ''}/${firstId}+${count}`;
    let value: R;
    try {
      value = this.config.aggregate.result(acc);
    } catch (error) {
      const failed = new WindowResultError(this.config.name, key, start, end, error);
      // Tumbling: the window's own inputs fail with it. Sliding: its inputs are in later windows
      // too, so the pipeline fails (and restarts) as for any other operator error.
      if (this.sliding) throw failed;
      return failed;
    }
    const data: WindowResult<R> = {
      key,
      start,
      end,
      value,
      count,
      firing,
      watermark: this.watermark,
      isUpdate: false,
      revision: 0,
      idempotencyKey,
      supersedes: undefined,
    };
    this.totals.results++;
    this.out.next({
      id: nextId(),
      subject: this.config.subject ?? k.subject,
      data,
      key,
      eventTime: k.maxEventTime === Number.NEGATIVE_INFINITY ? undefined : k.maxEventTime,
      headers: { 'sluice-idempotency-key': idempotencyKey },
      attempt: 1,
      replyTo: undefined,
      lineage: lineages === undefined || lineages.length === 0 ? undefined : mergeLineage(lineages),
    });
    return undefined;
  }
}

/**
 * How one key is stored in a checkpoint: short names, as there is one record per key. `n` the
 * inputs seen, `p` those in the open window, `a`/`i` its accumulator and first input's id
 * (tumbling), `r` the last inputs as `[id, data, eventTime]` (sliding).
 */
interface StoredCount<T> {
  readonly k: string | null;
  readonly n: number;
  readonly p: number;
  readonly j: string;
  readonly t: number | null;
  readonly a: unknown;
  readonly i: string;
  readonly r: [string, T, number | null][] | null;
}

/** What a stopped operator hands to the next instance of itself (see `CountWindows.stop`). */
interface CountHandoff<T, A> {
  readonly part: CountPart<T, A>;
  readonly keys: Map<string | undefined, KeyCount<T, A>>;
  readonly open: number;
  readonly watermark: number;
}

/**
 * @internal The count windows of one operator instance (and those after it, through a pipeline
 * restart) as a checkpoint commits them: the keys changed since the last checkpoint, and the
 * watermark results carry. One record per key, never the inputs of a tumbling window.
 */
class CountPart<T, A> {
  windows: CountWindows<T, A, unknown>;
  readonly prefix: string;
  readonly id: string;
  readonly watermarkKey: string;
  readonly changed = new Set<KeyCount<T, A>>();
  watermarkDirty = false;
  readonly retired = false;
  /** Where a stopped instance leaves its state for the next one (the checkpoint's, per actor). */
  readonly handoff: Map<string, unknown>;

  constructor(windows: CountWindows<T, A, unknown>, prefix: string, handoff: Map<string, unknown>) {
    this.windows = windows;
    this.prefix = prefix;
    this.id = prefix.slice(0, -1);
    this.watermarkKey = `${prefix}$watermark`;
    this.handoff = handoff;
  }

  get dirty(): boolean {
    return this.changed.size > 0 || this.watermarkDirty;
  }

  /** `=key`, or `-` for inputs without a key: neither can be taken for the other, or for `$watermark`. */
  keyOf(key: string | undefined): string {
    return key === undefined ? `${this.prefix}-` : `${this.prefix}=${key}`;
  }

  write(batch: StoreBatch, namespace: string): void {
    const store = this.windows.config.aggregate.store;
    for (const k of this.changed) {
      const record: StoredCount<T> = {
        k: k.key ?? null,
        n: k.seen,
        p: k.pending,
        j: k.subject,
        t: k.maxEventTime === Number.NEGATIVE_INFINITY ? null : k.maxEventTime,
        a: k.acc === undefined ? null : store === undefined ? k.acc : store(k.acc),
        i: k.firstId,
        r: k.ring === undefined ? null : k.ring.map((s) => [s.id, s.data, s.eventTime ?? null]),
      };
      batch.put(namespace, this.keyOf(k.key), record);
    }
    this.changed.clear();
    if (this.watermarkDirty) {
      batch.put(namespace, this.watermarkKey, this.windows.watermark);
      this.watermarkDirty = false;
    }
  }
}
