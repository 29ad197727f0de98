import fc from 'fast-check';
import {
  type Codec,
  createEnvelope,
  DecodeError,
  decodeEnvelope,
  EncodeError,
  type Envelope,
  encodeEnvelope,
  jsonCodec,
  msgpackCodec,
} from 'sluice';
import { describe, expect, test } from 'vitest';

const codecs: [string, Codec][] = [
  ['msgpack', msgpackCodec],
  ['json', jsonCodec],
];

function decodeError(fn: () => unknown): DecodeError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(DecodeError);
    return error as DecodeError;
  }
  throw new Error('expected a DecodeError');
}

const bytes = (...b: number[]) => new Uint8Array(b);
const utf8 = (s: string) => new TextEncoder().encode(s);

describe('codec - round trips', () => {
  const values: unknown[] = [
    null,
    true,
    0,
    -1,
    2 ** 40,
    -(2 ** 31),
    3.25,
    '',
    'héllo wörld €😀',
    [],
    [1, 'two', [3, { four: 4 }]],
    { a: 1, nested: { list: [null, false, 'x'], empty: {} } },
    { 'key with spaces': 'v', ключ: 'значение' },
  ];

  test.each(codecs)('codec - %s round-trips JSON-like values', (_, codec) => {
    for (const value of values) expect(codec.decode(codec.encode(value))).toEqual(value);
  });

  test.each(codecs)('codec - %s round-trips random JSON values', (_, codec) => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (value) => {
        // JSON cannot tell -0 from 0; the value as JSON defines it is the expectation for both codecs.
        const expected = JSON.parse(JSON.stringify(value)) as unknown;
        expect(codec.decode(codec.encode(expected))).toStrictEqual(expected);
      }),
      { numRuns: 300 },
    );
  });

  test('codec - msgpack also keeps byte arrays and dates', () => {
    const value = { bytes: bytes(0, 1, 255), when: new Date(1_700_000_000_000) };
    const back = msgpackCodec.decode(msgpackCodec.encode(value)) as typeof value;
    expect(back.bytes).toBeInstanceOf(Uint8Array);
    expect([...back.bytes]).toEqual([0, 1, 255]);
    expect(back.when).toEqual(new Date(1_700_000_000_000));
  });

  test('codec - msgpack keeps the exact value of big integers', () => {
    for (const big of [
      2n ** 60n + 1n,
      -(2n ** 60n) - 1n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      2n ** 64n - 1n,
      2n ** 100n + 7n,
    ]) {
      expect(msgpackCodec.decode(msgpackCodec.encode({ big })), String(big)).toStrictEqual({ big });
    }
    // MessagePack has one integer type: a bigint a number holds exactly comes back as that number.
    expect(msgpackCodec.decode(msgpackCodec.encode(5n))).toBe(5);
    expect(msgpackCodec.decode(msgpackCodec.encode(2n ** 53n))).toBe(2 ** 53);
    expect(msgpackCodec.decode(msgpackCodec.encode(2 ** 53 + 2))).toBe(2 ** 53 + 2);
    // An int64 written by another encoder (here uint64 1.7e12 ms) is a number when a number holds it.
    expect(msgpackCodec.decode(bytes(0xcf, 0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00))).toBe(1_700_000_000_000);
  });

  test('codec - msgpack encodes objects with more than 65,535 keys', () => {
    const value = Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`k${i}`, i]));
    expect(msgpackCodec.decode(msgpackCodec.encode(value))).toStrictEqual(value);
  });

  test('codec - json refuses a BigInt with an EncodeError naming the subject, rather than change the value', () => {
    const error = (() => {
      try {
        jsonCodec.encode({ n: 2n ** 60n + 1n }, 'ledger.entries');
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(EncodeError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_ENCODE', subject: 'ledger.entries' });
    expect((error as Error).message).toContain("invalid payload on 'ledger.entries': not encodable as json");
    expect((error as Error).message).toContain('BigInt');
  });

  test.each(codecs)('codec - %s names the subject of a value it cannot encode', (_, codec) => {
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    expect(() => codec.encode(loop, 'a.b')).toThrow(EncodeError);
    expect(() => codec.encode(loop)).toThrow("invalid payload on '?'");
  });

  test.each(codecs)('codec - %s keeps a key named __proto__ as data, touching no prototype', (_, codec) => {
    const value = JSON.parse('{"__proto__":{"polluted":true},"list":[{"__proto__":1}],"__proto_":2}') as object;
    const back = codec.decode(codec.encode(value)) as Record<string, unknown>;
    expect(back).toStrictEqual(value);
    expect(Object.keys(back)).toEqual(['__proto__', 'list', '__proto_']);
    expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test('codec - json encodes undefined as null rather than as undecodable text', () => {
    expect(new TextDecoder().decode(jsonCodec.encode(undefined))).toBe('null');
    expect(jsonCodec.decode(jsonCodec.encode(undefined))).toBeNull();
  });

  test('codec - codecs name themselves', () => {
    expect(msgpackCodec.name).toBe('msgpack');
    expect(jsonCodec.name).toBe('json');
  });
});

describe('codec - envelopes', () => {
  const full: Envelope = {
    ...createEnvelope(
      'orders.created',
      { id: 7, items: ['a', 'b'] },
      {
        key: 'user-1',
        eventTime: 1_700_000_000_123,
        headers: { traceparent: '00-ab-cd-01' },
        replyTo: '_INBOX.x.y',
        attempt: 3,
      },
    ),
  };

  test.each(codecs)('codec - an envelope round-trips through %s with every field', (_, codec) => {
    const back = decodeEnvelope(encodeEnvelope(full, codec), codec, full.subject);
    expect(back).toEqual({ ...full, lineage: undefined });
    expect(Object.isFrozen(back.headers)).toBe(true);
  });

  test.each(codecs)('codec - a minimal envelope round-trips through %s', (_, codec) => {
    const minimal = createEnvelope('a', 1);
    const back = decodeEnvelope(encodeEnvelope(minimal, codec), codec);
    expect(back).toEqual({
      id: minimal.id,
      subject: 'a',
      data: 1,
      key: undefined,
      eventTime: undefined,
      headers: {},
      attempt: 1,
      replyTo: undefined,
      lineage: undefined,
    });
  });

  test('codec - lineage stays behind: it is process-local', () => {
    const lineage = { ids: ['x'], retain() {}, release() {}, absorb() {}, releaseAbsorbed() {} };
    const env = createEnvelope('a', 1, { lineage });
    expect(decodeEnvelope(encodeEnvelope(env)).lineage).toBeUndefined();
  });

  test('codec - the default envelope codec is msgpack', () => {
    const encoded = encodeEnvelope(full);
    expect(decodeEnvelope(encoded, msgpackCodec)).toEqual({ ...full, lineage: undefined });
  });
});

describe('codec - bad bytes', () => {
  test.each([
    ['the reserved byte 0xc1', bytes(0xc1)],
    ['0xc1 inside an array', bytes(0x91, 0xc1)],
    ['0xc1 as a map value', bytes(0x81, 0xa1, 0x61, 0xc1)],
    ['a truncated array', bytes(0x92, 0x01)],
    ['a truncated string', bytes(0xd9, 0x05, 0x61)],
    ['trailing bytes', bytes(0x01, 0x02, 0x03)],
    ['no bytes', bytes()],
  ])('codec - msgpack: %s is a DecodeError naming the subject', (_, input) => {
    const error = decodeError(() => msgpackCodec.decode(input, 'sensors.temp'));
    expect(error).toMatchObject({ code: 'SLUICE_ERR_DECODE', subject: 'sensors.temp' });
    expect(error.message).toContain("invalid payload on 'sensors.temp': not decodable as msgpack");
    expect(error.cause).toBeInstanceOf(Error);
  });

  test.each([
    ['invalid UTF-8', bytes(0xff, 0xfe)],
    ['broken JSON', utf8('{"a":')],
    ['text that is not JSON', utf8('undefined')],
    ['no bytes', bytes()],
  ])('codec - json: %s is a DecodeError naming the subject', (_, input) => {
    const error = decodeError(() => jsonCodec.decode(input, 'sensors.temp'));
    expect(error).toMatchObject({ code: 'SLUICE_ERR_DECODE', subject: 'sensors.temp' });
    expect(error.message).toContain("invalid payload on 'sensors.temp': not decodable as json");
  });

  test('codec - random bytes either decode or give a DecodeError, never another error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (input) => {
        for (const [, codec] of codecs) {
          try {
            codec.decode(input, 'fuzz');
          } catch (error) {
            expect(error).toBeInstanceOf(DecodeError);
          }
          try {
            decodeEnvelope(input, codec, 'fuzz');
          } catch (error) {
            expect(error).toBeInstanceOf(DecodeError);
            expect((error as DecodeError).subject).toBe('fuzz');
          }
        }
      }),
      { numRuns: 1000 },
    );
  });

  test.each([
    ['a number', 42, 'not a map'],
    ['an array', [1, 2], 'not a map'],
    ['null', null, 'not a map'],
    ['another version', { v: 2, id: 'x', subject: 'a' }, 'version 2 is not 1'],
    ['no id', { v: 1, subject: 'a' }, "'id'"],
    ['no subject', { v: 1, id: 'x' }, "'subject'"],
    ['a numeric key', { v: 1, id: 'x', subject: 'a', key: 5 }, "'key'"],
    ['a text event time', { v: 1, id: 'x', subject: 'a', eventTime: 'noon' }, "'eventTime'"],
    ['headers that are not strings', { v: 1, id: 'x', subject: 'a', headers: { n: 1 } }, "'headers'"],
    ['headers as a string', { v: 1, id: 'x', subject: 'a', headers: 'h' }, "'headers'"],
    ['attempt zero', { v: 1, id: 'x', subject: 'a', attempt: 0 }, "'attempt'"],
    ['a numeric replyTo', { v: 1, id: 'x', subject: 'a', replyTo: 1 }, "'replyTo'"],
  ])(
    'codec - a value that is not an envelope (%s) is a DecodeError naming the subject and the field',
    (_, value, rule) => {
      for (const [name, codec] of codecs) {
        const error = decodeError(() => decodeEnvelope(codec.encode(value), codec, 'in.orders'));
        expect(error).toMatchObject({ code: 'SLUICE_ERR_DECODE', subject: 'in.orders' });
        expect(error.message).toContain(`invalid payload on 'in.orders': not decodable as ${name} envelope`);
        expect(error.message).toContain(rule);
      }
    },
  );
});
