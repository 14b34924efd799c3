# Phase 8 on the GPU machine: a multi-key mix with look-alike keys (niah-multikey-hard), tied (A)
# and untied with 4 kv-heads (B), from the committed weights; both scored on the evaluation's
# own 100 examples at 2K and 20 at 4K. Logs and scores come back (no weights).
# Not yet run to the end: the eighth session's call was cut off by the device budget during
# training (it needs about 9 minutes held: start-up, two 5-minute runs side by side, scoring).
# Run it like phase7.sh: copy it to .gpu-train/, carry [".gpu-train"], model shards in the tree.
set -o pipefail
export PYTHONUNBUFFERED=1 KVC_SHARED_DIR=$PWD/.gpu-train/shared
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/card.txt
for v in A B; do mkdir -p /tmp/m$v; cp models/kvc-20m-4k/tokenizer.json models/kvc-20m-4k/tokenizer_config.json /tmp/m$v/; done
COMMON="--init models/kvc-20m-4k --init-step 19923 --compile --minutes ${MINUTES:-5.0} --warmup 50 --synthetic-share 0.85 --eval-like-share 0.5 --workers 7 --lr 6e-4 --task-weights niah-multikey-hard=0.3,niah-multikey=0.2,niah-multikey-turns=0.15,passkey=0.03,niah-single=0.05,niah-multivalue=0.06,niah-multiquery=0.06"
python3 tooling/train/train.py all --out /tmp/mA --ckpt /tmp/ckptA.pt $COMMON > /tmp/phase8a.log 2>&1 &
python3 tooling/train/train.py all --out /tmp/mB --ckpt /tmp/ckptB.pt $COMMON --untie --kv-heads 4 > /tmp/phase8b.log 2>&1 &
wait
python3 tooling/train/score_multikey.py .gpu-train/ex/mk2048.json models/kvc-20m-4k /tmp/mA /tmp/mB | tee /tmp/score2048.jsonl
python3 tooling/train/score_multikey.py .gpu-train/ex/mk4096.json models/kvc-20m-4k /tmp/mA /tmp/mB | tee /tmp/score4096.jsonl
for f in /tmp/phase8a.log /tmp/phase8b.log /tmp/score2048.jsonl /tmp/score4096.jsonl; do cp $f $OUT/; done
for v in A B; do [ -f /tmp/m$v/pytorch-eval.json ] && cp /tmp/m$v/pytorch-eval.json $OUT/pytorch-eval-phase8${v,,}.json; done
tail -n 4 /tmp/phase8a.log /tmp/phase8b.log
