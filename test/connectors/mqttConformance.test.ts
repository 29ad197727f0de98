/**
 * The connector conformance suite against a real Mosquitto (started by the test, so that its log
 * tells which messages each session acknowledged): topic filters in, QoS 1 publishes out.
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { IDEMPOTENCY_KEY_HEADER, type Runtime } from 'sluice';
import { MQTT_PROPERTIES, mqttSink, mqttSource } from 'sluice/connectors/mqtt';
import { afterAll, beforeAll, describe } from 'vitest';
import { type Mosquitto, mosquittoMissing, startMosquitto } from '../services/mosquitto.ts';
import { type ConformanceConnector, type ConformanceTopic, conformance } from './conformance.ts';

const missing = mosquittoMissing('the MQTT connector conformance tests');
const run = randomBytes(4).toString('hex');
let broker: Mosquitto;
let producer: MqttClient;
const clients: MqttClient[] = [];
let topics = 0;
let sent = 0;

describe.skipIf(missing !== undefined)('MQTT', () => {
  beforeAll(async () => {
    broker = await startMosquitto();
    producer = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  });
  afterAll(async () => {
    for (const c of [producer, ...clients]) await c?.endAsync(true);
    await broker?.stop();
  });

  const connector: ConformanceConnector = {
    name: 'MQTT',
    kind: 'mqtt',
    durable: true,
    durableSink: true,
    // A plain publisher's `message-id` user property is the position.
    position: 'm\\d+',
    async topic(): Promise<ConformanceTopic> {
      const topic = `sluice-test/${run}/conf${++topics}`;
      /** Sessions by group: its client id, and what was produced since the broker kept it. */
      const sessions = new Map<string, { clientId: string; exists: boolean; produced: number }>();
      const sessionOf = (group: string) => {
        let s = sessions.get(group);
        if (s === undefined) {
          s = { clientId: `${run}-conf${topics}-${group}`, exists: false, produced: 0 };
          sessions.set(group, s);
        }
        return s;
      };
      let names: string[] = [];
      const received: { key: string | undefined; value: unknown }[] = [];
      return {
        get stream() {
          return names[0] ?? topic;
        },
        async produce(values) {
          // A group's session exists before anything is produced (a source made and not started
          // yet too), as a queue would: the broker keeps for a session only what came after it.
          for (const s of sessions.values()) {
            if (s.exists) continue;
            const c = await mqtt.connectAsync(broker.url, {
              protocolVersion: 5,
              clientId: s.clientId,
              clean: false,
              properties: { sessionExpiryInterval: 300 },
            });
            await c.subscribeAsync(topic, { qos: 1 });
            await c.endAsync();
            s.exists = true;
          }
          for (const s of sessions.values()) s.produced += values.length;
          for (const v of values) {
            await producer.publishAsync(topic, JSON.stringify(v), {
              qos: 1,
              properties: { userProperties: { [MQTT_PROPERTIES.messageId]: `m${++sent}` } },
            });
          }
        },
        source: ({ subject, group, maxAckPending }) => {
          const s = sessionOf(group);
          const source = mqttSource({
            connection: { url: broker.url },
            topics: topic,
            subject,
            clientId: s.clientId,
            maxAckPending,
            backoffMs: [50],
          });
          names = [source.name, ...names];
          const start = source.start.bind(source);
          return Object.assign(source, {
            start: async (rt: Runtime) => {
              await start(rt);
              s.exists = true;
            },
          });
        },
        async sink({ store }) {
          // A reader subscribed before the sink writes: what it publishes reaches it.
          const reader = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
          clients.push(reader);
          reader.on('message', (_t, payload, packet) => {
            // The key is the message-id, or (for a record with a revision) a property of its own.
            const props = packet.properties?.userProperties;
            const key = props?.[IDEMPOTENCY_KEY_HEADER] ?? props?.[MQTT_PROPERTIES.messageId];
            received.push({ key: Array.isArray(key) ? key[0] : key, value: JSON.parse(payload.toString()) });
          });
          await reader.subscribeAsync(topic, { qos: 1 });
          return mqttSink({ connection: { url: broker.url }, topic, store });
        },
        async read(expected) {
          const deadline = Date.now() + 10_000;
          let count = received.length;
          let quietSince = Date.now();
          // Until the expected count, then half a second of nothing more (a double would show).
          while (Date.now() < deadline && (received.length < expected || Date.now() - quietSince < 500)) {
            await new Promise((resolve) => setTimeout(resolve, 20));
            if (received.length !== count) {
              count = received.length;
              quietSince = Date.now();
            }
          }
          return [...received];
        },
        async backlog(group) {
          const s = sessionOf(group);
          return s.produced - broker.pubacks(s.clientId);
        },
      };
    },
  };

  conformance(connector);
});
