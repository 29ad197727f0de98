/** The connector conformance suite against a real nats-server: JetStream, then core subjects. */
import { AckPolicy, DeliverPolicy, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { IDEMPOTENCY_KEY_HEADER } from 'sluice';
import { natsSink, natsSource } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { type ConformanceConnector, type ConformanceTopic, conformance, until } from './conformance.ts';

const missing = natsServerMissing('the NATS connector conformance tests');

let server: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let topics = 0;

const encoder = new TextEncoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v));
const decode = (b: Uint8Array) => JSON.parse(new TextDecoder().decode(b)) as unknown;

describe.skipIf(missing !== undefined)('NATS', () => {
  beforeAll(async () => {
    server = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: server.url });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await nc?.close();
    await server?.stop();
  });

  const jetStream: ConformanceConnector = {
    name: 'NATS JetStream',
    kind: 'nats',
    durable: true,
    durableSink: true,
    async topic(): Promise<ConformanceTopic> {
      const n = ++topics;
      const stream = `CONF${n}`;
      await jsm.streams.add({ name: stream, subjects: [`conf${n}.>`] });
      const js = jetstream(nc);
      return {
        stream,
        async produce(values) {
          for (const v of values) await js.publish(`conf${n}.in`, json(v));
        },
        source: ({ subject, group, maxAckPending }) =>
          natsSource({
            connection: { servers: server.url },
            jetstream: {
              stream,
              consumer: group,
              filterSubject: `conf${n}.in`,
              maxAckPending,
              ackWaitMs: 2_000,
              backoffMs: [50],
            },
            subject,
            lagRefreshMs: 50,
          }),
        sink: ({ store }) =>
          natsSink({ connection: { servers: server.url }, jetstream: true, subject: `conf${n}.out`, store }),
        async read(expected) {
          const name = `reader${Math.random().toString(36).slice(2)}`;
          await jsm.consumers.add(stream, {
            name,
            ack_policy: AckPolicy.None,
            deliver_policy: DeliverPolicy.All,
            filter_subject: `conf${n}.out`,
            inactive_threshold: 5_000_000_000,
          });
          const consumer = await js.consumers.get(stream, name);
          const out: { key: string | undefined; value: unknown }[] = [];
          const deadline = Date.now() + 10_000;
          while (out.length < expected && Date.now() < deadline) {
            const batch = await consumer.fetch({ max_messages: expected - out.length, expires: 1_000 });
            for await (const m of batch)
              out.push({ key: m.headers?.get(IDEMPOTENCY_KEY_HEADER), value: decode(m.data) });
          }
          // Nothing more than expected: a double would show here.
          const more = await consumer.fetch({ max_messages: 10, expires: 1_000 });
          for await (const m of more) out.push({ key: m.headers?.get(IDEMPOTENCY_KEY_HEADER), value: decode(m.data) });
          return out;
        },
        async backlog(group) {
          const info = await jsm.consumers.info(stream, group);
          return info.num_pending + info.num_ack_pending;
        },
      };
    },
  };

  const core: ConformanceConnector = {
    name: 'NATS core',
    kind: 'nats',
    durable: false,
    durableSink: false,
    async topic(): Promise<ConformanceTopic> {
      const n = ++topics;
      return {
        stream: 'nats',
        async produce(values) {
          for (const v of values) nc.publish(`core${n}.in`, json(v));
          await nc.flush();
        },
        source: ({ subject }) => natsSource({ connection: { servers: server.url }, subjects: `core${n}.in`, subject }),
        sink: () => natsSink({ connection: { servers: server.url }, subject: `core${n}.out` }),
        async read(expected) {
          const out: { key: string | undefined; value: unknown }[] = [];
          const sub = nc.subscribe(`core${n}.out`, {
            callback: (_, m) => void out.push({ key: m.headers?.get(IDEMPOTENCY_KEY_HEADER), value: decode(m.data) }),
          });
          await nc.flush();
          await until(() => out.length >= expected, `${expected} messages on core${n}.out`);
          sub.unsubscribe();
          return out;
        },
        backlog: async () => 0,
      };
    },
  };

  conformance(jetStream);
  conformance(core);
});
