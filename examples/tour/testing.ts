// The README's test-kit part of the tour, type-checked and run by the tests.
import { actor } from 'sluice';
import { agg, eventTime, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { testActor, testPipeline } from 'sluice/testing';

const pageViews = actor<{ page: string; ts: number }, WindowResult<number>>({
  name: 'page-views',
  subscribe: 'clicks',
  output: 'views.per-minute',
  pipeline: (click$, ctx) =>
    click$.pipe(
      eventTime((click) => click.ts),
      watermarks({ clock: ctx.clock }),
      tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count() }),
    ),
});

export async function main(): Promise<number[]> {
  // #region testing
  const h = testPipeline((in$) => in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.count() })));
  h.send('a', { eventTime: 3 });
  h.watermark(9); // h.values: one result for [0, 10) with value 1

  const a = testActor(pageViews); // a real runtime on a VirtualClock
  await a.send({ page: '/home', ts: 1_000 });
  await a.restart(); // the open window is replayed into the new pipeline
  await a.send({ page: '/home', ts: 61_000 }); // the watermark passes 60 s: the window fires
  const views = a.outputs<WindowResult<number>>().map((o) => o.data.value); // [1]
  // #endregion
  return [...h.values.map((r) => r.value), ...views];
}
