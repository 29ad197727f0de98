import {
  Bus,
  type Codec,
  createEnvelope,
  DecodeError,
  decodeEnvelope,
  EncodeError,
  encodeEnvelope,
  jsonCodec,
  MaxPayloadError,
  msgpackCodec,
  type SluiceError,
} from 'sluice';
import { describe, expect, test } from 'vitest';

/** What `fn` threw, or undefined. */
function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return undefined;
}

/** MessagePack bytes of arrays nested `depth` deep: 0x91 (an array of one) repeated, then 0x90 ([]). */
function nestedArrays(depth: number): Uint8Array {
  const bytes = new Uint8Array(depth + 1).fill(0x91);
  bytes[depth] = 0x90;
  return bytes;
}

/** The same as maps `{ __proto__: {...} }`, which take msgpackr's Map path and Sluice's conversion. */
function nestedProtoMaps(depth: number): Uint8Array {
  const key = [0xa9, ...Buffer.from('__proto__')];
  const bytes: number[] = [];
  for (let i = 0; i < depth; i++) bytes.push(0x81, ...key);
  bytes.push(0x80);
  return new Uint8Array(bytes);
}

const depths = [1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 8_800, 10_000, 20_000, 100_000, 1_000_000];

describe('security - hostile bytes to decode', () => {
  test.each(depths)('security - msgpack nested %i deep decodes or is a DecodeError naming the subject', (depth) => {
    for (const bytes of [nestedArrays(depth), nestedProtoMaps(depth)]) {
      const error = thrownBy(() => msgpackCodec.decode(bytes, 'in.deep'));
      if (error !== undefined) {
        expect(error).toBeInstanceOf(DecodeError);
        expect(error).toMatchObject({ subject: 'in.deep' });
      }
      const envelopeError = thrownBy(() => decodeEnvelope(bytes, msgpackCodec, 'in.deep'));
      expect(envelopeError).toBeInstanceOf(DecodeError);
      expect((envelopeError as Error).message).toContain("'in.deep'");
    }
  });

  test('security - json nested a million deep is a DecodeError', () => {
    const text = `${'['.repeat(1_000_000)}${']'.repeat(1_000_000)}`;
    const error = thrownBy(() => jsonCodec.decode(new TextEncoder().encode(text), 'in.deep'));
    if (error !== undefined) expect(error).toBeInstanceOf(DecodeError);
  });
});

function circular(): object {
  const value: Record<string, unknown> = { name: 'loop' };
  value.self = value;
  return value;
}

function deepArray(depth: number): unknown {
  let value: unknown = [];
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

const manyKeys = Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`k${i}`, i]));

const unencodable: [label: string, value: unknown][] = [
  ['a circular object', circular()],
  ['a symbol', Symbol('s')],
  ['a symbol in an object', { s: Symbol('s') }],
  ['arrays nested 1,000,000 deep', deepArray(1_000_000)],
];

describe("security - measure: 'encoded' on values a codec cannot encode", () => {
  test.each(unencodable)('security - msgpack: %s is an EncodeError naming the subject', async (_, value) => {
    const bus = new Bus({ measure: 'encoded' });
    bus.subscribe('in.>');
    const error = await bus.publish('in.x', value).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EncodeError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_ENCODE', subject: 'in.x' });
    expect(thrownBy(() => bus.tryPublish('in.x', value))).toBeInstanceOf(EncodeError);
  });

  test('security - msgpack: an object with 70,000 keys is measured: a MaxPayloadError above the limit', async () => {
    const bus = new Bus({ measure: 'encoded', maxPayloadBytes: 1024 });
    const error = await bus.publish('in.x', manyKeys).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MaxPayloadError);
    expect(error).toMatchObject({ subject: 'in.x', limit: 1024 });
    expect((error as MaxPayloadError).size).toBeGreaterThan(500_000);
    await expect(new Bus({ measure: 'encoded' }).publish('in.x', manyKeys)).resolves.toBeUndefined();
  });

  test.each([
    ['a circular object', circular()],
    ['arrays nested 1,000,000 deep', deepArray(1_000_000)],
    ['a bigint', 2n ** 60n + 1n],
  ] as [string, unknown][])('security - json: %s is an EncodeError naming the subject', async (_, value) => {
    const bus = new Bus({ measure: 'encoded', codec: jsonCodec });
    const error = await bus.publish('in.x', { value }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EncodeError);
    expect(error).toMatchObject({ subject: 'in.x' });
  });

  test('security - json leaves symbols out, as JSON.stringify does', async () => {
    const bus = new Bus({ measure: 'encoded', codec: jsonCodec });
    await expect(bus.publish('in.x', { s: Symbol('s'), list: [Symbol('t')] })).resolves.toBeUndefined();
    expect(new TextDecoder().decode(jsonCodec.encode({ s: Symbol('s'), list: [Symbol('t')] }))).toBe('{"list":[null]}');
  });

  test('security - a codec of the user that throws anything gives an EncodeError naming the subject', async () => {
    const faulty: Codec = {
      name: 'faulty',
      encode: () => {
        throw new TypeError('cannot');
      },
      decode: () => null,
    };
    const bus = new Bus({ measure: 'encoded', codec: faulty });
    const error = await bus.publish('in.x', { a: 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EncodeError);
    expect((error as Error).message).toBe("invalid payload on 'in.x': not encodable as faulty: cannot");
    expect((error as SluiceError).cause).toBeInstanceOf(TypeError);
  });

  test('security - encodeEnvelope of an unencodable value is an EncodeError naming the envelope subject', () => {
    const env = createEnvelope('out.x', circular(), undefined, 0);
    for (const codec of [msgpackCodec, jsonCodec]) {
      const error = thrownBy(() => encodeEnvelope(env, codec));
      expect(error).toBeInstanceOf(EncodeError);
      expect(error).toMatchObject({ subject: 'out.x' });
    }
  });
});
