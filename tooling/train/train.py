"""Trains kvcompress's default model: a byte-level BPE tokenizer and a small Llama GQA decoder.

Steps (each a subcommand; `all` runs them in order):
  tokenizer  byte-level BPE on the training texts -> OUT/tokenizer.json, tokenizer_config.json
  train      the model, resumable: checkpoints to --ckpt, stops cleanly after --minutes
  export     f16 safetensors (sharded <= 16 MiB, with an index) + config.json -> OUT
  evaluate   held-out perplexity (Alice) and retrieval accuracy at 2K/4K, greedy, in PyTorch;
             reference logits for the JS cross-check (OUT/reference.json)

See README.md beside this file for the recipe and the data.
"""

import argparse
import csv
import json
import math
import os
import random
import re
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus import HELD_OUT, read_text, split_sentences, training_documents  # noqa: E402
from episodes import TASKS, Episode, Source, make_episode, score_answer  # noqa: E402
from model import Llama, ModelConfig  # noqa: E402

BOS, EOS = "<|bos|>", "<|eos|>"
# Share of training sequences made of retrieval episodes (the rest is plain text). The texts
# are small (3.4M tokens): a larger plain-text share only memorises them (a first run at 0.5
# reached 0.04 nats/token on training text and perplexity 1e5 on held-out text).
SYNTHETIC_SHARE = 0.85
TASK_WEIGHTS = {
    "passkey": 0.08,
    "niah-single": 0.14,
    "niah-multikey": 0.2,
    "niah-multivalue": 0.15,
    "niah-multiquery": 0.15,
    "variable-tracking": 0.1,
    "kv-retrieval": 0.12,
    "common-words": 0.06,
}
# Answer tokens weigh more in the loss: they are the only tokens that test retrieval (about
# a third of the loss at this weight). A first run at 5 never learned retrieval.
ANSWER_WEIGHT = 20.0


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(out: str, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Digits one by one (as Llama 1/2): numbers copy digit for digit, which retrieval needs.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_documents(), trainer)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        # A plain transcript format; the model is a base model, not instruction-tuned.
        "chat_template": (
            "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}"
        ),
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {out}", flush=True)


def load_tokenizer(out: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(out, "tokenizer.json"))


# ---------------------------------------------------------------- data


class Corpus:
    """Token stream of the training texts plus the haystack source for episodes."""

    def __init__(self, tok, texts: list[str]):
        self.tok = tok
        self.bos = tok.token_to_id(BOS)
        self.eos = tok.token_to_id(EOS)
        stream: list[int] = []
        for enc in tok.encode_batch(texts):
            stream += [self.bos, *enc.ids, self.eos]
        self.stream = np.asarray(stream, dtype=np.int32)  # [n_tokens]
        sentences = [s for t in texts for s in split_sentences(t)]
        counts = [len(e.ids) for e in tok.encode_batch([" " + s for s in sentences])]
        words = sorted(set(re.findall(r"[a-z]{4,9}", " ".join(texts).lower())))
        self.source = Source(sentences, counts, lambda s: len(tok.encode(s).ids), words)

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s).ids

    def window(self, rng: random.Random, n: int) -> list[int]:
        start = rng.randint(0, len(self.stream) - n - 1)
        return self.stream[start : start + n].tolist()

    def episode_tokens(self, ep: Episode) -> tuple[list[int], list[int], list[float]]:
        """[BOS] prompt answer [EOS], encoded as the engine sees them (prompt and answer apart),
        and the prompt tokens' loss weights: ANSWER_WEIGHT inside the episode's answer spans
        (earlier answers of a multi-turn episode), 1 inside its task spans, else 0."""
        enc = self.tok.encode(ep.prompt)
        weights = [0.0]
        for a, b in enc.offsets:
            if any(a < e and b > s for s, e in ep.answer_spans):
                weights.append(ANSWER_WEIGHT)
            else:
                weights.append(1.0 if any(a < e and b > s for s, e in ep.spans) else 0.0)
        return [self.bos, *enc.ids], [*self.encode(ep.answer_text), self.eos], weights


