import { connect } from 'node:net';
import { createEnvelope, type Envelope } from 'sluice';
import { CloseCode, GATEWAY_PROTOCOL, websocketGateway } from 'sluice/connectors/websocket';
import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { until } from './conformance.ts';
import { ALICE, BOB, openClient, protocolsFor, refusal, startGateway } from './websocketHelpers.ts';

describe('websocket gateway - authentication', () => {
  test('a valid token in the protocols list opens a connection named by its identity', async () => {
    const { gateway } = await startGateway();
    const alice = await openClient(gateway, ALICE);
    expect(alice.ws.protocol).toBe(GATEWAY_PROTOCOL);
    expect(alice.frames[0]).toMatchObject({ op: 'hello', protocol: GATEWAY_PROTOCOL, name: 'alice' });
    expect(gateway.stats().connections).toBe(1);
  });

  test('a missing or wrong token is refused with 401 before any WebSocket opens', async () => {
    const { gateway } = await startGateway();
    expect(await refusal(gateway, protocolsFor(undefined))).toEqual({
      status: 401,
      body: { error: 'Unauthorized', message: 'a bearer token is required' },
    });
    expect(await refusal(gateway, protocolsFor('not-the-token-0123456789'))).toMatchObject({
      status: 401,
      body: { message: 'the token is not valid' },
    });
    expect(await refusal(gateway, ['sluice.v1', 'sluice.bearer.no+base64url'])).toMatchObject({ status: 400 });
    expect(await refusal(gateway, ['chat'])).toMatchObject({
      status: 400,
      body: { message: "the gateway speaks the protocol 'sluice.v1', and the client offered none of it" },
    });
    expect(gateway.stats()).toMatchObject({ connections: 0, refused: { 400: 2, 401: 2 } });
  });

  test('an Authorization header works for clients that can set one', async () => {
    const { gateway } = await startGateway();
    expect(await refusal(gateway, [], { authorization: 'Basic abc' }).then((r) => [r.status, r.body.message])).toEqual([
      400,
      "the Authorization header must read 'Bearer <token>'",
    ]);
    const { WebSocket } = await import('ws');
    const ws = new WebSocket(gateway.url, { headers: { authorization: `Bearer ${BOB}` } });
    const hello = await new Promise<unknown>((resolve) => ws.once('message', (d) => resolve(JSON.parse(String(d)))));
    expect(hello).toMatchObject({ op: 'hello', name: 'bob' });
    ws.terminate();
  });

  test('an authenticate callback sees the token and the origin and returns the permissions', async () => {
    const seen: unknown[] = [];
    const { gateway } = await startGateway({
      origins: ['http://app.example'],
      authenticate: ({ token, origin, headers }) => {
        seen.push({ token, origin, cookie: headers.cookie });
        return token === 'open-sesame' ? { name: 'carol', permissions: { subscribe: { allow: ['a'] } } } : undefined;
      },
    });
    const carol = await openClient(gateway, 'open-sesame', { origin: 'http://app.example' });
    expect(carol.frames[0]).toMatchObject({ name: 'carol' });
    expect(seen).toEqual([{ token: 'open-sesame', origin: 'http://app.example', cookie: undefined }]);
    // Another origin never reaches the callback.
    expect(await refusal(gateway, protocolsFor('open-sesame'), {}, 'http://evil.example')).toMatchObject({
      status: 403,
      body: { message: "origin 'http://evil.example' is not allowed" },
    });
    expect(seen).toHaveLength(1);
    carol.send({ op: 'sub', sid: 's1', subject: 'b' });
    expect(await carol.next((f) => f.op === 'err')).toMatchObject({ code: 'SLUICE_ERR_PERMISSION', sid: 's1' });
  });

  test('a callback that throws refuses with 500 and is logged; connections past maxConnections get 503', async () => {
    const { gateway, log } = await startGateway({
      maxConnections: 1,
      authenticate: ({ token }) => {
        if (token === 'boom') throw new Error('session store down');
        return { name: 'dave' };
      },
    });
    expect(await refusal(gateway, protocolsFor('boom'))).toMatchObject({ status: 500 });
    expect(log.lines.some((l) => l.startsWith('error: websocket gateway: upgrade failed'))).toBe(true);
    await openClient(gateway, 'any');
    expect(await refusal(gateway, protocolsFor('any'))).toMatchObject({
      status: 503,
      body: { message: 'the gateway holds its maximum of 1 connections' },
    });
  });

  test('a peer that resets its connection while it is being authenticated is let go, without crashing the process', async () => {
    let entered!: () => void;
    const authenticating = new Promise<void>((resolve) => {
      entered = resolve;
    });
    let answer!: (identity: { name: string }) => void;
    const { gateway, log } = await startGateway({
      authenticate: ({ token }) => {
        if (token !== undefined) return { name: token };
        entered();
        return new Promise((resolve) => {
          answer = resolve;
        });
      },
    });
    const url = new URL(gateway.url);
    const socket = connect(Number(url.port), url.hostname);
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(
      'GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sluice.v1\r\n\r\n',
    );
    await authenticating;
    // Node takes its own error listener off a socket it hands to 'upgrade': an error with no
    // listener of the gateway's is an uncaught exception.
    socket.resetAndDestroy();
    await until(() => log.lines.some((l) => l.includes('ECONNRESET')), 'the reset to be logged');
    answer({ name: 'gone' });
    const next = await openClient(gateway, 'next');
    expect(next.frames[0]).toMatchObject({ op: 'hello', name: 'next' });
    expect(gateway.stats().connections).toBe(1);
  });

  test('closing the gateway while a connection is being authenticated refuses it with 503 and does not wait for the callback', async () => {
    let entered!: () => void;
    const authenticating = new Promise<void>((resolve) => {
      entered = resolve;
    });
    const { gateway } = await startGateway({
      authenticate: () => {
        entered();
        return new Promise(() => undefined); // a session store that never answers
      },
    });
    const refused = refusal(gateway, protocolsFor('stuck'));
    await authenticating;
    let closed = false;
    void gateway.close().then(() => {
      closed = true;
    });
    expect(await refused).toMatchObject({ status: 503, body: { message: 'the gateway is closing' } });
    await until(() => closed, 'the gateway to close');
  });

  test('an authenticate that never answers is refused with 503 after authTimeoutMs, and frees its place under maxConnections', async () => {
    const { gateway, log } = await startGateway({
      maxConnections: 1,
      authTimeoutMs: 100,
      authenticate: ({ token }) => (token === 'stuck' ? new Promise(() => undefined) : { name: token ?? 'x' }),
    });
    expect(await refusal(gateway, protocolsFor('stuck'))).toMatchObject({
      status: 503,
      body: { message: 'authenticate did not answer within 100 ms' },
    });
    expect(log.lines).toContain('warn: websocket gateway: refused (503): authenticate did not answer within 100 ms');
    // The one place the stuck upgrade held is free again.
    const next = await openClient(gateway, 'next');
    expect(next.frames[0]).toMatchObject({ op: 'hello', name: 'next' });
  });

  test('refusals are logged once per reason per interval; the next line says how many were left out', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    onTestFinished(() => void vi.useRealTimers());
    const { gateway, log } = await startGateway({ origins: ['https://ok.example'], maxConnections: 1 });
    const refusedLines = (status: number) => log.lines.filter((l) => l.includes(`refused (${status})`));
    for (let i = 0; i < 5; i++) {
      expect(await refusal(gateway, protocolsFor(ALICE), {}, `https://evil${i}.example`)).toMatchObject({
        status: 403,
      });
    }
    expect(refusedLines(403)).toEqual([
      "warn: websocket gateway: refused (403): origin 'https://evil0.example' is not allowed",
    ]);
    vi.setSystemTime(Date.now() + 10_000);
    await refusal(gateway, protocolsFor(ALICE), {}, 'https://evil5.example');
    expect(refusedLines(403)).toHaveLength(2);
    expect(refusedLines(403)[1]).toBe(
      "warn: websocket gateway: refused (403): origin 'https://evil5.example' is not allowed (and 4 more like it in the last 10 s, not logged)",
    );
    // Another reason has a line of its own.
    await openClient(gateway, ALICE, { origin: 'https://ok.example' });
    expect(await refusal(gateway, protocolsFor(ALICE), {}, 'https://ok.example')).toMatchObject({ status: 503 });
    expect(refusedLines(503)).toHaveLength(1);
    expect(gateway.stats().refused).toEqual({ 403: 6, 503: 1 });
  });

  test('a refused peer that keeps its side open loses the socket after closeGraceMs: refusals hold no file descriptors', async () => {
    const { gateway } = await startGateway({ closeGraceMs: 50 });
    const url = new URL(gateway.url);
    // A peer that reads the refusal and never closes: allowHalfOpen keeps its side open after the FIN.
    const socket = connect({ port: Number(url.port), host: url.hostname, allowHalfOpen: true });
    let failed = false;
    socket.on('error', () => {
      failed = true;
    });
    socket.on('close', () => {
      failed = true;
    });
    let response = '';
    socket.on('data', (chunk: Buffer) => {
      response += chunk.toString();
    });
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(
      'GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sluice.v1\r\n\r\n',
    );
    await until(() => response.includes('401 Unauthorized'), 'the refusal');
    // Once the gateway let the socket go, what the peer sends is answered with a reset.
    await until(() => {
      if (!failed) socket.write('x');
      return failed;
    }, 'the refused socket to be destroyed');
    socket.destroy();
  });

  test('options: an identity is required, auth: false only on loopback, tokens are long enough', async () => {
    const { Bus } = await import('sluice');
    const bus = new Bus();
    await expect(websocketGateway({ bus })).rejects.toThrow(/give one of 'tokens', 'authenticate' or 'auth: false'/);
    await expect(websocketGateway({ bus, host: '0.0.0.0', auth: false })).rejects.toThrow(
      "invalid option 'websocketGateway.auth': may be false only on a loopback host, and host is '0.0.0.0'",
    );
    await expect(websocketGateway({ bus, tokens: [{ token: 'short', name: 'x' }] })).rejects.toMatchObject({
      code: 'SLUICE_ERR_OPTIONS',
      option: 'websocketGateway.tokens[0].token',
    });
    await expect(
      websocketGateway({ bus, tokens: [{ token: ALICE, name: 'x', permissions: { publish: { allow: ['a..b'] } } }] }),
    ).rejects.toMatchObject({ code: 'SLUICE_ERR_SUBJECT', subject: 'a..b' });
    const open = await startGateway({ auth: false, permissions: { publish: { allow: [] } } });
    const anonymous = await openClient(open.gateway, undefined);
    expect(anonymous.frames[0]).toMatchObject({ name: 'anonymous' });
    anonymous.send({ op: 'pub', id: 1, subject: 'a', data: 1 });
    expect(await anonymous.next((f) => f.op === 'err')).toMatchObject({ code: 'SLUICE_ERR_PERMISSION' });
    await expect(websocketGateway({ bus, auth: false, overflow: 'block' as never })).rejects.toMatchObject({
      option: 'websocketGateway.overflow',
    });
    const authenticate = () => ({ name: 'x' });
    for (const authTimeoutMs of [0, 1.5, 2 ** 31]) {
      await expect(websocketGateway({ bus, authenticate, authTimeoutMs })).rejects.toMatchObject({
        option: 'websocketGateway.authTimeoutMs',
      });
    }
    await expect(websocketGateway({ bus, auth: false, authTimeoutMs: 100 })).rejects.toThrow(
      "invalid option 'websocketGateway.authTimeoutMs': bounds the 'authenticate' callback; give it with one",
    );
  });
});

