import { Connection, type Consumer, offsetCommitV9, offsetFetchV9 } from '@platformatic/kafka';
import { ConnectorError } from '../../runtime/errors.ts';
import type { ClientConnection } from './config.ts';

/** A committed offset and its metadata (`sluice:<runs>` when a transactional sink wrote it). */
export interface CommittedOffset {
  readonly offset: bigint;
  readonly metadata: string | null;
}

/**
 * A connection of the source's own to its group's coordinator, for the two requests the client's
 * high-level API does not make as the connector needs them: `OffsetFetch` with `require_stable`,
 * and (through the sink) `TxnOffsetCommit` with metadata.
 */
export class GroupCoordinator {
  readonly #name: string;
  readonly #groupId: string;
  readonly #topics: readonly string[];
  readonly #connection: ClientConnection;
  readonly #consumer: () => Consumer;
  #held: Promise<Connection> | undefined;

  constructor(name: string, groupId: string, topics: readonly string[], c: ClientConnection, consumer: () => Consumer) {
    this.#name = name;
    this.#groupId = groupId;
    this.#topics = topics;
    this.#connection = c;
    this.#consumer = consumer;
  }

  /**
   * The connection, made on first use, again after {@link drop} and when it was lost. Callers who
   * find it lost at the same time share the next one: each made its own before, one was held and
   * the others were never closed.
   */
  async connection(): Promise<Connection> {
    for (;;) {
      const held = this.#held;
      if (held === undefined) return this.#open();
      const c = await held.catch(() => undefined);
      if (c?.isConnected()) return c;
      // Another caller replaced it while this one waited: the one it opens is shared.
      if (this.#held !== held) continue;
      c?.close().catch(() => undefined);
      return this.#open();
    }
  }

  /** Opens a connection to the coordinator, held (synchronously) for the callers after. */
  #open(): Promise<Connection> {
    const consumer = this.#consumer();
    const c = this.#connection;
    this.#held = (async () => {
      const id = await consumer.findGroupCoordinator();
      const metadata = await consumer.metadata({ topics: [...this.#topics] });
      const broker = metadata.brokers.get(id);
      if (broker === undefined)
        throw new ConnectorError(this.#name, `group coordinator ${id} is not in the metadata`, { retryable: true });
      const connection = new Connection(c.clientId, {
        connectTimeout: c.connectTimeout,
        requestTimeout: c.requestTimeout,
        ...(c.sasl === undefined ? {} : { sasl: c.sasl }),
        ...(c.tls === undefined ? {} : { tls: c.tls }),
      });
      await connection.connect(broker.host, broker.port);
      // A socket error after the connect (a reset) is emitted as 'error', which with no listener
      // is thrown out of the socket and ends the process. The close after it fails the requests
      // in flight, and the next call opens another connection.
      connection.on('error', () => undefined);
      return connection;
    })();
    return this.#held;
  }

  /** The connection failed: the next call makes a new one (the coordinator may have moved). */
  drop(): void {
    const held = this.#held;
    this.#held = undefined;
    held?.then((c) => c.close()).catch(() => undefined);
  }

  /**
   * Commits offsets naming `generationId` and `memberId`: the generation whose partitions the
   * source holds, not the client's latest. The broker checks the generation, not the partitions,
   * and the client's own commit names whatever generation it has at that moment, and after
   * ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID joins again and commits the same offsets with the new
   * one: floors of partitions another member may own by then, moving that member's offsets back.
   * A stale generation is refused by the broker (the error is thrown).
   */
  async commit(
    generationId: number,
    memberId: string,
    offsets: readonly { topic: string; partition: number; offset: bigint; leaderEpoch: number }[],
  ): Promise<void> {
    const byTopic = new Map<string, offsetCommitV9.OffsetCommitRequestPartition[]>();
    for (const o of offsets) {
      let list = byTopic.get(o.topic);
      if (list === undefined) byTopic.set(o.topic, (list = []));
      list.push({
        partitionIndex: o.partition,
        committedOffset: o.offset,
        committedLeaderEpoch: o.leaderEpoch,
        committedMetadata: null,
      });
    }
    try {
      await offsetCommitV9.api.async(
        await this.connection(),
        this.#groupId,
        generationId,
        memberId,
        null,
        [...byTopic].map(([name, partitions]) => ({ name, partitions })),
      );
    } catch (error) {
      this.drop();
      throw error;
    }
  }

  /**
   * The group's committed offsets, asking for stable ones (`require_stable`, as Kafka's Java
   * consumer does under read_committed): an offset a transaction of the partition's previous owner
   * is still committing is refused (UNSTABLE_OFFSET_COMMIT) until the transaction ends, instead of
   * an older offset being returned and its records read again. Retries for up to `timeoutMs`.
   */
  async stableOffsets(
    byTopic: ReadonlyMap<string, number[]>,
    timeoutMs = 60_000,
  ): Promise<Map<string, CommittedOffset[]>> {
    const topics = [...byTopic].map(([name, partitionIndexes]) => ({ name, partitionIndexes }));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const response = await offsetFetchV9.api.async(
          await this.connection(),
          [{ groupId: this.#groupId, memberId: null, memberEpoch: -1, topics }],
          true,
        );
        const out = new Map<string, CommittedOffset[]>();
        for (const t of response.groups[0]?.topics ?? []) {
          const offsets: CommittedOffset[] = [];
          for (const p of t.partitions)
            offsets[p.partitionIndex] = { offset: p.committedOffset, metadata: p.metadata ?? null };
          out.set(t.name, offsets);
        }
        return out;
      } catch (error) {
        const unstable = /UNSTABLE_OFFSET_COMMIT|unstable offset/i.test(deepText(error));
        if (!unstable) this.drop();
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, unstable ? 100 : 500));
      }
    }
  }
}

/** An error's message and those inside it, where the client puts the broker's error names. */
function deepText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const inner = (error as { errors?: unknown[] }).errors ?? [];
  const cause = (error as { cause?: unknown }).cause;
  return [
    error.message,
    JSON.stringify(error),
    ...inner.map(deepText),
    cause === undefined ? '' : deepText(cause),
  ].join(' ');
}
