import { ACCEPTED } from '../../runtime/bus/bus.ts';
import type { Clock, Timer } from '../../runtime/clock.ts';
import { type Envelope, nextId } from '../../runtime/envelope.ts';
import { LateDataError } from '../../runtime/errors.ts';
import { hold, type Lineage, mergeLineage } from '../../runtime/lineage.ts';
import { activeCheckpoint, type OperatorCheckpoint } from '../../runtime/state/operatorState.ts';
import type { StoreBatch } from '../../runtime/store/types.ts';
import type { Aggregate } from '../aggregate.ts';
import { type Timed, Watermark } from '../watermarks.ts';
import { TimerQueue } from './timerQueue.ts';
import {
  type Firing,
  type LateReason,
  type ResolvedWindowOptions,
  type WindowOperator,
  type WindowOutput,
  type WindowResult,
  WindowResultError,
  type WindowStats,
  windowOperator,
} from './types.ts';
import { KeyState, Win } from './windowState.ts';

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
  const totals: Totals = { results: 0, late: 0 };
  return windowOperator(
    (out: WindowOutput<R>) => new TimeWindows(options, assigner, out, totals),
    (live) => statsOf(live, totals),
    {
      name: options.name,
      kind: assigner.kind === 'session' ? 'session' : assigner.sizeMs === assigner.slideMs ? 'tumbling' : 'sliding',
      nextTimer: (run) => run.timers.heap[0],
    },
  );
}

function statsOf<T, A, R>(live: ReadonlySet<TimeWindows<T, A, R>>, totals: Totals): WindowStats {
  let keys = 0;
  let idleKeys = 0;
  let openWindows = 0;
  let absorbed = 0;
  let watermark = Number.NEGATIVE_INFINITY;
  for (const w of live) {
    keys += w.openKeys;
    idleKeys += w.emptyKeys;
    openWindows += w.openWindows;
    absorbed += w.absorbed;
    if (w.watermark > watermark) watermark = w.watermark;
  }
  return { keys, idleKeys, openWindows, absorbed, watermark, results: totals.results, late: totals.late };
}

/**
 * @internal The state of one subscription of a time window operator, and its observer (no
 * closures on the hot path). Flink's `WindowOperator` with its `EventTimeTrigger`, for one key
 * space: windows fire when the watermark reaches `end - 1`, stay until `end - 1 + lateness`
 * (each input in between fires again), and inputs whose windows are all past that go to `late`.
 */
class TimeWindows<T, A, R> {
  readonly out: WindowOutput<R>;
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
  /** Lineages of windows whose result failed, and the error each fails with (see `flush`). */
  readonly toFail: [Lineage[], WindowResultError][] = [];
  /** The input completed: windows the end of event time closes fire as `final`. */
  ending = false;
  flushing = false;
  /**
   * Keys whose windows all closed. They are kept for a while (a key usually gets its next window
   * soon, and dropping and re-adding it to the map costs more than the window) and swept once
   * they have stayed empty for a whole sweep period of event time: at most two periods.
   */
  emptied: KeyState<A>[] = [];
  emptyKeys = 0;
  lastSweep = Number.NEGATIVE_INFINITY;
  readonly sweepEveryMs: number;
  /** Purged aligned windows, reused: windows live long enough to reach the old generation. */
  readonly pool: Win<A>[] = [];
  peakOpen = 0;
  readonly prefix: string;
  rangeStart = Number.NaN;
  rangeEnd = Number.NaN;
  range = '';
  /** The actor's checkpoint, when it has one: windows then live in its state, not their inputs. */
  readonly part: WindowPart<A> | undefined;

