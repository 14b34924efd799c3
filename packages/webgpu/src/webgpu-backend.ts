/// <reference types="@webgpu/types" />
import {
  type AttentionRows,
  assertInteger,
  assertMatmulEachArguments,
  type Backend,
  type ChangeLog,
  type DeviceBuffer,
  type DeviceWeight,
  dequantize,
  type EvictionSelection,
  elementCount,
  f16ToF32,
  f32ToF16,
  InvalidArgumentError,
  KvCompressError,
  type KvDtype,
  KvPoolTooLargeError,
  type MetricRecording,
  matmulEachInTurn,
  type PagedCacheView,
  quantizeQ8_0,
  type RopeSettings,
  ropeInverseFrequencies,
  SELECTION_GROUP_FIELDS,
  SELECTION_ROW_FIELDS,
  type SlotMoveList,
  type Tensor,
  UnsupportedModelError,
} from '@kvcompress/core';
import {
  ARGMAX_CHUNK,
  addRmsNormKernel,
  appendKvKernel,
  argmaxKernel,
  argmaxPartialKernel,
  argmaxReduceKernel,
  attentionKernel,
  attentionReduceKernel,
  BLOCKED_MATMUL_MIN_ROWS,
  BLOCKED_MATMUL_TAIL_ROWS,
  BLOCKED_MATMUL_WORKGROUPS,
  blockedMatmulKernel,
  blockedMatmulReduceKernel,
  compactMovesKernel,
  elementwiseKernel,
  embedKernel,
  gatherRowsKernel,
  type KernelSource,
  type KvChunking,
  MATMUL_ROWS,
  MATVEC_SPLIT_TARGET,
  MATVEC_SUBGROUP_OUTPUTS,
  MOVE_BUCKET_COUNTS,
  MOVE_BUCKET_CURSORS,
  MOVES_PER_INVOCATION,
  matmulKernel,
  matvecKernel,
  matvecSplitKernel,
  matvecSubgroupKernel,
  metricKernel,
  metricMovesKernel,
  moveBucketKernel,
  movesDirectKernel,
  movesGatherKernel,
  movesKernel,
  movesScatterKernel,
  PREFILL_QUERIES,
  prefillAttentionKernel,
  prefillAttentionSupports,
  rmsNormKernel,
  ropeKernel,
  rowVec,
  STREAM_ATTENTION_MAX_KEYS,
  type StoreType,
  scatterKernel,
  slotMovesKernel,
  streamAttentionKernel,
  streamAttentionSupports,
  streamAttentionThreadsPerKey,
  streamAttentionWorkgroupBytes,
  TILED_MATMUL_MIN_ROWS,
  TILED_MATMUL_TILE,
  tiledMatmulKernel,
  wideAttentionKernel,
  wideAttentionSplitKeys,
  wideAttentionSupports,
} from './kernels.ts';
import {
  type BlockedMatmulBlock,
  type BlockedMatmulPlan,
  type BlockedMatmulSettings,
  planBlockedMatmul,
  planSplitMatvec,
  type SplitMatvecPlan,
  type SplitMatvecSettings,
} from './matmul-plan.ts';
import { sampleKernel } from './sampling-kernels.ts';
import {
  COMPACT_INFO_HEADER,
  compactPairsKernel,
  restorePositionsKernel,
  SELECTION_BINS,
  SELECTION_GROUP_STATE_FIELDS,
  SELECTION_LEVELS,
  SELECTION_STATE_FIELDS,
  selectionAllocateKernel,
  selectionHistogramKernel,
  selectionMarkKernel,
  selectionThresholdKernel,
} from './selection-kernels.ts';

/** The device was lost (driver reset, tab backgrounded, GPU removed). Create a new backend. */
export class DeviceLostError extends KvCompressError {
  constructor(reason: string) {
    super('DEVICE_LOST', `The WebGPU device was lost (${reason}). Create a new engine; the old one cannot run again.`);
  }
}

export class GpuBuffer implements DeviceBuffer {
  readonly buffer: GPUBuffer;
  readonly length: number;
  readonly kind: 'f32' | 'i32';
  /** Host copy of what was last written, for i32 buffers (row metadata the backend plans with). */
  readonly host: Int32Array | null;

  constructor(buffer: GPUBuffer, length: number, kind: 'f32' | 'i32') {
    this.buffer = buffer;
    this.length = length;
    this.kind = kind;
    this.host = kind === 'i32' ? new Int32Array(length) : null;
  }
}

export class GpuWeight implements DeviceWeight {
  readonly name: string;
  readonly shape: readonly number[];
  readonly buffer: GPUBuffer;
  readonly store: StoreType;
  readonly rows: number;
  readonly cols: number;

  constructor(name: string, shape: readonly number[], buffer: GPUBuffer, store: StoreType) {
    this.name = name;
    this.shape = shape;
    this.buffer = buffer;
    this.store = store;
    this.cols = shape[shape.length - 1] ?? 1;
    this.rows = elementCount(shape) / this.cols;
  }
}

export interface WebGpuBackendOptions {
  /**
   * How matrices are stored on the device: 'f32'; 'f16' packed two per u32 (half the memory
   * and bandwidth); 'q8' as Q8_0 (int8 with a scale per 32 values: ~53% of f16, matrices
   * with inDim a multiple of 32, quantising others on upload). Default 'auto': Q8_0 files
   * stay Q8_0, other f16/bf16/quantised tensors become f16, f32 stays f32. The token
   * embedding is never Q8_0 (it is gathered, not multiplied).
   */
  readonly weightStore?: 'f32' | 'f16' | 'q8' | 'auto';
  /** Use subgroup kernels when the device has the `subgroups` feature (default true). */
  readonly subgroups?: boolean;
  /** Matmuls of at least this many rows use the tiled kernel (benchmarks compare the two). */
  readonly tiledMatmulMinRows?: number;
  /** Force the tiled kernel's tile height (benchmarks); default picks by workgroup count. */
  readonly tiledMatmulTileRows?: 32 | 64;
  /**
   * Use the register-blocked matmul (blockedMatmulKernel) for matmuls of at least
   * `blockedMatmulMinRows` rows whose inDim is a multiple of 8 (default true; false keeps the
   * matvec / tiled selection above, for A/B benchmarks).
   */
  readonly blockedMatmul?: boolean;
  /** Fewest rows for the blocked matmul (default BLOCKED_MATMUL_MIN_ROWS). */
  readonly blockedMatmulMinRows?: number;
  /**
   * Force the blocked matmul's tile height for all rows (benchmarks); default: 128-row tiles,
   * then, for the rows left, a matvec tail, a 64-row tile or one more 128-row tile (see
   * planBlockedMatmul).
   */
  readonly blockedMatmulTileRows?: 64 | 128;
  /** Most trailing rows the blocked matmul leaves to the matvec kernel (default BLOCKED_MATMUL_TAIL_ROWS; 0: none). */
  readonly blockedMatmulTailRows?: number;
  /**
   * Force how many K ranges the blocked matmul splits into (1: none; benchmarks). Default:
   * enough to bring tiles x splits near `blockedMatmulWorkgroups`, each range at least
   * BLOCKED_MATMUL_MIN_SPLIT_K values long.
   */
  readonly blockedMatmulSplitK?: number;
  /** Workgroups the blocked matmul's split K aims for (default 264: two per SM of a 132-SM H100/H200). */
  readonly blockedMatmulWorkgroups?: number;
  /**
   * Matmuls below the blocked kernel's rows (decode steps) on `matvecSplitKernel` where the
   * device has subgroups (default true; false: the previous subgroup matvec, for A/B benchmarks).
   */
  readonly splitMatvec?: boolean;
  /** Force the split matvec's K slices (1, 2, 4, 8; benchmarks). Default: see planSplitMatvec. */
  readonly matvecSplitK?: 1 | 2 | 4 | 8;
  /** Force the split matvec's strides whose loads are issued together (1, 2, 4; benchmarks). */
  readonly matvecUnroll?: 1 | 2 | 4;
  /** Force the split matvec's outputs a subgroup (4 or 8; benchmarks). */
  readonly matvecOutputs?: 4 | 8;
  /** Items (block x K slice) the split matvec's K split aims for (default MATVEC_SPLIT_TARGET; see planSplitMatvec). */
  readonly matvecSplitTarget?: number;
  /**
   * Decode attention kernel: 'stream' (subgroup key groups, online softmax, no barrier in
   * the key loop; needs subgroups and the adapter's subgroupMinSize) or 'wide' (workgroup
   * reductions, any device). Default 'auto': 'stream' where it applies. Benchmarks compare.
   */
  readonly decodeAttention?: 'auto' | 'stream' | 'wide';
  /** Keys each key group of the stream kernel loads per step (default 4; benchmarks compare). */
  readonly streamKeysPerStep?: 1 | 2 | 4 | 8;
  /** Lanes per key of the stream kernel (default: the largest the head dim and subgroup size allow). */
  readonly streamThreadsPerKey?: number;
  /**
   * Threads per workgroup of the stream kernel (default 128: with the merge in the key slots,
   * 3-18% faster than 256 on an H100, head dim 64 and 128; BENCHMARKS.md). Head dims over 128
   * always take 256 (the merge gives each output dim a thread).
   */
  readonly streamWorkgroupSize?: 128 | 256;
  /**
   * Keys of one workgroup of the stream kernel at most. Default: 2048 on a pool in one
   * binding where the device's workgroup memory holds them (4-10% faster than 1024 on an
   * H100 at 32-128 x 4K-16K), else 1024 (STREAM_ATTENTION_MAX_KEYS; on a chunked pool 2048
   * was 16% slower, and 19-28% with 128 threads and the merge in the key slots). 4096 (benchmarks)
   * needs the merge in the key slots to fit. Benchmarks compare.
   */
  readonly streamMaxKeys?: 512 | 1024 | 2048 | 4096;
  /**
   * The stream kernel's final merge reuses the workgroup memory of the key slots instead of a
   * buffer of its own: 8.5 instead of 16.5 KiB a workgroup at 2048 keys. Default true. On an
   * H100 workgroup memory, not registers, capped how many workgroups an SM ran (BENCHMARKS.md).
   */
  readonly streamMergeInSlots?: boolean;
  /**
   * Workgroups decode attention aims for when it splits long heads (default 512): fewer
   * splits below it make each workgroup walk more keys. Tests set 1 (the fewest splits).
   */
  readonly attentionSplitTarget?: number;
  /**
   * Sum the stream kernel's partial scores by a reduce-scatter (each lane finishes one
   * score and its softmax terms, then shares them) where keys x heads per step fit a key
   * group's lanes; false: every lane reduces every score (default true; benchmarks compare).
   */
  readonly streamScatter?: boolean;
  /**
   * Use the tiled prefill attention kernel where it applies. Default false: on an H100 (head
   * dim 128) it took 3-14x the split-K kernels' time (BENCHMARKS.md); tests and benchmarks
   * turn it on.
   */
  readonly prefillAttention?: boolean;
  /**
   * Benchmarks: time every dispatch on the GPU (each in its own compute pass, with timestamp
   * queries; needs the device's `timestamp-query` feature, else nothing is recorded). See
   * `readProfile()`.
   */
  readonly profile?: boolean;
  /**
   * Internal (tests): caps the bytes of one K or V chunk buffer below the device's
   * maxStorageBufferBindingSize, so a small pool splits into several chunks as a large one
   * does on a real GPU.
   */
  readonly maxKvBindingBytes?: number;
}

/** Storage bindings besides K/V chunks: append (k, v, slots), attention (7), moves gather/scatter (slots, scratch). */
const APPEND_OTHER_BINDINGS = 3;
const ATTENTION_OTHER_BINDINGS = 7;
const MOVES_OTHER_BINDINGS = 2;
/** Fewest rows (of one sequence) for which attention takes the tiled prefill kernel. */
const PREFILL_MIN_ROWS = 16;
/** Timestamp queries of WebGpuBackendOptions.profile: two per dispatch, 2048 dispatches per readProfile(). */
const PROFILE_QUERIES = 4096;
/** Bytes of K+V rows a chunked move batch stages at most (scratch of movesGatherKernel). */
const MOVE_SCRATCH_BYTES = 256 * 2 ** 20;
/** compactEvictions() calls that may be in flight at once (each has its own move lists). */
const COMPACTIONS_IN_FLIGHT = 4;

/**
 * How a chunked pool is bound by one kernel: its KvChunking (compile-time) and, per pass, the
 * K and V chunk buffers it binds (padded with distinct dummies: a writable binding may not
 * alias another, and the last pass may have fewer chunks than the window).
 */
interface ChunkPlan {
  readonly chunking: KvChunking;
  readonly k: GPUBuffer[][];
  readonly v: GPUBuffer[][];
}

const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment
const UNIFORM_SLOTS = 4096;

/** The selection's row and state buffers, for the compaction that follows it. */
interface SelectBuffers {
  readonly rows: GPUBuffer;
  readonly state: GPUBuffer;
}

