/**
 * Sluice's subject and queue name rules against the real nats-server, spoken to over its raw client
 * protocol (verbose and pedantic, so every line is answered with +OK or -ERR).
 *
 * The server "takes" a subject for subscribing when a SUB with it is answered +OK and a PUB to a
 * literal subject it matches comes back as a MSG for that subscription, with the same subject: the
 * protocol splits lines on space and tab and ends them at CR LF, so a SUB may be answered +OK for a
 * different subject than the one meant (`SUB a b 1` subscribes to `a` in queue group `b`). Names
 * travel as UTF-8, which is what `Buffer.from` makes of them, as any client does: a lone surrogate
 * becomes U+FFFD, and the subject that comes back is another one. The server takes a subject for
 * publishing when the PUB is answered +OK, a `>` subscriber gets it with the same subject, and a
 * subscriber can subscribe to it by name: Sluice refuses a publish subject nobody could subscribe to
 * (`a\rb` passes a PUB but breaks a SUB line).
 */
import { Socket } from 'node:net';
import { Bus, MAX_SUBJECT_BYTES, OptionsError, PermissionError, type Permissions, validateSubject } from 'sluice';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type NatsServer, natsServerMissing, startNatsServer } from '../services/natsServer.ts';

interface Reply {
  /** Protocol lines other than INFO, PONG and MSG. */
  readonly lines: string[];
  readonly msgs: { readonly subject: Buffer; readonly sid: string }[];
  /** The server closed the connection (a protocol error). */
  readonly closed: boolean;
}

const CRLF = Buffer.from('\r\n');
const bytes = (s: string | Buffer) => (typeof s === 'string' ? Buffer.from(s, 'utf8') : s);
const line = (...parts: (string | Buffer)[]) => Buffer.concat([...parts.map(bytes), CRLF]);

/** Opens a connection, sends `parts` then PING, and collects everything up to the PONG or the close. */
function session(server: NatsServer, parts: Buffer[], login: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const lines: string[] = [];
    const msgs: { subject: Buffer; sid: string }[] = [];
    let buffer = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ lines, msgs, closed });
    };
    const timer = setTimeout(() => {
      done = true;
      socket.destroy();
      reject(new Error(`no PONG from nats-server within 5 s; lines so far: ${JSON.stringify(lines)}`));
    }, 5_000);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const end = buffer.indexOf(CRLF);
        if (end < 0) return;
        const head = buffer.subarray(0, end);
        if (head.subarray(0, 4).toString('latin1') === 'MSG ') {
          // MSG <subject> <sid> [reply] <size>, then the payload and CR LF. Fields are split on
          // spaces only: a subject with one was already split by the server.
          const fields = splitSpaces(head);
          const size = Number((fields[fields.length - 1] as Buffer).toString('latin1'));
          if (buffer.length < end + 2 + size + 2) return;
          msgs.push({ subject: fields[1] as Buffer, sid: (fields[2] as Buffer).toString('latin1') });
          buffer = buffer.subarray(end + 2 + size + 2);
          continue;
        }
        const text = head.toString('utf8');
        buffer = buffer.subarray(end + 2);
        if (text === 'PONG') return finish(false);
        if (!text.startsWith('INFO ')) lines.push(text);
      }
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => finish(true));
    socket.connect(server.port, server.host, () => {
      const connect = JSON.stringify({ verbose: true, pedantic: true, ...login });
      socket.write(Buffer.concat([line(`CONNECT ${connect}`), ...parts, line('PING')]));
    });
  });
}

function splitSpaces(head: Buffer): Buffer[] {
  const fields: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= head.length; i++) {
    if (i === head.length || head[i] === 0x20) {
      if (i > start) fields.push(head.subarray(start, i));
      start = i + 1;
    }
  }
  return fields;
}

const clean = (r: Reply) => !r.closed && r.lines.every((l) => !l.startsWith('-ERR'));
/** The same subject came back: the same bytes, which decode to the same JavaScript string. */
const sameSubject = (got: Buffer, subject: string) =>
  got.equals(bytes(subject)) && new TextDecoder().decode(got) === subject;

