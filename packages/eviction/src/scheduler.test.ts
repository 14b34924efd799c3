import { InvalidArgumentError } from '@kvcompress/core';
import { PageAllocator } from '@kvcompress/page-allocator';
import { describe, expect, it } from 'vitest';
import { blocksForNextStep, CompressionScheduler } from './scheduler.ts';

describe('CompressionScheduler', () => {
  it('compresses after prefill, every N decode steps, and under memory pressure', () => {
    const s = new CompressionScheduler(4, { compressionInterval: 3 });
    s.reset(1);
    expect(s.afterPrefill(1)).toBe('prefill');
    s.compressed(1);
    expect(s.beforeDecodeStep(1, 100, 1)).toBeNull();
    expect(s.beforeDecodeStep(1, 100, 1)).toBeNull();
    expect(s.beforeDecodeStep(1, 100, 1)).toBe('interval');
    s.compressed(1);
    expect(s.beforeDecodeStep(1, 0, 1)).toBe('memory-pressure');
    expect(s.compressions(1)).toBe(2);
  });

  it('compress-once compresses only after the first prefill', () => {
    const s = new CompressionScheduler(1, { compressOnce: true, compressionInterval: 1 });
    expect(s.afterPrefill(0)).toBe('prefill');
    s.compressed(0);
    for (let i = 0; i < 5; i++) expect(s.beforeDecodeStep(0, 0, 10)).toBeNull();
    expect(s.afterPrefill(0)).toBeNull();
  });

  it('interval 0 means no periodic compression', () => {
    const s = new CompressionScheduler(1, { compressionInterval: 0 });
    for (let i = 0; i < 100; i++) expect(s.beforeDecodeStep(0, 10, 1)).toBeNull();
  });

  it('rejects bad options', () => {
    expect(() => new CompressionScheduler(0)).toThrow(InvalidArgumentError);
    expect(() => new CompressionScheduler(1, { compressionInterval: -1 })).toThrow(InvalidArgumentError);
  });

  it('counts the blocks the next decode step needs, copy-on-write included', () => {
    const a = new PageAllocator({
      shape: { layers: 1, kvHeads: 2, headDim: 2, queryHeadsPerKvHead: 1 },
      numBlocks: 16,
      blockSize: 2,
      maxSequences: 2,
      maxContext: 16,
    });
    const seq = a.addSequence();
    a.appendTokens(seq, 2);
    expect(blocksForNextStep(a, seq)).toBe(2); // both heads' blocks are full
    a.appendTokens(seq, 1);
    expect(blocksForNextStep(a, seq)).toBe(0);
    const fork = a.forkSequence(seq);
    expect(blocksForNextStep(a, fork)).toBe(2); // shared partial blocks must be copied
  });
});