interface Pipeline {
  /** Kept referenced: Dawn's Node binding may free a module the JS side no longer holds while it compiles. */
  readonly module: GPUShaderModule;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly source: KernelSource;
  /** Bind groups made for this pipeline, by uniform offset (see WebGpuBackend.#bindGroup). */
  readonly bindGroups: Map<number, CachedBindGroup[]>;
}

/** A bind group and the storage buffers it binds after the uniform slot, in binding order. */
interface CachedBindGroup {
  readonly buffers: readonly GPUBuffer[];
  readonly group: GPUBindGroup;
}

/**
 * What one compactEvictions did: its slot moves, and (in a chunked pool) how many of them had
 * their source and destination in one window of chunks (copied in place) or not (through
 * scratch); the host milliseconds it took to record and submit the work before its download
 * (recordMs: table sync, uploads, dispatches) and then waiting for the download (waitMs).
 */
export interface CompactionStats {
  moves: number;
  windowMoves: number;
  crossWindowMoves: number;
  recordMs: number;
  waitMs: number;
  /**
   * Of recordMs: syncing the device tables, positions and lengths (submits included), sending
   * the selection's rows and groups, and recording the whole selection (those two included).
   */
  tablesMs?: number;
  uploadMs?: number;
  selectionMs?: number;
}

/**
 * The WebGPU Backend. Buffers are created once per engine (activations by the model adapter,
 * the KV pool and metric store by `createKvCache`); a step only writes small uniforms into a
 * ring and records dispatches into one command encoder, submitted when the host reads.
 * Bind groups are cached per (pipeline, buffers), so steady-state steps create no GPU objects.
 */
export class WebGpuBackend implements Backend {
  readonly name = 'webgpu';
  readonly device: GPUDevice;
  readonly deviceMetrics = true;
  readonly weightStore: 'f32' | 'f16' | 'q8' | 'auto';
  /** Whether subgroup kernels are used (the device has `subgroups` and the option allows). */
  readonly subgroups: boolean;
  #lost: string | null = null;
  #pipelines = new Map<string, Pipeline>();
  #uniforms: GPUBuffer;
  #uniformSlot = 0;
  /**
   * Host copy of the uniform ring: each dispatch's parameters go to its own 256-byte slot,
   * and the used range is written to the device once, just before the submit. One upload per
   * submit, and no dispatch ever shares a staging area with another.
   */
  #uniformHost = new Uint32Array((UNIFORM_SLOT * UNIFORM_SLOTS) / 4);
  #uniformScratch = new ArrayBuffer(48);
  #u32 = new Uint32Array(this.#uniformScratch);
  #f32 = new Float32Array(this.#uniformScratch);
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  /** MAP_READ staging buffers by size, those not in a read (see #readGpu). */
  #staging = new Map<number, GPUBuffer[]>();
  // KV pool and metrics. K and V are each one buffer (`#k`, `#v`: #kChunks[0], #vChunks[0])
  // unless the pool exceeds a storage binding: then chunks of 2^#chunkShift slots.
  #k: GPUBuffer | null = null;
  #v: GPUBuffer | null = null;
  #kChunks: GPUBuffer[] = [];
  #vChunks: GPUBuffer[] = [];
  #chunkPads: GPUBuffer[] = [];
  #chunkShift = 0;
  /** Per kernel family, null while the pool is one buffer per K and V. */
  #appendPlan: ChunkPlan | null = null;
  #attentionPlan: ChunkPlan | null = null;
  #movesPlan: ChunkPlan | null = null;
  readonly #maxKvBindingBytes: number | undefined;
  #metrics: GPUBuffer | null = null;
  #kvStore: StoreType = 'f32';
  #headDim = 0;
  #numSlots = 0;
  // Cache tables mirrored on the device, uploaded before each attention that needs them.
  #tables: GpuBuffer | null = null;
  #lengths: GpuBuffer | null = null;
  #slotPos: GpuBuffer | null = null;
  #tablesVersion = -1;
  #rope = new Map<RopeSettings, { cos: GpuBuffer; sin: GpuBuffer; positions: number }>();
  /** Workgroups that keep the device busy: splits are chosen so rows x kv-heads x splits reaches it (attentionSplitTarget). */
  #splitTarget = 512;
  /** The rowInfo buffer whose device contents match its host copy. */
  #rowInfoUploaded: GpuBuffer | null = null;
  /** The groupRows buffer whose device contents match its host copy, and how many words it holds. */
  #groupRowsUploaded: GpuBuffer | null = null;
  #groupRowsWords = 0;
  #prefillDispatches = 0;
  #streamDispatches = 0;
  readonly #prefillEnabled: boolean;
  /** The rowMetric buffer whose device contents match its host copy (for the rows recorded). */
  #rowMetricUploaded: GpuBuffer | null = null;
  /** Float32 view of the rowMetric host copy, for its groupScale words. */
  #rowMetricScale: Float32Array = new Float32Array(0);
  readonly #tiledMinRows: number;
  readonly #tileRows: 32 | 64 | null;
  readonly #decodeAttention: 'auto' | 'stream' | 'wide';
  readonly #streamKeysPerStep: number;
  readonly #streamWorkgroupSize: 128 | 256 | undefined;
  readonly #streamMaxKeys: 512 | 1024 | 2048 | 4096 | undefined;
  readonly #streamMergeInSlots: boolean;
  #streamKeysUsed = 0;
  readonly #streamScatter: boolean;
  /** Lanes per key the stream kernel may use on this device (0: it cannot run). */
  readonly #streamLanes: number;
  /** The blocked matmul's options, defaults applied (minRows Infinity when it is off). */
  readonly #blockedSettings: BlockedMatmulSettings;
  readonly #splitMatvec: boolean;
  readonly #splitMatvecSettings: SplitMatvecSettings;
  /** blockedMatmulPlan's plans by shape (see its key); null where the blocked kernel does not apply. */
  readonly #blockedPlans = new Map<number, BlockedMatmulPlan | null>();
  /** Profiling (WebGpuBackendOptions.profile): timestamp queries, two per dispatch, and the kernels they time. */
  readonly #profile: { readonly queries: GPUQuerySet; readonly resolve: GPUBuffer; readonly kernels: string[] } | null;
  /** Appended to the kernel keys of profiled dispatches (e.g. the selection's level), '' otherwise. */
  #profileTag = '';

