import {
  type Attributes,
  type Context,
  context,
  createNoopMeter,
  type Histogram,
  metrics,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';
import type { Headers } from './envelope.ts';
import { type SourceHealth, type SourceProbe, SourceRegistry } from './sources/registry.ts';

const SCOPE = 'sluice';
const NOOP_METER_CLASS = createNoopMeter().constructor as new () => unknown;
const VERSION = '0.1.0';

/**
 * Counts kept as plain numbers on the hot path; OpenTelemetry reads them through observable
 * instruments when a metric reader collects, so a process without an SDK pays nothing for them.
 */
export interface Counters {
  published: number;
  delivered: number;
  acked: number;
  dropped: number;
  retried: number;
  deadLettered: number;
  refused: number;
  permissionDenied: number;
  restarts: number;
  settlementErrors: number;
  teardownErrors: number;
}

export function newCounters(): Counters {
  return {
    published: 0,
    delivered: 0,
    acked: 0,
    dropped: 0,
    retried: 0,
    deadLettered: 0,
    refused: 0,
    permissionDenied: 0,
    restarts: 0,
    settlementErrors: 0,
    teardownErrors: 0,
  };
}

const COUNTER_NAMES: Record<keyof Counters, [string, string]> = {
  published: ['sluice.messages.published', 'messages published on the bus'],
  delivered: ['sluice.messages.delivered', 'messages handed to an actor or subscriber'],
  acked: ['sluice.messages.acked', 'inputs settled after their outputs were accepted'],
  dropped: ['sluice.messages.dropped', 'messages dropped by a filter, an overflow policy or an unsubscribe'],
  retried: ['sluice.messages.retried', 'delivery attempts after a failure'],
  deadLettered: ['sluice.messages.dead_lettered', 'messages moved to a dead-letter subject'],
  refused: ['sluice.messages.refused', 'tryPublish calls refused by a full mailbox'],
  permissionDenied: ['sluice.permission.denied', 'publish or subscribe calls refused by permissions'],
  restarts: ['sluice.actor.restarts', 'pipeline restarts by the supervisor'],
  settlementErrors: ['sluice.settlement.errors', 'outputs emitted for inputs already settled'],
  teardownErrors: ['sluice.teardown.errors', 'pipeline teardowns (finalize, unsubscribe) that threw'],
};

/** A source of gauges: mailbox depth and in-flight count per actor or subscription. */
export interface GaugeSource {
  readonly name: string;
  readonly depth: number;
  readonly inFlight: number;
}

/** A durable consumer, observed as lag gauges. */
export interface LagSource {
  readonly stream: string;
  readonly name: string;
  lag(): { readonly messages: number; readonly timeMs: number };
}

/**
 * The runtime's telemetry, on `@opentelemetry/api` only: users bring any SDK. One instance per
 * runtime; actors and the bus share its counters and register their gauges.
 */
export class Telemetry {
  readonly counters: Counters;
  readonly #perOwner = new Map<string, Counters>();
  readonly #gauges = new Set<GaugeSource>();
  readonly #lags = new Set<LagSource>();
  /** @internal The connector sources that feed this runtime (`runtime.status().sources`). */
  readonly sources = new SourceRegistry();
  readonly #processing: Histogram;

  constructor() {
    this.counters = newCounters();
    const meter = metrics.getMeter(SCOPE, VERSION);
    for (const key of Object.keys(COUNTER_NAMES) as (keyof Counters)[]) {
      const [name, description] = COUNTER_NAMES[key];
      meter.createObservableCounter(name, { description }).addCallback((result) => {
        for (const [owner, counters] of this.#perOwner) result.observe(counters[key], { 'sluice.actor': owner });
        result.observe(this.counters[key]);
      });
    }
    meter
      .createObservableGauge('sluice.mailbox.depth', { description: 'messages waiting in a mailbox' })
      .addCallback((result) => {
        for (const g of this.#gauges) result.observe(g.depth, { 'sluice.actor': g.name });
      });
    meter
      .createObservableGauge('sluice.actor.in_flight', { description: 'inputs taken and not yet settled' })
      .addCallback((result) => {
        for (const g of this.#gauges) result.observe(g.inFlight, { 'sluice.actor': g.name });
      });
    // Read from the store at collection time only: nothing is paid per message.
    meter
      .createObservableGauge('sluice.consumer.lag', {
        description: 'stored messages a durable consumer has not settled',
      })
      .addCallback((result) => {
        for (const c of this.#lags)
          result.observe(c.lag().messages, { 'sluice.stream': c.stream, 'sluice.consumer': c.name });
      });
    meter
      .createObservableGauge('sluice.consumer.lag_time', {
        description: 'age of the oldest message a durable consumer has not settled',
        unit: 'ms',
      })
      .addCallback((result) => {
        for (const c of this.#lags)
          result.observe(c.lag().timeMs, { 'sluice.stream': c.stream, 'sluice.consumer': c.name });
      });
    this.#processing = meter.createHistogram('sluice.message.processing_time', {
      description: 'time from taking a message to settling it',
      unit: 'ms',
    });
  }

  /** Counters of one actor (also added up in the runtime's totals by the caller). */
  countersOf(owner: string): Counters {
    let c = this.#perOwner.get(owner);
    if (c === undefined) {
      c = newCounters();
      this.#perOwner.set(owner, c);
    }
    return c;
  }

  registerGauge(source: GaugeSource): () => void {
    this.#gauges.add(source);
    return () => this.#gauges.delete(source);
  }

  /** @internal A durable consumer's lag gauges, until the returned function is called. */
  registerLag(source: LagSource): () => void {
    this.#lags.add(source);
    return () => this.#lags.delete(source);
  }

  /**
   * A connector source's lag gauges and its entry in the runtime's status, until it reports
   * `closed()` (see `Source` in runtime/sources/source.ts).
   */
  registerSource(probe: SourceProbe): SourceHealth {
    const lag: LagSource = { stream: probe.stream, name: probe.consumer, lag: () => probe.lag() };
    this.#lags.add(lag);
    return this.sources.register(probe, () => this.#lags.delete(lag));
  }

  /**
   * Whether a metrics SDK is installed (checked when the telemetry is made): timing a message takes
   * two clock reads, paid only when someone collects the histogram.
   */
  readonly timing: boolean = !(metrics.getMeter(SCOPE) instanceof NOOP_METER_CLASS);

  recordProcessing(owner: string, ms: number): void {
    this.#processing.record(ms, { 'sluice.actor': owner });
  }
}

/** Starts the span of one handled message, continuing the trace carried in its headers. */
export function startProcessSpan(actor: string, subject: string, messageId: string, headers: Headers): Span {
  const parent = headers.traceparent === undefined ? ROOT_CONTEXT : propagation.extract(ROOT_CONTEXT, headers);
  const attributes: Attributes = {
    'messaging.system': 'sluice',
    'messaging.operation.type': 'process',
    'messaging.destination.name': subject,
    'messaging.message.id': messageId,
    'messaging.consumer.group.name': actor,
  };
  return trace
    .getTracer(SCOPE, VERSION)
    .startSpan(`process ${subject}`, { kind: SpanKind.CONSUMER, attributes }, parent);
}

/** Ends a span with the outcome of its message. */
export function endSpan(span: Span, error: unknown): void {
  if (error !== undefined) {
    span.recordException(error instanceof Error ? error : String(error));
    span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
  }
  span.end();
}

/** Headers with the W3C trace context of `span` added, for a message published on its behalf. */
export function injectTrace(span: Span | undefined, headers: Headers): Headers {
  if (span === undefined || !trace.isSpanContextValid(span.spanContext())) return headers;
  const carrier: Record<string, string> = { ...headers };
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), carrier);
  return Object.freeze(carrier);
}

/**
 * Headers with the W3C trace context of the active span added, for a message published from inside
 * a span of the caller's (an HTTP handler's): the actor's span then continues that trace. Headers
 * that already carry a `traceparent` are kept as they are. Costs one `context.active()` when no SDK
 * is installed.
 */
export function withActiveTrace(headers: Record<string, string> | undefined): Record<string, string> | undefined {
  if (headers?.traceparent !== undefined) return headers;
  const active = context.active();
  const span = trace.getSpan(active);
  if (span === undefined || !trace.isSpanContextValid(span.spanContext())) return headers;
  const carrier: Record<string, string> = { ...headers };
  propagation.inject(active, carrier);
  return carrier;
}

/** The active context, for code that needs to pass it on. */
export function activeContext(): Context {
  return context.active();
}

/**
 * Whether an OpenTelemetry SDK records spans: spans cost on every message, so they are made only
 * then. The probe span is never ended, so no exporter ever sees it.
 */
export function tracingEnabled(): boolean {
  const span = trace.getTracer(SCOPE, VERSION).startSpan('sluice.probe', { root: true });
  return span.isRecording() || trace.isSpanContextValid(span.spanContext());
}
