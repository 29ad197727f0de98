/**
 * `npm run bench -- bus`: the bus against what a user would otherwise pick, side by side
 * (DESIGN.md section 10). Every contender delivers 64-byte object payloads to handlers that count
 * them and sum their ids (and amounts), and checks both totals at the end, so a contender that
 * drops or doubles a message fails. Figures are messages published per second.
 *
 * Peers: Node's EventEmitter; EventEmitter2 configured as a subject bus (`wildcard: true`,
 * `delimiter: '.'`, `**` for `>`) in every case; RxJS Subjects (one per subject in a Map, or one
 * filtered Subject per subscription for wildcards, which is what RxJS offers); nact for the actor
 * hop; and a hand-written loop calling the handlers, the floor of what is possible.
 */
import { EventEmitter } from 'node:events';
import eventemitter2 from 'eventemitter2';
import { dispatch, spawnStateless, start, stop } from 'nact';
import { filter, map, Subject } from 'rxjs';
import { actor, Bus, createRuntime, type Subscription } from 'sluice';
import { type Contender, defineBench, expectCount, seededRandom, until } from './harness.ts';

const { EventEmitter2 } = eventemitter2;

// ---- the payload: 64 bytes as JSON, a pool cycled so no contender pays for allocating it ----

interface Order {
  readonly id: number;
  readonly user: string;
  readonly item: string;
  readonly amount: number;
  readonly pad: string;
}

const POOL = 1024;
const MASK = POOL - 1;
const PAYLOAD_BYTES = 64;

const PAYLOADS: readonly Order[] = Array.from({ length: POOL }, (_, id) => {
  const base = { id, user: `u${(id * 7919) % 100_000}`, item: `sku${id % 97}`, amount: (id * 37) % 1000 };
  const bytes = JSON.stringify({ ...base, pad: '' }).length;
  if (bytes > PAYLOAD_BYTES) throw new Error(`payload ${id} is ${bytes} bytes before padding`);
  return Object.freeze({ ...base, pad: 'x'.repeat(PAYLOAD_BYTES - bytes) });
});

/** Sums over the first `n` payloads of the cycle, to check what a handler saw. */
function sumOf(n: number, field: 'id' | 'amount'): number {
  let full = 0;
  for (const p of PAYLOADS) full += p[field];
  let sum = Math.floor(n / POOL) * full;
  for (let i = 0; i < n % POOL; i++) sum += (PAYLOADS[i] as Order)[field];
  return sum;
}

/** Where every contender's handlers deliver: counts, and sums ids and amounts. */
class Sink {
  count = 0;
  ids = 0;
  amounts = 0;
  readonly take = (p: Order): void => {
    this.count++;
    this.ids += p.id;
    this.amounts += p.amount;
  };

  /** Throws unless it got each of the first `n` payloads exactly `copies` times (amounts times `factor`). */
  check(what: string, n: number, copies = 1, factor = 1): void {
    expectCount(`${what} delivered`, this.count, n * copies);
    expectCount(`${what} id sum`, this.ids, sumOf(n, 'id') * copies);
    expectCount(`${what} amount sum`, this.amounts, sumOf(n, 'amount') * copies * factor);
  }
}

/** Waits until the sinks together hold `expected` deliveries (Sluice delivers in microtasks). */
function settled(what: string, sinks: readonly Sink[], expected: number): Promise<void> {
  const total = () => {
    let t = 0;
    for (const s of sinks) t += s.count;
    return t;
  };
  return until(() => total() >= expected, total, what);
}

/**
 * The hot path a producer writes: `tryPublish`, and when a mailbox is full, an awaited `publish` of
 * the same message, which resolves once it is accepted. That is the backpressure signal.
 */
async function pushAll(bus: Bus, subject: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const p = PAYLOADS[i & MASK] as Order;
    if (!bus.tryPublish(subject, p)) await bus.publish(subject, p);
  }
}

function emitter(): EventEmitter {
  const ee = new EventEmitter();
  ee.setMaxListeners(0);
  return ee;
}

function emitter2(): InstanceType<typeof EventEmitter2> {
  return new EventEmitter2({ wildcard: true, delimiter: '.', maxListeners: 0 });
}

// ---- exact: one subject, one subscriber ----

const EXACT = 'orders.eu.created';

