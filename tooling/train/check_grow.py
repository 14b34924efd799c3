"""CPU check of train.py's growth from an exported model (load_init): untied, more kv-heads, more
layers, and combinations, each must give the logits of the model it grew from (max |diff| < 1e-4,
f32). Then one grown, untied model goes through export and back.

  /usr/bin/python3 tooling/train/check_grow.py [--model models/kvc-20m-4k] [--keep DIR]

--keep DIR leaves the exported grown model there (with the tokenizer and a reference.json of
its logits, the format of models/kvc-20m-4k/reference.json) for the TypeScript loader's check.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Llama  # noqa: E402
from train import export, exported_config, exported_model, load_init  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def grown(base_cfg, folder: str, **changes) -> tuple[Llama, dict]:
    torch.manual_seed(0)  # new weights are random, and must not matter
    model = Llama(dataclasses.replace(base_cfg, **changes))
    what = load_init(model, folder)
    return model.eval(), what


def f16_mib(model: Llama) -> float:
    return sum(t.numel() for t in model.hf_state_dict().values()) * 2 / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "models", "kvc-20m-4k"))
    p.add_argument("--keep", default=None)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    base = exported_model(a.model, torch.device("cpu"))
    cfg = base.cfg
    ids = torch.randint(0, cfg.vocab_size, (1, 128), generator=torch.Generator().manual_seed(1))
    want = base(ids)
    print(f"base: {cfg.num_hidden_layers} layers, {cfg.num_key_value_heads} kv-heads, tied {cfg.tie_word_embeddings}, "
          f"{sum(p.numel() for p in base.parameters()):,} params, {f16_mib(base):.2f} MiB f16")
    worst = 0.0
    variants = {
        "untied": dict(tie_word_embeddings=False),
        "kv-heads 4": dict(num_key_value_heads=4),
        "kv-heads 8": dict(num_key_value_heads=8),
        "untied + kv-heads 4": dict(tie_word_embeddings=False, num_key_value_heads=4),
        "untied + kv-heads 4 + 7 layers": dict(tie_word_embeddings=False, num_key_value_heads=4, num_hidden_layers=7),
    }
    for name, changes in variants.items():
        model, what = grown(cfg, a.model, **changes)
        diff = float((model(ids) - want).abs().max())
        worst = max(worst, diff)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:32s} max |logit diff| {diff:.2e}  {n:,} params, {f16_mib(model):.2f} MiB f16  grown {what}")
    if not cfg.tie_word_embeddings:
        raise SystemExit("the check expects a tied base model")
    u, _ = grown(cfg, a.model, tie_word_embeddings=False)
    assert u.lm_head.weight.data_ptr() != u.model.embed_tokens.weight.data_ptr(), "lm_head must be its own tensor"

    # Export (f16) and back: the grown weights are copies of f16 values, so nothing rounds.
    model, _ = grown(cfg, a.model, tie_word_embeddings=False, num_key_value_heads=4)
    out = a.keep or tempfile.mkdtemp(prefix="kvc-grown-")
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "ckpt.pt")
    torch.save({"model": model.state_dict(), "opt": None, "step": 0, "config": model.cfg.__dict__}, ckpt)
    export(SimpleNamespace(ckpt=ckpt, out=out))
    os.remove(ckpt)
    with open(os.path.join(out, "config.json")) as f:
        written = json.load(f)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        names = json.load(f)["weight_map"]
    assert written["num_key_value_heads"] == 4 and written["tie_word_embeddings"] is False, written
    assert "lm_head.weight" in names
    assert not exported_config(out).tie_word_embeddings
    back = exported_model(out, torch.device("cpu"))
    diff = float((back(ids) - want).abs().max())
    worst = max(worst, diff)
    print(f"exported (untied, kv-heads 4) and reloaded: max |logit diff| {diff:.2e}; config kv-heads "
          f"{written['num_key_value_heads']}, tie_word_embeddings {written['tie_word_embeddings']}, "
          f"{len(set(names.values()))} shards -> {out}")
    # An untied folder as --init: loads untied (same logits); into a tied model it is refused.
    again, what = grown(exported_config(out), out)
    diff = float((again(ids) - want).abs().max())
    worst = max(worst, diff)
    print(f"untied export as --init: max |logit diff| {diff:.2e}, grown {what}")
    try:
        grown(cfg, out, num_key_value_heads=4)
        raise AssertionError("a tied model must refuse an untied --init")
    except SystemExit as e:
        print(f"tied model from the untied export: refused ({e})")
    if a.keep:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(a.model, f), out)
        with open(os.path.join(a.model, "reference.json")) as f:
            ref = json.load(f)
        logits = back(torch.tensor([ref["ids"]]))[0]
        ref["logits"] = [logits[p].tolist() for p in ref["positions"]]
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(ref, f)
    else:
        shutil.rmtree(out)
    print(f"worst max |logit diff| {worst:.2e}: {'ok' if worst < 1e-4 else 'FAILED'}")
    if worst >= 1e-4:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
