import { assertInteger, InvalidArgumentError, type SlotMoveList } from '@kvcompress/core';
import type { GroupReduction, MetricAggregation, Scorer } from './scorers.ts';

/**
 * One importance metric per cache slot, Float32 [numSlots] indexed by global slot
 * (block * blockSize + offset), the same indexing as the page allocator's positions and the
 * Backend's K/V. Compaction moves are applied here so a metric travels with its K/V.
 */
export class MetricStore {
  readonly values: Float32Array;

  constructor(numSlots: number) {
    assertInteger('numSlots', numSlots, 1);
    this.values = new Float32Array(numSlots);
  }

  /** Executes a move list (dst := src, reading the pre-move state; the list guarantees no overlap). */
  applyMoves(moves: SlotMoveList): void {
    moves.applyTo(this.values);
  }

  /**
   * Stores one layer's prefill scores. `scores` Float32 [kvHeads][count]; `slots` Int32
   * [layers][kvHeads][count] as filled by `PageAllocator.appendTokens`.
   */
  writePrefill(layer: number, kvHeads: number, count: number, scores: Float32Array, slots: Int32Array): void {
    const base = layer * kvHeads * count;
    if (scores.length < kvHeads * count || slots.length < base + kvHeads * count) {
      throw new InvalidArgumentError('scores must be [kvHeads][count] and slots [layers][kvHeads][count].');
    }
    for (let i = 0; i < kvHeads * count; i++) this.values[slots[base + i] as number] = scores[i] as number;
  }
}

/**
 * Adds one decode step's attention to the metrics of a head's slots: for each key i the
 * group's probabilities p[q][i] (q over the query heads sharing the kv-head) are aggregated
 * (p or p^2), reduced over the group (sum or mean) and added to metric[slot(i)], for keys at
 * least `metricBuffer` positions older than the query. Allocates nothing.
 */
export class DecodeMetricAccumulator {
  readonly aggregation: MetricAggregation;
  readonly groupReduction: GroupReduction;
  readonly metricBuffer: number;

  constructor(scorer: Scorer) {
    if (scorer.decode === undefined || !scorer.accumulatesDuringDecode) {
      throw new InvalidArgumentError(`Scorer "${scorer.name}" does not accumulate during decode.`);
    }
    this.aggregation = scorer.decode.aggregation;
    this.groupReduction = scorer.decode.groupReduction;
    this.metricBuffer = scorer.decode.metricBuffer;
  }

  /**
   * @param metrics   Float32 [numSlots]
   * @param probs     attention of query head qi of the group to logical key i at
   *                  probs[probsOffset + qi * probsStride + i]
   * @param table     block tables; this head's table starts at tableOffset
   * @param positions Int32 [numSlots] token position per slot
   */
  accumulate(
    metrics: Float32Array,
    probs: Float32Array,
    probsOffset: number,
    probsStride: number,
    group: number,
    table: Int32Array,
    tableOffset: number,
    blockSize: number,
    length: number,
    positions: Int32Array,
    queryPosition: number,
  ): void {
    const square = this.aggregation === 'L2';
    const scale = this.groupReduction === 'mean' ? 1 / group : 1;
    const newest = queryPosition - this.metricBuffer;
    for (let i = 0; i < length; i++) {
      const j = (i / blockSize) | 0;
      const slot = (table[tableOffset + j] as number) * blockSize + (i - j * blockSize);
      if ((positions[slot] as number) > newest) continue;
      let s = 0;
      for (let qi = 0; qi < group; qi++) {
        const p = probs[probsOffset + qi * probsStride + i] as number;
        s += square ? p * p : p;
      }
      metrics[slot] = (metrics[slot] as number) + s * scale;
    }
  }
}
