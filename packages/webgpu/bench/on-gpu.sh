#!/usr/bin/env bash
# Runs on the GPU machine after `source .gpu/setup.sh` (which unpacks Node and Dawn): runs the
# benches, writing JSON lines to $OUT (or .gpu/out).
#   BENCHES="conformance attention sdpa matmul decode-8b decode-1b"   which to run (default all)
#   CONTEXT_8B=4096 CONTEXT_1B=16384 KV_MIB=3584    decode settings (see decode.gpu.ts)
set -uo pipefail
out=${OUT:-.gpu/out}
mkdir -p "$out" .gpu/node_modules
ln -sfn ../webgpu .gpu/node_modules/webgpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for b in ${BENCHES:-conformance attention sdpa matmul decode-8b decode-1b}; do
  echo "== $b"
  case $b in
    attention) timeout 240 "$GPU_NODE" .gpu/attention.mjs | tee "$out/attention.jsonl" ;;
    conformance) timeout 240 "$GPU_NODE" .gpu/conformance.mjs | tee "$out/conformance.jsonl" ;;
    matmul) timeout 240 "$GPU_NODE" .gpu/matmul.mjs | tee "$out/matmul.jsonl" ;;
    sdpa) timeout 120 python3 packages/webgpu/bench/sdpa.py | tee "$out/sdpa.jsonl" ;;
    decode-8b) c=${CONTEXT_8B:-4096}; SHAPE=8b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-8b-$c.jsonl" ;;
    decode-1b) c=${CONTEXT_1B:-16384}; SHAPE=1b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-1b-$c.jsonl" ;;
  esac
  echo "exit ${PIPESTATUS[0]}"
done
