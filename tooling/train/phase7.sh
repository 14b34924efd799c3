# Phase 7 on the GPU machine: the multi-key-turns mix, two variants side by side from the
# committed weights; both are scored on the evaluation's own examples (score_multikey.py), the
# better one's files come back. Run from the repo root with .gpu-train/shared holding a copy of
# ../shared/data and .gpu-train/ex the examples, written here by
#   node --conditions=source packages/eval/scripts/dump-multikey.ts models/kvc-20m-4k 2048 100 .gpu-train/ex/mk2048.json
#   node --conditions=source packages/eval/scripts/dump-multikey.ts models/kvc-20m-4k 4096 20 .gpu-train/ex/mk4096.json
set -o pipefail
export PYTHONUNBUFFERED=1 KVC_SHARED_DIR=$PWD/.gpu-train/shared
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/card.txt
for v in A B; do mkdir -p /tmp/m$v; cp models/kvc-20m-4k/tokenizer.json models/kvc-20m-4k/tokenizer_config.json /tmp/m$v/; done
COMMON="--init models/kvc-20m-4k --init-step 19923 --compile --minutes ${MINUTES:-6.3} --warmup 50 --synthetic-share 0.85 --eval-like-share 0.5 --workers 7 --lr 6e-4 --task-weights niah-multikey=0.25,niah-multikey-turns=0.3,passkey=0.03,niah-single=0.05,niah-multivalue=0.06,niah-multiquery=0.06"
python3 tooling/train/train.py all --out /tmp/mA --ckpt /tmp/ckptA.pt $COMMON > /tmp/phase7a.log 2>&1 &
python3 tooling/train/train.py all --out /tmp/mB --ckpt /tmp/ckptB.pt $COMMON --untie --kv-heads 4 > /tmp/phase7b.log 2>&1 &
wait
python3 tooling/train/score_multikey.py .gpu-train/ex/mk2048.json models/kvc-20m-4k /tmp/mA /tmp/mB --first 20 | tee /tmp/score2048.jsonl
python3 tooling/train/score_multikey.py .gpu-train/ex/mk4096.json models/kvc-20m-4k /tmp/mA /tmp/mB | tee /tmp/score4096.jsonl
python3 - <<'PY'
import json, os, shutil, tarfile
out = os.environ["OUT"]
s2 = {json.loads(l)["model"]: json.loads(l) for l in open("/tmp/score2048.jsonl")}
best = max(["/tmp/mA", "/tmp/mB"], key=lambda m: (s2[m]["score"], s2[m]["first20"]) if m in s2 else (-1, -1))
print("best", best)
with tarfile.open(f"{out}/phase7.tar.gz", "w:gz") as t:
    for f in ["/tmp/phase7a.log", "/tmp/phase7b.log", "/tmp/score2048.jsonl", "/tmp/score4096.jsonl"]:
        if os.path.exists(f): t.add(f, os.path.basename(f))
    for v in "AB":
        if os.path.exists(f"/tmp/m{v}/pytorch-eval.json"):
            t.add(f"/tmp/m{v}/pytorch-eval.json", f"pytorch-eval-phase7{v.lower()}.json")
    for f in os.listdir(best):
        if not f.endswith(".safetensors"):
            t.add(f"{best}/{f}", f"model/{f}")
open(f"{out}/best.txt", "w").write(best)
for f in os.listdir(best):
    if f.endswith(".safetensors"):
        shutil.copy(f"{best}/{f}", out)
PY
tail -n 3 /tmp/phase7a.log /tmp/phase7b.log
