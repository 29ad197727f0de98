import { type Attributes, type Meter, metrics } from '@opentelemetry/api';
import { MemoryStore } from 'sluice';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { testRuntime } from '../helpers.ts';

type Observe = (result: { observe(value: number, attributes?: Attributes): void }) => void;

// A meter that keeps the callbacks of observable gauges, so the test can collect them by hand.
const gauges = new Map<string, Observe>();
const meter = {
  createObservableCounter: () => ({ addCallback() {} }),
  createObservableGauge: (name: string) => ({ addCallback: (cb: Observe) => void gauges.set(name, cb) }),
  createHistogram: () => ({ record() {} }),
} as unknown as Meter;

function collect(name: string): [number, Attributes | undefined][] {
  const seen: [number, Attributes | undefined][] = [];
  gauges.get(name)?.({ observe: (value, attributes) => void seen.push([value, attributes]) });
  return seen;
}

beforeAll(() => {
  metrics.setGlobalMeterProvider({ getMeter: () => meter });
});
afterAll(() => metrics.disable());

test('telemetry - each durable consumer reports its lag in messages and time as gauges', async () => {
  const { rt, clock } = testRuntime({ store: new MemoryStore() });
  const c = rt.stream({ name: 'S', subjects: ['s'] }).consumer('c');
  for (let i = 0; i < 3; i++) await rt.bus.publish('s', i);
  await clock.advance(40);
  c.fetch()[0]?.ack();
  const attributes = { 'sluice.stream': 'S', 'sluice.consumer': 'c' };
  expect(collect('sluice.consumer.lag')).toEqual([[2, attributes]]);
  expect(collect('sluice.consumer.lag_time')).toEqual([[40, attributes]]);
  await rt.stop();
  expect(collect('sluice.consumer.lag')).toEqual([]);
});
