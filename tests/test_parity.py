"""The same model gives the same scores in every format (ONNX vs the torch reference).

Tolerances: ONNX fp32 max |diff| <= 1e-4; ONNX int8 is judged on rankings. The tiny
decoders have random weights, so their score gaps are small next to int8 noise:
they are held to 95% same-winner here, and the 98% gate of `arbiter verify` is for
trained models. int8 activations are quantized statically (fixed scales), so an int8
score, like an fp32 one, does not depend on the batch or the padding (1e-4).
"""

from __future__ import annotations

import json
import re

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
    for arch in ARCHS:
        fp32, int8 = onnx_models[arch, "fp32"], onnx_models[arch, "int8"]
        meta = json.loads((int8 / "arbiter.json").read_text())
        assert meta["kept_float"], arch
        assert all(("score" in n) or ("classifier" in n) or ("pooler" in n) for n in meta["kept_float"])
        assert (int8 / "model.onnx").stat().st_size < 0.6 * (fp32 / "model.onnx").stat().st_size


def test_verify_fails_against_a_different_model(onnx_models, hf_models):
    report = verify(onnx_models["qwen3", "fp32"], hf_models["llama"])
    assert not report.passed and report.max_abs_diff > 1e-2


def _batch_runs(path) -> dict[tuple[str, int], np.ndarray]:
    """Probe scores at batch sizes 1, 7 and 32, right and left padded."""
    items, _ = probe_items()
    with engine.load(path) as rm:
        runs = {}
        for side in ("right", "left"):
            rm.padding_side = side
            for bs in (1, 7, 32):
                runs[side, bs] = np.array([s.value for s in rm.score(items, batch_size=bs)])
    return runs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fmt", "tol"), [("onnx", 5e-5), ("onnx-int8", 1e-4), ("torch", 5e-5)])
def test_scores_do_not_depend_on_batch_size_or_padding_side(arch, fmt, tol, onnx_models, hf_models):
    """The reward-bench bug: batch composition must not change a score.

    Allowed: float32 rounding (scores of ~10 carry ~1e-6 relative noise).
    """
    path = {"onnx": onnx_models.get((arch, "fp32")), "onnx-int8": onnx_models.get((arch, "int8")),
            "torch": hf_models[arch]}[fmt]
    runs = _batch_runs(path)
    base = runs["right", 1]
    for key, scores in runs.items():
        assert np.abs(scores - base).max() <= tol, key


def test_int8_activations_are_static_and_recorded(onnx_models):
    for arch in ARCHS:
        meta = json.loads((onnx_models[arch, "int8"] / "arbiter.json").read_text())
        assert meta["activation_quant"] == "static" and meta["calibration_items"] >= 40, arch
        fp32 = json.loads((onnx_models[arch, "fp32"] / "arbiter.json").read_text())
        assert "activation_quant" not in fp32


def test_dynamic_int8_scores_move_with_the_batch(hf_models, tmp_path):
    """Why int8 is static: onnxruntime's dynamic int8 takes one scale per tensor over the whole
    batch, padding included, so the invariance test above fails for it (the shipped default's
    int8 file did: max |d| 0.032 between batch 1 and 32)."""
    from exports.onnx import export_onnx

    out = export_onnx(hf_models["minilm"], tmp_path / "dynamic", quant="int8", activations="dynamic")
    assert json.loads((out / "arbiter.json").read_text())["activation_quant"] == "dynamic"
    runs = _batch_runs(out)
    assert max(np.abs(s - runs["right", 1]).max() for s in runs.values()) > 1e-3


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


