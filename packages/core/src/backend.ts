import type { ChangeLog } from './change-log.ts';
import { InvalidArgumentError } from './errors.ts';
import type { EvictionSelection } from './eviction-selection.ts';
import type { RopeLayout, RopeScaling, Tensor } from './model.ts';
import type { KvDtype } from './shape.ts';
import type { SlotMoveList } from './slot-moves.ts';

/** A buffer that lives wherever the backend computes (a TypedArray on the CPU, a GPUBuffer on WebGPU). */
export interface DeviceBuffer {
  /** Elements (f32 or i32, 4 bytes each). */
  readonly length: number;
  readonly kind: 'f32' | 'i32';
}

/** A weight matrix or vector uploaded once, possibly kept quantised. */
export interface DeviceWeight {
  readonly name: string;
  readonly shape: readonly number[];
}

/**
 * The paged cache tables, as the page allocator keeps them (it satisfies this interface):
 * blockTables Int32 [layers][maxSequences][kvHeads][maxBlocksPerHead], headLengths Int32
 * [layers][maxSequences][kvHeads], slotPositions Int32 [numSlots]. Consumers read a head's
 * table only within its blocks (ceil(length / blockSize)): past them the entries may be
 * free blocks the head released (PageAllocator's reserved tails) or -1.
 */
export interface PagedCacheView {
  readonly blockSize: number;
  readonly maxSequences: number;
  readonly maxBlocksPerHead: number;
  readonly blockTables: Int32Array;
  readonly headLengths: Int32Array;
  readonly slotPositions: Int32Array;
  /**
   * Entries of `blockTables` / `slotPositions` changed since the consumer last cleared the
   * log (see ChangeLog); absent means "assume everything changed".
   */
  readonly tableChanges?: ChangeLog;
  readonly positionChanges?: ChangeLog;
  /**
   * Int32 per head (`headLengths` layout): the head's first n logical slots may hold positions
   * that only the device copy has (a device compaction, `Backend.compactEvictions`, moved
   * them); the host `slotPositions` of those slots are stale until refreshed. Absent or all
   * zero: the host copy is exact. A backend that syncs `slotPositions` from the host must not
   * overwrite these slots on the device.
   */
  readonly stalePositions?: Int32Array;
  /** Heads with `stalePositions` > 0. */
  readonly staleHeads?: number;
}

/**
 * How attention adds to the per-slot importance metric while it runs: for every row flagged
 * in `rowFlags`, each key at least `rowMetricBuffer[r]` positions older than the row's query
 * gets a(p) (p, or p^2 where `rowSquare[r]` is 1) summed over the query heads of its group,
 * times `rowGroupScale[r]`. The settings are per row because each sequence of a batch may run
 * its own eviction policy (and so its own metric). The engine fills the row arrays, sized for
 * its largest step, before each forward pass; a backend reads the first `rows` entries.
 */
export interface MetricRecording {
  /** Float32 [numSlots]: the metric store the values are added to. */
  readonly values: Float32Array;
  /** Uint8 [rows]: 1 where the row's attention is recorded. */
  readonly rowFlags: Uint8Array;
  /** Uint8 [rows]: 1 where a recorded row adds p^2 (L2), 0 where it adds p (L1). */
  readonly rowSquare: Uint8Array;
  /** Float32 [rows]: factor on a recorded row's sum over the group (1 = sum, 1 / group = mean). */
  readonly rowGroupScale: Float32Array;
  /** Int32 [rows]: keys fewer than this many positions before the row's query are not recorded. */
  readonly rowMetricBuffer: Int32Array;
}

/**
 * One forward step's rows: row r is token `positions[r]` of sequence row `sequences[r]`
 * (an allocator sequence id). A prefill contributes many rows of one sequence, a decode step
 * one row per sequence. Int32 buffers of length >= rows.
 */
export interface AttentionRows {
  readonly rows: number;
  readonly sequences: DeviceBuffer;
  readonly positions: DeviceBuffer;
}

/**
 * The operations a model adapter is written against. `@kvcompress/cpu` is the readable
 * reference; `@kvcompress/webgpu` must match it. All shapes are row-major; `rows` is the
 * number of tokens in the step. Calls are queued in order; only `read` waits.
 */
export interface Backend {
  readonly name: string;

  /** Uploads a weight (keeping q8_0/f16 packed where the backend can compute on them). */
  uploadWeight(tensor: Tensor): DeviceWeight;
  createBuffer(length: number, kind?: 'f32' | 'i32'): DeviceBuffer;
  /** Writes the first `length` (default all) elements of `data` at element `offset`. */
  write(buffer: DeviceBuffer, data: Float32Array | Int32Array, offset?: number, length?: number): void;
  /** Copies `length` (default out.length) elements from `buffer` at `offset` into `out`. */
  read(buffer: DeviceBuffer, out: Float32Array | Int32Array, offset?: number, length?: number): Promise<void>;
  /**
   * The same, synchronously, for backends whose buffers live on the host (the CPU backend):
   * lets a decode step run without creating a promise.
   */
  readSync?(buffer: DeviceBuffer, out: Float32Array | Int32Array, offset?: number, length?: number): void;