const exact: Record<string, Contender> = {
  sluice: (n) => {
    const bus = new Bus();
    const sink = new Sink();
    const sub = bus.subscribe<Order>(EXACT, { callback: (env) => sink.take(env.data) });
    return {
      run: async () => {
        for (let i = 0; i < n; ) {
          if (bus.tryPublish(EXACT, PAYLOADS[i & MASK] as Order)) i++;
          else await sub.space();
        }
        await settled('sluice', [sink], n);
        sink.check('sluice', n);
      },
      dispose: () => sub.unsubscribe(),
    };
  },
  eventemitter: (n) => {
    const ee = emitter();
    const sink = new Sink();
    ee.on(EXACT, sink.take);
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(EXACT, PAYLOADS[i & MASK]);
      sink.check('eventemitter', n);
    };
  },
  eventemitter2: (n) => {
    const ee = emitter2();
    const sink = new Sink();
    ee.on(EXACT, sink.take);
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(EXACT, PAYLOADS[i & MASK]);
      sink.check('eventemitter2', n);
    };
  },
  rxjs: (n) => {
    const subjects = new Map([[EXACT, new Subject<Order>()]]);
    const sink = new Sink();
    subjects.get(EXACT)?.subscribe(sink.take);
    return async () => {
      for (let i = 0; i < n; i++) subjects.get(EXACT)?.next(PAYLOADS[i & MASK] as Order);
      sink.check('rxjs', n);
    };
  },
  'hand-loop': (n) => {
    const sink = new Sink();
    const handlers = new Map([[EXACT, sink.take]]);
    return async () => {
      for (let i = 0; i < n; i++) handlers.get(EXACT)?.(PAYLOADS[i & MASK] as Order);
      sink.check('hand-loop', n);
    };
  },
};

// ---- exact-await: the same, each publish awaited, 1,000 at a time with Promise.all ----

const BATCH = 1000;

/** Calls `publish(i)` for i < n and awaits each batch of 1,000 promises together. */
async function inBatches(n: number, publish: (i: number) => Promise<unknown>): Promise<void> {
  const waits: Promise<unknown>[] = new Array(BATCH);
  for (let i = 0; i < n; i += BATCH) {
    const size = Math.min(BATCH, n - i);
    waits.length = size;
    for (let j = 0; j < size; j++) waits[j] = publish(i + j);
    await Promise.all(waits);
  }
}

const exactAwait: Record<string, Contender> = {
  sluice: (n) => {
    const bus = new Bus();
    const sink = new Sink();
    const sub = bus.subscribe<Order>(EXACT, { callback: (env) => sink.take(env.data) });
    return {
      run: async () => {
        await inBatches(n, (i) => bus.publish(EXACT, PAYLOADS[i & MASK] as Order));
        await settled('sluice', [sink], n);
        sink.check('sluice', n);
      },
      dispose: () => sub.unsubscribe(),
    };
  },
  eventemitter2: (n) => {
    const ee = emitter2();
    const sink = new Sink();
    ee.on(EXACT, sink.take);
    return async () => {
      await inBatches(n, (i) => ee.emitAsync(EXACT, PAYLOADS[i & MASK]));
      sink.check('eventemitter2', n);
    };
  },
  'hand-loop': (n) => {
    const sink = new Sink();
    const handle = async (p: Order): Promise<void> => sink.take(p);
    return async () => {
      await inBatches(n, (i) => handle(PAYLOADS[i & MASK] as Order));
      sink.check('hand-loop', n);
    };
  },
};

// ---- fanout: one subject, 10 subscribers ----

const FANOUT = 'prices.eu.updated';
const FANOUT_SUBSCRIBERS = 10;

function sinks(count: number): Sink[] {
  return Array.from({ length: count }, () => new Sink());
}

function checkEach(what: string, all: readonly Sink[], n: number): void {
  all.forEach((s, i) => {
    s.check(`${what} subscriber ${i}`, n);
  });
}

