/**
 * The NATS connector against a real nats-server: interoperability with plain clients, codecs,
 * settlement (dead letters and term, in-progress for long work), sink errors and committed keys past
 * the duplicate window, server restarts mid-stream, authentication and TLS, lag in telemetry.
 * The conformance cases are in natsConformance.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { createUser } from '@nats-io/nkeys';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { type Attributes, type Meter, metrics } from '@opentelemetry/api';
import { pack, unpack } from 'msgpackr';
import {
  actor,
  ConnectorError,
  createRuntime,
  DEAD_LETTER_HEADERS,
  type Envelope,
  IDEMPOTENCY_KEY_HEADER,
  MemoryStore,
  OptionsError,
  type Runtime,
  sinkActor,
  VirtualClock,
} from 'sluice';
import { clientOptions, natsSink, natsSource } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { freePort, type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { until } from './conformance.ts';

type Observe = (result: { observe(value: number, attributes?: Attributes): void }) => void;
// A meter that keeps the callbacks of observable gauges, so the lag test can collect them by hand.
const gauges = new Map<string, Observe>();
const meter = {
  createObservableCounter: () => ({ addCallback() {} }),
  createObservableGauge: (name: string) => ({ addCallback: (cb: Observe) => void gauges.set(name, cb) }),
  createHistogram: () => ({ record() {} }),
} as unknown as Meter;
function collect(name: string): [number, Attributes | undefined][] {
  const seen: [number, Attributes | undefined][] = [];
  gauges.get(name)?.({ observe: (value, attributes) => void seen.push([value, attributes]) });
  return seen;
}

const missing = natsServerMissing('the NATS connector tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const encoder = new TextEncoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function runtime(): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

describe('NATS connector options (no server)', () => {
  test('a source needs exactly one of subjects and jetstream, naming the option', () => {
    const err = (() => {
      try {
        natsSource({ subjects: 'a', jetstream: { stream: 'S', consumer: 'c' } });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(OptionsError);
    expect((err as OptionsError).message).toContain("'natsSource.subjects'");
  });

  test('two ways to authenticate at once are refused, naming both', () => {
    expect(() => clientOptions({ user: 'a', pass: 'b', token: 't' }, 'c')).toThrow(/'c.token'.*'user' and 'token'/);
    expect(() => clientOptions({ servers: [] }, 'c')).toThrow(OptionsError);
    expect(() => natsSource({ subjects: 'a', codec: 'yaml' as never })).toThrow(/natsSource.codec/);
    expect(() => natsSource({ jetstream: { stream: 'S', consumer: 'c', deliver: 'last' as never } })).toThrow(
      /natsSource.jetstream.deliver/,
    );
  });

  test('source.ref needs one bus subject: several NATS subjects without `subject` name the option', () => {
    const many = natsSource({ subjects: ['a.x', 'b.y'] });
    expect(() => many.ref).toThrow(/'natsSource.subject'/);
    expect(natsSource({ subjects: ['a.x', 'b.y'], subject: 'ab' }).ref.name).toBe('ab');
    expect(() => natsSource({ jetstream: { stream: 'S', consumer: 'c' } }).ref).toThrow(OptionsError);
  });

  test('an actor on a JetStream source is at-least-once; on core subjects it cannot be', () => {
    const js = natsSource({ jetstream: { stream: 'ORDERS', consumer: 'c' }, subject: 'orders.in' });
    expect(() =>
      actor({ name: 'a', subscribe: js.ref, delivery: 'at-least-once', handle: () => undefined }),
    ).not.toThrow();
    const core = natsSource({ subjects: 'orders.live' });
    expect(() => actor({ name: 'b', subscribe: core.ref, delivery: 'at-least-once', handle: () => undefined })).toThrow(
      /'orders.live' is a plain subject/,
    );
  });
});

describe.skipIf(missing !== undefined)('NATS connector', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let n = 0;
  const stream = async (options: { duplicateWindowMs?: number } = {}) => {
    const name = `S${++n}`;
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({
      name,
      subjects: [`s${n}.>`],
      ...(options.duplicateWindowMs === undefined ? {} : { duplicate_window: options.duplicateWindowMs * 1_000_000 }),
    });
    return { name, prefix: `s${n}`, jsm, js: jetstream(nc) };
  };

  beforeAll(async () => {
    metrics.setGlobalMeterProvider({ getMeter: () => meter });
    server = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: server.url });
  });
  afterAll(async () => {
    metrics.disable();
    await nc?.close();
    await server?.stop();
  });

  test('interop: JSON, raw bytes, text and msgpack from a plain client reach actors, by content type or subject', async () => {
    const rt = runtime();
    const got: Envelope[] = [];
    rt.bus.subscribe('in.>', { callback: (env) => void got.push(env) });
    const source = natsSource({
      connection: { servers: server.url },
      subjects: 'plain.>',
      subject: (s) => s.replace(/^plain\./, 'in.'),
      codecs: { 'plain.bytes': 'raw', 'plain.text': 'text' },
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    const h = headers();
    h.set('Content-Type', 'application/msgpack');
    h.set('sluice-key', 'k1');
    nc.publish('plain.json', json({ a: 1 }));
    nc.publish('plain.bytes', new Uint8Array([0, 255, 1]));
    nc.publish('plain.text', 'hello');
    nc.publish('plain.packed', pack({ b: 2 }), { headers: h });
    await nc.flush();
    await until(() => got.length === 4, 'four messages');
    const bySubject = new Map(got.map((e) => [e.subject, e]));
    expect(bySubject.get('in.json')?.data).toEqual({ a: 1 });
    expect(bySubject.get('in.bytes')?.data).toEqual(new Uint8Array([0, 255, 1]));
    expect(bySubject.get('in.text')?.data).toBe('hello');
    expect(bySubject.get('in.packed')?.data).toEqual({ b: 2 });
    expect(bySubject.get('in.packed')?.key).toBe('k1');
  });

  test("interop: Sluice's output is plain JSON (or msgpack) a plain client reads, with its key headers", async () => {
    const s = await stream();
    const sink = await natsSink({ connection: { servers: server.url }, jetstream: true, subject: `${s.prefix}.out` });
    const packed = await natsSink({
      connection: { servers: server.url },
      subject: 'packed.out',
      codec: 'msgpack',
      headers: true,
    });
    onTestFinished(() => Promise.all([sink.close(), packed.close()]).then(() => undefined));
    const seen: { data: unknown; type: string | undefined }[] = [];
    const sub = nc.subscribe('packed.out', {
      callback: (_, m) => void seen.push({ data: unpack(m.data), type: m.headers?.get('Content-Type') }),
    });
    onTestFinished(() => sub.unsubscribe());
    await nc.flush();
    await sink.write([{ key: 'order/1', value: { total: 12.5 }, revision: 2, envelope: undefined }]);
    await packed.write([{ key: 'p', value: { x: [1, 2] }, revision: undefined, envelope: undefined }]);
    const m = await s.jsm.streams.getMessage(s.name, { seq: 1 });
    expect(m?.json()).toEqual({ total: 12.5 });
    expect(m?.header.get('Nats-Msg-Id')).toBe('order/1#2');
    expect(m?.header.get(IDEMPOTENCY_KEY_HEADER)).toBe('order/1');
    expect(m?.header.get('Content-Type')).toBe('application/json');
    await until(() => seen.length === 1, 'the msgpack message');
    expect(seen[0]).toEqual({ data: { x: [1, 2] }, type: 'application/msgpack' });
  });

  /** A started JetStream source on a new stream; what reaches `pattern` and its dead letters are kept. */
  const deadLettering = async (pattern: string, subject: string | ((natsSubject: string) => string)) => {
    const s = await stream();
    const rt = runtime();
    const good: unknown[] = [];
    const dead: Envelope[] = [];
    rt.bus.subscribe(pattern, { callback: (env) => void good.push(env.data) });
    rt.bus.subscribe('$DLQ.nats.>', { callback: (env) => void dead.push(env) });
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c', ackWaitMs: 1_000 },
      subject,
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    return { s, good, dead, source };
  };

  test('a payload that does not decode is dead-lettered by the source and termed, never redelivered', async () => {
    const { s, good, dead, source } = await deadLettering('dq.in', 'dq.in');
    await s.js.publish(`${s.prefix}.a`, encoder.encode('{not json'));
    await s.js.publish(`${s.prefix}.a`, json(2));
    await until(() => good.length === 1 && dead.length === 1, 'one good, one dead letter');
    expect(dead[0]?.subject).toBe(`$DLQ.nats.${s.name}.c`);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_DECODE');
    expect(dead[0]?.headers['sluice-stream-sequence']).toBe('1');
    expect(new TextDecoder().decode(dead[0]?.data as Uint8Array)).toBe('{not json');
    await sleep(1_500); // past the ack wait: a termed message is not delivered again
    expect(dead).toHaveLength(1);
    expect(source.stats.terminated).toBe(1);
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.num_ack_pending + info.num_pending).toBe(0);
  });

  test('a message its subject function refuses is dead-lettered with the error and termed, not redelivered for good', async () => {
    const { s, good, dead, source } = await deadLettering('sf.>', (natsSubject) => {
      if (natsSubject.endsWith('.unrouted')) throw new Error(`no route for '${natsSubject}'`);
      return 'sf.in';
    });
    await s.js.publish(`${s.prefix}.unrouted`, json(1));
    await s.js.publish(`${s.prefix}.a`, json(2));
    await until(() => good.length === 1 && dead.length === 1, 'one good message, one dead letter', 5_000);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain(`no route for '${s.prefix}.unrouted'`);
    expect(dead[0]?.headers['sluice-stream-sequence']).toBe('1');
    expect(source.stats.terminated).toBe(1);
    // The ack and the term are not waited for: the server has them a moment later.
    await until(
      async () => (await s.jsm.consumers.info(s.name, 'c')).num_ack_pending === 0,
      'the ack and the term on the server',
    );
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.num_pending + info.num_redelivered).toBe(0);
  });

  test('a message failing on its last delivery is dead-lettered and termed; one failing before is nak-ed and retried', async () => {
    const s = await stream();
    const rt = runtime();
    let deliveries = 0;
    const dead: Envelope[] = [];
    rt.bus.subscribe('md.in', {
      callback: () => {
        deliveries++;
        throw new Error('always');
      },
      onError: () => undefined,
    });
    rt.bus.subscribe('$DLQ.nats.>', { callback: (env) => void dead.push(env) });
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c', maxDeliver: 3, backoffMs: [20] },
      subject: 'md.in',
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    await s.js.publish(`${s.prefix}.a`, json('poison'));
    await until(() => dead.length === 1, 'the dead letter');
    expect(deliveries).toBe(3);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain('always');
    expect(source.stats).toMatchObject({ nacked: 2, terminated: 1, acked: 0 });
  });

  test('acks sent a turn later still go out: what settled before a close is acked, not delivered again', async () => {
    const s = await stream();
    const rt = runtime();
    for (let i = 0; i < 20; i++) await s.js.publish(`${s.prefix}.a`, json({ i }));
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c' },
      subject: 'ac.in',
    });
    onTestFinished(() => source.close());
    let seen = 0;
    let closing: Promise<void> | undefined;
    rt.bus.subscribe('ac.in', {
      // The last one closes the source from its handler: it is still held, and given back.
      callback: () => {
        if (++seen === 20) closing = source.close();
      },
    });
    await source.start(rt);
    await until(() => closing !== undefined, 'all 20 delivered');
    await closing;
    expect(source.stats.acked).toBe(19);
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.ack_floor.stream_seq).toBe(19);
  });

  test('a close while the source starts leaves no connection open and nothing pulling', async () => {
    const monitor = await freePort();
    const own = await startNatsServer({ jetstream: true, args: ['-m', String(monitor)] });
    onTestFinished(() => own.stop());
    const admin = await connect({ servers: own.url });
    onTestFinished(() => admin.close());
    await (await jetstreamManager(admin)).streams.add({ name: 'CS', subjects: ['cs.>'] });
    await jetstream(admin).publish('cs.a', json(1));
    const rt = runtime();
    const got: unknown[] = [];
    rt.bus.subscribe('cs.in', { callback: (env) => void got.push(env.data) });
    const open = async () => {
      const res = await fetch(`http://127.0.0.1:${monitor}/connz`);
      const body = (await res.json()) as { connections?: { name?: string }[] };
      return (body.connections ?? []).filter((c) => c.name === 'closed-while-starting').length;
    };
    for (const options of [
      { jetstream: { stream: 'CS', consumer: 'c' }, subject: 'cs.in' },
      { subjects: 'cs.core', subject: 'cs.in' },
    ]) {
      const source = natsSource({ connection: { servers: own.url, name: 'closed-while-starting' }, ...options });
      const started = source.start(rt);
      await source.close();
      await started;
      // The server drops a connection as soon as its client closes it; one left open stays.
      await until(async () => (await open()) === 0, 'no connection of the closed source', 2_000);
    }
    expect(got).toEqual([]);
    expect(rt.status().sources.filter((s) => s.connection === 'connected')).toEqual([]);
  });

  test('deliveries that never failed (a process that died holding the message) do not use up maxDeliver', async () => {
    const s = await stream();
    const rt = runtime();
    const options = { stream: s.name, consumer: 'c', maxDeliver: 2 };
    // Started with nobody subscribed, the source makes its consumer and fetches nothing.
    const first = natsSource({ connection: { servers: server.url }, jetstream: options, subject: 'crash.in' });
    await first.start(rt);
    await first.close();
    expect((await s.jsm.consumers.info(s.name, 'c')).config.max_deliver).toBe(-1);
    await s.js.publish(`${s.prefix}.a`, json('survivor'));
    // Three deliveries to processes that never settled it, as kills mid-flight would leave them.
    const raw = await jetstream(nc).consumers.get(s.name, 'c');
    for (let i = 1; i <= 3; i++) {
      const m = await raw.next({ expires: 2_000 });
      expect(m?.info.deliveryCount).toBe(i);
      m?.nak();
    }
    const got: Envelope[] = [];
    rt.bus.subscribe('crash.in', { callback: (env) => void got.push(env) });
    const again = natsSource({ connection: { servers: server.url }, jetstream: options, subject: 'crash.in' });
    onTestFinished(() => again.close());
    await again.start(rt);
    await until(() => got.length === 1, 'the message, delivered a fourth time');
    expect(got[0]?.data).toBe('survivor');
    expect(got[0]?.attempt).toBe(4);
    await until(() => again.stats.acked === 1, 'its ack');
  });

  test('long work: messages held past the ack wait are kept in progress, not delivered again', async () => {
    const s = await stream();
    const rt = runtime();
    const seen: unknown[] = [];
    rt.spawn(
      actor<number, never>({
        name: 'slow',
        subscribe: 'lw.in',
        handle: async (env) => {
          seen.push(env.data);
          await sleep(2_600);
        },
      }),
    );
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c', ackWaitMs: 1_000 },
      subject: 'lw.in',
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    await s.js.publish(`${s.prefix}.a`, json(1));
    await until(() => source.stats.acked === 1, 'the ack after the long work', 10_000);
    expect(seen).toEqual([1]);
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.num_redelivered).toBe(0);
  });

  test('a message JetStream delivers again while it is still held is not handed over twice', async () => {
    const s = await stream();
    // The runtime's clock never moves, so the source's in-progress heartbeat never runs: JetStream
    // delivers the held message again after its 1 s ack wait, as it would to a process too busy.
    const clock = new VirtualClock();
    const rt = createRuntime({ logger: quiet, clock, shutdownDeadlineMs: 2_000 });
    onTestFinished(() => rt.stop().then(() => undefined));
    const seen: unknown[] = [];
    let finish: (() => void) | undefined;
    rt.spawn(
      actor<number, never>({
        name: 'holder',
        subscribe: 'rh.in',
        handle: async (env) => {
          seen.push(env.data);
          if (seen.length === 1) await new Promise<void>((resolve) => (finish = resolve));
        },
      }),
    );
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c', ackWaitMs: 1_000 },
      subject: 'rh.in',
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    await s.js.publish(`${s.prefix}.a`, json(7));
    let redelivered = 0;
    const deadline = Date.now() + 10_000;
    while (redelivered === 0 && Date.now() < deadline) {
      await sleep(100);
      redelivered = (await s.jsm.consumers.info(s.name, 'c')).num_redelivered;
    }
    expect(redelivered, 'JetStream delivered the held message again').toBeGreaterThan(0);
    finish?.();
    await until(() => source.stats.acked === 1, 'the ack of the held copy', 10_000);
    await rt.idle();
    expect(seen).toEqual([7]);
    expect(source.stats.redeliveredWhileHeld).toBeGreaterThan(0);
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.num_ack_pending).toBe(0);
  });

  test('a record larger than the server takes fails its batch before any of it is sent: a retry doubles nothing', async () => {
    // The sink's connection is the test's: the round trip of its flush brings what was published.
    const sink = await natsSink({ connection: nc, subject: 'big.out' });
    onTestFinished(() => sink.close());
    const seen: unknown[] = [];
    const sub = nc.subscribe('big.out', { callback: (_, m) => void seen.push(m.json()) });
    onTestFinished(() => sub.unsubscribe());
    await nc.flush();
    const limit = nc.info?.max_payload ?? 0;
    expect(limit).toBeGreaterThan(0);
    const batch = [
      { key: 'small-1', value: 'a', revision: undefined, envelope: undefined },
      { key: 'huge', value: 'x'.repeat(limit + 1), revision: undefined, envelope: undefined },
      { key: 'small-2', value: 'b', revision: undefined, envelope: undefined },
    ];
    for (let attempt = 0; attempt < 3; attempt++) {
      const err = await sink.write(batch).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectorError);
      // Sending it again fails the same way: not retryable, and it names the record and the limit.
      expect(err).toMatchObject({ retryable: false });
      expect((err as Error).message).toContain("'huge'");
      expect((err as Error).message).toContain(`${limit} bytes`);
    }
    await nc.flush();
    expect(seen).toEqual([]);
  });

  test('a record with a header value NATS cannot carry fails alone, not retryable, naming its key, the header and the rule; its batchmates are written', async () => {
    const rt = runtime();
    const sink = await natsSink<string>({ connection: nc, subject: 'hv.out', headers: true });
    onTestFinished(() => sink.close());
    const seen: unknown[] = [];
    const sub = nc.subscribe('hv.out', { callback: (_, m) => void seen.push(m.json()) });
    onTestFinished(() => sub.unsubscribe());
    await nc.flush();
    const dead: Envelope[] = [];
    rt.bus.subscribe('$DLQ.to-hv', { callback: (env) => void dead.push(env) });
    const ref = rt.spawn(
      sinkActor<string>({
        name: 'to-hv',
        subscribe: 'hv.in',
        sink,
        key: (env) => `k/${env.data}`,
        // The five fill one batch at once; a retry waits 200 ms for company.
        batch: { maxSize: 5, maxWaitMs: 200 },
        retry: { maxAttempts: 3, backoff: { initialMs: 10, maxMs: 10 } },
      }),
    );
    for (const v of ['good-1', 'good-2', 'bad', 'good-3', 'good-4'])
      await rt.bus.publish('hv.in', v, { headers: { note: v === 'bad' ? 'two\nlines' : 'one line' } });
    await until(() => ref.counters.acked + ref.counters.deadLettered === 5, 'every input settled', 10_000);
    expect(dead.map((e) => e.data)).toEqual(['bad']);
    const reason = dead[0]?.headers[DEAD_LETTER_HEADERS.error] ?? '';
    expect(reason).toContain("record 'k/bad'");
    expect(reason).toContain("header 'note'");
    expect(reason).toContain('holds no line break');
    expect(ref.counters.acked).toBe(4);
    await until(() => seen.length === 4, 'the batchmates on NATS');
    expect([...seen].sort()).toEqual(['good-1', 'good-2', 'good-3', 'good-4']);
    // A key goes in a header too: refused before anything of its batch is sent, the same on every try.
    const batch = [
      { key: 'fine', value: 'a', revision: undefined, envelope: undefined },
      { key: 'two\nlines', value: 'b', revision: undefined, envelope: undefined },
    ];
    for (let attempt = 0; attempt < 2; attempt++) {
      const err = await sink.write(batch).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectorError);
      expect(err).toMatchObject({ retryable: false });
      expect((err as Error).message).toContain("header 'sluice-idempotency-key'");
    }
    await nc.flush();
    expect(seen).toHaveLength(4);
  });

  test('sink errors are surfaced: a batch JetStream does not acknowledge fails, and its inputs are retried then dead-lettered', async () => {
    const rt = runtime();
    const sink = await natsSink({
      connection: { servers: server.url },
      jetstream: true,
      subject: 'nostream.here',
      timeoutMs: 500,
    });
    onTestFinished(() => sink.close());
    const err = await sink
      .write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectorError);
    expect(err).toMatchObject({ code: 'SLUICE_ERR_CONNECTOR', retryable: true });
    expect((err as Error).message).toContain("'nostream.here'");
    const dead: Envelope[] = [];
    rt.bus.subscribe('$DLQ.to-nowhere', { callback: (env) => void dead.push(env) });
    rt.spawn(
      sinkActor({
        name: 'to-nowhere',
        subscribe: 'se.in',
        sink,
        key: (env) => `k/${env.data}`,
        batch: { maxWaitMs: 0 },
        retry: { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 10 } },
      }),
    );
    await rt.bus.publish('se.in', 1);
    await until(() => dead.length === 1, 'the dead letter of the unwritable input', 10_000);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain("connector 'jetstream'");
    expect(sink.stats.failed).toBeGreaterThanOrEqual(3);
  });

  test('a message its stream refuses for its size fails alone: its batchmates are written, not dead-lettered with it', async () => {
    const name = `S${++n}`;
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name, subjects: [`s${n}.>`], max_msg_size: 256 });
    const rt = runtime();
    const sink = await natsSink<string>({ connection: { servers: server.url }, jetstream: true, subject: `s${n}.out` });
    onTestFinished(() => sink.close());
    const dead: Envelope[] = [];
    rt.bus.subscribe('$DLQ.to-capped', { callback: (env) => void dead.push(env) });
    const ref = rt.spawn(
      sinkActor<string>({
        name: 'to-capped',
        subscribe: 'cap.in',
        sink,
        key: (env) => `k/${env.data.slice(0, 8)}`,
        // The five fill one batch at once; a retry waits 200 ms for company.
        batch: { maxSize: 5, maxWaitMs: 200 },
        retry: { maxAttempts: 3, backoff: { initialMs: 10, maxMs: 10 } },
      }),
    );
    for (const v of ['good-1', 'good-2', `too-big-${'x'.repeat(300)}`, 'good-3', 'good-4'])
      await rt.bus.publish('cap.in', v);
    await until(() => ref.counters.acked + ref.counters.deadLettered === 5, 'every input settled', 10_000);
    expect(dead.map((e) => e.data)).toEqual([`too-big-${'x'.repeat(300)}`]);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain('maximum');
    expect(ref.counters.acked).toBe(4);
    expect((await jsm.streams.info(name)).state.messages).toBe(4);
  });

  test("a key with a '#' and no revision, and the key before it at that revision, are two messages of the stream", async () => {
    const s = await stream();
    const sink = await natsSink({ connection: { servers: server.url }, jetstream: true, subject: `${s.prefix}.out` });
    onTestFinished(() => sink.close());
    await sink.write([{ key: 'order#1', value: 'no revision', revision: undefined, envelope: undefined }]);
    await sink.write([{ key: 'order', value: 'revision 1', revision: 1, envelope: undefined }]);
    // Within the duplicate window both ids were 'order#1': the stream kept the first only.
    expect((await s.jsm.streams.info(s.name)).state.messages).toBe(2);
    const ids = [1, 2].map(async (seq) => (await s.jsm.streams.getMessage(s.name, { seq }))?.header.get('Nats-Msg-Id'));
    expect(await Promise.all(ids)).toEqual(['order#1#', 'order#1']);
  });

  test('committed keys in the store outlive the duplicate window: a late replay doubles nothing', async () => {
    // Two streams: JetStream de-duplicates by message id per stream, whatever the subject.
    const s = await stream({ duplicateWindowMs: 200 });
    const b = await stream({ duplicateWindowMs: 200 });
    const store = new MemoryStore();
    const kept = await natsSink({
      connection: { servers: server.url },
      jetstream: true,
      subject: `${s.prefix}.kept`,
      store,
    });
    const bare = await natsSink({
      connection: { servers: server.url },
      jetstream: true,
      subject: `${b.prefix}.bare`,
      name: 'bare',
    });
    onTestFinished(() => Promise.all([kept.close(), bare.close()]).then(() => undefined));
    const records = [1, 2, 3].map((i) => ({ key: `k${i}`, value: i, revision: undefined, envelope: undefined }));
    await kept.write(records);
    await bare.write(records);
    await kept.write(records); // within the window: JetStream and the store both catch it
    await bare.write(records);
    expect(bare.stats.duplicates).toBe(3);
    await sleep(400); // the window has passed
    await kept.write(records);
    await bare.write(records);
    expect((await s.jsm.streams.info(s.name)).state.messages).toBe(3);
    expect((await b.jsm.streams.info(b.name)).state.messages).toBe(6);
    expect(kept.stats.skipped).toBe(6);
    // A newer revision of a key is written; an older one is not.
    for (const revision of [0, 1, 0, 1])
      await kept.write([{ key: 'w', value: revision, revision, envelope: undefined }]);
    expect((await s.jsm.streams.info(s.name)).state.messages).toBe(5);
  });

  test('lag: every source reports messages and time behind as the consumer lag gauges', async () => {
    const s = await stream();
    for (let i = 0; i < 5; i++) await s.js.publish(`${s.prefix}.a`, json(i));
    const rt = runtime();
    rt.bus.subscribe('lag.in', { mailbox: { capacity: 1 }, callback: () => new Promise<void>(() => undefined) });
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c' },
      subject: 'lag.in',
    });
    onTestFinished(() => source.close());
    await source.start(rt);
    await until(() => source.lag().ackPending > 0, 'a delivery');
    const attributes = { 'sluice.stream': `nats:${s.name}`, 'sluice.consumer': 'c' };
    expect(collect('sluice.consumer.lag')).toContainEqual([5, attributes]);
    const time = collect('sluice.consumer.lag_time').find(([, a]) => a?.['sluice.consumer'] === 'c');
    expect(time?.[0]).toBeGreaterThan(0);
    await source.close();
    expect(collect('sluice.consumer.lag').filter(([, a]) => a?.['sluice.stream'] === `nats:${s.name}`)).toEqual([]);
  });

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    test(`server restarted with ${signal} mid-stream: core subscribers resume, JetStream loses nothing`, async () => {
      const own = await startNatsServer({ jetstream: true });
      onTestFinished(() => own.stop());
      const plain = await connect({ servers: own.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
      onTestFinished(() => plain.close());
      const jsm = await jetstreamManager(plain);
      await jsm.streams.add({ name: 'R', subjects: ['r.>'] });
      const js = jetstream(plain);
      const total = 600;
      for (let i = 0; i < total / 2; i++) await js.publish('r.in', json(i));

      const rt = runtime();
      const seen = new Map<number, number>();
      rt.spawn(
        actor<number, never>({
          name: 'count',
          subscribe: 'r.bus',
          handle: async (env) => {
            seen.set(env.data, (seen.get(env.data) ?? 0) + 1);
            await sleep(1);
          },
        }),
      );
      const live: unknown[] = [];
      rt.bus.subscribe('live.bus', { callback: (env) => void live.push(env.data) });
      const connection = { servers: own.url, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } };
      const durable = natsSource({
        connection,
        jetstream: { stream: 'R', consumer: 'c', ackWaitMs: 2_000, fetchExpiresMs: 1_000 },
        subject: 'r.bus',
      });
      const core = natsSource({ connection, subjects: 'live', subject: 'live.bus' });
      onTestFinished(() => Promise.all([durable.close(), core.close()]).then(() => undefined));
      // The pull that fails while the server is away is logged as a warning: kept out of the test output.
      await durable.start(rt, { logger: quiet });
      await core.start(rt, { logger: quiet });
      plain.publish('live', json('before'));
      await until(() => seen.size >= 50 && live.length === 1, 'the stream under way');

      await own.restart(signal);
      // The plain client reconnects too; a publish that times out meanwhile is sent again (with its id).
      for (let i = total / 2; i < total; i++) {
        await until(
          () =>
            js.publish('r.in', json(i), { msgID: `m${i}`, timeout: 1_000 }).then(
              () => true,
              () => false,
            ),
          `publish ${i} after the restart`,
          20_000,
        );
      }
      // Core subscriptions are made again on reconnect: a message published now arrives.
      await until(
        async () => {
          plain.publish('live', json('after'));
          await plain.flush();
          return live.includes('after');
        },
        'a core message after the restart',
        15_000,
      );
      await until(() => seen.size === total, `all ${total} JetStream messages`, 30_000);
      expect([...seen.keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i));
      // Delivered again at most what was in flight at the restart: at-least-once, none lost.
      const twice = [...seen.values()].filter((c) => c > 1).length;
      expect(twice).toBeLessThanOrEqual(durable.stats.received - total);
    }, 60_000);
  }

  describe('authentication and TLS', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'sluice-nats-auth-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    async function expectRefused(options: Parameters<typeof natsSink>[0], pattern: RegExp): Promise<void> {
      const err = await natsSink(options).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectorError);
      expect((err as Error).message).toMatch(pattern);
    }

    test('user and password: good ones connect, bad ones fail with a clear error', async () => {
      const s = await startNatsServer({
        config: 'authorization { users = [ { user: "alice", password: "s3cret" } ] }',
      });
      onTestFinished(() => s.stop());
      const sink = await natsSink({ connection: { servers: s.url, user: 'alice', pass: 's3cret' }, subject: 'x' });
      await sink.write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }]);
      await sink.close();
      await expectRefused(
        { connection: { servers: s.url, user: 'alice', pass: 'wrong', reconnect: { maxAttempts: 0 } }, subject: 'x' },
        /refused the credentials.*user\/pass/,
      );
    });

    test('a token: the right one connects, another fails with a clear error', async () => {
      const s = await startNatsServer({ config: 'authorization { token: "t0ken" }' });
      onTestFinished(() => s.stop());
      const sink = await natsSink({ connection: { servers: s.url, token: 't0ken' }, subject: 'x' });
      await sink.write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }]);
      await sink.close();
      await expectRefused({ connection: { servers: s.url, token: 'other' }, subject: 'x' }, /refused the credentials/);
    });

    test('an NKey: its seed connects, another seed fails with a clear error', async () => {
      const user = createUser();
      const s = await startNatsServer({ config: `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }` });
      onTestFinished(() => s.stop());
      const seed = new TextDecoder().decode(user.getSeed());
      const sink = await natsSink({ connection: { servers: s.url, nkeySeed: seed }, subject: 'x' });
      await sink.write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }]);
      await sink.close();
      const other = new TextDecoder().decode(createUser().getSeed());
      await expectRefused({ connection: { servers: s.url, nkeySeed: other }, subject: 'x' }, /refused the credentials/);
    });

    test('TLS with a self-signed CA and a client certificate: trusted ones connect, others fail clearly', async () => {
      const f = (name: string) => join(dir, name);
      const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
      ssl(
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=sluice-test-ca',
        '-keyout',
        f('ca.key'),
        '-out',
        f('ca.pem'),
      );
      for (const [name, ext] of [
        ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
        ['client', 'extendedKeyUsage=clientAuth'],
      ] as const) {
        ssl(
          'req',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-subj',
          `/CN=${name}`,
          '-keyout',
          f(`${name}.key`),
          '-out',
          f(`${name}.csr`),
        );
        await writeFile(f(`${name}.ext`), `${ext}\n`);
        ssl(
          'x509',
          '-req',
          '-in',
          f(`${name}.csr`),
          '-CA',
          f('ca.pem'),
          '-CAkey',
          f('ca.key'),
          '-CAcreateserial',
          '-days',
          '1',
          '-extfile',
          f(`${name}.ext`),
          '-out',
          f(`${name}.pem`),
        );
      }
      ssl(
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=other-ca',
        '-keyout',
        f('other.key'),
        '-out',
        f('other.pem'),
      );
      const s = await startNatsServer({
        config: `tls { cert_file: "${f('server.pem')}", key_file: "${f('server.key')}", ca_file: "${f('ca.pem')}", verify: true }`,
      });
      onTestFinished(() => s.stop());
      const tls = { caFile: f('ca.pem'), certFile: f('client.pem'), keyFile: f('client.key') };
      const sink = await natsSink({ connection: { servers: s.url, tls }, subject: 'x' });
      await sink.write([{ key: 'k', value: 1, revision: undefined, envelope: undefined }]);
      await sink.close();
      const once = { maxAttempts: 0 };
      await expectRefused(
        { connection: { servers: s.url, tls: { ...tls, caFile: f('other.pem') }, reconnect: once }, subject: 'x' },
        /TLS failed/,
      );
      await expectRefused(
        { connection: { servers: s.url, tls: { caFile: f('ca.pem') }, reconnect: once }, subject: 'x' },
        /could not connect/,
      );
    });
  });
});
