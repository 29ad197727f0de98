/**
 * The RabbitMQ connector against the real server, in a vhost of its own: attempts from the
 * redelivered flag, a quorum queue's delivery count and limit, and `x-death`; dead letters to the
 * bus or to the queue's dead-letter exchange; declared and existing queues; the sink's confirms,
 * mandatory returns, `message_id` and committed keys; connections dropped mid-stream from the
 * server's side. The conformance cases are in rabbitmqConformance.test.ts.
 */
import type { Channel, ChannelModel, ConfirmChannel } from 'amqplib';
import {
  ConnectorError,
  createRuntime,
  DEAD_LETTER_HEADERS,
  type Envelope,
  MemoryStore,
  OptionsError,
  type Runtime,
  type SinkRecord,
} from 'sluice';
import { RabbitSink, rabbitSink, rabbitSource } from 'sluice/connectors/rabbitmq';
import { afterAll, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import { createTestVhost, made, RABBITMQ, rabbitMissing, rabbitmqctl, type TestVhost } from '../services/rabbitmq.ts';
import { until } from './conformance.ts';
import { expectRefusedHeaderLetter, stuckRuntime } from './redisHelpers.ts';

const missing = await rabbitMissing('the RabbitMQ connector tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
let vhost: TestVhost;
let model: ChannelModel;
let channel: Channel;
let n = 0;

function name(what: string): string {
  const q = `${vhost.prefix}${what}${++n}`;
  made.queues.add(q);
  made.exchanges.add(q);
  return q;
}

function runtime(): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  return rt;
}

function closing<S extends { close(): Promise<void> }>(s: S): S {
  onTestFinished(() => s.close());
  return s;
}

const record = (key: string, value: unknown, revision?: number): SinkRecord => ({
  key,
  value,
  revision,
  envelope: undefined,
});

/**
 * The confirm channels sinks open from now until the test ends, as amqplib gives them: a test
 * plays the broker's part on one (a confirm that never comes, a channel that closes at a point).
 */
function confirmChannels(): ConfirmChannel[] {
  const proto = Object.getPrototypeOf(model) as ChannelModel;
  const original = proto.createConfirmChannel;
  const opened: ConfirmChannel[] = [];
  const spy = vi.spyOn(proto, 'createConfirmChannel').mockImplementation(async function (this: ChannelModel) {
    const ch = await original.call(this);
    opened.push(ch);
    return ch;
  });
  onTestFinished(() => spy.mockRestore());
  return opened;
}

async function send(queue: string, values: readonly unknown[]): Promise<void> {
  for (const [i, v] of values.entries()) {
    channel.sendToQueue(queue, Buffer.from(JSON.stringify(v)), { messageId: `${queue}-${i}`, persistent: true });
  }
  await new Promise((resolve) => setTimeout(resolve, 0));
}

async function drain(
  queue: string,
  expected: number,
): Promise<{ content: string; messageId: unknown; headers: Record<string, unknown> }[]> {
  const out: { content: string; messageId: unknown; headers: Record<string, unknown> }[] = [];
  await until(async () => {
    for (;;) {
      const m = await channel.get(queue, { noAck: true });
      if (m === false) break;
      out.push({
        content: m.content.toString(),
        messageId: m.properties.messageId,
        headers: m.properties.headers ?? {},
      });
    }
    return out.length >= expected;
  }, `${expected} messages in ${queue}`);
  return out;
}

describe('RabbitMQ connector options (no server)', () => {
  test('bad options name the option and the rule', async () => {
    expect(() => rabbitSource({ queue: '', subject: 'a' })).toThrow(OptionsError);
    expect(() => rabbitSource({ queue: 'q', subject: 'a', deadLetters: 'dlx' as never })).toThrow(
      expect.objectContaining({ option: 'rabbitSource.deadLetters' }),
    );
    expect(() => rabbitSource({ queue: 'q', subject: 'a', declare: { deliveryLimit: 3 } })).toThrow(
      expect.objectContaining({ option: 'rabbitSource.declare.deliveryLimit' }),
    );
    expect(() => rabbitSource({ queue: 'q', subject: 'a', declare: { type: 'stream' as never } })).toThrow(
      expect.objectContaining({ option: 'rabbitSource.declare.type' }),
    );
    expect(() => rabbitSource({ queue: 'q', subject: 'a', declare: { bindings: [{ exchange: '' }] } })).toThrow(
      expect.objectContaining({ option: 'rabbitSource.declare.bindings[0].exchange' }),
    );
    expect(() => rabbitSource({ queue: 'q', subject: 'a', codec: 'xml' as never })).toThrow(OptionsError);
    await expect(rabbitSink({ exchange: 'x', connection: { url: 'http://h' } })).rejects.toMatchObject({
      option: 'rabbitSink(rabbitmq:x).connection.url',
    });
  });
});

describe.skipIf(missing !== undefined)('RabbitMQ connector', () => {
  beforeAll(async () => {
    vhost = await createTestVhost();
    model = await vhost.open();
    model.on('error', () => undefined);
    channel = await model.createChannel();
  });
  afterAll(async () => {
    await model?.close().catch(() => undefined);
    await vhost?.remove();
  });

  test('refused credentials, a missing vhost and a missing queue are ConnectorErrors saying what to check', async () => {
    const q = name('missing');
    const bad = rabbitSource({ queue: q, subject: 'x.in', connection: { ...RABBITMQ, password: 'wrong' } });
    await expect(bad.start(runtime())).rejects.toThrow(/refused the credentials/);
    const nowhere = rabbitSource({ queue: q, subject: 'x.in', connection: { ...RABBITMQ, vhost: 'no-such-vhost' } });
    await expect(nowhere.start(runtime())).rejects.toThrow(/virtual host/);
    const absent = closing(rabbitSource({ queue: q, subject: 'x.in', connection: vhost.connection }));
    const error = await absent.start(runtime()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectorError);
    expect(String(error)).toMatch(/without 'declare' it must exist/);
  });

  test('a declaration that differs from the existing queue is refused', async () => {
    const q = name('differs');
    await channel.assertQueue(q, { durable: true });
    const source = closing(
      rabbitSource({ queue: q, subject: 'x.in', connection: vhost.connection, declare: { type: 'quorum' } }),
    );
    await expect(source.start(runtime())).rejects.toThrow(/same settings/);
  });

  test('a redelivered message is attempt 2; a failure on the last delivery is dead-lettered to the bus and acked', async () => {
    const q = name('attempts');
    const rt = runtime();
    const attempts: number[] = [];
    const letters: Envelope[] = [];
    rt.bus.subscribe(`$DLQ.rabbitmq.${q}`, { callback: (env) => void letters.push(env) });
    rt.bus.subscribe('at.in', {
      callback: (env) => {
        attempts.push(env.attempt);
        throw new Error('always');
      },
      onError: () => undefined,
    });
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'at.in',
        connection: vhost.connection,
        declare: {},
        maxDeliver: 3,
        backoffMs: [10],
      }),
    );
    await source.start(rt);
    await send(q, [{ n: 1 }]);
    await until(() => letters.length === 1, 'a dead letter');
    // A classic queue only flags a redelivery: the source counts the requeues it made itself.
    expect(attempts).toEqual([1, 2, 3]);
    expect(letters[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    await until(async () => (await vhost.backlog(q)) === 0, 'acked');
  });

  test('a message with a header whose name the bus refuses is dead-lettered at once, naming the header, and acked', async () => {
    const q = name('badheader');
    const rt = runtime();
    const seen: unknown[] = [];
    const letters: Envelope[] = [];
    rt.bus.subscribe(`$DLQ.rabbitmq.${q}`, { callback: (env) => void letters.push(env) });
    rt.bus.subscribe('bh.in', { callback: (env) => void seen.push(env.data) });
    const source = closing(
      rabbitSource({ queue: q, subject: 'bh.in', connection: vhost.connection, declare: {}, backoffMs: [10] }),
    );
    await source.start(rt);
    channel.sendToQueue(q, Buffer.from('1'), { messageId: 'm-1', headers: { tenant: 'eu', 'bad name': 'x' } });
    await send(q, [2]);
    await expectRefusedHeaderLetter(seen, letters);
    await until(async () => (await vhost.backlog(q)) === 0, 'both acked');
    expect(source.stats).toMatchObject({ requeued: 0, terminated: 1 });
  });

  test('acks of a turn go out together, yet never cover an earlier message still held for its retry', async () => {
    const q = name('acks');
    const rt = runtime();
    const seen: string[] = [];
    rt.bus.subscribe<{ n: number }>('acks.in', {
      callback: (env) => {
        seen.push(`${env.data.n}@${env.attempt}`);
        if (env.data.n === 1 && env.attempt === 1) throw new Error('once');
      },
      onError: () => undefined,
    });
    const source = closing(
      rabbitSource({ queue: q, subject: 'acks.in', connection: vhost.connection, declare: {}, backoffMs: [500] }),
    );
    await source.start(rt);
    await send(
      q,
      Array.from({ length: 6 }, (_, n) => ({ n })),
    );
    // The five that succeeded are acked while the failed one waits for its requeue.
    await until(() => source.stats.acked === 5, 'five acked');
    // A nack of a tag a multiple ack covered would close the channel, and the retry would be lost.
    await until(() => source.stats.acked === 6, 'the failed one acked after its retry');
    await until(async () => (await vhost.backlog(q)) === 0, 'all acked');
    expect(seen).toEqual(['0@1', '1@1', '2@1', '3@1', '4@1', '5@1', '1@2']);
    expect(source.stats.requeued).toBe(1);
    expect(source.stats.reconnects).toBe(0);
  });

  test('a message the stopping runtime refuses is held until close, not requeued round and round past the delivery limit', async () => {
    const q = name('stopping');
    const rt = stuckRuntime('st.in');
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'st.in',
        connection: vhost.connection,
        declare: { type: 'quorum', deliveryLimit: 2 },
        backoffMs: [0],
      }),
    );
    await source.start(rt);
    await send(q, [1, 2, 3]);
    // One in the actor and one in its mailbox (the prefetch): the third comes once the stopping
    // runtime dead-lettered those, and the bus refuses it.
    await until(() => source.stats.published === 2, 'two delivered');
    await rt.stop();
    await until(() => source.stats.received >= 3, 'the third received');
    // Each requeue is a round trip to the server and back: give a loop of them time to show.
    for (let i = 0; i < 20; i++) await channel.checkQueue(q);
    expect(source.stats.requeued).toBe(0);
    await source.close();
    // Requeued by the server as the channel closed, within the delivery limit: kept for the next run.
    await until(async () => (await vhost.backlog(q)) === 1, 'the refused message back in the queue');
  });

  test("a quorum queue's delivery count is the attempt, and its delivery limit is respected", async () => {
    const q = name('quorum');
    const rt = runtime();
    const attempts: number[] = [];
    const letters: Envelope[] = [];
    rt.bus.subscribe(`$DLQ.rabbitmq.${q}`, { callback: (env) => void letters.push(env) });
    rt.bus.subscribe('qq.in', {
      callback: (env) => {
        attempts.push(env.attempt);
        throw new Error('always');
      },
      onError: () => undefined,
    });
    // maxDeliver 10, but RabbitMQ gives the message up after 2 returns: the source gives up first.
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'qq.in',
        connection: vhost.connection,
        declare: { type: 'quorum', deliveryLimit: 2 },
        maxDeliver: 10,
        backoffMs: [10],
      }),
    );
    await source.start(rt);
    await send(q, ['x']);
    await until(() => letters.length === 1, 'a dead letter');
    expect(attempts).toEqual([1, 2, 3]);
    expect(letters[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    await until(async () => (await vhost.backlog(q)) === 0, 'acked');
  });

  test("given up to the queue's dead-letter exchange; x-death counts the rounds through it as attempts", async () => {
    const q = name('work');
    const retry = name('retry');
    const back = name('back');
    const dlx = name('dlx');
    // Rejected from the work queue -> dlx -> retry queue, expired after 20 ms -> back -> the work queue.
    await channel.assertExchange(dlx, 'fanout', { durable: true });
    await channel.assertExchange(back, 'fanout', { durable: true });
    await channel.assertQueue(retry, { durable: true, messageTtl: 20, deadLetterExchange: back });
    await channel.bindQueue(retry, dlx, '');
    const rt = runtime();
    const attempts: number[] = [];
    rt.bus.subscribe('dx.in', {
      callback: (env) => {
        attempts.push(env.attempt);
        if (env.attempt < 3) throw new Error('not yet');
      },
      onError: () => undefined,
    });
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'dx.in',
        connection: vhost.connection,
        declare: { deadLetterExchange: dlx, bindings: [{ exchange: back }] },
        deadLetters: 'rabbitmq',
        maxDeliver: 1,
      }),
    );
    await source.start(rt);
    await send(q, ['x']);
    await until(() => attempts.length === 3, 'three rounds');
    expect(attempts).toEqual([1, 2, 3]);
    expect(source.stats).toMatchObject({ terminated: 2, acked: 1 });
    await until(async () => (await vhost.backlog(q)) + (await vhost.backlog(retry)) === 0, 'acked in the end');
  });

  test('the prefetch is what the mailboxes hold (and one more), at most maxAckPending', async () => {
    const q = name('prefetch');
    const rt = runtime();
    rt.bus.subscribe('pf.in', { mailbox: { capacity: 8 }, callback: () => undefined });
    const source = closing(rabbitSource({ queue: q, subject: 'pf.in', connection: vhost.connection, declare: {} }));
    await source.start(rt);
    await until(() => source.prefetch > 0, 'consuming');
    expect(source.prefetch).toBe(9);
    const rt2 = runtime();
    rt2.bus.subscribe('pf.in', { mailbox: { capacity: 5_000 }, callback: () => undefined });
    const capped = closing(
      rabbitSource({ queue: q, subject: 'pf.in', connection: vhost.connection, declare: {}, maxAckPending: 100 }),
    );
    await capped.start(rt2);
    await until(() => capped.prefetch > 0, 'consuming');
    expect(capped.prefetch).toBe(100);
  });

  test('the sink sets message_id from the key (and revision), waits for confirms, and skips committed keys', async () => {
    const q = name('out');
    await channel.assertQueue(q, { durable: true });
    const store = new MemoryStore();
    const a = closing(
      await rabbitSink({ connection: vhost.connection, exchange: '', routingKey: q, store, name: 'k', maxInFlight: 4 }),
    );
    await a.write([record('k/1', 1), record('w/1', 'r0', 0)]);
    // A restart on the same store: the replay is skipped, a higher revision is not.
    const b = closing(
      await rabbitSink({ connection: vhost.connection, exchange: '', routingKey: q, store, name: 'k' }),
    );
    await b.write([
      record('k/1', 1),
      record('w/1', 'r0', 0),
      record('w/1', 'r1', 1),
      ...Array.from({ length: 50 }, (_, i) => record(`m/${i}`, i)),
    ]);
    const got = await drain(q, 53);
    // message_id is the key; with a revision it is `<key>#<revision>`, and the headers hold both.
    const fields = (m: (typeof got)[number]) => [
      m.messageId,
      m.content,
      m.headers['sluice-idempotency-key'],
      m.headers['sluice-revision'],
    ];
    expect(got.slice(0, 4).map(fields)).toEqual([
      ['k/1', '1', undefined, undefined],
      ['w/1#0', '"r0"', 'w/1', '0'],
      ['w/1#1', '"r1"', 'w/1', '1'],
      ['m/0', '0', undefined, undefined],
    ]);
    expect(got).toHaveLength(53);
    expect(b.stats).toMatchObject({ published: 51, skipped: 2 });
  });

  test('a mandatory publish no queue takes comes back as a ConnectorError that is not retryable', async () => {
    const x = name('nowhere');
    await channel.assertExchange(x, 'direct', { durable: true });
    const sink = closing(await rabbitSink({ connection: vhost.connection, exchange: x, routingKey: 'unbound' }));
    const error = await sink.write([record('a', 1)]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectorError);
    expect(error).toMatchObject({ retryable: false });
    expect(String(error)).toMatch(/unroutable.*'unbound'/);
    expect(sink.stats.returned).toBe(1);
    await expect(rabbitSink({ connection: vhost.connection, exchange: name('absent') })).rejects.toThrow(
      /exchange .* is not available/,
    );
  });

  test('a return whose confirm is lost with its channel is forgotten: the same message confirmed later, once routed, is not taken for returned', async () => {
    const x = name('lostconfirm');
    await channel.assertExchange(x, 'direct', { durable: false });
    const opened = confirmChannels();
    const sink = closing(await rabbitSink({ connection: vhost.connection, exchange: x, routingKey: 'later' }));
    // The channel closes between the return and its confirm: amqplib answers the publish with an error.
    const first = opened[0] as ConfirmChannel;
    first.once('return', () => first.emit('close'));
    const error = await sink.write([record('a', 1)]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectorError);
    expect(error).toMatchObject({ retryable: true });
    expect(String(error)).toMatch(/channel closed/);
    // A queue is bound now: the retry is routed, and its confirm is a commit.
    const q = name('lostconfirmq');
    await channel.assertQueue(q, { durable: false });
    await channel.bindQueue(q, x, 'later');
    await sink.write([record('a', 1)]);
    expect(sink.stats).toMatchObject({ published: 1, returned: 0 });
    expect(await drain(q, 1)).toHaveLength(1);
  });

  test('close waits timeoutMs at most for confirms the broker never sends, then names the publishes left unconfirmed', async () => {
    const q = name('noconfirm');
    await channel.assertQueue(q, { durable: false });
    const opened = confirmChannels();
    const sink = await rabbitSink({ connection: vhost.connection, exchange: '', routingKey: q, timeoutMs: 300 });
    // The broker's confirms never reach the sink.
    (opened[0] as ConfirmChannel).removeAllListeners('ack');
    const error = await sink.write([record('held', 1)]).catch((e: unknown) => e);
    expect(error).toMatchObject({ retryable: true });
    expect(String(error)).toMatch(/no confirm within 300 ms/);
    const started = Date.now();
    const closed = await Promise.race([
      sink.close().then(
        () => 'closed',
        (e: unknown) => e,
      ),
      new Promise((resolve) => setTimeout(resolve, 3_000, 'still waiting')),
    ]);
    expect(closed).toBeInstanceOf(ConnectorError);
    expect(String(closed)).toContain("1 publishes the broker had not confirmed within 300 ms (message ids 'held')");
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  test('a source closed while it starts is listed as closed, not as a live source', async () => {
    const q = name('startclose');
    const rt = runtime();
    rt.bus.subscribe('sc.in', { callback: () => undefined });
    const source = rabbitSource({ queue: q, subject: 'sc.in', connection: vhost.connection, declare: {} });
    const starting = source.start(rt).catch((error: unknown) => error);
    await source.close();
    await starting;
    const listed = rt.status().sources.find((s) => s.name === source.name);
    expect(listed?.connection ?? 'closed').toBe('closed');
  });

  test('a sink closed while a batch opens its connection closes that connection too', async () => {
    const x = name('closing');
    await channel.assertExchange(x, 'fanout', { durable: false });
    const connections = async () =>
      (await rabbitmqctl('list_connections', '-p', vhost.vhost, 'name')).split('\n').filter((l) => l.includes('->'))
        .length;
    const before = await connections();
    // The connection a batch opens, as after a dropped one, and the sink closed meanwhile.
    const sink = new RabbitSink({ connection: vhost.connection, exchange: x, routingKey: 'k', mandatory: false });
    const writing = sink.write([record('a', 1)]).catch(() => undefined);
    await sink.close();
    await writing;
    await until(async () => (await connections()) === before, 'no connection of the sink left');
  });

  test('connections dropped by the server mid-stream: the source reconnects and nothing acknowledged is lost', async () => {
    const q = name('drop');
    const out = name('dropout');
    await channel.assertQueue(out, { durable: true });
    const rt = runtime();
    const seen = new Set<string>();
    rt.bus.subscribe('dr.in', {
      mailbox: { capacity: 32 },
      callback: async (env) => {
        seen.add(String(env.data));
        // About 1 ms each: the drop (rabbitmqctl takes a second or two) comes mid-stream.
        await new Promise((resolve) => setTimeout(resolve, 1));
      },
    });
    const source = closing(
      rabbitSource({
        queue: q,
        subject: 'dr.in',
        connection: { ...vhost.connection, reconnect: { initialDelayMs: 50 } },
        declare: {},
      }),
    );
    await source.start(rt);
    const sink = closing(await rabbitSink({ connection: vhost.connection, exchange: '', routingKey: out }));
    const total = 4_000;
    await send(
      q,
      Array.from({ length: total }, (_, i) => i),
    );
    await until(() => seen.size > 200, 'some handled');
    await vhost.dropConnections();
    // The test's own connection went too.
    model = await vhost.open();
    model.on('error', () => undefined);
    channel = await model.createChannel();
    await until(() => seen.size === total, 'every message handled after the reconnect', 30_000);
    expect(source.stats.reconnects).toBeGreaterThanOrEqual(1);
    await until(async () => (await vhost.backlog(q)) === 0, 'every message acked', 20_000);
    // The sink lost its connection too: the next batch opens a new one.
    await sink.write([record('after', 1)]);
    expect(await drain(out, 1)).toHaveLength(1);
  });
});
