/**
 * Declaring a queue and its bindings (or checking that an existing one is there), for the
 * RabbitMQ source. See docs/rabbitmq.md, "Queues: declared or existing".
 */
import type { Channel, Replies } from 'amqplib';
import { OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';

/** A binding of the declared queue: messages of `exchange` whose routing key matches `routingKey`. */
export interface RabbitBinding {
  exchange: string;
  /** @default '' (a fanout exchange ignores it; a topic exchange takes `*` and `#` patterns) */
  routingKey?: string;
  /** Declare the exchange too, of this type (durable); without it the exchange must exist. */
  exchangeType?: 'direct' | 'topic' | 'fanout' | 'headers';
}

/** How the source declares its queue. RabbitMQ refuses a declaration that differs from the queue's. */
export interface RabbitQueueDeclaration {
  /** @default 'classic' */
  type?: 'classic' | 'quorum';
  /** Survives a broker restart (quorum queues always do). @default true */
  durable?: boolean;
  /** `x-dead-letter-exchange`: where RabbitMQ sends what is rejected without requeue (and what expires). */
  deadLetterExchange?: string;
  /** `x-dead-letter-routing-key`; without it the message's own routing key. */
  deadLetterRoutingKey?: string;
  /** `x-delivery-limit` of a quorum queue: returns of one message before RabbitMQ gives it up. */
  deliveryLimit?: number;
  /** More `x-` arguments, as RabbitMQ names them. */
  arguments?: Readonly<Record<string, unknown>>;
  bindings?: readonly RabbitBinding[];
}

const declarationKeys = optionKeys<keyof RabbitQueueDeclaration>({
  type: true,
  durable: true,
  deadLetterExchange: true,
  deadLetterRoutingKey: true,
  deliveryLimit: true,
  arguments: true,
  bindings: true,
});
const bindingKeys = optionKeys<keyof RabbitBinding>({ exchange: true, routingKey: true, exchangeType: true });

/** @internal Checks a declaration; an `OptionsError` naming the option. */
export function checkDeclaration(d: RabbitQueueDeclaration | undefined, where: string): void {
  if (d === undefined) return;
  knownKeys(where, d, declarationKeys);
  if (d.type !== undefined && d.type !== 'classic' && d.type !== 'quorum') {
    throw new OptionsError(`${where}.type`, "must be 'classic' or 'quorum'", d.type);
  }
  if (d.deliveryLimit !== undefined) {
    if (d.type !== 'quorum')
      throw new OptionsError(`${where}.deliveryLimit`, "is for quorum queues (type: 'quorum')", d.deliveryLimit);
    intOption(`${where}.deliveryLimit`, d.deliveryLimit, 0, 0);
  }
  if (d.type === 'quorum' && d.durable === false) {
    throw new OptionsError(`${where}.durable`, 'quorum queues are always durable', d.durable);
  }
  for (const [i, b] of (d.bindings ?? []).entries()) {
    knownKeys(`${where}.bindings[${i}]`, b, bindingKeys);
    if (typeof b.exchange !== 'string' || b.exchange === '') {
      throw new OptionsError(`${where}.bindings[${i}].exchange`, 'must be a non-empty exchange name', b.exchange);
    }
  }
}

/**
 * @internal Declares the queue and its bindings, or (without a declaration) checks that it exists.
 * A check of a missing queue, or a declaration that differs, closes the channel (RabbitMQ's rule):
 * the caller gives up on it.
 */
export async function declareQueue(
  channel: Channel,
  queue: string,
  d: RabbitQueueDeclaration | undefined,
): Promise<Replies.AssertQueue> {
  if (d === undefined) return channel.checkQueue(queue);
  const args: Record<string, unknown> = { ...d.arguments };
  if (d.type === 'quorum') args['x-queue-type'] = 'quorum';
  if (d.deliveryLimit !== undefined) args['x-delivery-limit'] = d.deliveryLimit;
  if (d.deadLetterExchange !== undefined) args['x-dead-letter-exchange'] = d.deadLetterExchange;
  if (d.deadLetterRoutingKey !== undefined) args['x-dead-letter-routing-key'] = d.deadLetterRoutingKey;
  const ok = await channel.assertQueue(queue, { durable: d.durable ?? true, arguments: args });
  for (const b of d.bindings ?? []) {
    if (b.exchangeType !== undefined) await channel.assertExchange(b.exchange, b.exchangeType, { durable: true });
    await channel.bindQueue(queue, b.exchange, b.routingKey ?? '');
  }
  return ok;
}
