/**
 * One browser's WebSocket: its frames run through a bus client restricted by its permissions, and
 * its subscriptions deliver through a bounded socket buffer and bounded mailboxes. A connection
 * that falls behind both is closed as a slow consumer, so it never grows the server's memory.
 */
import type { RawData, WebSocket } from 'ws';
import type { Logger } from '../../runtime/actors/actor.ts';
import type { BusClient } from '../../runtime/bus/bus.ts';
import type { Subscription } from '../../runtime/bus/subscription.ts';
import type { Envelope } from '../../runtime/envelope.ts';
import { OptionsError } from '../../runtime/errors.ts';
import type { GatewayIdentity, ResolvedGatewayOptions } from './config.ts';
import {
  ackFrame,
  type ClientFrame,
  CloseCode,
  errFrame,
  type FrameRef,
  GATEWAY_PROTOCOL,
  msgFrame,
  type PubFrame,
  parseFrame,
  type ReqFrame,
  replyFrame,
  type SubFrame,
} from './protocol.ts';

/** What the gateway counts across its connections. */
export interface GatewayCounters {
  slowConsumers: number;
  /** The largest socket buffer (bytes unsent) any connection reached. */
  highWaterBytes: number;
}

export class Connection {
  readonly name: string;
  readonly #ws: WebSocket;
  readonly #client: BusClient;
  readonly #o: ResolvedGatewayOptions;
  readonly #counters: GatewayCounters;
  readonly #log: Logger;
  readonly #subs = new Map<string, Subscription>();
  #inFlight = 0;
  /** The peer's answers pile up unread: its frames are not read meanwhile. */
  #unread = false;
  #closing = false;
  #alive = true;
  #grace: NodeJS.Timeout | undefined;
  /** Resolves once the socket is closed and every subscription is gone. */
  readonly closed: Promise<void>;

  constructor(ws: WebSocket, identity: GatewayIdentity, o: ResolvedGatewayOptions, counters: GatewayCounters) {
    this.name = identity.name;
    this.#ws = ws;
    this.#o = o;
    this.#counters = counters;
    this.#log = o.logger;
    this.#client = o.bus.client(identity.name, identity.permissions);
    this.closed = new Promise((resolve) => {
      ws.once('close', () => {
        this.#closing = true;
        this.#unsubscribeAll();
        if (this.#grace !== undefined) clearTimeout(this.#grace);
        resolve();
      });
    });
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('pong', () => {
      this.#alive = true;
    });
    // A socket error is followed by 'close', which cleans up; without a listener it would throw.
    ws.on('error', (error) => this.#log.debug(`websocket gateway: connection '${this.name}': ${error.message}`));
    this.#send(
      JSON.stringify({
        op: 'hello',
        protocol: GATEWAY_PROTOCOL,
        name: identity.name,
        maxPayloadBytes: o.maxPayloadBytes,
        maxSubscriptions: o.maxSubscriptions,
      }),
    );
  }

  /** Subscriptions held. */
  get subscriptions(): number {
    return this.#subs.size;
  }

  /** Publishes and requests of this connection waiting for the bus. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Messages waiting in this connection's subscription mailboxes. */
  get queued(): number {
    let n = 0;
    for (const sub of this.#subs.values()) n += sub.pending;
    return n;
  }

  /** Pings, and terminates a connection whose last ping got no pong: its peer is gone. */
  heartbeat(): void {
    if (!this.#alive) {
      this.#ws.terminate();
      return;
    }
    this.#alive = false;
    this.#ws.ping();
  }

  /** Closes with `code` and `reason` after dropping every subscription; destroys the socket after the grace time. */
  close(code: number, reason: string): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#unsubscribeAll();
    this.#ws.close(code, reason);
    // The close frame waits behind whatever the socket still holds; a peer that reads nothing
    // never answers it, so the socket and its buffer go after the grace time.
    this.#grace = setTimeout(() => this.#ws.terminate(), this.#o.closeGraceMs);
    this.#grace.unref();
  }

  #unsubscribeAll(): void {
    for (const sub of this.#subs.values()) sub.unsubscribe();
    this.#subs.clear();
  }

  /**
   * Sends an answer (hello, ack, reply, err). A peer that asks without reading the answers would
   * grow the socket buffer: past `maxBufferedBytes` unsent, its frames are no longer read until
   * this answer is written out.
   */
  #send(frame: string): void {
    const ws = this.#ws;
    if (ws.bufferedAmount < this.#o.maxBufferedBytes) {
      ws.send(frame);
      this.#noteBuffered();
      return;
    }
    this.#unread = true;
    this.#reading();
    ws.send(frame, () => {
      this.#unread = false;
      this.#reading();
    });
  }

