/**
 * The MQTT connector against a real Mosquitto the test starts with a password file and an ACL
 * file: topic-to-subject mapping and the filters refused; credentials and ACL refusals; the ordered
 * PUBACK window (later messages flow while an earlier one is unsettled, and the PUBACKs wait for
 * it); redelivery with DUP to the next connection of a persistent session; a session the broker
 * lost in a restart; QoS 0; retained messages; the sink's QoS and retain. The conformance cases are in mqttConformance.test.ts.
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
import { ConnectorError, createRuntime, DEAD_LETTER_HEADERS, type Envelope, OptionsError, type Runtime } from 'sluice';
import {
  MQTT_HEADERS,
  MQTT_PROPERTIES,
  mqttSink,
  mqttSource,
  subjectToTopic,
  topicToSubject,
} from 'sluice/connectors/mqtt';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { type Mosquitto, mosquittoMissing, startMosquitto } from '../services/mosquitto.ts';
import { until } from './conformance.ts';
import { expectRefusedHeaderLetter } from './redisHelpers.ts';

const missing = mosquittoMissing('the MQTT connector tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const PASSWORD = 'pa55-w0rd-not-shown';
const run = randomBytes(4).toString('hex');
let broker: Mosquitto;
let producer: MqttClient;
let n = 0;

/** Connection options of the user the ACL lets read and write `sluice/#` and only read `readonly/#`. */
const alice = () => ({ url: broker.url, username: 'alice', password: PASSWORD });

function runtime(): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 1_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

function closing<S extends { close(): Promise<void> }>(s: S): S {
  onTestFinished(() => s.close());
  return s;
}

/** A fresh topic under `sluice/`, which alice may read and write. */
function topic(what: string): string {
  return `sluice/${run}/${what}${++n}`;
}

async function publish(t: string, values: readonly unknown[], options: { retain?: boolean; qos?: 0 | 1 } = {}) {
  for (const [i, v] of values.entries()) {
    await producer.publishAsync(t, JSON.stringify(v), {
      qos: options.qos ?? 1,
      retain: options.retain ?? false,
      properties: { userProperties: { [MQTT_PROPERTIES.messageId]: `${t}#${i}` } },
    });
  }
}

