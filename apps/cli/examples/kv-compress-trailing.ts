// A policy module for `kvc --import`: KV-Compress whose prefill metric is max-pooled over the
// 9 keys before each key (trailing), so the tokens right after an attended token are kept too.
// A model that reads a needle by induction attends to the token before the value and copies
// the value while decoding; the value's own tokens draw little prefill attention (EVAL.md).
//   pnpm kvc eval --import apps/cli/examples/kv-compress-trailing.ts --policies kv-compress,kv-compress-trailing ...
import type * as Eviction from '@kvcompress/eviction';

export default function register({ createKvCompressPolicy, registerPolicy }: typeof Eviction): void {
  registerPolicy({
    ...createKvCompressPolicy({ maxPoolKernel: 9, maxPoolAlign: 'trailing' }),
    name: 'kv-compress-trailing',
    description: 'KV-Compress with metrics max-pooled over the 9 keys before each key (trailing).',
  });
}
