"""What a reader needs from a batch of rewards: accuracy, margin, reward scale, length bias.

The length-bias diagnostic splits accuracy by whether the chosen response is the
longer one (characters). A model that learned "longer wins" scores high on the
first and low on the second; an unbiased one scores about the same on both.
``accuracy_length_balanced`` is the mean of the two: on it, "longer wins" scores 0.5
whatever share of the set has the longer answer chosen, so selecting checkpoints on it
does not reward the bias (plain accuracy does, when most gold pairs are chosen-longer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.eval.diagnostics import pearson


def pair_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float],
                 chosen_longer: Sequence[bool | None], losses: Sequence[float] | None = None,
                 response_chars: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """``response_chars`` (chosen, rejected) adds ``reward_length_pearson``: the correlation of
    every reward with log(1 + its response's characters); near 0 when length does not drive it
    (NaN when the rewards do not vary)."""
    n = len(r_chosen)
    if n == 0:
        return {"pairs": 0}
    gaps = [c - r for c, r in zip(r_chosen, r_rejected, strict=True)]
    rewards = list(r_chosen) + list(r_rejected)
    mean = sum(rewards) / len(rewards)
    out: dict[str, Any] = {
        "pairs": n,
        "accuracy": sum(g > 0 for g in gaps) / n,
        "margin": sum(gaps) / n,  # mean r_chosen - r_rejected
        "reward_mean": mean,
        "reward_std": math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards)),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
        "chosen_mean": sum(r_chosen) / n,
        "rejected_mean": sum(r_rejected) / n,
    }
    if losses is not None:
        out["loss"] = sum(losses) / n
    for name, want in (("chosen_longer", True), ("chosen_shorter", False)):
        sel = [g for g, cl in zip(gaps, chosen_longer, strict=True) if cl is want]
        out[f"n_{name}"] = len(sel)
        out[f"accuracy_{name}"] = sum(g > 0 for g in sel) / len(sel) if sel else None
    split = (out["accuracy_chosen_longer"], out["accuracy_chosen_shorter"])
    out["accuracy_length_balanced"] = sum(split) / 2 if None not in split else out["accuracy"]
    if response_chars is not None:
        logs = np.log1p(np.asarray([*response_chars[0], *response_chars[1]], dtype=np.float64))
        out["reward_length_pearson"] = pearson(np.asarray(rewards, dtype=np.float64), logs)
    return out