const fanout: Record<string, Contender> = {
  sluice: (n) => {
    const bus = new Bus();
    const all = sinks(FANOUT_SUBSCRIBERS);
    const subs = all.map((s) => bus.subscribe<Order>(FANOUT, { callback: (env) => s.take(env.data) }));
    return {
      run: async () => {
        await pushAll(bus, FANOUT, n);
        await settled('sluice', all, n * FANOUT_SUBSCRIBERS);
        checkEach('sluice', all, n);
      },
      dispose: () => unsubscribeAll(subs),
    };
  },
  eventemitter: (n) => {
    const ee = emitter();
    const all = sinks(FANOUT_SUBSCRIBERS);
    for (const s of all) ee.on(FANOUT, s.take);
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(FANOUT, PAYLOADS[i & MASK]);
      checkEach('eventemitter', all, n);
    };
  },
  eventemitter2: (n) => {
    const ee = emitter2();
    const all = sinks(FANOUT_SUBSCRIBERS);
    for (const s of all) ee.on(FANOUT, s.take);
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(FANOUT, PAYLOADS[i & MASK]);
      checkEach('eventemitter2', all, n);
    };
  },
  rxjs: (n) => {
    const subjects = new Map([[FANOUT, new Subject<Order>()]]);
    const all = sinks(FANOUT_SUBSCRIBERS);
    for (const s of all) subjects.get(FANOUT)?.subscribe(s.take);
    return async () => {
      for (let i = 0; i < n; i++) subjects.get(FANOUT)?.next(PAYLOADS[i & MASK] as Order);
      checkEach('rxjs', all, n);
    };
  },
  'hand-loop': (n) => {
    const all = sinks(FANOUT_SUBSCRIBERS);
    const handlers = new Map([[FANOUT, all.map((s) => s.take)]]);
    return async () => {
      for (let i = 0; i < n; i++) {
        const p = PAYLOADS[i & MASK] as Order;
        for (const h of handlers.get(FANOUT) ?? []) h(p);
      }
      checkEach('hand-loop', all, n);
    };
  },
};

function unsubscribeAll(subs: readonly Subscription<unknown>[]): void {
  for (const s of subs) s.unsubscribe();
}

// ---- wildcard: 1,000 seeded subscriptions, 4-token subjects over 10 tokens per level ----

const LEVELS = 4;
const TOKENS = 10;
const WILDCARD_SUBSCRIPTIONS = 1000;
const WILDCARD_SEED = 0x5e1ce;
/** Published subjects cycle through this many seeded draws: every one of the 10^4 subjects occurs. */
const SUBJECT_CYCLE = 1 << 16;

interface WildcardWorkload {
  /**
   * NATS patterns of 4 tokens: ~60% with one `*` at a random position, ~20% ending in `>` (three
   * literal tokens, then `>`: on 4-token subjects it matches as many as a `*` does), ~20% literal.
   */
  readonly patterns: readonly string[];
  readonly subjects: readonly string[];
  /** Subscriptions matching each subject, by the brute-force matcher. */
  readonly matches: ReadonlyMap<string, readonly number[]>;
}

let workload: WildcardWorkload | undefined;

function wildcardWorkload(): WildcardWorkload {
  if (workload !== undefined) return workload;
  const random = seededRandom(WILDCARD_SEED);
  const token = (level: number) => `l${level}t${Math.floor(random() * TOKENS)}`;
  const patterns: string[] = [];
  for (let i = 0; i < WILDCARD_SUBSCRIPTIONS; i++) {
    const kind = random();
    if (kind < 0.6) {
      const star = Math.floor(random() * LEVELS);
      patterns.push(Array.from({ length: LEVELS }, (_, l) => (l === star ? '*' : token(l))).join('.'));
    } else if (kind < 0.8) {
      patterns.push(Array.from({ length: LEVELS }, (_, l) => (l === LEVELS - 1 ? '>' : token(l))).join('.'));
    } else {
      patterns.push(Array.from({ length: LEVELS }, (_, l) => token(l)).join('.'));
    }
  }
  const subjects = Array.from({ length: SUBJECT_CYCLE }, () =>
    Array.from({ length: LEVELS }, (_, l) => token(l)).join('.'),
  );
  const compiled = patterns.map((p) => p.split('.'));
  const matches = new Map<string, number[]>();
  for (const subject of subjects) {
    if (matches.has(subject)) continue;
    const tokens = subject.split('.');
    const hit: number[] = [];
    compiled.forEach((p, i) => {
      if (bruteForceMatch(p, tokens)) hit.push(i);
    });
    matches.set(subject, hit);
  }
  workload = { patterns, subjects, matches };
  return workload;
}

/** The reference matcher, NATS rules, with no structure at all. */
function bruteForceMatch(pattern: readonly string[], subject: readonly string[]): boolean {
  for (let i = 0; i < pattern.length; i++) {
    const t = pattern[i];
    if (t === '>') return subject.length > i;
    if (i >= subject.length) return false;
    if (t !== '*' && t !== subject[i]) return false;
  }
  return pattern.length === subject.length;
}

