/**
 * `npm run bench -- brokers`: the Redis Streams, RabbitMQ and MQTT connectors against their raw clients
 * (ioredis, amqplib, mqtt.js; DESIGN.md section 10, issue 15), on the servers the machine runs (Redis on
 * 127.0.0.1:6379, RabbitMQ on 127.0.0.1:5672). Both sides encode or decode the same 64-byte JSON
 * orders, so the difference is what Sluice adds. Keys and queues have random names, removed after
 * each run.
 *
 * - `redis-publish`: N orders appended to a stream. raw: XADD of each order's JSON and its id in
 *   the `sluice-idempotency-key` field (the entry the sink writes, as the raw RabbitMQ and MQTT
 *   publishers send the id their sinks set), pipelined BATCH at a time. sluice: a `redisSink`
 *   writing batches of BATCH records. Timed until every batch was answered; XLEN checked.
 * - `redis-consume`: a stream filled with N orders (not timed); a new consumer group reads them
 *   all, each decoded and acknowledged. raw: XREADGROUP of READ entries, then one XACK of them.
 *   sluice: a `redisSource` publishing each on the bus to a subscriber, XACK per settled entry.
 *   Both time connecting and creating the group: the source's start does both.
 * - `rabbitmq-publish`: N orders to a queue through the default exchange, persistent, with
 *   publisher confirms, at most IN_FLIGHT awaited. raw: a confirm channel's `sendToQueue` from
 *   IN_FLIGHT loops over each BATCH in turn (as the sink's write takes a batch). sluice: a
 *   `rabbitSink` (the same bound, mandatory) in batches of BATCH.
 * - `rabbitmq-consume`: a queue filled with N orders (not timed), consumed with manual acks. raw:
 *   `consume` with the prefetch the Sluice source takes (1025), each decoded and acked. sluice: a
 *   `rabbitSource` publishing each on the bus to a subscriber, acked when the callback returns.
 *   Both time connecting, opening a channel and checking the queue: the source's start does that.
 *
 * - `mqtt-publish`: N orders at QoS 1 to a topic, in batches of BATCH, each acknowledged whole
 *   before the next, with no more awaiting their PUBACK than IN_FLIGHT and the broker's receive
 *   maximum (Mosquitto announces 20), and each with a `message-id` user property (the analogue of
 *   the `messageId` the raw RabbitMQ contender sets). raw: mqtt.js `publish` from that many loops
 *   per batch. sluice: an `mqttSink` (the idempotency key as `message-id`).
 *   The raw contender used to keep IN_FLIGHT (256) in flight across the whole run, unbatched and
 *   with no id: MQTT 5 forbids a client more unacknowledged QoS 1 publishes than the broker's
 *   receive maximum (mqtt.js does not enforce it, and Mosquitto does not refuse the excess at QoS
 *   1), so it measured a client breaking the protocol the sink keeps to, with a flush pattern and
 *   a message the sink's write does not have. Both now keep the same window, batches and id.
 * - `mqtt-consume`: a persistent session filled with N orders at QoS 1 (not timed), then resumed.
 *   raw: mqtt.js with the receive maximum the Sluice source announces (1000), each decoded and
 *   acknowledged by mqtt.js at once. sluice: an `mqttSource` publishing each on the bus to a
 *   subscriber, the PUBACKs sent in order as messages settle.
 *   Both MQTT cases run against a Mosquitto the bench starts (its queue per session is not bounded
 *   at 1000, as the shared broker's is; it logs errors only).
 *
 * Each contender checks the count and the sum of ids.
 */
import { randomBytes } from 'node:crypto';
import { type ChannelModel, connect } from 'amqplib';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import { createRuntime, IDEMPOTENCY_KEY_HEADER, type SinkRecord } from 'sluice';
import { mqttSink, mqttSource } from 'sluice/connectors/mqtt';
import { rabbitSink, rabbitSource } from 'sluice/connectors/rabbitmq';
import { redisSink, redisSource } from 'sluice/connectors/redis';
import { startMosquitto } from '../services/mosquitto.ts';
import { RABBITMQ } from '../services/rabbitmq.ts';
import { REDIS } from '../services/redis.ts';
import { type Contender, defineBench, expectCount, windowedBatches } from './harness.ts';

const BATCH = 500;
const IN_FLIGHT = 256;
const READ = 256;
const PREFETCH = 1025;
const RECEIVE_MAXIMUM = 1000;

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
const ENCODED = PAYLOADS.map((p) => Buffer.from(JSON.stringify(p)));

function idSum(n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (PAYLOADS[i % POOL] as Order).id;
  return sum;
}