/** A literal subject the pattern matches: wildcards filled with `x`. */
const probeFor = (pattern: string) =>
  pattern
    .split('.')
    .map((t) => (t === '*' || t === '>' ? 'x' : t))
    .join('.');

async function serverSubscribes(server: NatsServer, subject: string): Promise<boolean> {
  const probe = probeFor(subject);
  const r = await session(server, [line('SUB ', subject, ' 1'), line('PUB ', probe, ' 0'), CRLF]);
  return clean(r) && r.msgs.some((m) => m.sid === '1' && sameSubject(m.subject, probe));
}

async function serverPublishes(server: NatsServer, subject: string): Promise<boolean> {
  const r = await session(server, [line('SUB > 1'), line('PUB ', subject, ' 0'), CRLF]);
  const delivered = clean(r) && r.msgs.some((m) => m.sid === '1' && sameSubject(m.subject, subject));
  return delivered && (await serverSubscribes(server, subject));
}

function sluiceTakes(subject: string, use: 'publish' | 'subscribe'): boolean {
  try {
    validateSubject(subject, use);
    return true;
  } catch {
    return false;
  }
}

const subjects: [label: string, subject: string][] = [
  ['plain', 'orders'],
  ['tokens', 'orders.eu.created'],
  ['form feed', 'a\fb'],
  ['vertical tab', 'a\vb'],
  ['no-break space', 'a\u00a0b'],
  ['ideographic space', 'a\u3000b'],
  ['line separator', 'a\u2028b'],
  ['paragraph separator', 'a\u2029b'],
  ['byte order mark', 'a\ufeffb'],
  ['next line', 'a\u0085b'],
  ['NUL inside', 'a\u0000b'],
  ['NUL alone', '\u0000'],
  ['escape', 'a\u001bb'],
  ['delete', 'a\u007fb'],
  ['form feed token', 'a.\f'],
  ['non-Latin', 'ключ.значение'],
  ['astral', 'emoji.😀'],
  ['replacement character', 'a\ufffdb'],
  ['space', 'a b'],
  ['leading space', ' a'],
  ['trailing space', 'a '],
  ['tab', 'a\tb'],
  ['CR', 'a\rb'],
  ['LF', 'a\nb'],
  ['CR LF', 'a\r\nb'],
  ['lone high surrogate', 'a\ud800b'],
  ['lone low surrogate', 'a\udc00'],
  ['surrogates reversed', '\udc00\ud800'],
  ['empty', ''],
  ['dot', '.'],
  ['leading dot', '.a'],
  ['trailing dot', 'a.'],
  ['empty token', 'a..b'],
  ['star', '*'],
  ['full wildcard', '>'],
  ['star token', 'a.*'],
  ['full wildcard token', 'a.>'],
  ['star first', '*.b'],
  ['stars', '*.*.*'],
  ['full wildcard not last', 'a.>.b'],
  ['full wildcard first', '>.a'],
  ['star inside token', 'a*'],
  ['gt inside token', 'a>'],
  ['star leading a token', '*a'],
  ['star inside middle token', 'a.b*.c'],
  ['double star', '**'],
  ['wildcards in a token after a dot', 'a.*b.>c'],
  [`${MAX_SUBJECT_BYTES} bytes`, 'a'.repeat(MAX_SUBJECT_BYTES)],
  [`${MAX_SUBJECT_BYTES / 2} tokens`, `${'a.'.repeat(MAX_SUBJECT_BYTES / 2 - 1)}a`],
  [`${MAX_SUBJECT_BYTES} bytes of astral characters`, '😀'.repeat(MAX_SUBJECT_BYTES / 4)],
  ['5000 bytes', 'a'.repeat(5000)],
  ['4096 bytes of astral characters', '😀'.repeat(1024)],
];

const missing = natsServerMissing('the nats-server subject test');