describe('topic and subject mapping', () => {
  test('levels become tokens, + becomes * and # becomes >, after the prefix', () => {
    expect(topicToSubject('sensors/+/temp', 'mqtt', true, 'x')).toBe('mqtt.sensors.*.temp');
    expect(topicToSubject('sensors/#', undefined, true, 'x')).toBe('sensors.>');
    expect(topicToSubject('#', 'mqtt', true, 'x')).toBe('mqtt.>');
    expect(topicToSubject('sensors/r1/temp', undefined, false, 'x')).toBe('sensors.r1.temp');
    expect(subjectToTopic('mqtt.sensors.r1.temp', 'mqtt')).toBe('sensors/r1/temp');
  });

  test.each([
    ['a/b.c/d', /level 2 \('b\.c'\) holds '\.'/],
    ['a//b', /level 2 \(''\) is empty/],
    ['/a', /level 1 \(''\) is empty/],
    ['a/*', /holds '\*' or '>'/],
    ['a/>/b', /holds '\*' or '>'/],
    ['a/#/b', /'#' must be the last level/],
    ['a/b+', /'\+' and '#' must be a whole level/],
    ['a/b c', /maps to an invalid subject/],
  ])('a filter that cannot be mapped is refused, naming it and the rule: %s', (filter, rule) => {
    let error: unknown;
    try {
      mqttSource({ topics: ['ok/+', filter], clientId: 'x' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OptionsError);
    expect((error as Error).message).toContain('mqttSource.topics[1]');
    expect((error as Error).message).toContain(`'${filter}'`);
    expect((error as Error).message).toMatch(rule);
  });

  test('with one subject for all messages, filters need not map; a persistent session needs a client id', () => {
    expect(mqttSource({ topics: 'a.b/+', subject: 'in', clientId: 'x' }).ref.name).toBe('in');
    expect(() => mqttSource({ topics: 'a/#/b', subject: 'in', clientId: 'x' })).toThrow(/'#' must be the last level/);
    expect(() => mqttSource({ topics: 'a' })).toThrow(/clientId.*persistent session/);
    expect(mqttSource({ topics: 'a', session: 'clean' }).ref.source.durable).toBe(false);
    expect(() => mqttSource({ topics: 'a', clientId: 'x', qos: 2 as never })).toThrow(/qos/);
  });
});

describe.skipIf(missing !== undefined)('MQTT against Mosquitto with a password file and an ACL', () => {
  beforeAll(async () => {
    broker = await startMosquitto({
      users: { alice: PASSWORD },
      acl: ['user alice', 'topic readwrite sluice/#', 'topic read readonly/#', ''].join('\n'),
    });
    producer = await mqtt.connectAsync(broker.url, { protocolVersion: 5, username: 'alice', password: PASSWORD });
  });
  afterAll(async () => {
    await producer?.endAsync(true);
    await broker?.stop();
  });

  test('good credentials work: a message in, a message out', async () => {
    const rt = runtime();
    const t = topic('good');
    const seen: unknown[] = [];
    rt.bus.subscribe('good.in', { callback: (env) => void seen.push(env.data) });
    const source = closing(mqttSource({ connection: alice(), topics: t, subject: 'good.in', session: 'clean' }));
    await source.start(rt);
    await publish(t, [{ a: 1 }]);
    await until(() => seen.length === 1, 'the message');
    expect(seen).toEqual([{ a: 1 }]);
  });

  test('bad credentials fail clearly: a ConnectorError naming the refusal, never the password', async () => {
    const rt = runtime();
    const source = closing(
      mqttSource({
        connection: { url: broker.url, username: 'alice', password: 'wrong-secret' },
        topics: topic('bad'),
        subject: 'bad.in',
        session: 'clean',
      }),
    );
    const error = await source.start(rt).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConnectorError);
    expect((error as ConnectorError).message).toMatch(/refused the credentials.*check username and password/);
    expect((error as ConnectorError).message).toContain(broker.url);
    expect((error as ConnectorError).message).not.toContain('wrong-secret');
    expect((error as ConnectorError).retryable).toBe(false);
    const sinkError = await mqttSink({
      connection: { url: broker.url, username: 'nobody', password: PASSWORD },
      topic: 't',
    })
      .then((s) => s.close())
      .catch((e: unknown) => e);
    expect(sinkError).toBeInstanceOf(ConnectorError);
    expect((sinkError as Error).message).toMatch(/refused the credentials/);
    expect((sinkError as Error).message).not.toContain(PASSWORD);
  });

  test('a denied subscription is refused: the SUBACK failure is a ConnectorError naming the filter', async () => {
    // Mosquitto's ACL file grants every subscription (it filters at delivery): a broker whose
    // dynamic security plugin checks subscriptions refuses one in its SUBACK.
    const strict = await startMosquitto({ users: { alice: PASSWORD }, subscribable: ['sluice/#'] });
    onTestFinished(() => strict.stop());
    const rt = runtime();
    const source = closing(
      mqttSource({
        connection: { url: strict.url, username: 'alice', password: PASSWORD },
        topics: ['sluice/ok', 'secret/#'],
        subject: 'sec.in',
        session: 'clean',
      }),
    );
    const error = await source.start(rt).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConnectorError);
    expect((error as Error).message).toMatch(
      /refused the subscription to 'secret\/#' \(Subscribe error: Not authorized\); check the broker's ACL/,
    );
  });

  test('a denied publish at QoS 1 (MQTT 5) fails its batch with the reason code, not retryable', async () => {
    const sink = closing(await mqttSink({ connection: alice(), topic: 'readonly/x', qos: 1 }));
    const error = await sink.write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }]).catch((e) => e);
    expect(error).toBeInstanceOf(ConnectorError);
    expect((error as Error).message).toMatch(/publishes failed \(first to 'readonly\/x'\).*Not authorized/);
    expect((error as ConnectorError).retryable).toBe(false);
    expect(sink.stats.failed).toBe(1);
  });

  test('ordered PUBACKs: later messages flow while an earlier one is unsettled; their PUBACKs wait for it', async () => {
    const rt = runtime();
    const t = topic('window');
    const clientId = `${run}-window`;
    const seen: number[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    rt.bus.subscribe('w.in', {
      concurrency: 10,
      callback: (env: Envelope) => {
        seen.push(env.data as number);
        if (env.data === 2) return held;
      },
    });
    const source = closing(mqttSource({ connection: alice(), topics: t, subject: 'w.in', clientId }));
    await source.start(rt);
    await publish(t, [1, 2, 3, 4, 5]);
    await until(() => seen.length === 5, 'all five on the bus while the second is unsettled');
    await until(() => broker.pubacks(clientId) === 1, 'the first acknowledged');
    await new Promise((resolve) => setTimeout(resolve, 200));
    // 3, 4 and 5 settled, but MQTT wants PUBACKs in arrival order: they wait for 2.
    expect(broker.pubacks(clientId)).toBe(1);
    expect(source.lag()).toMatchObject({ messages: 1, ackPending: 1 });
    release();
    await until(() => broker.pubacks(clientId) === 5, 'all five acknowledged once the second settled');
    expect(source.stats.acked).toBe(5);
  });

  test('a persistent session sends what was not acknowledged again, with DUP (attempt 2), and not what was', async () => {
    const t = topic('redeliver');
    const clientId = `${run}-redeliver`;
    const rt = runtime();
    const first: number[] = [];
    rt.bus.subscribe('rd.in', {
      concurrency: 10,
      callback: (env: Envelope) => {
        first.push(env.data as number);
        // The second never settles in this run.
        if (env.data === 2) return new Promise<void>(() => undefined);
      },
    });
    const a = closing(mqttSource({ connection: alice(), topics: t, subject: 'rd.in', clientId }));
    await a.start(rt);
    await publish(t, [1, 2, 3]);
    await until(() => first.length === 3 && broker.pubacks(clientId) === 1, 'three delivered, one acknowledged');
    await a.close();

    const rt2 = runtime();
    const second: { data: number; attempt: number }[] = [];
    rt2.bus.subscribe('rd.in', {
      callback: (env: Envelope) => void second.push({ data: env.data as number, attempt: env.attempt }),
    });
    const b = closing(mqttSource({ connection: alice(), topics: t, subject: 'rd.in', clientId }));
    await b.start(rt2);
    await publish(t, [4]);
    await until(() => second.length === 3, 'the unacknowledged two and the new one');
    // 3 settled, but its PUBACK waited behind 2: it comes again too (as a Kafka offset would).
    expect(second).toEqual([
      { data: 2, attempt: 2 },
      { data: 3, attempt: 2 },
      { data: 4, attempt: 1 },
    ]);
    expect(b.stats.duplicates).toBe(2);
    await until(() => broker.pubacks(clientId) === 4, 'all acknowledged in the end');
  });

  test('a broker restart mid-stream: the source connects again, what was not acknowledged comes again with DUP', async () => {
    const t = topic('restart');
    const clientId = `${run}-restart`;
    const rt = runtime();
    const seen: { data: number; attempt: number }[] = [];
    rt.bus.subscribe('rs.in', {
      concurrency: 10,
      callback: (env: Envelope) => {
        seen.push({ data: env.data as number, attempt: env.attempt });
        // The first delivery of 2 never settles: its PUBACK (and 3's after it) cannot go out.
        if (env.data === 2 && env.attempt === 1) return new Promise<void>(() => undefined);
      },
    });
    const source = closing(
      mqttSource({ connection: { ...alice(), reconnectMs: 50 }, topics: t, subject: 'rs.in', clientId }),
    );
    await source.start(rt);
    await publish(t, [1, 2, 3]);
    await until(() => seen.length === 3 && broker.pubacks(clientId) === 1, 'three delivered, one acknowledged');
    await broker.restart();
    producer.reconnect();
    await until(() => seen.length === 5, 'the two not acknowledged, again', 15_000);
    expect(seen.slice(3)).toEqual([
      { data: 2, attempt: 2 },
      { data: 3, attempt: 2 },
    ]);
    await until(() => broker.pubacks(clientId) === 3, 'acknowledged on the new connection');
    expect(source.stats.reconnects).toBe(1);
    expect(source.lag().messages).toBe(0);
  });

  test('a broker restart that lost the session: what the source held is still processed once each, never acknowledged on the new session, and the loss is told', async () => {
    // Without persistence the restarted broker has no session: its CONNACK says so, and it will
    // send nothing of what the source held again.
    const volatile = await startMosquitto({ persistence: false });
    onTestFinished(() => volatile.stop());
    const pub = await mqtt.connectAsync(volatile.url, { protocolVersion: 5 });
    onTestFinished(() => pub.endAsync(true));
    const t = topic('lost');
    const clientId = `${run}-lost`;
    const rt = runtime();
    const warnings: string[] = [];
    const seen: { data: number; attempt: number }[] = [];
    const done: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    // One at a time, one in the mailbox: 1 is handled, 2 waits in the mailbox, 3 in the bus's
    // publish, 4 and 5 in the source.
    rt.bus.subscribe('sl.in', {
      concurrency: 1,
      mailbox: { capacity: 1 },
      callback: async (env: Envelope) => {
        seen.push({ data: env.data as number, attempt: env.attempt });
        if (env.data === 1 && env.attempt === 1) {
          await gate;
          throw new Error('failed after the session was lost');
        }
        done.push(env.data as number);
      },
      onError: () => undefined,
    });
    const source = closing(
      mqttSource({
        connection: { url: volatile.url, reconnectMs: 50 },
        topics: t,
        subject: 'sl.in',
        clientId,
        backoffMs: [10],
      }),
    );
    await source.start(rt, { logger: { ...quiet, warn: (message: string) => void warnings.push(message) } });
    for (const v of [1, 2, 3, 4, 5]) await pub.publishAsync(t, JSON.stringify(v), { qos: 1 });
    await until(() => source.stats.received === 5 && seen.length === 1, 'five received, the first held');
    expect(volatile.pubacks(clientId)).toBe(0);

    await volatile.restart();
    await until(() => source.stats.reconnects === 1, 'the source connected again', 15_000);
    // The failure of the held one after the loss: the source still retries it.
    release();
    await until(() => done.length === 5, 'all five processed', 15_000);
    expect([...done].sort()).toEqual([1, 2, 3, 4, 5]);
    expect(seen.filter((s) => s.data === 1)).toEqual([
      { data: 1, attempt: 1 },
      { data: 1, attempt: 2 },
    ]);
    // Nothing came again from the broker: no DUP, each of 2 to 5 seen once.
    expect(seen.filter((s) => s.data !== 1).map((s) => s.data)).toEqual([2, 3, 4, 5]);
    expect(source.stats.duplicates).toBe(0);

    // The subscription was made again on the new session, and the ack window goes on: 6 is
    // delivered and acknowledged, and it alone (PUBACKs on one connection arrive in order, so
    // one of the lost session's ids would have been logged before it).
    await until(() => pub.connected, 'the publisher connected again', 15_000);
    await pub.publishAsync(t, JSON.stringify(6), { qos: 1 });
    await until(() => done.length === 6 && volatile.pubacks(clientId) === 1, 'the sixth processed and acknowledged');
    expect(done[5]).toBe(6);
    expect(source.lag().messages).toBe(0);
    await pub.publishAsync(t, JSON.stringify(7), { qos: 1 });
    await until(() => volatile.pubacks(clientId) === 2, 'the seventh acknowledged');
    expect(source.stats.acked).toBe(2);

    expect(source.stats.sessionsLost).toBe(1);
    expect(warnings.filter((w) => /session/.test(w))).toHaveLength(1);
    expect(warnings.join('\n')).toMatch(/did not keep the session.*5 messages/);
    const status = rt.status().sources.find((s) => s.name === source.name);
    expect(status?.counters.sessionsLost).toBe(1);
    expect(status?.lastError?.message).toMatch(/did not keep the session/);
  });

  test('a message failing every delivery is dead-lettered with its reason, then acknowledged', async () => {
    const rt = runtime();
    const t = topic('fail');
    const clientId = `${run}-fail`;
    let tries = 0;
    rt.bus.subscribe('f.in', {
      callback: () => {
        tries++;
        throw new Error('always');
      },
      onError: () => undefined,
    });
    const letters: Envelope[] = [];
    rt.bus.subscribe(`$DLQ.mqtt.${clientId}`, { callback: (env) => void letters.push(env) });
    const source = closing(
      mqttSource({ connection: alice(), topics: t, subject: 'f.in', clientId, maxDeliver: 3, backoffMs: [10] }),
    );
    await source.start(rt);
    await publish(t, ['x']);
    await until(() => letters.length === 1, 'the dead letter');
    expect(tries).toBe(3);
    expect(letters[0]?.headers[DEAD_LETTER_HEADERS.error]).toBe('always');
    expect(letters[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(letters[0]?.headers[MQTT_HEADERS.topic]).toBe(t);
    await until(() => broker.pubacks(clientId) === 1, 'acknowledged after the dead letter');
  });

  test('a user property whose name the bus refuses dead-letters its message at once, naming it; later ones are acknowledged', async () => {
    const rt = runtime();
    const t = topic('badprop');
    const clientId = `${run}-badprop`;
    const seen: unknown[] = [];
    rt.bus.subscribe('bp.in', { callback: (env) => void seen.push(env.data) });
    const letters: Envelope[] = [];
    rt.bus.subscribe(`$DLQ.mqtt.${clientId}`, { callback: (env) => void letters.push(env) });
    const source = closing(mqttSource({ connection: alice(), topics: t, subject: 'bp.in', clientId, backoffMs: [10] }));
    await source.start(rt);
    await producer.publishAsync(t, '1', {
      qos: 1,
      properties: { userProperties: { tenant: 'eu', 'bad name': 'x' } },
    });
    await publish(t, [2]);
    await expectRefusedHeaderLetter(seen, letters);
    await until(() => broker.pubacks(clientId) === 2, 'both acknowledged');
  });

  test('a source closed while it starts: start ends quietly, neither waiting for ever nor blaming the ACL', async () => {
    const rt = runtime();
    const source = mqttSource({
      connection: alice(),
      topics: topic('startclose'),
      subject: 'stc.in',
      session: 'clean',
    });
    const starting = source.start(rt).catch((error: unknown) => error);
    await source.close();
    expect(await starting).toBeUndefined();
    const listed = rt.status().sources.find((s) => s.name === source.name);
    expect(listed?.connection ?? 'closed').toBe('closed');
  });

  test('mapped subjects: each topic goes to its subject; a topic that cannot map is dead-lettered with the rule', async () => {
    const rt = runtime();
    const base = topic('mapped');
    const got: Envelope[] = [];
    const source = closing(
      mqttSource({ connection: alice(), topics: `${base}/+/temp`, subjectPrefix: 'mqtt', session: 'clean' }),
    );
    const pattern = `mqtt.${base.replaceAll('/', '.')}.*.temp`;
    expect(source.ref.name).toBe(pattern);
    rt.bus.subscribe(source.ref.name, { callback: (env) => void got.push(env) });
    const letters: Envelope[] = [];
    rt.bus.subscribe('$DLQ.mqtt.>', { callback: (env) => void letters.push(env) });
    await source.start(rt);
    await publish(`${base}/r.1/temp`, [20]);
    await publish(`${base}/r2/temp`, [21]);
    await until(() => got.length === 1 && letters.length === 1, 'one mapped, one dead-lettered');
    expect(got[0]?.subject).toBe(`mqtt.${base.replaceAll('/', '.')}.r2.temp`);
    expect(got[0]?.headers[MQTT_HEADERS.topic]).toBe(`${base}/r2/temp`);
    expect(letters[0]?.headers[DEAD_LETTER_HEADERS.error]).toMatch(
      /topic '.*r\.1\/temp' has no bus subject: level \d+ \('r\.1'\) holds '\.'/,
    );
  });

  test('QoS 0 is at-most-once: delivered, never acknowledged, and the source is not durable', async () => {
    const rt = runtime();
    const t = topic('qos0');
    const clientId = `${run}-qos0`;
    const seen: unknown[] = [];
    rt.bus.subscribe('q0.in', { callback: (env) => void seen.push(env.data) });
    const source = closing(mqttSource({ connection: alice(), topics: t, subject: 'q0.in', clientId, qos: 0 }));
    expect(source.ref.source.durable).toBe(false);
    await source.start(rt);
    await publish(t, [1, 2, 3], { qos: 1 });
    await until(() => seen.length === 3, 'three messages');
    await until(() => source.lag().messages === 0, 'settled');
    expect(broker.pubacks(clientId)).toBe(0);
  });

  test('a record the sink cannot encode fails alone, not retryable, and the rest of its batch is published', async () => {
    const t = topic('encode');
    const received: IPublishPacket[] = [];
    const reader = await mqtt.connectAsync(broker.url, { protocolVersion: 5, username: 'alice', password: PASSWORD });
    onTestFinished(() => reader.endAsync(true));
    reader.on('message', (_t, _p, packet) => void received.push(packet));
    await reader.subscribeAsync(t, { qos: 1 });
    const sink = closing(await mqttSink({ connection: alice(), topic: t, qos: 1 }));
    // JSON has no BigInt: the second record cannot be encoded.
    const values: unknown[] = [{ n: 1 }, { n: 2n }, { n: 3 }];
    const records = values.map((value, i) => ({ key: `e${i}`, value, revision: undefined, envelope: undefined }));
    const error = await sink.write(records).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectorError);
    expect((error as Error).message).toMatch(/^.*1 of 3 publishes failed/);
    expect((error as ConnectorError).retryable).toBe(false);
    expect(sink.stats).toMatchObject({ published: 2, failed: 1 });
    await until(() => received.length === 2, 'the two good records');
    expect(received.map((p) => JSON.parse(p.payload.toString()))).toEqual([{ n: 1 }, { n: 3 }]);
  });

  test('the sink publishes at QoS 0, 1 and 2, retained as an option; the source takes retained messages or not', async () => {
    const t = topic('sink');
    const received: IPublishPacket[] = [];
    const reader = await mqtt.connectAsync(broker.url, { protocolVersion: 5, username: 'alice', password: PASSWORD });
    onTestFinished(() => reader.endAsync(true));
    reader.on('message', (_t, _p, packet) => void received.push(packet));
    await reader.subscribeAsync(`${t}/#`, { qos: 2 });
    for (const qos of [0, 1, 2] as const) {
      const sink = closing(await mqttSink({ connection: alice(), topic: `${t}/q${qos}`, qos, retain: qos === 2 }));
      await sink.write([{ key: `k${qos}`, value: { qos }, revision: 3, envelope: undefined }]);
      expect(sink.stats.published).toBe(1);
    }
    await until(() => received.length === 3, 'three messages');
    expect(received.map((p) => [p.topic, p.qos, JSON.parse(p.payload.toString())])).toEqual([
      [`${t}/q0`, 0, { qos: 0 }],
      [`${t}/q1`, 1, { qos: 1 }],
      [`${t}/q2`, 2, { qos: 2 }],
    ]);
    expect(received[2]?.properties?.userProperties).toMatchObject({
      [MQTT_PROPERTIES.idempotencyKey]: 'k2',
      [MQTT_PROPERTIES.messageId]: 'k2#3',
    });

    // The retained one reaches a source that subscribes later, flagged; not one that declines it.
    const rt = runtime();
    const withRetained: Envelope[] = [];
    const without: Envelope[] = [];
    rt.bus.subscribe('ret.yes', { callback: (env) => void withRetained.push(env) });
    rt.bus.subscribe('ret.no', { callback: (env) => void without.push(env) });
    const yes = closing(mqttSource({ connection: alice(), topics: `${t}/#`, subject: 'ret.yes', session: 'clean' }));
    const no = closing(
      mqttSource({ connection: alice(), topics: `${t}/#`, subject: 'ret.no', session: 'clean', retained: false }),
    );
    await yes.start(rt);
    await no.start(rt);
    await publish(`${t}/live`, ['live']);
    await until(() => withRetained.length === 2 && without.length === 1, 'retained and live messages');
    expect(withRetained.map((e) => [e.data, e.headers[MQTT_HEADERS.retain]])).toEqual([
      [{ qos: 2 }, 'true'],
      ['live', undefined],
    ]);
    expect(without.map((e) => e.data)).toEqual(['live']);
  });

  test('a persistent session takes a retained message once, not again when resumed', async () => {
    const t = topic('once');
    const clientId = `${run}-once`;
    await publish(t, ['kept'], { retain: true });
    const seen: unknown[] = [];
    const take = async () => {
      const rt = runtime();
      rt.bus.subscribe('once.in', { callback: (env) => void seen.push(env.data) });
      const source = mqttSource({ connection: alice(), topics: t, subject: 'once.in', clientId });
      await source.start(rt);
      return source;
    };
    const a = await take();
    await until(() => seen.length === 1, 'the retained message');
    await until(() => broker.pubacks(clientId) === 1, 'acknowledged');
    await a.close();
    const b = closing(await take());
    await publish(t, ['live']);
    await until(() => seen.length === 2, 'the live one');
    expect(seen).toEqual(['kept', 'live']);
    expect(b.stats.received).toBe(1);
  });

  test('the window is bounded: no more than maxAckPending messages are held unacknowledged', async () => {
    const rt = runtime();
    const t = topic('bounded');
    const clientId = `${run}-bounded`;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const handled: number[] = [];
    rt.bus.subscribe('b.in', {
      concurrency: 100,
      callback: async (env: Envelope) => {
        await gate;
        handled.push(env.data as number);
      },
    });
    const source = closing(mqttSource({ connection: alice(), topics: t, subject: 'b.in', clientId, maxAckPending: 3 }));
    await source.start(rt);
    await publish(
      t,
      Array.from({ length: 20 }, (_, i) => i),
    );
    await until(() => source.lag().messages >= 3, 'the window full');
    await new Promise((resolve) => setTimeout(resolve, 200));
    // The receive maximum (3), and at most one more read before mqtt.js's reads pause.
    expect(source.lag().messages).toBeLessThanOrEqual(4);
    expect(source.stats.received).toBeLessThanOrEqual(4);
    release();
    await until(() => handled.length === 20, 'all twenty once the gate opened');
    expect(handled).toEqual(Array.from({ length: 20 }, (_, i) => i));
    await until(() => broker.pubacks(clientId) === 20, 'all acknowledged');
  });

  test('MQTT 3.1.1: the source acknowledges on settlement and the sink publishes, without properties', async () => {
    const rt = runtime();
    const t = topic('v4');
    const clientId = `${run}-v4`;
    const seen: Envelope[] = [];
    rt.bus.subscribe('v4.in', { callback: (env) => void seen.push(env) });
    const v4 = { ...alice(), protocolVersion: 4 as const };
    const source = closing(mqttSource({ connection: v4, topics: t, subject: 'v4.in', clientId }));
    await source.start(rt);
    const sink = closing(await mqttSink({ connection: v4, topic: t }));
    await sink.write([{ key: 'k', value: { v: 4 }, revision: undefined, envelope: undefined }]);
    await until(() => seen.length === 1 && broker.pubacks(clientId) === 1, 'delivered and acknowledged');
    expect(seen[0]?.data).toEqual({ v: 4 });
    // 3.1.1 carries no user properties: no message id, so no position.
    expect(seen[0]?.headers['sluice-stream-sequence']).toBeUndefined();
  });
});
