#!/usr/bin/env bash
# Builds the GPU attention bench and prints the device command.
#   bash packages/webgpu/bench/run-gpu.sh        (from the repo root, after pnpm install)
# Then, on the GPU machine (the `device` tool, carry [".gpu"]):
#   source .gpu/setup.sh && mkdir -p .gpu/node_modules && ln -sfn ../webgpu .gpu/node_modules/webgpu \
#     && "$GPU_NODE" .gpu/attention.mjs && python3 packages/webgpu/bench/sdpa.py
set -euo pipefail
[ -f .gpu/node.xz ] || bash ../shared/device/prepare.sh
packages/webgpu/node_modules/.bin/esbuild packages/webgpu/bench/attention.gpu.ts --bundle --platform=node --format=esm --target=es2023 \
  --conditions=source --external:webgpu --outfile=.gpu/attention.mjs --log-level=warning
ls -la .gpu/attention.mjs
