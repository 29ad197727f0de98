/**
 * `npm run bench -- durable`: durable subjects against bare lmdb, the floor (DESIGN.md section 10;
 * issue 11). Both sides sync every commit (`overlappingSync: false`) and batch the same way, so the
 * difference is what Sluice adds: the bus route, validation, the record format with its checksum,
 * sequence assignment, its own group commit, consumer bookkeeping.
 *
 * - `publish`: WRITERS concurrent publishers, each awaiting a `bus.publish` of one 64-byte order
 *   into a stream (resolved once the append is synced) before the next. Commits are shared by
 *   whatever was written while the previous one synced. lmdb: the same writers awaiting `db.put`
 *   of the order (lmdb's own msgpack encoding) under the key `[stream, seq]`.
 * - `publish-one`: the same with one writer: a commit, and a sync, per message.
 * - `consume`: a durable consumer's pull loop over the stream: `fetch(PAGE)`, each order's id
 *   summed, each message acked (the position is stored by the consumer's group-committed writes).
 *   lmdb: a raw `getRange` read loop over the same keys, in pages of PAGE.
 * - `pipeline` / `at-least-once`: a stream of orders read by an actor (`durable(...)`) that prices
 *   each one and publishes it into a second stream, the embedded sink: each input is acknowledged
 *   once its output's append is synced. Timed until every input is settled. `exactly-once`: the
 *   same actor with a `checkpoint`, its outputs and its position committed in one transaction
 *   every CHECKPOINT_EVERY inputs (no de-duplication); timed until the last commit's outputs are in.
 *   `at-most-once`: the same actor between plain subjects, no store (the cost of the others).
 *
 * Figures are messages per second; each contender checks the count and the sum of ids.
 */
import { open } from 'lmdb';
import { map } from 'rxjs';
import { actor, createRuntime, durable, type Runtime, type Stream } from 'sluice';
import { LmdbStore } from '../../runtime/store/index.ts';
import { type Contender, defineBench, expectCount, tempPath } from './harness.ts';

const WRITERS = 64;
const PAGE = 1_000;
const STREAM = 'orders';

interface Order {
  readonly id: number;
  readonly user: string;
  readonly amount: number;
  readonly pad: string;
}

const POOL = 1024;
const PAYLOADS: readonly Order[] = Array.from({ length: POOL }, (_, id) => {
  const base = { id, user: `u${(id * 7919) % 100_000}`, amount: (id * 37) % 1000 };
  return Object.freeze({ ...base, pad: 'x'.repeat(64 - JSON.stringify({ ...base, pad: '' }).length) });
});

function idSum(n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (PAYLOADS[i % POOL] as Order).id;
  return sum;
}

/** Runs `write(i)` for i in [0, n) from `count` concurrent loops, each awaiting its own writes. */
async function writers(n: number, write: (i: number) => Promise<unknown>, count = WRITERS): Promise<void> {
  let next = 0;
  const loop = async (): Promise<void> => {
    while (next < n) await write(next++);
  };
  await Promise.all(Array.from({ length: count }, loop));
}

/** A runtime on a fresh LMDB store with the stream ORDERS (subjects `orders.>`). */
function durableRuntime(): { runtime: Runtime; orders: Stream; dispose: () => Promise<void> } {
  const { path, remove } = tempPath('durable');
  const store = new LmdbStore({ path });
  const runtime = createRuntime({ store, streams: [{ name: STREAM, subjects: ['orders.>'] }] });
  return {
    runtime,
    orders: runtime.stream(STREAM),
    dispose: async () => {
      await runtime.stop();
      await store.close();
      remove();
    },
  };
}

/** Checks that `stream` holds `n` orders whose ids sum as they must. */
function checkStream(stream: Stream, n: number, id: (data: unknown) => number = (d) => (d as Order).id): void {
  const info = stream.info();
  expectCount('stored', info.messages, n);
  let sum = 0;
  for (let seq = info.first; seq <= info.last; seq++) sum += id(stream.get(seq)?.data);
  expectCount('id sum', sum, idSum(n));
}

const sluicePublish =
  (writerCount: number): Contender =>
  (n) => {
    const { runtime, orders, dispose } = durableRuntime();
    return {
      run: async () => {
        await writers(n, (i) => runtime.bus.publish('orders.eu', PAYLOADS[i % POOL]), writerCount);
        checkStream(orders, n);
      },
      dispose,
    };
  };

/** Fills ORDERS with n orders through the bus, in awaited batches of PAGE (setup, not timed). */
async function fill(runtime: Runtime, n: number): Promise<void> {
  for (let i = 0; i < n; i += PAGE) {
    const batch: Promise<void>[] = [];
    for (let j = i; j < Math.min(i + PAGE, n); j++) batch.push(runtime.bus.publish('orders.eu', PAYLOADS[j % POOL]));
    await Promise.all(batch);
  }
}

const lmdbPublish =
  (writerCount: number): Contender =>
  (n) => {
    const { path, remove } = tempPath('durable');
    const db = open<Order, [string, number]>({ path, overlappingSync: false });
    let seq = 0;
    return {
      run: async () => {
        await writers(
          n,
          () => {
            const i = seq++;
            return db.put([STREAM, i + 1], PAYLOADS[i % POOL] as Order);
          },
          writerCount,
        );
        let count = 0;
        let sum = 0;
        for (const { value } of db.getRange({ start: [STREAM, 0] })) {
          count++;
          sum += value.id;
        }
        expectCount('stored', count, n);
        expectCount('id sum', sum, idSum(n));
      },
      dispose: async () => {
        await db.close();
        remove();
      },
    };
  };

