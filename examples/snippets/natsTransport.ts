// The TypeScript blocks of docs/nats.md's "The transport" and of README.md's "Scaling out over
// NATS", verbatim, run by test/docs/snippets.test.ts against a nats-server it starts (skipped with
// a note when nats-server is not installed, outside CI).
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { actor, createRuntime, durable, type Envelope } from 'sluice';
import { natsTransport } from 'sluice/connectors/nats';
import { natsServerMissing, startNatsServer } from '../../test/services/natsServer.ts';

interface Image {
  id: string;
}
interface Job {
  id: string;
  cents: number;
}

export async function main(): Promise<void> {
  if (natsServerMissing('examples/snippets/natsTransport.ts') !== undefined) return;
  const server = await startNatsServer({ jetstream: true });
  const url = server.url;
  const resized: string[] = [];
  const billed: string[] = [];
  const resize = (image: Image) => void resized.push(image.id);
  const bill = (job: Job) => void billed.push(job.id);
  // A second process, here a second runtime: it publishes, and answers a census.
  const other = natsTransport({ servers: url });
  const producer = createRuntime({ transport: other, streams: [{ name: 'JOBS', subjects: ['jobs.>'] }] });
  producer.bus.subscribe('census.who', { callback: (env) => producer.bus.respond(env, 'producer') });
  try {
    // Every process runs the same code: queue groups split the work across them.
    const transport = natsTransport({ servers: url });
    const runtime = createRuntime({ transport, streams: [{ name: 'JOBS', subjects: ['jobs.>'] }] });
    runtime.spawn(
      actor<Image, void>({
        name: 'resize',
        subscribe: 'images.new',
        queue: 'resizers',
        handle: (env) => resize(env.data),
      }),
    );
    runtime.spawn(
      actor<Job, void>({
        name: 'billing',
        subscribe: durable('JOBS', { consumer: 'billing' }),
        handle: (env) => bill(env.data),
      }),
    );
    await transport.ready(); // connected, streams defined, subscriptions on the server

    await other.ready();
    await producer.bus.publish('images.new', { id: 'img-1' });
    await producer.bus.publish('jobs.bill', { id: 'job-1', cents: 250 }); // acknowledged by JetStream
    await waitFor(() => resized.length === 1 && billed.length === 1);
    deepStrictEqual([resized, billed], [['img-1'], ['job-1']]);

    // Scatter-gather: every responder's answer, until 3 came or 500 ms passed.
    runtime.bus.subscribe('census.who', { callback: (env) => runtime.bus.respond(env, 'worker') });
    await transport.ready();
    const replies = await runtime.bus.requestMany('census.who', 'ping', { maxReplies: 3, timeoutMs: 500 });
    deepStrictEqual(replies.map((r) => r.data).sort(), ['producer', 'worker']);
    // Auto-unsubscribe: this subscription takes three messages, then closes.
    const ticks: Envelope[] = [];
    const firstThree = runtime.bus.subscribe('ticks', { max: 3, callback: (env) => void ticks.push(env) });
    await transport.ready();
    for (let i = 0; i < 5; i++) await producer.bus.publish('ticks', i);
    await firstThree.closed;
    strictEqual(ticks.length, 3);

    await runtime.stop();
    await transport.close(); // after stop(): the application closes the transport
  } finally {
    await producer.stop();
    await other.close();
    await server.stop();
  }
}

async function waitFor(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
