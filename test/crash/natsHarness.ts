/**
 * The crash harness of the JetStream job (natsJob.ts): starts a nats-server with JetStream, feeds
 * the seeded input (input.ts) into stream EVENTS with a plain client, then runs the job again and
 * again, killing it with SIGKILL at seeded random moments and letting it kill itself at its fault
 * points, until a run completes. Then it reads the output streams AGG and XFORM with a plain client:
 * each expected key exactly once (JetStream's `Nats-Msg-Id` de-duplication and the sink's committed
 * keys are all that stands between a replay and a double), none missing, none unexpected, values right.
 *
 * Used by crash.test.ts (the short form) and run.ts (`npm run crash -- --nats --kills 50`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { IDEMPOTENCY_KEY_HEADER } from 'sluice';
import { seededRandom } from 'sluice/testing';
import { startNatsServer } from '../services/natsServer.ts';
import {
  type CrashOptions,
  type CrashReport,
  type CrashRun,
  type CrashStep,
  Problems,
  runJob,
  runSteps,
  sameTotals,
} from './harness.ts';
import { type CrashEvent, events, expectedWindows, transform } from './input.ts';

const job = fileURLToPath(new URL('natsJob.ts', import.meta.url));

/** The JetStream job's fault points, and which occurrence kills (drawn up to `upTo`). */
export const NATS_FAULTS: readonly { readonly name: string; readonly upTo: number; readonly window: boolean }[] = [
  { name: 'window-fired', upTo: 20, window: true },
  { name: 'after-write:agg-nats', upTo: 2, window: true },
  { name: 'mid-batch:agg-nats', upTo: 2, window: true },
  { name: 'after-write:xform-nats', upTo: 5, window: false },
  { name: 'mid-batch:xform-nats', upTo: 5, window: false },
];

export async function runNatsCrash(options: Omit<CrashOptions, 'variant'> = {}): Promise<CrashReport> {
  const n = options.events ?? 20_000;
  const seed = options.seed ?? 1;
  const kills = options.kills ?? 5;
  const maxDelay = options.maxKillDelayMs ?? Math.max(200, Math.floor(4_000 / Math.max(1, kills)));
  const log = options.log ?? (() => undefined);
  const random = seededRandom(seed ^ 0x0a75);
  const started = Date.now();
  const shuffle = (steps: CrashStep[]): CrashStep[] => {
    for (let i = steps.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [steps[i], steps[j]] = [steps[j] as CrashStep, steps[i] as CrashStep];
    }
    return steps;
  };
  const faultStep = (f: (typeof NATS_FAULTS)[number]): CrashStep => ({
    kind: 'fault',
    fault: f.name,
    at: 1 + Math.floor(random() * f.upTo),
  });
  // Window fault points first, while windows still fire (as harness.ts plans them).
  let plan: CrashStep[] = [
    ...shuffle(NATS_FAULTS.filter((f) => f.window).map(faultStep)),
    ...shuffle([
      ...NATS_FAULTS.filter((f) => !f.window).map(faultStep),
      ...Array.from(
        { length: kills },
        (): CrashStep => ({ kind: 'random', delay: 50 + Math.floor(random() * maxDelay) }),
      ),
    ]),
  ];

  const server = await startNatsServer({ jetstream: true });
  const nc = await connect({ servers: server.url });
  const runs: CrashRun[] = [];
  const problems: string[] = [];
  try {
    // Steps that come after the job completed are carried into another round on fresh streams.
    for (let round = 1; plan.length > 0 && round <= 4; round++) {
      const carried: CrashStep[] = [];
      const dir = mkdtempSync(join(tmpdir(), 'sluice-nats-crash-'));
      try {
        await feed(nc, seed, n);
        log(`round ${round}: fed ${n} events (seed ${seed}) into EVENTS, JetStream job`);
        const base = {
          CRASH_DIR: dir,
          CRASH_SEED: String(seed),
          CRASH_EVENTS: String(n),
          CRASH_NATS_URL: server.url,
        };
        const done = await runSteps(job, base, plan, 120_000, runs, carried, log);
        if (!done) {
          const t0 = Date.now();
          const child = await runJob(job, { ...base, CRASH_MODE: 'run' }, undefined, 180_000);
          runs.push({ kind: 'final', ended: child.ended, ms: Date.now() - t0 });
          log(`final: ${child.ended} (${Date.now() - t0} ms)`);
        }
        const found = await check(nc, seed, n);
        for (const problem of found) problems.push(`round ${round}: ${problem}`);
        if (found.length > 0 && process.env.CRASH_KEEP === '1') log(`kept ${dir}`);
      } finally {
        if (process.env.CRASH_KEEP !== '1') rmSync(dir, { recursive: true, force: true });
      }
      plan = carried;
    }
  } finally {
    await nc.close();
    await server.stop();
  }
  return {
    seed,
    events: n,
    runs,
    kills: runs.filter((r) => r.kind === 'random' && r.ended === 'killed').length,
    faults: runs.filter((r) => r.ended === 'fault').map((r) => r.fault as string),
    problems,
    ms: Date.now() - started,
  };
}