interface WildcardTotals {
  readonly deliveries: number;
  readonly ids: number;
  readonly amounts: number;
}

const wildcardTotals = new Map<number, WildcardTotals>();

/** Deliveries the first `n` publishes must make, and the sums they carry (computed in setup, not timed). */
function expectedWildcard(n: number): WildcardTotals {
  const known = wildcardTotals.get(n);
  if (known !== undefined) return known;
  const { subjects, matches } = wildcardWorkload();
  let deliveries = 0;
  let ids = 0;
  let amounts = 0;
  for (let i = 0; i < n; i++) {
    const k = (matches.get(subjects[i % SUBJECT_CYCLE] as string) as number[]).length;
    const p = PAYLOADS[i & MASK] as Order;
    deliveries += k;
    ids += k * p.id;
    amounts += k * p.amount;
  }
  const totals = { deliveries, ids, amounts };
  wildcardTotals.set(n, totals);
  return totals;
}

function checkWildcard(what: string, sink: Sink, e: WildcardTotals): void {
  expectCount(`${what} deliveries`, sink.count, e.deliveries);
  expectCount(`${what} id sum`, sink.ids, e.ids);
  expectCount(`${what} amount sum`, sink.amounts, e.amounts);
}

const wildcard: Record<string, Contender> = {
  sluice: (n) => {
    const { patterns, subjects } = wildcardWorkload();
    const bus = new Bus();
    const sink = new Sink();
    const subs = patterns.map((p) => bus.subscribe<Order>(p, { callback: (env) => sink.take(env.data) }));
    const expected = expectedWildcard(n);
    return {
      run: async () => {
        for (let i = 0; i < n; i++) {
          const subject = subjects[i % SUBJECT_CYCLE] as string;
          const p = PAYLOADS[i & MASK] as Order;
          if (!bus.tryPublish(subject, p)) await bus.publish(subject, p);
        }
        await settled('sluice', [sink], expected.deliveries);
        checkWildcard('sluice', sink, expected);
      },
      dispose: () => unsubscribeAll(subs),
    };
  },
  eventemitter2: (n) => {
    const { patterns, subjects } = wildcardWorkload();
    const ee = emitter2();
    const sink = new Sink();
    const expected = expectedWildcard(n);
    for (const p of patterns) ee.on(p.endsWith('.>') ? `${p.slice(0, -1)}**` : p, sink.take);
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(subjects[i % SUBJECT_CYCLE] as string, PAYLOADS[i & MASK]);
      checkWildcard('eventemitter2', sink, expected);
    };
  },
  rxjs: (n) => {
    // RxJS has no routing: one Subject, and per subscription a filter over the subject's tokens.
    const { patterns, subjects } = wildcardWorkload();
    const all$ = new Subject<{ tokens: readonly string[]; data: Order }>();
    const sink = new Sink();
    const expected = expectedWildcard(n);
    for (const pattern of patterns) {
      const compiled = pattern.split('.');
      all$.pipe(filter((m) => bruteForceMatch(compiled, m.tokens))).subscribe((m) => {
        sink.take(m.data);
      });
    }
    return async () => {
      for (let i = 0; i < n; i++) {
        all$.next({ tokens: (subjects[i % SUBJECT_CYCLE] as string).split('.'), data: PAYLOADS[i & MASK] as Order });
      }
      checkWildcard('rxjs', sink, expected);
    };
  },
  'hand-loop': (n) => {
    // The floor: the handlers of every subject looked up in a table built beforehand.
    const { subjects, matches } = wildcardWorkload();
    const sink = new Sink();
    const expected = expectedWildcard(n);
    const table = new Map<string, ((p: Order) => void)[]>();
    for (const [subject, hit] of matches)
      table.set(
        subject,
        hit.map(() => sink.take),
      );
    return async () => {
      for (let i = 0; i < n; i++) {
        const p = PAYLOADS[i & MASK] as Order;
        for (const h of table.get(subjects[i % SUBJECT_CYCLE] as string) ?? []) h(p);
      }
      checkWildcard('hand-loop', sink, expected);
    };
  },
};

// ---- queue: a group of 4; each message to exactly one member ----

const QUEUE = 'jobs.eu.resize';
const QUEUE_MEMBERS = 4;