function records(n: number): SinkRecord<Order>[] {
  return Array.from({ length: n }, (_, i) => ({
    key: `o/${i}`,
    value: PAYLOADS[i % POOL] as Order,
    revision: undefined,
    envelope: undefined,
  }));
}

const prefix = `sluice-bench:${randomBytes(4).toString('hex')}:`;
let names = 0;
const fresh = (what: string) => `${prefix}${what}${++names}`;

const redis = new Redis({ ...REDIS, protocol: 2 });
const rabbit = await connect({ protocol: 'amqp', ...RABBITMQ });
const admin = await rabbit.createConfirmChannel();
const mosquitto = await startMosquitto({ log: 'errors' });
process.once('exit', () => {
  redis.disconnect();
  mosquitto.stopSync();
});

// ---- Redis Streams ----

const rawRedisPublish: Contender = async (n) => {
  const key = fresh('pub');
  const client = new Redis({ ...REDIS, protocol: 2 });
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) {
        const p = client.pipeline();
        for (let j = i; j < Math.min(n, i + BATCH); j++)
          p.xadd(key, '*', 'data', JSON.stringify(PAYLOADS[j % POOL]), IDEMPOTENCY_KEY_HEADER, `o/${j}`);
        await p.exec();
      }
      expectCount('stored', await redis.xlen(key), n);
    },
    dispose: async () => {
      await redis.del(key);
      client.disconnect();
    },
  };
};

const sluiceRedisPublish: Contender = async (n) => {
  const key = fresh('pub');
  const sink = await redisSink<Order>({ connection: REDIS, stream: key });
  const all = records(n);
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(all.slice(i, i + BATCH));
      expectCount('stored', await redis.xlen(key), n);
    },
    dispose: async () => {
      await redis.del(key);
      await sink.close();
    },
  };
};

async function filledStream(n: number): Promise<string> {
  const key = fresh('in');
  for (let i = 0; i < n; i += BATCH) {
    const p = redis.pipeline();
    for (let j = i; j < Math.min(n, i + BATCH); j++) p.xadd(key, '*', 'data', ENCODED[j % POOL] as Buffer);
    await p.exec();
  }
  return key;
}

const rawRedisConsume: Contender = async (n) => {
  const key = await filledStream(n);
  let client: Redis | undefined;
  return {
    run: async () => {
      // Connecting and creating the group are timed, as the Sluice source's start is.
      client = new Redis({ ...REDIS, protocol: 2 });
      await client.xgroup('CREATE', key, 'raw', '0');
      let count = 0;
      let sum = 0;
      while (count < n) {
        const reply = (await client.callBuffer(
          'XREADGROUP',
          'GROUP',
          'raw',
          'c',
          'COUNT',
          READ,
          'BLOCK',
          1000,
          'STREAMS',
          key,
          '>',
        )) as [Buffer, [Buffer, Buffer[]][]][] | null;
        const entries = reply?.[0]?.[1] ?? [];
        const ids: Buffer[] = [];
        for (const [id, fields] of entries) {
          sum += (JSON.parse((fields[1] as Buffer).toString()) as Order).id;
          ids.push(id);
          count++;
        }
        if (ids.length > 0) await client.xack(key, 'raw', ...ids);
      }
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await redis.del(key);
      client?.disconnect();
    },
  };
};

const sluiceRedisConsume: Contender = async (n) => {
  const key = await filledStream(n);
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  runtime.bus.subscribe<Order>('orders.in', {
    callback: (env) => {
      sum += env.data.id;
      count++;
    },
  });
  const source = redisSource({ connection: REDIS, stream: key, group: 'sluice', subject: 'orders.in' });
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
      await redis.del(key);
    },
  };
};

// ---- RabbitMQ ----

async function freshQueue(what: string): Promise<string> {
  const q = fresh(what);
  await admin.assertQueue(q, { durable: true });
  return q;
}

async function checkQueue(q: string, n: number): Promise<void> {
  expectCount('queued', (await admin.checkQueue(q)).messageCount, n);
}

const rawRabbitPublish: Contender = async (n) => {
  const q = await freshQueue('pub');
  const model = await connect({ protocol: 'amqp', ...RABBITMQ });
  const channel = await model.createConfirmChannel();
  return {
    run: async () => {
      // Batches of BATCH, each confirmed whole before the next, as the sink's write is.
      await windowedBatches(
        n,
        BATCH,
        IN_FLIGHT,
        (i) =>
          new Promise<void>((resolve, reject) => {
            channel.sendToQueue(
              q,
              Buffer.from(JSON.stringify(PAYLOADS[i % POOL])),
              { persistent: true, messageId: `o/${i}` },
              (err) => (err === null || err === undefined ? resolve() : reject(err)),
            );
          }),
      );
      await checkQueue(q, n);
    },
    dispose: async () => {
      await admin.deleteQueue(q);
      await model.close();
    },
  };
};

