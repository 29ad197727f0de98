// The README's tour, kept here so it is type-checked and run by the tests.
// Each block between `// #region NAME` and `// #endregion` appears verbatim in README.md.
import { filter, map } from 'rxjs';
import { actor, createRuntime, type Envelope, subject, VirtualClock } from 'sluice';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { testActor, testPipeline } from 'sluice/testing';
import { z } from 'zod';

export async function main(print: (line: string) => void = console.log): Promise<string[]> {
  const seen: string[] = [];
  const log = (line: string) => {
    seen.push(line);
    print(line);
  };

  // #region bus
  const runtime = createRuntime();
  const { bus } = runtime;

  // Wildcards as in NATS: `*` is one token, `>` the rest.
  bus.subscribe('sensors.*.temperature', { callback: (env) => log(`${env.subject}: ${env.data}`) });

  // A queue group: each message goes to one member.
  for (const id of ['a', 'b']) {
    bus.subscribe('jobs', { queue: 'workers', callback: (env) => log(`worker ${id} got ${env.data}`) });
  }

  // Request/reply.
  bus.subscribe<number>('math.double', { callback: (env) => bus.respond(env, env.data * 2) });

  await bus.publish('sensors.kitchen.temperature', 21.5); // resolves once every mailbox accepted it
  await bus.publish('jobs', 'job-1');
  await bus.publish('jobs', 'job-2');
  const reply = await bus.request<number, number>('math.double', 21);
  log(`double of 21 is ${reply.data}`);
  // #endregion

  // #region actor
  const Reading = z.object({ room: z.string(), celsius: z.number() });
  const readings = subject('readings', { schema: Reading });
  const alerts = subject<{ room: string; celsius: number }>('alerts.heat');

  runtime.spawn(
    actor({
      name: 'heat-watch',
      subscribe: readings, // inputs failing the schema go to `$DLQ.heat-watch` with the reason
      output: alerts,
      mailbox: { capacity: 1000, overflow: 'block' }, // a full mailbox makes publish wait
      maxInFlight: 100,
      pipeline: (reading$) =>
        reading$.pipe(
          filter((env) => env.data.celsius > 30), // what is filtered out is settled as dropped
          map((env): Envelope<{ room: string; celsius: number }> => ({ ...env, data: env.data })),
        ),
    }),
  );
  bus.subscribe(alerts, { callback: (env) => log(`too hot in ${env.data.room}: ${env.data.celsius}`) });
  bus.subscribe('$DLQ.heat-watch', { callback: (env) => log(`dead letter: ${env.headers['sluice-error']}`) });

  await bus.publish(readings, { room: 'attic', celsius: 34 });
  await bus.publish(readings, { room: 'cellar', celsius: 12 });
  await bus.publish('readings', { room: 'roof' }); // no celsius: dead-lettered
  await runtime.idle();
  // #endregion

  // #region windows
  // Page views per page per minute, on event time, with 2 s of disorder and 5 s of lateness.
  const pageViews = actor<{ page: string; ts: number }, WindowResult<number>>({
    name: 'page-views',
    subscribe: 'clicks',
    output: 'views.per-minute',
    pipeline: (click$, ctx) =>
      click$.pipe(
        eventTime((click) => click.ts),
        keyBy((click) => click.page),
        watermarks({ maxOutOfOrdernessMs: 2_000, idleTimeoutMs: 30_000, clock: ctx.clock }),
        tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count(), allowedLatenessMs: 5_000 }),
      ),
  });
  runtime.spawn(pageViews);
  bus.subscribe<WindowResult<number>>('views.per-minute', {
    callback: ({ data: w }) => log(`${w.key} [${w.start}, ${w.end}): ${w.value} views`),
  });
  for (const ts of [1_000, 30_000, 59_000, 58_000, 63_000]) await bus.publish('clicks', { page: '/home', ts });
  await runtime.idle(); // 63 s - 2 s passed the end of [0, 60 s): it fired with 4 views
  // #endregion

  // #region testing
  const h = testPipeline((in$) => in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.count() })));
  h.send('a', { eventTime: 3 });
  h.watermark(9); // h.values: one result for [0, 10) with value 1

  const a = testActor(pageViews); // the actor above, in a runtime of its own on a VirtualClock
  await a.send({ page: '/home', ts: 1_000 });
  await a.restart(); // the open window is replayed into the new pipeline
  await a.send({ page: '/home', ts: 63_000 }); // 63 s - 2 s passes the end of [0, 60 s): it fires
  const views = a.outputs<WindowResult<number>>().map((o) => o.data.value); // [1]
  // #endregion
  await a.stop();
  log(`test kit: pipeline ${JSON.stringify(h.values.map((r) => r.value))}, actor ${JSON.stringify(views)}`);

  // #region clock
  // Every timeout, backoff and deadline runs on the runtime's clock; tests use a virtual one.
  const clock = new VirtualClock(Date.parse('2026-01-01T00:00:00Z'));
  const test = createRuntime({ clock });
  const pending = test.bus.request('nobody.listens.yet', {}, { timeoutMs: 5000 }).catch((e: Error) => e.name);
  log(`request with no subscriber: ${await pending}`);
  await clock.advance(5000);
  // #endregion

  // #region shutdown
  const report = await runtime.stop({ deadlineMs: 2000 }); // drains what is queued and in flight
  log(report.drained ? 'stopped cleanly' : `left: ${JSON.stringify(report.left)}`);
  // #endregion
  await test.stop();
  return seen;
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
