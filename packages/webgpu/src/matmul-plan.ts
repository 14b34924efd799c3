import {
  BLOCKED_MATMUL_COLS,
  BLOCKED_MATMUL_K_STEP,
  BLOCKED_MATMUL_MIN_SPLIT_K,
  MATVEC_SPLIT_ITEMS,
  MATVEC_SPLIT_MAX_ROWS,
  MATVEC_SPLIT_MIN_STEPS,
  MATVEC_SPLIT_SLICE_STEPS,
} from './kernels.ts';

/**
 * How the blocked matmul covers one product (planBlockedMatmul): row ranges in order, each
 * one dispatch of the blocked kernel (`blocks`), then `tailRows` trailing rows on the matvec
 * kernel.
 */
export interface BlockedMatmulPlan {
  readonly blocks: readonly BlockedMatmulBlock[];
  /** Rows after the last block, run on the matvec kernel (0: none). */
  readonly tailRows: number;
}

/** One blocked-kernel dispatch of a BlockedMatmulPlan: rows [rowBegin, rowEnd). */
export interface BlockedMatmulBlock {
  readonly rowBegin: number;
  readonly rowEnd: number;
  /** Rows of a workgroup's tile (its columns: BLOCKED_MATMUL_COLS). */
  readonly tileRows: 64 | 128;
  readonly rowTiles: number;
  readonly colTiles: number;
  /** K values per split (a multiple of the K step). */
  readonly kPerSplit: number;
  /** K ranges, each one workgroup per tile; above 1, a second dispatch sums them. */
  readonly splits: number;
}

/** The backend's blocked-matmul options, defaults applied (WebGpuBackendOptions.blockedMatmul*). */
export interface BlockedMatmulSettings {
  /** Fewest rows for the blocked kernel (Infinity: never). */
  readonly minRows: number;
  /** One tile height for all rows (benchmarks), or null for the plan below. */
  readonly tileRows: 64 | 128 | null;
  /** K ranges forced, or null to aim at `workgroups`. */
  readonly splitK: number | null;
  /** Workgroups a block's tiles x K ranges aim for. */
  readonly workgroups: number;
  /** Most trailing rows left to the matvec kernel. */
  readonly tailRows: number;
}

/**
 * The blocked kernel's plan for rows x inDim times outDim x inDim, or null where it does not
 * apply (fewer rows than `minRows`, or inDim not a multiple of 8). Rows go to 128-row tiles;
 * the r rows left after the last full one go to
 * - the matvec kernel if r <= `tailRows` (it reads W once per 8 rows: cheaper than a tile
 *   padded for them), so 129 rows are a 128-row tile and one matvec row, not three 64-row
 *   tiles (1.3-1.8x faster on an H200: BENCHMARKS.md, sixteenth session);
 * - else a 64-row tile if r <= 64 (its micro-tile does half the FMAs per shared-memory read,
 *   so it runs slower per row but pads less);
 * - else one more, padded, 128-row tile (measured faster than a 64-row tile and a tail).
 * K is split when a block's tiles alone are too few workgroups to fill the GPU.
 */
export function planBlockedMatmul(rows: number, outDim: number, inDim: number, settings: BlockedMatmulSettings): BlockedMatmulPlan | null {
  if (rows < settings.minRows || inDim % 8 !== 0) return null;
  const block = (rowBegin: number, rowEnd: number, tileRows: 64 | 128) =>
    blockedMatmulBlock(rowBegin, rowEnd, tileRows, outDim, inDim, settings);
  if (settings.tileRows !== null) return { blocks: [block(0, rows, settings.tileRows)], tailRows: 0 };
  const full = Math.floor(rows / 128) * 128;
  const left = rows - full;
  if (left === 0 || left > 64) return { blocks: [block(0, rows, 128)], tailRows: 0 };
  const blocks = full > 0 ? [block(0, full, 128)] : [];
  if (full > 0 && left <= settings.tailRows) return { blocks, tailRows: left };
  blocks.push(block(full, rows, 64));
  return { blocks, tailRows: 0 };
}

