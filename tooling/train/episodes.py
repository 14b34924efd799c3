"""Synthetic long-context retrieval episodes, in the formats of packages/eval/src/tasks.ts.

Each episode is (prompt, answer text, answers to score). The prompts use the same
templates as the evaluation (a base model learns a task from its format), with values,
keys, depths and haystacks drawn independently: training draws from Python's `random`
over the training texts; the evaluation draws from its own seeded generator over held-out
text (Alice), so no evaluation example is ever seen in training.
"""

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

TASKS = [
    "passkey",
    "niah-single",
    "niah-multikey",
    "niah-multivalue",
    "niah-multiquery",
    "variable-tracking",
    "kv-retrieval",
    "common-words",
    # Training only (no evaluation task): many multi-key needles side by side, see make_episode.
    "niah-multikey-dense",
    # Training only: several keys of one haystack asked in turn, see make_episode.
    "niah-multikey-turns",
    # Training only: multi-key needles whose keys look alike, see make_episode.
    "niah-multikey-hard",
]

# The evaluation's keys (tasks.ts KEY_WORDS); training also draws other words as keys.
EVAL_KEY_WORDS = ["amber", "basalt", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "juniper", "kestrel", "lantern"]


@dataclass
class Episode:
    task: str
    prompt: str
    # What follows the prompt in training (the reference answer, then EOS).
    answer_text: str
    # Strings the evaluation looks for in the output.
    answers: list[str]
    max_new_tokens: int
    # Character spans of the prompt that carry the task (intro, needles, question): trained on.
    # The rest (haystack filler, JSON noise, word lists) is read but not a prediction target.
    spans: list[tuple[int, int]]
    # Character spans of the prompt weighted as answers (earlier answers of a multi-turn episode).
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Source:
    sentences: Sequence[str]
    # Tokens of " " + sentence, per sentence (precomputed: haystacks are built by budget).
    sentence_tokens: Sequence[int]
    count_tokens: Callable[[str], int]
    # Words (4-9 letters) of the source, for keys and common-words lists.
    words: Sequence[str]


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def letters(rng: random.Random, n: int) -> str:
    return "".join(chr(65 + rng.randint(0, 25)) for _ in range(n))


