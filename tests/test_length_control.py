"""Length control (trainer/bt/length_control.py, engine/scorer.py): fitted once, applied by every format."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

import engine
from engine.modelmeta import read_meta, write_meta
from engine.types import Item
from exports.probes import probe_items
from trainer.bt.length_control import fit_beta, fit_length_correction


def test_fit_beta_hand_computed():
    # reward gap = 2 x log-length gap + 1: the slope is 2, the offset (content) is left alone
    chars_c, chars_r = [10, 300, 50, 7], [100, 20, 50, 90]
    dl = [math.log1p(c) - math.log1p(r) for c, r in zip(chars_c, chars_r, strict=True)]
    rc = [2 * d + 1 for d in dl]
    assert fit_beta(rc, [0.0] * 4, chars_c, chars_r) == pytest.approx(2.0, abs=1e-6)
    # a pair the model could not score (NaN) is left out; equal lengths everywhere: nothing to fit
    assert fit_beta([*rc, math.nan], [0.0] * 5, [*chars_c, 5], [*chars_r, 9]) == pytest.approx(2.0, abs=1e-6)
    assert fit_beta([1.0, 2.0], [0.0, 0.0], [5, 5], [5, 5]) == 0.0


@pytest.mark.slow
def test_correction_travels_to_every_format_and_every_path(hf_models, tmp_path):
    """Torch, ONNX (with its prompt-sharing model) and GGUF read the same beta and apply it to
    score, compare and rank alike; switching it off gives back the raw output."""
    from exports.gguf import export_gguf
    from exports.onnx import export_onnx

    src = tmp_path / "qwen3"
    shutil.copytree(hf_models["qwen3"], src)
    write_meta(src, {**read_meta(src), "length_correction": 0.5})
    models = {"torch": src, "onnx": export_onnx(src, tmp_path / "onnx"),
              "gguf": export_gguf(src, tmp_path / "gguf", quants=("f32",))[0]}
    items, _ = probe_items()
    items = items[:8]  # two conversations x 4 responses
    got = {}
    for fmt, path in models.items():
        with engine.load(path) as rm:
            assert rm.info.length_correction == pytest.approx(0.5)
            controlled = np.array([s.value for s in rm.score(items)])
            rm.length_control = False
            raw = np.array([s.value for s in rm.score(items)])
            rm.length_control = True
            lengths = np.array([math.log1p(len(it.response)) for it in items])
            assert np.allclose(controlled, raw - 0.5 * lengths, atol=1e-6), fmt
            ranked = rm.rank(items[0].conversation, [it.response for it in items[:4]])
            for c in ranked.candidates:  # the prompt-sharing path (GGUF, ONNX) is corrected too
                assert c.score.value == pytest.approx(controlled[c.index], abs=1e-3), (fmt, c.index)
            cmp = rm.compare(items[0].conversation, items[0].response, items[1].response)
            assert cmp.margin == pytest.approx(controlled[0] - controlled[1], abs=1e-3), fmt
        got[fmt] = controlled
    assert np.abs(got["onnx"] - got["torch"]).max() < 1e-3
    assert np.abs(got["gguf"] - got["torch"]).max() < 1e-3


@pytest.mark.slow
def test_fitted_beta_leaves_no_length_slope_on_its_pairs(hf_models, tmp_path):
    """After the fit, the engine's corrected scores have no within-pair length slope on the
    same pairs: the fitter and the runtime agree on units and sign."""
    from tests.test_trainer_bt import sentiment_pairs

    src = tmp_path / "minilm"
    shutil.copytree(hf_models["minilm"], src)
    pairs = sentiment_pairs(40, 3, "l")
    fit = fit_length_correction(src, pairs, sample=40)
    assert fit["pairs"] == 40 and math.isfinite(fit["beta"])
    assert read_meta(src)["length_correction"] == fit["beta"]
    with engine.load(src) as rm:
        s = [x.value for x in rm.score([Item(p.conversation, r) for p in pairs for r in (p.chosen, p.rejected)])]
    residual = fit_beta(s[0::2], s[1::2], [len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])
    assert abs(residual) < 1e-4 * max(1.0, abs(fit["beta"])), (fit["beta"], residual)
