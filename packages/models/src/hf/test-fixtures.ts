/**
 * Synthetic Hugging Face checkpoints for tests: a tiny safetensors writer, random weights
 * for small llama / qwen2 / mistral configs, tiny tokenizers and real chat templates.
 * Not part of the public API.
 */

export type StDtype = 'F32' | 'F16' | 'BF16';

export interface StTensor {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** A seeded PRNG (mulberry32), uniform in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function f32ToF16Bits(value: number): number {
  const f = new Float32Array([value]);
  const x = new Uint32Array(f.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign; // flush tiny values to zero (fine for test weights)
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | (mant >>> 13);
}

/** Encodes values in a dtype, little-endian. */
export function encodeValues(values: readonly number[] | Float32Array, dtype: StDtype): Uint8Array {
  const n = values.length;
  if (dtype === 'F32') return new Uint8Array(Float32Array.from(values).buffer);
  const out = new Uint16Array(n);
  const f = Float32Array.from(values);
  const bits = new Uint32Array(f.buffer);
  for (let i = 0; i < n; i++) out[i] = dtype === 'F16' ? f32ToF16Bits(f[i]!) : bits[i]! >>> 16;
  return new Uint8Array(out.buffer);
}

/** Builds a safetensors file: the header padded with spaces to 8 bytes, tensors back to back. */
export function writeSafetensors(tensors: readonly StTensor[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = metadata === undefined ? {} : { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  let json = JSON.stringify(header);
  while ((8 + new TextEncoder().encode(json).length) % 8 !== 0) json += ' ';
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const t of tensors) {
    out.set(t.data, pos);
    pos += t.data.length;
  }
  return out;
}

export type TinyModelType = 'llama' | 'qwen2' | 'mistral';

/** config.json of a 2-layer model: hidden 16, 4 heads, 2 kv heads, vocab 32. */
export function tinyConfigJson(type: TinyModelType, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const base: Record<string, unknown> = {
    architectures: [{ llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', mistral: 'MistralForCausalLM' }[type]],
    model_type: type,
    hidden_size: 16,
    intermediate_size: 40,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 32,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
    transformers_version: '4.46.0',
  };
  const extra: Record<string, unknown> = {
    llama: { attention_bias: false, mlp_bias: false, rope_scaling: null },
    // <|endoftext|> and <|im_end|> of the ChatML tokenizer below.
    qwen2: { use_sliding_window: false, sliding_window: 128, max_window_layers: 2, bos_token_id: 25, eos_token_id: 27 },
    mistral: { sliding_window: 64 },
  }[type];
  return { ...base, ...extra, ...overrides };
}

/** Random weights under HF names for a config.json (as built by `tinyConfigJson`). */
export function tinyHfTensors(
  config: Record<string, unknown>,
  options: { dtype?: StDtype; seed?: number; lmHead?: boolean } = {},
): StTensor[] {
  const dtype = options.dtype ?? 'F32';
  const random = rng(options.seed ?? 1);
  const c = config as {
    hidden_size: number;
    intermediate_size: number;
    num_attention_heads: number;
    num_key_value_heads?: number;
    head_dim?: number;
    vocab_size: number;
    num_hidden_layers: number;
    model_type?: string;
    tie_word_embeddings?: boolean;
  };
  const h = c.hidden_size;
  const ff = c.intermediate_size;
  const heads = c.num_attention_heads;
  const kvHeads = c.num_key_value_heads ?? heads;
  const hd = c.head_dim ?? h / heads;
  const vocab = c.vocab_size;
  const layers = c.num_hidden_layers;
  const bias = c.model_type === 'qwen2';
  const tensors: StTensor[] = [];
  const add = (name: string, shape: number[], around = 0): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = around + (random() - 0.5) * 0.2;
    tensors.push({ name, dtype, shape, data: encodeValues(values, dtype) });
  };
  add('model.embed_tokens.weight', [vocab, h]);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [h], 1);
    add(`${p}self_attn.q_proj.weight`, [heads * hd, h]);
    add(`${p}self_attn.k_proj.weight`, [kvHeads * hd, h]);
    add(`${p}self_attn.v_proj.weight`, [kvHeads * hd, h]);
    if (bias) {
      add(`${p}self_attn.q_proj.bias`, [heads * hd]);
      add(`${p}self_attn.k_proj.bias`, [kvHeads * hd]);
      add(`${p}self_attn.v_proj.bias`, [kvHeads * hd]);
    }
    add(`${p}self_attn.o_proj.weight`, [h, heads * hd]);
    add(`${p}post_attention_layernorm.weight`, [h], 1);
    add(`${p}mlp.gate_proj.weight`, [ff, h]);
    add(`${p}mlp.up_proj.weight`, [ff, h]);
    add(`${p}mlp.down_proj.weight`, [h, ff]);
  }
  add('model.norm.weight', [h], 1);
  if (options.lmHead ?? c.tie_word_embeddings !== true) add('lm_head.weight', [vocab, h]);
  return tensors;
}

const json = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value, null, 2));