describe('websocket gateway - subjects and permissions', () => {
  test('a subscription gets what the bus publishes; a publish reaches the bus and is acknowledged', async () => {
    const { bus, gateway } = await startGateway();
    const alice = await openClient(gateway, ALICE);
    alice.send({ op: 'sub', sid: 'w', subject: 'views.>' });
    expect(await alice.next((f) => f.op === 'ack')).toEqual({ op: 'ack', sid: 'w' });
    await bus.publish('views.1m', { page: '/home', count: 3 }, { key: '/home', headers: { h: 'v' } });
    expect(await alice.next((f) => f.op === 'msg')).toMatchObject({
      sid: 'w',
      subject: 'views.1m',
      data: { page: '/home', count: 3 },
      key: '/home',
      headers: { h: 'v' },
    });
    const got: Envelope[] = [];
    bus.subscribe('clicks', { callback: (env) => void got.push(env) });
    alice.send({ op: 'pub', id: 7, subject: 'clicks', data: { page: '/cart' }, key: 'u1' });
    expect(await alice.next((f) => f.op === 'ack' && f.id === 7)).toEqual({ op: 'ack', id: 7 });
    expect(got.map((e) => [e.subject, e.data, e.key])).toEqual([['clicks', { page: '/cart' }, 'u1']]);
    alice.send({ op: 'unsub', sid: 'w' });
    await alice.next((f) => f.op === 'ack' && f.sid === 'w' && alice.frames.indexOf(f) > 2);
    expect(gateway.stats().subscriptions).toBe(0);
    expect(bus.subscriptions).toBe(1); // the test's own
  });

  test('a message without a finite event time (a late copy forwarded for missing-event-time) is a valid frame, eventTime null', async () => {
    const { bus, gateway } = await startGateway();
    const alice = await openClient(gateway, ALICE);
    alice.send({ op: 'sub', sid: 'late', subject: 'feed.>' });
    await alice.next((f) => f.op === 'ack');
    const raw: string[] = [];
    alice.ws.prependListener('message', (data) => void raw.push(String(data)));
    const late = createEnvelope('clicks', { page: '/x' });
    await bus.forward({ ...late, subject: 'feed.late', eventTime: Number.NaN });
    await bus.forward({ ...late, subject: 'feed.late', eventTime: undefined });
    await bus.forward({ ...late, subject: 'feed.late', eventTime: Number.POSITIVE_INFINITY });
    await alice.next((f) => f.op === 'msg' && alice.frames.filter((g) => g.op === 'msg').length === 3);
    expect(raw.map((text) => (JSON.parse(text) as { eventTime: unknown }).eventTime)).toEqual([null, null, null]);
  });

  test('a denied subscription is refused with an error frame naming the client, subject and rule', async () => {
    const { bus, gateway } = await startGateway();
    const bob = await openClient(gateway, BOB);
    bob.send({ op: 'sub', sid: 's1', subject: 'secrets.keys' });
    const err = await bob.next((f) => f.op === 'err');
    expect(err).toEqual({
      op: 'err',
      for: 'sub',
      sid: 's1',
      code: 'SLUICE_ERR_PERMISSION',
      message: "permission denied: 'bob' may not subscribe to 'secrets.keys': denied by 'secrets.>'",
      subject: 'secrets.keys',
      operation: 'subscribe',
    });
    expect(bus.subscriptions).toBe(0);
    // A wildcard overlapping the deny is allowed, and the denied subjects are filtered out at delivery.
    bob.send({ op: 'sub', sid: 's2', subject: '>' });
    await bob.next((f) => f.op === 'ack' && f.sid === 's2');
    await bus.publish('secrets.keys', 'k');
    await bus.publish('public.news', 'n');
    expect(await bob.next((f) => f.op === 'msg')).toMatchObject({ subject: 'public.news', data: 'n' });
    expect(bob.frames.filter((f) => f.op === 'msg')).toHaveLength(1);
  });

  test('a denied publish is refused and reaches nobody', async () => {
    const { bus, gateway } = await startGateway();
    const got: unknown[] = [];
    bus.subscribe('views.1m', { callback: (env) => void got.push(env.data) });
    const alice = await openClient(gateway, ALICE);
    alice.send({ op: 'pub', id: 'p1', subject: 'views.1m', data: 'forged' });
    expect(await alice.next((f) => f.op === 'err')).toMatchObject({
      for: 'pub',
      id: 'p1',
      code: 'SLUICE_ERR_PERMISSION',
      message:
        "permission denied: 'alice' may not publish to 'views.1m': not in the allowed subjects 'clicks', 'svc.>'",
    });
    expect(got).toEqual([]);
  });

  test('invalid subjects and malformed frames get error frames naming the input and the rule', async () => {
    const { gateway } = await startGateway();
    const alice = await openClient(gateway, ALICE);
    const errOf = async (frame: object | string) => {
      const before = alice.frames.length;
      alice.send(frame);
      return alice.next((f) => f.op === 'err' && alice.frames.indexOf(f) >= before);
    };
    expect(await errOf({ op: 'sub', sid: 'x', subject: 'views..1m' })).toMatchObject({
      code: 'SLUICE_ERR_SUBJECT',
      rule: 'empty-token',
      subject: 'views..1m',
      message: "invalid subject 'views..1m': token 2 is empty; tokens are separated by one dot",
    });
    expect(await errOf({ op: 'pub', id: 1, subject: 'clicks.*', data: 1 })).toMatchObject({
      code: 'SLUICE_ERR_SUBJECT',
      rule: 'wildcard-in-publish',
    });
    expect(await errOf('{not json')).toMatchObject({ code: 'SLUICE_ERR_OPTIONS', field: 'frame' });
    expect(await errOf({ op: 'subscribe', sid: 'x', subject: 'a' })).toMatchObject({
      field: 'frame.op',
      message: "invalid option 'frame.op': must be one of 'sub', 'unsub', 'pub', 'req', got 'subscribe'",
    });
    expect(await errOf({ op: 'sub', subject: 'views.x' })).toMatchObject({ field: 'frame.sid' });
    expect(await errOf({ op: 'pub', id: 2 })).toMatchObject({ field: 'frame.subject', id: 2 });
    expect(await errOf({ op: 'pub', id: 3, subject: 'clicks', headers: { 'bad:name': 'v' } })).toMatchObject({
      code: 'SLUICE_ERR_OPTIONS',
      field: "publish.headers['bad:name']",
      id: 3,
    });
    expect(await errOf({ op: 'unsub', sid: 'nope' })).toMatchObject({
      message: "invalid option 'frame.sid': names no subscription of this connection, got 'nope'",
    });
    // The connection survives bad frames.
    alice.send({ op: 'pub', id: 4, subject: 'clicks', data: 1 });
    await alice.next((f) => f.op === 'ack' && f.id === 4);
  });

  test('a frame over maxPayloadBytes closes the connection with 1009', async () => {
    const { gateway } = await startGateway({ maxPayloadBytes: 1024 });
    const alice = await openClient(gateway, ALICE);
    expect(alice.frames[0]).toMatchObject({ maxPayloadBytes: 1024 });
    alice.send({ op: 'pub', subject: 'clicks', data: 'x'.repeat(2000) });
    expect((await alice.closed).code).toBe(1009);
    await until(() => gateway.stats().connections === 0, 'the connection to be gone');
  });

  test('a connection with too many publishes waiting stops being read, and is read again as they settle', async () => {
    const { bus, gateway } = await startGateway({ maxInFlight: 2 });
    // A mailbox of one that nobody reads yet: every publish after the first waits for room.
    const held = bus.subscribe<number>('clicks', { mailbox: { capacity: 1 } });
    const alice = await openClient(gateway, ALICE);
    for (let id = 1; id <= 10; id++) {
      alice.send({ op: 'pub', id, subject: 'clicks', data: id });
      // Apart, so that each frame comes in a read of its own (those of one read are all handled).
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(alice.frames.filter((f) => f.op === 'ack').map((f) => f.id)).toEqual([1]);
    // Two wait for room; the other seven are still in the socket, unread.
    expect(gateway.stats().inFlight).toBe(2);
    const got: number[] = [];
    for await (const env of held) {
      got.push(env.data);
      if (got.length === 10) break;
    }
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await alice.next((f) => f.op === 'ack' && f.id === 10);
  });

  test('requests get the first reply; a subject with no responder fails at once', async () => {
    const { bus, gateway } = await startGateway();
    bus.subscribe<number>('svc.double', { callback: (env) => bus.respond(env, env.data * 2) });
    const alice = await openClient(gateway, ALICE);
    alice.send({ op: 'req', id: 'r1', subject: 'svc.double', data: 21 });
    expect(await alice.next((f) => f.op === 'reply')).toMatchObject({ id: 'r1', data: 42 });
    alice.send({ op: 'req', id: 'r2', subject: 'svc.none', data: 1 });
    expect(await alice.next((f) => f.op === 'err')).toMatchObject({ id: 'r2', code: 'SLUICE_ERR_NO_RESPONDERS' });
  });

  test('the browser client module is served with the gateway path filled in', async () => {
    const { gateway } = await startGateway({ path: '/live' });
    const res = await fetch(gateway.clientUrl);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    const text = await res.text();
    expect(text).toContain('const GATEWAY_PATH = "/live";');
    expect(text).toContain('export function connect(');
    expect((await fetch(gateway.url.replace('ws:', 'http:'))).status).toBe(426);
  });
});

describe('websocket gateway - backpressure and cleanup', () => {
  test('a client that stops reading is closed as a slow consumer; the server buffer stays bounded and publishers never wait', async () => {
    const maxBufferedBytes = 256 * 1024;
    const queue = 32;
    const { bus, gateway } = await startGateway({ maxBufferedBytes, queue, closeGraceMs: 5_000 });
    const slow = await openClient(gateway, ALICE);
    const fast = await openClient(gateway, ALICE);
    for (const c of [slow, fast]) {
      c.send({ op: 'sub', sid: 'f', subject: 'feed.>' });
      await c.next((f) => f.op === 'ack');
    }
    slow.ws.pause();
    const payload = 'x'.repeat(16 * 1024);
    let published = 0;
    let maxQueued = 0;
    let slowestPublishMs = 0;
    const deadline = Date.now() + 20_000;
    while (gateway.stats().slowConsumers === 0) {
      if (Date.now() > deadline) throw new Error(`no slow consumer after ${published} messages`);
      const t = performance.now();
      await bus.publish('feed.x', payload);
      // A turn of the event loop now and then, so the fast client (in this process) reads.
      if (published % 8 === 0) await new Promise(setImmediate);
      slowestPublishMs = Math.max(slowestPublishMs, performance.now() - t);
      published++;
      maxQueued = Math.max(maxQueued, gateway.stats().queued);
    }
    const frame = JSON.stringify({ op: 'msg', sid: 'f', subject: 'feed.x', data: payload }).length + 200;
    // Kernel buffers took several MB before the socket buffer grew: far more went out than the bound.
    expect(published * payload.length).toBeGreaterThan(2 * maxBufferedBytes);
    expect(gateway.stats().highWaterBytes).toBeLessThanOrEqual(maxBufferedBytes + frame);
    expect(maxQueued).toBeLessThanOrEqual(2 * queue);
    expect(slowestPublishMs).toBeLessThan(1_000);
    // The slow connection's subscription is gone at once; the fast one keeps its own.
    expect(gateway.stats().subscriptions).toBe(1);
    expect(bus.subscriptions).toBe(1);
    // More publishing grows nothing for the closed connection.
    for (let i = 0; i < 500; i++) {
      await bus.publish('feed.x', payload);
      if (i % 8 === 0) await new Promise(setImmediate);
    }
    expect(gateway.stats().highWaterBytes).toBeLessThanOrEqual(maxBufferedBytes + frame);
    // Read again within the grace time, the client gets what was buffered, then the close and its reason.
    slow.ws.resume();
    const closed = await slow.closed;
    expect(closed.code).toBe(CloseCode.SlowConsumer);
    expect(closed.reason).toMatch(/^slow consumer: \d+ bytes unsent and a queue of 32 full$/);
    // The fast client got every message.
    await until(() => fast.frames.filter((f) => f.op === 'msg').length === published + 500, 'the fast client');
    await until(() => gateway.stats().connections === 1, 'the slow connection to be gone');
    expect(gateway.stats().slowConsumers).toBe(1);
  }, 30_000);

  test('a client that disconnects, and a gateway that closes, leave no subscription on the bus', async () => {
    const { bus, gateway } = await startGateway();
    const a = await openClient(gateway, ALICE);
    const b = await openClient(gateway, BOB);
    for (const [c, sid] of [
      [a, 'a1'],
      [a, 'a2'],
      [b, 'b1'],
    ] as const) {
      c.send({ op: 'sub', sid, subject: 'views.>' });
      await c.next((f) => f.op === 'ack' && f.sid === sid);
    }
    expect(bus.subscriptions).toBe(3);
    a.ws.terminate();
    await until(() => bus.subscriptions === 1, "the closed connection's subscriptions to go");
    await gateway.close();
    expect(await b.closed).toEqual({ code: 1001, reason: 'the gateway is closing' });
    expect(bus.subscriptions).toBe(0);
    expect(gateway.stats()).toMatchObject({ connections: 0, subscriptions: 0 });
    await expect(fetch(gateway.clientUrl)).rejects.toThrow();
  });

  test('a second close() resolves when the gateway is closed, not at once', async () => {
    const { bus, gateway } = await startGateway();
    const alice = await openClient(gateway, ALICE);
    alice.send({ op: 'sub', sid: 'w', subject: 'views.>' });
    await alice.next((f) => f.op === 'ack');
    const first = gateway.close();
    await gateway.close();
    expect(gateway.stats().connections).toBe(0);
    expect(bus.subscriptions).toBe(0);
    await first;
  });

  test('a peer that stops answering pings is terminated and its subscriptions removed', async () => {
    const { bus, gateway } = await startGateway({ pingIntervalMs: 50 });
    const alive = await openClient(gateway, ALICE);
    const gone = await openClient(gateway, BOB);
    gone.send({ op: 'sub', sid: 's', subject: 'views.>' });
    await gone.next((f) => f.op === 'ack');
    // A paused socket reads no ping, so it sends no pong: as a peer whose network went away.
    gone.ws.pause();
    await until(() => gateway.stats().connections === 1, 'the silent connection to be terminated');
    expect(bus.subscriptions).toBe(0);
    expect(alive.ws.readyState).toBe(alive.ws.OPEN);
  });

  test('a subscription per connection past maxSubscriptions is refused', async () => {
    const { gateway } = await startGateway({ maxSubscriptions: 2 });
    const alice = await openClient(gateway, ALICE);
    for (const sid of ['1', '2', '3']) alice.send({ op: 'sub', sid, subject: `views.${sid}` });
    expect(await alice.next((f) => f.op === 'err')).toMatchObject({ sid: '3', field: 'frame.sid' });
    expect(gateway.stats().subscriptions).toBe(2);
  });
});

describe('websocket gateway - the client module', () => {
  test('a publish, request or subscription after the connection closed rejects with SLUICE_ERR_CLOSED instead of waiting for ever', async () => {
    const { gateway } = await startGateway();
    // The module is written for a browser's WebSocket; ws's has the same event interface.
    const { WebSocket } = await import('ws');
    const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
    (globalThis as { WebSocket?: unknown }).WebSocket = WebSocket;
    onTestFinished(() => {
      (globalThis as { WebSocket?: unknown }).WebSocket = saved;
    });
    const { connect } = (await import(new URL('../../connectors/websocket/client.js', import.meta.url).href)) as {
      connect(options: { url: string; token: string }): Promise<{
        publish(subject: string, data: unknown): Promise<void>;
        request(subject: string, data: unknown): Promise<unknown>;
        subscribe(subject: string, onMessage: () => void): { ready: Promise<void> };
        close(): Promise<{ code: number }>;
      }>;
    };
    const conn = await connect({ url: gateway.url, token: ALICE });
    await conn.publish('clicks', 1);
    expect(await conn.close()).toMatchObject({ code: 1000 });
    let timer: NodeJS.Timeout | undefined;
    const within = <T>(p: Promise<T>) =>
      Promise.race([
        p,
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => reject(new Error('never settled')), 2_000);
        }),
      ]).finally(() => clearTimeout(timer));
    await expect(within(conn.publish('clicks', 2))).rejects.toMatchObject({ code: 'SLUICE_ERR_CLOSED' });
    await expect(within(conn.request('svc.echo', 3))).rejects.toMatchObject({ code: 'SLUICE_ERR_CLOSED' });
    await expect(within(conn.subscribe('views.1m', () => {}).ready)).rejects.toMatchObject({
      code: 'SLUICE_ERR_CLOSED',
    });
  });
});
