import { type AdminServer, actor, createRuntime, durable, MemoryStore, type Runtime } from 'sluice';
import { onTestFinished } from 'vitest';
import { quietLogger } from '../runtime/helpers.ts';

export const TOKEN = 'test-admin-token-0123456789';
export const READ_TOKEN = 'test-read-token-0123456789';

export interface Order {
  readonly id: number;
  readonly customer: string;
}

/**
 * A small job on a memory store: orders captured by the ORDERS stream, read durably by `enrich`
 * (a handler with keyed state and a checkpoint, that fails while `broken` is set), whose output
 * goes to `audit`.
 */
export async function adminJob(options: { readOnly?: boolean; auditLog?: string } = {}): Promise<{
  rt: Runtime;
  server: AdminServer;
  job: { broken: boolean };
  log: ReturnType<typeof quietLogger>;
  get: <T = unknown>(path: string, token?: string) => Promise<{ status: number; body: T }>;
  post: <T = unknown>(path: string, body: unknown, token?: string) => Promise<{ status: number; body: T }>;
}> {
  const log = quietLogger();
  const store = new MemoryStore();
  const rt = createRuntime({ store, logger: log, streams: [{ name: 'ORDERS', subjects: ['orders.>'] }] });
  const job = { broken: false };
  rt.spawn(
    actor<Order, { id: number; count: number }>({
      name: 'enrich',
      subscribe: durable<Order>('ORDERS', { consumer: 'enrich' }),
      output: 'audit.orders',
      retry: { maxAttempts: 1 },
      checkpoint: { everyInputs: 1 },
      handle: (env, ctx) => {
        if (job.broken) throw new Error(`customer service down for order ${env.data.id}`);
        const count = (ctx.state.get<number>(`customer:${env.data.customer}`) ?? 0) + 1;
        ctx.state.put(`customer:${env.data.customer}`, count);
        return { id: env.data.id, count };
      },
    }),
  );
  rt.spawn(actor({ name: 'audit', subscribe: 'audit.>', handle: () => undefined }));
  const server = await rt.serve({
    port: 0,
    token: TOKEN,
    readToken: READ_TOKEN,
    readOnly: options.readOnly,
    auditLog: options.auditLog,
  });
  onTestFinished(async () => {
    await server.close();
    await rt.stop({ deadlineMs: 1000 });
    await store.close();
  });
  const call = async <T>(method: string, path: string, body: unknown, token: string | undefined) => {
    const headers: Record<string, string> = {};
    if (token !== undefined && token !== '') headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T };
  };
  return {
    rt,
    server,
    job,
    log,
    get: (path, token = TOKEN) => call('GET', path, undefined, token),
    post: (path, body, token = TOKEN) => call('POST', path, body, token),
  };
}

/** Polls `check` until it passes; fails with its last error after `ms` of real time. */
export async function until(check: () => void | Promise<void>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await check();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise<void>((resolve) => setTimeout(resolve, 10));
    }
  }
}