function checkGroup(what: string, members: readonly Sink[], n: number): void {
  const total = new Sink();
  for (const [i, m] of members.entries()) {
    if (m.count === 0) throw new Error(`${what}: member ${i} got nothing`);
    total.count += m.count;
    total.ids += m.ids;
    total.amounts += m.amounts;
  }
  total.check(`${what} group`, n);
}

/** How a peer without queue groups splits work: one listener that hands each message round-robin. */
function roundRobin(members: readonly Sink[]): (p: Order) => void {
  const takes = members.map((m) => m.take);
  let next = 0;
  return (p) => {
    (takes[next] as (p: Order) => void)(p);
    next = next === takes.length - 1 ? 0 : next + 1;
  };
}

const queue: Record<string, Contender> = {
  sluice: (n) => {
    const bus = new Bus();
    const members = sinks(QUEUE_MEMBERS);
    const subs = members.map((m) => bus.subscribe<Order>(QUEUE, { queue: 'q', callback: (env) => m.take(env.data) }));
    return {
      run: async () => {
        await pushAll(bus, QUEUE, n);
        await settled('sluice', members, n);
        checkGroup('sluice', members, n);
      },
      dispose: () => unsubscribeAll(subs),
    };
  },
  eventemitter: (n) => {
    const ee = emitter();
    const members = sinks(QUEUE_MEMBERS);
    ee.on(QUEUE, roundRobin(members));
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(QUEUE, PAYLOADS[i & MASK]);
      checkGroup('eventemitter', members, n);
    };
  },
  eventemitter2: (n) => {
    const ee = emitter2();
    const members = sinks(QUEUE_MEMBERS);
    ee.on(QUEUE, roundRobin(members));
    return async () => {
      for (let i = 0; i < n; i++) ee.emit(QUEUE, PAYLOADS[i & MASK]);
      checkGroup('eventemitter2', members, n);
    };
  },
  rxjs: (n) => {
    const subjects = new Map([[QUEUE, new Subject<Order>()]]);
    const members = sinks(QUEUE_MEMBERS);
    subjects.get(QUEUE)?.subscribe(roundRobin(members));
    return async () => {
      for (let i = 0; i < n; i++) subjects.get(QUEUE)?.next(PAYLOADS[i & MASK] as Order);
      checkGroup('rxjs', members, n);
    };
  },
  'hand-loop': (n) => {
    const members = sinks(QUEUE_MEMBERS);
    const handlers = new Map([[QUEUE, roundRobin(members)]]);
    return async () => {
      for (let i = 0; i < n; i++) handlers.get(QUEUE)?.(PAYLOADS[i & MASK] as Order);
      checkGroup('hand-loop', members, n);
    };
  },
};

// ---- actor: publish into an actor that maps and publishes on, and receive what it publishes ----

const double = (p: Order): Order => ({ ...p, amount: p.amount * 2 });

const actorCase: Record<string, Contender> = {
  sluice: (n) => {
    const rt = createRuntime();
    rt.spawn(
      actor<Order, Order>({
        name: 'double',
        subscribe: 'in',
        pipeline: (input$) => input$.pipe(map((env) => ({ ...env, subject: 'out', data: double(env.data) }))),
      }),
    );
    const sink = new Sink();
    const out = rt.bus.subscribe<Order>('out', { callback: (env) => sink.take(env.data) });
    return {
      run: async () => {
        await pushAll(rt.bus, 'in', n);
        await settled('sluice', [sink], n);
        sink.check('sluice', n, 1, 2);
      },
      dispose: async () => {
        await rt.stop();
        out.unsubscribe();
      },
    };
  },
  rxjs: (n) => {
    const in$ = new Subject<{ subject: string; data: Order }>();
    const sink = new Sink();
    in$.pipe(map((m) => ({ ...m, subject: 'out', data: double(m.data) }))).subscribe((m) => {
      sink.take(m.data);
    });
    return async () => {
      for (let i = 0; i < n; i++) in$.next({ subject: 'in', data: PAYLOADS[i & MASK] as Order });
      sink.check('rxjs', n, 1, 2);
    };
  },
  nact: (n) => {
    const system = start();
    const sink = new Sink();
    const receiver = spawnStateless(system, (m: { subject: string; data: Order }) => {
      sink.take(m.data);
    });
    const doubler = spawnStateless(system, (m: { subject: string; data: Order }) => {
      dispatch(receiver, { subject: 'out', data: double(m.data) });
    });
    return {
      run: async () => {
        for (let i = 0; i < n; i++) dispatch(doubler, { subject: 'in', data: PAYLOADS[i & MASK] as Order });
        await settled('nact', [sink], n);
        sink.check('nact', n, 1, 2);
      },
      dispose: () => stop(system),
    };
  },
  // The same hop on the bus alone, a callback subscriber publishing on: what the actor runtime
  // (settlement, supervision, its checked publish) adds to, and its floor.
  'sluice-bus': (n) => {
    const bus = new Bus();
    const sink = new Sink();
    const hop = bus.subscribe<Order>('in', {
      callback: (env) => {
        const out = double(env.data);
        // Refused when the next mailbox is full: the awaited publish holds this subscriber back.
        if (!bus.tryPublish('out', out)) return bus.publish('out', out);
      },
    });
    const out = bus.subscribe<Order>('out', { callback: (env) => sink.take(env.data) });
    return {
      run: async () => {
        await pushAll(bus, 'in', n);
        await settled('sluice-bus', [sink], n);
        sink.check('sluice-bus', n, 1, 2);
      },
      dispose: () => {
        hop.unsubscribe();
        out.unsubscribe();
      },
    };
  },
  'hand-loop': (n) => {
    const sink = new Sink();
    return async () => {
      for (let i = 0; i < n; i++) sink.take(double(PAYLOADS[i & MASK] as Order));
      sink.check('hand-loop', n, 1, 2);
    };
  },
};

