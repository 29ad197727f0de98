import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { actor, createRuntime, MAX_PAGE, MAX_SCAN, OptionsError, REPLAYED_FROM_HEADER } from 'sluice';
import { describe, expect, onTestFinished, test } from 'vitest';
import { MAX_CONNECTIONS } from '../../runtime/admin/server.ts';
import { quietLogger } from '../runtime/helpers.ts';
import { tempDir } from '../runtime/store/harness.ts';
import { adminJob, type Order, READ_TOKEN, TOKEN, until } from './helpers.ts';

interface ActorRow {
  name: string;
  state: string;
  paused: boolean;
  depth: number;
  capacity: number;
  backpressure: string;
  inFlight: number;
  inputs: string[];
  output: string | undefined;
  counters: { acked: number; delivered: number; deadLettered: number };
}
interface Page {
  messages: { seq: number; subject: string; data: Order; headers: Record<string, string> }[];
  next: number | undefined;
  first: number;
  last: number;
}
interface DeadLetters {
  kept: number;
  subjects: {
    subject: string;
    actor: string;
    received: number;
    kept: number;
    replayed: number;
    failedAgain: number;
    purged: number;
    reasons: Record<string, number>;
  }[];
}

async function publishOrders(rt: ReturnType<typeof createRuntime>, from: number, to: number): Promise<void> {
  for (let id = from; id <= to; id++)
    await rt.bus.publish(`orders.${id % 2 === 0 ? 'eu' : 'us'}`, { id, customer: `c${id % 3}` });
}

describe('serve options', () => {
  test('a token is required, at least 16 characters, and token: false only on loopback', async () => {
    const rt = createRuntime();
    await expect(rt.serve({ port: 0 })).rejects.toThrow(/invalid option 'serve.token': a bearer token is required/);
    await expect(rt.serve({ port: 0, token: 'short' })).rejects.toThrow(/at least 16 characters/);
    await expect(rt.serve({ port: 0, token: false, host: '0.0.0.0' })).rejects.toThrow(
      /may be false only on a loopback host, and host is '0.0.0.0'/,
    );
    await expect(rt.serve({ port: 0, token: TOKEN, prt: 1 } as never)).rejects.toBeInstanceOf(OptionsError);
    const server = await rt.serve({ port: 0, token: false });
    expect(server.host).toBe('127.0.0.1');
    const res = await fetch(`${server.url}/api/status`);
    expect(res.status).toBe(200);
    // DNS rebinding: a page served under another name that resolves to 127.0.0.1 is refused.
    const { request } = await import('node:http');
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${server.url}/api/status`, { headers: { host: 'evil.example:80' } }, (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(403);
    await server.close();
    await rt.stop();
  });
});

describe('cross-site requests', () => {
  test("without a token, an action must be JSON from the server's own origin: a form or text/plain post from another site is refused", async () => {
    const rt = createRuntime({ logger: quietLogger() });
    rt.spawn(actor({ name: 'a', subscribe: 'a', handle: () => undefined }));
    const server = await rt.serve({ port: 0, token: false });
    try {
      const isPaused = async () =>
        ((await (await fetch(`${server.url}/api/actors`)).json()) as { name: string; paused: boolean }[]).find(
          (a) => a.name === 'a',
        )?.paused;
      const pause = (headers: Record<string, string>) =>
        fetch(`${server.url}/api/actors/pause`, { method: 'POST', headers, body: JSON.stringify({ actor: 'a' }) });
      // What a page on another site can send without a preflight: refused, and the actor runs on.
      const plain = await pause({ 'content-type': 'text/plain', origin: 'https://evil.example' });
      expect(plain.status).toBe(415);
      const form = await pause({ 'content-type': 'application/x-www-form-urlencoded' });
      expect(form.status).toBe(415);
      // JSON claiming another origin, or another site by the browser's own header: refused.
      const foreign = await pause({ 'content-type': 'application/json', origin: 'http://localhost:1' });
      expect(foreign.status).toBe(403);
      const sameSite = await pause({ 'content-type': 'application/json', 'sec-fetch-site': 'same-site' });
      expect(sameSite.status).toBe(403);
      expect(await isPaused()).toBe(false);
      // The dashboard (same origin) and the CLI (no origin) act.
      const host = new URL(server.url).host;
      const own = await pause({
        'content-type': 'application/json',
        origin: `http://${host}`,
        'sec-fetch-site': 'same-origin',
      });
      expect(own.status).toBe(200);
      expect(await isPaused()).toBe(true);
      const cli = await fetch(`${server.url}/api/actors/resume`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ actor: 'a' }),
      });
      expect(cli.status).toBe(200);
      expect(await isPaused()).toBe(false);
    } finally {
      await server.close();
      await rt.stop();
    }
  });

  test('connections are bounded: anyone who reaches the port cannot take the file descriptors the job needs', async () => {
    const { server } = await adminJob();
    const sockets: Socket[] = [];
    onTestFinished(() => {
      for (const s of sockets) s.destroy();
    });
    const open = () =>
      new Promise<Socket>((resolve, reject) => {
        const s = connect(server.port, '127.0.0.1', () => resolve(s));
        s.on('error', reject);
        sockets.push(s);
      });
    /** The status line of a GET on a connection of its own, or '' when the server closed it first. */
    const statusLine = async () => {
      const s = await open();
      s.on('error', () => undefined);
      s.write(`GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`);
      return new Promise<string>((resolve) => {
        let text = '';
        s.on('data', (d: Buffer) => {
          text += d.toString();
          if (text.includes('\r\n')) {
            resolve(text.slice(0, text.indexOf('\r\n')));
            s.destroy();
          }
        });
        s.on('close', () => resolve(''));
      });
    };
    expect(await statusLine()).toBe('HTTP/1.1 200 OK');
    // Connections that send nothing: each would hold a descriptor until the headers time out.
    const idle: Socket[] = [];
    for (let i = 0; i < MAX_CONNECTIONS; i++) idle.push(await open());
    expect(await statusLine()).toBe('');
    for (const s of idle) s.destroy();
    await until(async () => expect(await statusLine()).toBe('HTTP/1.1 200 OK'));
  });

  test('a request target that is no path is a 400, not a server error', async () => {
    const { server, log } = await adminJob();
    const { request } = await import('node:http');
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: server.host, port: server.port, path: '//', method: 'GET' }, (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(400);
    expect(log.lines.join('\n')).not.toContain('Invalid URL');
  });
});

