#!/usr/bin/env bash
# Builds the GPU benches (attention sweep, end-to-end decode) into .gpu/ and prints how to run them.
#   bash packages/webgpu/bench/run-gpu.sh        (from the repo root, after pnpm install)
# On the GPU machine (the `device` tool, carry [".gpu"]), from the repo root:
#   source .gpu/setup.sh && bash packages/webgpu/bench/on-gpu.sh
set -euo pipefail
[ -f .gpu/node.xz ] || bash ../shared/device/prepare.sh
for bench in attention decode matmul conformance; do
  packages/webgpu/node_modules/.bin/esbuild "packages/webgpu/bench/$bench.gpu.ts" --bundle --platform=node --format=esm \
    --target=es2023 --conditions=source --external:webgpu --outfile=".gpu/$bench.mjs" --log-level=warning
done
ls -la .gpu/*.mjs
