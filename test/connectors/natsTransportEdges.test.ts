/**
 * The NATS transport at its edges, against a real nats-server: what NATS cannot carry (a message
 * over the server's max_payload, a header value it would cut or refuse), scatter-gather under
 * server permissions (a denied request, a client inbox prefix), callbacks of the caller's that
 * throw on the client's reading loop, and calls under way when the transport closes.
 */

import { connect } from '@nats-io/transport-node';
import { actor, ClosedError, createRuntime, PermissionError, SluiceError } from 'sluice';
import { type NatsTransportOptions, natsTransport } from 'sluice/connectors/nats';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';
import { until } from './conformance.ts';

const missing = natsServerMissing('the NATS transport edge tests');
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

describe.skipIf(missing !== undefined)('NATS transport edges', () => {
  let server: NatsServer;

  beforeAll(async () => {
    server = await startNatsServer({
      jetstream: true,
      config: `max_payload: 4096
authorization {
  users = [
    { user: "app", password: "app-secret", permissions: {
        publish: { allow: ["app.>", "_INBOX.>", "$JS.API.>", "big.>"] },
        subscribe: { allow: ["app.>", "_INBOX.>", "big.>"] } } }
    { user: "own", password: "own-secret", permissions: {
        publish: { allow: ["app.>", "_OWN.>"] },
        subscribe: { allow: ["app.>", "_OWN.>"] } } }
  ]
}
`,
    });
  });
  afterAll(async () => {
    await server?.stop();
  });

  function node(options: Partial<NatsTransportOptions> = {}, streams?: { name: string; subjects: string[] }[]) {
    const errors: Error[] = [];
    const transport = natsTransport({
      servers: server.url,
      user: 'app',
      pass: 'app-secret',
      onError: (e) => void errors.push(e),
      ...options,
    });
    const rt = createRuntime({ transport, logger: quiet, shutdownDeadlineMs: 1_000, ...(streams ? { streams } : {}) });
    onTestFinished(async () => {
      await rt.stop();
      await transport.close();
    });
    return { rt, transport, errors };
  }

  test('a message over the server max_payload is refused for good, not as a retryable error', async () => {
    const { rt, transport } = node({}, [{ name: 'BIG', subjects: ['big.stored'] }]);
    await transport.ready();
    const big = 'x'.repeat(8_000);
    const stored = await rt.bus.publish('big.stored', big).catch((e: unknown) => e);
    expect(stored).toBeInstanceOf(SluiceError);
    expect((stored as SluiceError).retryable).toBe(false);
    const published = await rt.bus.publish('big.one', big).catch((e: unknown) => e);
    expect(published).toBeInstanceOf(SluiceError);
    expect((published as SluiceError).message).toMatch(/max_payload/);
    expect((published as SluiceError).retryable).toBe(false);
    const requested = await rt.bus.request('big.svc', big, { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(requested).toBeInstanceOf(SluiceError);
    expect((requested as SluiceError).retryable).toBe(false);
    await expect(rt.bus.publish('big.small', 'x')).resolves.toBeUndefined();
  });

  test('a header value NATS cannot carry (a line break, white space at an end) is refused, never sent cut', async () => {
    const a = node();
    const b = node();
    const got: Record<string, string>[] = [];
    b.rt.bus.subscribe('app.h', { callback: (env) => void got.push({ ...env.headers }) });
    await Promise.all([a.transport.ready(), b.transport.ready()]);
    for (const value of ['two\r\nlines', 'line\nbreak', ' padded', 'padded ', '\ttab']) {
      const error = await a.rt.bus.publish('app.h', 1, { headers: { note: value } }).catch((e: unknown) => e);
      expect(error, JSON.stringify(value)).toBeInstanceOf(SluiceError);
      expect((error as SluiceError).message).toMatch(/header 'note'/);
      expect((error as SluiceError).retryable).toBe(false);
    }
    await a.rt.bus.publish('app.h', 2, { headers: { note: 'inner space is fine', empty: '' } });
    await until(() => got.length >= 1, 'the valid message');
    await a.transport.ready();
    await b.transport.ready();
    expect(got).toHaveLength(1);
    expect(got[0]?.note).toBe('inner space is fine');
    expect(got[0]?.empty).toBe('');
  });

  test('requestMany to a subject the server denies rejects with a PermissionError, not an empty answer', async () => {
    const { rt, transport } = node();
    await transport.ready();
    const started = Date.now();
    const error = await rt.bus.requestMany('secret.census', 1, { timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermissionError);
    // Rejected on the server's answer, well before its own timeout.
    expect(Date.now() - started).toBeLessThan(4_000);
  });

  test('requestMany collects on the inbox prefix the client was given, as request does', async () => {
    const own = { user: 'own', pass: 'own-secret', client: { inboxPrefix: '_OWN' } };
    const asker = node(own);
    const responder = node(own);
    responder.rt.bus.subscribe<number>('app.census', {
      callback: (env) => responder.rt.bus.respond(env, env.data + 1),
    });
    await Promise.all([asker.transport.ready(), responder.transport.ready()]);
    const one = await asker.rt.bus.request<number, number>('app.census', 1, { timeoutMs: 2_000 });
    expect(one.data).toBe(2);
    const many = await asker.rt.bus.requestMany<number, number>('app.census', 1, { maxReplies: 1, timeoutMs: 2_000 });
    expect(many.map((r) => r.data)).toEqual([2]);
    expect(asker.errors).toEqual([]);
  });
});

describe.skipIf(missing !== undefined)('NATS transport callbacks', () => {
  let server: NatsServer;

  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  function node(options: Partial<NatsTransportOptions> = {}) {
    const transport = natsTransport({ servers: server.url, ...options });
    const rt = createRuntime({ transport, logger: quiet, shutdownDeadlineMs: 1_000 });
    onTestFinished(async () => {
      await rt.stop();
      await transport.close();
    });
    return { rt, transport };
  }

  test('a requestMany sentinel that throws rejects that call, and the connection goes on reading', async () => {
    const asker = node();
    const responder = node();
    responder.rt.bus.subscribe<number>('cb.echo', { callback: (env) => responder.rt.bus.respond(env, env.data) });
    await Promise.all([asker.transport.ready(), responder.transport.ready()]);
    const thrown = new Error('sentinel broke');
    const error = await asker.rt.bus
      .requestMany('cb.echo', 1, {
        timeoutMs: 2_000,
        sentinel: () => {
          throw thrown;
        },
      })
      .catch((e: unknown) => e);
    expect(error).toBe(thrown);
    // The client reads every message of the connection in one loop: a throw in a callback ended it.
    const reply = await asker.rt.bus.request<number, number>('cb.echo', 7, { timeoutMs: 2_000 });
    expect(reply.data).toBe(7);
  });

  test('requestMany after the connection closed rejects with a ClosedError', async () => {
    const { rt, transport } = node();
    await transport.ready();
    await transport.close();
    const error = await rt.bus.requestMany('cb.any', 1, { timeoutMs: 60_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ClosedError);
  });

  test('an onError that throws is logged, and the connection goes on reading', async () => {
    const logged: string[] = [];
    const transport = natsTransport({
      servers: server.url,
      codec: 'json',
      onError: () => {
        throw new Error('the handler broke');
      },
    });
    const logger = { ...quiet, error: (m: string) => void logged.push(m) };
    const rt = createRuntime({ transport, logger, shutdownDeadlineMs: 1_000 });
    onTestFinished(async () => {
      await rt.stop();
      await transport.close();
    });
    const got: unknown[] = [];
    rt.bus.subscribe('cb.bad', { callback: (env) => void got.push(env.data) });
    await transport.ready();
    const nc = await connect({ servers: server.url });
    onTestFinished(() => nc.close());
    // Undecodable: dropped and reported to onError, from the client's callback.
    nc.publish('cb.bad', '{not json');
    nc.publish('cb.bad', JSON.stringify('ok'));
    await nc.flush();
    await until(() => got.length === 1, 'the message after the bad one');
    expect(got).toEqual(['ok']);
    expect(transport.stats.dropped).toBe(1);
    expect(logged.join('\n')).toMatch(/the handler broke/);
  });

  test("a handler's error of several lines still reaches its dead letter, its reason on one line", async () => {
    const { rt, transport } = node();
    const letters: Record<string, string>[] = [];
    rt.bus.subscribe('$DLQ.multi', { callback: (env) => void letters.push({ ...env.headers }) });
    rt.spawn(
      actor<number, void>({
        name: 'multi',
        subscribe: 'cb.multi',
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('first line\r\nsecond line\n');
        },
      }),
    );
    await transport.ready();
    await rt.bus.publish('cb.multi', 1);
    await until(() => letters.length === 1, 'the dead letter');
    expect(letters[0]?.['sluice-error']).toBe('first line second line');
  });

  test('a second close waits for the first: when either resolves the connection is closed', async () => {
    const { rt, transport } = node();
    await transport.ready();
    await rt.stop();
    const first = transport.close();
    await transport.close();
    expect(transport.connection?.isClosed()).toBe(true);
    await first;
  });

  test('a requestMany under way when the transport closes rejects with a ClosedError then, not at its timeout', async () => {
    const asker = node();
    const responder = node();
    responder.rt.bus.subscribe<number>('cb.slow', { callback: (env) => responder.rt.bus.respond(env, env.data) });
    await Promise.all([asker.transport.ready(), responder.transport.ready()]);
    let outcome: unknown = 'pending';
    const call = asker.rt.bus.requestMany('cb.slow', 1, { timeoutMs: 60_000 }).then(
      (replies) => (outcome = replies),
      (error: unknown) => (outcome = error),
    );
    await until(() => asker.transport.stats.received === 1, 'the first reply');
    await asker.transport.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(outcome).toBeInstanceOf(ClosedError);
    await call;
  });

  test('a request under way when the transport closes rejects with a ClosedError then, not at its timeout', async () => {
    const asker = node();
    const silent = node();
    silent.rt.bus.subscribe('cb.silent', { callback: () => undefined });
    await Promise.all([asker.transport.ready(), silent.transport.ready()]);
    let outcome: unknown = 'pending';
    const call = asker.rt.bus.request('cb.silent', 1, { timeoutMs: 60_000 }).then(
      (reply) => (outcome = reply),
      (error: unknown) => (outcome = error),
    );
    await asker.transport.ready();
    await asker.transport.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(outcome).toBeInstanceOf(ClosedError);
    await call;
  });
});
