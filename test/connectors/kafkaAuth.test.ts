/**
 * The Kafka connector's authentication and TLS against real brokers: one with a SASL listener
 * (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN; SCRAM users made at format time) and one with a TLS
 * listener whose certificate a fresh CA signed. Good credentials work end to end; bad ones fail
 * with a ConnectorError that says what failed, never with a hang.
 */

import { ConnectorError, createRuntime, sinkActor } from 'sluice';
import { type KafkaConnectionOptions, kafkaSink, kafkaSource } from 'sluice/connectors/kafka';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type KafkaBroker, kafkaMissing, startKafka } from '../services/kafka/broker.ts';
import { eventually } from './kafkaHelpers.ts';

const skip = kafkaMissing('the Kafka authentication tests');
const USER = { name: 'alice', password: 'alice-secret' };
let sasl: KafkaBroker;
let tls: KafkaBroker;

beforeAll(async () => {
  if (skip !== undefined) return;
  [sasl, tls] = await Promise.all([
    startKafka({ security: { kind: 'sasl', users: [USER] } }),
    startKafka({ security: { kind: 'tls' } }),
  ]);
}, 120_000);
afterAll(async () => {
  await Promise.all([sasl?.close(), tls?.close()]);
});

/** Writes `n` records with the sink and reads them back with the source, on one connection. */
async function roundTrip(connection: KafkaConnectionOptions, topic: string, n: number): Promise<number[]> {
  const runtime = createRuntime();
  const sink = await kafkaSink({ connection, topic });
  await sink.write(
    Array.from({ length: n }, (_, i) => ({
      key: `${topic}/${i}`,
      value: { i },
      revision: undefined,
      envelope: undefined,
    })),
  );
  await sink.close();
  const seen: number[] = [];
  const source = kafkaSource<{ i: number }>({ connection, groupId: `${topic}-g`, topics: topic });
  runtime.bus.subscribe(source.ref, { callback: (env) => void seen.push(env.data.i) });
  await source.start(runtime);
  await eventually(() => seen.length >= n, 20_000, `${n} records back`);
  await source.close();
  await runtime.stop();
  return seen.sort((a, b) => a - b);
}

async function failure(run: () => Promise<unknown>): Promise<unknown> {
  return run().then(
    () => new Error('expected a failure'),
    (error: unknown) => error,
  );
}

describe.skipIf(skip !== undefined)('kafka connector authentication on real brokers', () => {
  test('SASL/SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN with good credentials write and read', async () => {
    for (const mechanism of ['SCRAM-SHA-256', 'SCRAM-SHA-512', 'PLAIN'] as const) {
      const connection = {
        brokers: [sasl.bootstrap],
        sasl: { mechanism, username: USER.name, password: USER.password },
      };
      expect(await roundTrip(connection, `sasl-${mechanism.toLowerCase()}`, 5)).toEqual([0, 1, 2, 3, 4]);
    }
  }, 60_000);

  test('a wrong SCRAM password fails the sink and the source with a ConnectorError naming the cause', async () => {
    const connection = {
      brokers: [sasl.bootstrap],
      sasl: { mechanism: 'SCRAM-SHA-256' as const, username: USER.name, password: 'wrong' },
      retries: 0,
    };
    const sinkError = await failure(() => kafkaSink({ connection, topic: 'never' }));
    expect(sinkError).toBeInstanceOf(ConnectorError);
    expect(sinkError).toMatchObject({ code: 'SLUICE_ERR_CONNECTOR', retryable: false });
    expect((sinkError as Error).message).toContain('authentication failed');
    expect((sinkError as Error).message).toContain(sasl.bootstrap);
    expect((sinkError as Error).message).not.toContain('wrong'); // never the password

    const runtime = createRuntime();
    const source = kafkaSource({ connection, groupId: 'never', topics: 'never' });
    const sourceError = await failure(() => source.start(runtime));
    await runtime.stop();
    expect(sourceError).toBeInstanceOf(ConnectorError);
    expect((sourceError as Error).message).toContain('authentication failed');
  }, 60_000);

  test('TLS with the CA that signed the broker works; without it the connection is refused as untrusted', async () => {
    const ca = tls.tls?.ca as string;
    expect(await roundTrip({ brokers: [tls.bootstrap], tls: { ca } }, 'tls-ok', 5)).toEqual([0, 1, 2, 3, 4]);

    const error = await failure(() =>
      kafkaSink({ connection: { brokers: [tls.bootstrap], tls: true, retries: 0 }, topic: 'never' }),
    );
    expect(error).toBeInstanceOf(ConnectorError);
    expect((error as Error).message).toContain('TLS failed');
    expect((error as Error).message).toMatch(/self.signed|certificate/i);
  }, 60_000);

  test('a sink actor on a SCRAM connection commits its batches', async () => {
    const connection = {
      brokers: [sasl.bootstrap],
      sasl: { mechanism: 'SCRAM-SHA-512' as const, username: USER.name, password: USER.password },
    };
    const runtime = createRuntime();
    const sink = await kafkaSink({ connection, topic: 'sasl-actor' });
    const ref = runtime.spawn(sinkActor({ name: 'w', subscribe: 'in', sink, key: (env) => `k/${env.data}` }));
    for (let i = 0; i < 20; i++) await runtime.bus.publish('in', i);
    await runtime.idle();
    expect(ref.counters.acked).toBe(20);
    expect(sink.stats.written).toBe(20);
    await runtime.stop();
    await sink.close();
  }, 30_000);
});
