import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../actors/actor.ts';
import { DEAD_LETTER_HEADERS } from '../actors/deadLetters.ts';
import { validateSubject } from '../bus/subjects.ts';
import { DEAD_LETTER_HEADER_NAMES } from '../envelope.ts';
import { messageOf, OptionsError, SluiceError, StreamError } from '../errors.ts';
import { stateNamespace } from '../state/keyedState.ts';
import { runtimeStatus } from '../status.ts';
import type { StoredMessage, StreamImpl } from '../streams/stream.ts';
import { type AuditEntry, AuditLog, type Caller } from './audit.ts';
import { type DeadLetterBuffer, type KeptLetter, REPLAYED_FROM_HEADER } from './deadLetterBuffer.ts';
import type { AdminHost } from './host.ts';
import { isLoopback, type ResolvedServeOptions, resolveServeOptions, type ServeOptions } from './options.ts';
import { Sampler } from './sampler.ts';
import {
  actorView,
  browse,
  lagViews,
  letterView,
  MAX_PAGE,
  MAX_SCAN,
  MAX_SCAN_MS,
  matches,
  positionsOf,
  preview,
  streamView,
} from './views.ts';

/** A running admin API, as `runtime.serve` returns it. */
export interface AdminServer {
  /** `http://host:port`, the base of the API and the dashboard. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The last actions tried (at most 1000), oldest first. */
  readonly audit: readonly AuditEntry[];
  /** Stops listening, ends live feeds and stops sampling; the runtime goes on. */
  close(): Promise<void>;
}

/**
 * Connections open at once, live feeds included (`maxFeeds` + 32 when that is more); more are
 * closed as they come. Idle ones are closed when their headers time out, which Node checks every
 * 30 s: without a bound, anyone who reaches the port could hold enough to leave the job no file
 * descriptors for its store and connectors.
 */
export const MAX_CONNECTIONS = 256;
/** Largest request body accepted (actions are small JSON objects). */
export const MAX_BODY_BYTES = 64 * 1024;
/** Replays between two yields to the event loop, so a long replay does not hold the job up. */
const REPLAY_SLICE = 64;
/**
 * A live-feed client with this much unread gets no more frames, and is dropped if it still has it
 * unread a whole sample interval later: a slow dashboard must not grow memory.
 */
const MAX_FEED_BACKLOG = 256 * 1024;

type Rights = 'read' | 'act';
interface Who {
  readonly caller: Caller;
  readonly rights: Rights;
}

class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const STATIC: Record<string, string> = {
  '/': 'index.html',
  '/index.html': 'index.html',
  '/app.js': 'app.js',
  '/app.css': 'app.css',
};
const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

