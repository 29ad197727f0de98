/**
 * The crash test's JetStream job (natsHarness.ts runs it): NATS as source and as sink. Two durable
 * consumers of stream EVENTS feed a keyed tumbling window (`windows`) and a per-event
 * transformation (`transform`); their results go to the JetStream streams AGG and XFORM through
 * `natsSink({ jetstream: true, store })`, keyed by their idempotency keys (`Nats-Msg-Id`), the keys
 * committed kept in the store. An input is acknowledged once its results are committed (a window
 * holds its inputs until it fires). Killed with SIGKILL at random moments and at the fault points
 * `window-fired`, `after-write:<sink>` (written, not yet acknowledged) and `mid-batch:<sink>` (half
 * of a batch published), it is started again each time; the harness then reads AGG and XFORM.
 *
 * Both consumers deliver without limit (`max_deliver: -1`): JetStream counts a delivery to a process
 * that died before it saw the message, and drops a message that reached max_deliver that way.
 * Each start resumes the window consumer from its acknowledgement floor, in stream order: JetStream
 * would otherwise deliver new messages first and the dead process's unacknowledged ones only after
 * their ack wait, behind the watermark. A window not written yet holds all its inputs unacknowledged,
 * so they are all above the floor and replayed; what is replayed of written windows and events lands
 * on keys already committed.
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { map } from 'rxjs';
import { actor, createRuntime, LmdbStore, type Sink, type SinkRecord, sinkActor } from 'sluice';
import { type NatsSink, natsSink, natsSource } from 'sluice/connectors/nats';
import { type CrashEvent, transform } from './input.ts';
import { die, dir, faultDue, type Result, reached, say, type Totals, total, totals, windowTotals } from './jobKit.ts';

const url = process.env.CRASH_NATS_URL as string;
// Warnings and errors go to the run's log file (a killed run's stderr is not kept).
const note = (...a: unknown[]) => appendFileSync(join(dir, 'job.log'), `${process.pid} ${a.map(String).join(' ')}\n`);
const quiet = { debug() {}, info() {}, warn: note, error: note };

// The window consumer starts again at its floor (see above); the transform consumer resumes as it is.
const admin = await connect({ servers: url });
const jsm = await jetstreamManager(admin);
const windowsInfo = await jsm.consumers.info('EVENTS', 'windows').catch(() => undefined);
const floor = windowsInfo?.ack_floor.stream_seq ?? 0;
if (windowsInfo !== undefined) await jsm.consumers.delete('EVENTS', 'windows');
await jsm.consumers.add('EVENTS', {
  durable_name: 'windows',
  ack_policy: AckPolicy.Explicit,
  // Window inputs are held until their window fires: on a loaded machine that took longer than a
  // 2 s ack wait, and the redelivered copy was counted again beside the held one. The consumer is
  // made again at its floor on each start, so a long ack wait does not slow recovery from a kill.
  ack_wait: 30_000_000_000,
  max_ack_pending: 40_000,
  max_deliver: -1,
  deliver_policy: DeliverPolicy.StartSequence,
  opt_start_seq: floor + 1,
});
// JetStream counts a delivery to a process that died before it saw the message: with a finite
// max_deliver, messages in flight through that many kills would be dropped by the server.
if ((await jsm.consumers.info('EVENTS', 'transform').catch(() => undefined)) === undefined) {
  await jsm.consumers.add('EVENTS', {
    durable_name: 'transform',
    ack_policy: AckPolicy.Explicit,
    ack_wait: 2_000_000_000,
    max_ack_pending: 4_000,
    max_deliver: -1,
  });
}
await admin.close();

const store = new LmdbStore({ path: join(dir, 'store') });
const runtime = createRuntime({ store, logger: quiet, shutdownDeadlineMs: 60_000 });
const connection = { servers: url, reconnect: { initialDelayMs: 50, maxDelayMs: 500 } };

const windowsIn = natsSource<CrashEvent>({
  connection,
  jetstream: { stream: 'EVENTS', consumer: 'windows', create: false, fetchBatch: 1_000 },
  subject: 'events.windows',
  lagRefreshMs: 100,
});
const transformIn = natsSource<CrashEvent>({
  connection,
  jetstream: { stream: 'EVENTS', consumer: 'transform', create: false, fetchBatch: 1_000 },
  subject: 'events.transform',
  lagRefreshMs: 100,
});

/** A NATS sink behind the `mid-batch` (half the batch published) and `after-write` fault points. */
function faulty<T>(name: string, sink: NatsSink<T>): Sink<T> {
  return {
    name: sink.name,
    write: async (records: readonly SinkRecord<T>[]) => {
      if (faultDue(`mid-batch:${name}`)) {
        await sink.write(records.slice(0, Math.max(1, records.length >> 1)));
        die(`mid-batch:${name}`);
      }
      await sink.write(records);
      reached(`after-write:${name}`);
    },
    close: () => sink.close(),
  };
}

const aggOut = await natsSink<Totals>({ name: 'agg', connection, jetstream: true, subject: 'agg.out', store });
const xformOut = await natsSink<unknown>({ name: 'xform', connection, jetstream: true, subject: 'xform.out', store });

runtime.spawn(
  actor<CrashEvent, Result>({
    name: 'windows',
    subscribe: windowsIn.ref,
    output: 'agg.results',
    pipeline: windowTotals,
  }),
);
runtime.spawn(
  actor<CrashEvent, unknown>({
    name: 'transform',
    subscribe: transformIn.ref,
    output: 'xform.results',
    pipeline: (in$) => in$.pipe(map((e) => ({ ...e, data: transform(e.data) }))),
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-nats',
    subscribe: 'agg.results',
    sink: faulty('agg-nats', aggOut),
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'xform-nats',
    subscribe: 'xform.results',
    sink: faulty('xform-nats', xformOut),
    batch: { maxSize: 500, maxWaitMs: 20 },
  }),
);
await Promise.all([windowsIn.start(runtime, { logger: quiet }), transformIn.start(runtime, { logger: quiet })]);
say('running');

// Every event was taken in: the window consumer's messages are all delivered (held in open
// windows), and the transform consumer acknowledged everything. The transform consumer's own word
// is asked of the server: it outlives a kill, so what it delivered to the killed process waits for
// its ack wait (2 s) to be delivered again, and the source, which knows only what it holds and
// what is left to deliver, would see nothing left before that and stop with those unacknowledged.
const watch = await connect({ servers: url });
const watched = await jetstreamManager(watch);
for (;;) {
  const w = windowsIn.lag();
  const t = await watched.consumers.info('EVENTS', 'transform');
  if (
    w.messages === w.ackPending &&
    t.num_pending === 0 &&
    t.num_ack_pending === 0 &&
    (windowsIn.stats.received > 0 || floor === total)
  )
    break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
await watch.close();
// The drain fires the open windows; their results are written and their inputs acknowledged.
const report = await runtime.stop();
const left = [windowsIn.lag(), transformIn.lag()];
await Promise.all([windowsIn.close(), transformIn.close()]);
await Promise.all([aggOut.close(), xformOut.close()]);
await store.close();
const check = await connect({ servers: url });
const m = await jetstreamManager(check);
const floors = await Promise.all(
  ['windows', 'transform'].map(async (c) => (await m.consumers.info('EVENTS', c)).ack_floor.stream_seq),
);
await check.close();
if (!report.drained || left.some((l) => l.ackPending > 0) || floors.some((f) => f !== total)) {
  process.stderr.write(`not complete after stop: ${JSON.stringify({ report, left, floors })}\n`);
  process.exit(3);
}
say('done');
process.exit(0);
