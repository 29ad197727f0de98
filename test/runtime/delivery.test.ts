import type { Sink, SinkRecord } from 'sluice';
import { describe, expect, test } from 'vitest';
import { actor, durable, OptionsError, sinkActor } from '../../runtime/index.ts';

const sink: Sink<unknown> = { name: 'memory', write: async (_records: readonly SinkRecord<unknown>[]) => undefined };
const pipeline = <T>(in$: T) => in$;

/** The OptionsError that declaring `make()` throws. */
function refusal(make: () => unknown): OptionsError {
  try {
    make();
  } catch (error) {
    expect(error).toBeInstanceOf(OptionsError);
    return error as OptionsError;
  }
  throw new Error('not refused');
}

describe('delivery modes', () => {
  test('delivery: at-most-once is refused for an actor that reads a stream durably, naming the stream', () => {
    const error = refusal(() =>
      actor({ name: 'a', subscribe: durable('ORDERS', { consumer: 'a' }), delivery: 'at-most-once', pipeline }),
    );
    expect(error.message).toContain("actor 'a'.delivery");
    expect(error.message).toContain("stream 'ORDERS'");
  });

  test('delivery: at-least-once and exactly-once are refused for an actor on a plain subject, naming it', () => {
    for (const delivery of ['at-least-once', 'exactly-once'] as const) {
      const error = refusal(() =>
        actor({
          name: 'b',
          subscribe: [durable('ORDERS', { consumer: 'b' }), 'orders.manual'],
          delivery,
          checkpoint: { everyInputs: 10 },
          pipeline,
        }),
      );
      expect(error.message).toContain("'orders.manual' is a plain subject");
    }
  });

  test('delivery: exactly-once is refused for a durable actor with neither a checkpoint nor an idempotent sink', () => {
    const error = refusal(() =>
      actor({ name: 'c', subscribe: durable('ORDERS', { consumer: 'c' }), delivery: 'exactly-once', pipeline }),
    );
    expect(error.message).toContain('needs a checkpoint');
  });

  test('delivery: an unknown mode is refused with the list of modes', () => {
    const error = refusal(() =>
      actor({ name: 'd', subscribe: 'x', delivery: 'exactly-twice' as 'exactly-once', pipeline }),
    );
    expect(error.message).toContain("'at-most-once', 'at-least-once', 'exactly-once'");
  });

  test('delivery: the combinations that give each mode are accepted and the mode is on the actor', () => {
    expect(actor({ name: 'e', subscribe: 'x', delivery: 'at-most-once', pipeline }).delivery).toBe('at-most-once');
    expect(
      actor({ name: 'f', subscribe: durable('S', { consumer: 'f' }), delivery: 'at-least-once', pipeline }).delivery,
    ).toBe('at-least-once');
    expect(
      actor({
        name: 'g',
        subscribe: durable('S', { consumer: 'g' }),
        delivery: 'exactly-once',
        checkpoint: { intervalMs: 1_000 },
        pipeline,
      }).delivery,
    ).toBe('exactly-once');
    // A sink actor's sink keeps one result per key: durable inputs are enough.
    expect(
      sinkActor({ name: 'h', subscribe: durable('S', { consumer: 'h' }), delivery: 'exactly-once', sink }).delivery,
    ).toBe('exactly-once');
    expect(actor({ name: 'i', subscribe: 'x', pipeline }).delivery).toBeUndefined();
  });

  test('delivery: a sink actor on a plain subject is refused exactly-once', () => {
    const error = refusal(() => sinkActor({ name: 'j', subscribe: 'totals', delivery: 'exactly-once', sink }));
    expect(error.message).toContain("'totals' is a plain subject");
  });
});
