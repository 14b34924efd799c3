import { assertInteger } from './validate.ts';

/** Element type of cached keys and values. `f16` is stored packed two per u32 on the GPU. */
export type KvDtype = 'f16' | 'f32';

/** Bytes one K or V element takes in a given dtype. */
export function kvDtypeBytes(dtype: KvDtype): number {
  return dtype === 'f16' ? 2 : 4;
}

/**
 * The shape of a model's KV cache: what the page allocator, the metrics and the eviction
 * policies need to know about a model. Query heads are grouped: query head `q` reads
 * kv-head `floor(q / queryHeadsPerKvHead)` (GQA; 1 for plain multi-head attention).
 */
export interface KvCacheShape {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly queryHeadsPerKvHead: number;
}

export function validateKvCacheShape(shape: KvCacheShape): void {
  assertInteger('layers', shape.layers, 1, 1 << 12);
  assertInteger('kvHeads', shape.kvHeads, 1, 1 << 12);
  assertInteger('headDim', shape.headDim, 1, 1 << 14);
  assertInteger('queryHeadsPerKvHead', shape.queryHeadsPerKvHead, 1, 1 << 10);
}

/** Number of (layer, kv-head) pairs: the units that each get their own block table. */
export function headCount(shape: KvCacheShape): number {
  return shape.layers * shape.kvHeads;
}

/** Bytes of K plus V for one token in every layer and kv-head of the model. */
export function kvBytesPerToken(shape: KvCacheShape, dtype: KvDtype): number {
  return 2 * shape.layers * shape.kvHeads * shape.headDim * kvDtypeBytes(dtype);
}
