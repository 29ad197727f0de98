import { Observable } from 'rxjs';
import type { Clock, Timer } from '../../runtime/clock.ts';
import { type Envelope, nextId } from '../../runtime/envelope.ts';
import { LateDataError } from '../../runtime/errors.ts';
import { type Lineage, mergeLineage } from '../../runtime/lineage.ts';
import type { Aggregate } from '../aggregate.ts';
import { type Timed, Watermark } from '../watermarks.ts';
import type { Firing, LateReason, ResolvedWindowOptions, WindowOperator, WindowResult, WindowStats } from './types.ts';

/**
 * @internal The window assigner: aligned windows (tumbling: slide = size; sliding) or sessions.
 */
export type Assigner =
  | { readonly kind: 'aligned'; readonly sizeMs: number; readonly slideMs: number; readonly offsetMs: number }
  | { readonly kind: 'session'; readonly gapMs: number };

interface Totals {
  results: number;
  late: number;
}

/**
 * @internal Builds a window operator: each subscription gets its own `TimeWindows` state;
 * `stats()` sums the live ones.
 */
export function timeWindowOperator<T, A, R>(
  options: ResolvedWindowOptions<T, A, R>,
  assigner: Assigner,
): WindowOperator<T, R> {
  const live = new Set<TimeWindows<T, A, R>>();
  const totals: Totals = { results: 0, late: 0 };
  const operator = (source: Observable<Timed<T>>) =>
    new Observable<Envelope<WindowResult<R>>>((subscriber) => {
      const windows = new TimeWindows(options, assigner, subscriber, totals);
      live.add(windows);
      const sub = source.subscribe(windows);
      return () => {
        sub.unsubscribe();
        windows.stop();
        live.delete(windows);
      };
    });
  return Object.assign(operator, { stats: (): WindowStats => statsOf(live, totals) });
}

function statsOf<T, A, R>(live: Set<TimeWindows<T, A, R>>, totals: Totals): WindowStats {
  let keys = 0;
  let openWindows = 0;
  let absorbed = 0;
  let watermark = Number.NEGATIVE_INFINITY;
  for (const w of live) {
    keys += w.keys.size;
    openWindows += w.openWindows;
    absorbed += w.absorbed;
    if (w.watermark > watermark) watermark = w.watermark;
  }
  return { keys, openWindows, absorbed, watermark, results: totals.results, late: totals.late };
}

interface Output<R> {
  next(value: Envelope<WindowResult<R>>): void;
  error(error: unknown): void;
  complete(): void;
}

class KeyState<A> {
  readonly key: string | undefined;
  /** Open windows; sessions are kept sorted by start (and never touch each other). */
  readonly wins: Win<A>[] = [];
  constructor(key: string | undefined) {
    this.key = key;
  }
}

class Win<A> {
  readonly ks: KeyState<A>;
  start: number;
  end: number;
  acc: A | undefined;
  readonly subject: string;
  /** The watermark has passed `end - 1`: every input now fires a late result. */
  closed: boolean;
  count = 0;
  lineages: Lineage[] | undefined = undefined;
  revision = 0;
  /** Inputs since the last result, for `early.everyEvents`. */
  sinceFire = 0;
  /** The one timer that counts; entries left in the queue at other times are stale. */
  timerAt = Number.NaN;
  alive = true;
  /** Idempotency key of the last result, while the window keeps those bounds. */
  lastKey: string | undefined = undefined;
  supersedes: string[] | undefined = undefined;

  constructor(ks: KeyState<A>, start: number, end: number, acc: A, subject: string, closed: boolean) {
    this.ks = ks;
    this.start = start;
    this.end = end;
    this.acc = acc;
    this.subject = subject;
    this.closed = closed;
  }
}

/** Event-time timers: a min-heap of distinct times, each with the windows due then. */
class TimerQueue<W> {
  readonly heap: number[] = [];
  readonly buckets = new Map<number, W[]>();

  add(time: number, item: W): void {
    const bucket = this.buckets.get(time);
    if (bucket !== undefined) {
      bucket.push(item);
      return;
    }
    this.buckets.set(time, [item]);
    const heap = this.heap;
    let i = heap.length;
    heap.push(time);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent] as number;
      if (p <= time) break;
      heap[i] = p;
      i = parent;
    }
    heap[i] = time;
  }

  /** Removes the earliest time; returns its windows. */
  pop(): W[] {
    const heap = this.heap;
    const top = heap[0] as number;
    const last = heap.pop() as number;
    const n = heap.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && (heap[r] as number) < (heap[l] as number) ? r : l;
        if ((heap[c] as number) >= last) break;
        heap[i] = heap[c] as number;
        i = c;
      }
      heap[i] = last;
    }
    const bucket = this.buckets.get(top) as W[];
    this.buckets.delete(top);
    return bucket;
  }

  clear(): void {
    this.heap.length = 0;
    this.buckets.clear();
  }
}

