/**
 * The JetStream source's pull at its edges: a close (or the runtime's stop) that lands while a
 * pull is being set up, and a give-up whose dead letter is stored after JetStream delivered the
 * message again.
 */

import { type Consumer, type ConsumerMessages, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { actor, createRuntime, type Envelope, type Runtime, VirtualClock } from 'sluice';
import { natsSource } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { until } from './conformance.ts';

const missing = natsServerMissing('the NATS pull tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const encoder = new TextEncoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v));

describe.skipIf(missing !== undefined)('NATS JetStream source: pull edges', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let n = 0;
  const stream = async () => {
    const name = `P${++n}`;
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name, subjects: [`p${n}.>`] });
    return { name, prefix: `p${n}`, jsm, js: jetstream(nc) };
  };

  beforeAll(async () => {
    server = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: server.url });
  });
  afterAll(async () => {
    await nc?.close();
    await server?.stop();
  });

  /**
   * Runs `during` inside the source's next `fetch`, after the client made the pull and before the
   * source has it back: the window a close or a stop can land in.
   */
  const duringFetch = async (stream: string, during: () => void) => {
    const probe = await jetstream(nc).consumers.get(stream, 'c');
    const proto = Object.getPrototypeOf(probe) as Consumer;
    const original = proto.fetch;
    let landed = false;
    const spy = vi.spyOn(proto, 'fetch').mockImplementation(async function (this: Consumer, opts) {
      const batch: ConsumerMessages = await original.call(this, opts);
      if (!landed) {
        landed = true;
        during();
      }
      return batch;
    });
    onTestFinished(() => spy.mockRestore());
    return () => landed;
  };

  /** The next delivery of the consumer, read by the test itself, with JetStream's delivery count. */
  const nextDelivery = async (stream: string) => {
    const c = await jetstream(nc).consumers.get(stream, 'c');
    const m = await c.next({ expires: 5_000 });
    if (m === null) throw new Error('no message came within 5 s');
    m.ack();
    return { data: m.json<unknown>(), deliveryCount: m.info.deliveryCount };
  };

  const consumer = async (s: Awaited<ReturnType<typeof stream>>) => {
    // Made here, so the test can reach its fetch before the source starts; the source uses it as it is.
    await s.jsm.consumers.add(s.name, { durable_name: 'c', ack_policy: 'explicit', ack_wait: 1_000_000_000 });
  };

  test('a close during the set-up of a pull stops it unsent: the message is never delivered to the closed source', async () => {
    const s = await stream();
    await consumer(s);
    await s.js.publish(`${s.prefix}.a`, json(1));
    const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
    onTestFinished(() => rt.stop().then(() => undefined));
    const seen: unknown[] = [];
    rt.spawn(actor<number, never>({ name: 'reader', subscribe: 'pc.in', handle: (env) => void seen.push(env.data) }));
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c' },
      subject: 'pc.in',
    });
    let closing: Promise<void> | undefined;
    const landed = await duringFetch(s.name, () => {
      closing = source.close();
    });
    await source.start(rt);
    await until(() => landed(), 'the first pull');
    await closing;
    expect(seen).toEqual([]);
    expect(source.stats.received).toBe(0);
    // Nothing went out to the closed source: the consumer never delivered the message, so it is
    // at its first delivery for the next reader, not at a second one counted against it.
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.delivered.stream_seq).toBe(0);
    expect(info.num_ack_pending).toBe(0);
    expect(await nextDelivery(s.name)).toEqual({ data: 1, deliveryCount: 1 });
  });

  test('a runtime stop during the set-up of a pull stops it unsent: the message is not delivered into the refusing bus', async () => {
    const s = await stream();
    await consumer(s);
    await s.js.publish(`${s.prefix}.a`, json(2));
    const rt: Runtime = createRuntime({ logger: quiet, shutdownDeadlineMs: 2_000 });
    const seen: unknown[] = [];
    rt.spawn(actor<number, never>({ name: 'reader', subscribe: 'ps.in', handle: (env) => void seen.push(env.data) }));
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c' },
      subject: 'ps.in',
    });
    onTestFinished(() => source.close());
    let stopping: Promise<unknown> | undefined;
    const landed = await duringFetch(s.name, () => {
      stopping = rt.stop();
    });
    await source.start(rt);
    await until(() => landed(), 'the first pull');
    await stopping;
    await source.close();
    expect(seen).toEqual([]);
    expect(source.stats.received).toBe(0);
    const info = await s.jsm.consumers.info(s.name, 'c');
    expect(info.delivered.stream_seq).toBe(0);
    expect(await nextDelivery(s.name)).toEqual({ data: 2, deliveryCount: 1 });
  });

  test('a give-up whose dead letter is stored after JetStream delivered the message again terms it: no third delivery', async () => {
    const s = await stream();
    // The runtime's clock never moves, so the source sends no in-progress: JetStream delivers the
    // held message again after its 1 s ack wait, while its dead letter still waits for room.
    const { rt, letters, open, fillers } = await deadLettersHeldBack(s.name);
    const source = natsSource({
      connection: { servers: server.url },
      jetstream: { stream: s.name, consumer: 'c', ackWaitMs: 1_000 },
      subject: 'pg.in',
    });
    onTestFinished(() => source.close());
    rt.spawn(actor<unknown, never>({ name: 'reader', subscribe: 'pg.in', handle: () => undefined }));
    await source.start(rt);
    // Not JSON: the source gives up on it at once, and its dead letter waits behind the fillers.
    await s.js.publish(`${s.prefix}.a`, encoder.encode('{not json'));
    await until(() => source.stats.redeliveredWhileHeld >= 1, 'JetStream delivering the held message again');
    open();
    await until(() => source.stats.terminated === 1, 'the dead letter and its term');
    await until(() => letters.length === fillers + 1, 'the dead letter');
    await until(
      async () => (await s.jsm.consumers.info(s.name, 'c')).num_ack_pending === 0,
      'the term to reach JetStream',
      5_000,
    );
    // Every delivery came to the source while it held the message (a slow machine may see more
    // than one): none after the term, none handed over as a new input.
    const info = await s.jsm.consumers.info(s.name, 'c');
    const { received, redeliveredWhileHeld } = source.stats;
    expect(received).toBe(1 + redeliveredWhileHeld);
    expect(info.delivered.consumer_seq).toBe(received);
    expect(info.num_pending).toBe(0);
    expect(letters.filter((l) => l.headers['sluice-stream-sequence'] === '1')).toHaveLength(1);
  });

  test('a dead letter stored after the close gave its message back does not term the delivery another reader now has', async () => {
    const s = await stream();
    // No in-progress (the clock never moves): JetStream delivers the held message again while its
    // dead letter waits, so the delivery that failed and the one the source holds differ.
    const { rt, letters, open, fillers } = await deadLettersHeldBack(s.name);
    // The test's own connection: it stays open after the source's close, so a term sent then reaches the server.
    const source = natsSource({
      connection: nc,
      jetstream: { stream: s.name, consumer: 'c', ackWaitMs: 1_000 },
      subject: 'pk.in',
    });
    onTestFinished(() => source.close());
    rt.spawn(actor<unknown, never>({ name: 'reader', subscribe: 'pk.in', handle: () => undefined }));
    await source.start(rt);
    await s.js.publish(`${s.prefix}.a`, encoder.encode('{not json'));
    await until(() => source.stats.redeliveredWhileHeld >= 1, 'JetStream delivering the held message again');
    // The close gives the message back while its dead letter still waits for room; another
    // reader of the consumer takes it.
    await source.close();
    const other = await jetstream(nc).consumers.get(s.name, 'c');
    const taken = await other.next({ expires: 5_000 });
    expect(taken?.seq).toBe(1);
    open();
    await until(() => letters.length === fillers + 1, 'the dead letter');
    // Whatever the source sent went out before this round trip, and nats-server 2.9 handles an
    // ack where it reads it: the other reader's delivery is still pending, its own to settle.
    await nc.flush();
    expect((await s.jsm.consumers.info(s.name, 'c')).num_ack_pending).toBe(1);
    expect(source.stats.terminated).toBe(0);
    taken?.ack();
    expect(letters.filter((l) => l.headers['sluice-stream-sequence'] === '1')).toHaveLength(1);
  });
});

/**
 * A runtime whose clock never moves (so a source sends no in-progress) and whose dead letters of
 * `stream` wait: its dead-letter actor holds the first filler until `open()`, and more fill its
 * mailbox, so a source's dead letter waits for room.
 */
async function deadLettersHeldBack(stream: string) {
  const clock = new VirtualClock();
  const rt = createRuntime({ logger: quiet, clock, shutdownDeadlineMs: 2_000 });
  onTestFinished(() => rt.stop().then(() => undefined));
  const dlq = `$DLQ.nats.${stream}.c`;
  const letters: Envelope[] = [];
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (open = resolve));
  onTestFinished(() => open());
  rt.spawn(
    actor<unknown, never>({
      name: 'dead-letters',
      subscribe: dlq,
      mailbox: { capacity: 1 },
      handle: async (env) => {
        letters.push(env);
        await gate;
      },
    }),
  );
  const filler = rt.bus.client('filler');
  await filler.publish(dlq, 'filler');
  await until(() => letters.length === 1, 'the handler holding the first filler');
  let fillers = 1;
  while (filler.tryPublish(dlq, 'filler')) fillers++;
  return { rt, letters, open: () => open(), fillers };
}
