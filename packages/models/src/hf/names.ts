import { ModelFormatError, type Tensor } from '@kvcompress/core';
import { listNames } from './util.ts';

/**
 * Hugging Face (transformers) tensor names of Llama-family checkpoints -> the canonical
 * GGUF-style names of `LoadedModel` (see types.ts). HF matrices are already `[out, in]`,
 * so only the names change.
 */

const GLOBAL_NAMES: Readonly<Record<string, string>> = {
  'embed_tokens.weight': 'token_embd.weight',
  'norm.weight': 'output_norm.weight',
};

const LAYER_NAMES: Readonly<Record<string, string>> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.q_proj.bias': 'attn_q.bias',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.k_proj.bias': 'attn_k.bias',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.v_proj.bias': 'attn_v.bias',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};

const LAYER_RE = /^layers\.(0|[1-9]\d{0,5})\.(.+)$/;

/**
 * The canonical name of an HF tensor name; `null` for tensors that carry no weights
 * (`rotary_emb.inv_freq` buffers, recomputed from the config); `undefined` for names this
 * mapping does not know. The `model.` prefix is optional (bare `LlamaModel` checkpoints
 * omit it).
 */
export function canonicalTensorName(hfName: string): string | null | undefined {
  if (hfName === 'lm_head.weight') return 'output.weight';
  if (hfName.endsWith('rotary_emb.inv_freq')) return null;
  const name = hfName.startsWith('model.') ? hfName.slice('model.'.length) : hfName;
  const global = Object.hasOwn(GLOBAL_NAMES, name) ? GLOBAL_NAMES[name] : undefined;
  if (global !== undefined) return global;
  const m = LAYER_RE.exec(name);
  if (m === null) return undefined;
  const suffix = m[2]!;
  const mapped = Object.hasOwn(LAYER_NAMES, suffix) ? LAYER_NAMES[suffix] : undefined;
  return mapped === undefined ? undefined : `blk.${m[1]}.${mapped}`;
}

/**
 * Renames a checkpoint's tensors to canonical names (tensor objects are copied, their
 * data is not). Drops `rotary_emb.inv_freq`. Throws `ModelFormatError` naming every tensor
 * it does not recognise, and when two names map to the same canonical name.
 */
export function renameHfTensors(tensors: ReadonlyMap<string, Tensor>): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const from = new Map<string, string>();
  const unknown: string[] = [];
  for (const [hfName, tensor] of tensors) {
    const canonical = canonicalTensorName(hfName);
    if (canonical === null) continue;
    if (canonical === undefined) {
      unknown.push(hfName);
      continue;
    }
    const previous = from.get(canonical);
    if (previous !== undefined) {
      throw new ModelFormatError(`Tensors ${JSON.stringify(previous)} and ${JSON.stringify(hfName)} are the same weight (${canonical}).`);
    }
    from.set(canonical, hfName);
    out.set(canonical, { name: canonical, shape: tensor.shape, dtype: tensor.dtype, data: tensor.data });
  }
  if (unknown.length > 0) {
    throw new ModelFormatError(
      `The checkpoint has ${unknown.length} tensor(s) that are not part of a Llama-family model: ${listNames(unknown)}. ` +
        'kvcompress supports llama, mistral and qwen2 checkpoints as saved by transformers.',
    );
  }
  return out;
}