/**
 * @internal The state of one subscription of a time window operator, and its observer (no
 * closures on the hot path). Flink's `WindowOperator` with its `EventTimeTrigger`, for one key
 * space: windows fire when the watermark reaches `end - 1`, stay until `end - 1 + lateness`
 * (each input in between fires again), and inputs whose windows are all past that go to `late`.
 */
class TimeWindows<T, A, R> {
  readonly out: Output<R>;
  readonly totals: Totals;
  readonly name: string;
  readonly agg: Aggregate<T, A, R>;
  readonly keyed: boolean;
  readonly lateness: number;
  readonly onLate: ((env: Envelope<T>, reason: LateReason) => void) | undefined;
  readonly earlyEvents: number;
  readonly earlyMs: number;
  readonly clock: Clock;
  readonly subject: string | undefined;
  readonly merging: boolean;
  readonly size: number;
  readonly slide: number;
  readonly offset: number;
  readonly gap: number;

  readonly keys = new Map<string | undefined, KeyState<A>>();
  readonly timers = new TimerQueue<Win<A>>();
  watermark = Number.NEGATIVE_INFINITY;
  openWindows = 0;
  absorbed = 0;
  done = false;
  dirty: Set<Win<A>> | undefined = undefined;
  earlyTimer: Timer | undefined = undefined;
  /** Lineages of purged windows, released once the current step is over (see `flush`). */
  readonly toRelease: Lineage[][] = [];
  flushing = false;

  constructor(options: ResolvedWindowOptions<T, A, R>, assigner: Assigner, out: Output<R>, totals: Totals) {
    this.out = out;
    this.totals = totals;
    this.name = options.name;
    this.agg = options.aggregate;
    this.keyed = options.keyed;
    this.lateness = options.allowedLatenessMs;
    this.onLate = options.late;
    this.earlyEvents = options.earlyEvents;
    this.earlyMs = options.earlyMs;
    this.clock = options.clock;
    this.subject = options.subject;
    this.merging = assigner.kind === 'session';
    this.size = assigner.kind === 'aligned' ? assigner.sizeMs : 0;
    this.slide = assigner.kind === 'aligned' ? assigner.slideMs : 0;
    this.offset = assigner.kind === 'aligned' ? assigner.offsetMs : 0;
    this.gap = assigner.kind === 'session' ? assigner.gapMs : 0;
  }

  // ---- observer ----

  next(item: Timed<T>): void {
    if (this.done) return;
    try {
      if (item instanceof Watermark) {
        if (item.time > this.watermark) this.advance(item.time);
      } else if (this.merging) this.session(item);
      else this.aligned(item);
    } catch (error) {
      this.fail(error);
      return;
    }
    if (this.toRelease.length > 0) this.flush();
  }

  error(error: unknown): void {
    if (this.done) return;
    // State is let go without settling what it held: the actor replays those inputs into the
    // restarted pipeline (docs/settlement.md), where they recompute the same windows.
    this.flush();
    this.stop();
    this.out.error(error);
  }

  complete(): void {
    if (this.done) return;
    try {
      // The end of the input is the end of event time, as Flink's final MAX_WATERMARK.
      this.advance(Number.POSITIVE_INFINITY);
    } catch (error) {
      this.fail(error);
      return;
    }
    this.flush();
    this.stop();
    this.out.complete();
  }

  /** Unsubscribed, failed or completed: drops state (see `error` for why nothing is settled). */
  stop(): void {
    this.done = true;
    this.earlyTimer?.cancel();
    this.earlyTimer = undefined;
    this.keys.clear();
    this.timers.clear();
    this.dirty = undefined;
    this.openWindows = 0;
    this.absorbed = 0;
  }

  fail(error: unknown): void {
    // Windows that fired and purged before the failure are done: their inputs may settle.
    this.flush();
    this.stop();
    this.out.error(error);
  }

  // ---- assignment ----

  aligned(env: Envelope<T>): void {
    const ts = env.eventTime;
    if (ts === undefined || Number.isNaN(ts)) {
      this.late(env, 'missing-event-time');
      return;
    }
    const size = this.size;
    const slide = this.slide;
    const horizon = this.watermark - this.lateness;
    let r = (ts - this.offset) % slide;
    if (r < 0) r += slide;
    if (r >= size) {
      this.late(env, 'no-window');
      return;
    }
    let ks: KeyState<A> | undefined;
    let taken = false;
    // Flink's order: the latest window first. Earlier ones end earlier, so once one is past its
    // allowed lateness, all the rest are too.
    for (let start = ts - r; start > ts - size; start -= slide) {
      const end = start + size;
      if (end - 1 <= horizon) break;
      if (ks === undefined) ks = this.keyState(this.keyed ? env.key : undefined);
      const w = find(ks.wins, start) ?? this.open(ks, start, end, env.subject);
      this.add(w, env, ts);
      taken = true;
      this.trigger(w);
    }
    if (!taken) this.late(env, 'beyond-allowed-lateness');
  }

