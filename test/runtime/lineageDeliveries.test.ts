/**
 * deliveriesOf: a source finds, from the lineage of an output some actors away, the deliveries of
 * its own that the output derives from, and nothing of any other source.
 */
import { actor, type SinkRecord, sinkActor } from 'sluice';
import { expect, test } from 'vitest';
import { deliveriesOf, mergeLineage, SourceLineage, type SourceSettlement } from '../../runtime/lineage.ts';
import { flush, testRuntime } from './helpers.ts';

function settlement(): SourceSettlement<string> & { readonly settled: string[] } {
  const settled: string[] = [];
  return { settled, sourceSettled: (d) => void settled.push(d) };
}

test('through a pipeline actor, a handler actor and a sink actor, an output leads back to its own delivery only', async () => {
  const { rt } = testRuntime();
  const one = settlement();
  const two = settlement();
  rt.spawn(actor<string, string>({ name: 'map', subscribe: 'in', output: 'mid', pipeline: (in$) => in$ }));
  rt.spawn(actor<string, string>({ name: 'handle', subscribe: 'mid', output: 'out', handle: (env) => env.data }));
  const seen = new Map<unknown, [string[], string[]]>();
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  rt.spawn(
    sinkActor({
      name: 'sink',
      subscribe: 'out',
      batch: { maxSize: 3, maxWaitMs: 1_000 },
      sink: {
        name: 'capture',
        write: async (records: readonly SinkRecord<unknown>[]) => {
          // While the write is under way the inputs are in flight, as a transactional sink's are.
          for (const r of records) {
            const lineage = r.envelope?.lineage;
            seen.set(r.value, [deliveriesOf(lineage, one), deliveriesOf(lineage, two)]);
          }
          await gate;
        },
      },
      key: (env) => String(env.data),
    }),
  );
  // As a source does: its own reference is given back once the bus took the message.
  for (const [data, lineage] of [
    ['a', new SourceLineage(one, 'a@1', 'a')],
    ['b', new SourceLineage(two, 'b@2', 'b')],
  ] as const) {
    await rt.bus.publish('in', data, { lineage });
    lineage.release();
  }
  // Made without its input's lineage: nothing leads back.
  await rt.bus.publish('in', 'c');
  await flush();
  expect(Object.fromEntries(seen)).toEqual({ a: [['a@1'], []], b: [[], ['b@2']], c: [[], []] });
  expect([one.settled, two.settled]).toEqual([[], []]);
  open();
  await flush();
  // Looking did not hold or settle anything: each delivery settled once, after the write.
  expect([one.settled, two.settled]).toEqual([['a@1'], ['b@2']]);
});

test('a merged lineage leads to each of its parts of the source', () => {
  const one = settlement();
  const x = new SourceLineage(one, 'x', 'x');
  const y = new SourceLineage(one, 'y', 'y');
  const other = new SourceLineage(settlement(), 'z', 'z');
  expect(deliveriesOf(mergeLineage([x, other, y]), one).sort()).toEqual(['x', 'y']);
  // An input reached twice (a merge of merges) is found once.
  expect(deliveriesOf(mergeLineage([x, mergeLineage([x, y])]), one).sort()).toEqual(['x', 'y']);
  expect(deliveriesOf(undefined, one)).toEqual([]);
});
