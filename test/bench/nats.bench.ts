/**
 * `npm run bench -- nats`: the NATS connector against the raw nats.js client (DESIGN.md section 10;
 * issue 13), on one nats-server this file starts (JetStream in a temporary store) and stops. Both
 * sides encode or decode the same 64-byte JSON orders, so the difference is what Sluice adds.
 *
 * - `publish`: N orders to a core subject. raw: `nc.publish` of each order's JSON, a flush after
 *   each BATCH (as the sink's write confirms each batch).
 *   sluice: a `natsSink` writing batches of BATCH records (encoding, headers with the idempotency
 *   key, a flush per batch). Timed until a plain subscriber counted every one.
 * - `subscribe`: a plain client publishes N pre-encoded orders. raw: a subscription whose callback
 *   decodes each and sums the ids. sluice: a core `natsSource` publishing each on the bus to a
 *   subscriber that sums the ids. Timed until every one was counted.
 * - `jetstream-publish`: N orders into a stream, each with a `Nats-Msg-Id`, at most IN_FLIGHT
 *   acknowledgements awaited at once. raw: `js.publish` from IN_FLIGHT loops over each BATCH in
 *   turn (as the sink's write takes a batch). sluice: a JetStream
 *   `natsSink` (the same bound) writing batches of BATCH records.
 * - `jetstream-consume`: a stream filled with N orders (not timed); a new durable consumer reads
 *   them all, each decoded and acknowledged. raw: `consumer.consume()` with its default buffer.
 *   sluice: a JetStream `natsSource` publishing each on the bus to a subscriber, acknowledged when
 *   the subscriber's callback returns. Timed from connecting (both create their consumer in the
 *   timed run, as the source's start does) until every order was counted and acknowledged.
 *
 * Each contender checks the count and the sum of ids.
 */
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { createRuntime, type SinkRecord } from 'sluice';
import { natsSink, natsSource } from 'sluice/connectors/nats';
import { startNatsServer } from '../services/natsServer.ts';
import { type Contender, defineBench, expectCount, windowedBatches } from './harness.ts';

const BATCH = 500;
const IN_FLIGHT = 256;

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
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ENCODED = PAYLOADS.map((p) => encoder.encode(JSON.stringify(p)));

function idSum(n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (PAYLOADS[i % POOL] as Order).id;
  return sum;
}

const server = await startNatsServer({ jetstream: true });
process.once('exit', () => server.stopSync());
const shared = await connect({ servers: server.url });
const jsm = await jetstreamManager(shared);
let runs = 0;

/** A fresh stream (and subject) for one run, removed afterwards. */
async function freshStream(): Promise<{ name: string; subject: string; remove: () => Promise<void> }> {
  const name = `B${++runs}`;
  const subject = `b${runs}.orders`;
  await jsm.streams.add({ name, subjects: [subject] });
  return { name, subject, remove: () => jsm.streams.delete(name).then(() => undefined) };
}

/** A plain subscriber on its own connection counting and summing what arrives on `subject`. */
async function counter(subject: string, n: number) {
  const nc = await connect({ servers: server.url });
  let count = 0;
  let sum = 0;
  let done!: () => void;
  const all = new Promise<void>((resolve) => {
    done = resolve;
  });
  nc.subscribe(subject, {
    callback: (_, m) => {
      sum += (JSON.parse(decoder.decode(m.data)) as Order).id;
      if (++count === n) done();
    },
  });
  await nc.flush();
  return {
    all,
    check: () => {
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    close: () => nc.close(),
  };
}

function records(n: number): SinkRecord<Order>[] {
  return Array.from({ length: n }, (_, i) => ({
    key: `o/${i}`,
    value: PAYLOADS[i % POOL] as Order,
    revision: undefined,
    envelope: undefined,
  }));
}

let subjects = 0;

const rawPublish: Contender = async (n) => {
  const subject = `pub.${++subjects}`;
  const nc = await connect({ servers: server.url });
  const sub = await counter(subject, n);
  return {
    run: async () => {
      // Batches of BATCH, each flushed, as the sink's write confirms each batch.
      for (let i = 0; i < n; i += BATCH) {
        for (let j = i; j < Math.min(n, i + BATCH); j++)
          nc.publish(subject, encoder.encode(JSON.stringify(PAYLOADS[j % POOL])));
        await nc.flush();
      }
      await sub.all;
      sub.check();
    },
    dispose: async () => {
      await sub.close();
      await nc.close();
    },
  };
};

const sluicePublish: Contender = async (n) => {
  const subject = `pub.${++subjects}`;
  const sink = await natsSink<Order>({ connection: { servers: server.url }, subject });
  const sub = await counter(subject, n);
  const all = records(n);
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(all.slice(i, i + BATCH));
      await sub.all;
      sub.check();
    },
    dispose: async () => {
      await sub.close();
      await sink.close();
    },
  };
};

/** A plain client publishing n pre-encoded orders to `subject`. */
async function produce(nc: NatsConnection, subject: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    nc.publish(subject, ENCODED[i % POOL] as Uint8Array);
    // Flushed now and then, so the producer does not buffer everything before the first byte goes out.
    if (i % 10_000 === 9_999) await nc.flush();
  }
  await nc.flush();
}

const rawSubscribe: Contender = async (n) => {
  const subject = `sub.${++subjects}`;
  const producer = await connect({ servers: server.url });
  const sub = await counter(subject, n);
  return {
    run: async () => {
      await produce(producer, subject, n);
      await sub.all;
      sub.check();
    },
    dispose: async () => {
      await sub.close();
      await producer.close();
    },
  };
};

