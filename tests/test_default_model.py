"""The built-in default model as it ships: loads, scores as pinned, and agrees across formats."""

from __future__ import annotations

import os

import numpy as np
import pytest

import engine
from engine.paths import builtin_dir
from engine.registry import default_model_path
from engine.types import Item
from exports.probes import probe_items

DEFAULT = default_model_path()
BUILTIN = builtin_dir() / "default"

if DEFAULT is None and os.environ.get("CI"):
    raise AssertionError("the built-in default model is missing from this checkout (make default-model)")
pytestmark = pytest.mark.skipif(DEFAULT is None, reason="this build ships no default model")

#: canonical scores (fastembed style) of the default (GGUF q8_0), each item scored alone
PINNED = [
    ("What is the capital of France?", "The capital of France is Paris.", -0.2654),
    ("What is the capital of France?", "I don't know, maybe Berlin.", -0.4659),
    ("How do I make my code faster?", "Profile it first, then optimise the hot loop you find.", -0.7571),
    ("Write a haiku about rain.", "no", -0.3296),
]


def test_default_is_the_gguf_q8_0_cross_encoder():
    with engine.load("default") as rm:
        info = rm.info
    assert info.format == "gguf" and info.dtype == "q8_0" and info.pooling == "rank"
    assert info.architecture == "BertForSequenceClassification" and info.chat_template is None


def test_pinned_scores():
    with engine.load("default") as rm:
        for prompt, response, want in PINNED:
            got = rm.score([Item.of(prompt, response)], batch_size=1)[0].value
            assert got == pytest.approx(want, abs=1e-3), (prompt, response)


def test_default_is_length_controlled_alike_in_both_files():
    """The shipped beta (trainer/bt/length_control.py) is in both files and subtracted from the output."""
    import math

    with engine.load(BUILTIN / "onnx") as onnx, engine.load(BUILTIN / "gguf" / "model-q8_0.gguf") as gguf:
        beta = gguf.info.length_correction
        assert 0.01 < beta < 1.0 and onnx.info.length_correction == pytest.approx(beta, rel=1e-6)
        item = Item.of(PINNED[0][0], PINNED[0][1])
        controlled = gguf.score([item])[0].value
        gguf.length_control = False
        assert gguf.score([item])[0].value - beta * math.log1p(len(item.response)) == pytest.approx(controlled)


def test_gguf_and_onnx_files_agree():
    items, pairs = probe_items()
    with engine.load(BUILTIN / "onnx") as onnx, engine.load(BUILTIN / "gguf" / "model-q8_0.gguf") as gguf:
        a = np.array([s.value for s in onnx.score(items, batch_size=1)])
        b = np.array([s.value for s in gguf.score(items)])
    same = np.mean([np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]) for i, j in pairs])
    # The same model within quantization noise. ONNX int8's noise (0.025) is large next to this
    # model's small score gaps: it agrees with torch on 95% of pairs (MODEL_CARD.md), GGUF on
    # 98%.
    assert same >= 0.8 and np.abs(a - b).max() <= 0.1, (same, np.abs(a - b).max())


def test_shipped_files_fit_the_budget_and_have_a_card():
    size = sum(p.stat().st_size for p in BUILTIN.rglob("*") if p.is_file())
    assert size <= 60e6, f"{size / 1e6:.1f} MB"
    card = (BUILTIN / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "CC BY-NC 4.0" in card and "make default-model" in card and "random" in card
