#!/usr/bin/env bash
# Runs on the GPU machine after `source .gpu/setup.sh` (which unpacks Node and Dawn): runs the
# benches, writing JSON lines to $OUT (or .gpu/out).
#   BENCHES="conformance attention sdpa matmul matmul-torch decode-8b decode-1b"   which to run (default these;
#   matmul-torch: PyTorch's f32 (no TF32) and f16 matmuls on matmul.gpu.ts's shapes;
#   decode-torch: the PyTorch decode step (decode.py: f16, dense cache, eager and CUDA graph) at
#   decode.gpu.ts's batches, 8B and 1B;
#   decode-8b-old / decode-1b-old: the same with the wide attention and without the blocked matmul;
#   also: round-8b, round-1b, selection, prefill, eval, server, engine, dawn-poll)
#   round-8b / round-1b: one compression round (device selection + compaction + moves) of SEQS
#   sequences of CONTEXT tokens (default 64 x 8192) of the Llama-3.1-8B / -3.2-1B cache, and a
#   decode step of the same batch when the weights fit beside the pool (selection.gpu.ts; also
#   RATE, REPEATS, STEP, HOST, VERIFY); selection: the same with SHAPE (default 8b) from the env
#   SEQS=64 CONTEXT=8192 LAYERS=32 KV_HEADS=8    round / selection shape (see selection.gpu.ts)
#   CONTEXT_8B=4096 CONTEXT_1B=16384 KV_MIB=3584    decode settings (see decode.gpu.ts)
#   server: the server throughput bench on the default model (SERVER_PROMPT, SERVER_REQUESTS)
#   eval: `kvc eval` of the default model on WebGPU (EVAL_CONTEXTS, EVAL_TASKS, EVAL_EXAMPLES,
#   EVAL_POLICIES); resumes from $out/eval/cells.jsonl, so a cut-off run continues
#   next call when its cells.jsonl is put at .gpu/eval/cells.jsonl
set -uo pipefail
out=${OUT:-.gpu/out}
mkdir -p "$out" .gpu/node_modules
ln -sfn ../webgpu .gpu/node_modules/webgpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for b in ${BENCHES:-conformance attention sdpa matmul matmul-torch decode-8b decode-1b}; do
  echo "== $b"
  case $b in
    attention) timeout "${ATTENTION_TIMEOUT:-240}" "$GPU_NODE" .gpu/attention.mjs | tee "$out/attention.jsonl" ;;
    conformance) timeout 240 "$GPU_NODE" .gpu/conformance.mjs | tee "$out/conformance.jsonl" ;;
    matmul) timeout 240 "$GPU_NODE" .gpu/matmul.mjs | tee "$out/matmul.jsonl" ;;
    sdpa) timeout 120 python3 packages/webgpu/bench/sdpa.py | tee "$out/sdpa.jsonl" ;;
    matmul-torch) timeout 120 python3 packages/webgpu/bench/matmul.py | tee "$out/matmul-torch.jsonl" ;;
    decode-torch) (cd packages/webgpu/bench && SHAPE=8b timeout 200 python3 decode.py && SHAPE=1b timeout 200 python3 decode.py) | tee "$out/decode-torch.jsonl" ;;
    decode-8b) c=${CONTEXT_8B:-4096}; SHAPE=8b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-8b-$c.jsonl" ;;
    eval) mkdir -p "$out/eval"; [ -f .gpu/eval/cells.jsonl ] && cp .gpu/eval/cells.jsonl "$out/eval/"
      KVC_SHARED_DIR=$PWD/.gpu/shared timeout "${EVAL_TIMEOUT:-540}" "$GPU_NODE" .gpu/kvc.mjs eval --backend webgpu \
      --import .gpu/kv-compress-maxpool.mjs \
      --model models/kvc-20m-4k --contexts "${EVAL_CONTEXTS:-2048,4096}" --rates 1,2,4,8,16,32,64 \
      --tasks "${EVAL_TASKS:-passkey,niah-single,niah-multikey,niah-multivalue,niah-multiquery}" \
      --policies "${EVAL_POLICIES:-kv-compress,kv-compress-maxpool,kv-compress-trailing,snapkv,pyramidkv,ada-kv,h2o,streaming-llm,random}" \
      --examples "${EVAL_EXAMPLES:-10}" --batch "${EVAL_BATCH:-10}" --out "$out/eval" ;;
    server) timeout "${SERVER_TIMEOUT:-300}" "$GPU_NODE" .gpu/server-throughput.mjs --backend webgpu --model models/kvc-20m-4k \
      --text .gpu/shared/data/gutenberg/pg11_alice_in_wonderland.txt --prompt-tokens "${SERVER_PROMPT:-1800}" --max-tokens "${SERVER_MAX_TOKENS:-64}" \
      --requests "${SERVER_REQUESTS:-128}" --concurrency 64 --max-sequences 64 --pool-sequences 4 --pool-context 4096 --pressure-headroom "${SERVER_HEADROOM:-1}" --json | tee "$out/server-throughput-h${SERVER_HEADROOM:-1}.jsonl" ;;
    selection) timeout 540 "$GPU_NODE" .gpu/selection.mjs | tee "$out/selection.jsonl" ;;
    round-8b) SHAPE=8b timeout 540 "$GPU_NODE" .gpu/selection.mjs | tee "$out/round-8b.jsonl" ;;
    round-1b) SHAPE=1b timeout 540 "$GPU_NODE" .gpu/selection.mjs | tee "$out/round-1b.jsonl" ;;
    round-kernels) timeout 300 "$GPU_NODE" .gpu/round-kernels.mjs | tee "$out/round-kernels.jsonl" ;;
    prefill) timeout 300 "$GPU_NODE" .gpu/prefill.mjs | tee "$out/prefill.jsonl" ;;
    decode-8b-old) c=${CONTEXT_8B:-4096}; ATTENTION=wide BLOCKED_MATMUL=0 SHAPE=8b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-8b-$c-old.jsonl" ;;
    decode-1b-old) c=${CONTEXT_1B:-16384}; ATTENTION=wide BLOCKED_MATMUL=0 SHAPE=1b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-1b-$c-old.jsonl" ;;
    decode-1b) c=${CONTEXT_1B:-16384}; SHAPE=1b CONTEXT=$c timeout 400 "$GPU_NODE" .gpu/decode.mjs | tee "$out/decode-1b-$c.jsonl" ;;
    engine) timeout 300 "$GPU_NODE" .gpu/engine.mjs | tee "$out/engine-decode.jsonl" ;;
    dawn-poll) timeout 200 "$GPU_NODE" .gpu/dawn-poll.mjs | tee "$out/dawn-poll.jsonl" ;;
  esac
  echo "exit ${PIPESTATUS[0]}"
done
