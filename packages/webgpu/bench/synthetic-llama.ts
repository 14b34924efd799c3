// Llama-shaped models with random f16 weights generated on the GPU, for the benches that time
// whole decode steps (decode.gpu.ts, selection.gpu.ts): no checkpoint to load, the same shapes
// as Llama 3.1 8B and Llama 3.2 1B.
/// <reference types="@webgpu/types" />
import type { ModelConfig, Tensor } from '@kvcompress/core';
import type { LoadedModel } from '@kvcompress/models';
import { GpuWeight, WebGpuBackend, type WebGpuBackendOptions } from '../src/webgpu-backend.ts';

const llama3Scaling = { type: 'llama3' as const, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
const llama31_8b: ModelConfig = {
  architecture: 'llama',
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  vocabSize: 128256,
  maxContext: 131072,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  ropeLayout: 'rotate-half',
  ropeScaling: llama3Scaling,
  ropeDim: 128,
  tiedEmbeddings: false,
  attentionBias: false,
  bosTokenId: 128000,
  eosTokenIds: [128001],
};
// Llama 3.2 1B: the same family, narrower, head dim 64, tied embeddings.
const llama32_1b: ModelConfig = {
  ...llama31_8b,
  hiddenSize: 2048,
  intermediateSize: 8192,
  numLayers: 16,
  headDim: 64,
  ropeDim: 64,
  tiedEmbeddings: true,
};

/** The benches' model shapes: 8b, 1b, and a tiny one (the 1B's heads) that checks a bench on SwiftShader. */
export const shapes: Readonly<Record<string, ModelConfig>> = {
  '8b': llama31_8b,
  '1b': llama32_1b,
  tiny: { ...llama32_1b, hiddenSize: 256, intermediateSize: 512, numLayers: 2, vocabSize: 1000 },
};

export function shapeNamed(name: string): ModelConfig {
  const c = shapes[name];
  if (c === undefined) throw new Error(`SHAPE must be one of ${Object.keys(shapes).join(', ')}`);
  return c;
}

/** Canonical tensor names and shapes, no data: the random-weight backend makes them on the device. */
export function syntheticModel(c: ModelConfig): LoadedModel {
  const tensors = new Map<string, Tensor>();
  const add = (name: string, shape: number[]) => tensors.set(name, { name, shape, dtype: 'f16', data: new Uint8Array(0) });
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  add('token_embd.weight', [c.vocabSize, c.hiddenSize]);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `blk.${l}.`;
    add(`${p}attn_norm.weight`, [c.hiddenSize]);
    add(`${p}attn_q.weight`, [q, c.hiddenSize]);
    add(`${p}attn_k.weight`, [kv, c.hiddenSize]);
    add(`${p}attn_v.weight`, [kv, c.hiddenSize]);
    add(`${p}attn_output.weight`, [c.hiddenSize, q]);
    add(`${p}ffn_norm.weight`, [c.hiddenSize]);
    add(`${p}ffn_gate.weight`, [c.intermediateSize, c.hiddenSize]);
    add(`${p}ffn_up.weight`, [c.intermediateSize, c.hiddenSize]);
    add(`${p}ffn_down.weight`, [c.hiddenSize, c.intermediateSize]);
  }
  add('output_norm.weight', [c.hiddenSize]);
  if (!c.tiedEmbeddings) add('output.weight', [c.vocabSize, c.hiddenSize]);
  return { format: 'safetensors', config: c, tensors, tokenizer: null, metadata: {} };
}

/** Bytes of a synthetic model's weights (f16). */
export function syntheticModelBytes(c: ModelConfig): number {
  return [...syntheticModel(c).tensors.values()].reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1) * 2, 0);
}

/**
 * A WebGPU backend whose uploadWeight makes random weights on the device: uniform in
 * ±sqrt(3 / inDim) (unit-variance outputs), packed f16; norm weights are ones.
 */
export function randomWeightBackend(
  device: GPUDevice,
  debug: (m: string) => void = () => {},
  options: WebGpuBackendOptions = {},
): WebGpuBackend {
  const fill = device.createComputePipeline({
    layout: 'auto',
    compute: {
      entryPoint: 'main',
      module: device.createShaderModule({
        code: /* wgsl */ `
struct P { n: u32, seed: u32, scale: f32, p3: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> w: array<u32>;
fn hash(x: u32) -> u32 {
  var h = x * 747796405u + 2891336453u;
  h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
  return (h >> 22u) ^ h;
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  for (var i = g.x; i < p.n; i += nw.x * 256u) {
    let h = hash(i ^ (p.seed * 2654435761u));
    let a = f32(h & 0xffffu) / 32768.0 - 1.0;
    let b = f32(h >> 16u) / 32768.0 - 1.0;
    w[i] = pack2x16float(vec2f(a, b) * p.scale);
  }
}`,
      }),
    },
  });
  let seed = 1;
  class RandomWeightBackend extends WebGpuBackend {
    override uploadWeight(tensor: Tensor): GpuWeight {
      const n = tensor.shape.reduce((a, b) => a * b, 1);
      if (tensor.shape.length === 1) {
        const buffer = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
        device.queue.writeBuffer(buffer, 0, new Float32Array(n).fill(1));
        return new GpuWeight(tensor.name, tensor.shape, buffer, 'f32');
      }
      const buffer = device.createBuffer({ size: n * 2, usage: GPUBufferUsage.STORAGE });
      const params = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      const u = new ArrayBuffer(16);
      new Uint32Array(u, 0, 2).set([n / 2, seed++]);
      new Float32Array(u, 8, 1)[0] = Math.sqrt(3 / (tensor.shape[1] as number));
      device.queue.writeBuffer(params, 0, u);
      const e = device.createCommandEncoder();
      const pass = e.beginComputePass();
      pass.setPipeline(fill);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: fill.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: params } },
            { binding: 1, resource: { buffer } },
          ],
        }),
      );
      pass.dispatchWorkgroups(132 * 8);
      pass.end();
      device.queue.submit([e.finish()]);
      debug(`weight ${tensor.name} [${tensor.shape.join(', ')}]`);
      return new GpuWeight(tensor.name, tensor.shape, buffer, 'f16');
    }
  }
  return new RandomWeightBackend(device, options);
}
