import { BLOCKED_MATMUL_COLS, BLOCKED_MATMUL_K_STEP, BLOCKED_MATMUL_MIN_SPLIT_K } from './kernels.ts';

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
