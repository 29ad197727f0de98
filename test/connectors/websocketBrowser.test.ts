import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { actor, createRuntime, type Runtime } from 'sluice';
import { type WebSocketGateway, websocketGateway } from 'sluice/connectors/websocket';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { quietLogger } from '../runtime/helpers.ts';
import { chromiumMissing, launchChromium } from '../services/chromium.ts';

// A page on one loopback origin, the gateway on another, and a runtime whose tumbling window
// results go to `views.1m`: the page subscribes through the gateway's own client module and shows
// the windows; the test reads them from the page.

const TOKEN = 'page-token-0123456789abcdef';
const skip = chromiumMissing("the WebSocket gateway's browser test");

interface Click {
  page: string;
  ts: number;
}

describe.skipIf(skip !== undefined)('websocket gateway - a page in headless chromium', () => {
  let runtime: Runtime;
  let gateway: WebSocketGateway;
  let site: Server;
  let siteUrl: string;
  let browser: Browser;
  let page: Page;
  const errors: string[] = [];

  beforeAll(async () => {
    runtime = createRuntime({ logger: quietLogger() });
    runtime.spawn(
      actor<Click, WindowResult<number>>({
        name: 'page-views',
        subscribe: 'clicks',
        output: 'views.1m',
        pipeline: (in$, ctx) =>
          in$.pipe(
            eventTime((c) => c.ts),
            keyBy((c) => c.page),
            watermarks({ clock: ctx.clock }),
            tumbling({ name: ctx.name, sizeMs: 60_000, aggregate: agg.count() }),
          ),
      }),
    );
    site = createServer();
    await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve));
    siteUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
    gateway = await websocketGateway({
      bus: runtime.bus,
      port: 0,
      origins: [siteUrl],
      logger: quietLogger(),
      tokens: [
        {
          token: TOKEN,
          name: 'wallboard',
          permissions: { subscribe: { allow: ['views.>'] }, publish: { allow: ['clicks'] } },
        },
      ],
    });
    const html = readFileSync(new URL('./fixtures/websocketPage.html', import.meta.url), 'utf8').replace(
      '{{CLIENT_URL}}',
      gateway.clientUrl,
    );
    site.on('request', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(html);
    });
    browser = await launchChromium();
    page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await gateway?.close();
    await new Promise((resolve) => site?.close(resolve));
    await runtime?.stop({ deadlineMs: 1_000 });
  }, 30_000);

  test('the page connects with its token and shows the window results it subscribed to', async () => {
    await page.goto(`${siteUrl}/#token=${TOKEN}`);
    await page.waitForSelector('#status[data-ready="true"]', { timeout: 10_000 });
    expect(await page.textContent('#status')).toBe('connected as wallboard');
    // The token left the address bar.
    expect(page.url()).toBe(`${siteUrl}/`);

    // Clicks published from the page (its publish permission), in event time: the last one moves
    // the watermark past the first minute, which closes its windows.
    const sent = await page.evaluate(
      (clicks) => (globalThis as unknown as { sendClicks: (c: Click[]) => Promise<number> }).sendClicks(clicks),
      [
        { page: '/home', ts: 1_000 },
        { page: '/cart', ts: 5_000 },
        { page: '/home', ts: 30_000 },
        { page: '/home', ts: 61_000 },
      ],
    );
    expect(sent).toBe(4);
    await page.waitForSelector('tr[data-window="/home 0"][data-count="2"]', { timeout: 10_000 });
    await page.waitForSelector('tr[data-window="/cart 0"][data-count="1"]', { timeout: 10_000 });
    const rows = await page.$$eval('#windows tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    expect(rows.sort()).toEqual([
      ['/cart', '00:00', '1'],
      ['/home', '00:00', '2'],
    ]);
    expect(gateway.stats()).toMatchObject({ connections: 1, subscriptions: 1 });
  });

  test('a subscription outside the page token permissions is refused, and the page shows why', async () => {
    const denied = page.locator('#denied[data-code="SLUICE_ERR_PERMISSION"]');
    await denied.waitFor({ timeout: 10_000 });
    expect(await denied.textContent()).toBe(
      "permission denied: 'wallboard' may not subscribe to 'secrets.>': not in the allowed subjects 'views.>'",
    );
    expect(errors).toEqual([]);
  });

  test('a page from an origin the gateway does not allow cannot connect', async () => {
    const other = await browser.newPage();
    try {
      // Same page, other origin: localhost is not 127.0.0.1 to the browser.
      await other.goto(`${siteUrl.replace('127.0.0.1', 'localhost')}/#token=${TOKEN}`);
      await other.waitForSelector('#status[data-failed="true"]', { timeout: 10_000 });
      expect(await other.textContent('#status')).toMatch(/refused or failed \(close 1006\)/);
      expect(gateway.stats().refused[403]).toBe(1);
    } finally {
      await other.close();
    }
  });
});

if (skip !== undefined) test.skip(skip, () => {});
