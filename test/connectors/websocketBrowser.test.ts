import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Click, type LiveViews, main as liveViews } from '../../examples/live-views/main.ts';
import { chromiumMissing, collectErrors, launchChromium } from '../services/chromium.ts';

// The live-views example in a real browser: its page, on one loopback origin, imports the
// gateway's client module from the gateway (another origin), shows the tumbling window results of
// `views.10s` and the refusal of a subscription outside its token's permissions; the test reads
// them from the page.

const TOKEN = 'page-token-0123456789abcdef';
const skip = chromiumMissing("the WebSocket gateway's browser test");

describe.skipIf(skip !== undefined)('websocket gateway - a page in headless chromium', () => {
  let job: LiveViews;
  let browser: Browser;
  let page: Page;
  const errors: string[] = [];

  beforeAll(async () => {
    // No generated clicks: the page sends the ones the test needs.
    job = await liveViews({ port: 0, gatewayPort: 0, token: TOKEN, rate: 0, print: () => {} });
    browser = await launchChromium();
    page = await browser.newPage();
    collectErrors(page, errors);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await job?.stop();
  }, 30_000);

  test('the page connects with its token and shows the window results it subscribed to', async () => {
    await page.goto(`${job.pageUrl}/#token=${TOKEN}`);
    await page.waitForSelector('#status[data-ready="true"]', { timeout: 10_000 });
    expect(await page.textContent('#status')).toBe('connected as wallboard');
    // The token left the address bar.
    expect(page.url()).toBe(`${job.pageUrl}/`);

    // Clicks published from the page (its publish permission), in event time: the last one moves
    // the watermark past the first 10 s, which closes their windows.
    const sent = await page.evaluate(
      (clicks) => (globalThis as unknown as { sendClicks: (c: Click[]) => Promise<number> }).sendClicks(clicks),
      [
        { page: '/home', ts: 1_000 },
        { page: '/cart', ts: 5_000 },
        { page: '/home', ts: 8_000 },
        { page: '/home', ts: 11_000 },
      ],
    );
    expect(sent).toBe(4);
    await page.waitForSelector('tr[data-window="/home 0"][data-count="2"]', { timeout: 10_000 });
    await page.waitForSelector('tr[data-window="/cart 0"][data-count="1"]', { timeout: 10_000 });
    const rows = await page.$$eval('#windows tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    expect(rows.sort()).toEqual([
      ['/cart', '00:00:00', '1'],
      ['/home', '00:00:00', '2'],
    ]);
    expect(job.gateway.stats()).toMatchObject({ connections: 1, subscriptions: 1 });
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
      await other.goto(`${job.pageUrl.replace('127.0.0.1', 'localhost')}/#token=${TOKEN}`);
      await other.waitForSelector('#status[data-failed="true"]', { timeout: 10_000 });
      expect(await other.textContent('#status')).toMatch(/refused or failed \(close 1006\)/);
      expect(job.gateway.stats().refused[403]).toBe(1);
    } finally {
      await other.close();
    }
  });
});

if (skip !== undefined) test.skip(skip, () => {});
