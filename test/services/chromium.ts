import { existsSync } from 'node:fs';
import { type Browser, chromium, type Page } from 'playwright-core';

// Debian's chromium, driven by playwright-core: the browser of the dashboard's and the WebSocket
// gateway's tests.

export const CHROMIUM = '/usr/bin/chromium';

/**
 * Why a browser test cannot run here (chromium is not installed), after saying so; undefined when
 * it can. Under CI=true a missing browser is no reason: the test runs, and fails.
 */
export function chromiumMissing(what: string): string | undefined {
  if (existsSync(CHROMIUM) || process.env.CI === 'true') return undefined;
  const reason = `${what} needs ${CHROMIUM}, which is missing: apt-get install -y chromium`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

/** Headless chromium with the flags a container needs (no sandbox, no GPU, no background traffic). */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

/** Keeps the page's uncaught errors and console errors in `errors`, for a test to expect none. */
export function collectErrors(page: Page, errors: string[]): void {
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
}
