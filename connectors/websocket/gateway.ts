/**
 * The WebSocket gateway: browsers subscribe and publish to bus subjects over one WebSocket each,
 * with the permissions their token (or an `authenticate` callback) gives them, checked by a bus
 * client as `bus.client` checks any client's. See docs/websocket.md.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, STATUS_CODES } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';
import { ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import {
  type GatewayAuthRequest,
  type GatewayIdentity,
  type ResolvedGatewayOptions,
  resolveGatewayOptions,
  type WebSocketGatewayOptions,
} from './config.ts';
import { Connection, type GatewayCounters } from './connection.ts';
import { BEARER_PREFIX, CloseCode, GATEWAY_PROTOCOL } from './protocol.ts';

/** A running gateway, as `websocketGateway` returns it. */
export interface WebSocketGateway {
  /** `ws://host:port/path`: what a page passes to `connect`. */
  readonly url: string;
  /** `http://host:port/sluice-ws.js`: the browser client module. */
  readonly clientUrl: string;
  readonly host: string;
  readonly port: number;
  /** Counts for monitoring and tests. */
  stats(): GatewayStats;
  /**
   * Stops accepting, closes every connection with 1001 after dropping its subscriptions, and stops
   * listening; sockets that do not finish their close within `closeGraceMs` are destroyed.
   */
  close(): Promise<void>;
}

export interface GatewayStats {
  readonly connections: number;
  /** Bus subscriptions the connections hold. */
  readonly subscriptions: number;
  /** Messages waiting in those subscriptions' mailboxes (at most `queue` each). */
  readonly queued: number;
  /** Publishes and requests from the connections waiting for the bus. */
  readonly inFlight: number;
  /** Upgrades refused, by HTTP status. */
  readonly refused: Readonly<Record<number, number>>;
  /** Connections closed for falling behind (close code 4008). */
  readonly slowConsumers: number;
  /** The largest socket buffer (bytes unsent) any connection reached. */
  readonly highWaterBytes: number;
}

/**
 * Starts a gateway on `host:port` (127.0.0.1:7430 by default) for `options.bus`. It serves the
 * WebSocket on `path` and the browser client module on `clientPath`.
 *
 * @example
 * const gateway = await websocketGateway({ bus: runtime.bus, port: 0, tokens: [wall] });
 */
export async function websocketGateway(options: WebSocketGatewayOptions): Promise<WebSocketGateway> {
  const gateway = new Gateway(resolveGatewayOptions(options));
  await gateway.listen();
  return gateway;
}

/** The client module, read from the sources (connectors/websocket/) or beside dist/ in the package. */
function clientModule(path: string): Buffer {
  for (const rel of ['./client.js', '../../../connectors/websocket/client.js']) {
    const file = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(file)) {
      // The module's default path is the one this gateway serves on.
      return Buffer.from(
        readFileSync(file, 'utf8').replace(
          /^const GATEWAY_PATH = '[^']*';$/m,
          `const GATEWAY_PATH = ${JSON.stringify(path)};`,
        ),
      );
    }
  }
  throw new ConnectorError('websocket', 'its browser client module client.js is missing from the package');
}

/** The shortest time between two log lines of one refusal reason. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** What `authenticate` gave when it did not answer in time. */
const TIMED_OUT = Symbol('timed out');

/**
 * Log lines of one reason at most once per {@link REFUSAL_LOG_INTERVAL_MS}: peers that need no
 * credentials to be refused must not be able to flood the log. The next line says how many were
 * left out since the last one (the totals are in `stats().refused`). Reasons are the gateway's
 * own (a few), so the map stays small.
 */
class RateLimitedLog {
  readonly #last = new Map<string, { at: number; suppressed: number }>();

  /** Logs `line()` unless a line of `reason` went out within the interval. */
  log(reason: string, write: (line: string) => void, line: () => string): void {
    const now = Date.now();
    const last = this.#last.get(reason);
    if (last !== undefined && now - last.at < REFUSAL_LOG_INTERVAL_MS) {
      last.suppressed++;
      return;
    }
    const suppressed = last?.suppressed ?? 0;
    const since = last === undefined ? 0 : Math.round((now - last.at) / 1000);
    this.#last.set(reason, { at: now, suppressed: 0 });
    write(suppressed === 0 ? line() : `${line()} (and ${suppressed} more like it in the last ${since} s, not logged)`);
  }
}