def synthetic_sequence(corpus: Corpus, rng: random.Random, n: int, task_weights: dict[str, float],
                       eval_like_share: float = 0.0) -> tuple[list[int], list[float], list[int]]:
    """n tokens of packed retrieval episodes (lengths 256..n), topped up with plain text; with
    each token's task index in TASKS on answer tokens (-1 elsewhere), for the per-task loss log.
    `eval_like_share` of the episodes use the evaluation's exact sizes and keys."""
    toks: list[int] = []
    weights: list[float] = []
    tasks: list[int] = []
    names, probs = zip(*task_weights.items())
    while len(toks) < n:
        remaining = n - len(toks)
        r = rng.random()
        length = rng.randint(160, 1024) if r < 0.45 else rng.randint(1024, 2560) if r < 0.75 else rng.randint(2560, 4096)
        length = min(length, remaining)
        if length >= 160:
            ep = make_episode(rng.choices(names, probs)[0], rng, corpus.source, length, eval_like=rng.random() < eval_like_share)
            prompt, answer, prompt_weights = corpus.episode_tokens(ep)
            if len(prompt) + len(answer) <= remaining:
                toks += prompt + answer
                weights += prompt_weights + [ANSWER_WEIGHT] * len(answer)
                tasks += [-1] * len(prompt) + [TASKS.index(ep.task)] * len(answer)
                continue
        filler = corpus.window(rng, remaining)
        toks += filler
        weights += [1.0] * remaining
        tasks += [-1] * remaining
    return toks, weights, tasks


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, corpus: Corpus, seq_len: int, seed: int, synthetic_share: float, task_weights: dict[str, float],
                 eval_like_share: float = 0.0):
        self.corpus, self.seq_len, self.seed = corpus, seq_len, seed
        self.synthetic_share, self.task_weights, self.eval_like_share = synthetic_share, task_weights, eval_like_share

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        n = self.seq_len + 1
        while True:
            if rng.random() < self.synthetic_share:
                toks, w, tasks = synthetic_sequence(self.corpus, rng, n, self.task_weights, self.eval_like_share)
                kind = 1
            else:
                toks, w, tasks = self.corpus.window(rng, n), [1.0] * n, [-1] * n
                kind = 0
            yield torch.tensor(toks, dtype=torch.long), torch.tensor(w, dtype=torch.float32), kind, torch.tensor(tasks, dtype=torch.int8)


# ---------------------------------------------------------------- training


