"""The built-in default model as it ships: loads, scores as pinned, and agrees across formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.paths import builtin_dir
from engine.registry import RUNTIME_FILE, default_choice, default_model_path
from engine.types import Item
from exports.probes import probe_items

DEFAULT = default_model_path()
BUILTIN = builtin_dir() / "default"

if DEFAULT is None and os.environ.get("CI"):
    raise AssertionError("the built-in default model is missing from this checkout (make default-model)")
pytestmark = pytest.mark.skipif(DEFAULT is None, reason="this build ships no default model")

#: canonical scores (fastembed style) of the default's GGUF q8_0 copy, each item scored alone
PINNED = [
    ("What is the capital of France?", "The capital of France is Paris.", -0.2654),
    ("What is the capital of France?", "I don't know, maybe Berlin.", -0.4659),
    ("How do I make my code faster?", "Profile it first, then optimise the hot loop you find.", -0.7571),
    ("Write a haiku about rain.", "no", -0.3296),
]


def test_default_opens_the_fastest_measured_copy():
    """`--model default` is the copy the pipeline measured fastest (runtime.json), not a habit."""
    rec = json.loads((BUILTIN / RUNTIME_FILE).read_text())
    # the shipped record's own figures decide (no timing here): the copy with fewer seconds opens
    assert set(rec["seconds"]) == {"onnx", "gguf"}
    choice = default_choice()
    assert choice.format == min(rec["seconds"], key=rec["seconds"].__getitem__)
    assert choice.reason == rec["why"]
    with engine.load("default") as rm:
        assert rm.info.format == choice.format
    for fmt, dtype in (("gguf", "q8_0"), ("onnx", "int8")):
        with engine.load("default", format=fmt) as rm:
            info = rm.info
        assert info.format == fmt and info.dtype == dtype
        assert info.architecture == "BertForSequenceClassification" and info.chat_template is None
    with pytest.raises(engine.ModelError, match="no torch copy"):
        engine.load("default", format="torch")


def test_cli_format_option_and_models_info_say_which_copy_and_why():
    run = [sys.executable, "-m", "app.cli.main"]
    out = subprocess.run([*run, "models", "info", "default", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["format"] == info["default_choice"]["format"] and "RM-Bench" in info["default_choice"]["why"]
    out = subprocess.run([*run, "models", "info", "default"], capture_output=True, text=True, check=True)
    assert "runtime" in out.stdout and "because fastest measured" in out.stdout
    for fmt in ("gguf", "onnx"):
        out = subprocess.run([*run, "compare", "--model", "default", "--format", fmt, "--json",
                              "--prompt", "What is 2+2?", "4", "5"], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["format"] == fmt


def test_shipped_onnx_int8_is_static_and_batch_invariant():
    """The issue: the shipped dynamic int8 moved up to 0.032 between batch 1 and 32 (3 of 20
    pairs changed winner). Static scales: within 1e-4, like fp32."""
    meta = json.loads((BUILTIN / "onnx" / "arbiter.json").read_text())
    assert meta["dtype"] == "int8" and meta["activation_quant"] == "static"
    items, _ = probe_items()
    with engine.load(BUILTIN / "onnx") as rm:
        assert rm.share_prompt_by_default
        runs = [np.array([s.value for s in rm.score(items, batch_size=bs)]) for bs in (1, 7, 32)]
    assert max(np.abs(r - runs[0]).max() for r in runs) <= 1e-4


def test_card_states_the_verify_results_as_built():
    """The card's parity table is build.json's verify, gate result included (no silent failures)."""
    build = json.loads((BUILTIN / "build.json").read_text())
    card = (BUILTIN / "MODEL_CARD.md").read_text(encoding="utf-8")
    for name, v in build["verify"].items():
        row = f"| {name} | {v['max_abs_diff']:.3g} | {v['pair_agreement']:.1%} |"
        assert row in card, row
        assert f"{'PASS' if v['passed'] else 'FAIL'}" in card.split(row, 1)[1].split("\n", 1)[0], name


def test_pinned_scores():
    with engine.load("default", format="gguf") as rm:
        for prompt, response, want in PINNED:
            got = rm.score([Item.of(prompt, response)], batch_size=1)[0].value
            # llama.cpp's q8_0 kernels take other paths per CPU: an AVX2-only EPYC gave -0.3282 for
            # the haiku's -0.3296 (2026-12-02); the items differ from each other by 0.06 or more
            assert got == pytest.approx(want, abs=3e-3), (prompt, response)


#: the same items' scores from the ONNX int8 copy (2026-12-02, an AVX-512 VNNI Xeon). Every x86 CPU
#: computes the same int8 integers (engine/int8_weights.py reads the weights as uint8 where U8S8
#: would clip), so these hold to float rounding (1e-3: the float ops still take other paths per
#: CPU); an AVX2-only CPU that clipped scored the obvious cases 68.3% where this copy scores 58.5%
PINNED_ONNX = [-0.28041, -0.48160, -0.76563, -0.31394]


def test_pinned_onnx_int8_scores_hold_on_every_cpu():
    with engine.load("default", format="onnx") as rm:
        for (prompt, response, _), want in zip(PINNED, PINNED_ONNX, strict=True):
            got = rm.score([Item.of(prompt, response)], batch_size=1)[0].value
            assert got == pytest.approx(want, abs=1e-3), (prompt, response, rm.info.extra["int8_weights"])


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
    # The same model within quantization noise, which is large next to this model's small score
    # gaps: static ONNX int8 and GGUF q8_0 each agree with torch on 98.3% of pairs (MODEL_CARD.md).
    assert same >= 0.8 and np.abs(a - b).max() <= 0.1, (same, np.abs(a - b).max())


def test_shipped_files_fit_the_budget_and_have_a_card():
    size = sum(p.stat().st_size for p in BUILTIN.rglob("*") if p.is_file())
    assert size <= 60e6, f"{size / 1e6:.1f} MB"
    card = (BUILTIN / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "CC BY-NC 4.0" in card and "make default-model" in card and "random" in card


def test_card_says_which_recipe_built_the_shipped_weights():
    """The shipped build predates whole-prompt decontamination, and its card says so, naming the
    commit whose recipe rebuilds its data; a build by today's recipe is told apart."""
    from app.pipelines.default_model import _git_head, _reproduce_note

    build = json.loads((BUILTIN / "build.json").read_text())
    card = (BUILTIN / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert _reproduce_note(build) in card
    if "decontamination" not in build["data"]:
        assert "before it matched whole prompts" in _reproduce_note(build)
        assert "| rm-bench |" in card.split("Benchmark prompts seen in training", 1)[1]
    today = {**build, "data": {**build["data"], "decontamination": "13-grams, and whole prompts"}}
    assert _reproduce_note(today).startswith("These weights were built by that recipe")
    head = _git_head()
    assert head is None or len(head.split("+")[0]) == 40