describe('authentication and rights', () => {
  test('no token or a wrong one is 401; the read token reads but every action is 403 and audited', async () => {
    const { get, post, server } = await adminJob();
    expect((await get('/api/status', '')).status).toBe(401);
    const wrong = await get<{ error: { message: string } }>('/api/actors', 'x'.repeat(30));
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.message).toBe('the token was refused');
    expect((await get('/api/actors', READ_TOKEN)).status).toBe(200);
    const actions: [string, unknown][] = [
      ['/api/publish', { subject: 'orders.eu', data: {} }],
      ['/api/deadletters/replay', { all: true }],
      ['/api/deadletters/purge', { all: true }],
      ['/api/consumers/reset', { stream: 'ORDERS', consumer: 'enrich', seq: 1 }],
      ['/api/actors/pause', { actor: 'enrich' }],
      ['/api/actors/resume', { actor: 'enrich' }],
    ];
    for (const [path, body] of actions) {
      const res = await post<{ error: { code: string; message: string } }>(path, body, READ_TOKEN);
      expect(res.status, path).toBe(403);
      expect(res.body.error.message).toBe('this token may read but not act');
    }
    expect((await post('/api/actors/pause', { actor: 'enrich' }, '')).status).toBe(401);
    const refused = server.audit.filter((e) => e.outcome === 'refused');
    expect(refused.map((e) => e.action)).toEqual([
      'publish',
      'deadletters/replay',
      'deadletters/purge',
      'consumers/reset',
      'actors/pause',
      'actors/resume',
      '/api/actors/pause',
    ]);
    expect(refused[0]?.caller).toBe('read-token');
    expect(refused.at(-1)?.caller).toBe('unauthenticated');
  });

  test('refused requests without a credential cannot push what operators did out of the audit log, nor flood its file', async () => {
    const dir = tempDir();
    const auditLog = join(dir, 'audit.jsonl');
    const { post, server } = await adminJob({ auditLog });
    expect((await post('/api/actors/pause', { actor: 'enrich' })).status).toBe(200);
    const start = Date.now();
    for (let i = 0; i < 1200; i++) await post('/api/actors/resume', { actor: 'enrich' }, 'y'.repeat(30));
    const seconds = Math.ceil((Date.now() - start) / 1000) + 1;
    const entries = server.audit;
    // The operator's pause is still there, with the last 100 refusals after it.
    expect(entries[0]).toMatchObject({ action: 'actors/pause', caller: 'token', outcome: 'ok' });
    expect(entries.filter((e) => e.caller === 'unauthenticated')).toHaveLength(100);
    await server.close();
    const lines = readFileSync(auditLog, 'utf8').trim().split('\n');
    // At most ten a second reach the file, and a line for a second that left some out says how many.
    const refusals = lines.filter((l) => (JSON.parse(l) as { caller: string }).caller === 'unauthenticated');
    expect(refusals.length).toBeLessThanOrEqual(11 * seconds);
    expect(lines.some((l) => l.includes('not logged one by one'))).toBe(true);
    expect(lines[0]).toContain('actors/pause');
  });

  test('a read-only server refuses every action, even with the full token', async () => {
    const { get, post, rt } = await adminJob({ readOnly: true });
    expect((await get<{ readOnly: boolean }>('/api/status')).body.readOnly).toBe(true);
    const res = await post<{ error: { message: string } }>('/api/actors/pause', { actor: 'enrich' });
    expect(res.status).toBe(403);
    expect(res.body.error.message).toBe('the admin API is read-only');
    expect((await post('/api/publish', { subject: 'orders.eu', data: { id: 1, customer: 'a' } })).status).toBe(403);
    expect(rt.actor('enrich')?.counters.delivered).toBe(0);
  });
});