def hexs(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def join_list(xs: Sequence[str]) -> str:
    return ", ".join(xs)


def pick_keys(rng: random.Random, source: Source, n: int, eval_keys: bool) -> list[str]:
    pool = EVAL_KEY_WORDS if eval_keys else None
    if pool is None or len(pool) < n:
        keys: list[str] = []
        while len(keys) < n:
            w = rng.choice(source.words)
            if w not in keys:
                keys.append(w)
        return keys
    return rng.sample(pool, n)


def haystack(rng: random.Random, source: Source, context_tokens: int, intro: str, needles: list[str], question: str,
             max_new_tokens: int, ordered: bool = False, together: bool = False) -> str:
    fixed = source.count_tokens(f"{intro}\n{' '.join(needles)}\n{question}")
    budget = context_tokens - fixed - max_new_tokens - 8
    n = len(source.sentences)
    filler: list[str] = []
    used = 0
    i = rng.randint(0, n - 1)
    while True:
        cost = source.sentence_tokens[i]
        if used + cost > budget:
            break
        filler.append(source.sentences[i])
        used += cost
        i = (i + 1) % n
    depths = [rng.randint(0, len(filler)) for _ in needles]
    if together:  # all needles side by side at one depth, in order
        depths = [depths[0]] * len(needles)
    if ordered:
        depths.sort()
    order = sorted(range(len(needles)), key=lambda k: (-depths[k], -k))
    for k in order:
        filler.insert(depths[k], needles[k])
    return f"{intro}\n{' '.join(filler)}\n{question}"


def passkey_needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def task_spans(prompt: str, parts: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for p in parts:
        i = prompt.find(p)
        if i >= 0:
            spans.append((i, i + len(p)))
    return spans


def make_episode(task: str, rng: random.Random, source: Source, context_tokens: int, eval_like: bool = False) -> Episode:
    """One episode of about `context_tokens` tokens. `eval_like` uses the evaluation's exact sizes and keys."""
    needle = lambda k, v: f"One of the special magic numbers for {k} is: {v}."  # noqa: E731
    if task == "passkey":
        key = digits(rng, 5 if eval_like else rng.randint(4, 7))
        prompt = haystack(rng, source, context_tokens,
                          "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.",
                          [passkey_needle(key)],
                          "What is the pass key? The pass key is", 12)
        return Episode(task, prompt, f" {key}.", [key], 12, task_spans(prompt, [prompt.split("\n")[0], passkey_needle(key), prompt.split("\n")[-1]]))
    if task == "niah-multikey-dense":
        # A curriculum for binding a value to its key. With needles in one template, an
        # induction head at needle k+1's "for" predicts needle k's key; a model that tags
        # values with that prediction answers with the value of the needle AFTER the asked
        # one (the phase-2..4 models' commonest multi-key error). Needles side by side make
        # that shortcut wrong for every needle but the first.
        count = rng.randint(4, 12)
        keys = pick_keys(rng, source, count, rng.random() < 0.5)
        values = [digits(rng, 7 if eval_like else rng.randint(5, 8)) for _ in keys]
        asked = rng.randint(0, count - 1)
        intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
        k = keys[asked]
        needles = [needle(kk, v) for kk, v in zip(keys, values)]
        prompt = haystack(rng, source, min(context_tokens, 1024), intro, needles,
                          f"What is the special magic number for {k} mentioned in the provided text? The special magic number for {k} is", 16,
                          ordered=True, together=True)
        return Episode(task, prompt, f" {values[asked]}.", [values[asked]], 16, task_spans(prompt, [intro, *needles, prompt.split("\n")[-1]]))
    if task == "niah-multikey-turns":
        # The multi-key haystack, then several of its keys asked in turn, each question followed
        # by its answer: the same needles give different answers, so only the key tells them
        # apart (a probe of the phase-2 model found its value-reading heads not choosing the
        # needle by its key). At most count - 1 keys are asked, so the last answer is never
        # the one value left.
        count = 4 if eval_like else rng.randint(3, 6)
        keys = pick_keys(rng, source, count, eval_like or rng.random() < 0.5)
        values = [digits(rng, 7 if eval_like else rng.randint(5, 8)) for _ in keys]
        asked = rng.sample(range(count), rng.randint(2, count - 1))
        intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
        question = lambda k: f"What is the special magic number for {k} mentioned in the provided text? The special magic number for {k} is"  # noqa: E731
        needles = [needle(kk, v) for kk, v in zip(keys, values)]
        turns = [f"{question(keys[a])} {values[a]}." for a in asked[:-1]]
        last = question(keys[asked[-1]])
        # The haystack's budget leaves room for the earlier turns.
        extra = source.count_tokens(" ".join(turns)) + 4 * len(turns)
        body = haystack(rng, source, max(160, context_tokens - extra), intro, needles, turns[0], 16)
        prompt = "\n".join([body, *turns[1:], last])
        spans = task_spans(prompt, [intro, *needles, *turns, last])
        answer_spans = []
        for a, t in zip(asked[:-1], turns):
            at = prompt.find(t)
            v = f" {values[a]}."
            answer_spans.append((at + len(t) - len(v), at + len(t)))
        return Episode(task, prompt, f" {values[asked[-1]]}.", [values[asked[-1]]], 16, spans, answer_spans)
    if task == "niah-multikey-hard":
        # Keys that share their first or last letters with the asked one (amber / ember share
        # their last token; the worst-read evaluation keys, basalt, kestrel and lantern, start
        # with a one-letter token): telling them apart needs the whole key, not one token of it.
        count = rng.randint(3, 6)
        asked_key = pick_keys(rng, source, 1, rng.random() < 0.5)[0]
        pool = [w for w in list(source.words) + EVAL_KEY_WORDS
                if w != asked_key and (w[:2] == asked_key[:2] or w[-3:] == asked_key[-3:] or w[:1] == asked_key[:1])]
        keys = [asked_key]
        while len(keys) < count:
            w = rng.choice(pool) if pool and rng.random() < 0.8 else rng.choice(source.words)
            if w not in keys:
                keys.append(w)
        rng.shuffle(keys)
        values = [digits(rng, rng.randint(5, 8)) for _ in keys]
        asked = keys.index(asked_key)
        intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
        needles = [needle(kk, v) for kk, v in zip(keys, values)]
        prompt = haystack(rng, source, context_tokens, intro, needles,
                          f"What is the special magic number for {asked_key} mentioned in the provided text? The special magic number for {asked_key} is", 16)
        return Episode(task, prompt, f" {values[asked]}.", [values[asked]], 16, task_spans(prompt, [intro, *needles, prompt.split("\n")[-1]]))
    if task in ("niah-single", "niah-multikey"):
        count = 1 if task == "niah-single" else (4 if eval_like else rng.randint(2, 6))
        keys = pick_keys(rng, source, count, eval_like or rng.random() < 0.5)
        values = [digits(rng, 7 if eval_like else rng.randint(5, 8)) for _ in keys]
        asked = rng.randint(0, count - 1)
        intro = ("A special magic number is hidden within the following text. Make sure to memorize it." if count == 1 else
                 "Some special magic numbers are hidden within the following text. Make sure to memorize them.")
        k = keys[asked]
        prompt = haystack(rng, source, context_tokens, intro, [needle(kk, v) for kk, v in zip(keys, values)],
                          f"What is the special magic number for {k} mentioned in the provided text? The special magic number for {k} is", 16)
        return Episode(task, prompt, f" {values[asked]}.", [values[asked]], 16, task_spans(prompt, [intro, *(needle(kk, v) for kk, v in zip(keys, values)), prompt.split("\n")[-1]]))
    if task == "niah-multivalue":
        k = pick_keys(rng, source, 1, eval_like or rng.random() < 0.5)[0]
        values = [digits(rng, 7 if eval_like else rng.randint(5, 8)) for _ in range(4 if eval_like else rng.randint(2, 5))]
        intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
        needles = [needle(k, v) for v in values]
        # The needles land at random depths; the answer lists them in text order.
        prompt = haystack(rng, source, context_tokens, intro, needles,
                          f"What are all the special magic numbers for {k} mentioned in the provided text? The special magic numbers for {k} are", 48)
        in_order = sorted(values, key=lambda v: prompt.index(v))
        return Episode(task, prompt, f" {join_list(in_order)}.", values, 48, task_spans(prompt, [intro, *needles, prompt.split("\n")[-1]]))
    if task == "niah-multiquery":
        keys = pick_keys(rng, source, 4 if eval_like else rng.randint(2, 5), eval_like or rng.random() < 0.5)
        values = [digits(rng, 7 if eval_like else rng.randint(5, 8)) for _ in keys]
        intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
        names = ", ".join(keys)
        prompt = haystack(rng, source, context_tokens, intro, [needle(k, v) for k, v in zip(keys, values)],
                          f"What are the special magic numbers for {names} mentioned in the provided text? The special magic numbers for {names} are", 48)
        return Episode(task, prompt, f" {join_list(values)}.", values, 48, task_spans(prompt, [intro, *(needle(k, v) for k, v in zip(keys, values)), prompt.split("\n")[-1]]))
    if task == "variable-tracking":
        value = digits(rng, 5)
        names = [letters(rng, 5) for _ in range(5 if eval_like else rng.randint(2, 6))]
        needles = [f"VAR {n} = {value}." if i == 0 else f"VAR {n} = VAR {names[i - 1]}." for i, n in enumerate(names)]
        prompt = haystack(rng, source, context_tokens, "Memorize and track the chain of variable assignments hidden in the following text.",
                          needles,
                          f"Find all variables that are assigned the value {value} in the text above. Answer: the variables assigned the value {value} are",
                          40, ordered=True)
        return Episode(task, prompt, f" {join_list(names)}.", names, 40, task_spans(prompt, [prompt.split("\n")[0], *needles, prompt.split("\n")[-1]]))
    if task == "kv-retrieval":
        intro = 'Extract the value corresponding to the specified key in the JSON object below.\nJSON data:\n{'
        pairs: list[str] = []
        budget = context_tokens - 60
        used = source.count_tokens(intro)
        while True:
            pair = f'"{hexs(rng, 8)}-{hexs(rng, 4)}": "{hexs(rng, 8)}-{hexs(rng, 4)}"'
            cost = source.count_tokens(f"{pair}, ")
            if used + cost > budget and pairs:
                break
            pairs.append(pair)
            used += cost
        asked = rng.choice(pairs)
        key, value = (x[1:-1] for x in asked.split(": "))
        prompt = f'{intro}{", ".join(pairs)}}}\nKey: "{key}"\nThe value associated with the specified key is: "'
        return Episode(task, prompt, f'{value}"', [value], 24, [(0, len(intro)), (prompt.rindex("}"), len(prompt))])
    if task == "common-words":
        words = rng.sample(list(source.words), min(len(source.words), 4000))
        common = words[:10]
        head = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n"
        tail = "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:"
        budget = context_tokens - 60 - source.count_tokens(head + tail) - 4
        item_cost = source.count_tokens(f" 1000. {common[0]}")
        slots = max(40, budget // item_cost)
        repeats = max(3, slots // 40)
        rare = words[10 : 10 + max(0, slots - 10 * repeats)]
        items = list(rare) + [w for w in common for _ in range(repeats)]
        rng.shuffle(items)
        body = " ".join(f"{k + 1}. {w}" for k, w in enumerate(items))
        while source.count_tokens(body) > budget and len(items) > 10 * repeats:
            drop = max(1, (source.count_tokens(body) - budget) // item_cost + 1)
            keep_rare = [w for w in items if w not in common][: -drop]
            items = keep_rare + [w for w in common for _ in range(repeats)]
            rng.shuffle(items)
            body = " ".join(f"{k + 1}. {w}" for k, w in enumerate(items))
        prompt = f"{head}{body}{tail}"
        return Episode(task, prompt, f" {join_list(common)}.", common, 60, [(0, len(head)), (len(prompt) - len(tail), len(prompt))])
    raise ValueError(f"unknown task {task}")


def score_answer(output: str, answers: Sequence[str]) -> float:
    """Mirrors scoreAnswer of tasks.ts: fraction of answers found, case-insensitive."""
    lower = output.lower()
    return sum(1 for a in answers if a.lower() in lower) / len(answers) if answers else 0.0
