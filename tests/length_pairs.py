"""Synthetic preference pairs where content and length can be told apart (the length tests).

The chosen reply holds a positive word, the rejected one a negative word, both padded with
filler to a chosen length: which side is longer is set per builder, so a test knows whether
length or content separates the pair.
"""

from __future__ import annotations

import random

from trainer.data import pair

GOOD = ["great", "wonderful", "excellent", "helpful", "kind", "clear", "correct", "lovely"]
BAD = ["awful", "terrible", "useless", "rude", "wrong", "confusing", "horrible", "broken"]
FILLER = ["so", "then", "well", "also", "as", "we", "said", "here", "and", "now", "it", "was"]


def reply(words: int, rng: random.Random, word: str) -> str:
    """``words`` filler words with ``word`` (the one that carries the preference) at a random place."""
    filler = [rng.choice(FILLER) for _ in range(words)]
    filler.insert(rng.randrange(len(filler) + 1), word)
    return " ".join(filler) + "."


def mixed_pairs(n: int, seed: int, prefix: str) -> list:
    """The chosen reply has a positive word; which side is longer is a coin flip (length-balanced data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long_, short_ = rng.randint(9, 14), rng.randint(1, 5)
        a, b = (long_, short_) if rng.random() < 0.5 else (short_, long_)
        out.append(pair(f"How was reply {rng.randint(0, 999)}?", reply(a, rng, rng.choice(GOOD)),
                        reply(b, rng, rng.choice(BAD)), id=f"{prefix}{i}"))
    return out


def unconfounded_pairs(n: int, seed: int, prefix: str) -> list:
    """The positive word on the *shorter* reply: only content can pick the chosen one."""
    rng = random.Random(seed)
    return [pair(f"How was reply {rng.randint(0, 999)}?", reply(rng.randint(1, 5), rng, rng.choice(GOOD)),
                 reply(rng.randint(9, 14), rng, rng.choice(BAD)), id=f"{prefix}{i}") for i in range(n)]


def skewed_pairs(n: int, seed: int, share_longer: float) -> list:
    """The chosen reply has the positive word; it is also the longer one in ``share_longer`` of pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long_, short_ = rng.randint(9, 14), rng.randint(1, 5)
        a, b = (long_, short_) if rng.random() < share_longer else (short_, long_)
        out.append(pair(f"How was reply {rng.randint(0, 999)}?", reply(a, rng, rng.choice(GOOD)),
                        reply(b, rng, rng.choice(BAD)), id=f"s{i}"))
    return out
