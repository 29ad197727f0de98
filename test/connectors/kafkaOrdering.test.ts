/**
 * Ordered concurrency per key inside a partition (`ordering: 'key'`) against a real broker: an
 * actor handling many inputs at once overlaps different keys of one partition, never two records
 * of one key, and sees each key in offset order; the committed offset stays below every record
 * not finished, so a source closed mid-stream loses nothing.
 */
import { actor, createRuntime, type Envelope, OptionsError, type Runtime } from 'sluice';
import { KAFKA_HEADERS, type KafkaSource, kafkaSource } from 'sluice/connectors/kafka';
import { mapAsync } from 'sluice/operators';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type KafkaBroker, kafkaMissing, startKafka } from '../services/kafka/broker.ts';
import { createTopic, eventually, produce, type TestRecord } from './kafkaHelpers.ts';

const skip = kafkaMissing('the Kafka ordering tests');
let broker: KafkaBroker;

beforeAll(async () => {
  if (skip === undefined) broker = await startKafka({ partitions: 1 });
}, 120_000);
afterAll(async () => {
  await broker?.close();
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

interface Item {
  readonly i: number;
}

/** What the handlers saw: overlaps, per-key order, and whether a commit ever passed a running record. */
class Observed {
  readonly #running = new Map<string, Set<number>>();
  readonly #source: KafkaSource<Item>;
  readonly byKey = new Map<string, number[]>();
  readonly done = new Set<string>();
  mostKeysAtOnce = 0;
  sameKeyOverlaps = 0;
  /** A keyless record began beside another record, or one began beside a keyless record. */
  keylessOverlaps = 0;
  /** Times a partition's committed offset was above a record still running. */
  commitsPastRunning = 0;

  constructor(source: KafkaSource<Item>) {
    this.#source = source;
  }

  get running(): number {
    let n = 0;
    for (const set of this.#running.values()) n += set.size;
    return n;
  }

  begin(env: Envelope<Item>): string {
    const key = env.key ?? '';
    const at = `${env.headers[KAFKA_HEADERS.partition]}:${env.headers[KAFKA_HEADERS.offset]}`;
    let set = this.#running.get(key);
    if (set === undefined) this.#running.set(key, (set = new Set()));
    if (set.size > 0) this.sameKeyOverlaps++;
    if (key === '' ? this.running > 0 : this.#running.get('')?.size) this.keylessOverlaps++;
    set.add(this.#offset(env));
    let keys = 0;
    for (const s of this.#running.values()) if (s.size > 0) keys++;
    this.mostKeysAtOnce = Math.max(this.mostKeysAtOnce, keys);
    let list = this.byKey.get(key);
    if (list === undefined) this.byKey.set(key, (list = []));
    list.push(this.#offset(env));
    this.#checkCommit();
    return at;
  }

  end(env: Envelope<Item>): void {
    this.#checkCommit();
    this.#running.get(env.key ?? '')?.delete(this.#offset(env));
    this.done.add(`${env.headers[KAFKA_HEADERS.partition]}:${env.headers[KAFKA_HEADERS.offset]}`);
  }

  /** The test topics have one partition (the ordering is within a partition). */
  #checkCommit(): void {
    const committed = [...this.#source.committedOffsets().values()][0] ?? 0;
    for (const set of this.#running.values()) for (const o of set) if (committed > o) this.commitsPastRunning++;
  }

  #offset(env: Envelope<Item>): number {
    return Number(env.headers[KAFKA_HEADERS.offset]);
  }
}

/** `n` records over 8 keys, every 40th without a key. */
function records(n: number): TestRecord[] {
  return Array.from({ length: n }, (_, i) => ({ key: i % 40 === 39 ? null : `k${i % 8}`, value: { i } }));
}

/** A per-key delay of 1 to 4 ms, so keys finish out of step. */
function delay(env: Envelope<Item>): Promise<void> {
  const ms = env.key === undefined ? 2 : 1 + (Number(env.key.slice(1)) % 4);
  return new Promise((r) => setTimeout(r, ms));
}

function ascending(list: readonly number[]): boolean {
  return list.every((o, i) => i === 0 || (list[i - 1] as number) < o);
}

async function run(
  topic: string,
  ordering: 'partition' | 'key',
  spawn: (rt: Runtime, source: KafkaSource<Item>, seen: Observed) => void,
  n: number,
): Promise<{ seen: Observed; source: KafkaSource<Item> }> {
  const source = kafkaSource<Item>({
    connection: { brokers: [broker.bootstrap] },
    groupId: `g-${topic}`,
    topics: topic,
    ordering,
    commitIntervalMs: 10,
  });
  const seen = new Observed(source);
  const rt = createRuntime({ logger: quiet });
  spawn(rt, source, seen);
  await source.start(rt);
  await eventually(() => seen.done.size === n && source.lag().messages === 0, 20_000, `all of ${topic} handled`);
  await source.close();
  await rt.stop();
  return { seen, source };
}

/** An actor handling 16 inputs at once; the inputs `hangs` picks never finish. */
function concurrentHandler(
  rt: Runtime,
  source: KafkaSource<Item>,
  seen: Observed,
  hangs: (env: Envelope<Item>) => boolean = () => false,
): void {
  rt.spawn(
    actor<Item, never>({
      name: 'work',
      subscribe: source.ref,
      concurrency: 16,
      handle: async (env) => {
        seen.begin(env);
        if (hangs(env)) return new Promise<void>(() => undefined);
        await delay(env);
        seen.end(env);
      },
    }),
  );
}

test('ordering and drainTimeoutMs are checked: a bad value is an OptionsError naming the option', () => {
  const base = { connection: { brokers: ['127.0.0.1:9092'] }, groupId: 'g', topics: 't' };
  const bad = (extra: object) => () => kafkaSource({ ...base, ...extra });
  expect(bad({ ordering: 'keys' })).toThrow(OptionsError);
  expect(bad({ ordering: 'keys' })).toThrow(/ordering/);
  expect(bad({ drainTimeoutMs: 0 })).toThrow(/drainTimeoutMs/);
  expect(() => kafkaSource({ ...base, ordering: 'key', drainTimeoutMs: 500 })).not.toThrow();
});

describe.skipIf(skip !== undefined)('kafka source, ordering by key, on a real broker', () => {
  test("ordering 'key': an actor with concurrency overlaps keys of one partition, never one key, each key in offset order", async () => {
    const N = 400;
    await createTopic(broker.bootstrap, 'ok-in', 1);
    await produce(broker.bootstrap, 'ok-in', records(N));
    const { seen, source } = await run('ok-in', 'key', concurrentHandler, N);
    expect(seen.mostKeysAtOnce).toBeGreaterThan(1);
    expect(seen.sameKeyOverlaps).toBe(0);
    expect(seen.keylessOverlaps).toBe(0);
    for (const list of seen.byKey.values()) expect(ascending(list)).toBe(true);
    expect([...seen.byKey.values()].reduce((sum, l) => sum + l.length, 0)).toBe(N);
    expect(seen.commitsPastRunning).toBe(0);
    expect(source.stats.keyWaits).toBeGreaterThan(0);
    expect(source.stats.commits).toBeGreaterThan(0);

    // The same actor on partition order: records of one key overlap (what 'key' prevents).
    await createTopic(broker.bootstrap, 'op-in', 1);
    await produce(broker.bootstrap, 'op-in', records(N));
    const control = await run('op-in', 'partition', concurrentHandler, N);
    expect(control.seen.sameKeyOverlaps).toBeGreaterThan(0);
  }, 60_000);

  test("ordering 'key' holds through a pipeline's mapAsync", async () => {
    const N = 300;
    await createTopic(broker.bootstrap, 'om-in', 1);
    await produce(broker.bootstrap, 'om-in', records(N));
    const { seen } = await run(
      'om-in',
      'key',
      (rt, source, s) =>
        rt.spawn(
          actor<Item, Item>({
            name: 'work',
            subscribe: source.ref,
            output: 'om.out',
            pipeline: (in$) =>
              in$.pipe(
                mapAsync(
                  async (data, env) => {
                    s.begin(env);
                    await delay(env);
                    s.end(env);
                    return data;
                  },
                  { concurrency: 8 },
                ),
              ),
          }),
        ),
      N,
    );
    expect(seen.mostKeysAtOnce).toBeGreaterThan(1);
    expect(seen.sameKeyOverlaps).toBe(0);
    expect(seen.keylessOverlaps).toBe(0);
    for (const list of seen.byKey.values()) expect(ascending(list)).toBe(true);
    expect(seen.commitsPastRunning).toBe(0);
  }, 60_000);

  test('closed mid-stream with a key stuck: the committed offset stays below it, the next reader handles the rest', async () => {
    const N = 300;
    const topic = 'ox-in';
    await createTopic(broker.bootstrap, topic, 1);
    await produce(broker.bootstrap, topic, records(N));
    const connection = { brokers: [broker.bootstrap] };
    const make = () =>
      kafkaSource<Item>({ connection, groupId: 'ox', topics: topic, ordering: 'key', commitIntervalMs: 10 });

    // The first reader never finishes key k3 from record 100 on; the other keys go on past it.
    const first = make();
    const seen1 = new Observed(first);
    let stuck = Number.POSITIVE_INFINITY;
    const rt1 = createRuntime({ logger: quiet, shutdownDeadlineMs: 300 });
    concurrentHandler(rt1, first, seen1, (env) => {
      if (env.key !== 'k3' || env.data.i < 100) return false;
      stuck = Math.min(stuck, Number(env.headers[KAFKA_HEADERS.offset]));
      return true;
    });
    await first.start(rt1);
    // Every record of the other keys before the first keyless record past the stuck one is done.
    const keyless = records(N).findIndex((r, i) => i > 100 && r.key === null);
    const reachable = records(N).filter((r, i) => i < keyless && !(r.key === 'k3' && i >= 100)).length;
    await eventually(() => seen1.done.size === reachable, 20_000, 'the other keys handled past the stuck one');
    await new Promise((r) => setTimeout(r, 100));
    expect(seen1.done.size).toBe(reachable);
    expect(stuck).toBe(records(N).findIndex((r, i) => i >= 100 && r.key === 'k3'));
    expect(first.committedOffsets().get(`${topic}:0`)).toBe(stuck);
    expect(seen1.commitsPastRunning).toBe(0);
    await first.close(200);
    await rt1.stop();

    // The next reader starts at the stuck record: it handles it and everything not done, in key order.
    const second = make();
    const seen2 = new Observed(second);
    const rt2 = createRuntime({ logger: quiet });
    concurrentHandler(rt2, second, seen2);
    await second.start(rt2);
    await eventually(() => second.lag().messages === 0 && seen2.done.size === N - stuck, 20_000, 'the rest handled');
    await second.close();
    await rt2.stop();
    const all = new Set([...seen1.done, ...seen2.done]);
    expect(all.size).toBe(N);
    // At-least-once: what the first reader finished above the stuck record is handled again.
    expect(Math.min(...[...seen2.done].map((at) => Number(at.split(':')[1])))).toBe(stuck);
    expect(seen2.sameKeyOverlaps).toBe(0);
    for (const list of seen2.byKey.values()) expect(ascending(list)).toBe(true);
  }, 60_000);
});
