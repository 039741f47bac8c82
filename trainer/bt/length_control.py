"""Length control: fit how much reward a model pays for length, and take it back at scoring time.

A small reward model trained on LLM-judged pairs learns features that go with length
(detail, structure, more of everything) faster than content. Length-balanced sampling,
synthetic longer-is-worse pairs, and the training-time terms of ``length_head.py`` and
``length_penalty.py`` either left that in place or stopped the model learning at all
(measured on the default model's data; see the model card). What works is the idea of
AlpacaEval's length-controlled win rate applied to the reward itself:

    controlled score = model output - beta * log(1 + response characters)

``beta`` is the least-squares slope of the within-pair reward difference on the
within-pair log-length difference, over the model's own *training* pairs (never a
benchmark). Within a pair the prompt is the same, so prompt effects cancel; in the
length-balanced training data length carries no label information, so whatever slope is
there is length the model pays for by itself. After the correction the training pairs'
reward differences are uncorrelated with their length differences.

Beta is stored in the model's ``arbiter.json`` (and carried into GGUF and ONNX exports);
every runtime applies it (``engine/scorer.py``), so all formats agree.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.modelmeta import read_meta, write_meta
from engine.types import Item
from trainer.data.record import PreferencePair


def fit_beta(r_chosen: Sequence[float], r_rejected: Sequence[float], chars_chosen: Sequence[int],
             chars_rejected: Sequence[int]) -> float:
    """Slope of (r_c - r_r) on (log1p c - log1p r) through least squares, NaN pairs left out."""
    dr = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    dl = np.log1p(np.asarray(chars_chosen, dtype=np.float64)) - np.log1p(np.asarray(chars_rejected, dtype=np.float64))
    ok = np.isfinite(dr)
    dr, dl = dr[ok], dl[ok]
    if len(dr) < 2 or float(np.var(dl)) == 0.0:
        return 0.0
    slope = float(np.mean((dr - dr.mean()) * (dl - dl.mean())) / np.var(dl))
    return float(np.float32(slope))  # what GGUF metadata can hold, so every format applies the same beta


def fit_length_correction(model_dir: Path, pairs: Sequence[PreferencePair], *, sample: int = 600, seed: int = 0,
                          threads: int | None = None) -> dict[str, Any]:
    """Score ``sample`` training pairs raw with the torch reference, fit beta, write it to arbiter.json."""
    from engine.backends.torch_ref import TorchScorer

    chosen = random.Random(seed).sample(list(pairs), min(sample, len(pairs)))
    rm = TorchScorer(Path(model_dir), threads=threads)
    rm.length_control = False  # fit on the raw outputs
    items = [Item(p.conversation, r) for p in chosen for r in (p.chosen, p.rejected)]
    s = [x.value for x in rm.score(items, on_too_long="skip")]
    beta = fit_beta(s[0::2], s[1::2], [len(p.chosen) for p in chosen], [len(p.rejected) for p in chosen])
    used = sum(1 for a, b in zip(s[0::2], s[1::2], strict=True) if math.isfinite(a) and math.isfinite(b))
    meta = read_meta(Path(model_dir))
    meta["length_correction"] = beta
    meta["length_correction_fit"] = {"pairs": used, "seed": seed, "on": "training pairs, within-pair slope"}
    write_meta(Path(model_dir), meta)
    return {"beta": beta, "pairs": used}