  constructor(device: GPUDevice, options: WebGpuBackendOptions = {}) {
    this.device = device;
    this.weightStore = options.weightStore ?? 'auto';
    this.subgroups = (options.subgroups ?? true) && device.features.has('subgroups');
    this.#prefillEnabled = options.prefillAttention ?? false;
    // With subgroups the matvec kernel keeps up with the tiled one to 256 rows (BENCHMARKS.md).
    this.#tiledMinRows = options.tiledMatmulMinRows ?? (this.subgroups ? 2 * TILED_MATMUL_MIN_ROWS : TILED_MATMUL_MIN_ROWS);
    this.#tileRows = options.tiledMatmulTileRows ?? null;
    this.#decodeAttention = options.decodeAttention ?? 'auto';
    this.#streamKeysPerStep = options.streamKeysPerStep ?? 4;
    this.#streamWorkgroupSize = options.streamWorkgroupSize;
    if (options.streamMaxKeys !== undefined && ![512, 1024, 2048, 4096].includes(options.streamMaxKeys)) {
      throw new InvalidArgumentError(`streamMaxKeys must be 512, 1024, 2048 or 4096, got ${String(options.streamMaxKeys)}.`);
    }
    this.#streamMaxKeys = options.streamMaxKeys;
    this.#streamMergeInSlots = options.streamMergeInSlots ?? true;
    if (options.attentionSplitTarget !== undefined) {
      assertInteger('attentionSplitTarget', options.attentionSplitTarget, 1);
      this.#splitTarget = options.attentionSplitTarget;
    }
    this.#streamScatter = options.streamScatter ?? true;
    // The stream kernel's lanes of a key must share a subgroup: bounded by the smallest
    // subgroup the adapter may use (GPUAdapterInfo.subgroupMinSize; absent: not used).
    const subgroupMinSize = (device as { adapterInfo?: { subgroupMinSize?: number } }).adapterInfo?.subgroupMinSize ?? 0;
    this.#streamLanes = this.subgroups ? (options.streamThreadsPerKey ?? subgroupMinSize) : 0;
    const tailRows = options.blockedMatmulTailRows ?? BLOCKED_MATMUL_TAIL_ROWS;
    assertInteger('blockedMatmulTailRows', tailRows, 0);
    this.#blockedSettings = {
      minRows: (options.blockedMatmul ?? true) ? (options.blockedMatmulMinRows ?? BLOCKED_MATMUL_MIN_ROWS) : Number.POSITIVE_INFINITY,
      tileRows: options.blockedMatmulTileRows ?? null,
      splitK: options.blockedMatmulSplitK ?? null,
      workgroups: options.blockedMatmulWorkgroups ?? BLOCKED_MATMUL_WORKGROUPS,
      tailRows,
    };
    this.#splitMatvec = options.splitMatvec ?? true;
    this.#splitMatvecSettings = {
      splitK: options.matvecSplitK ?? null,
      unroll: options.matvecUnroll ?? null,
      outputs: options.matvecOutputs ?? null,
      target: options.matvecSplitTarget ?? MATVEC_SPLIT_TARGET,
    };
    assertInteger('matvecSplitTarget', this.#splitMatvecSettings.target, 1);
    this.#maxKvBindingBytes = options.maxKvBindingBytes;
    this.#profile =
      options.profile === true && device.features.has('timestamp-query')
        ? {
            queries: device.createQuerySet({ type: 'timestamp', count: PROFILE_QUERIES }),
            resolve: device.createBuffer({ size: PROFILE_QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
            kernels: [],
          }
        : null;
    void device.lost.then((info) => {
      this.#lost = info.message || info.reason || 'unknown reason';
    });
    this.#uniforms = device.createBuffer({ size: UNIFORM_SLOT * UNIFORM_SLOTS, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  }

  // ---------------------------------------------------------------------------------------
  // Buffers

  uploadWeight(tensor: Tensor): DeviceWeight {
    this.#checkAlive();
    const n = elementCount(tensor.shape);
    const isVector = tensor.shape.length === 1;
    const cols = tensor.shape[tensor.shape.length - 1] ?? 1;
    const wantQ8 =
      !isVector &&
      cols % 32 === 0 &&
      tensor.name !== 'token_embd.weight' &&
      (this.weightStore === 'q8' || (this.weightStore === 'auto' && tensor.dtype === 'q8_0'));
    if (wantQ8) return this.#uploadQ8(tensor, n);
    const wantF16 =
      !isVector &&
      n % 2 === 0 &&
      (this.weightStore === 'f16' || this.weightStore === 'q8' || (this.weightStore === 'auto' && tensor.dtype !== 'f32'));
    const values = dequantize(tensor, new Float32Array(n));
    let data: Uint32Array | Float32Array;
    if (wantF16) {
      const packed = new Uint32Array(n / 2);
      for (let i = 0; i < n / 2; i++) packed[i] = f32ToF16(values[2 * i] as number) | (f32ToF16(values[2 * i + 1] as number) << 16);
      data = packed;
    } else data = values;
    const buffer = this.device.createBuffer({
      size: Math.max(4, data.byteLength),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      label: tensor.name,
    });
    this.device.queue.writeBuffer(buffer, 0, data);
    return new GpuWeight(tensor.name, tensor.shape, buffer, wantF16 ? 'f16' : 'f32');
  }

  /**
   * Q8_0 repacked for the GPU (see StoreType 'q8'): the file's blocks when the tensor is
   * Q8_0, else the values quantised here exactly as ggml does.
   */
  #uploadQ8(tensor: Tensor, n: number): DeviceWeight {
    const blocks = tensor.dtype === 'q8_0' ? tensor.data : quantizeQ8_0(dequantize(tensor, new Float32Array(n)));
    const nb = n / 32;
    const words = new Uint32Array(n / 4 + nb);
    const quants = new Uint8Array(words.buffer, 0, n);
    const scales = new Float32Array(words.buffer, n, nb);
    for (let b = 0; b < nb; b++) {
      const o = b * 34;
      scales[b] = f16ToF32((blocks[o] as number) | ((blocks[o + 1] as number) << 8));
      quants.set(blocks.subarray(o + 2, o + 34), b * 32);
    }
    const buffer = this.device.createBuffer({
      size: words.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      label: tensor.name,
    });
    this.device.queue.writeBuffer(buffer, 0, words);
    return new GpuWeight(tensor.name, tensor.shape, buffer, 'q8');
  }

  createBuffer(length: number, kind: 'f32' | 'i32' = 'f32'): DeviceBuffer {
    this.#checkAlive();
    assertInteger('buffer length', length, 0);
    const buffer = this.device.createBuffer({
      size: Math.max(16, length * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    return new GpuBuffer(buffer, length, kind);
  }

  write(buffer: DeviceBuffer, data: Float32Array | Int32Array, offset = 0, length = data.length): void {
    const b = buffer as GpuBuffer;
    if (offset < 0 || length > data.length || offset + length > b.length) throw new InvalidArgumentError('write out of range');
    // Commands already recorded may still read the old contents: submit them first.
    this.flush();
    if (length > 0) this.device.queue.writeBuffer(b.buffer, offset * 4, data.buffer, data.byteOffset, length * 4);
    if (b.host !== null) for (let i = 0; i < length; i++) b.host[offset + i] = data[i] as number;
  }

  async read(buffer: DeviceBuffer, out: Float32Array | Int32Array, offset = 0, length = out.length): Promise<void> {
    const b = buffer as GpuBuffer;
    if (offset < 0 || length > out.length || offset + length > b.length) throw new InvalidArgumentError('read out of range');
    await this.#readGpu(b.buffer, offset * 4, length === out.length ? out : out.subarray(0, length));
  }

  async #readGpu(src: GPUBuffer, byteOffset: number, out: Float32Array | Int32Array): Promise<void> {
    this.#checkAlive();
    const bytes = out.byteLength;
    if (bytes === 0) return;
    const size = Math.max(256, 2 ** Math.ceil(Math.log2(bytes)));
    // A staging buffer per read in flight (a pipelined decode reads step n + 1's ids while step
    // n's are still mapping): the pool of each size grows to the reads in flight, then is reused.
    let pool = this.#staging.get(size);
    if (pool === undefined) {
      pool = [];
      this.#staging.set(size, pool);
    }
    let staging = pool.pop();
    staging ??= this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.#endPass();
    const encoder = this.#encoder ?? this.device.createCommandEncoder();
    this.#encoder = null;
    encoder.copyBufferToBuffer(src, byteOffset, staging, 0, bytes);
    this.#uploadUniforms();
    this.device.queue.submit([encoder.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, bytes);
    } catch (error) {
      staging.destroy();
      // A lost or destroyed device rejects pending maps: report the loss as such (the lost
      // promise may settle just after the rejection).
      const lost = await Promise.race([
        this.device.lost.then((info) => info.message || info.reason || 'unknown reason'),
        new Promise<null>((resolve) => setTimeout(() => resolve(null), 200)),
      ]);
      if (lost !== null) {
        this.#lost = lost;
        throw new DeviceLostError(lost);
      }
      throw error;
    }
    this.#checkAlive();
    const view = staging.getMappedRange(0, bytes);
    if (out instanceof Float32Array) out.set(new Float32Array(view));
    else out.set(new Int32Array(view));
    staging.unmap();
    pool.push(staging);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (this.#encoder === null) return;
    this.#endPass();
    this.#uploadUniforms();
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
  }

  /** Sends the parameters of the dispatches recorded since the last submit. */
  #uploadUniforms(): void {
    if (this.#uniformSlot === 0) return;
    const h = this.#uniformHost;
    this.device.queue.writeBuffer(this.#uniforms, 0, h.buffer, h.byteOffset, this.#uniformSlot * UNIFORM_SLOT);
    this.#uniformSlot = 0;
  }

  /**
   * Allocates K and V [numSlots][headDim] (f16 packed two per u32, or f32) and the metric store
   * f32 [numSlots]. A pool larger than one storage binding (or `maxKvBindingBytes`) is split
   * into chunk buffers of 2^shift slots, each kernel binding a window of chunks per dispatch
   * (as many as maxStorageBuffersPerShaderStage leaves) and dispatching once per window.
   */
  createKvCache(numSlots: number, headDim: number, dtype: KvDtype): void {
    this.#checkAlive();
    assertInteger('numSlots', numSlots, 1);
    assertInteger('headDim', headDim, 1);
    if (dtype === 'f16' && headDim % 2 !== 0) throw new UnsupportedModelError('An f16 KV cache needs an even head dimension.');
    this.#kvStore = dtype === 'f16' ? 'f16' : 'f32';
    const rowBytes = headDim * (dtype === 'f16' ? 2 : 4);
    const bytes = numSlots * rowBytes;
    const limits = this.device.limits;
    const maxBinding = Math.min(
      limits.maxStorageBufferBindingSize,
      limits.maxBufferSize,
      this.#maxKvBindingBytes ?? Number.POSITIVE_INFINITY,
    );
    if (numSlots > 2 ** 31 - 1) throw new KvPoolTooLargeError(`The KV pool has ${numSlots} slots; block tables address at most 2^31 - 1.`);
    if (numSlots * 4 > limits.maxStorageBufferBindingSize) {
      throw new KvPoolTooLargeError(
        `The KV pool's metric store needs ${numSlots * 4} bytes (4 per slot) but this device binds at most ${limits.maxStorageBufferBindingSize}.`,
      );
    }
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    this.#destroyPool();
    // Slots per chunk: a power of two (the kernels split a slot with a shift and a mask).
    const shift = Math.floor(Math.log2(Math.max(1, maxBinding / rowBytes)));
    if (bytes <= maxBinding || 2 ** shift >= numSlots) {
      this.#k = this.device.createBuffer({ size: Math.max(16, bytes), usage, label: 'K' });
      this.#v = this.device.createBuffer({ size: Math.max(16, bytes), usage, label: 'V' });
      this.#kChunks = [this.#k];
      this.#vChunks = [this.#v];
    } else {
      if (2 ** shift * rowBytes > maxBinding || shift < 0) {
        throw new KvPoolTooLargeError(`One KV row (${rowBytes} bytes) does not fit a storage binding of ${maxBinding} bytes.`);
      }
      const chunkSlots = 2 ** shift;
      const n = Math.ceil(numSlots / chunkSlots);
      const perStage = limits.maxStorageBuffersPerShaderStage;
      const window = (others: number) => Math.min(n, Math.floor((perStage - others) / 2));
      if (window(ATTENTION_OTHER_BINDINGS) < 1) {
        throw new KvPoolTooLargeError(
          `The KV pool needs ${n} chunk buffers per K and V, and attention over a chunked pool binds ${ATTENTION_OTHER_BINDINGS + 2} storage buffers, but this device allows ${perStage} per shader stage.`,
        );
      }
      for (let c = 0; c < n; c++) {
        const size = Math.min(chunkSlots, numSlots - c * chunkSlots) * rowBytes;
        this.#kChunks.push(this.device.createBuffer({ size: Math.max(16, size), usage, label: `K${c}` }));
        this.#vChunks.push(this.device.createBuffer({ size: Math.max(16, size), usage, label: `V${c}` }));
      }
      this.#k = this.#kChunks[0] as GPUBuffer;
      this.#v = this.#vChunks[0] as GPUBuffer;
      this.#chunkShift = shift;
      const maxWindow = Math.max(window(APPEND_OTHER_BINDINGS), window(ATTENTION_OTHER_BINDINGS), window(MOVES_OTHER_BINDINGS));
      for (let i = 0; i < 2 * maxWindow; i++) this.#chunkPads.push(this.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE }));
      this.#appendPlan = this.#chunkPlan(window(APPEND_OTHER_BINDINGS), shift);
      this.#attentionPlan = this.#chunkPlan(window(ATTENTION_OTHER_BINDINGS), shift);
      this.#movesPlan = this.#chunkPlan(window(MOVES_OTHER_BINDINGS), shift);
    }
    this.#metrics = this.device.createBuffer({ size: Math.max(16, numSlots * 4), usage, label: 'metrics' });
    this.#headDim = headDim;
    this.#numSlots = numSlots;
  }

  /** K and V chunk buffers to bind per pass for a window of `w` chunks. */
  #chunkPlan(w: number, shift: number): ChunkPlan {
    const passes = Math.ceil(this.#kChunks.length / w);
    const k: GPUBuffer[][] = [];
    const v: GPUBuffer[][] = [];
    for (let pass = 0; pass < passes; pass++) {
      const ks: GPUBuffer[] = [];
      const vs: GPUBuffer[] = [];
      for (let i = 0; i < w; i++) {
        ks.push(this.#kChunks[pass * w + i] ?? (this.#chunkPads[2 * i] as GPUBuffer));
        vs.push(this.#vChunks[pass * w + i] ?? (this.#chunkPads[2 * i + 1] as GPUBuffer));
      }
      k.push(ks);
      v.push(vs);
    }
    return { chunking: { window: w, passes, shift }, k, v };
  }

  /** How many buffers K (and V) is split into (1 unless the pool exceeds a storage binding). */
  get kvChunks(): number {
    return this.#kChunks.length;
  }

  /** Passes of decode attention over the chunk windows (1 unless the pool is chunked past one window). */
  get attentionPasses(): number {
    return this.#attentionPlan === null ? 1 : this.#attentionPlan.chunking.passes;
  }

  #destroyPool(): void {
    for (const b of [...this.#kChunks, ...this.#vChunks, ...this.#chunkPads]) b.destroy();
    this.#metrics?.destroy();
    this.#k = this.#v = this.#metrics = null;
    this.#kChunks = [];
    this.#vChunks = [];
    this.#chunkPads = [];
    this.#appendPlan = this.#attentionPlan = this.#movesPlan = null;
  }

  /** Zeroes K, V and the metrics on the device (they start zeroed; this makes it explicit). */
  clearKvCache(): void {
    this.#cache();
    this.#endPass();
    this.#encoder ??= this.device.createCommandEncoder();
    for (const b of [...this.#kChunks, ...this.#vChunks]) this.#encoder.clearBuffer(b);
    if (this.#metrics !== null) this.#encoder.clearBuffer(this.#metrics);
  }

  // ---------------------------------------------------------------------------------------
  // Dense ops

  embed(out: DeviceBuffer, table: DeviceWeight, tokens: DeviceBuffer, rows: number): void {
    const t = table as GpuWeight;
    const o = out as GpuBuffer;
    const n = rows * t.cols;
    this.#dispatch(embedKernel(t.store), [rows, t.cols, t.rows, 0], [o.buffer, t.buffer, (tokens as GpuBuffer).buffer], n);
  }

  rmsNorm(out: DeviceBuffer, x: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void {
    this.#u32[2] = 0;
    this.#setUniform([rows, dim]);
    this.#f32[2] = eps;
    this.#dispatchRaw(rmsNormKernel(), [(out as GpuBuffer).buffer, (x as GpuBuffer).buffer, (weight as GpuWeight).buffer], rows, 1);
  }

  addRmsNorm(out: DeviceBuffer, x: DeviceBuffer, delta: DeviceBuffer, weight: DeviceWeight, rows: number, dim: number, eps: number): void {
    if (out === x || out === delta)
      throw new InvalidArgumentError('addRmsNorm writes x and out: give out a buffer of its own (not x or delta).');
    this.#setUniform([rows, dim]);
    this.#f32[2] = eps;
    this.#dispatchRaw(
      addRmsNormKernel(),
      [(out as GpuBuffer).buffer, (x as GpuBuffer).buffer, (delta as GpuBuffer).buffer, (weight as GpuWeight).buffer],
      rows,
      1,
    );
  }

  matmul(out: DeviceBuffer, x: DeviceBuffer, w: DeviceWeight, rows: number, bias?: DeviceWeight): void {
    const wt = w as GpuWeight;
    const o = out as GpuBuffer;
    const xb = x as GpuBuffer;
    const b = bias as GpuWeight | undefined;
    const blocked = this.blockedMatmulPlan(rows, wt.rows, wt.cols);
    if (blocked !== null) {
      for (const block of blocked.blocks) this.#blockedMatmul(block, o, xb, wt, b);
      if (blocked.tailRows > 0) this.#matvec(o, xb, wt, rows - blocked.tailRows, rows, b);
      return;
    }
    if (rows >= this.#tiledMinRows) {
      const colTiles = Math.ceil(wt.rows / TILED_MATMUL_TILE);
      // 64-row tiles when they make enough workgroups to fill a large GPU, else 32-row ones.
      const tileRows = this.#tileRows ?? (colTiles * Math.ceil(rows / 64) >= 512 ? 64 : 32);
      const buffers = [o.buffer, xb.buffer, wt.buffer];
      if (b !== undefined) buffers.push(b.buffer);
      this.#setUniform([rows, wt.cols, wt.rows, colTiles]);
      const [gx, gy] = grid(colTiles * Math.ceil(rows / tileRows));
      this.#dispatchRaw(tiledMatmulKernel(wt.store, b !== undefined, tileRows), buffers, gx, gy);
      return;
    }
    if (wt.cols % 8 === 0) {
      this.#matvec(o, xb, wt, 0, rows, b);
      return;
    }
    const tiles = Math.ceil(rows / MATMUL_ROWS);
    const total = wt.rows * tiles;
    const buffers = [o.buffer, xb.buffer, wt.buffer];
    if (b !== undefined) buffers.push(b.buffer);
    this.#setUniform([rows, wt.cols, wt.rows, total]);
    const [gx, gy] = grid(total);
    this.#dispatchRaw(matmulKernel(wt.store, b !== undefined), buffers, gx, gy);
  }

  matmulEach(
    outs: readonly DeviceBuffer[],
    x: DeviceBuffer,
    ws: readonly DeviceWeight[],
    rows: number,
    biases?: readonly (DeviceWeight | undefined)[],
  ): void {
    assertMatmulEachArguments(outs, x, ws);
    if (!this.#matvecStacked(outs, x, ws, rows, biases)) matmulEachInTurn(this, outs, x, ws, rows, biases);
  }

  /**
   * matmulEach as one stacked split-matvec dispatch, where it applies: 2-3 matrices of one inDim
   * and store, no biases, distinct outputs, outDims that whole blocks divide, and a batch the
   * matvec takes. Returns whether it ran.
   */
  #matvecStacked(
    outs: readonly DeviceBuffer[],
    x: DeviceBuffer,
    ws: readonly DeviceWeight[],
    rows: number,
    biases?: readonly (DeviceWeight | undefined)[],
  ): boolean {
    const n = ws.length;
    if (n < 2 || n > 3) return false;
    const w0 = ws[0] as GpuWeight;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const w = ws[i] as GpuWeight;
      if (biases?.[i] !== undefined || w.cols !== w0.cols || w.store !== w0.store || w.rows % 4 !== 0) return false;
      for (let k = 0; k < i; k++) if (outs[k] === outs[i]) return false;
      total += w.rows;
    }
    if (!this.#onSplitMatvec(rows, total, w0.cols)) return false;
    const plan = this.splitMatvecPlan(rows, total, w0.cols);
    const O = plan.outputs;
    const w1 = ws[1] as GpuWeight;
    const w2 = ws[2] as GpuWeight | undefined;
    if (w0.rows % O !== 0 || w1.rows % O !== 0 || (w2 !== undefined && w2.rows % O !== 0)) return false;
    const passes = Math.ceil(rows / plan.rowsPerPass);
    const split1 = (w0.rows / O) * passes;
    const split2 = split1 + (w1.rows / O) * passes;
    this.#setUniform([
      rows,
      w0.cols,
      w0.rows,
      plan.blocks,
      0,
      plan.slice,
      split1,
      w2 === undefined ? plan.blocks : split2,
      w1.rows,
      w2?.rows ?? 0,
    ]);
    const buffers = [(outs[0] as GpuBuffer).buffer, (x as GpuBuffer).buffer, w0.buffer, w1.buffer, (outs[1] as GpuBuffer).buffer];
    if (w2 !== undefined) buffers.push(w2.buffer, (outs[2] as GpuBuffer).buffer);
    const kernel = matvecSplitKernel(w0.store, false, plan.rowsPerPass, O, plan.unroll, plan.splitK, false, n as 2 | 3);
    const [gx, gy] = grid(plan.workgroups);
    this.#dispatchRaw(kernel, buffers, gx, gy);
    return true;
  }

  matmulSiluMul(out: DeviceBuffer, x: DeviceBuffer, gate: DeviceWeight, up: DeviceWeight, rows: number): void {
    if (out === x) throw new InvalidArgumentError('matmulSiluMul reads x while it writes out: give out a buffer of its own.');
    const g = gate as GpuWeight;
    const u = up as GpuWeight;
    if (g.rows !== u.rows || g.cols !== u.cols || g.store !== u.store) {
      throw new InvalidArgumentError(
        `matmulSiluMul needs gate and up of one shape and store, got [${g.shape.join(' x ')}] ${g.store} and [${u.shape.join(' x ')}] ${u.store}.`,
      );
    }
    // Decode-sized batches: one split-matvec dispatch reads x once for both and writes only out.
    if (this.#onSplitMatvec(rows, g.rows, g.cols)) {
      const plan = this.splitMatvecPlan(rows, g.rows, g.cols);
      this.#setUniform([rows, g.cols, g.rows, plan.blocks, 0, plan.slice]);
      const [gx, gy] = grid(plan.workgroups);
      const kernel = matvecSplitKernel(g.store, false, plan.rowsPerPass, plan.outputs, plan.unroll, plan.splitK, true);
      this.#dispatchRaw(kernel, [(out as GpuBuffer).buffer, (x as GpuBuffer).buffer, g.buffer, u.buffer], gx, gy);
      return;
    }
    const upOut = this.#ensureF32('mlpUp', rows * u.rows);
    this.matmul(out, x, gate, rows);
    this.matmul(upOut, x, up, rows);
    this.siluMul(out, out, upOut, rows * g.rows);
  }

  /** Whether `matmul` runs all of rows x inDim times outDim x inDim on the split matvec (#matvec's first branch). */
  #onSplitMatvec(rows: number, outDim: number, inDim: number): boolean {
    return (
      this.subgroups &&
      this.#splitMatvec &&
      outDim % 4 === 0 &&
      inDim % 8 === 0 &&
      rows < this.#tiledMinRows &&
      this.blockedMatmulPlan(rows, outDim, inDim) === null
    );
  }

  /** Rows [rowBegin, rowEnd) of the product on a matvec kernel (inDim a multiple of 8): one pass over W per R rows. */
  #matvec(out: GpuBuffer, x: GpuBuffer, w: GpuWeight, rowBegin: number, rowEnd: number, bias: GpuWeight | undefined): void {
    const rows = rowEnd - rowBegin;
    const buffers = [out.buffer, x.buffer, w.buffer];
    if (bias !== undefined) buffers.push(bias.buffer);
    if (this.subgroups && this.#splitMatvec && w.rows % 4 === 0) {
      const plan = this.splitMatvecPlan(rows, w.rows, w.cols);
      this.#setUniform([rowEnd, w.cols, w.rows, plan.blocks, rowBegin, plan.slice]);
      const [gx, gy] = grid(plan.workgroups);
      this.#dispatchRaw(
        matvecSplitKernel(w.store, bias !== undefined, plan.rowsPerPass, plan.outputs, plan.unroll, plan.splitK),
        buffers,
        gx,
        gy,
      );
      return;
    }
    const R = rows >= 8 ? 8 : rows >= 4 ? 4 : rows >= 2 ? 2 : 1;
    const total = w.rows * Math.ceil(rows / R);
    this.#setUniform([rowEnd, w.cols, w.rows, total, rowBegin]);
    if (this.subgroups && w.rows % 4 === 0) {
      const [gx, gy] = grid(total, MATVEC_SUBGROUP_OUTPUTS);
      this.#dispatchRaw(matvecSubgroupKernel(w.store, bias !== undefined, R), buffers, gx, gy);
    } else {
      const [gx, gy] = grid(total);
      this.#dispatchRaw(matvecKernel(w.store, bias !== undefined, R), buffers, gx, gy);
    }
  }

  /**
   * How the split matvec runs rows x inDim times outDim x inDim (planSplitMatvec with this
   * backend's options), cached per shape: decode steps call it for every matmul.
   */
  splitMatvecPlan(rows: number, outDim: number, inDim: number): SplitMatvecPlan {
    // A number key while it is exact (as blockedMatmulPlan's), so a lookup builds no string.
    const key = rows < 0x20000 && outDim < 0x40000 && inDim < 0x20000 ? (rows * 0x40000 + outDim) * 0x20000 + inDim : -1;
    const cached = key >= 0 ? this.#splitMatvecPlans.get(key) : undefined;
    if (cached !== undefined) return cached;
    const plan = planSplitMatvec(rows, outDim, inDim, this.#splitMatvecSettings);
    if (key >= 0) this.#splitMatvecPlans.set(key, plan);
    return plan;
  }
  readonly #splitMatvecPlans = new Map<number, SplitMatvecPlan>();

  /**
   * How `matmul` runs the blocked kernel for this shape, or null where it takes another
   * kernel (benchmarks report it): planBlockedMatmul with this backend's options, cached per
   * shape because decode steps call this for every matmul.
   */
  blockedMatmulPlan(rows: number, outDim: number, inDim: number): BlockedMatmulPlan | null {
    // A number key while it is exact (rows < 2^17, outDim < 2^18, inDim < 2^17), so a lookup builds no string.
    const key = rows < 0x20000 && outDim < 0x40000 && inDim < 0x20000 ? (rows * 0x40000 + outDim) * 0x20000 + inDim : -1;
    const cached = key >= 0 ? this.#blockedPlans.get(key) : undefined;
    if (cached !== undefined) return cached;
    const plan = planBlockedMatmul(rows, outDim, inDim, this.#blockedSettings);
    if (key >= 0) this.#blockedPlans.set(key, plan);
    return plan;
  }

  /** One block of the blocked matmul; with split K, partials in scratch summed by a second dispatch that also adds the bias. */
  #blockedMatmul(block: BlockedMatmulBlock, out: GpuBuffer, x: GpuBuffer, w: GpuWeight, bias: GpuWeight | undefined): void {
    const { rowBegin, rowEnd, tileRows, rowTiles, colTiles, kPerSplit, splits } = block;
    const outDim = w.rows;
    const [gx, gy] = grid(rowTiles * colTiles * splits);
    const params = [rowEnd, w.cols, outDim, rowTiles, colTiles, kPerSplit, splits, rowBegin];
    if (splits === 1) {
      const buffers = [out.buffer, x.buffer, w.buffer];
      if (bias !== undefined) buffers.push(bias.buffer);
      this.#setUniform(params);
      this.#dispatchRaw(blockedMatmulKernel(w.store, bias !== undefined, tileRows), buffers, gx, gy);
      return;
    }
    // partials [splits][rowEnd][outDim] (rows below rowBegin unused)
    const partials = this.#ensureF32('matmulPartials', splits * rowEnd * outDim);
    this.#setUniform(params);
    this.#dispatchRaw(blockedMatmulKernel(w.store, false, tileRows), [partials.buffer, x.buffer, w.buffer], gx, gy);
    const buffers = [out.buffer, partials.buffer];
    if (bias !== undefined) buffers.push(bias.buffer);
    const n = rowEnd * outDim;
    const begin = rowBegin * outDim;
    this.#dispatch(blockedMatmulReduceKernel(bias !== undefined), [n, outDim, splits, begin], buffers, n - begin);
  }

  rope(x: DeviceBuffer, positions: DeviceBuffer, rows: number, heads: number, rope: RopeSettings): void {
    const pos = positions as GpuBuffer;
    let maxPos = 0;
    const host = pos.host as Int32Array;
    for (let r = 0; r < rows; r++) maxPos = Math.max(maxPos, host[r] as number);
    const table = this.#ropeTable(rope, maxPos + 1);
    const half = rope.ropeDim / 2;
    this.#dispatch(
      ropeKernel(rope.layout === 'interleaved'),
      [rows, heads, rope.headDim, half],
      [(x as GpuBuffer).buffer, pos.buffer, table.cos.buffer, table.sin.buffer],
      rows * heads * half,
    );
  }

  siluMul(out: DeviceBuffer, gate: DeviceBuffer, up: DeviceBuffer, n: number): void {
    this.#elementwise('silu-mul', out as GpuBuffer, gate as GpuBuffer, up as GpuBuffer, n);
  }

  add(out: DeviceBuffer, a: DeviceBuffer, b: DeviceBuffer, n: number): void {
    this.#elementwise('add', out as GpuBuffer, a as GpuBuffer, b as GpuBuffer, n);
  }

  /** out may alias a (the adapter updates in place); b must not alias out. */
  #elementwise(op: 'add' | 'silu-mul', out: GpuBuffer, a: GpuBuffer, b: GpuBuffer, n: number): void {
    if (b === out) throw new InvalidArgumentError(`${op}: the second operand may not be the output.`);
    const inPlace = out === a;
    const buffers = inPlace ? [out.buffer, b.buffer] : [out.buffer, a.buffer, b.buffer];
    this.#dispatch(elementwiseKernel(op, inPlace), [n, 0, 0, 0], buffers, n);
  }

  gatherRows(out: DeviceBuffer, x: DeviceBuffer, rows: DeviceBuffer, count: number, dim: number): void {
    this.#dispatch(
      gatherRowsKernel(),
      [count, dim, 0, 0],
      [(out as GpuBuffer).buffer, (x as GpuBuffer).buffer, (rows as GpuBuffer).buffer],
      count * dim,
    );
  }

  // ---------------------------------------------------------------------------------------
  // Paged cache

  argmax(out: DeviceBuffer, logits: DeviceBuffer, rows: number, vocab: number): void {
    const chunks = Math.ceil(vocab / ARGMAX_CHUNK);
    if (chunks === 1) {
      this.#setUniform([rows, vocab, 0, 0]);
      const [gx, gy] = grid(rows);
      this.#dispatchRaw(argmaxKernel(), [(out as GpuBuffer).buffer, (logits as GpuBuffer).buffer], gx, gy);
      return;
    }
    // Long rows (an LLM's vocabulary): chunks in parallel, then one small pass per row.
    const partial = this.#ensureI32('argmaxPartial', 2 * rows * chunks);
    this.#setUniform([rows, vocab, chunks, 0]);
    const [px, py] = grid(rows * chunks);
    this.#dispatchRaw(argmaxPartialKernel(), [partial.buffer, (logits as GpuBuffer).buffer], px, py);
    this.#setUniform([rows, vocab, chunks, 0]);
    const [gx, gy] = grid(rows);
    this.#dispatchRaw(argmaxReduceKernel(), [(out as GpuBuffer).buffer, partial.buffer], gx, gy);
  }

  /** Sampled token selection on the device (see sampling-kernels.ts): one workgroup per row. */
  sample(out: DeviceBuffer, logits: DeviceBuffer, params: DeviceBuffer, rows: number, vocab: number): void {
    this.#setUniform([rows, vocab, 0, 0]);
    const [gx, gy] = grid(rows);
    this.#dispatchRaw(sampleKernel(), [(out as GpuBuffer).buffer, (logits as GpuBuffer).buffer, (params as GpuBuffer).buffer], gx, gy);
  }

  appendKv(layer: number, k: DeviceBuffer, v: DeviceBuffer, slots: DeviceBuffer, rows: number, kvHeads: number): void {
    const { K, V } = this.#cache();
    const per = this.#kvStore === 'f32' ? 1 : 2;
    const n = (rows * kvHeads * this.#headDim) / per;
    const plan = this.#appendPlan;
    if (plan === null) {
      this.#dispatch(
        appendKvKernel(this.#kvStore),
        [rows, kvHeads, this.#headDim, layer],
        [K, V, (k as GpuBuffer).buffer, (v as GpuBuffer).buffer, (slots as GpuBuffer).buffer],
        n,
      );
      return;
    }
    // Chunked pool: one dispatch per window of chunks; each writes the slots in its window.
    const kernel = appendKvKernel(this.#kvStore, plan.chunking);
    for (let pass = 0; pass < plan.chunking.passes; pass++) {
      this.#dispatch(
        kernel,
        [rows, kvHeads, this.#headDim, layer, pass],
        [
          ...(plan.k[pass] as GPUBuffer[]),
          ...(plan.v[pass] as GPUBuffer[]),
          (k as GpuBuffer).buffer,
          (v as GpuBuffer).buffer,
          (slots as GpuBuffer).buffer,
        ],
        n,
      );
    }
  }

  attention(
    out: DeviceBuffer,
    q: DeviceBuffer,
    layer: number,
    batch: AttentionRows,
    cache: PagedCacheView,
    heads: number,
    kvHeads: number,
    metrics?: MetricRecording,
  ): void {
    const { K, V } = this.#cache();
    const D = this.#headDim;
    const group = heads / kvHeads;
    this.#uploadTables(cache, layer);
    const rows = batch.rows;
    const seqs = batch.sequences as GpuBuffer;
    const positions = batch.positions as GpuBuffer;
    // Row metadata for the kernels, from the host copies of what the adapter wrote:
    // rowInfo [rows][4] = (sequence, position, recorded-row index or -1, may-see-later-keys 0|1).
    const maxLen = cache.maxBlocksPerHead * cache.blockSize;
    const seqHost = seqs.host as Int32Array;
    const posHost = positions.host as Int32Array;
    const rowInfo = this.#ensureI32('rowInfo', 4 * rows);
    const info = rowInfo.host as Int32Array;
    let recorded = 0;
    // Every layer of a step has the same rows: upload (a write, hence a submit) only when
    // they changed, not once per layer.
    let changed = rowInfo !== this.#rowInfoUploaded;
    // rowInfo.w = 1 where a row may see keys later than itself (another row of its sequence
    // in this step has a later position): only those rows read slot positions to mask.
    const latest = this.#latestPosition(cache.maxSequences);
    for (let r = 0; r < rows; r++) {
      const seq = seqHost[r] as number;
      latest[seq] = Math.max(latest[seq] as number, posHost[r] as number);
    }
    for (let r = 0; r < rows; r++) {
      const seq = seqHost[r] as number;
      const pos = posHost[r] as number;
      const rec = metrics !== undefined && metrics.rowFlags[r] === 1 ? recorded++ : -1;
      const mask = (latest[seq] as number) > pos ? 1 : 0;
      if (info[4 * r] !== seq || info[4 * r + 1] !== pos || info[4 * r + 2] !== rec || info[4 * r + 3] !== mask) {
        info[4 * r] = seq;
        info[4 * r + 1] = pos;
        info[4 * r + 2] = rec;
        info[4 * r + 3] = mask;
        changed = true;
      }
    }
    for (let r = 0; r < rows; r++) latest[seqHost[r] as number] = -1;
    if (changed) {
      this.#writeI32(rowInfo, 4 * rows);
      this.#rowInfoUploaded = rowInfo;
    }
    const scoreStride = maxLen;
    const scores = this.#ensureF32('scores', Math.max(1, recorded * heads * scoreStride));
    const stats = this.#ensureF32('stats', Math.max(1, recorded * heads * 2));
    if (this.#prefillApplies(rows, group, seqHost)) {
      // One sequence's prefill chunk: the tiled kernel reads each K/V tile once per query tile.
      this.#setUniform([rows, heads, kvHeads, cache.maxSequences, cache.maxBlocksPerHead, cache.blockSize, layer, scoreStride, 0]);
      this.#f32[8] = 1 / Math.sqrt(D);
      const [px, py] = grid(Math.ceil(rows / (PREFILL_QUERIES / group)) * kvHeads);
      this.#dispatchRaw(
        prefillAttentionKernel(this.#kvStore, D, group),
        [
          (out as GpuBuffer).buffer,
          (q as GpuBuffer).buffer,
          K,
          V,
          (this.#tables as GpuBuffer).buffer,
          (this.#lengths as GpuBuffer).buffer,
          (this.#slotPos as GpuBuffer).buffer,
          rowInfo.buffer,
          scores.buffer,
          stats.buffer,
        ],
        px,
        py,
      );
      this.#prefillDispatches++;
    } else {
      this.#pagedAttention(out, q, layer, rows, cache, heads, kvHeads, seqHost, rowInfo, scores, stats);
    }
    if (recorded === 0 || metrics === undefined) return;
    // Group the recorded rows by sequence so the metric kernel adds without races:
    // groupRows = [start of each group (groupCount + 1)] ++ [row numbers].
    const groupRows = this.#ensureI32('groupRows', 2 * recorded + 1);
    const gr = groupRows.host as Int32Array;
    // Count the groups (runs of one sequence), then write the starts and the row list.
    let groupCount = 0;
    let previous = -1;
    for (let r = 0; r < rows; r++) {
      if (info[4 * r + 2] === -1) continue;
      if (groupCount === 0 || seqHost[previous] !== seqHost[r]) groupCount++;
      previous = r;
    }
    // Every layer of a step has the same groups: written (a write, hence a submit) only when
    // they changed, as rowInfo is.
    const words = groupCount + 1 + recorded;
    let groupsChanged = groupRows !== this.#groupRowsUploaded || words !== this.#groupRowsWords;
    let g = 0;
    let n = 0;
    previous = -1;
    for (let r = 0; r < rows; r++) {
      if (info[4 * r + 2] === -1) continue;
      if (n === 0 || seqHost[previous] !== seqHost[r]) {
        if (gr[g] !== n) {
          gr[g] = n;
          groupsChanged = true;
        }
        g++;
      }
      const at = groupCount + 1 + n++;
      if (gr[at] !== r) {
        gr[at] = r;
        groupsChanged = true;
      }
      previous = r;
    }
    if (gr[groupCount] !== recorded) {
      gr[groupCount] = recorded;
      groupsChanged = true;
    }
    // The row list must not split a sequence: checked whenever the rows or the groups changed
    // (the layers of a step share both).
    if ((changed || groupsChanged) && !rowsGroupedBySequence(gr, groupCount + 1, recorded, seqHost, latest)) {
      this.#groupRowsUploaded = null;
      throw new InvalidArgumentError('Recorded rows of one sequence must be contiguous in a step.');
    }
    if (groupsChanged) {
      this.#writeI32(groupRows, words);
      this.#groupRowsUploaded = groupRows;
      this.#groupRowsWords = words;
    }
    const rowMetric = this.#uploadRowMetrics(metrics, rows);
    this.#setUniform([groupCount, heads, kvHeads, cache.maxSequences, cache.maxBlocksPerHead, cache.blockSize, layer, scoreStride, maxLen]);
    const [gx, gy] = grid(groupCount * kvHeads * maxLen, 256);
    this.#dispatchRaw(
      metricKernel(),
      [
        this.#metrics as GPUBuffer,
        scores.buffer,
        stats.buffer,
        groupRows.buffer,
        rowInfo.buffer,
        (this.#tables as GpuBuffer).buffer,
        (this.#lengths as GpuBuffer).buffer,
        (this.#slotPos as GpuBuffer).buffer,
        rowMetric.buffer,
      ],
      gx,
      gy,
    );
  }

  /**
   * Whether `attention` takes the tiled prefill kernel: an unchunked pool, at least
   * PREFILL_MIN_ROWS rows, all of one sequence (the engine's prefill chunk), and a group
   * size the kernel's query tile holds whole.
   */
  #prefillApplies(rows: number, group: number, seqHost: Int32Array): boolean {
    if (!this.#prefillEnabled || this.#attentionPlan !== null || rows < PREFILL_MIN_ROWS || !prefillAttentionSupports(this.#headDim, group))
      return false;
    const seq = seqHost[0];
    for (let r = 1; r < rows; r++) if (seqHost[r] !== seq) return false;
    return true;
  }

  /** How many attention dispatches took the tiled prefill kernel (tests check the engine's prefill does). */
  get prefillAttentionDispatches(): number {
    return this.#prefillDispatches;
  }

  /** How many attention dispatches took the stream decode kernel (tests check where it applies). */
  get streamAttentionDispatches(): number {
    return this.#streamDispatches;
  }

  /** Keys per workgroup of the last stream decode dispatch, at most (streamMaxKeys; 0 before one). */
  get streamAttentionMaxKeys(): number {
    return this.#streamKeysUsed;
  }

  /** Split-K paged attention (decode, mixed batches, chunked pools) and its reduction. */
  #pagedAttention(
    out: DeviceBuffer,
    q: DeviceBuffer,
    layer: number,
    rows: number,
    cache: PagedCacheView,
    heads: number,
    kvHeads: number,
    seqHost: Int32Array,
    rowInfo: GpuBuffer,
    scores: GpuBuffer,
    stats: GpuBuffer,
  ): void {
    const { K, V } = this.#cache();
    const D = this.#headDim;
    const group = heads / kvHeads;
    const maxLen = cache.maxBlocksPerHead * cache.blockSize;
    const scoreStride = maxLen;
    const lanes = this.#decodeAttention === 'wide' ? 0 : streamAttentionThreadsPerKey(D, this.#streamLanes);
    const stream = lanes > 0 && streamAttentionSupports(D, group, lanes);
    if (this.#decodeAttention === 'stream' && !stream) {
      throw new InvalidArgumentError(
        `decodeAttention 'stream' cannot run here (head dim ${D}, group ${group}, subgroups ${this.subgroups}); use 'auto'.`,
      );
    }
    const wide = !stream && wideAttentionSupports(D, group);
    const plan = this.#attentionPlan;
    // 128 threads: smaller workgroups fill the SMs better once the merge reuses the key slots'
    // workgroup memory (H100, 32 x 16K: 0.785 against 0.810 ms at 256 threads; 1 x 32K: 0.089 against 0.103).
    const streamThreads = this.#streamWorkgroupSize ?? 128;
    const streamKeys = stream ? this.#streamKeysOfSplit(D, group, lanes, streamThreads, plan !== null) : 0;
    // Split long contexts across workgroups so that even one sequence fills the GPU. The
    // wide and stream kernels keep a split's scores or slots in workgroup memory: at most S
    // keys per split, S sized from the longest head these rows attend to (not the table capacity).
    let splits: number;
    if (wide || stream) {
      let longest = 1;
      const lengths = cache.headLengths;
      for (let r = 0; r < rows; r++) {
        const h0 = (layer * cache.maxSequences + (seqHost[r] as number)) * kvHeads;
        for (let g = 0; g < kvHeads; g++) longest = Math.max(longest, lengths[h0 + g] as number);
      }
      const needed = Math.ceil(longest / (stream ? streamKeys : wideAttentionSplitKeys(group)));
      const toFill = Math.ceil(this.#splitTarget / Math.max(1, rows * kvHeads));
      splits = Math.max(needed, Math.min(toFill, Math.ceil(longest / 256)));
    } else {
      splits = Math.max(1, Math.min(64, Math.ceil(maxLen / 1024), Math.ceil(this.#splitTarget / Math.max(1, rows * kvHeads))));
    }
    // A chunked pool runs the kernel once per window of chunks, each pass writing its own
    // splits (keys outside its chunks masked); the reduction combines all of them.
    const passes = plan === null ? 1 : plan.chunking.passes;
    const partials = this.#ensureF32('partials', rows * kvHeads * splits * passes * group * (D + 2));
    const others = [
      (this.#tables as GpuBuffer).buffer,
      (this.#lengths as GpuBuffer).buffer,
      (this.#slotPos as GpuBuffer).buffer,
      rowInfo.buffer,
      scores.buffer,
    ];
    const [ax, ay] = grid(rows * kvHeads * splits);
    for (let pass = 0; pass < passes; pass++) {
      this.#setUniform([
        rows,
        heads,
        kvHeads,
        cache.maxSequences,
        cache.maxBlocksPerHead,
        cache.blockSize,
        layer,
        scoreStride,
        0,
        splits,
        pass,
        0,
      ]);
      this.#f32[8] = 1 / Math.sqrt(D);
      const chunking = plan === null ? null : plan.chunking;
      if (stream) {
        this.#streamDispatches++;
        this.#streamKeysUsed = streamKeys;
      }
      const kernel = stream
        ? streamAttentionKernel(
            this.#kvStore,
            D,
            group,
            lanes,
            this.#streamKeysPerStep,
            chunking,
            streamThreads,
            this.#streamScatter,
            streamKeys,
            this.#streamMergeInSlots,
          )
        : wide
          ? wideAttentionKernel(this.#kvStore, D, group, chunking)
          : attentionKernel(this.#kvStore, D, group, chunking);
      const kv = plan === null ? [K, V] : [...(plan.k[pass] as GPUBuffer[]), ...(plan.v[pass] as GPUBuffer[])];
      this.#dispatchRaw(kernel, [partials.buffer, (q as GpuBuffer).buffer, ...kv, ...others], ax, ay);
    }
    this.#dispatch(
      attentionReduceKernel(D),
      [rows, heads, kvHeads, splits * passes],
      [(out as GpuBuffer).buffer, partials.buffer, rowInfo.buffer, stats.buffer],
      rows * heads * D,
    );
  }

  /**
   * Keys of one split of the stream kernel (streamMaxKeys): 2048 on a pool in one binding
   * where the device's workgroup memory holds them, else 1024.
   */
  #streamKeysOfSplit(D: number, group: number, lanes: number, threads: 128 | 256, chunked: boolean): number {
    // Per layer of every step: plain arithmetic, no closure.
    const limit = this.device.limits.maxComputeWorkgroupStorageSize;
    const chosen = this.#streamMaxKeys;
    if (chosen !== undefined) {
      const bytes = streamAttentionWorkgroupBytes(D, group, lanes, threads, chosen, chunked, this.#streamMergeInSlots);
      if (bytes > limit) {
        throw new InvalidArgumentError(
          `streamMaxKeys ${chosen} needs ${bytes} bytes of workgroup memory; this device has ${limit}. Leave it unset.`,
        );
      }
      return chosen;
    }
    return !chunked && streamAttentionWorkgroupBytes(D, group, lanes, threads, 2048, false, this.#streamMergeInSlots) <= limit
      ? 2048
      : STREAM_ATTENTION_MAX_KEYS;
  }

  /**
   * The recorded rows' metric settings on the device: rowMetric [rows] of (groupScale f32,
   * square u32, metricBuffer i32, unused), indexed by step row. Sized for the recording's
   * row arrays (the engine's largest step), so it is created once; written (a submit) only
   * when a recorded row's settings changed, so the layers of a step share one upload.
   */
  #uploadRowMetrics(metrics: MetricRecording, rows: number): GpuBuffer {
    const buffer = this.#ensureI32('rowMetric', 4 * Math.max(rows, metrics.rowFlags.length));
    const words = buffer.host as Int32Array;
    if (this.#rowMetricScale.buffer !== words.buffer) this.#rowMetricScale = new Float32Array(words.buffer, words.byteOffset, words.length);
    const scale = this.#rowMetricScale;
    let changed = buffer !== this.#rowMetricUploaded;
    for (let r = 0; r < rows; r++) {
      if (metrics.rowFlags[r] !== 1) continue;
      const groupScale = metrics.rowGroupScale[r] as number;
      const square = metrics.rowSquare[r] as number;
      const metricBuffer = metrics.rowMetricBuffer[r] as number;
      if (scale[4 * r] !== groupScale || words[4 * r + 1] !== square || words[4 * r + 2] !== metricBuffer) {
        scale[4 * r] = groupScale;
        words[4 * r + 1] = square;
        words[4 * r + 2] = metricBuffer;
        changed = true;
      }
    }
    if (changed) {
      this.#writeI32(buffer, 4 * rows);
      this.#rowMetricUploaded = buffer;
    }
    return buffer;
  }

  executeMoves(moves: SlotMoveList): void {
    if (moves.count === 0) return;
    const { K, V } = this.#cache();
    const src = this.#ensureI32('moveSrc', moves.count);
    const dst = this.#ensureI32('moveDst', moves.count);
    this.flush();
    this.device.queue.writeBuffer(src.buffer, 0, moves.src.buffer, moves.src.byteOffset, moves.count * 4);
    this.device.queue.writeBuffer(dst.buffer, 0, moves.dst.buffer, moves.dst.byteOffset, moves.count * 4);
    const words = this.#kvStore === 'f32' ? this.#headDim : this.#headDim / 2;
    const plan = this.#movesPlan;
    if (plan === null) {
      this.#dispatch(
        movesKernel(this.#kvStore),
        [moves.count, this.#headDim, 0, 0],
        [K, V, this.#metrics as GPUBuffer, src.buffer, dst.buffer],
        moves.count * (words + 1),
      );
    } else this.#chunkedMoves(plan, moves.count, words, src.buffer, dst.buffer);
    this.#tablesVersion = -1;
  }

  /**
   * Moves in a chunked pool, in batches of at most MOVE_SCRATCH_BYTES of rows: gather every
   * source row of the batch into scratch (one dispatch per window of chunks), then scatter
   * them to their destinations, then move the metrics (unless `metrics` is false). Moves
   * [base, base + count) of the lists. Compaction never moves into a slot that is also a
   * source, so batches are independent.
   */
  #chunkedMoves(plan: ChunkPlan, count: number, words: number, src: GPUBuffer, dst: GPUBuffer, base = 0, metrics = true): void {
    const batch = Math.max(1, Math.min(count, Math.floor(MOVE_SCRATCH_BYTES / (8 * words))));
    // scratch [batch][2][words]: the K row, then the V row of each move.
    const scratch = this.#ensureF32('moveScratch', 2 * batch * words).buffer;
    const vec = rowVec(words);
    const vecs = words / vec;
    const gather = movesGatherKernel(this.#kvStore, plan.chunking, vec);
    const scatter = movesScatterKernel(this.#kvStore, plan.chunking, vec);
    for (let offset = 0; offset < count; offset += batch) {
      const n = Math.min(batch, count - offset);
      for (let pass = 0; pass < plan.chunking.passes; pass++) {
        const kv = [...(plan.k[pass] as GPUBuffer[]), ...(plan.v[pass] as GPUBuffer[])];
        this.#dispatch(gather, [n, vecs, pass, base + offset], [...kv, src, scratch], n * vecs);
      }
      for (let pass = 0; pass < plan.chunking.passes; pass++) {
        const kv = [...(plan.k[pass] as GPUBuffer[]), ...(plan.v[pass] as GPUBuffer[])];
        this.#dispatch(scatter, [n, vecs, pass, base + offset], [...kv, dst, scratch], n * vecs);
      }
    }
    if (metrics) this.#dispatch(metricMovesKernel(), [count, 0, 0, 0], [this.#metrics as GPUBuffer, src, dst], count);
  }

  /** Copies the device metric store to the host (before planning a compression). */
  async downloadMetrics(out: Float32Array): Promise<void> {
    if (this.#metrics === null) throw new InvalidArgumentError('createKvCache() first');
    await this.#readGpu(this.#metrics, 0, out.subarray(0, this.#numSlots));
  }

  /** metrics[slots[i]] = values[i] for i < count. */
  uploadMetrics(slots: Int32Array, values: Float32Array, count: number): void {
    if (count === 0) return;
    const s = this.#ensureI32('scatterSlots', count);
    const v = this.#ensureF32('scatterValues', count);
    this.flush();
    this.device.queue.writeBuffer(s.buffer, 0, slots.buffer, slots.byteOffset, count * 4);
    this.device.queue.writeBuffer(v.buffer, 0, values.buffer, values.byteOffset, count * 4);
    this.#dispatch(scatterKernel(), [count, 0, 0, 0], [this.#metrics as GPUBuffer, s.buffer, v.buffer], count);
  }

  /**
   * KV-Compress's block selection on the device metrics (see EvictionSelection and
   * selection-kernels.ts): uploads the selection's rows and groups, runs the threshold search
   * and the marking, and downloads only `selection.result` (blocks freed per row and one bit
   * per cached slot). Scratch buffers are sized for the selection's capacity on first use.
   */
  async selectEvictions(selection: EvictionSelection, cache: PagedCacheView, options: { readonly masks?: boolean } = {}): Promise<void> {
    const result = this.#recordSelection(selection, cache);
    if (result === null) return;
    const masks = options.masks ?? true;
    await this.#readGpu(result.buffer, 0, selection.result.subarray(0, selection.rowCount + (masks ? selection.maskWords : 0)));
    // Kept for a compactEvictions of this selection right after (any dispatch in between, or a
    // host change to the tables, forgets it).
    this.#selected = masks ? null : selection;
  }

  /**
   * The selection whose decision the device buffers hold, from selectEvictions without masks,
   * for compactEvictions to reuse; null once anything else is recorded.
   */
  #selected: EvictionSelection | null = null;

  /**
   * The selection and the compaction it implies, on the device (Backend.compactEvictions):
   * after the selection kernels, one workgroup per row pairs the row's holes with its
   * survivors and writes the moves to a list (compactPairsKernel); in a chunked pool the list
   * is then sorted by window of chunks. One download (blocks freed and moves per row, the move
   * count), then the moves are recorded:
   * K and V, and the metrics and positions. They run while the host applies the outcome to its
   * allocator (Compressor.applyDeviceCompaction).
   *
   * Up to COMPACTIONS_IN_FLIGHT may be in flight at once, each on its own selection of other
   * sequences: a round split in parts records part i + 1 (up to its download) while part i's
   * selection runs on the device, and applies part i while part i + 1's runs. Each in flight
   * has its own move lists; the rest is ordered by the queue. `stats`, if given, receives this
   * call's figures (lastCompaction has those of the last call to finish).
   */
  async compactEvictions(
    selection: EvictionSelection,
    cache: PagedCacheView,
    compactRows = selection.rowCount,
    stats?: CompactionStats,
  ): Promise<void> {
    let slot = 0;
    while (slot < COMPACTIONS_IN_FLIGHT && ((this.#compactionsInFlight >> slot) & 1) === 1) slot++;
    if (slot === COMPACTIONS_IN_FLIGHT) {
      throw new InvalidArgumentError(`At most ${COMPACTIONS_IN_FLIGHT} compactEvictions() may be in flight; await one first.`);
    }
    this.#compactionsInFlight |= 1 << slot;
    try {
      const done = await this.#compactEvictions(selection, cache, compactRows, slot === 0 ? '' : String(slot));
      this.lastCompaction = done;
      if (stats !== undefined) Object.assign(stats, done);
    } finally {
      this.#compactionsInFlight &= ~(1 << slot);
    }
  }

  /** Bit s: compaction scratch set s (its move lists and counts) is in use by a compactEvictions in flight. */
  #compactionsInFlight = 0;

  async #compactEvictions(
    selection: EvictionSelection,
    cache: PagedCacheView,
    compactRows: number,
    scratch: string,
  ): Promise<CompactionStats> {
    const t0 = performance.now();
    const rows = selection.rowCount;
    assertInteger('rows', compactRows, 0, rows);
    const changes = [cache.tableChanges, cache.positionChanges];
    const reuse = this.#selected === selection && changes.every((log) => log !== undefined && log.count === 0 && !log.overflowed);
    this.#selected = null;
    const result = reuse ? (this.#named.get('selectResult') as GpuBuffer) : this.#recordSelection(selection, cache);
    const selectionMs = performance.now() - t0;
    // Read now: another compaction may record before this one's download arrives.
    const tablesMs = reuse ? 0 : (this.#recordSplit[0] as number);
    const uploadMs = reuse ? 0 : (this.#recordSplit[1] as number);
    selection.rowMoves.fill(0, 0, rows);
    if (result === null || compactRows === 0) {
      selection.result.fill(0, 0, rows);
      return { moves: 0, windowMoves: 0, crossWindowMoves: 0, recordMs: performance.now() - t0, waitMs: 0 };
    }
    const cap = selection.maxRows;
    // At most min(e, length - e) <= length / 2 moves per row.
    let bound = 0;
    for (let r = 0; r < compactRows; r++) bound += (selection.rows[r * SELECTION_ROW_FIELDS + 3] as number) >>> 1;
    const info = this.#ensureI32(`compactInfo${scratch}`, COMPACT_INFO_HEADER + 2 * cap);
    const src = this.#ensureF32(`compactSrc${scratch}`, Math.max(1, bound)).buffer;
    const dst = this.#ensureF32(`compactDst${scratch}`, Math.max(1, bound)).buffer;
    const plan = this.#movesPlan;
    this.#endPass();
    this.#encoder ??= this.device.createCommandEncoder();
    this.#encoder.clearBuffer(info.buffer, 0, COMPACT_INFO_HEADER * 4);
    const selectBufs = this.#selectBuffers as SelectBuffers;
    this.#setUniform([rows, selection.groupCount, 0, cache.blockSize]);
    const [rx, ry] = grid(compactRows);
    this.#dispatchRaw(
      compactPairsKernel(),
      [selectBufs.rows, selectBufs.state, result.buffer, (this.#tables as GpuBuffer).buffer, src, dst, info.buffer],
      rx,
      ry,
    );
    let sorted: { src: GPUBuffer; dst: GPUBuffer } | null = null;
    if (plan !== null && plan.chunking.passes > 1 && bound > 0) {
      // Sort the moves by window of chunks (the kernels stop at the device's move count).
      sorted = {
        src: this.#ensureF32(`compactSortedSrc${scratch}`, bound).buffer,
        dst: this.#ensureF32(`compactSortedDst${scratch}`, bound).buffer,
      };
      const c = plan.chunking;
      const n = Math.ceil(bound / MOVES_PER_INVOCATION);
      this.#dispatch(moveBucketKernel(c, 'count'), [bound, 0, 0, 0], [src, dst, info.buffer], n);
      this.#dispatch(moveBucketKernel(c, 'offsets'), [bound, 0, 0, 0], [info.buffer], 1);
      this.#dispatch(moveBucketKernel(c, 'scatter'), [bound, 0, 0, 0], [src, dst, info.buffer, sorted.src, sorted.dst], n);
    }
    const out = this.#compactOut(scratch, COMPACT_INFO_HEADER + 2 * rows);
    const t1 = performance.now();
    await this.#readGpu(info.buffer, 0, out);
    const t2 = performance.now();
    for (let r = 0; r < rows; r++) {
      selection.result[r] = r < compactRows ? (out[COMPACT_INFO_HEADER + r] as number) : 0;
      selection.rowMoves[r] = r < compactRows ? (out[COMPACT_INFO_HEADER + rows + r] as number) : 0;
    }
    const total = out[0] as number;
    this.#tablesVersion = -1;
    const cross = sorted === null ? 0 : (out[MOVE_BUCKET_COUNTS + (plan as ChunkPlan).chunking.passes] as number);
    const stats = {
      moves: total,
      windowMoves: total - cross,
      crossWindowMoves: cross,
      recordMs: t1 - t0,
      waitMs: t2 - t1,
      tablesMs,
      uploadMs,
      selectionMs,
    };
    if (total === 0) return stats;
    const words = this.#kvStore === 'f32' ? this.#headDim : this.#headDim / 2;
    const vec = rowVec(words);
    this.#dispatch(slotMovesKernel(), [total, 0, 0, 0], [this.#metrics as GPUBuffer, (this.#slotPos as GpuBuffer).buffer, src, dst], total);
    if (plan === null) {
      const { K, V } = this.#cache();
      this.#dispatch(compactMovesKernel(vec), [total, words, 0, 0], [K, V, src, dst], (total * words) / vec);
    } else if (sorted === null) {
      // One window holds every chunk: every move runs in place.
      const kv = [...(plan.k[0] as GPUBuffer[]), ...(plan.v[0] as GPUBuffer[])];
      this.#dispatch(movesDirectKernel(plan.chunking, vec), [total, words, 0, 0], [...kv, src, dst], (total * words) / vec);
    } else {
      // Moves within one window of chunks run in place, one pass each; the rest through scratch.
      const c = plan.chunking;
      for (let pass = 0; pass <= c.passes; pass++) {
        const n = out[MOVE_BUCKET_COUNTS + pass] as number;
        if (n === 0) continue;
        const start = (out[MOVE_BUCKET_CURSORS + pass] as number) - n;
        if (pass === c.passes) {
          this.#chunkedMoves(plan, n, words, sorted.src, sorted.dst, start, false);
          continue;
        }
        const kv = [...(plan.k[pass] as GPUBuffer[]), ...(plan.v[pass] as GPUBuffer[])];
        this.#dispatch(movesDirectKernel(c, vec), [n, words, pass, start], [...kv, sorted.src, sorted.dst], (n * words) / vec);
      }
    }
    this.flush();
    return stats;
  }

  /** The last compactEvictions to finish (see CompactionStats). */
  lastCompaction: CompactionStats = { moves: 0, windowMoves: 0, crossWindowMoves: 0, recordMs: 0, waitMs: 0 };

  /**
   * Host scratch for compactEvictions' download, one per scratch set: two downloads may
   * complete in one turn of the event loop (grows, never per round).
   */
  #compactOutHost = new Map<string, Int32Array>();

  #compactOut(scratch: string, length: number): Int32Array {
    let host = this.#compactOutHost.get(scratch) ?? new Int32Array(0);
    if (host.length < length) {
      host = new Int32Array(Math.max(length, 2 * host.length));
      this.#compactOutHost.set(scratch, host);
    }
    return host.subarray(0, length);
  }

  /** The last #recordSelection's milliseconds syncing the tables and sending rows and groups (CompactionStats). */
  #recordSplit = new Float64Array(2);

  /** The selection's device buffers, kept for compactEvictions after #recordSelection. */
  #selectBuffers: SelectBuffers | null = null;

  /**
   * Records the selection kernels (see selection-kernels.ts) for `selection` on the current
   * cache tables: the threshold search level by level, the allocation of blocks to rows, the
   * masks. Returns the result buffer ([rows] blocks freed, then the masks), or null when the
   * selection has no rows.
   */
  #recordSelection(selection: EvictionSelection, cache: PagedCacheView): GpuBuffer | null {
    if (this.#metrics === null) throw new InvalidArgumentError('createKvCache() must run before selectEvictions().');
    const rows = selection.rowCount;
    const groups = selection.groupCount;
    if (rows === 0) return null;
    const cap = selection.maxRows;
    const rowBuf = this.#ensureI32('selectRows', cap * SELECTION_ROW_FIELDS);
    const groupBuf = this.#ensureI32('selectGroups', cap * SELECTION_GROUP_FIELDS);
    const state = this.#ensureF32('selectState', cap * (SELECTION_STATE_FIELDS + SELECTION_GROUP_STATE_FIELDS));
    const hist = this.#ensureF32('selectHist', cap * SELECTION_BINS);
    // u32 [groups][256]: each group's F(b) of the level (the histogram kernel adds, the
    // threshold kernel reads and zeroes it for the next level and round; zero when created).
    const fsum = this.#ensureF32('selectFsum', cap * SELECTION_BINS);
    const result = this.#ensureI32('selectResult', cap + selection.maxMaskWords);
    // Each row's keys, padded to whole mask words.
    const keyWords = selection.maskWords * 32;
    if (keyWords * 4 > this.device.limits.maxStorageBufferBindingSize) {
      throw new KvPoolTooLargeError(`The selection's ${keyWords} keys (4 bytes each) do not fit one storage binding.`);
    }
    const keys = this.#ensureF32('selectKeys', Math.max(4, keyWords)).buffer;
    // The tables may have changed since the last attention (compaction of other sequences).
    const t0 = performance.now();
    this.#uploadTables(cache, 0);
    this.flush();
    const t1 = performance.now();
    this.device.queue.writeBuffer(rowBuf.buffer, 0, selection.rows.buffer, selection.rows.byteOffset, rows * SELECTION_ROW_FIELDS * 4);
    this.device.queue.writeBuffer(
      groupBuf.buffer,
      0,
      selection.groups.buffer,
      selection.groups.byteOffset,
      groups * SELECTION_GROUP_FIELDS * 4,
    );
    this.#recordSplit[0] = t1 - t0;
    this.#recordSplit[1] = performance.now() - t1;
    const tables = (this.#tables as GpuBuffer).buffer;
    const positions = (this.#slotPos as GpuBuffer).buffer;
    const metrics = this.#metrics;
    const B = cache.blockSize;
    const [rx, ry] = grid(rows);
    const [gx, gy] = grid(groups);
    for (let level = 0; level < SELECTION_LEVELS; level++) {
      this.#profileTag = `@${level}`;
      this.#setUniform([rows, groups, level, B]);
      this.#dispatchRaw(
        selectionHistogramKernel(B % 8 === 0),
        [rowBuf.buffer, groupBuf.buffer, tables, positions, metrics, keys, state.buffer, hist.buffer, fsum.buffer],
        rx,
        ry,
      );
      this.#setUniform([rows, groups, level, B]);
      this.#dispatchRaw(selectionThresholdKernel(), [rowBuf.buffer, groupBuf.buffer, hist.buffer, state.buffer, fsum.buffer], gx, gy);
    }
    this.#profileTag = '';
    this.#setUniform([rows, groups, 0, B]);
    this.#dispatchRaw(selectionAllocateKernel(), [rowBuf.buffer, groupBuf.buffer, state.buffer, result.buffer], gx, gy);
    this.#setUniform([rows, groups, 0, B]);
    this.#dispatchRaw(selectionMarkKernel(), [rowBuf.buffer, keys, state.buffer, result.buffer], rx, ry);
    this.#selectBuffers = { rows: rowBuf.buffer, state: state.buffer };
    return result;
  }

  /**
   * Copies the device's slot positions into `cache.slotPositions`, after sending the host's
   * pending changes (Backend.downloadPositions): for host code that reads the positions a
   * device compaction moved. The caller then calls `positionsSynced()` on its allocator.
   */
  async downloadPositions(cache: PagedCacheView): Promise<void> {
    this.#uploadTables(cache, 0);
    await this.#readGpu((this.#slotPos as GpuBuffer).buffer, 0, cache.slotPositions);
    this.#tablesVersion = -1;
  }

  /** K or V of every slot, as f32 [slots][headDim] (tests). */
  async readCache(which: 'k' | 'v'): Promise<Float32Array> {
    this.#cache();
    const D = this.#headDim;
    const out = new Float32Array(this.#numSlots * D);
    const chunks = which === 'k' ? this.#kChunks : this.#vChunks;
    const per = chunks.length === 1 ? this.#numSlots : 2 ** this.#chunkShift;
    for (let c = 0; c < chunks.length; c++) {
      const n = Math.min(per, this.#numSlots - c * per);
      const part = out.subarray(c * per * D, (c * per + n) * D);
      if (this.#kvStore === 'f32') {
        await this.#readGpu(chunks[c] as GPUBuffer, 0, part);
        continue;
      }
      const words = new Int32Array((n * D) / 2);
      await this.#readGpu(chunks[c] as GPUBuffer, 0, words);
      const u16 = new Uint16Array(words.buffer);
      for (let i = 0; i < n * D; i++) part[i] = f16ToF32(u16[i] as number);
    }
    return out;
  }

  /** Reads K or V of one slot (tests). */
  async readSlot(which: 'k' | 'v', slot: number): Promise<Float32Array> {
    this.#cache();
    assertInteger('slot', slot, 0, this.#numSlots - 1);
    const D = this.#headDim;
    // The slot's chunk (the only one for a pool that fits one binding) and its row there.
    const chunks = which === 'k' ? this.#kChunks : this.#vChunks;
    const chunk = chunks.length === 1 ? 0 : Math.floor(slot / 2 ** this.#chunkShift);
    const row = chunks.length === 1 ? slot : slot - chunk * 2 ** this.#chunkShift;
    const buffer = chunks[chunk] as GPUBuffer;
    if (this.#kvStore === 'f32') {
      const out = new Float32Array(D);
      await this.#readGpu(buffer, row * D * 4, out);
      return out;
    }
    const words = new Int32Array(D / 2);
    await this.#readGpu(buffer, row * D * 2, words);
    const out = new Float32Array(D);
    const u16 = new Uint16Array(words.buffer);
    for (let i = 0; i < D; i++) out[i] = f16ToF32(u16[i] as number);
    return out;
  }

  /** Frees the KV pool, metrics and scratch buffers of this backend (the device stays). */
  destroyBuffers(): void {
    this.flush();
    this.#destroyPool();
    for (const b of this.#named.values()) b.buffer.destroy();
    this.#named.clear();
    for (const pool of this.#staging.values()) for (const b of pool) b.destroy();
    this.#staging.clear();
    for (const p of this.#pipelines.values()) p.bindGroups.clear();
    this.#tablesVersion = -1;
    this.#rowInfoUploaded = null;
    this.#groupRowsUploaded = null;
    this.#rowMetricUploaded = null;
  }

  /** Destroys the device: every backend on it stops working. */
  destroy(): void {
    this.device.destroy();
  }

  // ---------------------------------------------------------------------------------------
  // Internals

  #checkAlive(): void {
    if (this.#lost !== null) throw new DeviceLostError(this.#lost);
  }

  #cache(): { K: GPUBuffer; V: GPUBuffer } {
    if (this.#k === null || this.#v === null) throw new InvalidArgumentError('createKvCache() must run before cache operations.');
    return { K: this.#k, V: this.#v };
  }

  /**
   * Uploads the allocator's tables before attention. They change between steps (appends,
   * compaction), so they are re-sent once per step: at layer 0.
   */
  #uploadTables(cache: PagedCacheView, layer: number): void {
    if (layer !== 0 && this.#tablesVersion === 0) return;
    // (No host copies: the host arrays are the allocator's.)
    const t = this.#ensureF32('tables', cache.blockTables.length);
    const l = this.#ensureF32('lengths', cache.headLengths.length);
    const s = this.#ensureF32('slotPos', cache.slotPositions.length);
    this.flush();
    // Block tables and slot positions are large (up to tens of MiB) but a decode step changes
    // a few entries: patch the device copy from the change logs when it is known to hold
    // everything before them, else upload it whole.
    this.#syncTable(0, t, t !== this.#tables, cache.blockTables, cache.tableChanges);
    this.#tables = t;
    this.#syncTable(1, s, s !== this.#slotPos, cache.slotPositions, cache.positionChanges, cache);
    this.device.queue.writeBuffer(l.buffer, 0, cache.headLengths.buffer, cache.headLengths.byteOffset, cache.headLengths.byteLength);
    this.#lengths = l;
    this.#slotPos = s;
    this.#tableSources[0] = cache.blockTables;
    this.#tableSources[1] = cache.slotPositions;
    this.#tablesVersion = layer === 0 ? 0 : -1;
  }

  /** The host arrays last uploaded into the tables / slot-position buffers. */
  #tableSources: (Int32Array | null)[] = [null, null];

  #syncTable(which: 0 | 1, target: GpuBuffer, fresh: boolean, host: Int32Array, log: ChangeLog | undefined, cache?: PagedCacheView): void {
    const known = !fresh && this.#tableSources[which] === host;
    if (log === undefined || log.overflowed || !known) {
      const stale = which === 1 && (cache?.staleHeads ?? 0) > 0;
      if (stale && !known) {
        throw new InvalidArgumentError(
          'The slot positions a device compaction moved live only in a device buffer this backend no longer holds: download them (downloadPositions) before switching caches.',
        );
      }
      if (stale) this.#uploadKeepingStale(target, host, cache as PagedCacheView);
      else this.device.queue.writeBuffer(target.buffer, 0, host.buffer, host.byteOffset, host.byteLength);
    } else if (log.count > 0) {
      const n = log.count;
      const idx = this.#ensureI32('patchIndex', n);
      const val = this.#ensureI32('patchValue', n);
      const values = val.host as Int32Array;
      for (let i = 0; i < n; i++) values[i] = host[log.indices[i] as number] as number;
      this.device.queue.writeBuffer(idx.buffer, 0, log.indices.buffer, log.indices.byteOffset, n * 4);
      this.device.queue.writeBuffer(val.buffer, 0, values.buffer, values.byteOffset, n * 4);
      this.#dispatch(scatterKernel('i32'), [n, 0, 0, 0], [target.buffer, idx.buffer, val.buffer], n);
      // The scatter reads patchIndex/patchValue: submit before the next sync rewrites them.
      this.flush();
    }
    log?.clear();
  }

  /**
   * Uploads the host's slot positions whole, except those only the device holds (the stale
   * ranges a device compaction left, PagedCacheView.stalePositions): the device copy is saved,
   * the host copy written over it, and the stale ranges restored from the save (with the
   * device block tables, already synced).
   */
  #uploadKeepingStale(target: GpuBuffer, host: Int32Array, cache: PagedCacheView): void {
    const stale = cache.stalePositions as Int32Array;
    const heads = cache.staleHeads as number;
    const list = this.#ensureI32('staleHeads', 2 * heads);
    const h2 = list.host as Int32Array;
    let n = 0;
    for (let h = 0; h < stale.length && n < heads; h++) {
      if ((stale[h] as number) === 0) continue;
      h2[2 * n] = h * cache.maxBlocksPerHead;
      h2[2 * n + 1] = stale[h] as number;
      n++;
    }
    const save = this.#ensureF32('positionsSave', host.length).buffer;
    this.flush();
    this.device.queue.writeBuffer(list.buffer, 0, h2.buffer, h2.byteOffset, 2 * n * 4);
    this.#encoder = this.device.createCommandEncoder();
    this.#encoder.copyBufferToBuffer(target.buffer, 0, save, 0, host.byteLength);
    this.flush();
    this.device.queue.writeBuffer(target.buffer, 0, host.buffer, host.byteOffset, host.byteLength);
    this.#setUniform([n, cache.blockSize, 0, 0]);
    const [gx, gy] = grid(n);
    this.#dispatchRaw(restorePositionsKernel(), [list.buffer, (this.#tables as GpuBuffer).buffer, save, target.buffer], gx, gy);
    this.flush();
  }

  /** Scratch per sequence row, all -1 between calls: the latest position among a step's rows. */
  #latest = new Int32Array(0);

  #latestPosition(maxSequences: number): Int32Array {
    if (this.#latest.length < maxSequences) this.#latest = new Int32Array(maxSequences).fill(-1);
    return this.#latest;
  }

  #named = new Map<string, GpuBuffer>();

  #ensureI32(name: string, length: number): GpuBuffer {
    return this.#ensure(name, length, 'i32');
  }

  #ensureF32(name: string, length: number): GpuBuffer {
    return this.#ensure(name, length, 'f32');
  }

  /**
   * A scratch buffer that grows (doubling, within one storage binding) only when a step needs
   * more than ever before.
   */
  #ensure(name: string, length: number, kind: 'f32' | 'i32'): GpuBuffer {
    const have = this.#named.get(name);
    if (have !== undefined && have.length >= length) return have;
    this.flush();
    have?.buffer.destroy();
    const limits = this.device.limits;
    const most = Math.floor(Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) / 4);
    const b = this.createBuffer(Math.max(length, Math.min(most, (have?.length ?? 0) * 2)), kind) as GpuBuffer;
    this.#named.set(name, b);
    return b;
  }

  #writeI32(b: GpuBuffer, count: number): void {
    this.flush();
    const h = b.host as Int32Array;
    this.device.queue.writeBuffer(b.buffer, 0, h.buffer, h.byteOffset, count * 4);
  }

  #ropeTable(rope: RopeSettings, positions: number): { cos: GpuBuffer; sin: GpuBuffer; positions: number } {
    const have = this.#rope.get(rope);
    if (have !== undefined && have.positions >= positions) return have;
    const n = Math.max(positions, 2 * (have?.positions ?? 0), 256);
    const half = rope.ropeDim / 2;
    const inv = ropeInverseFrequencies(rope);
    const cos = new Float32Array(n * half);
    const sin = new Float32Array(n * half);
    for (let p = 0; p < n; p++) {
      for (let i = 0; i < half; i++) {
        const a = p * (inv[i] as number);
        cos[p * half + i] = Math.cos(a);
        sin[p * half + i] = Math.sin(a);
      }
    }
    this.flush();
    const c = this.createBuffer(cos.length) as GpuBuffer;
    const s = this.createBuffer(sin.length) as GpuBuffer;
    this.device.queue.writeBuffer(c.buffer, 0, cos);
    this.device.queue.writeBuffer(s.buffer, 0, sin);
    const table = { cos: c, sin: s, positions: n };
    this.#rope.set(rope, table);
    return table;
  }

  #pipeline(source: KernelSource): Pipeline {
    let p = this.#pipelines.get(source.key);
    if (p === undefined) {
      const module = this.device.createShaderModule({ code: source.code, label: source.key });
      const pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: source.key });
      p = { module, pipeline, layout: pipeline.getBindGroupLayout(0), source, bindGroups: new Map() };
      this.#pipelines.set(source.key, p);
    }
    return p;
  }

  #setUniform(values: readonly number[]): void {
    this.#u32.fill(0);
    for (let i = 0; i < values.length; i++) this.#u32[i] = values[i] as number;
  }

  /** Dispatches over n threads of a 256- (or workgroupSize-) wide 1-D kernel. */
  #dispatch(source: KernelSource, params: readonly number[], buffers: GPUBuffer[], n: number): void {
    if (n === 0) return;
    this.#setUniform(params);
    const [gx, gy] = grid(n, source.workgroupSize);
    this.#dispatchRaw(source, buffers, gx, gy);
  }

  #dispatchRaw(source: KernelSource, buffers: GPUBuffer[], gx: number, gy: number): void {
    this.#checkAlive();
    this.#selected = null;
    if (gx === 0 || gy === 0) return;
    const p = this.#pipeline(source);
    if (this.#uniformSlot >= UNIFORM_SLOTS) this.flush();
    const offset = this.#uniformSlot * UNIFORM_SLOT;
    this.#uniformSlot++;
    this.#uniformHost.set(this.#u32, offset / 4);
    const profile = this.#profile;
    if (profile !== null && 2 * profile.kernels.length < PROFILE_QUERIES) {
      // Its own pass, timed.
      this.#endPass();
      this.#encoder ??= this.device.createCommandEncoder();
      const at = 2 * profile.kernels.length;
      profile.kernels.push(source.key + this.#profileTag);
      const timed = this.#encoder.beginComputePass({
        timestampWrites: { querySet: profile.queries, beginningOfPassWriteIndex: at, endOfPassWriteIndex: at + 1 },
      });
      timed.setPipeline(p.pipeline);
      timed.setBindGroup(0, this.#bindGroup(p, buffers, offset));
      timed.dispatchWorkgroups(gx, gy);
      timed.end();
      return;
    }
    const pass = this.#beginPass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, this.#bindGroup(p, buffers, offset));
    pass.dispatchWorkgroups(gx, gy);
  }

  /**
   * GPU milliseconds of each dispatch recorded since the last call, in order, as (kernel key,
   * ms) (WebGpuBackendOptions.profile; empty without it). Waits for them to run.
   */
  async readProfile(): Promise<{ kernel: string; ms: number }[]> {
    const profile = this.#profile;
    if (profile === null || profile.kernels.length === 0) return [];
    const n = profile.kernels.length;
    this.#endPass();
    this.#encoder ??= this.device.createCommandEncoder();
    this.#encoder.resolveQuerySet(profile.queries, 0, 2 * n, profile.resolve, 0);
    const words = new Int32Array(4 * n);
    await this.#readGpu(profile.resolve, 0, words);
    const ns = new BigUint64Array(words.buffer);
    const out = profile.kernels.map((kernel, i) => ({ kernel, ms: Number((ns[2 * i + 1] as bigint) - (ns[2 * i] as bigint)) / 1e6 }));
    profile.kernels.length = 0;
    return out;
  }

  /**
   * The bind group of `p` with the uniform slot at `uniformOffset` and `buffers`, made once.
   * Looked up by offset, then by the buffers' identity: a dispatch builds no key (decode steps
   * make hundreds), and one pipeline at one slot sees few buffer sets.
   */
  #bindGroup(p: Pipeline, buffers: GPUBuffer[], uniformOffset: number): GPUBindGroup {
    let cached = p.bindGroups.get(uniformOffset);
    if (cached === undefined) {
      cached = [];
      p.bindGroups.set(uniformOffset, cached);
    }
    for (const c of cached) if (sameBuffers(c.buffers, buffers)) return c.group;
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.#uniforms, offset: uniformOffset, size: 48 } }];
    for (const [i, buffer] of buffers.entries()) entries.push({ binding: i + 1, resource: { buffer } });
    const group = this.device.createBindGroup({ layout: p.layout, entries });
    cached.push({ buffers: buffers.slice(), group });
    return group;
  }

  #beginPass(): GPUComputePassEncoder {
    if (this.#pass !== null) return this.#pass;
    this.#encoder ??= this.device.createCommandEncoder();
    this.#pass = this.#encoder.beginComputePass();
    return this.#pass;
  }

  #endPass(): void {
    this.#pass?.end();
    this.#pass = null;
  }
}

function sameBuffers(a: readonly GPUBuffer[], b: readonly GPUBuffer[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Workgroup grid for n threads: x at most 65535, the rest in y. */
function grid(n: number, perGroup = 1): [number, number] {
  const groups = Math.ceil(n / perGroup);
  if (groups <= 65535) return [groups, 1];
  return [65535, Math.ceil(groups / 65535)];
}

/**
 * Whether rows list[from .. from + n) keep each sequence's rows in one run. `seen` is the
 * caller's scratch, -1 at every sequence on entry and again on return (no allocation per step).
 */
export function rowsGroupedBySequence(list: Int32Array, from: number, n: number, seqs: Int32Array, seen: Int32Array): boolean {
  let grouped = true;
  for (let i = 0; i < n; i++) {
    const s = seqs[list[from + i] as number] as number;
    if (i > 0 && s === seqs[list[from + i - 1] as number]) continue;
    if (seen[s] !== -1) {
      grouped = false;
      break;
    }
    seen[s] = 0;
  }
  for (let i = 0; i < n; i++) seen[seqs[list[from + i] as number] as number] = -1;
  return grouped;
}