def lr_at(step: int, elapsed: float, a) -> float:
    """Linear warmup, then cosine to 10% over the run: by steps, or by wall time (`--steps 0`),
    so a run cut to a fixed device-time slot still anneals fully whatever its throughput.
    Steps count from --init-step, where a run from exported weights starts (until the ninth
    session they counted from 0, so such runs, phases 2-9, had no warmup)."""
    since = step - a.init_step
    if since < a.warmup:
        return a.lr * (since + 1) / a.warmup
    progress = min(1.0, elapsed / (a.minutes * 60) if a.steps == 0 else (since - a.warmup) / max(1, a.steps - a.warmup))
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(a) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(a.out)
    state = torch.load(a.ckpt, map_location=dev) if os.path.exists(a.ckpt) else None
    init = a.init if state is None and a.init and os.path.exists(a.init) else None
    # Untied stays untied: a checkpoint or an --init that has its own lm_head keeps it.
    untie = a.untie or (state is not None and not state["config"].get("tie_word_embeddings", True)) or (
        init is not None and not exported_config(init).tie_word_embeddings)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=a.dim, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=a.seq_len,
                      rope_theta=a.rope_theta, bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
                      tie_word_embeddings=not untie)
    torch.manual_seed(a.seed)
    model = Llama(cfg).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if dev.type == "cuda" else {}))
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    elif init is not None:
        grown = load_init(model, init)
        step = a.init_step
        print(f"initialised from {init} (weights only) at step {step}; grown: {grown}", flush=True)
    del state
    print(f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, config {cfg}", flush=True)

    corpus = Corpus(tok, training_documents())
    print(f"corpus: {len(corpus.stream)} tokens, {len(corpus.source.sentences)} sentences", flush=True)
    loader = torch.utils.data.DataLoader(Batches(corpus, a.seq_len, a.seed + step, a.synthetic_share, {**TASK_WEIGHTS, **a.task_weights}, a.eval_like_share), batch_size=a.batch, num_workers=a.workers,
                                         pin_memory=dev.type == "cuda", prefetch_factor=4 if a.workers else None,
                                         persistent_workers=a.workers > 0)
    fwd = torch.compile(model) if a.compile else model
    log_path = os.path.join(a.out, "loss.csv")
    new_log = not os.path.exists(log_path)
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "lr", "loss", "text_loss", "answer_loss", "tokens_per_s"])
    t0 = time.time()
    t_log, tokens = time.time(), 0
    acc = {"loss": 0.0, "text": 0.0, "text_n": 0, "ans": 0.0, "ans_n": 0, "n": 0}
    # Answer loss per task (sum, tokens): which retrieval task the model still gets wrong.
    task_ce, task_n = torch.zeros(len(TASKS), device=dev), torch.zeros(len(TASKS), device=dev)
    model.train()
    for seq, w, kind, task in loader:
        elapsed = time.time() - t0
        if (a.steps and step >= a.steps) or elapsed > a.minutes * 60:
            break
        seq, w = seq.to(dev, non_blocking=True), w.to(dev, non_blocking=True)
        x, y, wt = seq[:, :-1], seq[:, 1:], w[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed, a)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            try:
                logits = fwd(x)
            except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the run
                if fwd is model:
                    raise
                print(f"torch.compile failed ({type(e).__name__}: {e}); training eagerly", flush=True)
                fwd = model
                logits = fwd(x)
        ce = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1), reduction="none").view_as(wt)
        loss = (ce * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        with torch.no_grad():
            text_mask = (kind.to(dev) == 0)[:, None].expand_as(wt)
            ans_mask = wt > 1.5
            acc["loss"] += loss.item()
            acc["n"] += 1
            acc["text"] += ce[text_mask].sum().item()
            acc["text_n"] += int(text_mask.sum().item())
            acc["ans"] += ce[ans_mask].sum().item()
            acc["ans_n"] += int(ans_mask.sum().item())
            t = task.to(dev)[:, 1:].long()
            on = t >= 0
            task_ce.index_add_(0, t[on], ce[on])
            task_n.index_add_(0, t[on], torch.ones_like(ce[on]))
        if step % a.log_every == 0:
            dt = time.time() - t_log
            row = [step, f"{opt.param_groups[0]['lr']:.6f}", f"{acc['loss'] / acc['n']:.4f}",
                   f"{acc['text'] / max(1, acc['text_n']):.4f}", f"{acc['ans'] / max(1, acc['ans_n']):.4f}", f"{tokens / dt:.0f}"]
            writer.writerow(row)
            log.flush()
            print("step {} lr {} loss {} text {} answer {} tok/s {}".format(*row), flush=True)
            per_task = " ".join(f"{name} {float(c / n):.3f}" for name, c, n in zip(TASKS, task_ce, task_n) if n > 0)
            print(f"  answer loss by task: {per_task}", flush=True)
            t_log, tokens = time.time(), 0
            acc = {k: 0 for k in acc}
            task_ce.zero_()
            task_n.zero_()
    log.close()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": cfg.__dict__}, a.ckpt)
    print(f"saved step {step} -> {a.ckpt} after {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------- export


def write_safetensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format: u64 header length, JSON header, raw little-endian data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name, t in tensors.items():
        data = t.detach().to(torch.float16).contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F16"
        b, e = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:e], dtype=np.float16).copy()).reshape(info["shape"]).float()
    return out


def load_exported(folder: str) -> dict[str, torch.Tensor]:
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(read_safetensors(os.path.join(folder, shard)))
    return state


def exported_config(folder: str) -> ModelConfig:
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    return ModelConfig(**{k: c[k] for k in ModelConfig.__dataclass_fields__ if k in c})


