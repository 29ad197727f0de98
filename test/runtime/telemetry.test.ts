import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { filter, map } from 'rxjs';
import { actor, type Headers } from 'sluice';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
// Internal: the helper the bus's publish is to call (see the report on bus.ts).
import { withActiveTrace } from '../../runtime/telemetry.ts';
import { collect, flush, testRuntime } from './helpers.ts';

describe('telemetry - spans with an OpenTelemetry SDK', () => {
  let exporter: InMemorySpanExporter;
  let provider: BasicTracerProvider;

  beforeEach(() => {
    exporter = new InMemorySpanExporter();
    provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    trace.setGlobalTracerProvider(provider);
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    const contextManager = new AsyncLocalStorageContextManager();
    contextManager.enable();
    context.setGlobalContextManager(contextManager);
  });

  afterEach(async () => {
    await provider.shutdown();
    trace.disable();
    propagation.disable();
    context.disable();
  });

  /** Two actors in a row: a pipeline that maps on to 'b.in', and a handler that publishes on to 'c.in'. */
  function twoHops() {
    const env = testRuntime();
    const bHeaders: Headers[] = [];
    env.rt.spawn(
      actor<number, number>({
        name: 'first',
        subscribe: 'a.in',
        output: 'b.in',
        pipeline: (in$) => in$.pipe(map((e) => ({ ...e, data: e.data + 1 }))),
      }),
    );
    env.rt.spawn(
      actor<number, never>({
        name: 'second',
        subscribe: 'b.in',
        handle: async (e, ctx) => {
          bHeaders.push(e.headers);
          await ctx.publish('c.in', e.data * 2);
        },
      }),
    );
    const c = collect<number>(env.rt.bus, 'c.in');
    return { ...env, bHeaders, c };
  }

  function spanOf(spans: ReadableSpan[], actorName: string): ReadableSpan {
    const found = spans.filter((s) => s.attributes['messaging.consumer.group.name'] === actorName);
    expect(found).toHaveLength(1);
    return found[0] as ReadableSpan;
  }

  test('a message through two actors makes two spans in one trace, the second a child of the first', async () => {
    const { rt, bHeaders, c } = twoHops();
    await rt.bus.publish('a.in', 1);
    await rt.idle();
    await flush();

    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(2);
    const first = spanOf(spans, 'first');
    const second = spanOf(spans, 'second');
    expect(first.name).toBe('process a.in');
    expect(second.name).toBe('process b.in');
    expect(first.kind).toBe(SpanKind.CONSUMER);
    expect(first.attributes).toMatchObject({
      'messaging.system': 'sluice',
      'messaging.operation.type': 'process',
      'messaging.destination.name': 'a.in',
    });
    expect(second.spanContext().traceId).toBe(first.spanContext().traceId);
    expect(second.parentSpanContext?.spanId).toBe(first.spanContext().spanId);
    expect(first.parentSpanContext).toBeUndefined();
    // The context crossed the bus as a W3C traceparent header.
    expect(bHeaders[0]?.traceparent).toBe(`00-${first.spanContext().traceId}-${first.spanContext().spanId}-01`);
    // What the handler published through ctx carries the second span's context on.
    expect(c[0]?.headers.traceparent).toBe(`00-${second.spanContext().traceId}-${second.spanContext().spanId}-01`);
    expect([first, second].every((s) => s.status.code !== SpanStatusCode.ERROR)).toBe(true);
  });

  test('a message that arrives with a traceparent continues that trace', async () => {
    const { rt } = twoHops();
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parentId = '00f067aa0ba902b7';
    await rt.bus.publish('a.in', 1, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
    await rt.idle();
    await flush();
    const spans = exporter.getFinishedSpans();
    const first = spanOf(spans, 'first');
    expect(first.spanContext().traceId).toBe(traceId);
    expect(first.parentSpanContext?.spanId).toBe(parentId);
    expect(spanOf(spans, 'second').spanContext().traceId).toBe(traceId);
  });

  test("withActiveTrace adds the active span's context to headers that carry none (for the bus's publish)", () => {
    expect(withActiveTrace(undefined)).toBeUndefined();
    trace.getTracer('app').startActiveSpan('http', (span) => {
      const { traceId, spanId } = span.spanContext();
      expect(withActiveTrace({ a: '1' })).toEqual({ a: '1', traceparent: `00-${traceId}-${spanId}-01` });
      const given = { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' };
      expect(withActiveTrace(given)).toBe(given);
      span.end();
    });
  });

  test('a failed attempt ends its span with an error; the retry gets a span of its own in the same trace', async () => {
    const { rt, clock } = testRuntime();
    rt.spawn(
      actor<number, never>({
        name: 'flaky',
        subscribe: 'in',
        retry: { maxAttempts: 2, backoff: { initialMs: 10 } },
        handle: (env) => {
          if (env.attempt === 1) throw new Error('first attempt fails');
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await clock.runAll();
    await rt.idle();
    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(2);
    const [failed, retried] = spans as [ReadableSpan, ReadableSpan];
    expect(failed.status).toEqual({ code: SpanStatusCode.ERROR, message: 'first attempt fails' });
    expect(failed.events.map((e) => e.name)).toContain('exception');
    expect(retried.status.code).not.toBe(SpanStatusCode.ERROR);
  });
});

describe('telemetry - counters', () => {
  test('published, delivered, acked, dropped, retried and deadLettered move per actor and in total', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.second');
    const a = rt.spawn(
      actor<number, number>({
        name: 'first',
        subscribe: 'a.in',
        output: 'b.in',
        pipeline: (in$) => in$.pipe(filter((e) => e.data !== 4)),
      }),
    );
    const b = rt.spawn(
      actor<number, never>({
        name: 'second',
        subscribe: 'b.in',
        retry: { maxAttempts: 2, backoff: { initialMs: 10 } },
        handle: (env) => {
          if (env.data === 3 || (env.data === 2 && env.attempt === 1)) throw new Error(`fails on ${env.data}`);
        },
      }),
    );
    for (const n of [1, 2, 3, 4]) await rt.bus.publish('a.in', n);
    await clock.runAll();
    await rt.idle();
    await flush();

    expect(dlq.map((e) => e.data)).toEqual([3]);
    // first: 3 passed its filter and were published on; 4 was filtered out.
    expect(a.counters).toMatchObject({ delivered: 4, published: 3, acked: 3, dropped: 1, retried: 0, deadLettered: 0 });
    // second: 2 succeeded on its retry; 3 failed both attempts and was dead-lettered.
    expect(b.counters).toMatchObject({ delivered: 3, published: 0, acked: 2, dropped: 0, retried: 2, deadLettered: 1 });
    // Totals: 4 from the source, 3 from first and 1 dead letter published; the dead-letter
    // subscriber's delivery counts too.
    expect(rt.telemetry.counters).toMatchObject({
      published: 8,
      delivered: 8,
      acked: 5,
      dropped: 1,
      retried: 2,
      deadLettered: 1,
    });
  });

  test('without an SDK no spans are made and messages carry no trace headers', async () => {
    const { rt } = testRuntime();
    const out = collect(rt.bus, 'out');
    rt.spawn(actor<number, number>({ name: 'plain', subscribe: 'in', output: 'out', pipeline: (in$) => in$ }));
    await rt.bus.publish('in', 1);
    await rt.idle();
    await flush();
    expect(out).toHaveLength(1);
    expect(out[0]?.headers).toEqual({});
  });
});
