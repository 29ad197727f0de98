/**
 * The connector conformance suite: the same cases against every broker connector (NATS core and
 * JetStream here; Kafka and later connectors reuse it), as Redpanda Connect's `StreamTests` do.
 * A connector is described by a {@link ConformanceConnector}; the suite knows nothing of brokers.
 *
 * Cases: round trip, backpressure pause and resume, ack after sink, redelivery on failure,
 * idempotency keys, lag, clean close. Cases that need redelivery run only for durable sources.
 */
import {
  actor,
  createRuntime,
  type Envelope,
  IDEMPOTENCY_KEY_HEADER,
  MemoryStore,
  type Runtime,
  type Sink,
  type SinkRecord,
  type Source,
  type SourceStatus,
  type Store,
  sinkActor,
} from 'sluice';
import { describe, expect, onTestFinished, test } from 'vitest';

/** A source under test: a `Source` that starts on a runtime. */
export interface ConformanceSource extends Source {
  start(runtime: Runtime): Promise<void>;
}

/** One fresh topic (a subject, a stream, a Kafka topic) for one case. */
export interface ConformanceTopic {
  /** The name in `sluice-stream` headers of the source's messages (the root of idempotency keys). */
  readonly stream: string;
  /** Writes values as a plain client of the broker would (JSON, no Sluice envelope). */
  produce(values: readonly unknown[]): Promise<void>;
  /** A source reading the topic into the bus subject `subject`, as the consumer (group) `group`. */
  source(options: { subject: string; group: string; maxAckPending?: number }): ConformanceSource;
  /** A sink writing into the topic; `store` keeps its committed keys where it supports that. */
  sink(options: { store?: Store }): Promise<Sink>;
  /** What a plain client reads back from the topic: each message's value and idempotency key. */
  read(expected: number): Promise<{ key: string | undefined; value: unknown }[]>;
  /** Messages of `group` the broker holds unacknowledged (not delivered, or delivered and not acked). */
  backlog(group: string): Promise<number>;
}

export interface ConformanceConnector {
  readonly name: string;
  /** The source's `kind` in the runtime's status (`nats`, `kafka`, ...). */
  readonly kind: string;
  /** Whether the source redelivers what was not acknowledged (JetStream, Kafka) or not (core NATS). */
  readonly durable: boolean;
  /** Whether the sink is durable (it keeps what it wrote, so `read` finds it after the write). */
  readonly durableSink: boolean;
  /** The pattern of a position in idempotency keys (a Redis entry id is `<ms>-<n>`). @default `\d+` */
  readonly position?: string;
  topic(): Promise<ConformanceTopic>;
}

