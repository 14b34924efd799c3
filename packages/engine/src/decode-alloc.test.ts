// The decode loop allocates nothing per token: appending a slot per (layer, kv-head),
// the forward pass, reading the logits and picking the token. Checked with V8's sampling
// heap profiler (every allocation of >= 1 byte on average is sampled at interval 32).
import { readFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { CpuBackend } from '@kvcompress/cpu';
import { kvCompressScorer, MetricStore } from '@kvcompress/metrics';
import { type ForwardStep, LlamaModel, loadLlama2cModel } from '@kvcompress/models';
import { PageAllocator } from '@kvcompress/page-allocator';
import { hasShared, sharedPath } from '@kvcompress/test-support';
import { describe, expect, it } from 'vitest';
import { argmax } from './sampling.ts';

interface ProfileNode {
  callFrame: { url: string; functionName: string };
  selfSize: number;
  children: ProfileNode[];
}

function ourAllocations(node: ProfileNode, out: Map<string, number>): void {
  const url = node.callFrame.url;
  // Library code only: this test's own loop and the profiler session are not the decode path.
  if (node.selfSize > 0 && /packages\/(core|cpu|models|page-allocator|metrics|engine)\/src/.test(url) && !url.endsWith('.test.ts')) {
    const key = `${node.callFrame.functionName} ${url.replace(/.*packages\//, '')}`;
    out.set(key, (out.get(key) ?? 0) + node.selfSize);
  }
  for (const c of node.children) ourAllocations(c, out);
}

describe.skipIf(!hasShared('models/stories260K/stories260K.bin'))('decode loop allocations', () => {
  it('one decode step (append, forward, metrics, logits, argmax) allocates nothing', async () => {
    const loaded = loadLlama2cModel(new Uint8Array(readFileSync(sharedPath('models/stories260K/stories260K.bin'))));
    const c = loaded.config;
    const shape = { layers: c.numLayers, kvHeads: c.numKvHeads, headDim: c.headDim, queryHeadsPerKvHead: c.numHeads / c.numKvHeads };
    const units = c.numLayers * c.numKvHeads;
    const allocator = new PageAllocator({ shape, numBlocks: units * 128, blockSize: 16, maxSequences: 1, maxContext: 2048 });
    const backend = new CpuBackend();
    backend.createKvCache(allocator.numSlots, c.headDim, 'f32');
    const model = new LlamaModel(loaded, backend, { maxRows: 1 });
    const store = new MetricStore(allocator.numSlots);
    const decode = kvCompressScorer().decode;
    const recording = {
      values: store.values,
      rowFlags: new Uint8Array([1]),
      rowSquare: new Uint8Array([decode.aggregation === 'L2' ? 1 : 0]),
      rowGroupScale: new Float32Array([1]),
      rowMetricBuffer: new Int32Array([decode.metricBuffer]),
    };
    const seq = allocator.addSequence();
    const step: ForwardStep & { logitCount: number } = {
      rows: 1,
      tokens: new Int32Array(1),
      sequences: new Int32Array([seq]),
      positions: new Int32Array(1),
      slots: new Int32Array(units),
      logitRows: new Int32Array(1),
      logitCount: 1,
    };
    const logits = new Float32Array(c.vocabSize);
    let token = 1;
    const run = (steps: number) => {
      for (let i = 0; i < steps; i++) {
        step.positions[0] = allocator.nextPosition(seq);
        allocator.appendTokens(seq, 1, step.slots);
        for (let u = 0; u < units; u++) store.values[step.slots[u] as number] = 0;
        step.tokens[0] = token;
        model.forward(step, allocator, recording);
        backend.readSync(model.logits, logits, 0, c.vocabSize);
        token = argmax(logits, 0, c.vocabSize);
      }
    };
    run(1500); // warm up: until the JIT has optimised the loop, doubles are boxed (interpreter tiers)
    const session = new Session();
    session.connect();
    await session.post('HeapProfiler.startSampling', { samplingInterval: 32 });
    run(300);
    const { profile } = (await session.post('HeapProfiler.stopSampling')) as unknown as { profile: { head: ProfileNode } };
    session.disconnect();
    const ours = new Map<string, number>();
    ourAllocations(profile.head, ours);
    expect(Object.fromEntries(ours)).toEqual({});
    expect(allocator.nextPosition(seq)).toBe(1800);
  }, 60_000);
});
