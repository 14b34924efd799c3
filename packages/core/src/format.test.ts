import { describe, expect, it } from 'vitest';
import { firstDivergence, formatBytes } from './format.ts';

describe('format', () => {
  it('formats bytes in binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(3 * 1024 * 1024)).toBe('3.00 MiB');
  });

  it('finds the first divergence of two token streams', () => {
    expect(firstDivergence([1, 2, 3], [1, 2, 3], true)).toBe(-1);
    expect(firstDivergence([1, 2, 3], [1, 5, 3], false)).toBe(1);
    // Still generating: a shorter stream is not a divergence yet.
    expect(firstDivergence([1, 2, 3], [1, 2], false)).toBe(-1);
    // Finished: one stopped earlier.
    expect(firstDivergence([1, 2, 3], [1, 2], true)).toBe(2);
  });
});
