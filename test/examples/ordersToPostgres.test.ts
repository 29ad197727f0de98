import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { main, type OrderEvent, type OrdersToPostgresResult, START } from '../../examples/orders-to-postgres/main.ts';
import { createTestSchema, POSTGRES, postgresMissing, type TestSchema } from '../services/postgres.ts';

const missing = await postgresMissing('the orders-to-postgres example test');
const MINUTE = 60_000;

/** The orders table as it should be, computed from the generated events alone. */
function expectedOrders(events: OrderEvent[]) {
  const rows = new Map<string, Record<string, unknown>>();
  for (const e of events) {
    const o = e.order;
    const prev = rows.get(o.id);
    // Cancelled wins over placed, whatever order the events came in.
    if (prev !== undefined && prev.status === 'cancelled') continue;
    rows.set(o.id, {
      order_id: o.id,
      revision: e.type === 'cancelled' ? '1' : '0',
      customer: o.customer,
      country: o.country,
      items: o.lines.reduce((n, l) => n + l.qty, 0),
      total: (o.lines.reduce((n, l) => n + l.qty * l.unitCents, 0) / 100).toFixed(2),
      status: e.type,
      placed_at: new Date(o.placedAt).toISOString(),
    });
  }
  return [...rows.values()].sort((a, b) => String(a.order_id).localeCompare(String(b.order_id)));
}

/** Revenue per minute of placement time: orders and cents, by brute force. */
function expectedRevenue(events: OrderEvent[]) {
  const byMinute = new Map<number, { orders: number; cents: number }>();
  for (const e of events) {
    if (e.type !== 'placed') continue;
    const minute = e.order.placedAt - (e.order.placedAt % MINUTE);
    const m = byMinute.get(minute) ?? { orders: 0, cents: 0 };
    m.orders++;
    m.cents += e.order.lines.reduce((n, l) => n + l.qty * l.unitCents, 0);
    byMinute.set(minute, m);
  }
  return [...byMinute]
    .sort(([a], [b]) => a - b)
    .map(([minute, m]) => ({
      key: `revenue//${minute}-${minute + MINUTE}`,
      minute: new Date(minute).toISOString(),
      orders: m.orders,
      revenue: (m.cents / 100).toFixed(2),
    }));
}

describe.skipIf(missing !== undefined)('orders-to-postgres example', () => {
  let schema: TestSchema;
  let run: OrdersToPostgresResult;
  const lines: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'sluice-orders-pg-'));

  beforeAll(async () => {
    schema = await createTestSchema();
  });
  afterAll(async () => {
    await schema?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  const orders = async () =>
    (
      await schema.pool.query(
        `SELECT order_id, revision, customer, country, items, total, status, placed_at FROM ${schema.table('orders')} ORDER BY order_id`,
      )
    ).rows.map((r) => ({ ...r, placed_at: (r.placed_at as Date).toISOString() }));
  const revenue = async () =>
    (
      await schema.pool.query(
        `SELECT key, minute, orders, revenue FROM ${schema.table('revenue_per_minute')} ORDER BY minute`,
      )
    ).rows.map((r) => ({ ...r, minute: (r.minute as Date).toISOString() }));

  test('runs twice over the stream and drains', async () => {
    run = await main({ schema: schema.name, connection: POSTGRES, dir, print: (l) => lines.push(l) });
    expect(run.drained).toBe(true);
    // The producer sent some events twice: the stream holds more events than there are.
    expect(run.sent.length).toBeGreaterThan(run.events.length);
    expect(run.events.some((e) => e.type === 'cancelled')).toBe(true);
    expect(run.before).toEqual({ orders: 0, cancelled: 0, revenueRows: 0, revenueCents: 0, position: undefined });
    expect(lines.join('\n')).toContain('the replay doubled nothing');
  }, 60_000);

  test('the orders table holds one row per order, equal to the rows computed from the events', async () => {
    const want = expectedOrders(run.events);
    expect(want.length).toBe(new Set(run.events.map((e) => e.order.id)).size);
    expect(await orders()).toEqual(want);
  });

  test('revenue per minute equals a brute-force sum of the placed orders, one row per minute', async () => {
    const want = expectedRevenue(run.events);
    expect(want[0]?.minute).toBe(new Date(START).toISOString());
    expect(await revenue()).toEqual(want);
  });

  test('the replay from sequence 1 changed nothing, and the position is the last sequence that made a row', () => {
    expect(run.afterRun2).toEqual(run.afterRun1);
    expect(run.afterRun1.orders).toBe(new Set(run.events.map((e) => e.order.id)).size);
    // Stream sequence n is sent[n - 1]; a repeated send makes no row.
    const seen = new Set<string>();
    let last = 0;
    run.sent.forEach((e, i) => {
      if (!seen.has(e.eventId)) last = i + 1;
      seen.add(e.eventId);
    });
    expect(run.afterRun1.position).toBe(last);
  });

  test('a second invocation on the same schema finds the rows and leaves them as they were', async () => {
    const ordersBefore = await orders();
    const revenueBefore = await revenue();
    const again = await main({ schema: schema.name, connection: POSTGRES, dir, print: () => {} });
    expect(again.before).toEqual(run.afterRun2);
    expect(again.afterRun2).toEqual(run.afterRun2);
    expect(await orders()).toEqual(ordersBefore);
    expect(await revenue()).toEqual(revenueBefore);
  }, 60_000);
});
