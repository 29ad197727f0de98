/**
 * Order flow: several typed actors talking over the bus.
 *
 *   orders.new ─► validate ─► orders.valid ─► price ──(request/reply)──► pricing.quote
 *                    │                          │
 *                    ▼                          ▼
 *              $DLQ.validate              orders.priced ─► fulfil ×3 (queue group) ─► orders.fulfilled
 *
 * Bad orders fail their schema and land on the dead-letter subject with the reason.
 */
import { actor, createRuntime, DEAD_LETTER_HEADERS, type Envelope, subject } from 'sluice';
import { z } from 'zod';

const Order = z.object({
  id: z.string().min(1),
  customer: z.string().min(1),
  items: z.array(z.object({ sku: z.string(), quantity: z.number().int().positive() })).min(1),
});
type Order = z.infer<typeof Order>;
interface Quote {
  orderId: string;
  total: number;
}
interface PricedOrder extends Order {
  total: number;
}
interface Fulfilled {
  orderId: string;
  worker: string;
  total: number;
}

export const orders = subject('orders.new', { schema: Order });
const validOrders = subject<Order>('orders.valid');
const quotes = subject<Order>('pricing.quote');
const priced = subject<PricedOrder>('orders.priced');
const fulfilled = subject<Fulfilled>('orders.fulfilled');

const PRICES: Record<string, number> = { apple: 0.5, bread: 2.25, cheese: 7.8, dates: 4.1 };

export interface OrderFlowResult {
  fulfilled: Fulfilled[];
  deadLetters: { id: unknown; reason: string }[];
  byWorker: Record<string, number>;
  drained: boolean;
}

/** Runs the flow over `count` generated orders (every fifth one broken) and resolves when all are handled. */
export async function main(options: { count?: number; print?: (line: string) => void } = {}): Promise<OrderFlowResult> {
  const count = options.count ?? 20;
  const print = options.print ?? ((line: string) => console.log(line));
  const runtime = createRuntime({ logger: quietLogger(print) });
  const { bus } = runtime;

  runtime.spawn(
    actor({
      name: 'validate',
      subscribe: orders,
      output: validOrders,
      // The schema already checked the order; this rule needs a price list, so it lives here.
      handle: (env: Envelope<Order>) => {
        const unknown = env.data.items.find((item) => PRICES[item.sku] === undefined);
        if (unknown !== undefined) throw new Error(`unknown sku '${unknown.sku}'`);
        return env.data;
      },
      retry: { maxAttempts: 1 },
    }),
  );

  runtime.spawn(
    actor({
      name: 'pricing',
      subscribe: quotes,
      handle: async (env: Envelope<Order>, ctx) => {
        const total = env.data.items.reduce((sum, item) => sum + (PRICES[item.sku] ?? 0) * item.quantity, 0);
        await ctx.respond<Quote>({ orderId: env.data.id, total: Math.round(total * 100) / 100 });
      },
    }),
  );

  runtime.spawn(
    actor({
      name: 'price',
      subscribe: validOrders,
      output: priced,
      handle: async (env: Envelope<Order>, ctx) => {
        const reply = await ctx.request<Order, Quote>(quotes, env.data, { timeoutMs: 1000 });
        return { ...env.data, total: reply.data.total };
      },
    }),
  );

  for (const worker of ['w1', 'w2', 'w3']) {
    runtime.spawn(
      actor({
        name: `fulfil-${worker}`,
        subscribe: priced,
        queue: 'fulfilment',
        output: fulfilled,
        handle: async (env: Envelope<PricedOrder>, ctx) => {
          await ctx.clock.sleep(1 + (env.data.items.length % 3));
          return { orderId: env.data.id, worker, total: env.data.total };
        },
      }),
    );
  }

  const result: OrderFlowResult = { fulfilled: [], deadLetters: [], byWorker: {}, drained: false };
  bus.subscribe<Fulfilled>(fulfilled, {
    callback: (env) => {
      result.fulfilled.push(env.data);
      result.byWorker[env.data.worker] = (result.byWorker[env.data.worker] ?? 0) + 1;
      print(`  fulfilled  ${env.data.orderId.padEnd(8)} by ${env.data.worker}  total ${env.data.total.toFixed(2)}`);
    },
  });
  bus.subscribe('$DLQ.>', {
    callback: (env) => {
      const reason = env.headers[DEAD_LETTER_HEADERS.error] ?? 'unknown';
      const id = (env.data as { id?: unknown } | null)?.id;
      result.deadLetters.push({ id, reason });
      print(`  dead letter ${String(id ?? '?').padEnd(7)} from ${env.headers[DEAD_LETTER_HEADERS.actor]}: ${reason}`);
    },
  });

  print(`order flow: ${count} orders, 3 fulfilment workers in a queue group`);
  for (let i = 1; i <= count; i++) {
    const order = generateOrder(i);
    await bus.publish(orders.name, order);
  }
  await runtime.idle();
  const report = await runtime.stop({ deadlineMs: 5000 });
  result.drained = report.drained;
  const workers = Object.entries(result.byWorker)
    .map(([w, n]) => `${w}=${n}`)
    .join(' ');
  print(`done: ${result.fulfilled.length} fulfilled (${workers}), ${result.deadLetters.length} dead-lettered`);
  return result;
}

/** Every fifth order is broken in one of a few ways, so the dead-letter path has work. */
function generateOrder(i: number): unknown {
  const skus = Object.keys(PRICES);
  const order = {
    id: `o-${String(i).padStart(3, '0')}`,
    customer: `c-${(i * 7) % 5}`,
    items: [
      { sku: skus[i % skus.length] as string, quantity: 1 + (i % 4) },
      { sku: skus[(i + 1) % skus.length] as string, quantity: 1 + (i % 2) },
    ],
  };
  if (i % 5 !== 0) return order;
  switch ((i / 5) % 3) {
    case 0:
      return { ...order, items: [] };
    case 1:
      return { ...order, items: [{ sku: 'caviar', quantity: 1 }] };
    default:
      return { ...order, customer: '' };
  }
}

function quietLogger(print: (line: string) => void) {
  return {
    debug: () => {},
    info: (m: string) => print(m),
    warn: () => {},
    error: (m: string) => print(`error: ${m}`),
  };
}
