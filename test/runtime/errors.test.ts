import { readFileSync } from 'node:fs';
import * as sluice from 'sluice';
import { createEnvelope, errorCodes, SluiceError } from 'sluice';
import { describe, expect, test } from 'vitest';
// Built here from its file so the sample is ready whether or not the package exports it yet.
import { LateDataError } from '../../runtime/errors.ts';

const docs = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');

/** Table rows of docs/errors.md: code -> [thrown when, how to fix]. */
function documentedRows(): Map<string, [string, string]> {
  const rows = new Map<string, [string, string]>();
  for (const line of docs.split('\n')) {
    const m = /^\|\s*`(SLUICE_ERR_[A-Z_]+)`\s*\|(.*)\|(.*)\|\s*$/.exec(line);
    if (m === null) continue;
    expect(rows.has(m[1] as string), `${m[1]} has two rows`).toBe(false);
    rows.set(m[1] as string, [(m[2] as string).trim(), (m[3] as string).trim()]);
  }
  return rows;
}

/**
 * One instance of each exported error class, built with sample inputs, and the code it must carry.
 * Written by hand: a new exported error class fails the test below until it is added here.
 */
const samples: Record<string, { make: () => SluiceError; code: string; names: string }> = {
  SluiceError: { make: () => new SluiceError('SLUICE_ERR_OPTIONS', 'base'), code: 'SLUICE_ERR_OPTIONS', names: 'base' },
  SubjectError: {
    make: () => new sluice.SubjectError('a..b', 'empty-token', 'token 2 is empty'),
    code: 'SLUICE_ERR_SUBJECT',
    names: "'a..b'",
  },
  OptionsError: {
    make: () => new sluice.OptionsError('mailbox.capacity', 'must be an integer >= 1', 0),
    code: 'SLUICE_ERR_OPTIONS',
    names: "'mailbox.capacity'",
  },
  TimeoutError: {
    make: () => new sluice.TimeoutError('request', 'svc.x', 100),
    code: 'SLUICE_ERR_TIMEOUT',
    names: "'svc.x'",
  },
  NoRespondersError: {
    make: () => new sluice.NoRespondersError('svc.x'),
    code: 'SLUICE_ERR_NO_RESPONDERS',
    names: "'svc.x'",
  },
  PermissionError: {
    make: () => new sluice.PermissionError('publish', 'admin.x', 'alice', "denied by 'admin.>'"),
    code: 'SLUICE_ERR_PERMISSION',
    names: "'admin.x'",
  },
  MaxPayloadError: {
    make: () => new sluice.MaxPayloadError('big', 2048, 1024),
    code: 'SLUICE_ERR_MAX_PAYLOAD',
    names: "'big'",
  },
  MailboxFullError: {
    make: () => new sluice.MailboxFullError('writer', 8),
    code: 'SLUICE_ERR_MAILBOX_FULL',
    names: "'writer'",
  },
  ClosedError: { make: () => new sluice.ClosedError('orders'), code: 'SLUICE_ERR_CLOSED', names: "'orders'" },
  SchemaError: {
    make: () => new sluice.SchemaError('orders', [{ message: 'expected number', path: 'qty' }]),
    code: 'SLUICE_ERR_SCHEMA',
    names: "'orders'",
  },
  DecodeError: {
    make: () => new sluice.DecodeError('orders', 'json', new SyntaxError('bad')),
    code: 'SLUICE_ERR_DECODE',
    names: "'orders'",
  },
  EncodeError: {
    make: () => new sluice.EncodeError('orders', 'json', new TypeError('Do not know how to serialize a BigInt')),
    code: 'SLUICE_ERR_ENCODE',
    names: "'orders'",
  },
  HandlerError: {
    make: () => new sluice.HandlerError('enricher', new Error('boom')),
    code: 'SLUICE_ERR_HANDLER',
    names: "'enricher'",
  },
  MessageError: {
    make: () => new sluice.MessageError(createEnvelope('orders', 1, { id: 'm-1' }), new Error('boom')),
    code: 'SLUICE_ERR_HANDLER',
    names: "'m-1'",
  },
  RestartLimitError: {
    make: () => new sluice.RestartLimitError('enricher', 5, 60_000, new Error('boom')),
    code: 'SLUICE_ERR_RESTART_LIMIT',
    names: "'enricher'",
  },
  ShutdownError: { make: () => new sluice.ShutdownError(5_000, 3), code: 'SLUICE_ERR_SHUTDOWN', names: '5000 ms' },
  LateDataError: {
    make: () => new LateDataError('hourly', 'm-1', 'its windows closed', 1_000, 5_000),
    code: 'SLUICE_ERR_LATE_DATA',
    names: "'m-1'",
  },
  SettlementError: {
    make: () => new sluice.SettlementError('m-1', 'emitted after settling'),
    code: 'SLUICE_ERR_SETTLEMENT',
    names: "'m-1'",
  },
  CorruptRecordError: {
    make: () => new sluice.CorruptRecordError({ stream: 'ORDERS', sequence: 7 }, 'checksum mismatch'),
    code: 'SLUICE_ERR_CORRUPT_RECORD',
    names: "sequence 7 of stream 'ORDERS'",
  },
  StreamError: {
    make: () => new sluice.StreamError('ORDERS', 'tryPublish cannot be used on a subject the stream captures'),
    code: 'SLUICE_ERR_STREAM',
    names: "'ORDERS'",
  },
  StateError: {
    make: () => new sluice.StateError('counter', 'ctx.state needs a checkpoint'),
    code: 'SLUICE_ERR_STATE',
    names: "'counter'",
  },
  ConnectorError: {
    make: () =>
      new sluice.ConnectorError('nats', "could not connect to 'nats://127.0.0.1:4222': authorization violation"),
    code: 'SLUICE_ERR_CONNECTOR',
    names: "'nats'",
  },
};

