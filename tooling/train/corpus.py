"""The training and held-out text: the public-domain files in ../shared/data, cleaned.

Held out entirely (never seen by the tokenizer or the model): Alice's Adventures in
Wonderland (pg11). It is the held-out perplexity text and the haystack of the retrieval
evaluation (`kvc eval --text .../pg11_alice_in_wonderland.txt`).
"""

import os
import re

HELD_OUT = "gutenberg/pg11_alice_in_wonderland.txt"

TRAIN_FILES = [
    "gutenberg/pg1342_pride_and_prejudice.txt",
    "gutenberg/pg2600_war_and_peace.txt",
    "gutenberg/pg2701_moby_dick.txt",
    "kjv-bible/kjv.txt",
    "tinyshakespeare/input.txt",
    "devils-dictionary/devils_dictionary.txt",
    "tinystories-valid/TinyStories-valid-first1000.txt",
]


def shared_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("KVC_SHARED_DIR", os.path.join(here, "..", "..", "..", "shared"))


def read_text(rel: str) -> str:
    with open(os.path.join(shared_dir(), "data", rel), encoding="utf-8-sig") as f:
        text = f.read().replace("\r\n", "\n")
    if rel.startswith("gutenberg/"):
        # Drop the Project Gutenberg licence header and footer: they repeat in every book.
        start = re.search(r"\*\*\* ?START OF.*?\*\*\*\n", text)
        end = re.search(r"\*\*\* ?END OF", text)
        text = text[start.end() if start else 0 : end.start() if end else len(text)]
    if rel.startswith("devils-dictionary/"):
        # dictfmt metadata lines come first.
        text = "\n".join(line for line in text.split("\n") if not line.startswith("00-database"))
    return text.strip()


def documents(rel: str) -> list[str]:
    """A file as training documents (TinyStories: one per story; others: the whole file)."""
    text = read_text(rel)
    if "<|endoftext|>" in text:
        return [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    return [text]


def training_documents() -> list[str]:
    return [d for rel in TRAIN_FILES for d in documents(rel)]


def split_sentences(text: str) -> list[str]:
    """Mirrors splitSentences of packages/eval/src/tasks.ts (haystack filler)."""
    text = re.sub(r"\s+", " ", text)
    parts = re.split(r"(?<=[.!?])\s+", text)
    return [s.strip() for s in parts if 20 <= len(s.strip()) <= 400]