function dashboardDir(): string | undefined {
  // From the sources (runtime/admin/) or from dist/runtime/admin/, where only the .js files are.
  for (const rel of ['./dashboard/', '../../../runtime/admin/dashboard/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}index.html`)) return dir;
  }
  return undefined;
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** @internal Starts the admin API of a runtime (see `Runtime.serve`). */
export async function serve(
  host: AdminHost,
  letters: DeadLetterBuffer,
  options: ServeOptions,
  log: Logger,
): Promise<AdminServer> {
  const o = resolveServeOptions(options);
  const admin = new Admin(host, letters, o, log);
  await admin.listen();
  return admin;
}

class Admin implements AdminServer {
  readonly #host: AdminHost;
  readonly #o: ResolvedServeOptions;
  readonly #log: Logger;
  readonly #server: Server;
  readonly #letters: DeadLetterBuffer;
  /** Stops listening for dead letters on the bus and feeding them to the live feed. */
  readonly #stopLetters: () => void;
  readonly #sampler: Sampler;
  readonly #audit: AuditLog;
  /** A dead-letter replay is running. */
  #replaying = false;
  readonly #feeds = new Set<ServerResponse>();
  /** Feeds over {@link MAX_FEED_BACKLOG}, with the sample count when they went over. */
  readonly #lagging = new Map<ServerResponse, number>();
  #samples = 0;
  readonly #token: Buffer | undefined;
  readonly #readToken: Buffer | undefined;
  readonly #files = new Map<string, Buffer>();
  readonly #startedAt = Date.now();
  #timer: NodeJS.Timeout | undefined;
  #heartbeat = 0;
  /**
   * Requests waiting for their turn. One is started per event-loop turn (each in its own
   * `setImmediate`), so a burst of requests, which Node would otherwise run back to back in one
   * poll phase, is spread over turns and the job's timers and I/O run between them.
   */
  readonly #waiting: (() => void)[] = [];
  #waitingHead = 0;
  readonly #next = (): void => {
    const run = this.#waiting[this.#waitingHead++];
    if (this.#waitingHead === this.#waiting.length) {
      this.#waiting.length = 0;
      this.#waitingHead = 0;
    } else setImmediate(this.#next);
    run?.();
  };
  #port = 0;

  constructor(host: AdminHost, letters: DeadLetterBuffer, o: ResolvedServeOptions, log: Logger) {
    this.#host = host;
    this.#o = o;
    this.#log = log;
    this.#token = o.token === false ? undefined : digest(o.token);
    this.#readToken = o.readToken === undefined ? undefined : digest(o.readToken);
    this.#letters = letters;
    if (o.deadLetters !== undefined) letters.max = o.deadLetters;
    const unlisten = letters.listen(host.bus);
    const unfeed = letters.onLetter((l) => this.#broadcast('deadletter', letterView(l)));
    this.#stopLetters = () => {
      unlisten();
      unfeed();
    };
    this.#sampler = new Sampler(host, o.historySamples, (actor) => positionsOf(host, actor));
    this.#audit = new AuditLog(o.auditLog, log);
    this.#audit.onEntry = (e) => this.#broadcast('audit', e);
    const dir = dashboardDir();
    if (dir !== undefined) {
      for (const file of new Set(Object.values(STATIC))) this.#files.set(file, readFileSync(`${dir}${file}`));
    }
    this.#server = createServer((req, res) => {
      this.#waiting.push(() => this.#handle(req, res).catch((error: unknown) => this.#fail(res, error)));
      if (this.#waiting.length === 1) setImmediate(this.#next);
    });
    // Bounded: a client that opens connections and sends nothing does not hold them forever.
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 60_000;
    this.#server.maxConnections = Math.max(MAX_CONNECTIONS, o.maxFeeds + 32);
  }

  get url(): string {
    const h = this.#o.host.includes(':') ? `[${this.#o.host}]` : this.#o.host;
    return `http://${h}:${this.#port}`;
  }
  get host(): string {
    return this.#o.host;
  }
  get port(): number {
    return this.#port;
  }
  get audit(): readonly AuditEntry[] {
    return this.#audit.entries;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => {
        this.#stopLetters();
        reject(
          error.code === 'EADDRINUSE'
            ? new OptionsError('serve.port', `address ${this.#o.host}:${this.#o.port} is in use`, this.#o.port)
            : error,
        );
      };
      this.#server.once('error', onError);
      this.#server.listen(this.#o.port, this.#o.host, () => {
        this.#server.off('error', onError);
        this.#port = (this.#server.address() as AddressInfo).port;
        this.#sampler.sample();
        this.#timer = setInterval(() => this.#tick(), this.#o.sampleIntervalMs);
        // Sampling alone must not keep the process alive; the listening socket does, until closed.
        this.#timer.unref();
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stopLetters();
    for (const res of this.#feeds) res.end();
    this.#feeds.clear();
    this.#lagging.clear();
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    await this.#audit.flush();
  }

  /** @internal Samples now (tests drive it instead of waiting for the interval). */
  tick(): void {
    this.#tick();
  }

  #tick(): void {
    this.#sampler.sample();
    // Over the bound since before the last sample: it read nothing for a whole interval.
    for (const [res, since] of this.#lagging) {
      if (res.writableLength <= MAX_FEED_BACKLOG) this.#lagging.delete(res);
      else if (since < this.#samples) {
        this.#lagging.delete(res);
        this.#feeds.delete(res);
        res.destroy();
      }
    }
    this.#samples++;
    if (this.#feeds.size === 0) return;
    this.#broadcast('tick', this.#snapshot());
    // A comment line now and then keeps proxies from closing a quiet feed.
    if (++this.#heartbeat % 15 === 0) for (const res of this.#feeds) res.write(': keep-alive\n\n');
  }

  #snapshot(): unknown {
    return {
      time: Date.now(),
      actors: this.#host.actors().map((c) => {
        const v = actorView(c, this.#sampler);
        return {
          name: v.name,
          state: v.state,
          paused: v.paused,
          depth: v.depth,
          inFlight: v.inFlight,
          backpressure: v.backpressure,
          rateIn: v.rateIn,
          rateOut: v.rateOut,
          acked: v.counters.acked,
          deadLettered: v.counters.deadLettered,
        };
      }),
      lag: lagViews(this.#host).map((l) => ({
        stream: l.stream,
        name: l.name,
        messages: l.messages,
        timeMs: l.timeMs,
      })),
      sources: this.#host.telemetry.sources.list().map((src) => ({
        name: src.name,
        connection: src.connection,
        messages: src.lag.messages,
        timeMs: src.lag.timeMs,
      })),
      deadLetters: { kept: this.#letters.kept },
    };
  }

  #broadcast(event: string, data: unknown): void {
    if (this.#feeds.size === 0) return;
    const frame = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const res of this.#feeds) {
      // Skipped, not dropped: frames written in one turn (a burst of dead letters) are unread by
      // any client then, however fast it reads. One that stays behind is dropped in #tick.
      if (res.writableLength > MAX_FEED_BACKLOG) {
        if (!this.#lagging.has(res)) {
          this.#lagging.set(res, this.#samples);
          // It read all it was sent: a later burst starts its interval again.
          res.once('drain', () => this.#lagging.delete(res));
        }
        continue;
      }
      res.write(frame);
    }
  }

  // ---- requests ----

  #authenticate(req: IncomingMessage): Who {
    if (this.#token === undefined) {
      // No token on loopback: a page on another site could still reach 127.0.0.1 through a DNS
      // name that resolves there (DNS rebinding); its requests carry that name as Host.
      const hostHeader = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
      if (!isLoopback(hostHeader)) {
        throw new HttpError(403, 'forbidden', `Host '${hostHeader}' is not a loopback name`);
      }
      return { caller: 'loopback', rights: 'act' };
    }
    const header = req.headers.authorization;
    const m = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (m === null) {
      throw new HttpError(401, 'unauthorized', 'a bearer token is required: Authorization: Bearer <token>');
    }
    const given = digest(m[1] as string);
    if (timingSafeEqual(given, this.#token)) return { caller: 'token', rights: 'act' };
    if (this.#readToken !== undefined && timingSafeEqual(given, this.#readToken)) {
      return { caller: 'read-token', rights: 'read' };
    }
    throw new HttpError(401, 'unauthorized', 'the token was refused');
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      // A request target such as `//` is no path of this server: the client's error, not ours.
      throw new HttpError(400, 'bad-request', 'the request target is not a path');
    }
    const path = url.pathname;
    const file = STATIC[path];
    if (file !== undefined && req.method === 'GET') {
      const body = this.#files.get(file);
      if (body === undefined) throw new HttpError(404, 'not-found', 'the dashboard files are not installed');
      res.writeHead(200, {
        'content-type': TYPES[file.split('.').pop() as string] as string,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
        // The page loads only its own script and style, and talks only to this server.
        'content-security-policy':
          "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:",
      });
      res.end(body);
      return;
    }
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!path.startsWith('/api/')) throw new HttpError(404, 'not-found', `no such page: ${path}`);
    let who: Who;
    try {
      who = this.#authenticate(req);
    } catch (error) {
      if (req.method === 'POST') this.#record(req, path, 'unauthenticated', '', 'refused', messageOf(error));
      throw error;
    }
    if (req.method === 'GET') {
      if (path === '/api/events') return this.#feed(res);
      this.#json(res, 200, this.#read(path, url.searchParams));
      return;
    }
    if (req.method !== 'POST') throw new HttpError(405, 'method-not-allowed', `${req.method} is not allowed`);
    try {
      sameOriginJson(req);
    } catch (error) {
      this.#record(req, path.slice('/api/'.length), who.caller, '', 'refused', messageOf(error));
      throw error;
    }
    const body = await readBody(req);
    const action = path.slice('/api/'.length);
    const target = describeTarget(body);
    if (who.rights !== 'act' || this.#o.readOnly) {
      const why = this.#o.readOnly ? 'the admin API is read-only' : 'this token may read but not act';
      this.#record(req, action, who.caller, target, 'refused', why);
      throw new HttpError(403, 'forbidden', why);
    }
    try {
      const result = await this.#act(action, body, req, res);
      if (result === undefined) return; // streamed already
      this.#record(req, action, who.caller, target, 'ok', result.detail);
      if (!res.headersSent) this.#json(res, 200, result.body);
      else res.end(`${JSON.stringify(result.body)}\n`);
    } catch (error) {
      this.#record(req, action, who.caller, target, 'failed', messageOf(error));
      throw error;
    }
  }

  #record(
    req: IncomingMessage,
    action: string,
    caller: AuditEntry['caller'],
    target: string,
    outcome: AuditEntry['outcome'],
    detail: string,
  ): void {
    this.#audit.record({
      time: Date.now(),
      action,
      caller,
      remote: req.socket.remoteAddress ?? '',
      target,
      outcome,
      detail,
    });
  }

  #read(path: string, q: URLSearchParams): unknown {
    const host = this.#host;
    switch (path) {
      case '/api/status':
        return this.#status();
      case '/api/actors':
        return host.actors().map((c) => actorView(c, this.#sampler));
      case '/api/streams':
        return host.streams().map(streamView);
      case '/api/subscriptions':
        return [...host.bus.liveSubscriptions].slice(0, MAX_PAGE).map((s) => ({
          subject: s.subject,
          queue: s.queue,
          ...s.left(),
        }));
      case '/api/lag':
        return lagViews(host);
      case '/api/sources':
        return host.telemetry.sources.list();
      case '/api/windows':
        return host.actors().flatMap((c) => c.windows().map((w) => ({ actor: c.name, ...w })));
      case '/api/messages': {
        const stream = host.streams().find((s) => s.name === q.get('stream'));
        if (stream === undefined) throw new HttpError(404, 'not-found', `no stream '${q.get('stream') ?? ''}'`);
        const subject = q.get('subject') ?? undefined;
        // A pattern that is none matches nothing: the caller would see an empty page, not the typo.
        if (subject !== undefined) validateSubject(subject, 'subscribe');
        return browse(
          stream,
          { seq: intParam(q, 'from'), time: timeParam(q, 'fromTime') },
          intParam(q, 'limit') ?? 50,
          { subject, contains: q.get('contains') ?? undefined },
        );
      }
      case '/api/deadletters':
        return { kept: this.#letters.kept, subjects: this.#letters.subjects() };
      case '/api/deadletters/messages': {
        const limit = intParam(q, 'limit') ?? 50;
        if (limit < 1 || limit > MAX_PAGE)
          throw new OptionsError('limit', `must be an integer from 1 to ${MAX_PAGE}`, limit);
        const filter = { subject: undefined, contains: q.get('contains') ?? undefined };
        const page = this.#letters.boundedPage(
          q.get('subject') ?? undefined,
          intParam(q, 'after') ?? 0,
          limit,
          (l) => matches(l.envelope, filter),
          MAX_SCAN,
          performance.now() + MAX_SCAN_MS,
        );
        return { messages: page.letters.map(letterView), next: page.next };
      }
      case '/api/checkpoints':
        return {
          actors: host
            .actors()
            .filter((c) => c.checkpoint !== undefined)
            .map((c) => ({
              name: c.name,
              ...c.checkpoint,
              positions: positionsOf(host, c.name),
              recent: c.checkpointHistory(),
            })),
          history: this.#sampler.checkpoints,
        };
      case '/api/state':
        return this.#state(q);
      case '/api/state/keys':
        return this.#stateKeys(q);
      case '/api/history':
        return this.#sampler.history();
      case '/api/timeline':
        return this.#sampler.timeline;
      case '/api/audit': {
        // `slice(-0)` is the whole array: 0 would have returned every entry kept.
        const limit = intParam(q, 'limit') ?? 100;
        if (limit < 1 || limit > 1000) throw new OptionsError('limit', 'must be an integer from 1 to 1000', limit);
        return this.#audit.entries.slice(-limit);
      }
      default:
        throw new HttpError(404, 'not-found', `no such endpoint: GET ${path}`);
    }
  }

  #status(): unknown {
    return {
      name: 'sluice',
      time: Date.now(),
      uptimeMs: Date.now() - this.#startedAt,
      readOnly: this.#o.readOnly,
      ...runtimeStatus(this.#host),
      totals: { ...this.#host.telemetry.counters },
      deadLetters: {
        kept: this.#letters.kept,
        received: this.#letters.subjects().reduce((n, s) => n + s.received, 0),
      },
    };
  }

  #actor(name: unknown) {
    if (typeof name !== 'string') throw new OptionsError('actor', 'must be the name of an actor', name);
    const cell = this.#host.actors().find((c) => c.name === name);
    if (cell === undefined) throw new HttpError(404, 'not-found', `no actor '${name}'`);
    return cell;
  }

  #state(q: URLSearchParams): unknown {
    const cell = this.#actor(q.get('actor') ?? undefined);
    const key = q.get('key');
    if (key === null || key === '') throw new OptionsError('key', 'must be a non-empty key', key);
    if (cell.checkpoint === undefined) {
      throw new HttpError(404, 'not-found', `actor '${cell.name}' keeps no keyed state (it has no checkpoint)`);
    }
    const value = cell.readState(key);
    return { actor: cell.name, key, found: value !== undefined, ...preview(value) };
  }

  #stateKeys(q: URLSearchParams): unknown {
    const cell = this.#actor(q.get('actor') ?? undefined);
    const store = this.#host.store;
    const limit = intParam(q, 'limit') ?? 50;
    if (limit < 1 || limit > MAX_PAGE)
      throw new OptionsError('limit', `must be an integer from 1 to ${MAX_PAGE}`, limit);
    if (store === undefined || cell.checkpoint === undefined) return { actor: cell.name, keys: [] };
    // Committed keys only: writes since the last checkpoint show through `state?key=`.
    const entries = store.scan(stateNamespace(cell.name), q.get('prefix') ?? '', { limit });
    return { actor: cell.name, keys: entries.map((e) => e.key) };
  }

  #feed(res: ServerResponse): void {
    if (this.#feeds.size >= this.#o.maxFeeds) {
      throw new HttpError(503, 'too-many-feeds', `at most ${this.#o.maxFeeds} live feeds at once`);
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    res.write(`event: tick\ndata: ${JSON.stringify(this.#snapshot())}\n\n`);
    this.#feeds.add(res);
    res.on('close', () => {
      this.#feeds.delete(res);
      this.#lagging.delete(res);
    });
  }

  // ---- actions ----

  async #act(
    action: string,
    body: Record<string, unknown>,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<{ body: unknown; detail: string } | undefined> {
    switch (action) {
      case 'deadletters/replay': {
        // One at a time: letters leave the buffer as each is published, so a second replay
        // started meanwhile (an operator whose client timed out, trying again) would select the
        // letters the first has not reached yet, and publish them twice.
        if (this.#replaying) throw new HttpError(409, 'conflict', 'a replay is running: wait for it to end');
        this.#replaying = true;
        try {
          return await this.#replay(body, req, res);
        } finally {
          this.#replaying = false;
        }
      }
      case 'deadletters/purge': {
        const subject = optionalString(body, 'subject');
        if (subject === undefined && body.all !== true) {
          throw new OptionsError('subject', 'name the dead-letter subject to purge, or give all: true', subject);
        }
        const purged = this.#letters.purge(subject);
        return { body: { purged }, detail: `purged ${purged}` };
      }
      case 'consumers/reset': {
        const streamName = requiredString(body, 'stream');
        const consumerName = requiredString(body, 'consumer');
        const stream = this.#host.streams().find((s) => s.name === streamName);
        const consumer = stream?.consumers().find((c) => c.name === consumerName);
        if (consumer === undefined)
          throw new HttpError(404, 'not-found', `no consumer '${consumerName}' on stream '${streamName}'`);
        const seq = body.seq;
        const time = body.time;
        if ((seq === undefined) === (time === undefined)) {
          throw new OptionsError('reset', 'give either seq (a stream sequence) or time (epoch ms)', body);
        }
        const before = consumer.position;
        const position = consumer.reset(
          seq !== undefined ? { fromSeq: seq as number } : { fromTime: time as number },
          body.force === true,
        );
        return {
          body: { stream: streamName, consumer: consumerName, before, position },
          detail: `position ${before} -> ${position}`,
        };
      }
      case 'actors/pause':
      case 'actors/resume': {
        const cell = this.#actor(body.actor);
        if (action === 'actors/pause') cell.pause();
        else cell.resume();
        return { body: { actor: cell.name, paused: cell.paused }, detail: cell.paused ? 'paused' : 'resumed' };
      }
      case 'publish': {
        const subject = requiredString(body, 'subject');
        validateSubject(subject, 'publish');
        const headers = body.headers;
        if (headers !== undefined && (typeof headers !== 'object' || headers === null || Array.isArray(headers))) {
          throw new OptionsError('headers', 'must be an object of string values', headers);
        }
        await this.#host.bus.publish(subject, body.data, {
          key: optionalString(body, 'key'),
          headers: { ...(headers as Record<string, string> | undefined), 'sluice-test-message': 'admin' },
        });
        return { body: { published: subject }, detail: `published to ${subject}` };
      }
      default:
        throw new HttpError(404, 'not-found', `no such action: POST /api/${action}`);
    }
  }

  async #replay(
    body: Record<string, unknown>,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<{ body: unknown; detail: string }> {
    const subject = optionalString(body, 'subject');
    const reason = optionalString(body, 'reason');
    const ids = body.ids;
    if (ids !== undefined && (!Array.isArray(ids) || !ids.every((n) => Number.isInteger(n)))) {
      throw new OptionsError('ids', 'must be an array of dead-letter numbers', ids);
    }
    const limit = body.limit;
    if (limit !== undefined && (!Number.isInteger(limit) || (limit as number) < 1)) {
      throw new OptionsError('limit', 'must be an integer >= 1', limit);
    }
    if (
      subject === undefined &&
      ids === undefined &&
      reason === undefined &&
      body.all !== true &&
      body.fromSeq === undefined
    ) {
      throw new OptionsError('replay', 'select letters by subject, ids, reason or fromSeq, or give all: true', body);
    }
    const to = optionalString(body, 'to');
    if (to !== undefined) validateSubject(to, 'publish');
    const streamName = optionalString(body, 'stream');
    const fromSeq = body.fromSeq;
    if (fromSeq !== undefined && (!Number.isInteger(fromSeq) || (fromSeq as number) < 0)) {
      throw new OptionsError('fromSeq', 'must be a stream sequence (an integer >= 0)', fromSeq);
    }
    // The letters kept in memory have no stream sequence: fromSeq alone would select them all.
    if (fromSeq !== undefined && streamName === undefined) {
      throw new OptionsError('fromSeq', 'selects letters of a stream: give stream as well', fromSeq);
    }
    let letters: Iterable<KeptLetter | undefined>;
    let total: number;
    let kept = true;
    let next: (() => number | undefined) | undefined;
    if (streamName !== undefined) {
      // A stream's letters are selected by pattern: one that is none would select nothing, silently.
      if (subject !== undefined) validateSubject(subject, 'subscribe');
      const stream = this.#host.streams().find((st) => st.name === streamName);
      if (stream === undefined) throw new HttpError(404, 'not-found', `no stream '${streamName}'`);
      const read = streamLetters(stream, {
        from: fromSeq as number | undefined,
        ids: ids as number[] | undefined,
        subject,
        reason,
        limit: limit as number | undefined,
      });
      letters = read.letters;
      total = read.total;
      next = read.next;
      kept = false;
    } else {
      const selected = this.#letters.select({
        subject,
        ids: ids as number[] | undefined,
        reason,
        limit: limit as number | undefined,
      });
      letters = selected;
      total = selected.length;
    }
    // Progress as JSON lines when the client asks for it (the CLI's progress bar).
    const progress = (req.headers.accept ?? '').includes('application/x-ndjson');
    if (progress) {
      res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8' });
      // Sent now, not with the first progress line: the client knows the replay started, however
      // long it waits on a full mailbox before that line.
      res.flushHeaders();
    }
    let replayed = 0;
    const failed: { n: number; error: string }[] = [];
    let lastReport = Date.now();
    for (const letter of letters) {
      if (letter === undefined) {
        // A page of a stream read: letters the filter skips cost reads too, and a stream may hold
        // millions of them, so the loop is given back as it is every REPLAY_SLICE letters.
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      try {
        await this.#replayOne(letter, to);
        if (kept) this.#letters.replayed(letter);
        replayed++;
      } catch (error) {
        if (failed.length < 100) failed.push({ n: letter.n, error: messageOf(error) });
      }
      const done = replayed + failed.length;
      if (done % REPLAY_SLICE === 0) {
        // Publishes that are accepted at once resolve in microtasks: without this a long replay
        // would hold the event loop until it ends.
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (progress && Date.now() - lastReport >= 100) {
          lastReport = Date.now();
          res.write(`${JSON.stringify({ progress: done, total: Math.max(total, done) })}\n`);
        }
      }
    }
    const done = replayed + failed.length;
    // The last step always, however fast the replay went: a progress bar ends full.
    if (progress) res.write(`${JSON.stringify({ progress: done, total: done })}\n`);
    const from = streamName === undefined ? '' : ` from stream ${streamName}`;
    return {
      body: { replayed, total: done, failed, ...(next === undefined ? {} : { next: next() }) },
      detail: `replayed ${replayed} of ${done}${from}${failed.length > 0 ? `, ${failed.length} failed` : ''}`,
    };
  }

  #replayOne(letter: KeptLetter, to: string | undefined): Promise<void> {
    const env = letter.envelope;
    const target = to ?? env.headers[DEAD_LETTER_HEADERS.subject];
    if (target === undefined || target === '') {
      return Promise.reject(
        new OptionsError(
          'to',
          `dead letter ${letter.n} has no '${DEAD_LETTER_HEADERS.subject}' header: give a subject`,
          to,
        ),
      );
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(env.headers)) {
      // Stream headers (sequence, stream) of the stored copy are not the new message's either.
      if (!DEAD_LETTER_HEADER_NAMES.has(name) && !name.startsWith('sluice-stream')) headers[name] = value;
    }
    headers[REPLAYED_FROM_HEADER] = env.id;
    return this.#host.bus.publish(target, env.data, { key: env.key, eventTime: env.eventTime, headers });
  }

  // ---- responses ----

  #json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
    res.end(text);
  }

  #fail(res: ServerResponse, error: unknown): void {
    let status = 500;
    let code = 'internal';
    if (error instanceof HttpError) {
      status = error.status;
      code = error.code;
    } else if (error instanceof StreamError && /no such stream/.test(error.message)) {
      status = 404;
      code = error.code;
    } else if (error instanceof SluiceError) {
      status = error.code === 'SLUICE_ERR_PERMISSION' ? 403 : 400;
      code = error.code;
    } else if (error instanceof SyntaxError) {
      status = 400;
      code = 'bad-json';
    } else {
      this.#log.error(`sluice admin: request failed: ${messageOf(error)}`);
    }
    if (res.headersSent) {
      res.end(`${JSON.stringify({ error: { code, message: messageOf(error) } })}\n`);
      return;
    }
    const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8' };
    if (status === 401) headers['www-authenticate'] = 'Bearer realm="sluice"';
    res.writeHead(status, headers);
    res.end(JSON.stringify({ error: { code, message: messageOf(error) } }));
  }
}

