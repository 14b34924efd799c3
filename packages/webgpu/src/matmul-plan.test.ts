import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BLOCKED_MATMUL_K_STEP, BLOCKED_MATMUL_MIN_ROWS, BLOCKED_MATMUL_TAIL_ROWS, BLOCKED_MATMUL_WORKGROUPS } from './kernels.ts';
import { type BlockedMatmulSettings, planBlockedMatmul } from './matmul-plan.ts';

const defaults: BlockedMatmulSettings = {
  minRows: BLOCKED_MATMUL_MIN_ROWS,
  tileRows: null,
  splitK: null,
  workgroups: BLOCKED_MATMUL_WORKGROUPS,
  tailRows: BLOCKED_MATMUL_TAIL_ROWS,
};

/** [rowBegin, rowEnd, tileRows] of each block, and the tail. */
function shape(rows: number, settings = defaults) {
  const plan = planBlockedMatmul(rows, 4096, 4096, settings);
  return plan && { blocks: plan.blocks.map((b) => [b.rowBegin, b.rowEnd, b.tileRows]), tail: plan.tailRows };
}

describe('planBlockedMatmul', () => {
  it('tiles 128 rows at a time; then a matvec tail of at most 16 rows, a 64-row tile, or one more 128-row tile', () => {
    expect(BLOCKED_MATMUL_TAIL_ROWS).toBe(16);
    expect(shape(256)).toEqual({ blocks: [[0, 256, 128]], tail: 0 });
    // The end-to-end bench's batches (8B and 1B at a fixed KV budget).
    expect(shape(129)).toEqual({ blocks: [[0, 128, 128]], tail: 1 });
    expect(shape(193)).toEqual({ blocks: [[0, 193, 128]], tail: 0 });
    expect(shape(171)).toEqual({
      blocks: [
        [0, 128, 128],
        [128, 171, 64],
      ],
      tail: 0,
    });
    expect(shape(77)).toEqual({ blocks: [[0, 77, 128]], tail: 0 });
    expect(shape(43)).toEqual({ blocks: [[0, 43, 64]], tail: 0 });
    expect(shape(144)).toEqual({ blocks: [[0, 128, 128]], tail: 16 });
    expect(shape(145)).toEqual({
      blocks: [
        [0, 128, 128],
        [128, 145, 64],
      ],
      tail: 0,
    });
    expect(shape(192)).toEqual({
      blocks: [
        [0, 128, 128],
        [128, 192, 64],
      ],
      tail: 0,
    });
    expect(shape(BLOCKED_MATMUL_MIN_ROWS - 1)).toBeNull();
  });

  it('honours the tail cap, a forced tile height and a K split; declines inDim % 8 != 0', () => {
    expect(shape(132, { ...defaults, tailRows: 4 })).toEqual({ blocks: [[0, 128, 128]], tail: 4 });
    expect(shape(140, { ...defaults, tailRows: 0 })).toEqual({
      blocks: [
        [0, 128, 128],
        [128, 140, 64],
      ],
      tail: 0,
    });
    expect(shape(129, { ...defaults, tileRows: 64 })).toEqual({ blocks: [[0, 129, 64]], tail: 0 });
    expect(shape(10, { ...defaults, minRows: 1 })).toEqual({ blocks: [[0, 10, 64]], tail: 0 });
    expect(planBlockedMatmul(200, 4096, 4100, defaults)).toBeNull();
    const split = planBlockedMatmul(64, 512, 4096, { ...defaults, splitK: 4 });
    expect(split?.blocks[0]).toMatchObject({ rowTiles: 1, colTiles: 4, kPerSplit: 1024, splits: 4 });
  });

  it('property: blocks and tail cover the rows once, in order, within tiles and K', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2000 }),
        fc.integer({ min: 1, max: 20000 }),
        fc.integer({ min: 1, max: 2048 }).map((k) => 8 * k),
        fc.integer({ min: 0, max: 64 }),
        (rows, outDim, inDim, tailRows) => {
          const plan = planBlockedMatmul(rows, outDim, inDim, { ...defaults, minRows: 1, tailRows });
          if (plan === null) return false;
          let next = 0;
          for (const b of plan.blocks) {
            if (b.rowBegin !== next || b.rowEnd <= b.rowBegin) return false;
            if (b.rowTiles * b.tileRows < b.rowEnd - b.rowBegin || (b.rowTiles - 1) * b.tileRows >= b.rowEnd - b.rowBegin) return false;
            if (
              b.kPerSplit % BLOCKED_MATMUL_K_STEP !== 0 ||
              b.splits < 1 ||
              (b.splits - 1) * b.kPerSplit >= inDim ||
              b.splits * b.kPerSplit < inDim
            )
              return false;
            next = b.rowEnd;
          }
          return next + plan.tailRows === rows && plan.tailRows <= tailRows;
        },
      ),
    );
  });
});
