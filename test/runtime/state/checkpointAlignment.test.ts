import {
  actor,
  createRuntime,
  durable,
  type Lineage,
  MemoryStore,
  type StoreBatch,
  stateNamespace,
  VirtualClock,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import { POSITIONS_NAMESPACE } from '../../../runtime/streams/index.ts';
import { quietLogger, testRuntime } from '../helpers.ts';
import { eventually } from '../streams/wait.ts';

interface Order {
  readonly key: string;
  readonly n: number;
}

interface Total {
  readonly count: number;
  readonly n: number;
}

/** What one committed checkpoint stored: the state, the outputs and the position, read together. */
interface Committed {
  readonly count: number;
  readonly outputs: number;
  readonly floor: number;
  /** Runs settled above the floor: none, as this actor settles in order. */
  readonly acked: unknown;
}

/**
 * A memory store that reads what each batch stored as soon as it commits, before any later write:
 * what a process killed right after that commit would restart from.
 */
class WatchedStore extends MemoryStore {
  readonly stored: Committed[] = [];
  /** A copy of the store as the first batch left it. */
  copy: Promise<MemoryStore> | undefined;

  override batch<R>(build: (batch: StoreBatch) => R): Promise<R> {
    const done = super.batch(build);
    return done.then((result) => {
      const position = this.getKey(POSITIONS_NAMESPACE, 'ORDERS/counter') as { floor: number; acked?: unknown };
      this.stored.push({
        acked: position.acked,
        count: (this.getKey(stateNamespace('counter'), 'a') as number | undefined) ?? 0,
        outputs: this.bounds('TOTALS').count,
        floor: position.floor,
      });
      this.copy ??= copyOf(this, ['ORDERS', 'TOTALS'], [POSITIONS_NAMESPACE, stateNamespace('counter')]);
      return result;
    });
  }
}

/** The committed records of `streams` and keys of `namespaces`, at the sequences they had. */
async function copyOf(from: MemoryStore, streams: string[], namespaces: string[]): Promise<MemoryStore> {
  const to = new MemoryStore();
  const writes: Promise<unknown>[] = [];
  for (const stream of streams) {
    const entries = from.read(stream, 1);
    // A fresh store numbers from 1: the copy keeps the sequences only if the source does too.
    expect(entries[0]?.seq ?? 1).toBe(1);
    if (entries.length > 0)
      writes.push(
        to.append(
          stream,
          entries.map((e) => e.value),
        ),
      );
  }
  for (const ns of namespaces) for (const e of from.scan(ns, '')) writes.push(to.putKey(ns, e.key, e.value));
  await Promise.all(writes);
  return to;
}

function define(rt: ReturnType<typeof createRuntime>): void {
  rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
  rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
}

function counter(maxAckPending: number) {
  return actor<Order, Total>({
    name: 'counter',
    subscribe: durable<Order>('ORDERS', { consumer: 'counter', maxAckPending }),
    output: 'totals.all',
    checkpoint: { intervalMs: 50 },
    handle: (env, ctx) => {
      const count = (ctx.state.get<number>(env.data.key) ?? 0) + 1;
      ctx.state.put(env.data.key, count);
      return { count, n: env.data.n };
    },
  });
}

describe('checkpoint alignment', () => {
  test('checkpoint - with a backlog beyond maxAckPending, each commit stores state, outputs and a position that cover the same inputs, and a restart from it counts each input once', async () => {
    const store = new WatchedStore();
    const { rt } = testRuntime({ store });
    define(rt);
    const total = 100;
    for (let n = 1; n <= total; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    // Published before the actor starts: the consumer holds the whole backlog, 20 out at a time.
    rt.spawn(counter(20));
    await eventually(() => expect(store.stored.at(-1)?.floor).toBe(total + 1));
    expect(store.stored.length).toBeGreaterThan(1);
    for (const c of store.stored) {
      expect({ count: c.count, outputs: c.outputs, acked: c.acked }).toEqual({
        count: c.floor - 1,
        outputs: c.floor - 1,
        acked: undefined,
      });
    }

    // A crash right after the first commit: a new runtime on what it stored.
    const copy = await (store.copy as Promise<MemoryStore>);
    const first = store.stored[0] as Committed;
    expect(copy.getKey(stateNamespace('counter'), 'a')).toBe(first.count);
    const again = createRuntime({ store: copy, clock: new VirtualClock(0), logger: quietLogger() });
    define(again);
    again.spawn(counter(20));
    await eventually(() =>
      expect(again.stream('ORDERS').consumer('counter').info().acked).toBe(total - (first.floor - 1)),
    );
    await again.stop();
    expect(copy.getKey(stateNamespace('counter'), 'a')).toBe(total);
    const outputs = copy.read('TOTALS', 1).map((e) => (e.value as { d: Total }).d);
    expect(outputs.map((o) => o.n)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(outputs.map((o) => o.count)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
  });
});

/**
 * The reference of a message from outside the store (a broker connector's): each time the runtime
 * gives it back, what the actor's state held in the store then, and the error it came back with.
 */
function externalSource(store: MemoryStore): Lineage & { readonly given: { stored: unknown; error: unknown }[] } {
  const given: { stored: unknown; error: unknown }[] = [];
  return {
    ids: ['external'],
    given,
    retain() {},
    absorb() {},
    release() {
      throw new Error('a mailbox absorbs a source reference; it is never retained');
    },
    releaseAbsorbed(error?: unknown) {
      given.push({ stored: store.getKey(stateNamespace('tally'), 'seen'), error });
    },
  };
}

function tally() {
  return actor<number, never>({
    name: 'tally',
    subscribe: 'ext.in',
    checkpoint: { everyInputs: 2 },
    handle: (env, ctx) => {
      ctx.state.put('seen', (ctx.state.get<number>('seen') ?? 0) + env.data);
    },
  });
}

describe('checkpoints and sources outside the store', () => {
  test('checkpoint - an input from outside the store is acknowledged to its source only once the checkpoint that stores its effects committed', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    const source = externalSource(store);
    const ref = rt.spawn(tally());
    await rt.bus.publish('ext.in', 1, { lineage: source });
    await rt.bus.publish('ext.in', 2, { lineage: source });
    await eventually(() => expect(source.given).toHaveLength(2));
    expect(ref.checkpoint?.commits).toBe(1);
    expect(source.given).toEqual([
      { stored: 3, error: undefined },
      { stored: 3, error: undefined },
    ]);
  });

  test('checkpoint - when the checkpoint fails, inputs from outside the store go back to their source failed, not acknowledged', async () => {
    const refused = new Error('disk gone');
    // The commit fails after its batch was built.
    const store = new (class extends MemoryStore {
      override batch<R>(build: (batch: StoreBatch) => R): Promise<R> {
        return super.batch(build).then(() => Promise.reject(refused));
      }
    })();
    const { rt } = testRuntime({ store });
    const source = externalSource(store);
    const ref = rt.spawn(tally());
    await rt.bus.publish('ext.in', 1, { lineage: source });
    await rt.bus.publish('ext.in', 2, { lineage: source });
    await eventually(() => expect(ref.checkpoint?.failures).toBe(1));
    await eventually(() => expect(source.given).toHaveLength(2));
    for (const g of source.given) expect(g.error).toBe(refused);
  });
});