const sluiceRabbitPublish: Contender = async (n) => {
  const q = await freshQueue('pub');
  const sink = await rabbitSink<Order>({ connection: RABBITMQ, exchange: '', routingKey: q, maxInFlight: IN_FLIGHT });
  const all = records(n);
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(all.slice(i, i + BATCH));
      await checkQueue(q, n);
    },
    dispose: async () => {
      await admin.deleteQueue(q);
      await sink.close();
    },
  };
};

async function filledQueue(n: number): Promise<string> {
  const q = await freshQueue('in');
  for (let i = 0; i < n; i++)
    admin.sendToQueue(q, ENCODED[i % POOL] as Buffer, { persistent: true, messageId: `o/${i}` });
  await admin.waitForConfirms();
  return q;
}

const rawRabbitConsume: Contender = async (n) => {
  const q = await filledQueue(n);
  let model: ChannelModel | undefined;
  return {
    run: async () => {
      // Connecting and opening the channel are timed, as the Sluice source's start is.
      model = await connect({ protocol: 'amqp', ...RABBITMQ });
      const channel = await model.createChannel();
      await channel.checkQueue(q);
      await channel.prefetch(PREFETCH);
      let count = 0;
      let sum = 0;
      await new Promise<void>((resolve) => {
        void channel.consume(q, (m) => {
          if (m === null) return;
          sum += (JSON.parse(m.content.toString()) as Order).id;
          channel.ack(m);
          if (++count === n) resolve();
        });
      });
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: async () => {
      await model?.close();
      await admin.deleteQueue(q);
    },
  };
};

const sluiceRabbitConsume: Contender = async (n) => {
  const q = await filledQueue(n);
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  runtime.bus.subscribe<Order>('orders.in', {
    callback: (env) => {
      sum += env.data.id;
      count++;
    },
  });
  const source = rabbitSource({ connection: RABBITMQ, queue: q, subject: 'orders.in' });
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
      await admin.deleteQueue(q);
    },
  };
};

// ---- MQTT ----

const MQTT_URL = mosquitto.url;
const topicOf = (what: string) => fresh(what).replaceAll(':', '/');

const rawMqttPublish: Contender = async (n) => {
  const topic = topicOf('pub');
  const client = await mqtt.connectAsync(MQTT_URL, { protocolVersion: 5 });
  // MQTT 5 forbids a client more unacknowledged QoS 1 publishes than the broker's receive maximum
  // (mqtt.js does not enforce it; Mosquitto does not refuse the excess): the sink keeps to it, so
  // the raw client does too, and goes batch by batch as the sink's write does.
  const window = Math.min(IN_FLIGHT, receiveMaximumOf(client));
  return {
    run: async () => {
      let acked = 0;
      await windowedBatches(n, BATCH, window, async (i) => {
        await client.publishAsync(topic, JSON.stringify(PAYLOADS[i % POOL]), {
          qos: 1,
          properties: { userProperties: { 'message-id': `o/${i}` } },
        });
        acked++;
      });
      expectCount('acknowledged', acked, n);
    },
    dispose: () => client.endAsync(),
  };
};

/** The broker's receive maximum from its CONNACK (MQTT 5; 65535 when it gives none). */
function receiveMaximumOf(client: mqtt.MqttClient): number {
  return client.serverProperties?.receiveMaximum ?? 65_535;
}

const sluiceMqttPublish: Contender = async (n) => {
  const topic = topicOf('pub');
  const sink = await mqttSink<Order>({ connection: { url: MQTT_URL }, topic, qos: 1, maxInFlight: IN_FLIGHT });
  const all = records(n);
  return {
    run: async () => {
      for (let i = 0; i < n; i += BATCH) await sink.write(all.slice(i, i + BATCH));
      expectCount('acknowledged', sink.stats.published, n);
    },
    dispose: () => sink.close(),
  };
};

