// The TypeScript blocks of docs/websocket.md and of README.md's "WebSocket gateway" section,
// verbatim, run by test/docs/snippets.test.ts. A Node `ws` client stands in for the browser, and
// speaks the wire protocol the browser client module speaks.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { createRuntime } from 'sluice';
import { websocketGateway } from 'sluice/connectors/websocket';
import type { WindowResult } from 'sluice/operators';
import { WebSocket } from 'ws';
import { pageViews } from '../live-views/main.ts';

export async function main(): Promise<void> {
  const runtime = createRuntime();
  runtime.spawn(pageViews); // views per page in windows of 10 s, to views.10s

  // Each token stands for an identity and the subjects it may use, as bus.client takes them.
  const gateway = await websocketGateway({
    bus: runtime.bus,
    port: 0, // 7430 by default, on 127.0.0.1
    origins: ['https://wall.example.com'], // a page from anywhere else gets 403
    tokens: [
      {
        token: process.env.WALLBOARD_TOKEN ?? 'wallboard-token-0123456789',
        name: 'wallboard',
        permissions: { subscribe: { allow: ['views.>'] }, publish: { allow: ['clicks'] } },
      },
    ],
  });

  const wall = await open(gateway.url, 'wallboard-token-0123456789', 'https://wall.example.com');
  wall.send({ op: 'sub', sid: 'views', subject: 'views.10s' });
  wall.send({ op: 'sub', sid: 'secrets', subject: 'secrets.>' });
  for (const [i, ts] of [1_000, 2_000, 11_000].entries()) {
    wall.send({ op: 'pub', id: i, subject: 'clicks', data: { page: '/home', ts }, eventTime: ts });
  }
  const msg = await wall.next((f) => f.op === 'msg');
  deepStrictEqual([msg.subject, (msg.data as WindowResult<number>).value], ['views.10s', 2]);
  const denied = await wall.next((f) => f.op === 'err');
  deepStrictEqual([denied.sid, denied.code], ['secrets', 'SLUICE_ERR_PERMISSION']);
  wall.ws.close();

  // Sessions instead of tokens: the callback reads the upgrade request and returns the permissions.
  const sessions = new Map([['b8e1f0c2a9d4', { user: 'ada', team: 'eu' }]]);
  const perUser = await websocketGateway({
    bus: runtime.bus,
    port: 0,
    origins: ['https://app.example.com'], // a must with cookies: any page's WebSocket sends them
    authenticate: ({ headers }) => {
      const id = /(?:^|; )session=([^;]+)/.exec(headers.cookie ?? '')?.[1];
      const session = id === undefined ? undefined : sessions.get(id);
      if (session === undefined) return undefined; // refused with 401
      return { name: session.user, permissions: { subscribe: { allow: [`views.${session.team}.>`] } } };
    },
  });

  const ada = await open(perUser.url, undefined, 'https://app.example.com', 'session=b8e1f0c2a9d4');
  strictEqual(ada.hello.name, 'ada');
  ada.ws.close();
  strictEqual(await refusedWith(perUser.url, 'https://app.example.com'), 401);

  await perUser.close();
  await gateway.close();
  await runtime.stop();
}

interface Frame {
  readonly op: string;
  readonly [field: string]: unknown;
}

async function open(url: string, token: string | undefined, origin: string, cookie?: string) {
  const protocols = ['sluice.v1'];
  if (token !== undefined) protocols.push(`sluice.bearer.${Buffer.from(token).toString('base64url')}`);
  const ws = new WebSocket(url, protocols, { origin, headers: cookie === undefined ? {} : { cookie } });
  const frames: Frame[] = [];
  ws.on('message', (data) => frames.push(JSON.parse(String(data)) as Frame));
  const next = async (match: (f: Frame) => boolean): Promise<Frame> => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const found = frames.find(match);
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`no such frame in ${JSON.stringify(frames)}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  const hello = await next((f) => f.op === 'hello');
  return { ws, hello, next, send: (frame: object) => ws.send(JSON.stringify(frame)) };
}

function refusedWith(url: string, origin: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, ['sluice.v1'], { origin });
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
    ws.on('open', () => resolve(undefined));
    ws.on('error', () => undefined);
  });
}
