/**
 * The NATS transport across processes, against a real nats-server: three worker processes
 * (fixtures/natsWorker.ts) in one queue group share the load; on JetStream, one killed with SIGKILL
 * mid-stream loses nothing (its unacknowledged jobs are redelivered to the others); and the server
 * restarted mid-stream, with SIGTERM and with SIGKILL: core subscribers resume, JetStream loses nothing.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { AckPolicy, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { actor, createRuntime, durable } from 'sluice';
import { natsTransport } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { until } from './conformance.ts';

const missing = natsServerMissing('the NATS transport worker tests');
const fixture = fileURLToPath(new URL('./fixtures/natsWorker.ts', import.meta.url));
const root = fileURLToPath(new URL('../../', import.meta.url));
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

interface Worker {
  readonly child: ChildProcess;
  readonly handled: number[];
  readonly started: number[];
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;
  err: string;
}

function startWorker(
  url: string,
  id: string,
  mode: 'core' | 'durable',
  prefix: string,
  stream: string,
  handleMs: number,
) {
  const child = spawn(
    process.execPath,
    ['--conditions=sluice-source', '--import', 'tsx', fixture, url, id, mode, prefix, stream, String(handleMs)],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const worker = { child, handled: [] as number[], started: [] as number[], err: '' } as Worker & {
    ready: Promise<void>;
    exited: Promise<void>;
  };
  const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
  // 'close', not 'exit': its output is read to the end first, so no line it printed is missed.
  (worker as { exited: Promise<void> }).exited = new Promise<void>((resolve) =>
    child.once('close', () => {
      clearTimeout(guard);
      resolve();
    }),
  );
  let out = '';
  (worker as { ready: Promise<void> }).ready = new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      worker.err += chunk.toString();
    });
    child.once('exit', (code) => reject(new Error(`worker ${id} exited (${code}) before ready: ${worker.err}`)));
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      for (let nl = out.indexOf('\n'); nl !== -1; nl = out.indexOf('\n')) {
        const [what, n] = out.slice(0, nl).split(' ');
        out = out.slice(nl + 1);
        if (what === 'ready') resolve();
        else if (what === 'handled') worker.handled.push(Number(n));
        else if (what === 'started') worker.started.push(Number(n));
      }
    });
  });
  onTestFinished(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await worker.exited;
  });
  return worker;
}

async function stopWorker(w: Worker): Promise<void> {
  if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGTERM');
  await w.exited;
}

/** The distinct jobs in a stream's messages, read with a plain client (no Sluice), and the count of messages. */
async function jobsIn(nc: NatsConnection, stream: string): Promise<{ jobs: Set<number>; messages: number }> {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const name = `check-${Math.random().toString(36).slice(2)}`;
  await jsm.consumers.add(stream, { name, ack_policy: AckPolicy.None, inactive_threshold: 60_000_000_000 });
  const consumer = await js.consumers.get(stream, name);
  const info = await jsm.streams.info(stream);
  const jobs = new Set<number>();
  let messages = 0;
  if (info.state.messages > 0) {
    const batch = await consumer.fetch({ max_messages: info.state.messages, expires: 2_000 });
    for await (const m of batch) {
      messages++;
      jobs.add((m.json() as { job: number }).job);
      if (messages === info.state.messages) break;
    }
  }
  await jsm.consumers.delete(stream, name);
  return { jobs, messages };
}