  constructor(options: ResolvedWindowOptions<T, A, R>, assigner: Assigner, out: WindowOutput<R>, totals: Totals) {
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
    this.sweepEveryMs = (assigner.kind === 'session' ? assigner.gapMs : assigner.sizeMs) + this.lateness;
    this.prefix = `${this.name}/`;
    const cp = activeCheckpoint();
    if (cp !== undefined) {
      const id = `${this.name}/${cp.lane}`;
      const handed = cp.handoff.get(id) as Handoff<A> | undefined;
      if (handed !== undefined) {
        cp.handoff.delete(id);
        this.adopt(handed);
        this.part = handed.part;
        this.part.windows = this as TimeWindows<unknown, A, unknown>;
      } else {
        this.part = new WindowPart<A>(this as TimeWindows<unknown, A, unknown>, `${id}/`, cp.handoff);
        cp.register(this.part);
        this.restore(cp);
      }
    }
  }

  /** The windows and watermark of the last checkpoint. */
  restore(cp: OperatorCheckpoint): void {
    const part = this.part as WindowPart<A>;
    for (const entry of cp.store.scan(cp.namespace, part.prefix)) {
      if (entry.error !== undefined) throw entry.error;
      if (entry.key === part.watermarkKey) {
        this.watermark = entry.value as number;
        continue;
      }
      const r = entry.value as StoredWindow;
      const ks = this.keyState(r.k === null ? undefined : r.k);
      const w = new Win<A>(ks, r.s, r.e, this.agg.restore === undefined ? (r.a as A) : this.agg.restore(r.a), r.j, r.x);
      w.count = r.c;
      w.revision = r.r;
      w.sinceFire = r.f;
      w.lastKey = r.l ?? undefined;
      w.supersedes = r.p ?? undefined;
      w.stored = true;
      ks.wins.push(w);
      this.openWindows++;
      this.schedule(w, w.closed ? w.end - 1 + this.lateness : w.end - 1);
    }
    if (this.merging) for (const ks of this.keys.values()) ks.wins.sort((a, b) => a.start - b.start);
    this.peakOpen = this.openWindows;
  }

  adopt(h: Handoff<A>): void {
    for (const [k, ks] of h.keys) this.keys.set(k, ks);
    this.timers.adopt(h.timers);
    this.watermark = h.watermark;
    this.openWindows = h.openWindows;
    this.emptied = h.emptied;
    this.emptyKeys = h.emptyKeys;
    this.lastSweep = h.lastSweep;
    this.peakOpen = h.openWindows;
  }

