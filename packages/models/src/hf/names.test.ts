import { ModelFormatError, type Tensor } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { canonicalTensorName, renameHfTensors } from './names.ts';

const t = (name: string): Tensor => ({ name, shape: [1], dtype: 'f32', data: new Uint8Array(4) });

describe('canonicalTensorName', () => {
  it('maps every Llama-family tensor', () => {
    const cases: Array<[string, string | null | undefined]> = [
      ['model.embed_tokens.weight', 'token_embd.weight'],
      ['model.layers.0.input_layernorm.weight', 'blk.0.attn_norm.weight'],
      ['model.layers.3.self_attn.q_proj.weight', 'blk.3.attn_q.weight'],
      ['model.layers.3.self_attn.q_proj.bias', 'blk.3.attn_q.bias'],
      ['model.layers.12.self_attn.k_proj.weight', 'blk.12.attn_k.weight'],
      ['model.layers.12.self_attn.k_proj.bias', 'blk.12.attn_k.bias'],
      ['model.layers.1.self_attn.v_proj.weight', 'blk.1.attn_v.weight'],
      ['model.layers.1.self_attn.v_proj.bias', 'blk.1.attn_v.bias'],
      ['model.layers.1.self_attn.o_proj.weight', 'blk.1.attn_output.weight'],
      ['model.layers.1.post_attention_layernorm.weight', 'blk.1.ffn_norm.weight'],
      ['model.layers.1.mlp.gate_proj.weight', 'blk.1.ffn_gate.weight'],
      ['model.layers.1.mlp.up_proj.weight', 'blk.1.ffn_up.weight'],
      ['model.layers.1.mlp.down_proj.weight', 'blk.1.ffn_down.weight'],
      ['model.norm.weight', 'output_norm.weight'],
      ['lm_head.weight', 'output.weight'],
      ['norm.weight', 'output_norm.weight'],
      ['layers.0.mlp.up_proj.weight', 'blk.0.ffn_up.weight'],
      ['model.layers.0.self_attn.rotary_emb.inv_freq', null],
      ['model.rotary_emb.inv_freq', null],
      ['model.layers.0.self_attn.o_proj.bias', undefined],
      ['model.layers.01.mlp.up_proj.weight', undefined],
      ['model.layers.x.mlp.up_proj.weight', undefined],
      ['model.layers.0.self_attn.q_norm.weight', undefined],
      ['transformer.wte.weight', undefined],
      ['model.constructor', undefined],
      ['model.layers.0.toString', undefined],
    ];
    for (const [hf, canonical] of cases) expect(canonicalTensorName(hf), hf).toBe(canonical);
  });
});

describe('renameHfTensors', () => {
  it('renames, keeps the data and drops inv_freq', () => {
    const embed = t('model.embed_tokens.weight');
    const out = renameHfTensors(
      new Map([
        ['model.embed_tokens.weight', embed],
        ['model.layers.0.self_attn.rotary_emb.inv_freq', t('model.layers.0.self_attn.rotary_emb.inv_freq')],
        ['lm_head.weight', t('lm_head.weight')],
      ]),
    );
    expect([...out.keys()]).toEqual(['token_embd.weight', 'output.weight']);
    expect(out.get('token_embd.weight')).toEqual({ ...embed, name: 'token_embd.weight' });
    expect(out.get('token_embd.weight')!.data).toBe(embed.data);
  });

  it('names unknown tensors', () => {
    const tensors = new Map([
      ['model.embed_tokens.weight', t('a')],
      ['model.layers.0.self_attn.q_norm.weight', t('b')],
      ['vision_tower.patch_embed.weight', t('c')],
    ]);
    expect(() => renameHfTensors(tensors)).toThrow(ModelFormatError);
    expect(() => renameHfTensors(tensors)).toThrow(
      /2 tensor\(s\) .*: model.layers.0.self_attn.q_norm.weight, vision_tower.patch_embed.weight/,
    );
  });

  it('refuses two names for the same weight', () => {
    const tensors = new Map([
      ['model.norm.weight', t('a')],
      ['norm.weight', t('b')],
    ]);
    expect(() => renameHfTensors(tensors)).toThrow(/"model.norm.weight" and "norm.weight" are the same weight \(output_norm.weight\)/);
  });
});