/** A persistent session with `n` orders queued for it, and its client id. */
async function filledSession(n: number): Promise<{ clientId: string; topic: string }> {
  const topic = topicOf('in');
  const clientId = topic.replaceAll('/', '-');
  const session = await mqtt.connectAsync(MQTT_URL, {
    protocolVersion: 5,
    clientId,
    clean: false,
    properties: { sessionExpiryInterval: 600 },
  });
  await session.subscribeAsync(topic, { qos: 1 });
  await session.endAsync();
  const producer = await mqtt.connectAsync(MQTT_URL, { protocolVersion: 5 });
  let next = 0;
  const loop = async () => {
    while (next < n) await producer.publishAsync(topic, ENCODED[next++ % POOL] as Buffer, { qos: 1 });
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, loop));
  await producer.endAsync();
  return { clientId, topic };
}

const rawMqttConsume: Contender = async (n) => {
  const { clientId } = await filledSession(n);
  let client: mqtt.MqttClient | undefined;
  return {
    run: async () => {
      let count = 0;
      let sum = 0;
      await new Promise<void>((resolve) => {
        client = mqtt.connect(MQTT_URL, {
          protocolVersion: 5,
          clientId,
          clean: false,
          properties: { sessionExpiryInterval: 0, receiveMaximum: RECEIVE_MAXIMUM },
        });
        client.on('message', (_topic, payload) => {
          sum += (JSON.parse(payload.toString()) as Order).id;
          if (++count === n) resolve();
        });
      });
      expectCount('received', count, n);
      expectCount('id sum', sum, idSum(n));
    },
    dispose: () => client?.endAsync(),
  };
};

const sluiceMqttConsume: Contender = async (n) => {
  const { clientId, topic } = await filledSession(n);
  const runtime = createRuntime();
  let count = 0;
  let sum = 0;
  runtime.bus.subscribe<Order>('orders.in', {
    callback: (env) => {
      sum += env.data.id;
      count++;
    },
  });
  const source = mqttSource({
    connection: { url: MQTT_URL },
    topics: topic,
    subject: 'orders.in',
    clientId,
    sessionExpirySeconds: 0,
    maxAckPending: RECEIVE_MAXIMUM,
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
    },
  };
};

export default defineBench({
  bench: 'brokers',
  unit: 'msg/s',
  contenders: ['sluice', 'raw'],
  cases: {
    'redis-publish': {
      messages: 100_000,
      description: `XADD of 64-byte JSON orders with their idempotency key, pipelined ${BATCH} at a time; sluice: redisSink batches of ${BATCH}`,
      contenders: { sluice: sluiceRedisPublish, raw: rawRedisPublish },
    },
    'redis-consume': {
      messages: 100_000,
      description: `a new group reads a filled stream, each decoded and XACKed; raw: ${READ} per read, one XACK per read; sluice: redisSource -> bus`,
      contenders: { sluice: sluiceRedisConsume, raw: rawRedisConsume },
    },
    'rabbitmq-publish': {
      messages: 20_000,
      description: `persistent, publisher confirms, ${IN_FLIGHT} in flight; sluice: rabbitSink (mandatory) batches of ${BATCH}`,
      contenders: { sluice: sluiceRabbitPublish, raw: rawRabbitPublish },
    },
    'rabbitmq-consume': {
      messages: 20_000,
      description: `a filled queue consumed with manual acks, prefetch ${PREFETCH}; sluice: rabbitSource -> bus`,
      contenders: { sluice: sluiceRabbitConsume, raw: rawRabbitConsume },
    },
    'mqtt-publish': {
      messages: 50_000,
      description: `QoS 1, a message-id user property, batches of ${BATCH}, at most ${IN_FLIGHT} and the broker's receive maximum (Mosquitto: 20) awaiting their PUBACK; raw: mqtt.js publishAsync; sluice: mqttSink`,
      contenders: { sluice: sluiceMqttPublish, raw: rawMqttPublish },
    },
    'mqtt-consume': {
      messages: 50_000,
      description: `a persistent session's queue at QoS 1, receive maximum ${RECEIVE_MAXIMUM}; raw: mqtt.js acks at once; sluice: mqttSource -> bus, PUBACKs in order on settlement`,
      contenders: { sluice: sluiceMqttConsume, raw: rawMqttConsume },
    },
  },
  ratios: [['sluice', 'raw']],
  goals: ['redis-publish', 'redis-consume', 'rabbitmq-publish', 'rabbitmq-consume', 'mqtt-publish', 'mqtt-consume'].map(
    (c) => ({
      case: c,
      contender: 'sluice',
      versus: 'raw',
      atLeast: 0.85,
    }),
  ),
  notes: [
    'Redis 7 and RabbitMQ 3.10 on loopback, as the machine runs them (not started by the bench)',
    'Mosquitto 2.0 on loopback, started by the bench (sessions saved only at its stop, errors logged only)',
  ],
});
