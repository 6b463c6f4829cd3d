"""Prompts of exact length: seeded token ids, so every engine sees the same input lengths."""

from __future__ import annotations

import math
import random

# Llama numbers <unk>, <s>, </s>, <pad> 0..3; prompts avoid them (and any id below).
FIRST_ORDINARY_ID = 4


def make_prompts(count: int, length: int, vocab_size: int, seed: int, stream: str) -> list[list[int]]:
    """`count` prompts of exactly `length` ordinary token ids; distinct per (seed, stream).

    Distinct prompts keep a prefix cache from serving repeats.
    """
    if vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"vocab_size {vocab_size} leaves no ordinary token ids for prompts")
    rng = random.Random(f"{seed}/{stream}")
    return [[rng.randrange(FIRST_ORDINARY_ID, vocab_size) for _ in range(length)] for _ in range(count)]


def waves(requests: int, batch_size: int) -> int:
    """Full batches needed to send at least `requests` requests."""
    return math.ceil(requests / batch_size)
