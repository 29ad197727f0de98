/**
 * Connector sources in the runtime's status, against the real servers: a source whose server
 * restarts (NATS) or drops its connections (Redis, RabbitMQ) shows `reconnecting`, then
 * `connected` again with the reconnect counted; a paused consumer shows as messages behind, in
 * `runtime.status()` and in the admin API.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { Redis } from 'ioredis';
import { actor, createRuntime, type Runtime, type SourceConnection, type SourceStatus } from 'sluice';
import { natsSource } from 'sluice/connectors/nats';
import { rabbitSource } from 'sluice/connectors/rabbitmq';
import { redisSource } from 'sluice/connectors/redis';
import { describe, expect, onTestFinished, test } from 'vitest';
import { natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { createTestVhost, rabbitMissing } from '../services/rabbitmq.ts';
import { keyPrefix, REDIS, redisClient, redisMissing } from '../services/redis.ts';
import { until } from './conformance.ts';

const TOKEN = 'source-health-token-0123456789';
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const natsMissing = natsServerMissing('the source health tests on NATS');
const noRedis = await redisMissing('the source health tests on Redis');
const noRabbit = await rabbitMissing('the source health tests on RabbitMQ');

function runtime(): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

function closing<S extends { close(): Promise<void> }>(s: S): S {
  onTestFinished(() => s.close());
  return s;
}

function statusOf(rt: Runtime, name: string): SourceStatus {
  const s = rt.status().sources.find((src) => src.name === name);
  if (s === undefined) throw new Error(`no source '${name}' in the status`);
  return s;
}

/**
 * The connection states a source goes through while `disturb` runs and until it is connected
 * again, polled every few milliseconds (a state change is a field write, with no event to await).
 */
async function statesDuring(rt: Runtime, name: string, disturb: () => Promise<void>): Promise<SourceConnection[]> {
  const seen: SourceConnection[] = [statusOf(rt, name).connection];
  const poll = setInterval(() => {
    const c = statusOf(rt, name).connection;
    if (seen.at(-1) !== c) seen.push(c);
  }, 2);
  try {
    await disturb();
    await until(
      () => seen.includes('reconnecting') && statusOf(rt, name).connection === 'connected',
      'a reconnect',
      20_000,
    );
    const c = statusOf(rt, name).connection;
    if (seen.at(-1) !== c) seen.push(c);
  } finally {
    clearInterval(poll);
  }
  return seen;
}

/** Calls the admin API of `rt`, served for the test; its JSON answer. */
async function admin(rt: Runtime, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  const server = await served(rt);
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.json();
}

const servers = new WeakMap<Runtime, Promise<{ url: string }>>();
function served(rt: Runtime): Promise<{ url: string }> {
  let s = servers.get(rt);
  if (s === undefined) {
    s = rt.serve({ port: 0, token: TOKEN }).then((server) => {
      onTestFinished(() => server.close());
      return server;
    });
    servers.set(rt, s);
  }
  return s;
}

/** An actor on `subject` that counts what it handles. */
function counter(rt: Runtime, name: string, subject: string): { readonly handled: number } {
  const state = { handled: 0 };
  rt.spawn(
    actor({
      name,
      subscribe: subject,
      mailbox: { capacity: 4 },
      handle: () => {
        state.handled++;
      },
    }),
  );
  return state;
}

describe.skipIf(natsMissing !== undefined)('NATS source health', () => {
  test('a paused consumer shows as lag in the status and the admin API; a server restart shows reconnecting, then connected', async () => {
    const server = await startNatsServer({ jetstream: true });
    onTestFinished(() => server.stop());
    const plain = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    onTestFinished(() => plain.close());
    await (await jetstreamManager(plain)).streams.add({ name: 'H', subjects: ['h.>'] });
    const js = jetstream(plain);

    const rt = runtime();
    const count = counter(rt, 'count', 'h.bus');
    const source = closing(
      natsSource({
        connection: { servers: server.url, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } },
        jetstream: { stream: 'H', consumer: 'c', fetchExpiresMs: 1_000 },
        subject: 'h.bus',
        lagRefreshMs: 50,
      }),
    );
    await source.start(rt, { logger: quiet });
    expect(statusOf(rt, source.name)).toMatchObject({ kind: 'nats', connection: 'connected', reconnects: 0 });

    await admin(rt, 'POST', '/api/actors/pause', { actor: 'count' });
    for (let i = 0; i < 50; i++) await js.publish('h.in', new TextEncoder().encode(String(i)));
    // Paused: the mailbox (4) and one waiting publish at most; the rest is behind, on the server.
    await until(() => statusOf(rt, source.name).lag.messages === 50, 'fifty messages behind');
    const listed = (await admin(rt, 'GET', '/api/sources')) as SourceStatus[];
    expect(listed.find((s) => s.name === source.name)?.lag).toMatchObject({ messages: 50 });
    expect(statusOf(rt, source.name).lag.timeMs).toBeGreaterThan(0);
    await admin(rt, 'POST', '/api/actors/resume', { actor: 'count' });
    await until(() => count.handled === 50 && statusOf(rt, source.name).lag.messages === 0, 'caught up');

    const states = await statesDuring(rt, source.name, () => server.restart('SIGKILL'));
    expect(states).toEqual(['connected', 'reconnecting', 'connected']);
    const after = statusOf(rt, source.name);
    expect(after.reconnects).toBe(1);
    expect(after.lastError?.message).toMatch(/disconnected/);
    // It delivers again after the restart.
    // The plain client reconnects too; a publish that times out meanwhile is sent again (with its id).
    await until(
      () =>
        js.publish('h.in', new TextEncoder().encode('50'), { msgID: 'after', timeout: 1_000 }).then(
          () => true,
          () => false,
        ),
      'a publish after the restart',
      20_000,
    );
    // At least: an ack the killed server never got is delivered again.
    await until(() => count.handled >= 51, 'a message after the restart', 15_000);
    await source.close();
    expect(statusOf(rt, source.name).connection).toBe('closed');
  }, 60_000);
});

