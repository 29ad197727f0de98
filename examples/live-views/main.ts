/**
 * Page views per 10 seconds, live in a browser: `npm run example -- live-views`.
 *
 * A tumbling window actor counts clicks per page into `views.10s`; the WebSocket gateway opens
 * that subject to a page holding the `wallboard` token, which may also publish clicks (the page
 * does, when asked) and may not read anything else. The page is served from its own loopback
 * origin and imports the gateway's client module from the gateway; the gateway accepts only that
 * origin. Clicks are generated in real time (event time is the wall clock) unless `rate` is 0.
 *
 * The page listens on `LIVE_VIEWS_PORT` (default 8080), the gateway on 7430; the token is
 * `LIVE_VIEWS_TOKEN` (a random one when unset), and the URL printed carries it in its fragment.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { actor, createRuntime, type Runtime } from 'sluice';
import { type WebSocketGateway, websocketGateway } from 'sluice/connectors/websocket';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';

export interface Click {
  page: string;
  ts: number;
}

/** Views per page in tumbling windows of 10 s of event time, to `views.10s`. */
export const pageViews = actor<Click, WindowResult<number>>({
  name: 'page-views',
  subscribe: 'clicks',
  output: 'views.10s',
  pipeline: (in$, ctx) =>
    in$.pipe(
      eventTime((c) => c.ts),
      keyBy((c) => c.page),
      watermarks({ clock: ctx.clock }),
      tumbling({ name: ctx.name, sizeMs: 10_000, aggregate: agg.count() }),
    ),
});

export interface LiveViewsOptions {
  /** The page's port; 0 picks a free one. @default 8080 */
  port?: number;
  /** The gateway's port; 0 picks a free one. @default 7430 */
  gatewayPort?: number;
  token?: string;
  /** Clicks generated per second; 0 for none. @default 5 */
  rate?: number;
  print?: (line: string) => void;
}

export interface LiveViews {
  readonly runtime: Runtime;
  readonly gateway: WebSocketGateway;
  /** The page's address, without the token. */
  readonly pageUrl: string;
  readonly token: string;
  stop(): Promise<void>;
}

const PAGES = ['/', '/search', '/product/1', '/cart', '/checkout'];

export async function main(options: LiveViewsOptions = {}): Promise<LiveViews> {
  const print = options.print ?? ((line: string) => void writeSync(1, `${line}\n`));
  const token = options.token ?? process.env.LIVE_VIEWS_TOKEN ?? randomBytes(18).toString('base64url');
  const runtime = createRuntime();
  runtime.spawn(pageViews);

  const site = createServer();
  await new Promise<void>((resolve) =>
    site.listen(options.port ?? Number(process.env.LIVE_VIEWS_PORT ?? 8080), '127.0.0.1', resolve),
  );
  const pageUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
  const gateway = await websocketGateway({
    bus: runtime.bus,
    port: options.gatewayPort ?? 7430,
    origins: [pageUrl],
    tokens: [
      {
        token,
        name: 'wallboard',
        permissions: { subscribe: { allow: ['views.>'] }, publish: { allow: ['clicks'] } },
      },
    ],
  });
  const html = readFileSync(new URL('./page.html', import.meta.url), 'utf8').replace(
    '{{CLIENT_URL}}',
    gateway.clientUrl,
  );
  site.on('request', (req, res) => {
    if (req.url !== '/') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });

  const rate = options.rate ?? 5;
  const timer =
    rate > 0
      ? setInterval(() => {
          const page = PAGES[Math.floor(Math.random() * PAGES.length)] as string;
          void runtime.bus.publish('clicks', { page, ts: Date.now() });
        }, 1000 / rate)
      : undefined;
  print(`live views: ${pageUrl}/#token=${token}`);

  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      clearInterval(timer);
      await gateway.close();
      await new Promise((resolve) => site.close(resolve));
      await runtime.stop();
    })();
    return stopped;
  };
  if (options.print === undefined) {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => void stop().then(() => process.exit(0)));
    }
  }
  return { runtime, gateway, pageUrl, token, stop };
}
