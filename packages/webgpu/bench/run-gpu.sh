#!/usr/bin/env bash
# Builds the GPU benches (attention sweep, end-to-end decode, compression round / eviction selection, tiled prefill, the engine's decode loop) and the kvc CLI into .gpu/.
#   bash packages/webgpu/bench/run-gpu.sh        (from the repo root, after pnpm install)
# On the GPU machine (the `device` tool, carry [".gpu"]), from the repo root:
#   source .gpu/setup.sh && bash packages/webgpu/bench/on-gpu.sh
set -euo pipefail
[ -f .gpu/node.xz ] || bash ../shared/device/prepare.sh
for bench in attention decode matmul conformance selection prefill round-kernels dawn-poll; do
  packages/webgpu/node_modules/.bin/esbuild "packages/webgpu/bench/$bench.gpu.ts" --bundle --platform=node --format=esm \
    --target=es2023 --conditions=source --external:webgpu --outfile=".gpu/$bench.mjs" --log-level=warning
done
# The engine's decode loop (its CommonJS dependencies need `require`).
packages/webgpu/node_modules/.bin/esbuild packages/webgpu/bench/engine.gpu.ts --bundle --platform=node --format=esm --target=es2023 \
  --conditions=source --external:webgpu --outfile=.gpu/engine.mjs --log-level=warning \
  "--banner:js=import { createRequire as __kvcRequire } from 'node:module'; const require = __kvcRequire(import.meta.url);"
# The kvc CLI, for `kvc eval --backend webgpu` on the GPU (its CommonJS dependencies need `require`).
packages/webgpu/node_modules/.bin/esbuild apps/cli/src/main.ts --bundle --platform=node --format=esm --target=es2023 \
  --conditions=source --external:webgpu --outfile=.gpu/kvc.mjs --log-level=warning \
  "--banner:js=import { createRequire as __kvcRequire } from 'node:module'; const require = __kvcRequire(import.meta.url);"
# The server throughput bench (HTTP API over the engine), for `--backend webgpu` on the GPU.
packages/webgpu/node_modules/.bin/esbuild apps/server/bench/throughput.bench.ts --bundle --platform=node --format=esm \
  --target=es2023 --conditions=source --external:webgpu --outfile=.gpu/server-throughput.mjs --log-level=warning \
  "--banner:js=import { createRequire as __kvcRequire } from 'node:module'; const require = __kvcRequire(import.meta.url);"
# Policy modules for `kvc --import` (the GPU machine's Node may not strip TypeScript types).
for m in kv-compress-maxpool; do
  packages/webgpu/node_modules/.bin/esbuild "apps/cli/examples/$m.ts" --format=esm --outfile=".gpu/$m.mjs" --log-level=warning
done
# The eval's held-out text (Alice, never trained on by the default model) travels in .gpu too.
mkdir -p .gpu/shared/data/gutenberg
cp "${KVC_SHARED_DIR:-../shared}/data/gutenberg/pg11_alice_in_wonderland.txt" .gpu/shared/data/gutenberg/
ls -la .gpu/*.mjs