function blockedMatmulBlock(
  rowBegin: number,
  rowEnd: number,
  tileRows: 64 | 128,
  outDim: number,
  inDim: number,
  settings: BlockedMatmulSettings,
): BlockedMatmulBlock {
  const rowTiles = Math.ceil((rowEnd - rowBegin) / tileRows);
  const colTiles = Math.ceil(outDim / BLOCKED_MATMUL_COLS);
  const steps = Math.ceil(inDim / BLOCKED_MATMUL_K_STEP);
  const wanted =
    settings.splitK ?? Math.min(Math.floor(settings.workgroups / (rowTiles * colTiles)), Math.floor(inDim / BLOCKED_MATMUL_MIN_SPLIT_K));
  const kPerSplit = Math.ceil(steps / Math.max(1, Math.min(wanted, steps))) * BLOCKED_MATMUL_K_STEP;
  // Rounding kPerSplit up may leave fewer (never empty) ranges than asked for.
  return { rowBegin, rowEnd, tileRows, rowTiles, colTiles, kPerSplit, splits: Math.ceil(inDim / kPerSplit) };
}

/** How `matvecSplitKernel` runs one product (planSplitMatvec). */
export interface SplitMatvecPlan {
  /** Rows a pass over W (the kernel's R); passes = ceil(rows / rowsPerPass). */
  readonly rowsPerPass: number;
  /** Consecutive outputs a subgroup (O). */
  readonly outputs: 4 | 8;
  /** Strides of 8 weights whose loads are issued together (U). */
  readonly unroll: 1 | 2 | 4;
  /** K slices a block of outputs (KS), each `slice` 8-weight steps (the last may be shorter). */
  readonly splitK: 1 | 2 | 4 | 8;
  readonly slice: number;
  /** Blocks of O outputs x one pass of rows. */
  readonly blocks: number;
  /** Workgroups of the dispatch (MATVEC_SPLIT_ITEMS / splitK blocks each). */
  readonly workgroups: number;
}

/** The backend's split-matvec options (WebGpuBackendOptions.matvec*): null picks by shape. */
export interface SplitMatvecSettings {
  readonly splitK: 1 | 2 | 4 | 8 | null;
  readonly unroll: 1 | 2 | 4 | null;
  readonly outputs: 4 | 8 | null;
  /** Items (blocks x K slices) the split aims for with 1-2 rows; half of it from 3 rows. */
  readonly target: number;
}

/**
 * The split matvec's plan for rows x inDim times outDim x inDim (inDim a multiple of 8, outDim
 * of 4). Rows go in as few passes over W as MATVEC_SPLIT_MAX_ROWS allows, evenly (6 rows: one
 * pass of 6). From an H200 grid (BENCHMARKS.md, seventeenth session; within 5% of the best of
 * 11 configurations on average over 10 Llama shapes x 1-16 rows):
 * - 1-2 rows are bound by W's bytes: two strides' loads in flight (U = 2), and K split until
 *   the items reach `target` (small matrices need the extra subgroups);
 * - from 3 rows the FMAs and x loads (R of each a weight) weigh in and registers run short:
 *   one stride (U = 1), K slices of at most MATVEC_SPLIT_SLICE_STEPS steps, then more slices
 *   only while the items are under target / 2.
 * A K slice keeps at least MATVEC_SPLIT_MIN_STEPS steps. Forced settings win.
 */
export function planSplitMatvec(rows: number, outDim: number, inDim: number, settings: SplitMatvecSettings): SplitMatvecPlan {
  const passes = Math.ceil(rows / MATVEC_SPLIT_MAX_ROWS);
  const rowsPerPass = Math.ceil(rows / passes);
  const outputs = settings.outputs !== null && outDim % settings.outputs === 0 ? settings.outputs : 4;
  const few = rowsPerPass <= 2;
  const unroll = settings.unroll ?? (few ? 2 : 1);
  const steps = inDim / 8;
  const blocks = (outDim / outputs) * passes;
  let splitK: 1 | 2 | 4 | 8 = settings.splitK ?? 1;
  if (settings.splitK === null) {
    const longer = (k: number) => k < 8 && steps / (2 * k) >= MATVEC_SPLIT_MIN_STEPS;
    if (!few) while (longer(splitK) && steps / splitK > MATVEC_SPLIT_SLICE_STEPS) splitK = (2 * splitK) as 2 | 4 | 8;
    const target = few ? settings.target : settings.target / 2;
    while (longer(splitK) && blocks * splitK < target) splitK = (2 * splitK) as 2 | 4 | 8;
  }
  return {
    rowsPerPass,
    outputs,
    unroll,
    splitK,
    slice: Math.ceil(steps / splitK),
    blocks,
    workgroups: Math.ceil(blocks / (MATVEC_SPLIT_ITEMS / splitK)),
  };
}