def test_onnx_export_keeps_the_trained_max_length(model_dir, tmp_path):
    """A model trained at 64 tokens is cut at 64 by torch; its ONNX export must cut there too,
    not at the config's 512 positions, or ONNX scores inputs the model never saw."""
    from engine.errors import InputTooLongError
    from engine.modelmeta import read_meta
    from engine.types import Item
    from exports.onnx import export_onnx
    from tests.models import minilm_reward_model

    src = minilm_reward_model(tmp_path / "src", token_types="zeros")
    meta = json.loads((src / "arbiter.json").read_text())
    (src / "arbiter.json").write_text(json.dumps({**meta, "max_length": 64}))
    out = export_onnx(src, tmp_path / "onnx")
    assert read_meta(out)["max_length"] == 64
    short, long = Item.of("Boiling point of water?", "100 °C."), Item.of("Tell me a story.", "Once upon a time " * 30)
    with engine.load(src) as ref, engine.load(out) as onnx:
        assert ref.info.max_length == onnx.info.max_length == 64
        for rm in (ref, onnx):
            with pytest.raises(InputTooLongError):
                rm.score([long])
        assert abs(ref.score([short])[0].value - onnx.score([short])[0].value) <= 1e-4
    # reading further is a choice the caller makes (the curation experiment scores at 512), up to
    # the positions and no further
    wide = export_onnx(src, tmp_path / "wide", max_length=256)
    with engine.load(wide) as onnx:
        assert onnx.info.max_length == 256 and onnx.score([long], on_too_long="error")[0].skipped is None
    from engine.errors import ModelError

    with pytest.raises(ModelError, match="max_length 1024"):
        export_onnx(src, tmp_path / "too-wide", max_length=1024)


