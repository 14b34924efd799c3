"""Scores models on the evaluation's own niah-multikey examples, greedy, in PyTorch (GPU or CPU).

The PyTorch evaluation in train.py draws its own examples; it disagreed with `kvc eval` by up to
15 points on 20. This reads the examples `kvc eval` uses, as token ids written by
packages/eval/scripts/dump-multikey.ts, decodes greedily (16 tokens, as the evaluation) and
counts an example right when the decoded digits contain the asked value, as the evaluation's
substring check does (the tokenizer gives every digit its own token, so the digits decoded are
the digits of the text).

  python3 tooling/train/score_multikey.py EXAMPLES.json MODEL_FOLDER [MODEL_FOLDER ...] [--first N]

One JSON line per model: right, of, score, firstN (the score of the first N examples), and
per_example (1 / 0 in example order).
"""

import argparse
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train import exported_model, greedy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="Scores models on dumped niah-multikey examples.")
    parser.add_argument("examples", help="examples written by packages/eval/scripts/dump-multikey.ts")
    parser.add_argument("models", nargs="+", help="exported model folders")
    parser.add_argument("--first", type=int, default=None, help="also report the score of the first N examples")
    a = parser.parse_args()
    path, folders, first = a.examples, a.models, a.first
    examples = json.load(open(path))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for folder in folders:
        model = exported_model(folder, dev)
        eos = json.load(open(f"{folder}/config.json")).get("eos_token_id", 1)
        right = []
        for ex in examples:
            digit_of = {tok: str(d) for d, tok in enumerate(ex["digitIds"])}
            out = greedy(model, ex["ids"], 16, eos, dev)
            # A non-digit token separates digit runs, so "12 34" never reads as "1234".
            text = "".join(digit_of.get(t, "|") for t in out)
            right.append(ex["answer"] in text)
        n = len(right)
        line = {"model": folder, "examples": path, "right": sum(right), "of": n, "score": sum(right) / n}
        if first is not None and n > first:
            line[f"first{first}"] = sum(right[:first]) / first
        line["per_example"] = "".join("1" if r else "0" for r in right)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