describe.skipIf(missing !== undefined)('security - subjects agree with nats-server', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  test.each(subjects)('security - %s: subscribe as nats-server', async (_, subject) => {
    expect(sluiceTakes(subject, 'subscribe')).toBe(await serverSubscribes(server, subject));
  });

  test.each(subjects)('security - %s: publish as nats-server', async (_, subject) => {
    expect(sluiceTakes(subject, 'publish')).toBe(await serverPublishes(server, subject));
  });

  test('security - the length limit leaves room on the server line for a reply subject and a size', async () => {
    // The server limits the whole protocol line to 4 KiB, so its subject limit depends on what else
    // is on the line; Sluice refuses a little earlier so a request's reply subject still fits.
    const longest = 'a'.repeat(4096 - ' 1'.length);
    expect(await serverSubscribes(server, longest)).toBe(true);
    expect(sluiceTakes(longest, 'subscribe')).toBe(false);
    const withReply = await session(server, [
      line('SUB > 1'),
      line('PUB ', 'a'.repeat(MAX_SUBJECT_BYTES), ` _INBOX.${'r'.repeat(48)} 1048576`),
      Buffer.alloc(1024 * 1024, 0x61),
      CRLF,
    ]);
    expect(clean(withReply)).toBe(true);
    expect(withReply.msgs).toHaveLength(1);
  });

  const queues: [label: string, queue: string][] = [
    ['plain', 'workers'],
    ['dots', 'a.b'],
    ['empty tokens', '..'],
    ['star', '*'],
    ['full wildcard', '>'],
    ['form feed', 'q\f'],
    ['NUL', 'q\u0000'],
    ['no-break space', 'q\u00a0'],
    ['space', 'q b'],
    ['tab', 'q\tb'],
    ['CR', 'q\rb'],
    ['LF', 'q\nb'],
    ['reserved _sys_', '_sys_'],
    ['5000 bytes', 'q'.repeat(5000)],
  ];

  test.each(queues)('security - queue name %s: as nats-server', async (_, queue) => {
    const r = await session(server, [line('SUB a ', queue, ' 1'), line('PUB a 0'), CRLF]);
    const serverTakes = clean(r) && r.msgs.some((m) => m.sid === '1' && sameSubject(m.subject, 'a'));
    let sluiceError: unknown;
    try {
      new Bus().subscribe('a', { queue });
    } catch (error) {
      sluiceError = error;
    }
    if (!serverTakes) expect(sluiceError).toBeInstanceOf(OptionsError);
    expect(sluiceError === undefined).toBe(serverTakes);
  });

  test('security - queue names with a lone surrogate are refused: on the server two such names are one group', async () => {
    // The server never echoes a queue name, but it shows what UTF-8 did to it: both names became
    // U+FFFD, so the two subscriptions share one group and one message reaches only one of them.
    const r = await session(server, [
      line('SUB a ', 'q\ud800', ' 1'),
      line('SUB a ', 'q\udbff', ' 2'),
      line('PUB a 0'),
      CRLF,
    ]);
    expect(clean(r)).toBe(true);
    expect(r.msgs).toHaveLength(1);
    const bus = new Bus();
    expect(() => bus.subscribe('a', { queue: 'q\ud800' })).toThrow(OptionsError);
    expect(() => bus.subscribe('a', { queue: 'q\udbff' })).toThrow(/lone surrogate/);
  });
});

/**
 * Subscribe permissions with queue groups (`'<pattern> <queue>'` entries) against nats-server's
 * own decisions: each permission set is a user of one server, and every probe is a SUB (with or
 * without a queue group) answered +OK or with a permissions violation.
 */
const permissionSets: [label: string, subscribe: NonNullable<Permissions['subscribe']>][] = [
  ['plain allow', { allow: ['orders.>'] }],
  ['queue-only allow', { allow: ['orders.> billing'] }],
  ['plain allow and a narrower queue allow', { allow: ['orders.>', 'orders.eu.* eu-workers'] }],
  ['wildcard queue allow', { allow: ['orders.> workers.*'] }],
  ['plain deny', { deny: ['orders.secret'] }],
  ['queue deny', { deny: ['orders.> ui'] }],
  ['plain deny beside a queue deny', { deny: ['orders.eu', 'orders.> other'] }],
  ['allow and deny by queue', { allow: ['orders.*', 'orders.eu q1'], deny: ['orders.eu q2'] }],
  ['wildcard queue deny', { deny: ['orders.* ui.>'] }],
];

