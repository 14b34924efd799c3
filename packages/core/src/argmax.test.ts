import { describe, expect, it } from 'vitest';
import { argmax } from './argmax.ts';

describe('argmax', () => {
  it('takes the first index of the largest value within the range', () => {
    const x = Float32Array.from([9, 1, 3, 7, 3, 7, 9]);
    expect(argmax(x, 1, 5)).toBe(2); // values 1 3 7 3 7: the first 7
    expect(argmax(x, 0, 7)).toBe(0);
  });

  it('never picks NaN, even first; a row of -Infinity or NaN gives 0', () => {
    expect(argmax(Float32Array.from([Number.NaN, 2, 5, Number.NaN]), 0, 4)).toBe(2);
    expect(argmax(Float32Array.from([Number.NaN, Number.NaN]), 0, 2)).toBe(0);
    expect(argmax(Float32Array.from([Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY]), 0, 2)).toBe(0);
  });
});
