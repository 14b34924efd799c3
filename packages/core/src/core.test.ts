import { describe, expect, it } from 'vitest';
import {
  DuplicatePolicyError,
  headCount,
  InvalidArgumentError,
  KvCompressError,
  kvBytesPerToken,
  OutOfBlocksError,
  SlotMoveList,
  UnknownPolicyError,
  validateKvCacheShape,
} from './index.ts';

describe('errors', () => {
  it('are named KvCompressError subclasses with stable codes and actionable messages', () => {
    const e = new OutOfBlocksError(3, 1, 'Appending 1 token(s)');
    expect(e).toBeInstanceOf(KvCompressError);
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('OutOfBlocksError');
    expect(e.code).toBe('OUT_OF_BLOCKS');
    expect(e.message).toMatch(/needs 3 free KV blocks but only 1/);
    expect(e.message).toMatch(/Compress or remove a sequence/);
    expect(new UnknownPolicyError('x', ['a', 'b']).message).toMatch(/Registered policies: a, b/);
    expect(new DuplicatePolicyError('a').code).toBe('DUPLICATE_POLICY');
  });
});

describe('KV cache shape', () => {
  const llama8b = { layers: 32, kvHeads: 8, headDim: 128, queryHeadsPerKvHead: 4 };

  it('computes bytes per token: 2 (K, V) x layers x kvHeads x headDim x dtype', () => {
    expect(kvBytesPerToken(llama8b, 'f16')).toBe(131072);
    expect(kvBytesPerToken(llama8b, 'f32')).toBe(262144);
    expect(headCount(llama8b)).toBe(256);
  });

  it('rejects malformed shapes', () => {
    expect(() => validateKvCacheShape(llama8b)).not.toThrow();
    for (const bad of [{ layers: 0 }, { kvHeads: 1.5 }, { headDim: -1 }, { queryHeadsPerKvHead: Number.NaN }]) {
      expect(() => validateKvCacheShape({ ...llama8b, ...bad })).toThrow(InvalidArgumentError);
    }
  });
});

describe('SlotMoveList', () => {
  it('applies dst := src reading the state before the list', () => {
    const m = new SlotMoveList(4);
    m.push(3, 0);
    m.push(4, 1);
    const v = new Float32Array([0, 1, 2, 30, 40]);
    m.applyTo(v);
    expect(Array.from(v)).toEqual([30, 40, 2, 30, 40]);
    m.clear();
    expect(m.count).toBe(0);
    expect(m.capacity).toBe(4);
  });
});
