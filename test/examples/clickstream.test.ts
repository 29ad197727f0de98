import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import {
  ALLOWED_LATENESS_MS,
  type Click,
  type ClickstreamResult,
  MAX_DISORDER_MS,
  main,
  SESSION_GAP_MS,
} from '../../examples/clickstream-analytics/main.ts';

const MINUTE = 60_000;

/** The final revision of each window result, by key and start. */
function finals<R>(results: { key: string | undefined; start: number; revision: number; value: R }[]): Map<string, R> {
  const out = new Map<string, { revision: number; value: R }>();
  for (const r of results) {
    const id = `${r.key}@${r.start}`;
    const prev = out.get(id);
    if (prev === undefined || r.revision > prev.revision) out.set(id, { revision: r.revision, value: r.value });
  }
  return new Map([...out].map(([k, v]) => [k, v.value]));
}

/**
 * Which clicks a 1-minute tumbling window with bounded out-of-orderness and allowed lateness
 * turns away, computed from the arrival order alone: a click is late when, as it arrives, the
 * watermark (largest event time so far minus the bound, minus 1) is at or past its window's end
 * - 1 + allowed lateness.
 */
function lateClicks(sent: Click[]): Set<Click> {
  const late = new Set<Click>();
  let maxTs = Number.NEGATIVE_INFINITY;
  for (const c of sent) {
    const end = c.ts - (c.ts % MINUTE) + MINUTE;
    if (maxTs - MAX_DISORDER_MS - 1 >= end - 1 + ALLOWED_LATENESS_MS) late.add(c);
    maxTs = Math.max(maxTs, c.ts);
  }
  return late;
}

const id = (c: Click) => `${c.user}@${c.ts}`;

describe('clickstream analytics example', () => {
  let run: ClickstreamResult;
  const lines: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'sluice-clickstream-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('runs to the end and drains', async () => {
    run = await main({ users: 120, minutes: 4, seed: 11, print: (l) => lines.push(l), dir });
    expect(run.drained).toBe(true);
    expect(run.clicks.length).toBeGreaterThan(1000);
    expect(lines.some((l) => l.includes('page views'))).toBe(true);
    expect(lines.some((l) => l.includes('latency ms'))).toBe(true);
  });

  test('page views per page per minute equal a brute-force count of the clicks not turned away as late', () => {
    const late = lateClicks(run.sent);
    expect(late.size).toBeGreaterThan(0);
    expect(new Set(run.late.map(id))).toEqual(new Set([...late].map(id)));
    const expected = new Map<string, number>();
    for (const c of run.clicks) {
      if (late.has(c)) continue;
      const id = `${c.page}@${c.ts - (c.ts % MINUTE)}`;
      expected.set(id, (expected.get(id) ?? 0) + 1);
    }
    expect(finals(run.pageViews)).toEqual(expected);
    // Late data within the allowed lateness re-emitted some windows as updates.
    expect(run.pageViews.some((r) => r.isUpdate)).toBe(true);
  });

  test('the first run was killed midway; the restart resumed at the stored positions and finished the stream', () => {
    expect(run.crash).toBe('SIGKILL');
    expect(run.streamLast).toBe(run.clicks.length);
    const before = new Map(run.before.map((c) => [c.name, c]));
    // Killed once both had settled half the stream: the restart starts past it, with clicks left.
    for (const name of ['page-views', 'latency']) {
      const c = before.get(name);
      expect(c?.position).toBeGreaterThan(Math.ceil(run.clicks.length * 0.5));
      expect(c?.position).toBeLessThanOrEqual(run.clicks.length);
      expect(c?.messages).toBeGreaterThan(0);
    }
    // Sessions still open hold their clicks: that consumer is behind, but not lost.
    expect(before.get('sessions')?.messages).toBeGreaterThan(0);
    for (const c of run.after) {
      expect(c.position).toBe(run.streamLast + 1);
      expect(c.messages).toBe(0);
    }
    expect(lines.join('\n')).toContain('run 1 ended by SIGKILL');
  });

  test('no click lost, none counted twice: page views plus late clicks add up to the stream', () => {
    const counted = run.pageViews.reduce((n, r) => n + r.value, 0);
    expect(counted + run.late.length).toBe(run.clicks.length);
    // Each late click once, under the stream sequence it was delivered with.
    expect(new Set(run.late.map(id)).size).toBe(run.late.length);
    expect(lines.at(-1)).toMatch(/none lost, none counted twice$/);
  });

  test('p95 latency per endpoint per minute is within 1% of the exact value', () => {
    const late = lateClicks(run.sent);
    const byWindow = new Map<string, number[]>();
    for (const c of run.clicks) {
      if (late.has(c)) continue;
      const id = `${c.endpoint}@${c.ts - (c.ts % MINUTE)}`;
      byWindow.set(id, [...(byWindow.get(id) ?? []), c.latencyMs]);
    }
    const got = finals(run.latency);
    expect([...got.keys()].sort()).toEqual([...byWindow.keys()].sort());
    for (const [id, values] of byWindow) {
      values.sort((a, b) => a - b);
      const exact = values[Math.floor(0.95 * (values.length - 1))] as number;
      expect(Math.abs((got.get(id)?.p95 as number) - exact)).toBeLessThanOrEqual(exact * 0.01 + 1e-9);
    }
  });

  test("sessions per user do not overlap, are at least the gap apart, and hold every user's clicks once", () => {
    // A session that grew or merged replaces the results it lists in `supersedes`; later revisions replace earlier ones.
    const replaced = new Set(run.sessions.flatMap((s) => s.supersedes ?? []));
    const latest = new Map<string, (typeof run.sessions)[number]>();
    for (const s of run.sessions) if (!replaced.has(s.idempotencyKey)) latest.set(s.idempotencyKey, s);
    const byUser = new Map<string, { start: number; end: number; clicks: number }[]>();
    for (const s of latest.values()) {
      const list = byUser.get(s.key as string) ?? [];
      list.push({ start: s.start, end: s.end, clicks: s.value.clicks });
      byUser.set(s.key as string, list);
    }
    let total = 0;
    for (const list of byUser.values()) {
      list.sort((a, b) => a.start - b.start);
      for (let i = 1; i < list.length; i++) {
        // Sessions that touched would have merged: the next starts after this one's end.
        expect((list[i] as { start: number }).start).toBeGreaterThan((list[i - 1] as { end: number }).end);
      }
      for (const s of list) expect(s.end - s.start).toBeGreaterThanOrEqual(SESSION_GAP_MS);
      total += list.reduce((n, s) => n + s.clicks, 0);
    }
    expect(total).toBeLessThanOrEqual(run.clicks.length);
    expect(total).toBeGreaterThanOrEqual(run.clicks.length - run.late.length);
  });

  test('a late update is printed only when the numbers it prints changed', () => {
    const marker = '  (update: late data)';
    const last = new Map<string, string>();
    let updates = 0;
    for (const line of lines) {
      // `window  result  key  value`: the first three columns name the window.
      const m = /^(\d\d:\d\d-\d\d:\d\d +(?:page views|latency ms|sessions) +\S+(?: \S+)? +)(.*)$/.exec(line);
      if (m === null) continue;
      const [, id, rest] = m as unknown as [string, string, string];
      const value = rest.endsWith(marker) ? rest.slice(0, -marker.length) : rest;
      if (rest.endsWith(marker)) {
        updates++;
        expect(last.get(id), line).toBeDefined();
        expect(value, line).not.toBe(last.get(id));
      }
      last.set(id, value);
    }
    expect(updates).toBeGreaterThan(0);
  });
});