  session(env: Envelope<T>): void {
    const ts = env.eventTime;
    if (ts === undefined || Number.isNaN(ts)) {
      this.late(env, 'missing-event-time');
      return;
    }
    const key = this.keyed ? env.key : undefined;
    const end = ts + this.gap;
    const ks = this.keys.get(key);
    // Flink merges windows that overlap or just touch (TimeWindow.intersects); sessions kept
    // sorted and apart, so the ones the new window [ts, end) touches are consecutive.
    let first = -1;
    let last = -1;
    if (ks !== undefined) {
      const wins = ks.wins;
      for (let i = 0; i < wins.length; i++) {
        const w = wins[i] as Win<A>;
        if (w.start > end) break;
        if (w.end >= ts) {
          if (first < 0) first = i;
          last = i;
        }
      }
    }
    if (first < 0) {
      if (end - 1 <= this.watermark - this.lateness) {
        this.late(env, 'beyond-allowed-lateness');
        return;
      }
      const w = this.open(ks ?? this.keyState(key), ts, end, env.subject);
      this.add(w, env, ts);
      this.trigger(w);
      return;
    }
    // A window touching an open one cannot be late: the merged window ends no earlier than a
    // window the watermark has not purged.
    const wins = (ks as KeyState<A>).wins;
    const target = wins[first] as Win<A>;
    const merge = this.agg.merge as (a: A, b: A) => A;
    const start = ts < target.start ? ts : target.start;
    let newEnd = end > target.end ? end : target.end;
    for (let i = first + 1; i <= last; i++) {
      const o = wins[i] as Win<A>;
      if (o.end > newEnd) newEnd = o.end;
    }
    // Keys of results whose windows change bounds, in window order.
    let superseded = target.supersedes;
    if ((start !== target.start || newEnd !== target.end) && target.lastKey !== undefined) {
      (superseded ??= []).push(target.lastKey);
      target.lastKey = undefined;
    }
    for (let i = first + 1; i <= last; i++) {
      const o = wins[i] as Win<A>;
      target.acc = merge(target.acc as A, o.acc as A);
      target.count += o.count;
      target.revision += o.revision;
      target.sinceFire += o.sinceFire;
      if (o.lineages !== undefined) {
        if (target.lineages === undefined) target.lineages = o.lineages;
        else for (const l of o.lineages) target.lineages.push(l);
      }
      if (o.supersedes !== undefined) (superseded ??= []).push(...o.supersedes);
      if (o.lastKey !== undefined) (superseded ??= []).push(o.lastKey);
      const dirty = this.dirty;
      if (dirty?.delete(o)) dirty.add(target);
      o.alive = false;
      o.acc = undefined;
      o.lineages = undefined;
      this.openWindows--;
    }
    if (last > first) wins.splice(first + 1, last - first);
    target.supersedes = superseded;
    target.start = start;
    target.end = newEnd;
    // Growing past the watermark reopens a window that had fired: it fires again on time.
    target.closed = newEnd - 1 <= this.watermark;
    const at = target.closed ? newEnd - 1 + this.lateness : newEnd - 1;
    if (at !== target.timerAt) this.schedule(target, at);
    this.add(target, env, ts);
    this.trigger(target);
  }

  keyState(key: string | undefined): KeyState<A> {
    let ks = this.keys.get(key);
    if (ks === undefined) {
      ks = new KeyState<A>(key);
      this.keys.set(key, ks);
    }
    return ks;
  }

  open(ks: KeyState<A>, start: number, end: number, subject: string): Win<A> {
    const closed = end - 1 <= this.watermark;
    const w = new Win<A>(ks, start, end, this.agg.init(), subject, closed);
    const wins = ks.wins;
    if (this.merging) {
      let i = wins.length;
      while (i > 0 && (wins[i - 1] as Win<A>).start > start) i--;
      wins.splice(i, 0, w);
    } else wins.push(w);
    this.openWindows++;
    this.schedule(w, closed ? end - 1 + this.lateness : end - 1);
    return w;
  }

  add(w: Win<A>, env: Envelope<T>, ts: number): void {
    w.acc = this.agg.add(w.acc as A, env.data, ts);
    w.count++;
    const lineage = env.lineage;
    if (lineage !== undefined) {
      lineage.absorb();
      if (w.lineages === undefined) w.lineages = [lineage];
      else w.lineages.push(lineage);
      this.absorbed++;
    }
  }

  // ---- triggers ----