/** Fresh streams, and the input in EVENTS: event i at sequence i + 1. */
async function feed(nc: NatsConnection, seed: number, n: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  for (const name of ['EVENTS', 'AGG', 'XFORM']) await jsm.streams.delete(name).catch(() => undefined);
  await jsm.streams.add({ name: 'EVENTS', subjects: ['events.in'] });
  await jsm.streams.add({ name: 'AGG', subjects: ['agg.out'] });
  await jsm.streams.add({ name: 'XFORM', subjects: ['xform.out'] });
  const js = jetstream(nc);
  let pending: Promise<unknown>[] = [];
  // In order on one connection: the server numbers them as they come.
  for (const e of events(seed, n)) {
    pending.push(js.publish('events.in', JSON.stringify(e), { msgID: `event-${e.id}` }));
    if (pending.length === 1_000) {
      await Promise.all(pending);
      pending = [];
    }
  }
  await Promise.all(pending);
  const info = await jsm.streams.info('EVENTS');
  if (info.state.messages !== n) throw new Error(`fed ${info.state.messages} events, expected ${n}`);
}

/** Every message of a stream, read with a plain client: its idempotency key and its JSON value. */
async function readStream(nc: NatsConnection, stream: string): Promise<{ key: string | undefined; value: unknown }[]> {
  const jsm = await jetstreamManager(nc);
  const last = (await jsm.streams.info(stream)).state.last_seq;
  const out: { key: string | undefined; value: unknown }[] = [];
  if (last === 0) return out;
  const consumer = await jetstream(nc).consumers.get(stream);
  const messages = await consumer.consume();
  for await (const m of messages) {
    out.push({ key: m.headers?.get(IDEMPOTENCY_KEY_HEADER), value: m.json() });
    if (m.seq >= last) break;
  }
  return out;
}

/** Compares AGG and XFORM with what the input gives: each key once, right values, nothing else. */
async function check(nc: NatsConnection, seed: number, n: number): Promise<string[]> {
  const problems = new Problems();
  const windows = expectedWindows(seed, n);
  const inputs: CrashEvent[] = [...events(seed, n)];
  const eventIds = new Map<string, number>(inputs.map((e) => [`EVENTS/${e.id + 1}/transform/0`, e.id]));
  const compare = (
    stream: string,
    expected: Map<string, unknown>,
    wrong: (key: string, value: unknown) => boolean,
  ): Promise<void> =>
    readStream(nc, stream).then((messages) => {
      const seen = new Map<string, number>();
      for (const m of messages) {
        if (m.key === undefined) {
          problems.add(`${stream}: no idempotency key`, JSON.stringify(m.value));
          continue;
        }
        seen.set(m.key, (seen.get(m.key) ?? 0) + 1);
        if (!expected.has(m.key)) problems.add(`${stream}: unexpected key`, m.key);
        else if (wrong(m.key, m.value)) problems.add(`${stream}: wrong value`, `${m.key} ${JSON.stringify(m.value)}`);
      }
      for (const [key, count] of seen) if (count > 1) problems.add(`${stream}: key twice`, `${key} x${count}`);
      for (const key of expected.keys()) if (!seen.has(key)) problems.add(`${stream}: missing`, key);
    });
  await compare('AGG', windows, (key, value) => !sameTotals(value, windows.get(key) as never));
  await compare('XFORM', eventIds, (key, value) => {
    const want = transform(inputs[eventIds.get(key) as number] as CrashEvent);
    const g = value as Partial<typeof want> | null;
    return g === null || g.id !== want.id || g.key !== want.key || g.doubled !== want.doubled;
  });
  return problems.list();
}
