// The TypeScript block of docs/operations.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, ok } from 'node:assert/strict';
import { agg, eventTime, tumbling, watermarks } from '../../operators/index.ts';
import { actor, createRuntime } from '../../runtime/index.ts';

export async function main(): Promise<void> {
  const runtime = createRuntime();
  runtime.spawn(
    actor<{ ts: number }, unknown>({
      name: 'per-minute',
      subscribe: 'clicks',
      output: 'counts.per-minute',
      pipeline: (click$) =>
        click$.pipe(
          eventTime((c) => c.ts),
          watermarks({ maxOutOfOrdernessMs: 0 }),
          tumbling({ name: 'per-minute', sizeMs: 60_000, aggregate: agg.count() }),
        ),
    }),
  );
  await runtime.bus.publish('clicks', { ts: 90_000 });

  const status = runtime.status();
  status.actors; // { total: 1, running: 1, paused: 0, restarting: 0, stopped: 0 }
  status.windows; // [{ actor: 'per-minute', windows: [{ operator: 'per-minute', watermark: 89999, openWindows: 1, ... }] }]
  status.sources; // connector sources: connection, lastError, lag { messages, timeMs, ackPending }
  status.consumers; // the durable consumers of the runtime's streams, with their lag

  deepStrictEqual(status.actors, { total: 1, running: 1, paused: 0, restarting: 0, stopped: 0 });
  const w = status.windows[0]?.windows[0];
  ok(w !== undefined);
  deepStrictEqual([w.operator, w.kind, w.watermark, w.openWindows], ['per-minute', 'tumbling', 89_999, 1]);
  deepStrictEqual([status.sources, status.consumers], [[], []]);
  await runtime.stop();
}
