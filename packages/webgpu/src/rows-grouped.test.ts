import { describe, expect, it } from 'vitest';
import { rowsGroupedBySequence } from './webgpu-backend.ts';

describe('rowsGroupedBySequence (the metric recording’s check on a step’s rows)', () => {
  // Row r belongs to sequence seqs[r]; the list names recorded rows after a 2-word header.
  const seqs = Int32Array.from([5, 5, 2, 7, 2]);
  const seen = new Int32Array(8).fill(-1);

  it('accepts rows whose sequences each come in one run', () => {
    expect(rowsGroupedBySequence(Int32Array.from([9, 9, 0, 1, 2, 3]), 2, 4, seqs, seen)).toBe(true);
    expect(rowsGroupedBySequence(Int32Array.from([9, 9, 2, 4, 3]), 2, 3, seqs, seen)).toBe(true);
    expect(seen.every((v) => v === -1)).toBe(true);
  });

  it('rejects a sequence whose rows are split by another, and leaves its scratch as it found it', () => {
    expect(rowsGroupedBySequence(Int32Array.from([9, 9, 2, 3, 4]), 2, 3, seqs, seen)).toBe(false);
    expect(seen.every((v) => v === -1)).toBe(true);
    // The same list again: the answer does not depend on an earlier call.
    expect(rowsGroupedBySequence(Int32Array.from([9, 9, 2, 3, 4]), 2, 3, seqs, seen)).toBe(false);
    expect(rowsGroupedBySequence(Int32Array.from([9, 9, 0, 1]), 2, 2, seqs, seen)).toBe(true);
  });
});