const probes: [subject: string, queue: string | undefined][] = [
  ['orders.eu', undefined],
  ['orders.eu', 'billing'],
  ['orders.eu', 'ui'],
  ['orders.eu', 'ui.web'],
  ['orders.eu', 'eu-workers'],
  ['orders.eu', 'workers.a'],
  ['orders.eu', 'workers'],
  ['orders.eu', 'other'],
  ['orders.eu', 'q1'],
  ['orders.eu', 'q2'],
  ['orders.us', 'q2'],
  ['orders.secret', undefined],
  ['orders.secret', 'billing'],
  ['orders.*', undefined],
  ['orders.*', 'billing'],
  // ('orders.>' under an allow of 'orders.*' is left out: nats-server lets its '>' token match the
  // '*' and allows it, though it receives more than 'orders.*' covers; Sluice refuses it.)
  ['orders.eu.x', 'eu-workers'],
  ['orders.eu.x', 'billing'],
  ['orders.eu.x', undefined],
  ['payments', 'billing'],
];

test('security - a subscription wider than every allow entry is refused, where nats-server lets a > match a *', () => {
  const client = new Bus().client('narrow', { subscribe: { allow: ['orders.*', 'orders.eu q1'] } });
  expect(() => client.subscribe('orders.>', { queue: 'billing' })).toThrow(PermissionError);
  expect(() => client.subscribe('orders.>')).toThrow(PermissionError);
  client.subscribe('orders.*', { queue: 'billing' }).unsubscribe();
});

describe.skipIf(missing !== undefined)(
  'security - subscribe permissions with queue groups agree with nats-server',
  () => {
    let server: NatsServer;
    beforeAll(async () => {
      const users = permissionSets.map(
        ([, subscribe], i) =>
          `{ user: "u${i}", password: "p", permissions: { subscribe: ${JSON.stringify(subscribe)} } }`,
      );
      server = await startNatsServer({ config: `authorization { users = [\n${users.join('\n')}\n] }\n` });
    });
    afterAll(async () => {
      await server?.stop();
    });

    test.each(permissionSets.map(([label, subscribe], i) => [label, subscribe, i] as const))(
      'security - permissions %s: every SUB allowed or refused as nats-server decides',
      async (_, subscribe, i) => {
        const lines = probes.map(([subject, queue], sid) =>
          line('SUB ', subject, queue === undefined ? '' : ` ${queue}`, ` ${sid}`),
        );
        const r = await session(server, lines, { user: `u${i}`, pass: 'p' });
        expect(r.closed).toBe(false);
        // One +OK or -ERR per SUB, in order (the CONNECT's +OK first).
        const answers = r.lines.slice(1);
        expect(answers).toHaveLength(probes.length);
        const bus = new Bus();
        const client = bus.client(`u${i}`, { subscribe });
        const verdicts = probes.map(([subject, queue], sid) => {
          const serverAllows = answers[sid] === '+OK';
          let sluiceAllows = true;
          try {
            client.subscribe(subject, queue === undefined ? {} : { queue }).unsubscribe();
          } catch (error) {
            expect(error).toBeInstanceOf(PermissionError);
            sluiceAllows = false;
          }
          return {
            probe: `${subject}${queue === undefined ? '' : ` ${queue}`}`,
            server: serverAllows,
            sluice: sluiceAllows,
          };
        });
        expect(verdicts.filter((v) => v.server !== v.sluice)).toEqual([]);
        // The set decides something: not everything allowed, not everything refused.
        expect(new Set(verdicts.map((v) => v.server)).size).toBe(2);
      },
    );

    test('security - a queue group entry on the publish side, or with more than one space, is an OptionsError naming it', () => {
      const bus = new Bus();
      expect(() => bus.client('p', { publish: { allow: ['orders.> billing'] } })).toThrow(
        /publish\.allow\[0\].*no queue group after it/,
      );
      expect(() => bus.client('s', { subscribe: { deny: ['orders.>', 'orders.> a b'] } })).toThrow(
        /subscribe\.deny\[1\].*one space/,
      );
      expect(() => bus.client('q', { subscribe: { allow: ['orders.> q\tb'] } })).toThrow(OptionsError);
    });
  },
);