/**
 * Dead letters kept in a stream (one on `$DLQ.>`), read a page at a time as the replay goes, so a
 * long one holds no more than a page in memory. `ids` are stream sequences. `undefined` comes
 * after each page read: where the replay gives the event loop back, however few letters matched.
 */
function streamLetters(
  stream: StreamImpl,
  select: {
    from: number | undefined;
    ids: readonly number[] | undefined;
    subject: string | undefined;
    reason: string | undefined;
    limit: number | undefined;
  },
): { letters: Iterable<KeptLetter | undefined>; total: number; next: () => number | undefined } {
  const b = stream.store.bounds(stream.log);
  const limit = select.limit ?? Number.MAX_SAFE_INTEGER;
  let seq = Math.max(select.from ?? b.first, b.first);
  const filter = { subject: select.subject, contains: undefined };
  const wanted = (m: StoredMessage): boolean =>
    matches({ subject: m.s, data: m.d }, filter) &&
    (select.reason === undefined || (m.h?.[DEAD_LETTER_HEADERS.error] ?? '').includes(select.reason));
  const letter = (n: number, m: StoredMessage): KeptLetter => ({
    n,
    at: m.t,
    envelope: stream.envelope(n, m, 1, undefined),
  });
  function* byIds(ids: readonly number[]): Generator<KeptLetter | undefined> {
    let n = 0;
    let read = 0;
    for (const id of ids) {
      if (++read % 256 === 0) yield undefined;
      const e = stream.read(id, 1)[0];
      if (e === undefined || e.seq !== id || e.error !== undefined) continue;
      const m = e.value as StoredMessage;
      if (!wanted(m)) continue;
      yield letter(id, m);
      if (++n >= limit) return;
    }
  }
  function* scan(): Generator<KeptLetter | undefined> {
    let n = 0;
    let pages = 0;
    while (seq <= b.last) {
      if (pages++ > 0) yield undefined;
      const entries = stream.read(seq, 256);
      if (entries.length === 0) return;
      for (const e of entries) {
        seq = e.seq + 1;
        if (e.error !== undefined) continue;
        const m = e.value as StoredMessage;
        if (!wanted(m)) continue;
        yield letter(e.seq, m);
        if (++n >= limit) return;
      }
    }
  }
  const total = select.ids !== undefined ? select.ids.length : Math.min(limit, Math.max(0, b.last - seq + 1));
  return {
    letters: select.ids !== undefined ? byIds(select.ids) : scan(),
    total,
    next: () => (select.ids !== undefined ? undefined : seq),
  };
}

