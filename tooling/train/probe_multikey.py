"""Which needle does the model read when it answers niah-multikey? (CPU, PyTorch.)

Reads examples written by packages/eval/scripts/dump-multikey.ts (prompt ids, the answer, and
each needle's token spans), then for each example:
  - scores every needle's value as the answer: log p(" " + value | prompt), teacher-forced; the
    model's pick is the best one. Reported: picked the asked needle, the one after it in the
    text, the one before, or another;
  - at the position that predicts the value's first digit, the attention mass of every head on
    each needle (its whole span), and which needle gets the most, per layer.

  /usr/bin/python3 tooling/train/probe_multikey.py MODEL_FOLDER EXAMPLES.json [--heads]
"""

import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from model import Attention, Llama  # noqa: E402
from train import exported_config, load_exported  # noqa: E402

captured: list[torch.Tensor] = []


def main() -> None:
    folder, path = sys.argv[1], sys.argv[2]
    show_heads = "--heads" in sys.argv
    cfg = exported_config(folder)
    model = Llama(cfg)
    state = load_exported(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(m.startswith("rope_") for m in missing), (missing, unexpected)
    model.eval()
    Attention.probs = captured
    examples = json.load(open(path))
    picks = {"asked": 0, "next": 0, "previous": 0, "other": 0}
    layer_reads = [{"asked": 0, "next": 0, "previous": 0, "other": 0} for _ in range(cfg.num_hidden_layers)]
    for ex in examples:
        ids, needles, asked = ex["ids"], ex["needles"], ex["asked"]
        space = ex["answerIds"][0]
        scores = []
        with torch.no_grad():
            for j, n in enumerate(needles):
                answer = [space] + [ex["digitIds"][int(d)] for d in n["value"]]
                if n["value"] == ex["answer"]:
                    assert answer == ex["answerIds"], (answer, ex["answerIds"])
                captured.clear()
                seq = torch.tensor([ids + answer])
                logp = model(seq)[0].float().log_softmax(-1)
                start = len(ids) - 1
                scores.append(sum(logp[start + i, tok].item() for i, tok in enumerate(answer)))
                if n["value"] == ex["answer"]:
                    # Attention at the position predicting the first digit (the space token's).
                    at = len(ids)
                    per_layer = []
                    for L, probs in enumerate(captured):
                        mass = [[probs[h, at, m["start"] : m["valueEnd"] + 1].sum().item() for m in needles] for h in range(probs.shape[0])]
                        per_layer.append(mass)
                    attn = per_layer
        pick = max(range(len(needles)), key=lambda j: scores[j])
        rel = "asked" if pick == asked else "next" if pick == asked + 1 else "previous" if pick == asked - 1 else "other"
        picks[rel] += 1
        for L, mass in enumerate(attn):
            total = [sum(h[j] for h in mass) for j in range(len(needles))]
            top = max(range(len(needles)), key=lambda j: total[j])
            r = "asked" if top == asked else "next" if top == asked + 1 else "previous" if top == asked - 1 else "other"
            layer_reads[L][r] += 1
        margin = scores[asked] - max(s for j, s in enumerate(scores) if j != asked)
        print(f"example {ex['index']}: asked needle {asked} of {len(needles)} ({needles[asked]['key']}), picked {pick} ({rel}), "
              f"log p asked {scores[asked]:.2f}, margin {margin:+.2f}")
        if show_heads:
            for L, mass in enumerate(attn):
                print(f"  layer {L}: " + " | ".join(" ".join(f"{x:.2f}" for x in h) for h in mass))
    print("picks:", picks)
    print("most-attended needle at the first digit, per layer:", layer_reads)


if __name__ == "__main__":
    main()
