import { describe, expect, it } from 'vitest';
import { formatMs, sum } from './format.ts';

describe('format', () => {
  it('formats milliseconds and sums counts', () => {
    expect(formatMs(4.25)).toBe('4.3 ms');
    expect(formatMs(850)).toBe('850 ms');
    expect(formatMs(12_345)).toBe('12.3 s');
    expect(sum(new Int32Array([1, 2, 3]))).toBe(6);
  });
});