describe('reads', () => {
  test('status, actors with backpressure, streams, lag and the topology wiring', async () => {
    const { get, rt } = await adminJob();
    await publishOrders(rt, 1, 20);
    await rt.idle();
    const status = await get<{ actors: { total: number; running: number }; streams: number }>('/api/status');
    expect(status.body.actors).toMatchObject({ total: 2, running: 2 });
    expect(status.body.streams).toBe(1);
    const actors = (await get<ActorRow[]>('/api/actors')).body;
    const enrich = actors.find((a) => a.name === 'enrich') as ActorRow;
    expect(enrich).toMatchObject({
      state: 'running',
      paused: false,
      depth: 0,
      backpressure: 'OK',
      inputs: ['$SLUICE.deliver.ORDERS.enrich'],
      output: 'audit.orders',
    });
    expect(enrich.counters.acked).toBe(20);
    const streams = (
      await get<{ name: string; messages: number; consumers: { name: string; position: number }[] }[]>('/api/streams')
    ).body;
    expect(streams).toEqual([
      expect.objectContaining({
        name: 'ORDERS',
        messages: 20,
        consumers: [expect.objectContaining({ name: 'enrich', position: 21 })],
      }),
    ]);
    const lag = (await get<{ name: string; messages: number; actors: string[] }[]>('/api/lag')).body;
    expect(lag).toEqual([expect.objectContaining({ name: 'enrich', messages: 0, actors: ['enrich'] })]);
  });

  test('the backpressure indicator follows the mailbox fill: OK, LOW, HIGH', async () => {
    const { backpressure } = await import('../../runtime/admin/views.ts');
    expect([0, 10, 11, 50, 51, 100].map((d) => backpressure(d, 100))).toEqual([
      'OK',
      'OK',
      'LOW',
      'LOW',
      'HIGH',
      'HIGH',
    ]);
  });

  test('the message browser pages a stream from a sequence or a time, filtered, within bounds', async () => {
    const { get, rt } = await adminJob();
    await publishOrders(rt, 1, 30);
    const first = (await get<Page>('/api/messages?stream=ORDERS&limit=10')).body;
    expect(first.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(first.next).toBe(11);
    expect(first.messages[0]?.data).toEqual({ id: 1, customer: 'c1' });
    expect(first.messages[0]?.headers['sluice-stream-sequence']).toBe('1');
    const last = (await get<Page>('/api/messages?stream=ORDERS&from=25&limit=10')).body;
    expect(last.messages.map((m) => m.seq)).toEqual([25, 26, 27, 28, 29, 30]);
    expect(last.next).toBeUndefined();
    const eu = (await get<Page>('/api/messages?stream=ORDERS&subject=orders.eu&limit=3')).body;
    expect(eu.messages.map((m) => m.data.id)).toEqual([2, 4, 6]);
    const text = (await get<Page>('/api/messages?stream=ORDERS&contains=%22c2%22&limit=2')).body;
    expect(text.messages.map((m) => m.data.id)).toEqual([2, 5]);
    const future = (await get<Page>(`/api/messages?stream=ORDERS&fromTime=${Date.now() + 60_000}`)).body;
    expect(future.messages).toEqual([]);
    const past = (await get<Page>('/api/messages?stream=ORDERS&fromTime=2000-01-01T00:00:00Z&limit=1')).body;
    expect(past.messages[0]?.seq).toBe(1);
    for (const limit of [0, MAX_PAGE + 1]) {
      const res = await get<{ error: { message: string } }>(`/api/messages?stream=ORDERS&limit=${limit}`);
      expect(res.status).toBe(400);
      expect(res.body.error.message).toContain(`invalid option 'limit': must be an integer from 1 to ${MAX_PAGE}`);
    }
    expect((await get('/api/messages?stream=NOPE')).status).toBe(404);
    expect((await get('/api/messages?stream=ORDERS&from=-1')).status).toBe(400);
  });

  test('a subject filter that is no subject pattern is a 400 that says why, not a page where nothing matched', async () => {
    const { get, post, rt } = await adminJob();
    await publishOrders(rt, 1, 3);
    for (const subject of ['orders..eu', 'orders.>.eu', 'orders eu']) {
      const res = await get<{ error: { code: string; message: string } }>(
        `/api/messages?stream=ORDERS&subject=${encodeURIComponent(subject)}`,
      );
      expect(res.status, subject).toBe(400);
      expect(res.body.error.code).toBe('SLUICE_ERR_SUBJECT');
      expect(res.body.error.message).toContain(`invalid subject '${subject}'`);
    }
    const replay = await post<{ error: { code: string } }>('/api/deadletters/replay', {
      stream: 'ORDERS',
      subject: 'orders..eu',
    });
    expect(replay.status).toBe(400);
    expect(replay.body.error.code).toBe('SLUICE_ERR_SUBJECT');
  });

  test('the audit log is read a page of 1 to 1000 entries at a time: 0 is no way to ask for all of it', async () => {
    const { get, post } = await adminJob();
    for (let i = 0; i < 3; i++) await post('/api/actors/pause', { actor: 'enrich' });
    expect((await get<unknown[]>('/api/audit?limit=2')).body).toHaveLength(2);
    expect((await get<unknown[]>('/api/audit')).body).toHaveLength(3);
    for (const limit of [0, 1001]) {
      const res = await get<{ error: { message: string } }>(`/api/audit?limit=${limit}`);
      expect(res.status, `limit=${limit}`).toBe(400);
      expect(res.body.error.message).toContain("invalid option 'limit': must be an integer from 1 to 1000");
    }
  });

  test('a page of dead letters is bounded in letters read, as a stream page is, and says where to go on', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    onTestFinished(() => rt.stop().then(() => undefined));
    const server = await rt.serve({ port: 0, token: TOKEN, deadLetters: 2 * MAX_SCAN });
    onTestFinished(() => server.close());
    // Only the last letter holds the text: a filter reads every payload before it to find it.
    for (let i = 1; i <= 2 * MAX_SCAN; i++)
      await rt.bus.publish('$DLQ.billing', { i, note: i === 2 * MAX_SCAN ? 'needle' : '' });
    const page = async (after: number) => {
      const res = await fetch(`${server.url}/api/deadletters/messages?contains=needle&after=${after}`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      return (await res.json()) as { messages: { seq: number }[]; next: number | undefined };
    };
    const first = await page(0);
    expect(first.messages).toEqual([]);
    expect(first.next).toBeGreaterThan(0);
    expect(first.next).toBeLessThanOrEqual(MAX_SCAN);
    let next = first.next;
    let found: { seq: number }[] = [];
    for (let pages = 1; next !== undefined && found.length === 0; pages++) {
      expect(pages).toBeLessThan(2 * MAX_SCAN);
      const p = await page(next);
      found = p.messages;
      next = p.next;
    }
    expect(found.map((m) => m.seq)).toEqual([2 * MAX_SCAN]);
    expect(next).toBeUndefined();
  });

  test('the state inspector reads an actor keyed state by key, pending writes included', async () => {
    const { get, rt } = await adminJob();
    await publishOrders(rt, 1, 6);
    await rt.idle();
    const got = await get<{ found: boolean; data: unknown }>('/api/state?actor=enrich&key=customer:c0');
    expect(got.body).toMatchObject({ found: true, data: 2 });
    expect((await get<{ found: boolean }>('/api/state?actor=enrich&key=nobody')).body.found).toBe(false);
    await until(async () => {
      const keys = (await get<{ keys: string[] }>('/api/state/keys?actor=enrich')).body.keys;
      expect(keys).toEqual(['customer:c0', 'customer:c1', 'customer:c2']);
    });
    expect((await get('/api/state?actor=audit&key=x')).status).toBe(404);
    expect((await get('/api/state?actor=ghost&key=x')).status).toBe(404);
    const cps = (
      await get<{ actors: { name: string; commits: number; positions: Record<string, number> }[] }>('/api/checkpoints')
    ).body;
    expect(cps.actors[0]).toMatchObject({ name: 'enrich', positions: { 'ORDERS/enrich': 7 } });
    expect(cps.actors[0]?.commits).toBeGreaterThan(0);
  });

  test('the live feed sends ticks and each dead letter as it arrives', async () => {
    const { rt, server, job } = await adminJob();
    const controller = new AbortController();
    const res = await fetch(`${server.url}/api/events`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: controller.signal,
    });
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    const readUntil = async (what: string) => {
      while (!text.includes(what)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`feed ended before '${what}'`);
        text += new TextDecoder().decode(value);
      }
    };
    await readUntil('event: tick');
    job.broken = true;
    await rt.bus.publish('orders.eu', { id: 7, customer: 'a' });
    await readUntil('event: deadletter');
    expect(text).toContain('customer service down for order 7');
    controller.abort();
  });

  test('a burst of dead letters written in one turn does not cut a client that reads the feed as fast as it can', async () => {
    const { rt, server } = await adminJob();
    const controller = new AbortController();
    onTestFinished(() => controller.abort());
    const res = await fetch(`${server.url}/api/events`, {
      headers: { authorization: `Bearer ${TOKEN}` },
      signal: controller.signal,
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    let ended = false;
    void (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
    })()
      .catch(() => undefined)
      .finally(() => {
        ended = true;
      });
    await until(() => expect(text).toContain('event: tick'));
    // 200 frames of 8 KB, 1.6 MB, most written in one turn: far past the feed's 256 KiB backlog
    // before the client had any turn to read.
    const big = 'x'.repeat(8000);
    await Promise.all(Array.from({ length: 200 }, (_, i) => rt.bus.publish('$DLQ.billing', { i, big })));
    await until(async () => {
      if (!text.includes('"marker":true')) await rt.bus.publish('$DLQ.billing', { marker: true });
      expect(ended).toBe(false);
      expect(text).toContain('"marker":true');
    });
  });

  test('a feed client that reads nothing is dropped once it left its backlog unread for a sample interval', async () => {
    const { rt, server } = await adminJob();
    const socket = connect(server.port, '127.0.0.1');
    onTestFinished(() => void socket.destroy());
    let closed = false;
    socket.on('close', () => {
      closed = true;
    });
    socket.on('error', () => undefined);
    socket.write(`GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`);
    // Reads the headers and the first tick, then nothing more.
    await new Promise<void>((resolve) => socket.once('data', () => resolve()));
    socket.pause();
    const big = 'x'.repeat(8000);
    // Enough to fill the kernel's buffers on both ends and the feed's backlog behind them.
    for (let burst = 0; burst < 40; burst++) {
      await Promise.all(Array.from({ length: 100 }, (_, i) => rt.bus.publish('$DLQ.billing', { i, big })));
    }
    const tick = (server as unknown as { tick(): void }).tick.bind(server);
    tick();
    tick();
    // Read now: a feed still served would go on; a dropped one ends after what was sent.
    socket.resume();
    await until(() => expect(closed).toBe(true));
  });
});

