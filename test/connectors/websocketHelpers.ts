import { Bus, type Permissions } from 'sluice';
import { BEARER_PREFIX, GATEWAY_PROTOCOL, type WebSocketGateway, websocketGateway } from 'sluice/connectors/websocket';
import { onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { quietLogger } from '../runtime/helpers.ts';

export const ALICE = 'alice-token-0123456789abcdef';
export const BOB = 'bob-token-0123456789abcdef';

/** Alice may read windows and write clicks; Bob may read everything but `secrets.>`. */
export const aliceRights: Permissions = {
  subscribe: { allow: ['views.>', 'feed.>'] },
  publish: { allow: ['clicks', 'svc.>'] },
};
export const bobRights: Permissions = { subscribe: { deny: ['secrets.>'] }, publish: { allow: [] } };

type GatewayOptions = Omit<Parameters<typeof websocketGateway>[0], 'bus'>;

/** A bus and a gateway on a free loopback port, both closed when the test ends. */
export async function startGateway(options: GatewayOptions = {}): Promise<{
  bus: Bus;
  gateway: WebSocketGateway;
  log: ReturnType<typeof quietLogger>;
}> {
  const bus = new Bus();
  const log = quietLogger();
  const auth =
    options.authenticate !== undefined || options.auth !== undefined
      ? {}
      : {
          tokens: [
            { token: ALICE, name: 'alice', permissions: aliceRights },
            { token: BOB, name: 'bob', permissions: bobRights },
          ],
        };
  const gateway = await websocketGateway({ bus, port: 0, logger: log, ...auth, ...options });
  onTestFinished(() => gateway.close());
  return { bus, gateway, log };
}

export interface Frame {
  readonly op: string;
  readonly [field: string]: unknown;
}

/** A Node `ws` client that keeps every frame it got, for tests to wait on. */
export interface TestClient {
  readonly ws: WebSocket;
  readonly frames: Frame[];
  send(frame: object | string): void;
  /** The first frame (from `from` on) that `match` accepts; fails after `ms` of real time. */
  next(match: (f: Frame) => boolean, ms?: number): Promise<Frame>;
  readonly closed: Promise<{ code: number; reason: string }>;
}

export function protocolsFor(token: string | undefined): string[] {
  return token === undefined
    ? [GATEWAY_PROTOCOL]
    : [GATEWAY_PROTOCOL, `${BEARER_PREFIX}${Buffer.from(token).toString('base64url')}`];
}

/** Connects as a browser does (token in the protocols list) and waits for the gateway's hello. */
export async function openClient(
  gateway: WebSocketGateway,
  token: string | undefined,
  options: { origin?: string; maxPayload?: number } = {},
): Promise<TestClient> {
  const ws = new WebSocket(gateway.url, protocolsFor(token), {
    ...(options.origin === undefined ? {} : { origin: options.origin }),
    maxPayload: options.maxPayload ?? 100 * 1024 * 1024,
  });
  const frames: Frame[] = [];
  const waiters = new Set<() => void>();
  ws.on('message', (data) => {
    frames.push(JSON.parse(data.toString()) as Frame);
    for (const w of waiters) w();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  onTestFinished(() => {
    if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
  });
  const client: TestClient = {
    ws,
    frames,
    closed,
    send: (frame) => ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame)),
    next: (match, ms = 5_000) =>
      new Promise<Frame>((resolve, reject) => {
        const check = () => {
          const found = frames.find(match);
          if (found === undefined) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no matching frame within ${ms} ms; got ${JSON.stringify(frames).slice(0, 2000)}`));
        }, ms);
        waiters.add(check);
        check();
      }),
  };
  await client.next((f) => f.op === 'hello');
  return client;
}

/** What the gateway answered an upgrade it refused: its HTTP status and JSON body. */
export function refusal(
  gateway: WebSocketGateway,
  protocols: string[],
  headers: Record<string, string> = {},
  origin?: string,
): Promise<{ status: number; body: { error: string; message: string } }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(gateway.url, protocols, { headers, ...(origin === undefined ? {} : { origin }) });
    ws.on('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    ws.on('open', () => {
      ws.terminate();
      reject(new Error('the gateway accepted the connection'));
    });
    ws.on('error', () => undefined);
  });
}
