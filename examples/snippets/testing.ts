// The multi-line @example blocks of testing/*.ts (JSDoc), verbatim, run by test/docs/snippets.test.ts.
import { actor } from 'sluice';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { testActor, testPipeline } from 'sluice/testing';
import { expect } from 'vitest';

// The README's page-views actor.
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

export async function main(): Promise<void> {
  {
    // ActorHarness
    const h = testActor(pageViews); // the README's page-views actor
    await h.send({ page: '/home', ts: 1_000 });
    await h.send({ page: '/home', ts: 63_000 }); // event time, not advance(), closes the window
    expect(h.published('views.per-minute')).toHaveLength(1);
    await h.stop();
  }
  {
    // PipelineHarness
    const h = testPipeline((in$) => in$.pipe(tumbling({ name: 'views', sizeMs: 60_000, aggregate: agg.count() })));
    h.send('a', { eventTime: 1_000, key: 'home' });
    h.watermark(59_999);
    expect(h.outputs.map((r) => r.data.value)).toEqual([1]);
  }
  {
    // PipelineHarness.lateData
    const late = testPipeline((in$, ctx) =>
      in$.pipe(
        tumbling({
          name: 'views',
          sizeMs: 10,
          aggregate: agg.count(),
          late: (env) => ctx.bus.forward({ ...env, subject: 'views.late' }),
        }),
      ),
    );
    late.send('a', { eventTime: 25 });
    late.watermark(29);
    late.send('b', { eventTime: 5 }); // [0, 10) closed long ago
    expect(late.lateData('views.late').map((l) => l.reason)).toEqual(['beyond-allowed-lateness']);
  }
}
