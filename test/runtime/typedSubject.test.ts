import { SchemaError, SubjectError, subject, validate } from 'sluice';
import { describe, expect, test } from 'vitest';
import { z } from 'zod';

describe('typed subjects', () => {
  test('typedSubject - subject() validates its name with the subscribe rules', () => {
    expect(subject('orders.*').name).toBe('orders.*');
    expect(() => subject('orders..eu')).toThrow(SubjectError);
    expect(Object.isFrozen(subject('a'))).toBe(true);
  });

  test('typedSubject - validate returns the value its schema produces', () => {
    const schema = z.object({ qty: z.coerce.number() });
    expect(validate(schema, { qty: '3' }, 'orders')).toEqual({ qty: 3 });
  });

  test('typedSubject - validate throws a SchemaError naming the subject, each issue and its path', () => {
    const schema = z.object({ qty: z.number(), item: z.object({ sku: z.string() }) });
    let error: unknown;
    try {
      validate(schema, { qty: 'x', item: { sku: 1 } }, 'orders.created');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(SchemaError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_SCHEMA', subject: 'orders.created' });
    const issues = (error as SchemaError).issues;
    expect(issues.map((i) => i.path)).toEqual(['qty', 'item.sku']);
    expect((error as Error).message).toContain("invalid data on 'orders.created': qty: ");
    expect((error as Error).message).toContain('item.sku: ');
  });

  test('typedSubject - an async schema gives a promise that resolves or rejects the same way', async () => {
    const schema = z.string().refine(async (s) => s.startsWith('ok'), 'must start with ok');
    await expect(validate(schema, 'ok then', 'a')).resolves.toBe('ok then');
    await expect(validate(schema, 'nope', 'a')).rejects.toThrow("invalid data on 'a': must start with ok");
  });
});