const sluiceSubscribe: Contender = async (n) => {
  const subject = `sub.${++subjects}`;
  const producer = await connect({ servers: server.url });
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  let done!: () => void;
  const all = new Promise<void>((resolve) => {
    done = resolve;
  });
  runtime.bus.subscribe<Order>('orders.in', {
    callback: (env) => {
      sum += env.data.id;
      if (++count === n) done();
    },
  });
  const source = natsSource({ connection: { servers: server.url }, subjects: subject, subject: 'orders.in' });
  await source.start(runtime);
  return {
    run: async () => {
      await produce(producer, subject, n);
      await all;
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await source.close();
      await runtime.stop();
      await producer.close();
    },
  };
};

async function checkStream(name: string, n: number): Promise<void> {
  const info = await jsm.streams.info(name);
  expectCount('stored', info.state.messages, n);
}

const rawJetStreamPublish: Contender = async (n) => {
  const stream = await freshStream();
  const nc = await connect({ servers: server.url });
  const js = jetstream(nc);
  return {
    run: async () => {
      // Batches of BATCH, each acknowledged whole before the next, as the sink's write is.
      await windowedBatches(n, BATCH, IN_FLIGHT, (i) =>
        js.publish(stream.subject, encoder.encode(JSON.stringify(PAYLOADS[i % POOL])), { msgID: `o/${i}` }),
      );
      await checkStream(stream.name, n);
    },
    dispose: async () => {
      await stream.remove();
      await nc.close();
    },
  };
};

const sluiceJetStreamPublish: Contender = async (n) => {
  const stream = await freshStream();
  const sink = await natsSink<Order>({
    connection: { servers: server.url },
    jetstream: true,
    subject: stream.subject,
    maxInFlight: IN_FLIGHT,
  });
  const all = records(n);
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(all.slice(i, i + BATCH));
      await checkStream(stream.name, n);
    },
    dispose: async () => {
      await stream.remove();
      await sink.close();
    },
  };
};

/** A stream holding n orders, filled before the timed run. */
async function filledStream(n: number) {
  const stream = await freshStream();
  const js = jetstream(shared);
  let next = 0;
  const loop = async () => {
    while (next < n) {
      const i = next++;
      await js.publish(stream.subject, ENCODED[i % POOL] as Uint8Array);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, loop));
  return stream;
}

const rawJetStreamConsume: Contender = async (n) => {
  const stream = await filledStream(n);
  let nc: NatsConnection | undefined;
  return {
    run: async () => {
      // Connecting and creating the consumer are timed, as the Sluice source's start is.
      nc = await connect({ servers: server.url });
      await jetstreamManager(nc).then((m) =>
        m.consumers.add(stream.name, { durable_name: 'raw', ack_policy: AckPolicy.Explicit }),
      );
      const consumer = await jetstream(nc).consumers.get(stream.name, 'raw');
      const messages = await consumer.consume();
      let count = 0;
      let sum = 0;
      for await (const m of messages) {
        sum += (JSON.parse(decoder.decode(m.data)) as Order).id;
        m.ack();
        if (++count === n) break;
      }
      await nc.flush();
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await stream.remove();
      await nc?.close();
    },
  };
};

const sluiceJetStreamConsume: Contender = async (n) => {
  const stream = await filledStream(n);
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  runtime.bus.subscribe<Order>('orders.in', {
    callback: (env) => {
      sum += env.data.id;
      count++;
    },
  });
  const source = natsSource({
    connection: { servers: server.url },
    jetstream: { stream: stream.name, consumer: 'sluice' },
    subject: 'orders.in',
  });
  return {
    run: async () => {
      await source.start(runtime);
      while (source.stats.acked < n) await new Promise((resolve) => setTimeout(resolve, 1));
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await source.close();
      await runtime.stop();
      await stream.remove();
    },
  };
};

export default defineBench({
  bench: 'nats',
  unit: 'msg/s',
  contenders: ['sluice', 'raw'],
  cases: {
    publish: {
      messages: 200_000,
      description: `64-byte JSON orders to a core subject; sluice: natsSink batches of ${BATCH}; timed until a subscriber counted them`,
      contenders: { sluice: sluicePublish, raw: rawPublish },
    },
    subscribe: {
      messages: 200_000,
      description: 'a plain client publishes; raw: a decoding callback; sluice: natsSource -> bus -> subscriber',
      contenders: { sluice: sluiceSubscribe, raw: rawSubscribe },
    },
    'jetstream-publish': {
      messages: 30_000,
      description: `into a stream with Nats-Msg-Id, ${IN_FLIGHT} acks in flight; sluice: JetStream natsSink batches of ${BATCH}`,
      contenders: { sluice: sluiceJetStreamPublish, raw: rawJetStreamPublish },
    },
    'jetstream-consume': {
      messages: 30_000,
      description: 'a durable consumer reads a filled stream, each order decoded and acked; sluice: natsSource -> bus',
      contenders: { sluice: sluiceJetStreamConsume, raw: rawJetStreamConsume },
    },
  },
  ratios: [['sluice', 'raw']],
  goals: ['publish', 'subscribe', 'jetstream-publish', 'jetstream-consume'].map((c) => ({
    case: c,
    contender: 'sluice',
    versus: 'raw',
    atLeast: 0.85,
  })),
  notes: ['one nats-server 2.9 on loopback, started by the bench with JetStream in a temporary store'],
});