// ---------------------------------------------------------------------------------------
// Tokenizers

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

/**
 * A Llama-2-style (SentencePiece BPE as converted by transformers) tokenizer.json with a
 * tiny vocabulary: <unk> <s> </s>, the characters of "hello world is a day", some merges,
 * then `specials` (added special tokens).
 */
export function tinySpmTokenizerJson(specials: readonly string[] = []): Record<string, unknown> {
  const chars = ['▁', 'a', 'd', 'e', 'h', 'i', 'l', 'o', 'r', 's', 'w', 'y'];
  const merges: Array<[string, string]> = [
    ['h', 'e'],
    ['l', 'l'],
    ['he', 'll'],
    ['hell', 'o'],
    ['▁', 'hello'],
    ['o', 'r'],
    ['w', 'or'],
    ['wor', 'l'],
    ['worl', 'd'],
    ['▁', 'world'],
  ];
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  let id = 3;
  for (const c of chars) vocab[c] = id++;
  for (const [a, b] of merges) vocab[a + b] = id++;
  const added = [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')];
  for (const s of specials) added.push(special(id++, s));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const out: string[] = new Array(256);
  bs.forEach((b, i) => {
    out[b] = String.fromCodePoint(cs[i]!);
  });
  return out;
}

/** Llama 3's pre-tokenizer split pattern. */
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export const LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];

/**
 * A Llama-3-style byte-level BPE tokenizer.json: the 256 byte tokens, a few merges, then
 * Llama 3's special tokens. Every string round-trips through it.
 */
export function tinyByteLevelTokenizerJson(): Record<string, unknown> {
  const b2u = bytesToUnicode();
  const vocab: Record<string, number> = {};
  let id = 0;
  for (let b = 0; b < 256; b++) vocab[b2u[b]!] = id++;
  const merges: Array<[string, string]> = [
    ['h', 'e'],
    ['l', 'l'],
    ['he', 'll'],
    ['hell', 'o'],
    ['Ġ', 'w'],
    ['o', 'r'],
    ['Ġw', 'or'],
    ['Ġwor', 'ld'],
    ['l', 'd'],
  ];
  for (const [a, b] of merges) vocab[a + b] ??= id++;
  const added = LLAMA3_SPECIALS.map((s) => special(id++, s));
  const bos = added[0]!;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: bos.content, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bos.content, type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bos.content, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bos.content]: { id: bos.content, ids: [bos.id], tokens: [bos.content] } },
        },
      ],
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

// ---------------------------------------------------------------------------------------
// Chat templates (verbatim from the models' tokenizer_config.json)

export const LLAMA3_CHAT_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/** Llama 3.1 / 3.3 Instruct's template (tools, date string, system-message extraction). */
export const LLAMA31_CHAT_TEMPLATE = [
  '{{- bos_token }}',
  '{%- if custom_tools is defined %}',
  '    {%- set tools = custom_tools %}',
  '{%- endif %}',
  '{%- if not tools_in_user_message is defined %}',
  '    {%- set tools_in_user_message = true %}',
  '{%- endif %}',
  '{%- if not date_string is defined %}',
  '    {%- set date_string = "26 Jul 2024" %}',
  '{%- endif %}',
  '{%- if not tools is defined %}',
  '    {%- set tools = none %}',
  '{%- endif %}',
  '',
  '{#- This block extracts the system message, so we can slot it into the right place. #}',
  "{%- if messages[0]['role'] == 'system' %}",
  "    {%- set system_message = messages[0]['content']|trim %}",
  '    {%- set messages = messages[1:] %}',
  '{%- else %}',
  '    {%- set system_message = "" %}',
  '{%- endif %}',
  '',
  '{#- System message + builtin tools #}',
  '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}',
  '{%- if builtin_tools is defined or tools is not none %}',
  '    {{- "Environment: ipython\\n" }}',
  '{%- endif %}',
  '{%- if builtin_tools is defined %}',
  '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}',
  '{%- endif %}',
  '{{- "Cutting Knowledge Date: December 2023\\n" }}',
  '{{- "Today Date: " + date_string + "\\n\\n" }}',
  '{%- if tools is not none and not tools_in_user_message %}',
  '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}',
  '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}',
  '    {{- "Do not use variables.\\n\\n" }}',
  '    {%- for t in tools %}',
  '        {{- t | tojson(indent=4) }}',
  '        {{- "\\n\\n" }}',
  '    {%- endfor %}',
  '{%- endif %}',
  '{{- system_message }}',
  '{{- "<|eot_id|>" }}',
  '',
  '{#- Custom tools are passed in a user message with some extra guidance #}',
  '{%- if tools_in_user_message and not tools is none %}',
  '    {#- Extract the first user message so we can plug it in here #}',
  '    {%- if messages | length != 0 %}',
  "        {%- set first_user_message = messages[0]['content']|trim %}",
  '        {%- set messages = messages[1:] %}',
  '    {%- else %}',
  '        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}',
  '{%- endif %}',
  "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}",
  '    {{- "Given the following functions, please respond with a JSON for a function call " }}',
  '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}',
  '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}',
  '    {{- "Do not use variables.\\n\\n" }}',
  '    {%- for t in tools %}',
  '        {{- t | tojson(indent=4) }}',
  '        {{- "\\n\\n" }}',
  '    {%- endfor %}',
  '    {{- first_user_message + "<|eot_id|>"}}',
  '{%- endif %}',
  '',
  '{%- for message in messages %}',
  "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}",
  "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}",
  "    {%- elif 'tool_calls' in message %}",
  '        {%- if not message.tool_calls|length == 1 %}',
  '            {{- raise_exception("This model only supports single tool-calls at once!") }}',
  '        {%- endif %}',
  '        {%- set tool_call = message.tool_calls[0].function %}',
  '        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}',
  "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}",
  '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}',
  '            {%- for arg_name, arg_val in tool_call.arguments | items %}',
  "                {{- arg_name + '=\"' + arg_val + '\"' }}",
  '                {%- if not loop.last %}',
  '                    {{- ", " }}',
  '                {%- endif %}',
  '                {%- endfor %}',
  '            {{- ")" }}',
  '        {%- else  %}',
  "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}",
  '            {{- \'{"name": "\' + tool_call.name + \'", \' }}',
  '            {{- \'"parameters": \' }}',
  '            {{- tool_call.arguments | tojson }}',
  '            {{- "}" }}',
  '        {%- endif %}',
  '        {%- if builtin_tools is defined %}',
  "            {#- This means we're in ipython mode #}",
  '            {{- "<|eom_id|>" }}',
  '        {%- else %}',
  '            {{- "<|eot_id|>" }}',
  '        {%- endif %}',
  '    {%- elif message.role == "tool" or message.role == "ipython" %}',
  '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}',
  '        {%- if message.content is mapping or message.content is iterable %}',
  '            {{- message.content | tojson }}',
  '        {%- else %}',
  '            {{- message.content }}',
  '        {%- endif %}',
  '        {{- "<|eot_id|>" }}',
  '    {%- endif %}',
  '{%- endfor %}',
  '{%- if add_generation_prompt %}',
  "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}",
  '{%- endif %}',
  '',
].join('\n');