class Gateway implements WebSocketGateway {
  readonly #o: ResolvedGatewayOptions;
  readonly #server: Server;
  readonly #wss: WebSocketServer;
  readonly #client: Buffer;
  readonly #connections = new Set<Connection>();
  readonly #refused: Record<number, number> = {};
  readonly #counters: GatewayCounters = { slowConsumers: 0, highWaterBytes: 0 };
  readonly #refusalLog = new RateLimitedLog();
  /** Upgrades being authenticated: they count against maxConnections already. */
  #upgrading = 0;
  /** Sockets of upgrades not handed to ws yet (being authenticated, or refused and closing). */
  readonly #upgrades = new Set<Socket>();
  #closing = false;
  #closed: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #port = 0;

  constructor(o: ResolvedGatewayOptions) {
    this.#o = o;
    this.#client = clientModule(o.path);
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: o.maxPayloadBytes,
      perMessageDeflate: false,
      // The token entry is never echoed: only the protocol is, so the token stays out of the response.
      handleProtocols: (protocols) => (protocols.has(GATEWAY_PROTOCOL) ? GATEWAY_PROTOCOL : false),
    });
    this.#server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === o.clientPath && (req.method === 'GET' || req.method === 'HEAD')) {
        res.writeHead(200, {
          'content-type': 'text/javascript; charset=utf-8',
          'content-length': this.#client.length,
          // A module script from another origin needs CORS; the module is public code, fetched without credentials.
          'access-control-allow-origin': '*',
          'cache-control': 'no-cache',
          'x-content-type-options': 'nosniff',
        });
        res.end(req.method === 'HEAD' ? undefined : this.#client);
        return;
      }
      const status = path === o.path ? 426 : 404;
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(status === 426 ? `a WebSocket upgrade (protocol ${GATEWAY_PROTOCOL}) is expected here\n` : 'not found\n');
    });
    this.#server.headersTimeout = 10_000;
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      // Node takes its own error listener off a socket it hands to 'upgrade': a peer that resets
      // while it is authenticated or refused would otherwise be an uncaught exception.
      socket.on('error', this.#onUpgradeError);
      this.#upgrades.add(socket);
      socket.once('close', () => this.#upgrades.delete(socket));
      this.#upgrade(req, socket, head).catch((error: unknown) => {
        this.#refusalLog.log(
          'upgrade failed',
          (line) => this.#o.logger.error(line, error),
          () => `websocket gateway: upgrade failed: ${messageOf(error)}`,
        );
        this.#refuse(socket, 500, 'the gateway failed to authenticate the connection');
      });
    });
  }

  get url(): string {
    return `ws://${this.#hostPort()}${this.#o.path}`;
  }
  get clientUrl(): string {
    return `http://${this.#hostPort()}${this.#o.clientPath}`;
  }
  get host(): string {
    return this.#o.host;
  }
  get port(): number {
    return this.#port;
  }

  #hostPort(): string {
    const h = this.#o.host.includes(':') ? `[${this.#o.host}]` : this.#o.host;
    return `${h}:${this.#port}`;
  }

  stats(): GatewayStats {
    let subscriptions = 0;
    let queued = 0;
    let inFlight = 0;
    for (const c of this.#connections) {
      subscriptions += c.subscriptions;
      queued += c.queued;
      inFlight += c.inFlight;
    }
    return {
      connections: this.#connections.size,
      subscriptions,
      queued,
      inFlight,
      refused: { ...this.#refused },
      slowConsumers: this.#counters.slowConsumers,
      highWaterBytes: this.#counters.highWaterBytes,
    };
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => {
        reject(
          error.code === 'EADDRINUSE'
            ? new OptionsError(
                'websocketGateway.port',
                `address ${this.#o.host}:${this.#o.port} is in use`,
                this.#o.port,
              )
            : new ConnectorError('websocket', `cannot listen on ${this.#o.host}:${this.#o.port}: ${error.message}`, {
                cause: error,
              }),
        );
      };
      this.#server.once('error', onError);
      this.#server.listen(this.#o.port, this.#o.host, () => {
        this.#server.off('error', onError);
        this.#port = (this.#server.address() as AddressInfo).port;
        if (this.#o.pingIntervalMs > 0) {
          this.#timer = setInterval(() => {
            for (const c of this.#connections) c.heartbeat();
          }, this.#o.pingIntervalMs);
          this.#timer.unref();
        }
        resolve();
      });
    });
  }

  async #upgrade(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const o = this.#o;
    if (this.#closing) return this.#refuse(socket, 503, 'the gateway is closing');
    if (new URL(req.url ?? '/', 'http://x').pathname !== o.path) return this.#refuse(socket, 404, 'not found');
    if (this.#connections.size + this.#upgrading >= o.maxConnections) {
      return this.#refuse(socket, 503, `the gateway holds its maximum of ${o.maxConnections} connections`);
    }
    const origin = req.headers.origin;
    if (o.origins !== undefined && (origin === undefined || !o.origins.has(origin.toLowerCase()))) {
      return this.#refuse(socket, 403, `origin '${origin ?? '(none)'}' is not allowed`, 'origin not allowed');
    }
    const token = tokenOf(req);
    if (typeof token === 'object') return this.#refuse(socket, 400, token.error);
    this.#upgrading++;
    let identity: GatewayIdentity | undefined | typeof TIMED_OUT;
    try {
      const request: GatewayAuthRequest = {
        token,
        origin,
        headers: req.headers,
        url: req.url ?? '/',
        remoteAddress: socket.remoteAddress,
      };
      identity = await this.#authenticate(request);
    } finally {
      this.#upgrading--;
    }
    // Gone, or refused meanwhile by close().
    if (socket.destroyed || socket.writableEnded) return;
    if (identity === TIMED_OUT) {
      return this.#refuse(socket, 503, `authenticate did not answer within ${o.authTimeoutMs} ms`);
    }
    if (identity === undefined) {
      return this.#refuse(socket, 401, token === undefined ? 'a bearer token is required' : 'the token is not valid');
    }
    if (this.#closing) return this.#refuse(socket, 503, 'the gateway is closing');
    const who = identity;
    // ws listens for errors from here on, and its WebSocket after it.
    socket.off('error', this.#onUpgradeError);
    this.#upgrades.delete(socket);
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      const connection = new Connection(ws, who, o, this.#counters);
      this.#connections.add(connection);
      void connection.closed.then(() => this.#connections.delete(connection));
    });
  }

  /** The callback's answer, or {@link TIMED_OUT} after `authTimeoutMs` (a later answer is ignored). */
  #authenticate(request: GatewayAuthRequest): Promise<GatewayIdentity | undefined | typeof TIMED_OUT> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve(TIMED_OUT), this.#o.authTimeoutMs);
      this.#o.authenticate(request).then(
        (identity) => {
          clearTimeout(timer);
          resolve(identity);
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    });
  }

  readonly #onUpgradeError = (error: Error): void => {
    this.#o.logger.debug(`websocket gateway: upgrade socket: ${error.message}`);
  };

  /**
   * Answers an upgrade with an HTTP error and its reason as JSON, then closes the socket. 403 and
   * 5xx are logged, once per `reason` (the message unless it holds what the peer sent) and interval.
   */
  #refuse(socket: Socket, status: number, message: string, reason = message): void {
    this.#refused[status] = (this.#refused[status] ?? 0) + 1;
    if (status >= 500 || status === 403) {
      this.#refusalLog.log(
        `${status} ${reason}`,
        (line) => this.#o.logger.warn(line),
        () => `websocket gateway: refused (${status}): ${message}`,
      );
    }
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify({ error: STATUS_CODES[status], message });
    // A peer that never closes its side would hold the socket, and a file descriptor, for good:
    // refusals do not count against maxConnections, so nothing else would bound them.
    const linger = setTimeout(() => socket.destroy(), this.#o.closeGraceMs);
    linger.unref();
    socket.once('close', () => clearTimeout(linger));
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }

  close(): Promise<void> {
    // Every caller waits for the one close under way.
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    // An authenticate that never answers must not keep the gateway open: those upgrades are
    // refused now (and their sockets go after the grace time, as every refused one).
    for (const socket of this.#upgrades) if (!socket.writableEnded) this.#refuse(socket, 503, 'the gateway is closing');
    const closed = [...this.#connections].map((c) => {
      c.close(CloseCode.GoingAway, 'the gateway is closing');
      return c.closed;
    });
    await Promise.all(closed);
    this.#wss.close();
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}

/**
 * The bearer token of an upgrade: from a `sluice.bearer.<base64url>` protocol entry (a browser's
 * WebSocket cannot set headers, but it sends its protocols list) or an `Authorization: Bearer`
 * header; `{ error }` when one is malformed.
 */
function tokenOf(req: IncomingMessage): string | undefined | { error: string } {
  const protocols = (req.headers['sec-websocket-protocol'] ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  if (protocols.length > 0 && !protocols.includes(GATEWAY_PROTOCOL)) {
    return { error: `the gateway speaks the protocol '${GATEWAY_PROTOCOL}', and the client offered none of it` };
  }
  const entry = protocols.find((p) => p.startsWith(BEARER_PREFIX));
  if (entry !== undefined) {
    const encoded = entry.slice(BEARER_PREFIX.length);
    if (!/^[A-Za-z0-9_-]+$/.test(encoded)) {
      return { error: `the protocol entry '${BEARER_PREFIX}...' must carry the token in base64url` };
    }
    return Buffer.from(encoded, 'base64url').toString('utf8');
  }
  const authorization = req.headers.authorization;
  if (authorization === undefined) return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(authorization);
  if (m === null) return { error: "the Authorization header must read 'Bearer <token>'" };
  return m[1] as string;
}