def load_init(model: Llama, folder: str) -> dict:
    """Loads an exported model into `model`, grown where `model` is larger, with the same function:
    - untied from a tied folder: lm_head starts as a copy of the embedding;
    - more kv-heads (a multiple of the folder's): each kv-head's k/v rows are repeated in place
      (kv-head j <- old j // r), so query head h, which reads kv-head h // (heads / kv_heads),
      reads the same keys and values as before;
    - more layers: the new layers start as the identity (zero o_proj and down_proj), so the
      residual stream passes through them unchanged.
    Returns what was grown."""
    cfg = model.cfg
    state = load_exported(folder)
    grown: dict = {}
    if "lm_head.weight" in state and cfg.tie_word_embeddings:
        raise SystemExit(f"--init {folder} is untied; the model to train is tied")
    if "lm_head.weight" not in state and not cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        grown["lm_head"] = "copy of embed_tokens"
    hd, dim = cfg.head_dim, cfg.hidden_size
    for name in [k for k in state if k.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight"))]:
        old = state[name].shape[0] // hd
        if old == cfg.num_key_value_heads:
            continue
        if cfg.num_key_value_heads % old:
            raise SystemExit(f"--kv-heads {cfg.num_key_value_heads} is not a multiple of --init {folder}'s {old}")
        r = cfg.num_key_value_heads // old
        state[name] = state[name].view(old, hd, dim).repeat_interleave(r, dim=0).reshape(-1, dim)
        grown["kv_heads"] = f"{old} -> {cfg.num_key_value_heads}"
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise SystemExit(f"--init {folder} has weights the model lacks: {result.unexpected_keys[:5]}")
    missing = result.missing_keys
    layers = sorted({int(k.split(".")[2]) for k in missing if k.startswith("model.layers.")})
    unexpected = [k for k in missing if not k.startswith("model.layers.") or int(k.split(".")[2]) not in layers]
    if unexpected:
        raise SystemExit(f"--init {folder} lacks weights other than whole layers: {unexpected[:5]}")
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    if layers:
        grown["layers"] = layers
    return grown


def export(a) -> None:
    state = torch.load(a.ckpt, map_location="cpu")
    cfg = ModelConfig(**state["config"])
    model = Llama(cfg)
    model.load_state_dict(state["model"])
    tensors = model.hf_state_dict()
    limit = 16 * 1024 * 1024 - 64 * 1024  # 16 MiB a file, less room for the header
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * 2
        if size + nbytes > limit and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(a.out, fname), shard)
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * 2
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg.hf_config(), f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}, f, indent=2)
    print(f"exported step {state['step']}: {len(shards)} shards, {total / 2**20:.1f} MiB -> {a.out}", flush=True)


# ---------------------------------------------------------------- evaluation


def exported_model(out: str, dev: torch.device) -> Llama:
    model = Llama(exported_config(out))
    model.load_state_dict(load_exported(out), strict=False)
    return model.to(dev).eval()


@torch.no_grad()
def greedy(model: Llama, ids: list[int], max_new: int, eos: int, dev) -> list[int]:
    x = torch.tensor([ids], device=dev)
    out: list[int] = []
    for _ in range(max_new):
        if x.shape[1] >= model.cfg.max_position_embeddings:
            break
        nxt = int(model(x)[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=dev)], dim=1)
    return out