  /** Reads the socket unless too much is in flight or its answers are not read (see #track, #send). */
  #reading(): void {
    const pause = this.#unread || this.#inFlight >= this.#o.maxInFlight;
    if (pause !== this.#ws.isPaused) {
      if (pause) this.#ws.pause();
      else this.#ws.resume();
    }
  }

  #noteBuffered(): void {
    const buffered = this.#ws.bufferedAmount;
    if (buffered > this.#counters.highWaterBytes) this.#counters.highWaterBytes = buffered;
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    if (this.#closing) return;
    if (isBinary) {
      const size = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.byteLength;
      this.#send(
        errFrame(
          {},
          new OptionsError('frame', 'must be a text frame of JSON; binary frames are not read', `(${size} bytes)`),
        ),
      );
      return;
    }
    const { frame, error, ref } = parseFrame(data.toString());
    if (frame === undefined) {
      this.#send(errFrame(ref, error));
      return;
    }
    this.#dispatch(frame, ref);
  }

  #dispatch(frame: ClientFrame, ref: FrameRef): void {
    switch (frame.op) {
      case 'sub':
        this.#subscribe(frame, ref);
        return;
      case 'unsub': {
        const sub = this.#subs.get(frame.sid);
        if (sub === undefined) {
          this.#send(
            errFrame(ref, new OptionsError('frame.sid', 'names no subscription of this connection', frame.sid)),
          );
          return;
        }
        this.#subs.delete(frame.sid);
        sub.unsubscribe();
        this.#send(ackFrame({ sid: frame.sid }));
        return;
      }
      case 'pub':
        this.#publish(frame, ref);
        return;
      case 'req':
        this.#request(frame, ref);
        return;
    }
  }

  #subscribe(frame: SubFrame, ref: FrameRef): void {
    const { sid } = frame;
    if (this.#subs.has(sid)) {
      this.#send(errFrame(ref, new OptionsError('frame.sid', 'is already a subscription of this connection', sid)));
      return;
    }
    if (this.#subs.size >= this.#o.maxSubscriptions) {
      this.#send(
        errFrame(
          ref,
          new OptionsError(
            'frame.sid',
            `a connection holds at most ${this.#o.maxSubscriptions} subscriptions (maxSubscriptions); unsubscribe one first`,
            sid,
          ),
        ),
      );
      return;
    }
    let sub: Subscription;
    try {
      // The client checks the subject's syntax and the connection's permissions, as for any bus client.
      sub = this.#client.subscribe(frame.subject, {
        ...(frame.queue === undefined ? {} : { queue: frame.queue }),
        mailbox: { capacity: this.#o.queue, overflow: this.#o.overflow },
        callback: (env) => this.#deliver(sid, env),
        onDrop: (_env, reason) => {
          if (reason !== 'closed') this.#slow();
        },
        onError: (error) => this.#log.warn(`websocket gateway: connection '${this.name}', '${frame.subject}'`, error),
      });
    } catch (error) {
      this.#send(errFrame(ref, error));
      return;
    }
    this.#subs.set(sid, sub);
    this.#send(ackFrame({ sid }));
  }

  /**
   * Sends one message. Past `maxBufferedBytes` unsent, the subscription waits until this frame is
   * written out, and what arrives meanwhile waits in its mailbox; a full mailbox drops a message,
   * and the drop closes the connection (see #slow).
   */
  #deliver(sid: string, env: Envelope): Promise<void> | undefined {
    if (this.#closing) return undefined;
    let frame: string;
    try {
      frame = msgFrame(sid, env);
    } catch (error) {
      this.#send(errFrame({ op: 'msg', sid }, error));
      return undefined;
    }
    const ws = this.#ws;
    if (ws.bufferedAmount < this.#o.maxBufferedBytes) {
      ws.send(frame);
      this.#noteBuffered();
      return undefined;
    }
    // The callback runs once the frame is handed to the kernel (or the socket failed): by then the
    // frames before it are out too.
    return new Promise<void>((resolve) => ws.send(frame, () => resolve()));
  }

  #slow(): void {
    if (this.#closing) return;
    this.#counters.slowConsumers++;
    const reason = `slow consumer: ${this.#ws.bufferedAmount} bytes unsent and a queue of ${this.#o.queue} full`;
    this.#log.warn(`websocket gateway: connection '${this.name}' closed, ${reason}`);
    this.close(CloseCode.SlowConsumer, reason);
  }

  #publish(frame: PubFrame, ref: FrameRef): void {
    const { subject, data, key, eventTime, headers, replyTo } = frame;
    this.#track(
      this.#client.publish(subject, data, { key, eventTime, headers, replyTo }),
      ref,
      frame.id === undefined ? undefined : () => ackFrame({ id: frame.id }),
    );
  }

  #request(frame: ReqFrame, ref: FrameRef): void {
    const { subject, data, key, headers, timeoutMs } = frame;
    this.#track(this.#client.request(subject, data, { key, headers, timeoutMs }), ref, (reply) =>
      replyFrame(frame.id, reply),
    );
  }

  /**
   * Answers a publish or request once it settles. Past `maxInFlight` unsettled, the socket is no
   * longer read: the browser's own sends then wait in TCP, not in this server's memory (the frames
   * of a chunk already read are still handled, at most one read's worth).
   */
  #track<T>(work: Promise<T>, ref: FrameRef, answer: ((result: T) => string) | undefined): void {
    this.#inFlight++;
    this.#reading();
    void work
      .then(
        (result) => {
          if (this.#closing || answer === undefined) return;
          try {
            this.#send(answer(result));
          } catch (error) {
            this.#send(errFrame(ref, error));
          }
        },
        (error: unknown) => {
          if (!this.#closing) this.#send(errFrame(ref, error));
        },
      )
      .finally(() => {
        this.#inFlight--;
        this.#reading();
      });
  }
}
