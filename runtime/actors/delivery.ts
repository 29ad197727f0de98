import { OptionsError } from '../errors.ts';
import { oneOf } from '../options.ts';

/**
 * What an actor promises about its inputs across a crash (README, "Delivery guarantees"):
 * - `at-most-once`: plain subjects only. Nothing is redelivered: what was in flight at a crash is lost.
 * - `at-least-once`: durable subscriptions only. An input is acknowledged once it settled; a crash
 *   redelivers what was not, so an effect may happen twice.
 * - `exactly-once`: durable subscriptions, and either a `checkpoint` (state, positions and outputs
 *   into streams in one transaction) or a sink that keeps one result per idempotency key
 *   (`sinkActor`): every input has its effect once.
 */
export type DeliveryMode = 'at-most-once' | 'at-least-once' | 'exactly-once';

const modes: readonly DeliveryMode[] = ['at-most-once', 'at-least-once', 'exactly-once'];

/** @internal Set by `sinkActor` on the actor it declares: its sink keeps one result per key. */
export const IDEMPOTENT_SINK: unique symbol = Symbol('sluice.idempotentSink');

/**
 * @internal Checks that an actor's subscriptions and checkpoint give the `delivery` it declares,
 * so a job meant to be exactly-once cannot quietly run at-least-once (or lose messages).
 */
export function checkDelivery(
  actor: string,
  delivery: DeliveryMode | undefined,
  given: readonly {
    readonly name: string;
    readonly durable?: { readonly stream: string } | undefined;
    readonly source?: { readonly stream: string; readonly durable: boolean } | undefined;
  }[],
  checkpoint: boolean,
  idempotentSink: boolean,
): DeliveryMode | undefined {
  if (delivery === undefined) return undefined;
  // A durable connector source (a JetStream consumer) redelivers what was not acknowledged, as a stream does.
  const subjects = given.map((s) =>
    s.source?.durable === true ? { name: s.name, durable: { stream: s.source.stream } } : s,
  );
  const where = `actor '${actor}'.delivery`;
  oneOf(where, delivery, modes, 'at-least-once');
  if (delivery === 'at-most-once') {
    const durable = subjects.find((s) => s.durable !== undefined);
    if (durable !== undefined) {
      throw new OptionsError(
        where,
        `'at-most-once' reads plain subjects only; it reads stream '${durable.durable?.stream}' durably, ` +
          "which redelivers after a crash (that is 'at-least-once')",
        delivery,
      );
    }
    if (checkpoint) {
      throw new OptionsError(where, "'at-most-once' has no checkpoint: a checkpoint needs durable inputs", delivery);
    }
    return delivery;
  }
  const plain = subjects.find((s) => s.durable === undefined);
  if (plain !== undefined) {
    throw new OptionsError(
      where,
      `'${delivery}' needs every input from a durable subscription; '${plain.name}' is a plain subject, whose ` +
        'messages in flight are lost in a crash: subscribe with durable(stream)',
      delivery,
    );
  }
  if (delivery === 'exactly-once' && !checkpoint && !idempotentSink) {
    throw new OptionsError(
      where,
      "'exactly-once' needs a checkpoint (state, positions and outputs to streams in one transaction) " +
        'or a sinkActor whose sink keeps one result per key; without either a replay repeats effects',
      delivery,
    );
  }
  return delivery;
}