def _activation_scales(model_file) -> dict[str, float]:
    """Each quantized activation tensor's scale (QuantizeLinear input name -> scale)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_file)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def test_percentile_calibration_narrows_the_activation_ranges_and_is_recorded(onnx_models, tmp_path):
    from exports.onnx import Int8Settings, int8_from_fp32

    fp32, minmax = onnx_models["minilm", "fp32"], onnx_models["minilm", "int8"]
    out = int8_from_fp32(fp32, tmp_path / "pct", prefix=False,
                         int8=Int8Settings(method="percentile", percentile=99.9))
    meta = json.loads((out / "arbiter.json").read_text())
    assert meta["int8"] == {"method": "percentile", "percentile": 99.9, "keep_float": [], "smooth": 0.0,
                            "smooth_skip": []}
    assert json.loads((minmax / "arbiter.json").read_text())["int8"]["method"] == "minmax"
    wide, narrow = _activation_scales(minmax / "model.onnx"), _activation_scales(out / "model.onnx")
    assert wide.keys() == narrow.keys() and len(wide) >= 6 * 4  # every layer's matmul inputs
    # a clipped range is never wider than the full one, and the outliers make most narrower
    assert all(narrow[k] <= wide[k] * (1 + 1e-6) for k in wide)
    assert sum(narrow[k] < 0.9 * wide[k] for k in wide) >= len(wide) // 2
    runs = _batch_runs(out)  # still static: no score moves with its batch
    assert max(np.abs(s - runs["right", 1]).max() for s in runs.values()) <= 1e-4


def test_keep_float_patterns_leave_those_matmuls_unquantized(onnx_models, tmp_path):
    import onnx

    from exports.onnx import Int8Settings, int8_from_fp32

    out = int8_from_fp32(onnx_models["minilm", "fp32"], tmp_path / "ffn", prefix=False,
                         int8=Int8Settings(keep_float=(r"/intermediate/dense/",)))
    kept = json.loads((out / "arbiter.json").read_text())["kept_float"]
    ffn = [n for n in kept if "/intermediate/dense/" in n]
    assert len(ffn) == 6 and len(kept) == len(ffn) + 2  # six layers, beside pooler and classifier
    graph = onnx.load(str(out / "model.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name: set(n.input) for n in graph.node}
    assert all(not (fed[name] & dequantized) for name in ffn)  # float weights, float inputs
    others = [n.name for n in graph.node if n.op_type == "MatMul" and "/dense/" in n.name and n.name not in kept]
    assert others and all(fed[name] & dequantized for name in others)


@pytest.mark.parametrize("settings, message", [
    ({"method": "entropy"}, "unknown int8 calibration"),
    ({"method": "percentile", "percentile": 30.0}, "outside (50, 100]"),
    ({"keep_float": ("(",)}, "not a regular expression"),
    ({"smooth": 1.0}, "outside [0, 1)"),
])
def test_bad_int8_settings_say_what_is_wrong(settings, message):
    from engine.errors import ModelError
    from exports.onnx import Int8Settings

    with pytest.raises(ModelError, match=re.escape(message)):
        Int8Settings(**settings)



def test_verify_says_how_wide_the_flipped_pairs_were(onnx_models, hf_models):
    """A pair can only flip where the reference's margin is within twice the largest score error,
    and P(A better) moves by at most a quarter of the margin's error (the sigmoid's slope)."""
    report = verify(onnx_models["minilm", "int8"], hf_models["minilm"])
    assert report.flipped_pairs == round((1 - report.pair_agreement) * report.n_pairs) > 0, report.summary()
    assert 0 < report.largest_flipped_margin <= 2 * report.max_abs_diff
    assert 0 < report.max_p_shift <= report.max_abs_diff / 2
    assert f"{report.flipped_pairs} flipped" in report.summary()
    exact = verify(onnx_models["minilm", "fp32"], hf_models["minilm"])
    assert exact.flipped_pairs == 0 and exact.largest_flipped_margin is None and "flipped" not in exact.summary()


def test_smoothing_keeps_the_fp32_scores_and_meets_the_weights_halfway(onnx_models, hf_models, tmp_path):
    import shutil

    import onnx

    from exports.onnx import HEAD_NODES, _classifier_feeds, calibration_items
    from exports.smoothquant import _input_channel_max, smooth_model

    fp32 = onnx_models["minilm", "fp32"]
    folder = tmp_path / "smoothed"
    shutil.copytree(fp32, folder)
    feeds = _classifier_feeds(fp32, calibration_items())
    head = [n.name for n in onnx.load(str(fp32 / "model.onnx")).graph.node if any(f in n.name for f in HEAD_NODES)]
    assert smooth_model(fp32 / "model.onnx", folder / "model.onnx", feeds, 0.5, skip=head) == 6 * 4
    items, _ = probe_items()
    with engine.load(fp32) as a, engine.load(folder) as b:  # X/s @ (s W) == X @ W
        assert np.abs(np.array([s.value for s in a.score(items)])
                      - np.array([s.value for s in b.score(items)])).max() <= 1e-4
    # alpha 0.5 meets halfway: each channel's input range equals its weight row's range
    from onnx import numpy_helper

    after = onnx.load(str(folder / "model.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    muls = [n for n in after.graph.node if n.name.startswith("/smooth")]
    ranges = _input_channel_max(after, [m.output[0] for m in muls], feeds)
    for m in muls:
        w = np.max([np.abs(weights[n.input[1]]).max(axis=1) for n in after.graph.node
                    if n.op_type == "MatMul" and n.input[0] == m.output[0]], axis=0)
        assert np.allclose(ranges[m.output[0]], w, rtol=1e-3, atol=1e-6), m.name


def test_smoothed_int8_is_recorded_and_still_static(onnx_models, tmp_path):
    from exports.onnx import Int8Settings, int8_from_fp32

    out = int8_from_fp32(onnx_models["minilm", "fp32"], tmp_path / "sq", prefix=False,
                         int8=Int8Settings(smooth=0.5))
    assert json.loads((out / "arbiter.json").read_text())["int8"]["smooth"] == 0.5
    runs = _batch_runs(out)
    assert max(np.abs(s - runs["right", 1]).max() for s in runs.values()) <= 1e-4


def test_the_default_recipe_keeps_exactly_the_ffn_output_matmuls_float(onnx_models):
    """``FFN_OUT`` must name each BERT layer's second FFN matmul and not the attention's output
    projection (``attention/output/dense``), whose name ends the same way."""
    import onnx

    from app.pipelines.default_model import recipe_int8

    settings = recipe_int8()
    names = [n.name for n in onnx.load(str(onnx_models["minilm", "fp32"] / "model.onnx")).graph.node
             if n.op_type == "MatMul"]
    hit = [n for n in names if any(re.search(p, n) for p in settings.keep_float)]
    assert len(hit) == 6 and not any("attention" in n for n in hit), hit
    assert settings.smooth == 0.6