  /**
   * Creates the paged KV pool: K and V of `numSlots` slots of `headDim` each, in `dtype`.
   * Slots are global (block * blockSize + offset), shared by all layers and heads.
   */
  createKvCache(numSlots: number, headDim: number, dtype: KvDtype): void;

  /** out[r] = table[tokens[r]]: out [rows][dim]. */
  embed(out: DeviceBuffer, table: DeviceWeight, tokens: DeviceBuffer, rows: number): void;
  /** out[r] = x[r] / rms(x[r]) * weight: [rows][dim]. */
  rmsNorm(out: DeviceBuffer, x: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void;
  /**
   * The residual add and the next norm in one step: x += delta, then out = rmsNorm(x) (all
   * [rows][dim]; out must not alias x or delta). Equal to `add(x, x, delta)` then `rmsNorm(out,
   * x, ...)`, in one pass where the backend can (a decode step runs two a layer).
   */
  addRmsNorm(out: DeviceBuffer, x: DeviceBuffer, delta: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void;
  /** out [rows][outDim] = x [rows][inDim] · Wᵀ (+ bias), W [outDim][inDim]. */
  matmul(out: DeviceBuffer, x: DeviceBuffer, w: DeviceWeight, rows: number, bias?: DeviceWeight): void;
  /**
   * outs[i] [rows][ws[i] rows] = x [rows][inDim] · ws[i]ᵀ (+ biases[i]) for each matrix of one
   * inDim (attention's q, k and v projections). Equal to a `matmul` each; a backend may run them
   * as one product (the WebGPU backend does for 2-3 matrices without biases in decode-sized
   * batches). Callers on a hot path pass arrays they keep, not new ones each step.
   */
  matmulEach(
    outs: readonly DeviceBuffer[],
    x: DeviceBuffer,
    ws: readonly DeviceWeight[],
    rows: number,
    biases?: readonly (DeviceWeight | undefined)[],
  ): void;
  /**
   * A SwiGLU MLP's first half: out [rows][outDim] = silu(x · gateᵀ) * (x · upᵀ), gate and up
   * [outDim][inDim] of one shape. Equal to two `matmul`s and `siluMul`; a backend may read x once
   * for both and write only out (the WebGPU backend does for decode-sized batches).
   */
  matmulSiluMul(out: DeviceBuffer, x: DeviceBuffer, gate: DeviceWeight, up: DeviceWeight, rows: number): void;
  /** Rotates each head of x [rows][heads][headDim] in place by its row's position. */
  rope(x: DeviceBuffer, positions: DeviceBuffer, rows: number, heads: number, rope: RopeSettings): void;
  /** out = silu(gate) * up, elementwise over n. */
  siluMul(out: DeviceBuffer, gate: DeviceBuffer, up: DeviceBuffer, n: number): void;
  /** out = a + b, elementwise over n (out may alias a). */
  add(out: DeviceBuffer, a: DeviceBuffer, b: DeviceBuffer, n: number): void;
  /** out[i] = x[rows[i]] for i < count: gathers rows of width `dim`. */
  gatherRows(out: DeviceBuffer, x: DeviceBuffer, rows: DeviceBuffer, count: number, dim: number): void;
  /**
   * Greedy token selection: out[r] = index of the largest of logits[r][0..vocab) (the first
   * on ties), out i32 [rows]. Lets a device backend hand back `rows` integers instead of
   * `rows * vocab` floats.
   */
  argmax(out: DeviceBuffer, logits: DeviceBuffer, rows: number, vocab: number): void;
  /**
   * Sampled token selection, for backends that keep logits on a device: out[r] = the token
   * the engine's Sampler picks from logits[r] with params[r] = (temperature, topK, topP, u),
   * u the row's uniform draw in [0, 1) (temperature 0: argmax). params f32 [rows][4], out
   * i32 [rows]. The same rank and tie rule as the Sampler; sums may round differently.
   */
  sample?(out: DeviceBuffer, logits: DeviceBuffer, params: DeviceBuffer, rows: number, vocab: number): void;

  /**
   * Writes K and V rows [rows][kvHeads][headDim] of one layer into the cache at the slots
   * `slots` Int32 [layers][kvHeads][rows] (as `PageAllocator.appendTokens` fills them).
   */
  appendKv(layer: number, k: DeviceBuffer, v: DeviceBuffer, slots: DeviceBuffer, rows: number, kvHeads: number): void;

  /**
   * Causal attention over the paged cache: for row r and query head h, the keys are the
   * slots of (layer, sequences[r], h / group) whose position <= positions[r], each head
   * reading its own block table. out [rows][heads][headDim]; q [rows][heads][headDim].
   * Records metrics for flagged rows when `metrics` is given.
   */
  attention(
    out: DeviceBuffer,
    q: DeviceBuffer,
    layer: number,
    batch: AttentionRows,
    cache: PagedCacheView,
    heads: number,
    kvHeads: number,
    metrics?: MetricRecording,
  ): void;

  /**
   * Executes cache moves on K and V (and on the device metric store, for backends with
   * `deviceMetrics`; positions are the allocator's, host metrics the MetricStore's).
   */
  executeMoves(moves: SlotMoveList): void;

  /**
   * True for backends that keep the per-slot metric on the device (WebGPU): attention records
   * into it instead of `MetricRecording.values`, and the engine syncs it with the host store
   * through the two methods below before planning a compression.
   */
  readonly deviceMetrics?: boolean;
  downloadMetrics?(out: Float32Array): Promise<void>;
  /** metrics[slots[i]] = values[i] for i < count. */
  uploadMetrics?(slots: Int32Array, values: Float32Array, count: number): void;
  /**
   * KV-Compress's block selection run where the metrics are (backends with `deviceMetrics`):
   * decides the slots of every group of `selection` from the device metrics and the cache
   * tables, and writes only the decision into `selection.result`. The decision is the one
   * `PolicyContext.freeCheapestBlocks` makes on the same metrics (see EvictionSelection).
   * `masks: false` downloads only the blocks freed per row (the masks stay on the device, for a
   * `compactEvictions` of the same selection right after).
   */
  selectEvictions?(selection: EvictionSelection, cache: PagedCacheView, options?: { readonly masks?: boolean }): Promise<void>;
  /**
   * `selectEvictions`' decision and the compaction it implies, both on the device: for each
   * row, the survivors past its new length (length - evicted) move into its evicted slots
   * below it, pairing the holes and the survivors each in ascending logical order (exactly
   * the moves `PageAllocator.compact` makes for the same evictions); K, V, the device metric
   * store and the device slot positions move (the released block-table entries are left as
   * they are: nothing reads a table past a head's blocks). Writes `selection.result[r]`
   * (blocks freed per row) and `selection.rowMoves[r]` (slot moves per row), not the masks.
   * The caller then applies the outcome to its allocator (`Compressor.applyDeviceCompaction`), which leaves the host copy of
   * the moved positions stale (see `PagedCacheView.stalePositions`). Requires a pool without
   * shared blocks (no forks). `rows`: compacts only the first `rows` rows (whole groups; the
   * rest keep everything, their result 0). Right after `selectEvictions(selection, cache,
   * { masks: false })` of the same selection, with nothing changed in between, that decision
   * is reused; otherwise the selection runs first.
   */
  compactEvictions?(selection: EvictionSelection, cache: PagedCacheView, rows?: number): Promise<void>;
  /**
   * Makes `cache.slotPositions` equal to the device copy (after sending the host's pending
   * changes), for host code that reads positions a device compaction moved. The caller then
   * calls `PageAllocator.positionsSynced()`.
   */
  downloadPositions?(cache: PagedCacheView): Promise<void>;
}

/** What RoPE needs to know. */
export interface RopeSettings {
  readonly headDim: number;
  readonly ropeDim: number;
  readonly theta: number;
  readonly layout: RopeLayout;
  readonly scaling: RopeScaling | null;
}

/**
 * RoPE inverse frequencies for one head: inv[i] = theta^(-2i / ropeDim), i < ropeDim / 2,
 * with Llama 3 or linear scaling applied. Shared so every backend rotates identically.
 */
export function ropeInverseFrequencies(rope: RopeSettings): Float64Array {
  const half = rope.ropeDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = rope.theta ** ((-2 * i) / rope.ropeDim);
  const s = rope.scaling;
  if (s === null) return inv;
  if (s.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = (inv[i] as number) / s.factor;
    return inv;
  }
  // Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const f = inv[i] as number;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      inv[i] = f / s.factor;
      continue;
    }
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    inv[i] = (1 - smooth) * (f / s.factor) + smooth * f;
  }
  return inv;
}

/**
 * Backend.matmulEach as one `matmul` per matrix: the whole of it for a backend that fuses
 * nothing, and the fallback of one that fuses some cases.
 */
export function matmulEachInTurn(
  backend: Pick<Backend, 'matmul'>,
  outs: readonly DeviceBuffer[],
  x: DeviceBuffer,
  ws: readonly DeviceWeight[],
  rows: number,
  biases?: readonly (DeviceWeight | undefined)[],
): void {
  assertMatmulEachArguments(outs, x, ws);
  for (let i = 0; i < ws.length; i++) backend.matmul(outs[i] as DeviceBuffer, x, ws[i] as DeviceWeight, rows, biases?.[i]);
}

/** What every matmulEach needs: an output per matrix, none of them x. */
export function assertMatmulEachArguments(outs: readonly DeviceBuffer[], x: DeviceBuffer, ws: readonly DeviceWeight[]): void {
  if (outs.length !== ws.length) throw new InvalidArgumentError(`matmulEach: ${outs.length} outputs for ${ws.length} matrices.`);
  for (const out of outs)
    if (out === x) throw new InvalidArgumentError('matmulEach reads x while it writes its outputs: give each output a buffer of its own.');
}