  trigger(w: Win<A>): void {
    if (w.closed) {
      this.fire(w, 'late');
      return;
    }
    if (this.earlyEvents !== 0 && ++w.sinceFire >= this.earlyEvents) {
      this.fire(w, 'early');
      return;
    }
    if (this.earlyMs !== 0) this.markDirty(w);
  }

  schedule(w: Win<A>, time: number): void {
    w.timerAt = time;
    this.timers.add(time, w);
  }

  advance(time: number): void {
    this.watermark = time;
    const heap = this.timers.heap;
    while (heap.length > 0 && (heap[0] as number) <= time) {
      const at = heap[0] as number;
      const due = this.timers.pop();
      for (let i = 0; i < due.length; i++) {
        const w = due[i] as Win<A>;
        if (!w.alive || w.timerAt !== at) continue;
        if (!w.closed) {
          w.closed = true;
          this.fire(w, 'on-time');
        }
        const cleanup = w.end - 1 + this.lateness;
        if (cleanup <= this.watermark) this.purge(w);
        else this.schedule(w, cleanup);
      }
    }
  }

  markDirty(w: Win<A>): void {
    (this.dirty ??= new Set()).add(w);
    if (this.earlyTimer !== undefined) return;
    const every = this.earlyMs;
    const now = this.clock.now();
    let r = now % every;
    if (r < 0) r += every;
    this.earlyTimer = this.clock.setTimeout(() => this.tick(), every - r);
  }

  tick(): void {
    this.earlyTimer = undefined;
    if (this.done || this.dirty === undefined) return;
    const due = [...this.dirty];
    this.dirty.clear();
    try {
      for (const w of due) if (w.alive && !w.closed) this.fire(w, 'early');
    } catch (error) {
      this.fail(error);
      return;
    }
    if (this.toRelease.length > 0) this.flush();
  }

  // ---- results ----

  fire(w: Win<A>, firing: Firing): void {
    const key = w.ks.key;
    const idempotencyKey = `${this.name}/${key ?? ''}/${w.start}-${w.end}`;
    const data: WindowResult<R> = {
      key,
      start: w.start,
      end: w.end,
      value: this.agg.result(w.acc as A),
      count: w.count,
      firing,
      isUpdate: w.revision > 0,
      revision: w.revision,
      idempotencyKey,
      supersedes: w.supersedes,
    };
    w.supersedes = undefined;
    w.lastKey = idempotencyKey;
    w.revision++;
    w.sinceFire = 0;
    this.dirty?.delete(w);
    this.totals.results++;
    const lineages = w.lineages;
    // Downstream takes its own reference on the result's lineage while `next` runs (the actor
    // publishes it and the mailbox absorbs it); the window's references go only when it purges.
    this.out.next({
      id: nextId(),
      subject: this.subject ?? w.subject,
      data,
      key,
      eventTime: w.end - 1,
      headers: { 'sluice-idempotency-key': idempotencyKey },
      attempt: 1,
      replyTo: undefined,
      lineage: lineages === undefined ? undefined : mergeLineage(lineages),
    });
  }

  purge(w: Win<A>): void {
    w.alive = false;
    const ks = w.ks;
    const wins = ks.wins;
    const i = wins.indexOf(w);
    if (i >= 0) wins.splice(i, 1);
    if (wins.length === 0) this.keys.delete(ks.key);
    this.openWindows--;
    this.dirty?.delete(w);
    w.acc = undefined;
    const lineages = w.lineages;
    if (lineages !== undefined) {
      w.lineages = undefined;
      this.absorbed -= lineages.length;
      this.toRelease.push(lineages);
    }
  }

  /**
   * Gives back the references of purged windows, after the step that purged them. Giving one back
   * can settle an input, which lets the actor deliver the next one into this very operator: by
   * then the state is consistent again.
   */
  flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    try {
      for (let batch = this.toRelease.pop(); batch !== undefined; batch = this.toRelease.pop()) {
        for (const lineage of batch) lineage.releaseAbsorbed();
      }
    } finally {
      this.flushing = false;
    }
  }

  late(env: Envelope<T>, reason: LateReason): void {
    this.totals.late++;
    const copy: Envelope<T> = {
      ...env,
      headers: {
        ...env.headers,
        'sluice-late-reason': reason,
        'sluice-late-watermark': String(this.watermark),
        'sluice-window': this.name,
      },
    };
    if (this.onLate !== undefined) {
      this.onLate(copy, reason);
      return;
    }
    const lineage = env.lineage;
    if (lineage === undefined) return;
    // Fails the input (not retryable), so the actor dead-letters it with the reason.
    lineage.retain();
    lineage.release(new LateDataError(this.name, env.id, reason, env.eventTime, this.watermark));
  }
}

function find<A>(wins: Win<A>[], start: number): Win<A> | undefined {
  for (let i = 0; i < wins.length; i++) {
    const w = wins[i] as Win<A>;
    if (w.start === start) return w;
  }
  return undefined;
}