export default defineBench({
  bench: 'bus',
  unit: 'msg/s',
  contenders: ['sluice', 'eventemitter', 'eventemitter2', 'rxjs', 'nact', 'sluice-bus', 'hand-loop'],
  cases: {
    exact: {
      messages: 2_000_000,
      description: `one subject, one subscriber (callback); sluice: tryPublish, on refusal await sub.space() and retry`,
      contenders: exact,
    },
    'exact-await': {
      messages: 1_000_000,
      description: `as exact, every publish awaited: Promise.all over batches of ${BATCH} (eventemitter2: emitAsync)`,
      contenders: exactAwait,
    },
    fanout: {
      messages: 400_000,
      description: `one subject, ${FANOUT_SUBSCRIBERS} subscribers (figures are publishes/s; deliveries are ${FANOUT_SUBSCRIBERS}x)`,
      contenders: fanout,
    },
    wildcard: {
      messages: 200_000,
      // RxJS runs every subscription's filter on every message: a tenth of the messages keeps it under 10 s.
      messagesFor: { rxjs: 20_000 },
      description:
        `${WILDCARD_SUBSCRIPTIONS} seeded ${LEVELS}-token subscriptions (60% one '*', 20% ending in '>', 20% literal) ` +
        `over ${TOKENS} tokens per level; subjects drawn from all ${TOKENS ** LEVELS}; ` +
        `every contender delivers the brute-force matcher's count; rxjs: one filter per subscription, on 1/10 of the messages`,
      contenders: wildcard,
    },
    queue: {
      messages: 2_000_000,
      description: `a queue group of ${QUEUE_MEMBERS} (peers: one listener handing out round-robin)`,
      contenders: queue,
    },
    actor: {
      messages: 400_000,
      description: `publish -> actor (map, publish on) -> subscriber; rxjs: the same map on a Subject; nact: two actors; sluice-bus: a callback subscriber publishing on, no actor`,
      contenders: actorCase,
    },
  },
  ratios: [
    ['sluice', 'eventemitter'],
    ['sluice', 'eventemitter2'],
    ['sluice', 'rxjs'],
    ['sluice', 'nact'],
  ],
  goals: [
    // The hot-path issue's floors.
    { case: 'fanout', contender: 'sluice', versus: 'eventemitter2', atLeast: 1.2 },
    { case: 'exact', contender: 'sluice', versus: 'eventemitter', atLeast: 0.5 },
    { case: 'queue', contender: 'sluice', versus: 'eventemitter', atLeast: 0.4 },
    { case: 'wildcard', contender: 'sluice', versus: 'eventemitter2', atLeast: 3 },
    { case: 'actor', contender: 'sluice', versus: 'rxjs', atLeast: 0.5 },
    { case: 'actor', contender: 'sluice', versus: 'nact', atLeast: 10 },
  ],
  notes: [
    `payload: ${PAYLOAD_BYTES}-byte objects (as JSON) from a pool of ${POOL}; sluice: default mailboxes (1024, block), ` +
      `tryPublish falling back to an awaited publish when refused`,
  ],
});
