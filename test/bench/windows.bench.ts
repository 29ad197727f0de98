/**
 * `npm run bench -- windows`: keyed event-time windows against what a user would otherwise write
 * (DESIGN.md section 10). 5,000,000 events over 10,000 keys; event time advances 1 ms per event
 * with uniform disorder up to 2 s and a 2 s out-of-orderness bound (about 83 minutes of event
 * time). Two jobs: a 60 s tumbling count per key, and a 60 s / 10 s sliding mean per key.
 *
 * Contenders, each checking its own output (window count and the events they hold):
 * - `sluice`: `watermarks` then `tumbling` / `sliding` from `sluice/operators`, fed envelopes made
 *   before the clock starts (what an actor's pipeline runs; the bus is measured by the bus bench);
 * - `hand-loop`: a hand-written loop over a Map per open window with the same watermark rule, the
 *   floor of what JavaScript can do;
 * - `rxjs`: plain RxJS as a user without Sluice would write it, `groupBy` key and window then
 *   `reduce`; with no watermarks it emits every window when the input completes;
 * - `sluice-actor`: the same job in an actor, events published on the bus one by one, with its
 *   windows checkpointed to an LMDB store every second (docs/checkpoints.md): what a stateful actor
 *   costs when its state is its accumulators;
 * - `sluice-actor-replay`: the same actor with no store, which keeps every input until its window
 *   fires so that a pipeline restart can replay them (docs/settlement.md).
 * Each contender runs in a process of its own (the cases are `isolate`d): the operators' 5M
 * envelopes, the replaying actor's million held inputs and RxJS's groups are garbage that a
 * collection during the next contender's run was charged to. In one shared process the
 * checkpointed actor measured 174K events/s after them, and 1.1M with only the operators before it.
 * Figures are events per second.
 */