const sluiceConsume: Contender = async (n) => {
  const { runtime, orders, dispose } = durableRuntime();
  await fill(runtime, n);
  const consumer = orders.consumer<Order>('bench', { maxAckPending: PAGE });
  return {
    run: async () => {
      let count = 0;
      let sum = 0;
      for (;;) {
        const page = consumer.fetch(PAGE);
        if (page.length === 0) break;
        for (const m of page) {
          count++;
          sum += m.envelope.data.id;
          m.ack();
        }
      }
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
      expectCount('position', consumer.position, n + 1);
    },
    dispose,
  };
};

interface Priced {
  readonly id: number;
  readonly total: number;
}

/** Inputs per checkpoint of the exactly-once contender (the consumer's maxAckPending too). */
const CHECKPOINT_EVERY = 2_000;

/**
 * The pipeline job; `checkpoint`: exactly-once, the actor's outputs and its position committed in
 * one transaction every CHECKPOINT_EVERY inputs.
 */
const pipeline =
  (checkpoint: boolean): Contender =>
  async (n) => {
    const { runtime, orders, dispose } = durableRuntime();
    const priced = runtime.stream({ name: 'PRICED', subjects: ['priced.>'] });
    await fill(runtime, n);
    return {
      run: async () => {
        runtime.spawn(
          actor<Order, Priced>({
            name: 'pricing',
            subscribe: durable<Order>(STREAM, {
              consumer: 'pricing',
              ...(checkpoint ? { maxAckPending: CHECKPOINT_EVERY } : {}),
            }),
            output: 'priced.eu',
            ...(checkpoint ? { checkpoint: { everyInputs: CHECKPOINT_EVERY, intervalMs: 1_000 } } : {}),
            pipeline: (in$) =>
              in$.pipe(map((env) => ({ ...env, data: { id: env.data.id, total: env.data.amount * 2 } }))),
          }),
        );
        const consumer = orders.consumer('pricing');
        // Settled means its output is in PRICED, synced: the position passes the last input (and,
        // checkpointed, the last commit's outputs are appended once it resolves).
        while (consumer.position <= n || priced.info().last < n) await new Promise((resolve) => setTimeout(resolve, 1));
        checkStream(priced, n, (d) => (d as Priced).id);
      },
      dispose,
    };
  };

/**
 * The same job at most once: plain subjects, no store. Timed from the first publish (there is
 * nothing stored to start from) until the subscriber of the outputs counted every one.
 */
const atMostOnce: Contender = (n) => {
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  let done: () => void = () => undefined;
  const all = new Promise<void>((resolve) => {
    done = resolve;
  });
  runtime.bus.subscribe<Priced>('priced.eu', {
    callback: (env) => {
      count++;
      sum += env.data.id;
      if (count === n) done();
    },
  });
  runtime.spawn(
    actor<Order, Priced>({
      name: 'pricing',
      subscribe: 'orders.eu',
      output: 'priced.eu',
      pipeline: (in$) => in$.pipe(map((env) => ({ ...env, data: { id: env.data.id, total: env.data.amount * 2 } }))),
    }),
  );
  return {
    run: async () => {
      await fill(runtime, n);
      await all;
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await runtime.stop();
    },
  };
};

const lmdbConsume: Contender = async (n) => {
  const { path, remove } = tempPath('durable');
  const db = open<Order, [string, number]>({ path, overlappingSync: false });
  for (let i = 0; i < n; i += PAGE) {
    await db.transaction(() => {
      for (let j = i; j < Math.min(i + PAGE, n); j++) db.put([STREAM, j + 1], PAYLOADS[j % POOL] as Order);
    });
  }
  return {
    run: async () => {
      let count = 0;
      let sum = 0;
      for (let from = 1; ; ) {
        let last = 0;
        for (const { key, value } of db.getRange({ start: [STREAM, from], end: [STREAM, from + PAGE] })) {
          count++;
          sum += value.id;
          last = key[1];
        }
        if (last === 0) break;
        from = last + 1;
      }
      expectCount('read', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await db.close();
      remove();
    },
  };
};

export default defineBench({
  bench: 'durable',
  unit: 'msg/s',
  contenders: ['sluice', 'lmdb', 'at-most-once', 'at-least-once', 'exactly-once'],
  cases: {
    publish: {
      messages: 100_000,
      description: `${WRITERS} writers, each awaiting a synced publish of one 64-byte order into a stream before the next`,
      contenders: { sluice: sluicePublish(WRITERS), lmdb: lmdbPublish(WRITERS) },
    },
    'publish-one': {
      messages: 1_000,
      description: 'one writer awaiting each synced publish: one commit and one sync per message (the cost of a sync)',
      contenders: { sluice: sluicePublish(1), lmdb: lmdbPublish(1) },
    },
    consume: {
      messages: 200_000,
      description: `a durable consumer's fetch(${PAGE}) and ack loop; lmdb: a raw read loop in pages of ${PAGE}`,
      contenders: { sluice: sluiceConsume, lmdb: lmdbConsume },
    },
    pipeline: {
      messages: 100_000,
      description:
        'durable stream -> actor (map) -> second stream; at-most-once: plain subjects, no store; at-least-once: each input acked once its output is synced; ' +
        `exactly-once: outputs and position in one transaction every ${CHECKPOINT_EVERY} inputs`,
      contenders: { 'at-most-once': atMostOnce, 'at-least-once': pipeline(false), 'exactly-once': pipeline(true) },
    },
  },
  ratios: [
    ['sluice', 'lmdb'],
    ['exactly-once', 'at-least-once'],
  ],
  goals: [
    { case: 'publish', contender: 'sluice', versus: 'lmdb', atLeast: 0.5 },
    { case: 'pipeline', contender: 'exactly-once', versus: 'at-least-once', atLeast: 0.75 },
  ],
  notes: ['both sides: overlappingSync off, every commit synced (fdatasync) before its writes resolve'],
});
