// A policy module for `kvc --import`: KV-Compress with its metrics max-pooled along keys
// (kernel 7, an option of the paper's reference implementation). Pooling keeps the tokens
// next to the ones the observation window attended to, e.g. all the digits of a number
// whose first digit the question attends to.
//   pnpm kvc eval --import apps/cli/examples/kv-compress-maxpool.ts --policies kv-compress,kv-compress-maxpool ...
// The default export receives @kvcompress/eviction from the CLI (a module may also import
// the package and call registerPolicy at top level).
import type * as Eviction from '@kvcompress/eviction';

export default function register({ createKvCompressPolicy, registerPolicy }: typeof Eviction): void {
  registerPolicy({
    ...createKvCompressPolicy({ maxPoolKernel: 7 }),
    name: 'kv-compress-maxpool',
    description: 'KV-Compress with metrics max-pooled along keys (kernel 7).',
  });
}