import { from, groupBy, mergeMap, reduce, Subject } from 'rxjs';
import { actor, createEnvelope, createRuntime, type Envelope, LmdbStore } from 'sluice';
import { agg, sliding, type Timed, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { type Contender, defineBench, expectCount, seededRandom, tempPath, until } from './harness.ts';

const KEYS = 10_000;
const DISORDER_MS = 2_000;
const SIZE_MS = 60_000;
const SLIDE_MS = 10_000;
const START = Date.UTC(2026, 0, 1);
const KEY_NAMES = Array.from({ length: KEYS }, (_, k) => `key-${k}`);

interface Workload {
  readonly n: number;
  readonly ts: Float64Array;
  readonly key: Uint16Array;
  readonly value: Float64Array;
  /** Distinct (key, window) pairs: the results each job must emit. */
  readonly tumblingWindows: number;
  readonly slidingWindows: number;
}

const workloads = new Map<number, Workload>();

/** The same events for every contender and round: made once per size. */
function workload(n: number): Workload {
  let w = workloads.get(n);
  if (w !== undefined) return w;
  const rnd = seededRandom(42);
  const ts = new Float64Array(n);
  const key = new Uint16Array(n);
  const value = new Float64Array(n);
  // Distinct (window, key) pairs marked in flat arrays, not Sets: Sets of millions of numbers left
  // a heap so large behind them that the contenders timed after this setup ran several times slower.
  const tumblingPairs = new Uint8Array((Math.floor(n / SIZE_MS) + 2) * KEYS);
  const slidingPairs = new Uint8Array((Math.floor(n / SLIDE_MS) + 12) * KEYS);
  let tumblingWindows = 0;
  let slidingWindows = 0;
  for (let i = 0; i < n; i++) {
    ts[i] = START + i - Math.floor(rnd() * DISORDER_MS);
    key[i] = Math.floor(rnd() * KEYS);
    value[i] = Math.floor(rnd() * 1000);
    const t = ts[i] as number;
    const k = key[i] as number;
    // +1: the first events' disorder puts them before START, in window -1.
    const tumbling = (Math.floor((t - START) / SIZE_MS) + 1) * KEYS + k;
    if (tumblingPairs[tumbling] === 0) {
      tumblingPairs[tumbling] = 1;
      tumblingWindows++;
    }
    const lastStart = t - (t % SLIDE_MS);
    for (let s = lastStart; s > t - SIZE_MS; s -= SLIDE_MS) {
      const pair = Math.floor((s - START) / SLIDE_MS + 10) * KEYS + k;
      if (slidingPairs[pair] === 0) {
        slidingPairs[pair] = 1;
        slidingWindows++;
      }
    }
  }
  w = { n, ts, key, value, tumblingWindows, slidingWindows };
  workloads.set(n, w);
  return w;
}

/** The operators' inputs, made before the clock starts and dropped after the run. */
function envelopes(w: Workload): Envelope<number>[] {
  const list: Envelope<number>[] = new Array(w.n);
  for (let i = 0; i < w.n; i++) {
    list[i] = createEnvelope('events', w.value[i] as number, {
      key: KEY_NAMES[w.key[i] as number] as string,
      eventTime: w.ts[i] as number,
    });
  }
  return list;
}

/** Checks a job's results: every window once, holding every event once (six times when sliding). */
class Check {
  results = 0;
  events = 0;
  readonly take = (r: { count: number }): void => {
    this.results++;
    this.events += r.count;
  };
  verify(what: string, windows: number, events: number): void {
    expectCount(`${what} windows`, this.results, windows);
    expectCount(`${what} events in windows`, this.events, events);
  }
}

const PER_WINDOW = SIZE_MS / SLIDE_MS;

// ---- sluice ----

function sluiceJob(kind: 'tumbling' | 'sliding'): Contender {
  return (n) => {
    const w = workload(n);
    let input: Envelope<number>[] = envelopes(w);
    const run = async () => {
      const check = new Check();
      const source = new Subject<Timed<number>>();
      const window =
        kind === 'tumbling'
          ? tumbling<number, number, number>({ name: 'bench', sizeMs: SIZE_MS, aggregate: agg.count() })
          : sliding({ name: 'bench', sizeMs: SIZE_MS, slideMs: SLIDE_MS, aggregate: agg.mean() });
      source
        .pipe(watermarks({ maxOutOfOrdernessMs: DISORDER_MS }), window)
        .subscribe((r: Envelope<WindowResult<number>>) => check.take(r.data));
      for (let i = 0; i < input.length; i++) source.next(input[i] as Envelope<number>);
      source.complete();
      if (kind === 'tumbling') check.verify('tumbling', w.tumblingWindows, n);
      else check.verify('sliding', w.slidingWindows, n * PER_WINDOW);
    };
    return {
      run,
      dispose: () => {
        input = [];
      },
    };
  };
}

/**
 * The job in an actor. Checkpointed, its windows stay open across a stop (they go on after a
 * restart), so one last event far ahead in event time moves the watermark past every window:
 * each fires once, and the last event's own window stays open.
 */
function sluiceActorJob(kind: 'tumbling' | 'sliding', mode: 'checkpointed' | 'replay'): Contender {
  return (n) => {
    const w = workload(n);
    const dir = mode === 'checkpointed' ? tempPath('windows') : undefined;
    const store = dir === undefined ? undefined : new LmdbStore({ path: dir.path });
    const runtime = createRuntime(store === undefined ? {} : { store });
    const check = new Check();
    runtime.bus.subscribe<WindowResult<number>>('results', { callback: (env) => check.take(env.data) });
    runtime.spawn(
      actor<number, WindowResult<number>>({
        name: 'windows',
        subscribe: 'events',
        output: 'results',
        ...(store === undefined ? {} : { checkpoint: { intervalMs: 1_000 } }),
        pipeline: (in$) =>
          in$.pipe(
            watermarks({ maxOutOfOrdernessMs: DISORDER_MS }),
            kind === 'tumbling'
              ? tumbling<number, number, number>({ name: 'bench', sizeMs: SIZE_MS, aggregate: agg.count() })
              : sliding({ name: 'bench', sizeMs: SIZE_MS, slideMs: SLIDE_MS, aggregate: agg.mean() }),
          ),
      }),
    );
    const { bus } = runtime;
    const run = async () => {
      for (let i = 0; i < n; i++) {
        const options = { key: KEY_NAMES[w.key[i] as number] as string, eventTime: w.ts[i] as number };
        if (!bus.tryPublish('events', w.value[i] as number, options))
          await bus.publish('events', w.value[i] as number, options);
      }
      if (store !== undefined) {
        await bus.publish('events', 0, { key: 'end', eventTime: START + n + 10 * SIZE_MS });
      }
      // Stopping completes the pipeline: without a store, that fires what is open.
      await runtime.stop();
      const expected = kind === 'tumbling' ? w.tumblingWindows : w.slidingWindows;
      await until(
        () => check.results >= expected,
        () => check.results,
        'sluice-actor',
      );
      if (kind === 'tumbling') check.verify('tumbling', w.tumblingWindows, n);
      else check.verify('sliding', w.slidingWindows, n * PER_WINDOW);
    };
    return {
      run,
      dispose: async () => {
        await runtime.stop();
        await store?.close();
        dir?.remove();
      },
    };
  };
}

// ---- hand-written loop ----

/**
 * Open windows by start, each a Map from key to accumulator; a window fires (every key in it) once
 * the watermark, the largest event time minus the bound minus 1, reaches its end - 1.
 */
function handLoop(kind: 'tumbling' | 'sliding'): Contender {
  return (n) => {
    const w = workload(n);
    return async () => {
      const check = new Check();
      const open = new Map<number, Map<number, { sum: number; count: number }>>();
      const starts: number[] = [];
      let maxTs = Number.NEGATIVE_INFINITY;
      const fire = (start: number) => {
        const keys = open.get(start);
        if (keys === undefined) return;
        open.delete(start);
        for (const acc of keys.values())
          check.take({ count: acc.count, mean: acc.sum / acc.count } as { count: number });
      };
      const add = (start: number, k: number, v: number) => {
        let keys = open.get(start);
        if (keys === undefined) {
          keys = new Map();
          open.set(start, keys);
          starts.push(start);
          starts.sort((a, b) => a - b);
        }
        const acc = keys.get(k);
        if (acc === undefined) keys.set(k, { sum: v, count: 1 });
        else {
          acc.sum += v;
          acc.count++;
        }
      };
      for (let i = 0; i < n; i++) {
        const t = w.ts[i] as number;
        const k = w.key[i] as number;
        const v = w.value[i] as number;
        if (kind === 'tumbling') add(t - (t % SIZE_MS), k, v);
        else for (let s = t - (t % SLIDE_MS); s > t - SIZE_MS; s -= SLIDE_MS) add(s, k, v);
        if (t > maxTs) {
          maxTs = t;
          const watermark = maxTs - DISORDER_MS - 1;
          while (starts.length > 0 && (starts[0] as number) + SIZE_MS - 1 <= watermark) fire(starts.shift() as number);
        }
      }
      for (const s of starts.splice(0)) fire(s);
      if (kind === 'tumbling') check.verify('tumbling', w.tumblingWindows, n);
      else check.verify('sliding', w.slidingWindows, n * PER_WINDOW);
    };
  };
}

// ---- plain RxJS ----

interface Event {
  readonly key: number;
  readonly ts: number;
  readonly value: number;
}

function rxjsJob(kind: 'tumbling' | 'sliding'): Contender {
  return (n) => {
    const w = workload(n);
    const events: Event[] = Array.from({ length: n }, (_, i) => ({
      key: w.key[i] as number,
      ts: w.ts[i] as number,
      value: w.value[i] as number,
    }));
    return async () => {
      const check = new Check();
      if (kind === 'tumbling') {
        from(events)
          .pipe(
            groupBy((e) => e.key * 1e6 + Math.floor(e.ts / SIZE_MS)),
            mergeMap((window$) => window$.pipe(reduce((count) => count + 1, 0))),
          )
          .subscribe((count) => check.take({ count }));
      } else {
        from(events)
          .pipe(
            mergeMap((e) => {
              const copies: { id: number; value: number }[] = [];
              for (let s = e.ts - (e.ts % SLIDE_MS); s > e.ts - SIZE_MS; s -= SLIDE_MS)
                copies.push({ id: e.key * 1e6 + s / SLIDE_MS, value: e.value });
              return copies;
            }),
            groupBy((c) => c.id),
            mergeMap((window$) =>
              window$.pipe(
                reduce((acc, c) => ({ sum: acc.sum + c.value, count: acc.count + 1 }), { sum: 0, count: 0 }),
              ),
            ),
          )
          .subscribe(check.take);
      }
      if (kind === 'tumbling') check.verify('tumbling', w.tumblingWindows, n);
      else check.verify('sliding', w.slidingWindows, n * PER_WINDOW);
    };
  };
}

export default defineBench({
  bench: 'windows',
  unit: 'events/s',
  contenders: ['sluice', 'hand-loop', 'rxjs', 'sluice-actor', 'sluice-actor-replay'],
  cases: {
    'tumbling-count': {
      messages: 5_000_000,
      messagesFor: { rxjs: 500_000, 'sluice-actor': 1_000_000, 'sluice-actor-replay': 1_000_000 },
      isolate: true,
      description: `60 s tumbling count per key, ${KEYS} keys; rxjs on 1/10 and the actors on 1/5 of the events (rates compare)`,
      contenders: {
        sluice: sluiceJob('tumbling'),
        'hand-loop': handLoop('tumbling'),
        rxjs: rxjsJob('tumbling'),
        'sluice-actor': sluiceActorJob('tumbling', 'checkpointed'),
        'sluice-actor-replay': sluiceActorJob('tumbling', 'replay'),
      },
    },
    'sliding-mean': {
      messages: 5_000_000,
      messagesFor: { rxjs: 50_000, 'sluice-actor': 250_000, 'sluice-actor-replay': 250_000 },
      isolate: true,
      description: `60 s / 10 s sliding mean per key (each event in 6 windows; about one result per event); rxjs on 1/100, the actors on 1/20 of the events`,
      contenders: {
        sluice: sluiceJob('sliding'),
        'hand-loop': handLoop('sliding'),
        rxjs: rxjsJob('sliding'),
        'sluice-actor': sluiceActorJob('sliding', 'checkpointed'),
        'sluice-actor-replay': sluiceActorJob('sliding', 'replay'),
      },
    },
  },
  ratios: [
    ['sluice', 'hand-loop'],
    ['sluice', 'rxjs'],
    ['sluice-actor', 'sluice'],
  ],
  goals: [
    { case: 'tumbling-count', contender: 'sluice', versus: 'hand-loop', atLeast: 0.25 },
    { case: 'tumbling-count', contender: 'sluice', versus: 'rxjs', atLeast: 1 },
    { case: 'tumbling-count', contender: 'sluice-actor', versus: 'sluice', atLeast: 0.5 },
  ],
  notes: [
    `event time +1 ms per event, uniform disorder up to ${DISORDER_MS} ms, out-of-orderness bound ${DISORDER_MS} ms; ` +
      `sluice: envelopes made before timing (the bus bench measures publishing)`,
  ],
});