/** Every value exported by `sluice` that is SluiceError or a subclass of it. */
function exportedErrorClasses(): [string, Function][] {
  const classes: [string, Function][] = [];
  for (const [name, value] of Object.entries(sluice) as [string, unknown][]) {
    if (typeof value === 'function' && (value === SluiceError || value.prototype instanceof SluiceError)) {
      classes.push([name, value]);
    }
  }
  return classes;
}

describe('errors - catalogue and docs', () => {
  test('errors - every code in errorCodes has a row in docs/errors.md, with both columns filled', () => {
    const rows = documentedRows();
    for (const code of errorCodes) {
      const row = rows.get(code);
      expect(row, `docs/errors.md has no row for ${code}`).toBeDefined();
      expect(row?.[0].length, `${code}: "Thrown when" is empty`).toBeGreaterThan(20);
      expect(row?.[1].length, `${code}: "How to fix" is empty`).toBeGreaterThan(20);
    }
  });

  test('errors - docs/errors.md documents no code that errorCodes lacks', () => {
    expect([...documentedRows().keys()].sort()).toEqual([...errorCodes].sort());
  });

  test('errors - codes are unique and follow SLUICE_ERR_*', () => {
    expect(new Set(errorCodes).size).toBe(errorCodes.length);
    for (const code of errorCodes) expect(code).toMatch(/^SLUICE_ERR_[A-Z]+(_[A-Z]+)*$/);
  });

  test('errors - every exported error class has a sample here', () => {
    const exported = exportedErrorClasses().map(([name]) => name);
    expect(exported.length).toBeGreaterThan(10);
    expect(exported.filter((name) => samples[name] === undefined)).toEqual([]);
  });

  test.each(exportedErrorClasses())('errors - %s: name is the class name and code is its own', (exportName, cls) => {
    const sample = samples[exportName];
    if (sample === undefined) throw new Error(`no sample for ${exportName}`);
    const error = sample.make();
    expect(error).toBeInstanceOf(cls);
    expect(error).toBeInstanceOf(SluiceError);
    expect(error).toBeInstanceOf(Error);
    expect(cls.name).toBe(exportName);
    expect(error.name).toBe(exportName);
    expect(error.code).toBe(sample.code);
    expect(errorCodes).toContain(error.code);
    expect(typeof error.retryable).toBe('boolean');
    // Messages name the input, start lowercase and have no final period.
    expect(error.message).toContain(sample.names);
    expect(error.message).not.toMatch(/\.$/);
    expect(error.message[0]).toBe(error.message[0]?.toLowerCase());
    // toJSON keeps what a dead-letter header or a log line needs.
    const json = error.toJSON();
    expect(json).toMatchObject({ name: exportName, code: sample.code, message: error.message });
  });

  test('errors - LateDataError names the message, the window and the watermark, and is not retryable', () => {
    const error = new LateDataError('hourly', 'm-1', 'its windows closed', 1_000, 5_000);
    expect(error).toMatchObject({ name: 'LateDataError', code: 'SLUICE_ERR_LATE_DATA', retryable: false });
    expect(error.message).toBe(
      "late message 'm-1' in window 'hourly': its windows closed (event time 1000, watermark 5000)",
    );
  });

  test('errors - retryable is set where retrying can help', () => {
    expect(samples.TimeoutError?.make().retryable).toBe(true);
    expect(samples.NoRespondersError?.make().retryable).toBe(true);
    expect(samples.MailboxFullError?.make().retryable).toBe(true);
    expect(samples.SubjectError?.make().retryable).toBe(false);
    expect(samples.PermissionError?.make().retryable).toBe(false);
    // A handler error is as retryable as its cause when the cause is Sluice's own.
    expect(new sluice.HandlerError('a', samples.SubjectError?.make()).retryable).toBe(false);
    expect(new sluice.HandlerError('a', samples.TimeoutError?.make()).retryable).toBe(true);
  });

  test('errors - cause is kept', () => {
    const cause = new Error('root');
    const error = new sluice.DecodeError('s', 'json', cause);
    expect(error.cause).toBe(cause);
    expect(error.message).toContain('root');
  });

  test('errors - fields that name the input survive JSON.stringify', () => {
    const error = new sluice.PermissionError('subscribe', 'orders.secret', 'eve', "denied by 'orders.secret'");
    expect(JSON.parse(JSON.stringify(error))).toMatchObject({
      code: 'SLUICE_ERR_PERMISSION',
      operation: 'subscribe',
      subject: 'orders.secret',
      client: 'eve',
    });
  });
});

describe('errors - what an OptionsError says it got', () => {
  test('non-finite numbers are named as they are, not as JSON turns them (null)', async () => {
    const bus = new sluice.Bus();
    for (const [eventTime, shown] of [
      [Number.NaN, 'got NaN'],
      [Number.POSITIVE_INFINITY, 'got Infinity'],
      [Number.NEGATIVE_INFINITY, 'got -Infinity'],
    ] as const) {
      await expect(bus.publish('a', 1, { eventTime })).rejects.toThrow(shown);
    }
    expect(new sluice.OptionsError('x', 'a rule', -0).message).toBe("invalid option 'x': a rule, got 0");
  });
});