describe.skipIf(missing !== undefined)('NATS transport across worker processes', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;

  beforeAll(async () => {
    server = await startNatsServer({ jetstream: true });
    nc = await connect({ servers: server.url });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await nc?.close();
    await server?.stop();
  });

  test('three worker processes in one queue group share the load, each job handled once', async () => {
    const workers = ['a', 'b', 'c'].map((id) => startWorker(server.url, id, 'core', 'qg', 'UNUSED', 2));
    await Promise.all(workers.map((w) => w.ready));
    const done = new Map<number, string[]>();
    const sub = nc.subscribe('qg.done', {
      callback: (_e, m) => {
        const r = m.json<{ job: number; worker: string }>();
        done.set(r.job, [...(done.get(r.job) ?? []), r.worker]);
      },
    });
    onTestFinished(() => sub.unsubscribe());
    await nc.flush();
    // Published through a runtime on the transport, as a producer process would.
    const transport = natsTransport({ servers: server.url, codec: 'json' });
    const producer = createRuntime({ transport, logger: quiet });
    onTestFinished(async () => {
      await producer.stop();
      await transport.close();
    });
    const total = 300;
    for (let job = 0; job < total; job++) await producer.bus.publish('qg.jobs', { job });
    await until(() => done.size === total, `${total} results`, 20_000);
    expect([...done.values()].every((w) => w.length === 1)).toBe(true);
    const share = workers.map((w) => w.handled.length);
    expect(share.reduce((x, y) => x + y)).toBe(total);
    for (const n of share) expect(n).toBeGreaterThan(total / 10);
    await Promise.all(workers.map(stopWorker));
  }, 60_000);

  test('on JetStream, a worker killed with SIGKILL mid-stream loses nothing: the others get its unacknowledged jobs', async () => {
    await jsm.streams.add({ name: 'KWORK', subjects: ['kw.jobs'] });
    const workers = ['a', 'b', 'c'].map((id) => startWorker(server.url, id, 'durable', 'kw', 'KWORK', 20));
    await Promise.all(workers.map((w) => w.ready));
    const js = jetstream(nc);
    const total = 300;
    await Promise.all(Array.from({ length: total }, (_, job) => js.publish('kw.jobs', JSON.stringify({ job }))));
    const victim = workers[0] as Worker;
    // Killed while it handles a job it started (each takes 20 ms): one it has not acknowledged.
    await until(
      () => victim.handled.length >= 10 && victim.started.some((job) => !victim.handled.includes(job)),
      'the victim to be mid-job',
      20_000,
    );
    victim.child.kill('SIGKILL');
    await victim.exited;
    // Jobs the victim had begun and not finished: never acknowledged, so JetStream must redeliver them.
    const unfinished = victim.started.filter((job) => !victim.handled.includes(job));
    expect(unfinished.length).toBeGreaterThan(0);
    await until(
      async () => (await jobsIn(nc, 'KWORKDONE')).jobs.size === total,
      `all ${total} jobs in KWORKDONE`,
      30_000,
    );
    const { jobs, messages } = await jobsIn(nc, 'KWORKDONE');
    expect(jobs.size).toBe(total);
    // Redelivered jobs carry the same idempotency key: JetStream stored each result once.
    expect(messages).toBe(total);
    const info = await jsm.consumers.info('KWORK', 'workers');
    expect(info.num_ack_pending).toBe(0);
    expect(info.num_pending).toBe(0);
    // The others took them after the ack wait.
    const survivors = new Set(workers.slice(1).flatMap((w) => w.handled));
    for (const job of unfinished) expect(survivors.has(job)).toBe(true);
    await Promise.all(workers.slice(1).map(stopWorker));
  }, 90_000);
});

describe.skipIf(missing !== undefined)('NATS transport while the server restarts', () => {
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    test(`server restarted with ${signal} mid-stream: core subscribers resume, JetStream loses nothing`, async () => {
      const server = await startNatsServer({ jetstream: true });
      onTestFinished(() => server.stop());
      const streams = [
        { name: 'RJOBS', subjects: ['rs.jobs'] },
        { name: 'RDONE', subjects: ['rs.done'] },
      ];
      const make = () => {
        const transport = natsTransport({
          servers: server.url,
          codec: 'json',
          reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
        });
        const rt = createRuntime({ transport, logger: quiet, streams, shutdownDeadlineMs: 2_000 });
        onTestFinished(async () => {
          await rt.stop();
          await transport.close();
        });
        return { rt, transport };
      };
      const worker = make();
      const producer = make();
      const core: number[] = [];
      let handled = 0;
      worker.rt.bus.subscribe<number>('rs.core', { callback: (env) => void core.push(env.data) });
      worker.rt.spawn(
        actor<{ job: number }, { job: number }>({
          name: 'w',
          subscribe: durable('RJOBS', { consumer: 'w', ackWaitMs: 1_000, maxAckPending: 8 }),
          output: 'rs.done',
          concurrency: 4,
          retry: { maxAttempts: 50, backoff: { initialMs: 20, maxMs: 200 } },
          handle: async (env) => {
            await new Promise((resolve) => setTimeout(resolve, 10));
            handled++;
            return env.data;
          },
        }),
      );
      await Promise.all([worker.transport.ready(), producer.transport.ready()]);
      const total = 200;
      for (let job = 0; job < total / 2; job++) await producer.rt.bus.publish('rs.jobs', { job });
      await producer.rt.bus.publish('rs.core', 1);
      await until(() => core.length === 1, 'the first core message');

      // Mid-stream: jobs are in flight, and more wait in the stream.
      expect(handled).toBeLessThan(total / 2);
      await server.restart(signal);

      // Core subscribers are made again on the reconnect: a message published after it arrives.
      await until(
        async () => {
          await producer.rt.bus.publish('rs.core', 2).catch(() => undefined);
          return core.includes(2);
        },
        'a core message after the restart',
        20_000,
      );
      for (let job = total / 2; job < total; job++) {
        // A publish during the reconnect is retried until JetStream acknowledges it.
        for (;;) {
          try {
            await producer.rt.bus.publish('rs.jobs', { job });
            break;
          } catch {
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        }
      }
      const check = await connect({ servers: server.url });
      onTestFinished(() => check.close());
      await until(async () => (await jobsIn(check, 'RDONE')).jobs.size === total, `all ${total} results`, 30_000);
      const { jobs } = await jobsIn(check, 'RDONE');
      expect(jobs.size).toBe(total);
    }, 60_000);
  }
});