describe('actions', () => {
  test('a dead letter is listed with its reason, replayed by id once fixed, and handled', async () => {
    const { get, post, rt, job, server } = await adminJob();
    job.broken = true;
    await publishOrders(rt, 1, 3);
    await until(async () => expect((await get<DeadLetters>('/api/deadletters')).body.kept).toBe(3));
    const dl = (await get<DeadLetters>('/api/deadletters')).body;
    expect(dl.subjects).toEqual([
      expect.objectContaining({
        subject: '$DLQ.enrich',
        actor: 'enrich',
        received: 3,
        kept: 3,
        reasons: { 'customer service down for order <n>': 3 },
      }),
    ]);
    const peek = (await get<Page>('/api/deadletters/messages?subject=$DLQ.enrich&limit=2')).body;
    expect(peek.messages.map((m) => m.data.id)).toEqual([1, 2]);
    expect(peek.next).toBe(2);
    expect(peek.messages[0]?.headers['sluice-original-subject']).toBe('orders.us');

    job.broken = false;
    const acked = rt.actor('enrich')?.counters.acked ?? 0;
    const one = await post<{ replayed: number }>('/api/deadletters/replay', { ids: [peek.messages[0]?.seq] });
    expect(one.body.replayed).toBe(1);
    await until(() => expect(rt.actor('enrich')?.counters.acked).toBe(acked + 1));
    // Replayed into the stream the input came from, marked with the letter it came from.
    const stored = (await get<Page>('/api/messages?stream=ORDERS&from=4')).body.messages;
    expect(stored.map((m) => m.data.id)).toEqual([1]);
    expect(stored[0]?.headers[REPLAYED_FROM_HEADER]).toBeDefined();
    expect(stored[0]?.headers['sluice-error']).toBeUndefined();

    const filtered = await post<{ replayed: number }>('/api/deadletters/replay', { reason: 'order 3' });
    expect(filtered.body.replayed).toBe(1);
    const all = await post<{ replayed: number }>('/api/deadletters/replay', { all: true });
    expect(all.body.replayed).toBe(1);
    await until(() => expect(rt.actor('enrich')?.counters.acked).toBe(acked + 3));
    const after = (await get<DeadLetters>('/api/deadletters')).body.subjects[0];
    expect(after).toMatchObject({ kept: 0, replayed: 3, failedAgain: 0 });
    expect(server.audit.map((e) => [e.action, e.outcome, e.detail])).toEqual([
      ['deadletters/replay', 'ok', 'replayed 1 of 1'],
      ['deadletters/replay', 'ok', 'replayed 1 of 1'],
      ['deadletters/replay', 'ok', 'replayed 1 of 1'],
    ]);
  });

  test('a replayed letter that fails again is counted as such; a replay needs a selection', async () => {
    const { get, post, rt, job } = await adminJob();
    job.broken = true;
    await publishOrders(rt, 1, 1);
    await until(async () => expect((await get<DeadLetters>('/api/deadletters')).body.kept).toBe(1));
    const none = await post<{ error: { message: string } }>('/api/deadletters/replay', {});
    expect(none.status).toBe(400);
    expect(none.body.error.message).toContain('select letters by subject, ids, reason or fromSeq, or give all: true');
    // fromSeq is a stream sequence: alone it would select every letter kept in memory.
    const bare = await post<{ error: { message: string } }>('/api/deadletters/replay', { fromSeq: 5 });
    expect(bare.status).toBe(400);
    expect(bare.body.error.message).toContain('selects letters of a stream: give stream as well');
    expect((await get<DeadLetters>('/api/deadletters')).body.subjects[0]).toMatchObject({ replayed: 0, kept: 1 });
    await post('/api/deadletters/replay', { subject: '$DLQ.enrich' });
    await until(async () => {
      const s = (await get<DeadLetters>('/api/deadletters')).body.subjects[0];
      expect(s).toMatchObject({ received: 2, replayed: 1, failedAgain: 1, kept: 1 });
    });
  });

  test('a long replay streams its progress and gives the event loop back as it goes', async () => {
    const { get, post, rt, job, server } = await adminJob();
    job.broken = true;
    await Promise.all(Array.from({ length: 600 }, (_, i) => rt.bus.publish('orders.eu', { id: i, customer: 'x' })));
    await until(async () => expect((await get<DeadLetters>('/api/deadletters')).body.kept).toBe(600), 15_000);
    job.broken = false;
    let turns = 0;
    const ticker = setInterval(() => turns++, 0);
    const res = await fetch(`${server.url}/api/deadletters/replay`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, accept: 'application/x-ndjson', 'content-type': 'application/json' },
      body: JSON.stringify({ all: true }),
    });
    const lines = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    clearInterval(ticker);
    expect(lines.at(-1)).toMatchObject({ replayed: 600, total: 600 });
    expect(turns).toBeGreaterThan(1);
    void post;
  });

  test('one replay at a time: a second one while the first runs is refused, and no letter is published twice', async () => {
    const { get, post, rt } = await adminJob();
    let handled = 0;
    rt.spawn(actor({ name: 'slow', subscribe: 'slow.x', mailbox: { capacity: 10 }, handle: () => void handled++ }));
    // 100 letters of 'slow.x', whose actor is paused: past its mailbox of 10 the replay waits.
    for (let i = 0; i < 100; i++)
      await rt.bus.publish('$DLQ.slow', i, { headers: { 'sluice-original-subject': 'slow.x' } });
    await until(async () => expect((await get<DeadLetters>('/api/deadletters')).body.kept).toBe(100));
    await post('/api/actors/pause', { actor: 'slow' });
    const first = post<{ replayed: number }>('/api/deadletters/replay', { subject: '$DLQ.slow' });
    await until(async () => {
      const row = (await get<ActorRow[]>('/api/actors')).body.find((a) => a.name === 'slow') as ActorRow;
      expect(row.depth).toBe(10);
    });
    const second = await post<{ error: { message: string } }>('/api/deadletters/replay', { subject: '$DLQ.slow' });
    expect(second.status).toBe(409);
    expect(second.body.error.message).toContain('a replay is running');
    await post('/api/actors/resume', { actor: 'slow' });
    expect((await first).body.replayed).toBe(100);
    await until(() => expect(handled).toBe(100));
    // Once it ended, the next one may run: nothing is left to replay.
    const next = await post<{ replayed: number }>('/api/deadletters/replay', { subject: '$DLQ.slow' });
    expect(next.status).toBe(200);
    expect(next.body.replayed).toBe(0);
    expect(handled).toBe(100);
  });

  test('purge drops the letters of a subject', async () => {
    const { get, post, rt, job } = await adminJob();
    job.broken = true;
    await publishOrders(rt, 1, 4);
    await until(async () => expect((await get<DeadLetters>('/api/deadletters')).body.kept).toBe(4));
    const res = await post<{ purged: number }>('/api/deadletters/purge', { subject: '$DLQ.enrich' });
    expect(res.body.purged).toBe(4);
    expect((await get<DeadLetters>('/api/deadletters')).body.subjects[0]).toMatchObject({ kept: 0, purged: 4 });
    expect((await post('/api/deadletters/purge', {})).status).toBe(400);
  });

  test('a durable consumer is reset to a sequence or a time and reads again from there', async () => {
    const { get, post, rt } = await adminJob();
    await publishOrders(rt, 1, 10);
    await rt.idle();
    const delivered = rt.actor('enrich')?.counters.delivered ?? 0;
    const res = await post<{ before: number; position: number }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      seq: 6,
    });
    expect(res.body).toMatchObject({ before: 11, position: 6 });
    await until(() => expect(rt.actor('enrich')?.counters.delivered).toBe(delivered + 5));
    await rt.idle();
    const byTime = await post<{ position: number }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      time: 0,
    });
    expect(byTime.body.position).toBe(1);
    await until(() => expect(rt.actor('enrich')?.counters.delivered).toBe(delivered + 15));
    const both = await post<{ error: { message: string } }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
    });
    expect(both.status).toBe(400);
    expect(both.body.error.message).toContain('give either seq (a stream sequence) or time (epoch ms)');
    expect((await post('/api/consumers/reset', { stream: 'ORDERS', consumer: 'ghost', seq: 1 })).status).toBe(404);
    // Past the stream's next sequence, the consumer would skip what comes next and show no lag.
    const beyond = await post<{ error: { message: string } }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      seq: 1e12,
    });
    expect(beyond.status).toBe(400);
    expect(beyond.body.error.message).toContain("must be at most the stream's next sequence, 11");
    const atEnd = await post<{ position: number }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      seq: 11,
    });
    expect(atEnd.body.position).toBe(11);
    void get;
  });

  test('a reset is refused while deliveries are unsettled, unless forced', async () => {
    const { post, rt } = await adminJob();
    await post('/api/actors/pause', { actor: 'enrich' });
    await publishOrders(rt, 1, 3);
    await until(() => expect(rt.actor('enrich')?.depth).toBe(3));
    const refused = await post<{ error: { message: string } }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      seq: 1,
    });
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toContain('has 3 messages delivered and not settled');
    const forced = await post<{ position: number }>('/api/consumers/reset', {
      stream: 'ORDERS',
      consumer: 'enrich',
      seq: 2,
      force: true,
    });
    expect(forced.body.position).toBe(2);
  });

  test('pause stops an actor taking from its mailbox; resume drains it', async () => {
    const { get, post, rt } = await adminJob();
    const paused = await post<{ paused: boolean }>('/api/actors/pause', { actor: 'audit' });
    expect(paused.body.paused).toBe(true);
    for (let i = 0; i < 5; i++) await rt.bus.publish('audit.manual', i);
    const row = (await get<ActorRow[]>('/api/actors')).body.find((a) => a.name === 'audit') as ActorRow;
    expect(row).toMatchObject({ paused: true, depth: 5, inFlight: 0 });
    expect(row.counters.delivered).toBe(0);
    await post('/api/actors/resume', { actor: 'audit' });
    await until(() => expect(rt.actor('audit')?.counters.acked).toBe(5));
    expect((await post('/api/actors/pause', { actor: 'ghost' })).status).toBe(404);
  });

  test('a paused actor drains when the runtime stops, instead of holding the stop to its deadline', async () => {
    const { post, rt } = await adminJob();
    await post('/api/actors/pause', { actor: 'audit' });
    for (let i = 0; i < 3; i++) await rt.bus.publish('audit.manual', i);
    const report = await rt.stop({ deadlineMs: 5000 });
    expect(report.drained).toBe(true);
    expect(rt.actor('audit')?.counters.acked).toBe(3);
  });

  test('publish sends a test message; every action is in the audit log file', async () => {
    const dir = tempDir();
    const auditLog = join(dir, 'audit.jsonl');
    const { post, rt, server } = await adminJob({ auditLog });
    const res = await post('/api/publish', { subject: 'orders.eu', data: { id: 99, customer: 'z' }, key: 'z' });
    expect(res.status).toBe(200);
    await until(() => expect(rt.actor('enrich')?.counters.acked).toBe(1));
    const bad = await post<{ error: { code: string } }>('/api/publish', { subject: 'orders.*', data: 1 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('SLUICE_ERR_SUBJECT');
    expect((await post('/api/nothing', {})).status).toBe(404);
    const big = await fetch(`${server.url}/api/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ subject: 'orders.eu', data: 'x'.repeat(70_000) }),
    });
    expect(big.status).toBe(413);
    await server.close();
    const lines = readFileSync(auditLog, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { action: string; outcome: string; caller: string });
    expect(lines.map((l) => [l.action, l.outcome])).toEqual([
      ['publish', 'ok'],
      ['publish', 'failed'],
      ['nothing', 'failed'],
    ]);
    expect(lines[0]?.caller).toBe('token');
  });
});