def evaluate(a) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(a.out)
    model = exported_model(a.out, dev)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    alice = read_text(HELD_OUT)
    results: dict = {}
    # Held-out perplexity: Alice in windows of the model's context.
    ids = tok.encode(alice).ids
    n = model.cfg.max_position_embeddings - 1
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, n):
            chunk = [bos, *ids[s : s + n]]
            x = torch.tensor([chunk], device=dev)
            logits = model(x)[0, :-1].float()
            nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(chunk) - 1
    results["heldout_perplexity_alice"] = math.exp(nll / count)
    results["heldout_tokens"] = count
    print(f"held-out perplexity (Alice, {count} tokens): {results['heldout_perplexity_alice']:.3f}", flush=True)

    sentences = split_sentences(alice)
    counts = [len(e.ids) for e in tok.encode_batch([" " + s for s in sentences])]
    words = sorted(set(re.findall(r"[a-z]{4,9}", " ".join(sentences).lower())))
    source = Source(sentences, counts, lambda s: len(tok.encode(s).ids), words)
    for context in a.eval_contexts:
        for task in a.eval_tasks:
            rng = random.Random(f"{task}:{context}:eval")
            scores = []
            for _ in range(a.eval_examples):
                ep = make_episode(task, rng, source, context, eval_like=True)
                prompt = [bos, *tok.encode(ep.prompt).ids]
                out = greedy(model, prompt, ep.max_new_tokens, eos, dev)
                scores.append(score_answer(tok.decode(out), ep.answers))
                if len(scores) <= 2:
                    results.setdefault("samples", []).append({"task": task, "context": context, "answers": ep.answers, "output": tok.decode(out)})
            results[f"{task}@{context}"] = sum(scores) / len(scores)
            print(f"{task} @ {context}: {100 * results[f'{task}@{context}']:.1f}% ({len(scores)} examples)", flush=True)
    with open(os.path.join(a.out, "pytorch-eval.json"), "w") as f:
        json.dump(results, f, indent=2)

    # Reference logits for the JS cross-check: a short text, f32 math on the f16 weights.
    text = "Once upon a time, a little fox found a key. The pass key is 40721. Remember it."
    ref_ids = [bos, *tok.encode(text).ids]
    with torch.no_grad():
        logits = model(torch.tensor([ref_ids], device=dev))[0].float().cpu()
    ref = {"text": text, "ids": ref_ids, "positions": [len(ref_ids) - 1, len(ref_ids) // 2],
           "logits": [logits[p].tolist() for p in (len(ref_ids) - 1, len(ref_ids) // 2)]}
    try:  # the same files through transformers, when installed: the format check
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(a.out, torch_dtype=torch.float32).to(dev).eval()
        with torch.no_grad():
            hf_logits = hf(torch.tensor([ref_ids], device=dev)).logits[0].float().cpu()
        ref["transformers_max_abs_diff"] = float((hf_logits - logits).abs().max())
        print(f"transformers vs ours: max |logit diff| {ref['transformers_max_abs_diff']:.2e}", flush=True)
    except ImportError:
        pass
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["tokenizer", "train", "export", "evaluate", "all"])
    p.add_argument("--out", required=True, help="model folder (tokenizer, weights, config, logs)")
    p.add_argument("--ckpt", default=None, help="training checkpoint (default OUT/../ckpt.pt)")
    p.add_argument("--init", default=None, help="exported folder to start from when no checkpoint exists")
    p.add_argument("--init-step", type=int, default=0)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2,
                   help="key-value heads; more than the --init model's (a multiple) grows it with the same function")
    p.add_argument("--untie", action="store_true",
                   help="own lm_head instead of the tied embedding (from a tied --init: a copy of the embedding)")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--steps", type=int, default=0, help="schedule length in steps (0: by --minutes of wall time)")
    p.add_argument("--minutes", type=float, default=8.0, help="stop and checkpoint after this long")
    p.add_argument("--workers", type=int, default=max(0, min(14, (os.cpu_count() or 2) - 2)))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--synthetic-share", type=float, default=SYNTHETIC_SHARE)
    p.add_argument("--eval-like-share", type=float, default=0.0,
                   help="share of episodes drawn with the evaluation's exact sizes and key words (4 needles, 7 digits)")
    p.add_argument("--task-weights", type=lambda s: {k: float(v) for k, v in (x.split("=") for x in s.split(","))}, default={},
                   help="override task mixture weights, e.g. niah-multikey=0.35,passkey=0.04")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-contexts", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096])
    p.add_argument("--eval-tasks", type=lambda s: s.split(","), default=TASKS[:5])
    p.add_argument("--eval-examples", type=int, default=20)
    a = p.parse_args()
    a.ckpt = a.ckpt or os.path.join(os.path.dirname(os.path.abspath(a.out)), "ckpt.pt")
    os.makedirs(a.out, exist_ok=True)
    if a.step in ("tokenizer", "all") and not os.path.exists(os.path.join(a.out, "tokenizer.json")):
        train_tokenizer(a.out, a.vocab)
    if a.step in ("train", "all"):
        train(a)
    if a.step in ("export", "all"):
        export(a)
    if a.step in ("evaluate", "all"):
        evaluate(a)


if __name__ == "__main__":
    main()