/**
 * An action must come as JSON from this server's own origin. A page on another site can make a
 * browser send a form or a `text/plain` POST to a loopback address without asking (no CORS
 * preflight), and without a token nothing else would tell it from the dashboard or the CLI, which
 * send `application/json` (a cross-site page cannot without a preflight, which this server does
 * not answer). Browsers name the requesting origin (`Origin`, `Sec-Fetch-Site`): another one is
 * refused too, so a same-site page on another port is no way around it.
 */
function sameOriginJson(req: IncomingMessage): void {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new HttpError(415, 'unsupported-media-type', 'an action is a JSON body: send content-type: application/json');
  }
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') {
    throw new HttpError(403, 'forbidden', `a request from another site (Sec-Fetch-Site: ${site}) may not act`);
  }
  const origin = req.headers.origin;
  if (origin === undefined) return;
  let host: string | undefined;
  try {
    host = new URL(origin).host;
  } catch {
    host = undefined;
  }
  if (host === undefined || host !== req.headers.host) {
    throw new HttpError(
      403,
      'forbidden',
      `a request from origin '${origin}' may not act: only this server's own pages may`,
    );
  }
}

function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      // Past the bound the rest is read and dropped, so the client still gets its 413.
      if (size > MAX_BODY_BYTES) {
        chunks.length = 0;
        reject(new HttpError(413, 'too-large', `request bodies are limited to ${MAX_BODY_BYTES} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', reject);
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return;
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve({});
      try {
        const v = JSON.parse(text) as unknown;
        if (typeof v !== 'object' || v === null || Array.isArray(v)) {
          reject(new HttpError(400, 'bad-json', 'the body must be a JSON object'));
        } else resolve(v as Record<string, unknown>);
      } catch (error) {
        reject(new HttpError(400, 'bad-json', `the body is not JSON: ${messageOf(error)}`));
      }
    });
  });
}

function describeTarget(body: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const k of ['actor', 'stream', 'consumer', 'subject', 'to', 'reason']) {
    const v = body[k];
    if (typeof v === 'string') parts.push(`${k}=${v.slice(0, 200)}`);
  }
  if (Array.isArray(body.ids)) parts.push(`ids=${body.ids.length}`);
  if (body.all === true) parts.push('all');
  return parts.join(' ');
}

function intParam(q: URLSearchParams, name: string): number | undefined {
  const v = q.get(name);
  if (v === null || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new OptionsError(name, 'must be an integer >= 0', v);
  return n;
}

/** A time as epoch ms or an ISO 8601 date. */
function timeParam(q: URLSearchParams, name: string): number | undefined {
  const v = q.get(name);
  if (v === null || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n)) throw new OptionsError(name, 'must be epoch ms or an ISO 8601 date', v);
  return n;
}

function optionalString(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw new OptionsError(name, 'must be a non-empty string', v);
  return v;
}

function requiredString(body: Record<string, unknown>, name: string): string {
  const v = optionalString(body, name);
  if (v === undefined) throw new OptionsError(name, 'is required', v);
  return v;
}