  /** Keys with at least one open window. */
  get openKeys(): number {
    return this.keys.size - this.emptyKeys;
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
    if (this.toRelease.length > 0 || this.toFail.length > 0) this.flush();
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
    if (this.part !== undefined) {
      // Checkpointed windows stay open across a stop: they are in the store, and go on after the
      // restart, so the results are those of a run without the stop.
      this.stop();
      this.out.complete();
      return;
    }
    try {
      // The end of the input is the end of event time, as Flink's final MAX_WATERMARK.
      this.ending = true;
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
    if (this.done) return;
    this.done = true;
    this.earlyTimer?.cancel();
    this.earlyTimer = undefined;
    const cp = this.part?.handoff;
    if (cp !== undefined) {
      // What settled since the last checkpoint is only here: the next instance of this operator
      // (a restarted pipeline) goes on from it rather than from the store.
      cp.set(this.part?.id as string, {
        part: this.part as WindowPart<A>,
        keys: new Map(this.keys),
        timers: this.timers,
        watermark: this.watermark,
        openWindows: this.openWindows,
        emptied: this.emptied,
        emptyKeys: this.emptyKeys,
        lastSweep: this.lastSweep,
      });
      this.keys.clear();
      this.dirty = undefined;
      return;
    }
    this.keys.clear();
    this.timers.clear();
    this.dirty = undefined;
    this.openWindows = 0;
    this.absorbed = 0;
    this.emptied = [];
    this.emptyKeys = 0;
    this.pool.length = 0;
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
    if (ts === undefined || !Number.isFinite(ts)) {
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
      let w: Win<A>;
      if (ks.curStart === start) w = ks.cur as Win<A>;
      else {
        w = find(ks.wins, start) ?? this.open(ks, start, end, env.subject);
        ks.cur = w;
        ks.curStart = start;
      }
      this.add(w, env, ts);
      taken = true;
      this.trigger(w);
    }
    if (!taken) this.late(env, 'beyond-allowed-lateness');
  }

  session(env: Envelope<T>): void {
    const ts = env.eventTime;
    if (ts === undefined || !Number.isFinite(ts)) {
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
    if (this.part !== undefined) {
      if (start !== target.start) this.part.remove(target);
      for (let i = first + 1; i <= last; i++) this.part.remove(wins[i] as Win<A>);
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
    let w = this.pool.pop();
    if (w === undefined) w = new Win<A>(ks, start, end, this.agg.init(), subject, closed);
    else {
      w.ks = ks;
      w.start = start;
      w.end = end;
      w.acc = this.agg.init();
      w.subject = subject;
      w.closed = closed;
      w.count = 0;
      w.revision = 0;
      w.sinceFire = 0;
      w.alive = true;
      w.stored = false;
    }
    const wins = ks.wins;
    if (wins.length === 0 && !Number.isNaN(ks.emptiedAt)) {
      ks.emptiedAt = Number.NaN;
      this.emptyKeys--;
    }
    if (this.merging) {
      let i = wins.length;
      while (i > 0 && (wins[i - 1] as Win<A>).start > start) i--;
      wins.splice(i, 0, w);
    } else wins.push(w);
    if (++this.openWindows > this.peakOpen) this.peakOpen = this.openWindows;
    this.schedule(w, closed ? end - 1 + this.lateness : end - 1);
    return w;
  }

  add(w: Win<A>, env: Envelope<T>, ts: number): void {
    w.acc = this.agg.add(w.acc as A, env.data, ts);
    w.count++;
    if (this.part !== undefined) {
      // In the checkpoint's state: the input settles now, acknowledged when that state commits.
      // Retained and released at once, so it counts as used (acked), not as filtered out.
      this.part.touch(w);
      const lineage = env.lineage;
      if (lineage !== undefined) {
        lineage.retain();
        lineage.release();
      }
      return;
    }
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
    if (this.part !== undefined) this.part.watermarkDirty = true;
    if (this.emptied.length > 0 && time >= this.lastSweep + this.sweepEveryMs) this.sweep(time);
    const heap = this.timers.heap;
    while (heap.length > 0 && (heap[0] as number) <= time) {
      const at = heap[0] as number;
      const due = this.timers.pop();
      for (let i = 0; i < due.length; i++) {
        const w = due[i] as Win<A>;
        if (!w.alive || w.timerAt !== at) continue;
        if (!w.closed) {
          w.closed = true;
          this.part?.touch(w);
          this.fire(w, this.ending ? 'final' : 'on-time');
          if (!w.alive) continue; // its result failed
        }
        const cleanup = w.end - 1 + this.lateness;
        if (cleanup <= this.watermark) this.purge(w);
        else this.schedule(w, cleanup);
      }
    }
  }

  /** Forgets keys that stayed empty since before the previous sweep. */
  sweep(time: number): void {
    const keep: KeyState<A>[] = [];
    for (const ks of this.emptied) {
      if (Number.isNaN(ks.emptiedAt)) {
        ks.listed = false; // has windows again
      } else if (ks.emptiedAt <= this.lastSweep) {
        this.keys.delete(ks.key);
        this.emptyKeys--;
        ks.emptiedAt = Number.NaN;
        ks.listed = false;
      } else keep.push(ks);
    }
    this.emptied = keep;
    this.lastSweep = time;
    // The pool holds at most as many windows as were open at once during the last period.
    if (this.pool.length > this.peakOpen) this.pool.length = this.peakOpen;
    this.peakOpen = this.openWindows;
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
    if (this.toRelease.length > 0 || this.toFail.length > 0) this.flush();
  }

  // ---- results ----

  fire(w: Win<A>, firing: Firing): void {
    const key = w.ks.key;
    if (w.start !== this.rangeStart || w.end !== this.rangeEnd) {
      // Aligned windows of all keys share their bounds: format them once.
      this.rangeStart = w.start;
      this.rangeEnd = w.end;
      this.range = `/${w.start}-${w.end}`;
    }
    const idempotencyKey = this.prefix + (key ?? '') + this.range;
    let value: R;
    try {
      value = this.agg.result(w.acc as A);
    } catch (error) {
      // The window's own inputs are the culprits, not the input or watermark that fired it.
      this.purge(w, new WindowResultError(this.name, key, w.start, w.end, error));
      return;
    }
    const data: WindowResult<R> = {
      key,
      start: w.start,
      end: w.end,
      value,
      count: w.count,
      firing,
      watermark: this.watermark,
      isUpdate: w.revision > 0,
      revision: w.revision,
      idempotencyKey,
      supersedes: w.supersedes,
    };
    w.supersedes = undefined;
    w.lastKey = idempotencyKey;
    w.revision++;
    this.part?.touch(w);
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

  /** Drops a window; its inputs settle once the step is over, failed with `error` if given. */
  purge(w: Win<A>, error?: WindowResultError): void {
    if (this.part !== undefined) this.part.remove(w);
    w.alive = false;
    const ks = w.ks;
    const wins = ks.wins;
    const i = wins.indexOf(w);
    if (this.merging) wins.splice(i, 1);
    else {
      // Order does not matter for aligned windows; pop keeps the array's capacity for the next one.
      wins[i] = wins[wins.length - 1] as Win<A>;
      wins.pop();
    }
    if (ks.cur === w) {
      ks.cur = undefined;
      ks.curStart = Number.NaN;
    }
    if (wins.length === 0) {
      ks.emptiedAt = this.watermark;
      this.emptyKeys++;
      if (!ks.listed) {
        ks.listed = true;
        this.emptied.push(ks);
      }
    }
    this.openWindows--;
    this.dirty?.delete(w);
    w.acc = undefined;
    w.supersedes = undefined;
    w.lastKey = undefined;
    const lineages = w.lineages;
    if (lineages !== undefined) {
      w.lineages = undefined;
      this.absorbed -= lineages.length;
      if (error === undefined) this.toRelease.push(lineages);
      else this.toFail.push([lineages, error]);
    }
    // A purged aligned window has no timer left in the queue (its last one is the one running), so
    // it can be reused; a session, or a window dropped by a failed early or late result, may
    // still have stale timer entries, so it is not.
    if (!this.merging && error === undefined) this.pool.push(w);
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
      while (this.toRelease.length > 0 || this.toFail.length > 0) {
        for (let batch = this.toRelease.pop(); batch !== undefined; batch = this.toRelease.pop()) {
          for (const lineage of batch) lineage.releaseAbsorbed();
        }
        const failed = this.toFail.pop();
        if (failed !== undefined) for (const lineage of failed[0]) lineage.releaseAbsorbed(failed[1]);
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
      const sent = this.onLate(copy, reason) as unknown;
      // A forward the bus accepted at once took its reference already. Any other promise holds the
      // input until it settles, so a refused forward fails the input (retried or dead-lettered)
      // instead of letting it settle as dropped: late data never goes silently away.
      if (sent !== ACCEPTED && env.lineage !== undefined && isThenable(sent)) {
        const release = hold(env.lineage);
        sent.then(
          () => release(),
          (error: unknown) => release(error ?? new Error(`late output of window '${this.name}' failed`)),
        );
      }
      return;
    }
    const lineage = env.lineage;
    if (lineage === undefined) return;
    // Fails the input (not retryable), so the actor dead-letters it with the reason.
    lineage.retain();
    lineage.release(new LateDataError(this.name, env.id, reason, env.eventTime, this.watermark));
  }
}

/** How a window is stored in a checkpoint: short keys, as there is one per key and window. */
interface StoredWindow {
  readonly k: string | null;
  readonly s: number;
  readonly e: number;
  /** The accumulator, in its stored form when the aggregate has one (`Aggregate.store`). */
  readonly a: unknown;
  readonly c: number;
  readonly r: number;
  readonly f: number;
  readonly x: boolean;
  readonly j: string;
  readonly l: string | null;
  readonly p: string[] | null;
}

/** What a stopped operator hands to the next instance of itself (see `TimeWindows.stop`). */
interface Handoff<A> {
  readonly part: WindowPart<A>;
  readonly keys: Map<string | undefined, KeyState<A>>;
  readonly timers: TimerQueue<Win<A>>;
  readonly watermark: number;
  readonly openWindows: number;
  readonly emptied: KeyState<A>[];
  readonly emptyKeys: number;
  readonly lastSweep: number;
}

/**
 * @internal The windows of one operator instance (and those after it, through a pipeline
 * restart) as a checkpoint commits them: the windows changed since the last checkpoint, the ones
 * gone, and the watermark. One record per key and window: the accumulator, never the inputs.
 */
class WindowPart<A> {
  windows: TimeWindows<unknown, A, unknown>;
  readonly prefix: string;
  readonly id: string;
  readonly watermarkKey: string;
  /**
   * Windows changed since the last checkpoint, each once (`Win.queued`): an array and a flag, not
   * a set, as every input touches a window and hashing it each time cost more than the window.
   */
  readonly changed: Win<A>[] = [];
  /** Store keys of windows a checkpoint wrote and that are gone since. */
  readonly removed: string[] = [];
  watermarkDirty = false;
  readonly retired = false;

  /** Where a stopped instance leaves its state for the next one (the checkpoint's, per actor). */
  readonly handoff: Map<string, unknown>;

  constructor(windows: TimeWindows<unknown, A, unknown>, prefix: string, handoff: Map<string, unknown>) {
    this.windows = windows;
    this.prefix = prefix;
    this.id = prefix.slice(0, -1);
    this.watermarkKey = `${prefix}$watermark`;
    this.handoff = handoff;
  }

  get dirty(): boolean {
    return this.changed.length > 0 || this.removed.length > 0 || this.watermarkDirty;
  }

  keyOf(w: Win<A>): string {
    return `${this.prefix}${w.start}/${w.ks.key ?? ''}`;
  }

  touch(w: Win<A>): void {
    if (w.queued) return;
    w.queued = true;
    this.changed.push(w);
  }

  /**
   * A window is gone, or moves to other bounds (a session that grew earlier). Only one a
   * checkpoint wrote needs a delete: a window opened and closed between two checkpoints never
   * reaches the store, which is most windows when checkpoints are further apart than windows.
   */
  remove(w: Win<A>): void {
    if (!w.stored) return;
    w.stored = false;
    this.removed.push(this.keyOf(w));
  }

  write(batch: StoreBatch, namespace: string): void {
    const removed = this.removed;
    for (let i = 0; i < removed.length; i++) batch.delete(namespace, removed[i] as string);
    removed.length = 0;
    const changed = this.changed;
    const store = this.windows.agg.store;
    for (let i = 0; i < changed.length; i++) {
      const w = changed[i] as Win<A>;
      w.queued = false;
      if (!w.alive) continue;
      const record: StoredWindow = {
        k: w.ks.key ?? null,
        s: w.start,
        e: w.end,
        a: store === undefined ? w.acc : store(w.acc as A),
        c: w.count,
        r: w.revision,
        f: w.sinceFire,
        x: w.closed,
        j: w.subject,
        l: w.lastKey ?? null,
        p: w.supersedes ?? null,
      };
      batch.put(namespace, this.keyOf(w), record);
      w.stored = true;
    }
    changed.length = 0;
    if (this.watermarkDirty) {
      batch.put(namespace, this.watermarkKey, this.windows.watermark);
      this.watermarkDirty = false;
    }
  }

  /** Windows held now, for tests of what state costs. */
  get size(): number {
    return this.windows.openWindows;
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | null | undefined)?.then === 'function';
}

function find<A>(wins: Win<A>[], start: number): Win<A> | undefined {
  // Newest first: an input mostly goes to the latest windows.
  for (let i = wins.length - 1; i >= 0; i--) {
    const w = wins[i] as Win<A>;
    if (w.start === start) return w;
  }
  return undefined;
}
