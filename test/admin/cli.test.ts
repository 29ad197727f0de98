import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { main } from '../../cli/main.ts';
import { adminJob, READ_TOKEN, TOKEN, until } from './helpers.ts';

const BIN = fileURLToPath(new URL('../../bin/sluice.js', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Runs the command in-process, with its output captured. */
async function sluice(
  args: string[],
  env: Record<string, string | undefined> = {},
  progress = false,
): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, {
    out: (t) => void (out += t),
    err: (t) => void (err += t),
    env,
    progress,
  });
  return { code, out, err };
}

/** A port nothing listens on: one the system gave and took back. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('sluice, the command line', () => {
  test('status, actors, streams and lag as tables and as JSON; URL and token from the environment', async () => {
    const { server, rt } = await adminJob();
    for (let id = 1; id <= 5; id++) await rt.bus.publish('orders.eu', { id, customer: 'c' });
    await rt.idle();
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    const status = await sluice(['status'], env);
    expect(status.code).toBe(0);
    expect(status.out).toContain('actors: 2 (2 running, 0 paused, 0 restarting, 0 stopped)');
    const actors = await sluice(['actors'], env);
    expect(actors.out.split('\n')[0]).toMatch(/^ACTOR\s+STATE\s+DEPTH\s+IN FLIGHT\s+IN\/S\s+OUT\/S\s+BACKPRESSURE/);
    expect(actors.out).toMatch(/enrich\s+running\s+0\/1024\s+0\/256\s+[\d.]+\s+[\d.]+\s+OK\s+5/);
    const json = await sluice(['actors', '--json', '--url', server.url, '--token', TOKEN], {});
    const rows = JSON.parse(json.out) as { name: string; counters: { acked: number } }[];
    expect(rows.find((r) => r.name === 'enrich')?.counters.acked).toBe(5);
    const streams = await sluice(['streams'], env);
    expect(streams.out).toMatch(/ORDERS\s+orders\.>\s+5\s+1\s+5\s+-\s+none\s+enrich/);
    const lag = JSON.parse((await sluice(['lag', '--json'], env)).out) as {
      consumers: { name: string; position: number }[];
      sources: unknown[];
    };
    expect(lag).toEqual({ consumers: [expect.objectContaining({ name: 'enrich', position: 6 })], sources: [] });
    const peek = await sluice(['peek', 'ORDERS', '--from', '4'], env);
    expect(peek.out).toContain('seq 4');
    expect(peek.out).toContain('{"id":5,"customer":"c"}');
    const state = await sluice(['state', 'get', 'enrich', 'customer:c', '--json'], env);
    expect(JSON.parse(state.out)).toMatchObject({ found: true, data: 5 });
  });

  test('dead letters: list, peek, replay with a progress bar, purge; consumer reset; pause and publish', async () => {
    const { server, rt, job } = await adminJob();
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    job.broken = true;
    await Promise.all(Array.from({ length: 300 }, (_, id) => rt.bus.publish('orders.us', { id, customer: 'd' })));
    await until(() => expect(rt.actor('enrich')?.counters.deadLettered).toBe(300), 15_000);
    await until(async () => expect((await sluice(['dlq', 'list', '--json'], env)).out).toContain('"kept": 300'));
    const list = await sluice(['dlq', 'list'], env);
    expect(list.out).toMatch(
      /\$DLQ\.enrich\s+enrich\s+300\s+300\s+0\s+0\s+0\s+300x customer service down for order <n>/,
    );
    const peek = await sluice(['dlq', 'peek', '$DLQ.enrich', '--limit', '1'], env);
    expect(peek.out).toContain('error: customer service down for order 0');
    expect(peek.out).toContain('next: --after 1');
    job.broken = false;
    const replay = await sluice(['dlq', 'replay', '$DLQ.enrich', '--limit', '200'], env, true);
    expect(replay.code).toBe(0);
    expect(replay.out).toBe('replayed 200 of 200 dead letters\n');
    expect(replay.err).toMatch(/\[#+\.*\] \d+\/200 replayed/);
    const rest = JSON.parse((await sluice(['dlq', 'purge', '$DLQ.enrich', '--json'], env)).out) as { purged: number };
    expect(rest.purged).toBe(100);
    await until(() => expect(rt.actor('enrich')?.counters.acked).toBe(200));
    await rt.idle();
    const reset = await sluice(['consumer', 'reset', 'ORDERS', 'enrich', '--seq', '300'], env);
    expect(reset.out).toMatch(/^consumer ORDERS\/enrich: position \d+ -> 300\n$/);
    await rt.idle();
    // Back to the start: the consumer re-reads every stored message, and a bar follows it.
    const reread = await sluice(['consumer', 'reset', 'ORDERS', 'enrich', '--seq', '1', '--follow'], env, true);
    expect(reread.code).toBe(0);
    const [, before, count] =
      /^consumer ORDERS\/enrich: position (\d+) -> 1; re-read (\d+) messages, caught up\n$/.exec(reread.out) ?? [
        reread.out,
      ];
    expect(Number(count)).toBe(Number(before) - 1);
    expect(reread.err).toMatch(new RegExp(`\\[#{30}\\] ${count}/${count} re-read\\n$`));
    expect((await sluice(['consumer', 'reset', 'ORDERS', 'nobody', '--seq', '1', '--follow'], env)).err).toMatch(
      /no consumer ORDERS\/nobody/,
    );
    expect((await sluice(['actor', 'pause', 'audit'], env)).out).toBe('actor audit: paused\n');
    expect((await sluice(['publish', 'orders.eu', '{"id":1000,"customer":"e"}'], env)).out).toBe(
      'published to orders.eu\n',
    );
    await until(async () => {
      const s = JSON.parse((await sluice(['state', 'get', 'enrich', 'customer:e', '--json'], env)).out) as {
        data: number;
      };
      expect(s.data).toBe(1);
    });
  });

  test('connector sources in status and lag; window operators; checkpoints with bytes and positions', async () => {
    const { server, rt } = await adminJob();
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    const health = rt.telemetry.registerSource({
      name: 'nats:ORDERS/billing',
      kind: 'nats',
      stream: 'nats:ORDERS',
      consumer: 'billing',
      lag: () => ({ messages: 12, timeMs: 2500, ackPending: 4 }),
      counters: () => ({ received: 30 }),
    });
    health.connected();
    health.reconnecting(new Error('disconnected from 127.0.0.1:4222'));
    const status = await sluice(['status'], env);
    expect(status.out).toContain('sources: 1 (1 reconnecting)');
    expect(status.out).toContain(
      '  nats:ORDERS/billing: reconnecting, 12 behind (2.5 s), last error: disconnected from 127.0.0.1:4222',
    );
    const lag = await sluice(['lag'], env);
    expect(lag.out).toMatch(
      /SOURCE\s+KIND\s+CONNECTION\s+SINCE\s+RECONNECTS\s+LAG\s+LAG TIME\s+ACK PENDING\s+LAST ERROR/,
    );
    expect(lag.out).toMatch(/nats:ORDERS\/billing\s+nats\s+reconnecting\s+\S+\s+0\s+12\s+2\.5 s\s+4\s+disconnected/);
    expect((await sluice(['windows'], env)).out).toBe(
      'ACTOR  OPERATOR  KIND  LANE  WATERMARK  OPEN WINDOWS  KEYS  HELD INPUTS  NEXT TIMER\n(none)\n',
    );
    for (let id = 1; id <= 3; id++) await rt.bus.publish('orders.eu', { id, customer: 'c' });
    await rt.idle();
    await until(async () => {
      const cp = JSON.parse((await sluice(['checkpoints', '--json'], env)).out) as { actors: { commits: number }[] };
      expect(cp.actors[0]?.commits).toBe(3);
    });
    const cp = await sluice(['checkpoints', '--limit', '2'], env);
    expect(cp.out).toMatch(/^enrich: 3 commits, \d+ B, 0 failed, 0 inputs held\n/);
    expect(cp.out).toMatch(/COMMITTED\s+DURATION\s+BYTES\s+INPUTS\s+POSITIONS/);
    // The two most recent: after orders 2 and 3.
    expect(cp.out).toMatch(/ms\s+\d+\s+1\s+ORDERS\/enrich@3\n.*ms\s+\d+\s+1\s+ORDERS\/enrich@4\n$/s);
  });

  test('dlq replay --stream replays dead letters kept in a stream from a sequence', async () => {
    const { MemoryStore, actor, createRuntime, durable } = await import('sluice');
    const store = new MemoryStore();
    const rt = createRuntime({
      store,
      logger: { debug() {}, info() {}, warn() {}, error() {} },
      streams: [
        { name: 'ORDERS', subjects: ['orders.>'] },
        { name: 'DLQ', subjects: ['$DLQ.>'] },
      ],
    });
    let broken = true;
    const handled: number[] = [];
    rt.spawn(
      actor<{ id: number }, never>({
        name: 'billing',
        subscribe: durable<{ id: number }>('ORDERS', { consumer: 'billing' }),
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (broken) throw new Error('down');
          handled.push(env.data.id);
        },
      }),
    );
    const server = await rt.serve({ port: 0, token: TOKEN });
    try {
      for (let id = 1; id <= 3; id++) await rt.bus.publish('orders.eu', { id });
      await until(() => expect(rt.stream('DLQ').info().messages).toBe(3));
      broken = false;
      const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
      const r = await sluice(['dlq', 'replay', '--stream', 'DLQ', '--from-seq', '2'], env);
      expect(r.out).toBe('replayed 2 of 2 dead letters (next --from-seq 4)\n');
      await until(() => expect(handled.sort()).toEqual([2, 3]));
      expect((await sluice(['dlq', 'replay', '--stream', 'DLQ'], env)).code).toBe(2);
    } finally {
      await server.close();
      await rt.stop();
      await store.close();
    }
  });

  test("a message's text cannot drive the terminal: control characters are printed as \\xHH", async () => {
    const { server, rt } = await adminJob();
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    // ESC is allowed in a subject; the data and the key are anyone's text (C1's CSI is one byte).
    await rt.bus.publish('orders.\x1b[2Kfake', { note: '\x1b]0;owned\x07' }, { key: 'k\x9b31m' });
    await rt.idle();
    const text = await sluice(['peek', 'ORDERS'], env);
    expect(text.code).toBe(0);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: what must not reach the terminal
    expect(text.out).not.toMatch(/[\x1b\x07\x9b]/);
    expect(text.out).toContain('orders.\\x1b[2Kfake');
    expect(text.out).toContain('key=k\\x9b31m');
    // As JSON, still JSON: the same values once parsed.
    const json = await sluice(['peek', 'ORDERS', '--json'], env);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: what must not reach the terminal
    expect(json.out).not.toMatch(/[\x1b\x07\x9b]/);
    const page = JSON.parse(json.out) as { messages: { subject: string; key: string }[] };
    expect(page.messages.at(-1)).toMatchObject({ subject: 'orders.\x1b[2Kfake', key: 'k\x9b31m' });
  });

  test('tail follows new messages of a stored subject', async () => {
    const { server, rt } = await adminJob();
    await rt.bus.publish('orders.eu', { id: 1, customer: 'old' });
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    const tailing = sluice(['tail', 'orders.eu', '--count', '2', '--interval', '20', '--json'], env);
    // Published after tail looked at the stream's end: only these two show.
    await new Promise<void>((resolve) => setTimeout(resolve, 200));
    await rt.bus.publish('orders.eu', { id: 2, customer: 'new' });
    await rt.bus.publish('orders.us', { id: 3, customer: 'other subject' });
    await rt.bus.publish('orders.eu', { id: 4, customer: 'new' });
    const { out, code } = await tailing;
    expect(code).toBe(0);
    expect(jsonLines<{ data: { id: number } }>(out).map((m) => m.data.id)).toEqual([2, 4]);
    const none = await sluice(['tail', 'nowhere.stored'], env);
    expect(none.code).toBe(1);
    expect(none.err).toContain("no stream captures 'nowhere.stored' (streams: ORDERS on orders.>)");
  });

  test('tail on a dead-letter subject shows the letters that come after it started, past a history of several pages', async () => {
    const { server, rt } = await adminJob();
    for (let i = 1; i <= 600; i++) await rt.bus.publish('$DLQ.billing', { i });
    const env = { SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN };
    const pages: string[] = [];
    const fetch = globalThis.fetch;
    const spy = vi.spyOn(globalThis, 'fetch').mockImplementation((input, init) => {
      pages.push(String(input));
      return fetch(input, init);
    });
    onTestFinished(() => spy.mockRestore());
    const tailing = sluice(['tail', '$DLQ.billing', '--count', '2', '--interval', '20', '--json'], env);
    // Two pages of history (500 and 100 letters), then the first page of what is new.
    await until(() => expect(pages.length).toBeGreaterThanOrEqual(3));
    await rt.bus.publish('$DLQ.billing', { i: 601 });
    await rt.bus.publish('$DLQ.other', { i: 602 });
    await rt.bus.publish('$DLQ.billing', { i: 603 });
    const { out, code } = await tailing;
    expect(code).toBe(0);
    expect(jsonLines<{ data: { i: number } }>(out).map((m) => m.data.i)).toEqual([601, 603]);
  });

  test('clear errors: unreachable, no token, refused token, read-only token, usage', async () => {
    const { server } = await adminJob();
    const port = await closedPort();
    const down = await sluice(['status', '--url', `http://127.0.0.1:${port}`, '--token', TOKEN]);
    expect(down.code).toBe(3);
    expect(down.err).toBe(
      `sluice: cannot reach the admin API at http://127.0.0.1:${port}: ECONNREFUSED (is the job serving it? check --url or SLUICE_URL)\n`,
    );
    const noToken = await sluice(['status', '--url', server.url]);
    expect(noToken.code).toBe(4);
    expect(noToken.err).toContain(`a token is required by ${server.url}`);
    const wrong = await sluice(['status', '--url', server.url, '--token', 'w'.repeat(20)]);
    expect(wrong.code).toBe(4);
    expect(wrong.err).toContain(
      `the token was refused by ${server.url} (the token was refused); set --token or SLUICE_TOKEN`,
    );
    const readOnly = await sluice(['dlq', 'purge', '--all', '--url', server.url, '--token', READ_TOKEN]);
    expect(readOnly.code).toBe(4);
    expect(readOnly.err).toBe(`sluice: refused by ${server.url}: this token may read but not act\n`);
    expect((await sluice(['frobnicate'])).err).toContain("unknown command 'frobnicate'");
    expect((await sluice(['status', '--bogus'])).code).toBe(2);
    expect((await sluice(['status', '--url', 'not a url'])).err).toContain("--url 'not a url' is not a URL");
    expect((await sluice([])).code).toBe(2);
  });

  test('a URL with a token in it (the dashboard link, user and password, a query) is refused, and the token never printed', async () => {
    const { server } = await adminJob();
    const port = await closedPort();
    const host = server.url.slice('http://'.length);
    for (const url of [
      `${server.url}/#token=${TOKEN}`,
      `http://127.0.0.1:${port}/#token=${TOKEN}`,
      `http://operator:${TOKEN}@${host}`,
      `${server.url}/?token=${TOKEN}`,
    ]) {
      for (const run of [
        () => sluice(['status', '--url', url, '--token', TOKEN]),
        () => sluice(['status'], { SLUICE_URL: url, SLUICE_TOKEN: TOKEN }),
      ]) {
        const r = await run();
        expect(r.code).toBe(2);
        expect(r.err).not.toContain(TOKEN);
        expect(r.err).toContain('--url must be the address of the admin API alone');
      }
    }
  });

  test('bin/sluice.js runs without a build: --help, and a status against a live job', async () => {
    const { server } = await adminJob();
    const run = promisify(execFile);
    const help = await run(process.execPath, [BIN, '--help'], { cwd: ROOT });
    expect(help.stdout).toContain('usage: sluice <command> [options]');
    const status = await run(process.execPath, [BIN, 'status', '--json'], {
      cwd: ROOT,
      env: { ...process.env, SLUICE_URL: server.url, SLUICE_TOKEN: TOKEN },
    });
    expect(JSON.parse(status.stdout)).toMatchObject({ name: 'sluice', actors: { total: 2 } });
    const refused = await run(process.execPath, [BIN, 'status', '--url', server.url]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(refused).toMatchObject({ code: 4 });
  });
});

/** What `--json` printed: one JSON value a line. */
function jsonLines<T>(out: string): T[] {
  return out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as T);
}