export const CHATML_CHAT_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

export const MISTRAL_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

// ---------------------------------------------------------------------------------------
// Whole checkpoints

export interface TinyCheckpointOptions {
  readonly dtype?: StDtype;
  readonly seed?: number;
  /** Split the weights over this many shards with model.safetensors.index.json. */
  readonly shards?: number;
  readonly tokenizer?: boolean;
  readonly configOverrides?: Record<string, unknown>;
  /** Write lm_head.weight even when the config ties embeddings (default: only when untied). */
  readonly lmHead?: boolean;
}

/** The files of a tiny checkpoint directory, by name. */
export function tinyCheckpointFiles(type: TinyModelType, options: TinyCheckpointOptions = {}): Map<string, Uint8Array> {
  const config = tinyConfigJson(type, options.configOverrides);
  const tensors = tinyHfTensors(config, {
    ...(options.dtype === undefined ? {} : { dtype: options.dtype }),
    seed: options.seed ?? 1,
    ...(options.lmHead === undefined ? {} : { lmHead: options.lmHead }),
  });
  const files = new Map<string, Uint8Array>();
  files.set('config.json', json(config));
  const shards = options.shards ?? 1;
  if (shards <= 1) {
    files.set('model.safetensors', writeSafetensors(tensors, { format: 'pt' }));
  } else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(tensors.length / shards);
    let total = 0;
    for (let s = 0; s < shards; s++) {
      const name = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = tensors.slice(s * per, (s + 1) * per);
      for (const t of part) {
        weightMap[t.name] = name;
        total += t.data.length;
      }
      files.set(name, writeSafetensors(part, { format: 'pt' }));
    }
    files.set('model.safetensors.index.json', json({ metadata: { total_size: total }, weight_map: weightMap }));
  }
  if (options.tokenizer ?? true) {
    if (type === 'qwen2') {
      files.set('tokenizer.json', json(tinySpmTokenizerJson(['<|endoftext|>', '<|im_start|>', '<|im_end|>'])));
      files.set(
        'tokenizer_config.json',
        json({
          bos_token: null,
          eos_token: '<|im_end|>',
          pad_token: '<|endoftext|>',
          chat_template: CHATML_CHAT_TEMPLATE,
          clean_up_tokenization_spaces: false,
          model_max_length: 128,
          tokenizer_class: 'Qwen2Tokenizer',
        }),
      );
    } else {
      files.set('tokenizer.json', json(tinySpmTokenizerJson()));
      files.set(
        'tokenizer_config.json',
        json({
          add_bos_token: true,
          add_eos_token: false,
          bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
          eos_token: '</s>',
          unk_token: '<unk>',
          chat_template: MISTRAL_CHAT_TEMPLATE,
          clean_up_tokenization_spaces: false,
          legacy: false,
          tokenizer_class: 'LlamaTokenizer',
        }),
      );
    }
  }
  return files;
}