/** Waits for `check` to hold, polling: these cases run against a real broker, on its time. */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function runtimeFor(store?: Store): Runtime {
  const rt = createRuntime({ store, logger: quiet, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** The source named `name` in the runtime's status. */
function statusOf(rt: Runtime, name: string): SourceStatus | undefined {
  return rt.status().sources.find((src) => src.name === name);
}

function started<S extends ConformanceSource>(source: S): S {
  onTestFinished(() => source.close());
  return source;
}

/** A sink whose writes wait for `open()`, to hold a batch in flight. */
function gatedSink(inner: Sink): Sink & { open(): void; readonly writes: number } {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let writes = 0;
  return {
    name: `gated(${inner.name})`,
    get writes() {
      return writes;
    },
    open: () => release(),
    async write(records: readonly SinkRecord[]) {
      writes++;
      await gate;
      await inner.write(records);
    },
  };
}

/** Runs the conformance cases against `connector`. */
export function conformance(connector: ConformanceConnector): void {
  describe(`connector conformance: ${connector.name}`, () => {
    test('round trip: what a plain client produces comes out of the sink transformed, each once', async () => {
      const topic = await connector.topic();
      const out = await connector.topic();
      const rt = runtimeFor(new MemoryStore());
      const source = started(topic.source({ subject: 'rt.in', group: 'rt' }));
      const sink = await out.sink({});
      onTestFinished(() => sink.close?.());
      rt.spawn(
        actor<{ n: number }, { n: number; doubled: number }>({
          name: 'double',
          subscribe: source.ref as never,
          output: 'rt.out',
          handle: (env) => ({ n: env.data.n, doubled: env.data.n * 2 }),
        }),
      );
      rt.spawn(
        sinkActor({
          name: 'to-broker',
          subscribe: 'rt.out',
          sink,
          batch: { maxWaitMs: 5 },
          key: connector.durable ? undefined : (env: Envelope) => `n/${(env.data as { n: number }).n}`,
        }),
      );
      await source.start(rt);
      const values = Array.from({ length: 50 }, (_, n) => ({ n }));
      const reading = connector.durableSink ? undefined : out.read(values.length);
      await topic.produce(values);
      const got = await (reading ?? out.read(values.length));
      expect(got.map((m) => m.value)).toEqual(values.map(({ n }) => ({ n, doubled: n * 2 })));
      if (connector.durable) await until(async () => (await topic.backlog('rt')) === 0, 'every input acknowledged');
    });

    test('clean close: close() resolves promptly, and the source takes nothing after it', async () => {
      const topic = await connector.topic();
      const rt = runtimeFor();
      const seen: unknown[] = [];
      rt.bus.subscribe('cc.in', { callback: (env) => void seen.push(env.data) });
      const source = started(topic.source({ subject: 'cc.in', group: 'cc' }));
      await source.start(rt);
      await topic.produce([1, 2, 3]);
      await until(() => seen.length === 3, 'three messages');
      const t0 = Date.now();
      await source.close();
      expect(Date.now() - t0).toBeLessThan(3_000);
      await topic.produce([4]);
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(seen).toEqual([1, 2, 3]);
      expect(source.lag().ackPending).toBe(0);
      // Still listed after its close, as closed, with no lag.
      expect(statusOf(rt, source.name)).toMatchObject({ connection: 'closed', lag: { messages: 0 } });
    });

    if (!connector.durable) return;

    test('backpressure: the source pauses while the mailboxes are full and resumes when they drain', async () => {
      const topic = await connector.topic();
      const rt = runtimeFor();
      const source = started(topic.source({ subject: 'bp.in', group: 'bp' }));
      let release!: () => void;
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      const handled: number[] = [];
      rt.spawn(
        actor<number, never>({
          name: 'slow',
          subscribe: source.ref as never,
          mailbox: { capacity: 4 },
          maxInFlight: 1,
          handle: async (env) => {
            await gate;
            handled.push(env.data);
          },
        }),
      );
      await source.start(rt);
      const n = 200;
      await topic.produce(Array.from({ length: n }, (_, i) => i));
      // Full: 1 in the handler, 4 in the mailbox, at most one more waiting to be accepted.
      await until(() => source.lag().ackPending >= 5, 'the mailbox filled');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(source.lag().ackPending).toBeLessThanOrEqual(6);
      expect(await topic.backlog('bp')).toBeGreaterThanOrEqual(n - 6);
      release();
      await until(() => handled.length === n, 'every message handled after the gate opened');
      expect(handled).toEqual(Array.from({ length: n }, (_, i) => i));
      await until(async () => (await topic.backlog('bp')) === 0, 'every message acknowledged');
    });

    test('ack after sink: inputs are acknowledged to the broker only once their sink batch committed', async () => {
      const topic = await connector.topic();
      const out = await connector.topic();
      const rt = runtimeFor(new MemoryStore());
      const source = started(topic.source({ subject: 'as.in', group: 'as' }));
      const sink = gatedSink(await out.sink({}));
      onTestFinished(() => sink.open());
      rt.spawn(
        sinkActor({
          name: 'gated',
          subscribe: source.ref as never,
          sink,
          key: (env) => `k/${env.data}`,
          batch: { maxWaitMs: 5 },
        }),
      );
      await source.start(rt);
      await topic.produce([1, 2, 3, 4, 5]);
      await until(() => sink.writes > 0 && source.lag().ackPending === 5, 'a batch waiting in the sink');
      expect(await topic.backlog('as')).toBe(5);
      sink.open();
      await until(async () => (await topic.backlog('as')) === 0, 'the inputs acknowledged after the commit');
      expect((await out.read(5)).map((m) => m.key).sort()).toEqual(['k/1', 'k/2', 'k/3', 'k/4', 'k/5']);
    });

    test('redelivery: an input whose consumer fails is delivered again, then acknowledged', async () => {
      const topic = await connector.topic();
      const rt = runtimeFor();
      const seen: string[] = [];
      let failures = 0;
      rt.bus.subscribe('rd.in', {
        callback: (env) => {
          seen.push(String(env.data));
          if (env.data === 'bad' && failures++ < 2) throw new Error('not yet');
        },
        onError: () => undefined,
      });
      const source = started(topic.source({ subject: 'rd.in', group: 'rd' }));
      await source.start(rt);
      await topic.produce(['a', 'bad', 'b']);
      await until(
        () => seen.filter((s) => s === 'bad').length === 3,
        'the failed message delivered three times',
        15_000,
      );
      expect(seen.filter((s) => s !== 'bad')).toEqual(['a', 'b']);
      await until(async () => (await topic.backlog('rd')) === 0, 'all acknowledged in the end', 15_000);
    });

    test('idempotency keys: outputs are keyed <stream>/<sequence>/<actor>/<index>, the same when redelivered', async () => {
      const topic = await connector.topic();
      const out = await connector.topic();
      const rt = runtimeFor(new MemoryStore());
      const source = started(topic.source({ subject: 'ik.in', group: 'ik' }));
      const keys: string[] = [];
      let failOnce = true;
      rt.bus.subscribe('ik.out', {
        callback: (env) => {
          keys.push(env.headers[IDEMPOTENCY_KEY_HEADER] as string);
          // The first output of the first input fails once: its input is delivered again.
          if (failOnce) {
            failOnce = false;
            throw new Error('once');
          }
        },
        onError: () => undefined,
      });
      rt.spawn(
        actor<string, string>({
          name: 'split',
          subscribe: source.ref as never,
          output: 'ik.out',
          handle: (env) => [`${env.data}-1`, `${env.data}-2`],
        }),
      );
      await source.start(rt);
      await topic.produce(['x', 'y']);
      await until(() => keys.length === 6, 'six outputs, two of them replays', 15_000);
      const pattern = new RegExp(`^${topic.stream}/(${connector.position ?? '\\d+'})/split/([01])$`);
      for (const k of keys) expect(k).toMatch(pattern);
      expect(new Set(keys).size).toBe(4);
      // The replayed input's outputs carry the keys of its first delivery.
      expect(keys.slice(0, 2)).toEqual(
        keys.filter((k) => k.startsWith(keys[0]?.replace(/\/[01]$/, '') ?? '')).slice(-2),
      );

      // A sink with a store writes each key once, whatever comes again.
      const store = new MemoryStore();
      const sink = await out.sink({ store });
      onTestFinished(() => sink.close?.());
      const records = [...new Set(keys)].map((key) => ({ key, value: key, revision: undefined, envelope: undefined }));
      await sink.write(records);
      await sink.write(records);
      const read = await out.read(4);
      expect(read.map((m) => m.key).sort()).toEqual([...new Set(keys)].sort());
    });

    test('lag: messages and time behind are reported while a backlog waits, and fall to zero', async () => {
      const topic = await connector.topic();
      const rt = runtimeFor();
      let release!: () => void;
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      let done = 0;
      rt.bus.subscribe('lg.in', {
        mailbox: { capacity: 2 },
        callback: async () => {
          await gate;
          done++;
        },
      });
      const source = started(topic.source({ subject: 'lg.in', group: 'lg' }));
      await topic.produce(Array.from({ length: 30 }, (_, i) => i));
      await source.start(rt);
      await until(() => source.lag().ackPending > 0, 'a message delivered');
      await new Promise((resolve) => setTimeout(resolve, 50));
      const lag = source.lag();
      expect(lag.messages).toBe(30 - done);
      expect(lag.timeMs).toBeGreaterThan(0);
      // The runtime's status shows the source, connected, with the same lag.
      const status = statusOf(rt, source.name);
      expect(status).toMatchObject({ connection: 'connected', kind: connector.kind, lag: { messages: 30 - done } });
      expect(status?.counters.received).toBeGreaterThan(0);
      release();
      await until(() => done === 30, 'all handled');
      await until(() => source.lag().messages === 0 && source.lag().timeMs === 0, 'no lag left');
      expect(statusOf(rt, source.name)?.lag).toMatchObject({ messages: 0, timeMs: 0 });
    });

    test('clean close with messages held: what was not settled is delivered again to the next reader', async () => {
      const topic = await connector.topic();
      const rt = runtimeFor();
      const first: number[] = [];
      rt.bus.subscribe('ch.in', {
        mailbox: { capacity: 2 },
        callback: (env) => new Promise<void>(() => void first.push(env.data as number)),
      });
      const a = started(topic.source({ subject: 'ch.in', group: 'ch' }));
      await a.start(rt);
      await topic.produce([1, 2, 3, 4, 5]);
      await until(() => first.length > 0, 'the first reader took one');
      await a.close();
      const rt2 = runtimeFor();
      const second: number[] = [];
      rt2.bus.subscribe('ch.in', { callback: (env) => void second.push(env.data as number) });
      const b = started(topic.source({ subject: 'ch.in', group: 'ch' }));
      await b.start(rt2);
      await until(() => second.length === 5, 'the next reader got all five');
      expect([...second].sort()).toEqual([1, 2, 3, 4, 5]);
    });
  });
}