describe.skipIf(noRedis !== undefined)('Redis source health', () => {
  test('connections killed by the server: reconnecting, then connected; a paused consumer shows as lag', async () => {
    const keys = keyPrefix();
    const redis: Redis = redisClient();
    onTestFinished(async () => {
      await keys.cleanup(redis);
      redis.disconnect();
    });
    const stream = `${keys.prefix}health`;
    const rt = runtime();
    const count = counter(rt, 'count', 'rh.in');
    // A name of their own: other tests' connections on this server are left alone.
    const connectionName = `${keys.prefix.replace(/:/g, '-')}health`;
    const source = closing(
      redisSource({
        connection: { ...REDIS, client: { connectionName } },
        stream,
        group: 'g',
        subject: 'rh.in',
        blockMs: 100,
        lagRefreshMs: 50,
      }),
    );
    await source.start(rt, { logger: quiet });
    expect(statusOf(rt, source.name)).toMatchObject({ kind: 'redis', connection: 'connected' });
    await admin(rt, 'POST', '/api/actors/pause', { actor: 'count' });
    for (let i = 0; i < 40; i++) await redis.xadd(stream, '*', 'data', String(i));
    await until(() => statusOf(rt, source.name).lag.messages === 40, 'forty entries behind');
    await admin(rt, 'POST', '/api/actors/resume', { actor: 'count' });
    await until(() => count.handled === 40 && statusOf(rt, source.name).lag.messages === 0, 'caught up');

    const states = await statesDuring(rt, source.name, async () => {
      const clients = String(await redis.call('CLIENT', 'LIST'))
        .split('\n')
        .filter((line) => line.includes(` name=${connectionName} `));
      expect(clients).toHaveLength(2);
      for (const line of clients)
        await redis.call('CLIENT', 'KILL', 'ID', (/id=(\d+)/.exec(line) as string[])[1] as string);
    });
    expect(states).toEqual(['connected', 'reconnecting', 'connected']);
    expect(statusOf(rt, source.name).reconnects).toBe(1);
    await redis.xadd(stream, '*', 'data', '"after"');
    await until(() => count.handled === 41, 'an entry after the reconnect', 15_000);
  }, 30_000);
});

describe.skipIf(noRabbit !== undefined)('RabbitMQ source health', () => {
  test('connections dropped by the server: reconnecting, then connected; a paused consumer shows as lag', async () => {
    const vhost = await createTestVhost();
    onTestFinished(() => vhost.remove());
    const q = `${vhost.prefix}health`;
    const rt = runtime();
    const count = counter(rt, 'count', 'qh.in');
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'qh.in',
        connection: { ...vhost.connection, reconnect: { initialDelayMs: 50 } },
        declare: {},
        lagRefreshMs: 50,
      }),
    );
    await source.start(rt, { logger: quiet });
    expect(statusOf(rt, source.name)).toMatchObject({ kind: 'rabbitmq', connection: 'connected' });
    const send = async (values: readonly string[]) => {
      const model = await vhost.open();
      const channel = await model.createConfirmChannel();
      for (const v of values) channel.sendToQueue(q, Buffer.from(JSON.stringify(v)), { persistent: true });
      await channel.waitForConfirms();
      await model.close();
    };
    await admin(rt, 'POST', '/api/actors/pause', { actor: 'count' });
    await send(Array.from({ length: 30 }, (_, i) => `m${i}`));
    await until(() => statusOf(rt, source.name).lag.messages === 30, 'thirty messages behind');
    await admin(rt, 'POST', '/api/actors/resume', { actor: 'count' });
    await until(() => count.handled === 30 && statusOf(rt, source.name).lag.messages === 0, 'caught up');

    const states = await statesDuring(rt, source.name, () => vhost.dropConnections());
    expect(states).toEqual(['connected', 'reconnecting', 'connected']);
    expect(statusOf(rt, source.name)).toMatchObject({ reconnects: 1 });
    expect(statusOf(rt, source.name).lastError?.message).toMatch(/closed/);
    await send(['after']);
    await until(() => count.handled === 31, 'a message after the reconnect', 15_000);
  }, 60_000);
});
