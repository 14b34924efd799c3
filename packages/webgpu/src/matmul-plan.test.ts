import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BLOCKED_MATMUL_K_STEP,
  BLOCKED_MATMUL_MIN_ROWS,
  BLOCKED_MATMUL_TAIL_ROWS,
  BLOCKED_MATMUL_WORKGROUPS,
  MATVEC_SPLIT_ITEMS,
  MATVEC_SPLIT_MAX_ROWS,
  MATVEC_SPLIT_TARGET,
} from './kernels.ts';
import { type BlockedMatmulSettings, planBlockedMatmul, planSplitMatvec, type SplitMatvecSettings } from './matmul-plan.ts';

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

describe('planSplitMatvec', () => {
  const auto: SplitMatvecSettings = { splitK: null, unroll: null, outputs: null, target: MATVEC_SPLIT_TARGET };
  /** [rows a pass, U, K slices] for rows x (outDim x inDim). */
  const pick = (rows: number, outDim: number, inDim: number, settings = auto) => {
    const p = planSplitMatvec(rows, outDim, inDim, settings);
    return [p.rowsPerPass, p.unroll, p.splitK];
  };

  it('one pass of the batch up to 16 rows; two strides and many slices for 1-2 rows; slices of <= 256 steps from 3', () => {
    // The 8B decode at 1x (6 sequences): q/o, k/v, gate/up, down, LM head.
    expect(pick(6, 4096, 4096)).toEqual([6, 1, 2]);
    expect(pick(6, 1024, 4096)).toEqual([6, 1, 8]);
    expect(pick(6, 14336, 4096)).toEqual([6, 1, 2]);
    expect(pick(6, 4096, 14336)).toEqual([6, 1, 8]);
    expect(pick(6, 128256, 4096)).toEqual([6, 1, 2]);
    // One sequence: K split until 4096 items (1024 blocks of 4 outputs x 4 slices).
    expect(pick(1, 4096, 4096)).toEqual([1, 2, 4]);
    expect(pick(1, 128256, 2048)).toEqual([1, 2, 1]);
    // 17-32 rows: two even passes; 40 rows: three.
    expect(pick(20, 2048, 2048)).toEqual([10, 1, 2]);
    expect(pick(40, 2048, 2048)).toEqual([14, 1, 2]);
    // A slice keeps at least 32 steps (256 weights): a short K is not split.
    expect(pick(1, 64, 256)).toEqual([1, 2, 1]);
    // Forced settings win; 8 outputs only where outDim allows them.
    const forced = { splitK: 8, unroll: 4, outputs: 8, target: 1 } as const;
    expect(planSplitMatvec(6, 64, 520, forced)).toMatchObject({ rowsPerPass: 6, unroll: 4, splitK: 8, outputs: 8, slice: 9 });
    expect(planSplitMatvec(6, 36, 520, forced).outputs).toBe(4);
  });

  it('property: passes cover the rows, slices cover K, workgroups cover the blocks', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 40000 }).map((o) => 4 * o),
        fc.integer({ min: 1, max: 4096 }).map((k) => 8 * k),
        fc.integer({ min: 1, max: 1 << 16 }),
        (rows, outDim, inDim, target) => {
          const p = planSplitMatvec(rows, outDim, inDim, { ...auto, target });
          const passes = Math.ceil(rows / p.rowsPerPass);
          const steps = inDim / 8;
          return (
            p.rowsPerPass >= 1 &&
            p.rowsPerPass <= MATVEC_SPLIT_MAX_ROWS &&
            passes === Math.ceil(rows / MATVEC_SPLIT_MAX_ROWS) &&
            [1, 2, 4, 8].includes(p.splitK) &&
            p.slice * p.splitK >= steps &&
            (p.splitK === 1 || (p.splitK - 1) * p.slice < steps) &&
            p.blocks === (outDim / p.outputs) * passes &&
            p.workgroups * (MATVEC_SPLIT_ITEMS / p.splitK) >= p.blocks &&
            (p.workgroups - 1) * (MATVEC_SPLIT_ITEMS / p.splitK) < p.blocks
          );
        },
      ),
    );
  });
});
