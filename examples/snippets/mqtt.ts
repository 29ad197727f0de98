// The TypeScript blocks of docs/mqtt.md and of README.md's "MQTT" section, verbatim, run by
// test/docs/snippets.test.ts against the Mosquitto on 127.0.0.1:1883 (skipped with a note when it
// is not there, outside CI). Its topics live under a random prefix; its session ends with it.

import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import mqtt from 'mqtt';
import { actor, createRuntime, MemoryStore, sinkActor } from 'sluice';
import { mqttSink, mqttSource } from 'sluice/connectors/mqtt';
import { sharedMosquittoMissing } from '../../test/services/mosquitto.ts';

interface Reading {
  celsius: number;
}

export async function main(): Promise<void> {
  if ((await sharedMosquittoMissing('examples/snippets/mqtt.ts')) !== undefined) return;
  const prefix = `sluice-example-${randomBytes(4).toString('hex')}`;
  const plain = await mqtt.connectAsync('mqtt://127.0.0.1:1883', { protocolVersion: 5 });
  const alertsSeen: { topic: string; body: unknown; key: unknown }[] = [];
  plain.on('message', (topic, payload, packet) =>
    alertsSeen.push({
      topic,
      body: JSON.parse(payload.toString()),
      key: packet.properties?.userProperties?.['message-id'],
    }),
  );
  await plain.subscribeAsync(`${prefix}/alerts`, { qos: 1 });
  const sensorsFilter = `${prefix}/sensors/+/temp`;
  const alertsTopic = `${prefix}/alerts`;
  const store = new MemoryStore();
  const runtime = createRuntime({ store });
  const alert = (env: { data: Reading; headers: Record<string, string> }) =>
    env.data.celsius > 30 ? [{ topic: env.headers['mqtt-topic'], celsius: env.data.celsius }] : [];
  try {
    // Sensors in, alerts out: each reading is acknowledged (PUBACK) once its alert is published.
    const readings = mqttSource<Reading>({
      connection: { url: 'mqtt://127.0.0.1:1883' },
      topics: sensorsFilter, // sensors/+/temp
      subject: 'readings', // the bus subject the actors read (the topic is in `mqtt-topic`)
      clientId: `${prefix}-alerting`, // the persistent session: what is not acknowledged waits there
    });
    const alerts = await mqttSink({ topic: alertsTopic, qos: 1, store });
    runtime.spawn(actor({ name: 'alerting', subscribe: readings.ref, output: 'alerts', handle: alert }));
    runtime.spawn(sinkActor({ name: 'to-alerts', subscribe: 'alerts', sink: alerts }));
    await readings.start(runtime);

    // A plain publisher's reading, with a `message-id` user property: the root of idempotency keys.
    await plain.publishAsync(`${prefix}/sensors/r1/temp`, JSON.stringify({ celsius: 31 }), {
      qos: 1,
      properties: { userProperties: { 'message-id': 'r1-0001' } },
    });
    await waitFor(() => alertsSeen.length === 1);
    deepStrictEqual(alertsSeen[0]?.body, { topic: `${prefix}/sensors/r1/temp`, celsius: 31 });
    // <source name>/<message-id>/<actor>/<index>; the source's name is `mqtt:<clientId>`.
    strictEqual(alertsSeen[0]?.key, `mqtt:${prefix}-alerting/r1-0001/alerting/0`);
    await waitFor(() => readings.lag().messages === 0);

    await runtime.stop();
    await readings.close();
    await alerts.close();

    // Mapped subjects: each topic's levels become the tokens of its subject.
    const mapped = mqttSource({ topics: 'sensors/+/temp', subjectPrefix: 'mqtt', session: 'clean' });
    strictEqual(mapped.ref.name, 'mqtt.sensors.*.temp');
  } finally {
    // The example's session ends with it (the broker would keep it a day).
    const end = await mqtt.connectAsync('mqtt://127.0.0.1:1883', { clientId: `${prefix}-alerting`, clean: true });
    await end.endAsync();
    await plain.endAsync();
  }
}

async function waitFor(check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
