"""The same model gives the same scores in every format (ONNX vs the torch reference).

Tolerances: ONNX fp32 max |diff| <= 1e-4; ONNX int8 is judged on rankings. The tiny
decoders have random weights, so their score gaps are small next to int8 noise:
they are held to 95% same-winner here, and the 98% gate of `arbiter verify` is for
trained models.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from exports.probes import probe_items
from exports.verify import verify

ARCHS = ["qwen3", "llama", "minilm"]


@pytest.fixture(scope="module")
def reference_scores(hf_models):
    items, _ = probe_items()
    out = {}
    for name, folder in hf_models.items():
        with engine.load(folder) as rm:
            assert rm.info.format == "torch"
            out[name] = np.array([s.value for s in rm.score(items)])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_fp32_equals_torch(arch, onnx_models, reference_scores):
    items, _ = probe_items()
    with engine.load(onnx_models[arch, "fp32"]) as rm:
        got = np.array([s.value for s in rm.score(items)])
        assert rm.info.format == "onnx" and rm.info.dtype == "fp32"
    want = reference_scores[arch]
    assert np.abs(got - want).max() <= 1e-4
    assert np.ptp(want) > 0.1  # the probes do produce different scores


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_onnx_int8_keeps_the_ranking(arch, onnx_models, hf_models):
    report = verify(onnx_models[arch, "int8"], hf_models[arch])
    assert report.dtype == "int8"
    assert report.pair_agreement >= 0.95, report.summary()
    assert report.max_abs_diff > 0  # it really is a different (quantized) graph


def test_int8_keeps_head_in_float_and_is_smaller(onnx_models):
    import json

    for arch in ARCHS:
        fp32, int8 = onnx_models[arch, "fp32"], onnx_models[arch, "int8"]
        meta = json.loads((int8 / "arbiter.json").read_text())
        assert meta["kept_float"], arch
        assert all(("score" in n) or ("classifier" in n) or ("pooler" in n) for n in meta["kept_float"])
        assert (int8 / "model.onnx").stat().st_size < 0.6 * (fp32 / "model.onnx").stat().st_size


def test_verify_fails_against_a_different_model(onnx_models, hf_models):
    report = verify(onnx_models["qwen3", "fp32"], hf_models["llama"])
    assert not report.passed and report.max_abs_diff > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_scores_do_not_depend_on_batch_size_or_padding_side(arch, fmt, onnx_models, hf_models):
    """The reward-bench bug: batch composition must not change a score.

    Allowed: float32 rounding (scores of ~10 carry ~1e-6 relative noise).
    """
    items, _ = probe_items()
    path = onnx_models[arch, "fp32"] if fmt == "onnx" else hf_models[arch]
    with engine.load(path) as rm:
        runs = {}
        for side in ("right", "left"):
            rm.padding_side = side
            for bs in (1, 7, 32):
                runs[side, bs] = np.array([s.value for s in rm.score(items, batch_size=bs)])
    base = runs["right", 1]
    for key, scores in runs.items():
        assert np.abs(scores - base).max() <= 5e-5, key


def test_a_cross_encoder_trained_on_zero_token_types_is_fed_zeros_in_onnx(model_dir, tmp_path):
    """The trainer's cross-encoders see all-zero segment ids; their ONNX export must say so, or
    the runtime feeds 1s to the response and the scores drift from torch's."""
    from engine.modelmeta import read_meta
    from exports.onnx import export_onnx
    from tests.models import minilm_reward_model

    src = minilm_reward_model(model_dir / "minilm-zeros-onnx-src", token_types="zeros")
    out = export_onnx(src, tmp_path / "onnx")
    assert read_meta(out)["token_types"] == "zeros"
    items, _ = probe_items()
    with engine.load(src) as ref, engine.load(out) as onnx:
        want = np.array([s.value for s in ref.score(items)])
        got = np.array([s.value for s in onnx.score(items)])
    assert np.abs(got - want).max() <= 1e-4
