/**
 * The NATS transport of the bus against a real nats-server: runtimes in one process sharing one
 * server (round trips, queue groups, request/reply, max and requestMany, durable subjects on
 * JetStream, permissions the server enforces). The multi-process cases (a queue group of three
 * worker processes, one killed mid-stream, the server restarted) are in natsTransportWorkers.test.ts.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, headers } from '@nats-io/transport-node';
import {
  actor,
  Bus,
  type Codec,
  createRuntime,
  durable,
  type Envelope,
  NoRespondersError,
  OptionsError,
  PermissionError,
  type Runtime,
  type RuntimeOptions,
  replayDeadLetter,
  StreamError,
  TimeoutError,
  TransportBus,
} from 'sluice';
import { type NatsTransport, type NatsTransportOptions, natsTransport } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { until } from './conformance.ts';

const missing = natsServerMissing('the NATS transport tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

describe('NATS transport options (no server)', () => {
  test('unknown and bad options are refused, naming the option', () => {
    expect(() => natsTransport({ publishConfirm: 'ack' as never })).toThrow(/natsTransport.publishConfirm/);
    expect(() => natsTransport({ maxPending: 0 })).toThrow(/natsTransport.maxPending/);
    expect(() => natsTransport({ codec: 'yaml' as never })).toThrow(/natsTransport.codec/);
    expect(() => natsTransport({ servers: [] })).toThrow(/natsTransport.servers/);
    expect(() => natsTransport({ user: 'a', token: 'b' })).toThrow(OptionsError);
  });

  test('without a transport the runtime makes the plain in-memory Bus; with one, a TransportBus', async () => {
    const plain = createRuntime({ logger: quiet });
    expect(Object.getPrototypeOf(plain.bus)).toBe(Bus.prototype);
    const t = natsTransport({ servers: 'nats://127.0.0.1:1', reconnect: { maxAttempts: 0 }, timeoutMs: 200 });
    const remote = createRuntime({ transport: t, logger: quiet });
    expect(remote.bus).toBeInstanceOf(TransportBus);
    expect(() => createRuntime({ transport: t, bus: new Bus() })).toThrow(/runtime.bus/);
    await t.ready().catch(() => undefined);
    await Promise.all([plain.stop(), remote.stop()]);
    await t.close();
  });

  test('a runtime on a transport takes bus options, not a bus, and has no store streams', async () => {
    const t = natsTransport({ servers: 'nats://127.0.0.1:1', reconnect: { maxAttempts: 0 }, timeoutMs: 200 });
    await expect(t.ready()).rejects.toThrow(/natsTransport.*could not connect/);
    const rt = createRuntime({ transport: t, logger: quiet });
    expect(() => rt.stream('S')).toThrow(StreamError);
    expect(() => rt.stream('S')).toThrow(/streams are the broker's/);
    await t.close();
  });

  test('a stream retention limit that is not a positive integer is refused, naming the stream and the limit', async () => {
    const made: NatsTransport[] = [];
    const bad = (retention: object) => {
      const t = natsTransport({ servers: 'nats://127.0.0.1:1', reconnect: { maxAttempts: 0 }, timeoutMs: 200 });
      made.push(t);
      return () =>
        createRuntime({ transport: t, logger: quiet, streams: [{ name: 'S', subjects: ['s.>'], retention }] });
    };
    expect(bad({ maxMessages: 0 })).toThrow(/stream 'S'.retention.maxMessages.*integer >= 1/);
    expect(bad({ maxAgeMs: 1.5 })).toThrow(/stream 'S'.retention.maxAgeMs.*integer >= 1/);
    expect(bad({ maxBytes: -1 })).toThrow(/stream 'S'.retention.maxBytes.*integer >= 1/);
    for (const t of made) {
      await t.ready().catch(() => undefined);
      await t.close();
    }
  });
});

describe.skipIf(missing !== undefined)('NATS transport', () => {
  let server: NatsServer;

  beforeAll(async () => {
    server = await startNatsServer({ jetstream: true });
  });
  afterAll(async () => {
    await server?.stop();
  });

  async function node(options: NatsTransportOptions = {}, streams?: RuntimeOptions['streams']) {
    const transport = natsTransport({ servers: server.url, ...options });
    const rt = createRuntime({ transport, logger: quiet, shutdownDeadlineMs: 2_000, streams });
    onTestFinished(async () => {
      await rt.stop();
      await transport.close();
    });
    return { rt, transport };
  }

  test('round trip across two runtimes: id, key, event time, headers and trace context travel in NATS headers', async () => {
    const a = await node();
    const b = await node();
    const got: Envelope[] = [];
    a.rt.bus.subscribe('rt.done', { callback: (env) => void got.push(env) });
    b.rt.spawn(
      actor<{ n: number }, { n: number }>({
        name: 'double',
        subscribe: 'rt.in',
        output: 'rt.done',
        handle: (env) => ({ n: env.data.n * 2 }),
      }),
    );
    await Promise.all([a.transport.ready(), b.transport.ready()]);
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const seenByB: Envelope[] = [];
    b.rt.bus.subscribe('rt.in', { callback: (env) => void seenByB.push(env) });
    await b.transport.ready();
    await a.rt.bus.publish(
      'rt.in',
      { n: 21 },
      { id: 'order-1', key: 'k1', eventTime: 1_000, headers: { traceparent } },
    );
    await until(() => got.length === 1 && seenByB.length === 1, 'the reply to come back');
    const sent = seenByB[0] as Envelope;
    expect(sent.key).toBe('k1');
    expect(sent.eventTime).toBe(1_000);
    expect(sent.headers.traceparent).toBe(traceparent);
    expect(sent.id).toBe('order-1');
    expect(sent.attempt).toBe(1);
    expect((got[0] as Envelope).data).toEqual({ n: 42 });
    expect((got[0] as Envelope).key).toBe('k1');
    expect(a.transport.stats.published).toBeGreaterThanOrEqual(1);
  });

  test('processes of one job defining the same streams at once all start, each stream made once', async () => {
    // The server refuses the add that loses such a race as overlapping "an existing stream"
    // (its own): about one round in fifty with four processes, so a hundred rounds meet it most runs.
    for (let round = 0; round < 100; round++) {
      const streams = [
        { name: `RACE${round}A`, subjects: [`race${round}.a`] },
        { name: `RACE${round}B`, subjects: [`race${round}.b`] },
      ];
      const errors: Error[] = [];
      // Connected first, so that the four define their streams in the same moment.
      const transports = [0, 1, 2, 3].map(() =>
        natsTransport({ servers: server.url, onError: (error) => void errors.push(error) }),
      );
      await Promise.all(transports.map((t) => t.ready()));
      const nodes = transports.map((transport) => ({
        transport,
        rt: createRuntime({ transport, logger: quiet, shutdownDeadlineMs: 2_000, streams }),
      }));
      await Promise.all(nodes.map((n) => n.transport.ready()));
      expect(errors.map((e) => e.message)).toEqual([]);
      await Promise.all(
        nodes.map(async (n) => {
          await n.rt.stop();
          await n.transport.close();
        }),
      );
    }
    const check = await connect({ servers: server.url });
    onTestFinished(() => check.close());
    const jsm = await jetstreamManager(check);
    const names: string[] = [];
    for await (const info of jsm.streams.list()) names.push(info.config.name);
    expect(names.filter((n) => n.startsWith('RACE')).length).toBe(200);
  });

  test("a plain client's JSON reaches an actor, and a plain client reads what Sluice publishes", async () => {
    const a = await node({ codec: 'json' });
    const got: unknown[] = [];
    a.rt.bus.subscribe('plain.in', { callback: (env) => void got.push(env.data) });
    await a.transport.ready();
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    nc.publish('plain.in', JSON.stringify({ hello: 'world' }));
    await until(() => got.length === 1, 'the plain message');
    expect(got[0]).toEqual({ hello: 'world' });
    const sub = nc.subscribe('plain.out', { max: 1 });
    await nc.flush();
    await a.rt.bus.publish('plain.out', { v: 1 });
    for await (const m of sub) {
      expect(m.json()).toEqual({ v: 1 });
      expect(m.headers?.get('Content-Type')).toBe('application/json');
    }
  });

  test("a dead letter of a message from another process does not keep its Content-Type: a replay decodes with the replay subject's codec", async () => {
    // A codec of the application's, which writes no Content-Type: its bytes are not MessagePack.
    const shouting: Codec = {
      name: 'shouting',
      encode: (value) => new TextEncoder().encode(`!${JSON.stringify(value)}`),
      decode: (bytes) => JSON.parse(new TextDecoder().decode(bytes).slice(1)),
    };
    const a = await node({ codec: 'json' });
    const b = await node({ codecs: { 'ctdl.orders': shouting } });
    const handled: unknown[] = [];
    let failed = false;
    b.rt.spawn(
      actor<{ n: number }, void>({
        name: 'ctdl-billing',
        subscribe: 'ctdl.orders',
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (!failed) {
            failed = true;
            throw new Error('not now');
          }
          handled.push(env.data);
        },
      }),
    );
    const letters: Envelope[] = [];
    b.rt.bus.subscribe('$DLQ.ctdl-billing', { callback: (env) => void letters.push(env) });
    await b.transport.ready();
    // JSON from the other process, with its Content-Type; the dead letter goes out in MessagePack.
    await a.rt.bus.publish('ctdl.orders', { n: 1 });
    await until(() => letters.length === 1, 'the dead letter');
    const letter = letters[0] as Envelope;
    expect(Object.keys(letter.headers).filter((h) => h.toLowerCase() === 'content-type')).toEqual([]);
    await replayDeadLetter(b.rt.bus, letter);
    await until(() => handled.length === 1 || b.transport.stats.dropped > 0, 'the replay to be handled or dropped');
    expect(b.transport.stats.dropped).toBe(0);
    expect(handled).toEqual([{ n: 1 }]);
  });

  test('a Content-Type that names a codec chooses it and is dropped; one that names none stays a header', async () => {
    const a = await node({ codec: 'json' });
    const got: Envelope[] = [];
    a.rt.bus.subscribe('ctkeep.in', { callback: (env) => void got.push(env) });
    await a.transport.ready();
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    const known = headers();
    known.set('Content-Type', 'text/plain; charset=utf-8');
    nc.publish('ctkeep.in', 'hello', { headers: known });
    const unknown = headers();
    unknown.set('Content-Type', 'application/x-orders');
    nc.publish('ctkeep.in', JSON.stringify({ n: 2 }), { headers: unknown });
    await until(() => got.length === 2, 'both messages');
    expect(got.map((env) => env.data)).toEqual(['hello', { n: 2 }]);
    expect(got.map((env) => env.headers['Content-Type'])).toEqual([undefined, 'application/x-orders']);
  });

  test('a queue group spans runtimes: each message goes to one member', async () => {
    const nodes = [await node(), await node(), await node()];
    const counts = [0, 0, 0];
    nodes.forEach((n, i) => {
      n.rt.spawn(
        actor<number, void>({
          name: 'worker',
          subscribe: 'qg.jobs',
          queue: 'workers',
          handle: () => {
            counts[i] = (counts[i] as number) + 1;
          },
        }),
      );
    });
    await Promise.all(nodes.map((n) => n.transport.ready()));
    const pub = await node();
    for (let i = 0; i < 300; i++) await pub.rt.bus.publish('qg.jobs', i);
    await until(() => counts.reduce((x, y) => x + y) === 300, 'every job handled once');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(counts.reduce((x, y) => x + y)).toBe(300);
    for (const c of counts) expect(c).toBeGreaterThan(30);
  });

  test('request/reply over NATS inboxes; no responders and timeouts map to Sluice errors', async () => {
    const a = await node();
    const b = await node();
    b.rt.bus.subscribe<number>('svc.square', {
      callback: (env) => b.rt.bus.respond(env, env.data * env.data),
    });
    await b.transport.ready();
    const reply = await a.rt.bus.request<number, number>('svc.square', 12);
    expect(reply.data).toBe(144);
    await expect(a.rt.bus.request('svc.nobody', 1)).rejects.toBeInstanceOf(NoRespondersError);
    b.rt.bus.subscribe('svc.silent', { callback: () => undefined });
    await b.transport.ready();
    await expect(a.rt.bus.request('svc.silent', 1, { timeoutMs: 200 })).rejects.toBeInstanceOf(TimeoutError);
  });

  test('max: a subscription takes N messages over NATS, then unsubscribes', async () => {
    const a = await node();
    const got: number[] = [];
    const sub = a.rt.bus.subscribe<number>('max.ticks', { max: 3, callback: (env) => void got.push(env.data) });
    await a.transport.ready();
    const b = await node();
    for (let i = 0; i < 8; i++) await b.rt.bus.publish('max.ticks', i);
    await sub.closed;
    await b.transport.ready();
    expect(got).toEqual([0, 1, 2]);
  });

  test('requestMany: scatter-gather over NATS until a count, a time or a sentinel', async () => {
    const a = await node();
    const responders = [await node(), await node(), await node()];
    responders.forEach((r, i) => {
      r.rt.bus.subscribe<string>('census.who', {
        callback: async (env) => {
          await r.rt.bus.respond(env, `r${i}`);
          if (env.data === 'pages') await r.rt.bus.respond(env, '');
        },
      });
    });
    await Promise.all(responders.map((r) => r.transport.ready()));
    const two = await a.rt.bus.requestMany<string, string>('census.who', 'count', { maxReplies: 2 });
    expect(two).toHaveLength(2);
    const all = await a.rt.bus.requestMany<string, string>('census.who', 'time', { timeoutMs: 300 });
    expect(all.map((r) => r.data).sort()).toEqual(['r0', 'r1', 'r2']);
    const untilEnd = await a.rt.bus.requestMany<string, string>('census.who', 'pages', {
      sentinel: (r) => r.data === '',
      timeoutMs: 2_000,
    });
    expect(untilEnd.length).toBeGreaterThanOrEqual(1);
    expect(untilEnd.every((r) => r.data !== '')).toBe(true);
    await expect(a.rt.bus.requestMany('census.nobody', 1, { timeoutMs: 500 })).rejects.toBeInstanceOf(
      NoRespondersError,
    );
  });

  test('durable subjects are JetStream streams: publishes are acknowledged, a durable consumer acks by settlement', async () => {
    const streams = [{ name: 'TORDERS', subjects: ['torders.>'] }];
    const producer = await node({}, streams);
    const consumer = await node({}, streams);
    const handled: number[] = [];
    let failOnce = true;
    consumer.rt.spawn(
      actor<number, void>({
        name: 'billing',
        subscribe: durable('TORDERS', { consumer: 'billing', filter: 'torders.new', backoff: [50] }),
        handle: (env) => {
          if (env.data === 3 && failOnce) {
            failOnce = false;
            throw new Error('transient');
          }
          handled.push(env.data);
        },
      }),
    );
    await producer.transport.ready();
    for (let i = 0; i < 10; i++) await producer.rt.bus.publish('torders.new', i);
    expect(() => producer.rt.bus.tryPublish('torders.new', 99)).toThrow(StreamError);
    await until(() => handled.length === 10, 'every order billed', 15_000);
    expect([...handled].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    const jsm = await jetstreamManager(nc);
    await until(async () => (await jsm.consumers.info('TORDERS', 'billing')).num_ack_pending === 0, 'all acked');
    const info = await jsm.consumers.info('TORDERS', 'billing');
    expect(info.num_pending).toBe(0);
    expect((await jsm.streams.info('TORDERS')).state.messages).toBe(10);
  });

  test('defining a stream again converges it: a limit no longer given goes back to the server default, a setting made elsewhere stays', async () => {
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    const jsm = await jetstreamManager(nc);
    const limited = await node({}, [
      { name: 'TCONVERGE', subjects: ['tconverge.>'], retention: { maxMessages: 5, maxAgeMs: 60_000 } },
    ]);
    await limited.transport.ready();
    const before = (await jsm.streams.info('TCONVERGE')).config;
    expect([before.max_msgs, before.max_age]).toEqual([5, 60_000_000_000]);
    // A setting made elsewhere, which the configuration does not give either.
    await jsm.streams.update('TCONVERGE', { max_msgs_per_subject: 3 });
    const plain = await node({}, [{ name: 'TCONVERGE', subjects: ['tconverge.>', 'tconverge2.>'] }]);
    await plain.transport.ready();
    const after = (await jsm.streams.info('TCONVERGE')).config;
    expect(after.subjects).toEqual(['tconverge.>', 'tconverge2.>']);
    expect([after.max_msgs, after.max_age, after.max_bytes]).toEqual([-1, 0, -1]);
    // Not the configuration's to say: the stream owner's setting is kept.
    expect(after.max_msgs_per_subject).toBe(3);
  });

  test('a JetStream publish retried with the same idempotency key is stored once', async () => {
    const streams = [{ name: 'TDEDUP', subjects: ['tdedup.>'] }];
    const a = await node({}, streams);
    await a.transport.ready();
    const h = { 'sluice-idempotency-key': 'order-1/0' };
    await a.rt.bus.publish('tdedup.x', 1, { headers: h });
    await a.rt.bus.publish('tdedup.x', 1, { headers: h });
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    const jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info('TDEDUP')).state.messages).toBe(1);
  });

  test('undecodable and header-less messages: a bad payload is dropped and counted, not fatal', async () => {
    const a = await node({ codec: 'json' });
    const got: unknown[] = [];
    a.rt.bus.subscribe('bad.in', { callback: (env) => void got.push(env.data) });
    await a.transport.ready();
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    const h = headers();
    h.set('Content-Type', 'application/json');
    nc.publish('bad.in', '{not json', { headers: h });
    nc.publish('bad.in', JSON.stringify('ok'));
    await until(() => got.length === 1, 'the good message');
    expect(a.transport.stats.dropped).toBe(1);
  });
});

describe.skipIf(missing !== undefined)('NATS transport permissions', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer({
      config: `authorization {
  users = [
    { user: "app", password: "app-secret", permissions: {
        publish: { allow: ["app.>", "_INBOX.>"] },
        subscribe: { allow: ["app.>", "_INBOX.>"] } } }
  ]
}
`,
    });
  });
  afterAll(async () => {
    await server?.stop();
  });

  function appNode(): { rt: Runtime; transport: NatsTransport; errors: Error[] } {
    const errors: Error[] = [];
    const transport = natsTransport({
      servers: server.url,
      user: 'app',
      pass: 'app-secret',
      onError: (e) => void errors.push(e),
    });
    const rt = createRuntime({ transport, logger: quiet, shutdownDeadlineMs: 1_000 });
    onTestFinished(async () => {
      await rt.stop();
      await transport.close();
    });
    return { rt, transport, errors };
  }

  test("a publish the server's permissions deny rejects with a PermissionError; allowed ones pass", async () => {
    const { rt, transport } = appNode();
    await transport.ready();
    await expect(rt.bus.publish('app.ok', 1)).resolves.toBeUndefined();
    const error = await rt.bus.publish('secret.x', 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermissionError);
    expect((error as PermissionError).message).toMatch(/'app' may not publish to 'secret.x'.*NATS server denied/);
    expect(transport.stats.denied).toBe(1);
  });

  test('a subscription the server denies surfaces as a PermissionError through onError', async () => {
    const { rt, transport, errors } = appNode();
    rt.bus.subscribe('secret.>', { callback: () => undefined });
    await transport.ready();
    await until(() => errors.length > 0, 'the denial');
    expect(errors[0]).toBeInstanceOf(PermissionError);
    expect((errors[0] as PermissionError).operation).toBe('subscribe');
  });

  test('a request to a denied subject rejects with a PermissionError; in-process permissions still apply', async () => {
    const { rt, transport } = appNode();
    await transport.ready();
    await expect(rt.bus.request('secret.svc', 1, { timeoutMs: 1_000 })).rejects.toBeInstanceOf(PermissionError);
    const client = rt.bus.client('narrow', { publish: { allow: ['app.orders'] } });
    await expect(client.publish('app.other', 1)).rejects.toThrow(/'narrow' may not publish to 'app.other'/);
    await expect(client.publish('app.orders', 1)).resolves.toBeUndefined();
  });

  test('a restricted responder may answer a request that came over NATS, once it was received', async () => {
    const a = appNode();
    const b = appNode();
    const responder = b.rt.bus.client('svc', { publish: { allow: ['app.none'] }, subscribe: { allow: ['app.>'] } });
    responder.subscribe<number>('app.echo', { callback: (env) => responder.respond(env, env.data) });
    await b.transport.ready();
    const reply = await a.rt.bus.request<number, number>('app.echo', 5);
    expect(reply.data).toBe(5);
  });
});
