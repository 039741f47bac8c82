"""Multi-output heads (the built-in moderation model's shape) in every format, and the model itself.

Real parts: a tiny seeded BERT classifier with nine outputs exported by Arbiter's own ONNX and
GGUF exporters and scored by onnxruntime and llama.cpp; the shipped built-in model through the
real `arbiter moderate` CLI in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from app.moderate.categories import CATEGORIES
from app.moderate.scoring import RewardModerator, Text, category_heads, model_sha256
from app.pipelines.moderation_model import HEAD_SEMANTICS, OUTPUTS, item_of
from engine.errors import ModelError
from engine.paths import builtin_dir
from engine.types import Message
from tests.models import minilm_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = builtin_dir() / "moderation"
TEXTS = ["What is 2+2?", "I will find you and hurt you.", "Have a lovely day, friend!",
         "Describe how a bill becomes a law in three sentences.", "You are worthless and stupid."]


def _tiny_multi(out: Path, *, names: bool = True) -> Path:
    """A seeded 2-layer BERT classifier with len(OUTPUTS) outputs and MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    labels = dict(enumerate(OUTPUTS))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=512, num_labels=len(OUTPUTS),
                     id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = {"token_types": "zeros", "max_length": 128}
    if names:
        meta["outputs"] = list(OUTPUTS)
    (out / "arbiter.json").write_text(json.dumps(meta))
    return out


def _torch_logits(src: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import BertForSequenceClassification

    with engine.load(src / "onnx-fp32", format="onnx") as rm:  # the engine's own encoding
        encoded = [rm.encode(item_of(t, None)).ids for t in texts]
    model = BertForSequenceClassification.from_pretrained(src / "hf").eval()
    with torch.inference_mode():
        return np.array([model(input_ids=torch.tensor([ids]),
                               token_type_ids=torch.zeros((1, len(ids)), dtype=torch.long)).logits[0].numpy()
                         for ids in encoded], dtype=np.float64)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    """The tiny multi-output model as HF, ONNX fp32 and GGUF f32 (exported by Arbiter)."""
    from exports.gguf import export_gguf
    from exports.onnx import export_onnx

    root = tmp_path_factory.mktemp("multi")
    _tiny_multi(root / "hf")
    export_onnx(root / "hf", root / "onnx-fp32")
    export_gguf(root / "hf", root / "gguf", quants=("f32",))
    return root


@pytest.mark.slow
def test_every_format_gives_every_output_and_the_same_scores(multi):
    items = [item_of(t, None) for t in TEXTS]
    ref = _torch_logits(multi, TEXTS)
    got = {}
    for fmt, path in (("onnx", multi / "onnx-fp32"), ("gguf", multi / "gguf" / "model-f32.gguf")):
        with engine.load(path, threads=2) as rm:
            assert rm.output_names == OUTPUTS, fmt  # ONNX: arbiter.json; GGUF: classifier.output_labels
            assert rm.info.extra["outputs"] == list(OUTPUTS)
            got[fmt] = rm.outputs(items)
            # plain scoring reads the first output, exactly
            assert [s.value for s in rm.score(items)] == list(got[fmt][:, 0]), fmt
    assert got["onnx"].shape == (len(TEXTS), len(OUTPUTS))
    assert np.abs(got["onnx"] - ref).max() < 1e-4
    assert np.abs(got["gguf"] - ref).max() < 1e-3  # llama.cpp's f32 kernels sum in another order
    assert np.abs(got["gguf"] - got["onnx"]).max() < 1e-3
    # the outputs differ from one another: not one column copied nine times
    assert np.ptp(got["onnx"], axis=1).min() > 0.1


@pytest.mark.slow
def test_a_multi_output_head_moderates_per_category_in_both_formats(multi):
    rows = [Text(t) for t in TEXTS]
    verdicts = {}
    for fmt, path in (("onnx", multi / "onnx-fp32"), ("gguf", multi / "gguf" / "model-f32.gguf")):
        with engine.load(path, threads=2) as rm:
            assert category_heads(rm) == OUTPUTS
            verdicts[fmt] = RewardModerator(rm).score(rows)
            logits = rm.outputs([item_of(t, None) for t in TEXTS])
        for v, row in zip(verdicts[fmt], logits, strict=True):
            assert v.score == pytest.approx(1 / (1 + np.exp(-row[0])), abs=1e-12)
            assert set(v.category_scores) == set(OUTPUTS[1:])
            assert v.windows == 1
    for a, b in zip(verdicts["onnx"], verdicts["gguf"], strict=True):
        assert abs(a.score - b.score) < 1e-3
        assert max(abs(a.category_scores[c] - b.category_scores[c]) for c in OUTPUTS[1:]) < 1e-3


@pytest.mark.slow
def test_fp16_storage_halves_the_weights_and_keeps_every_output(multi, tmp_path):
    """The copy the moderation model ships: float16 weights, float32 compute (casts folded)."""
    import onnx

    from exports.onnx import fp16_storage_from_fp32

    src = multi / "onnx-fp32"
    dst = fp16_storage_from_fp32(src, tmp_path / "fp16")
    graph = onnx.load(str(dst / "model.onnx")).graph
    big = [i for i in graph.initializer if np.prod(i.dims) >= 1024]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert (dst / "model.onnx").stat().st_size < 0.6 * (src / "model.onnx").stat().st_size
    items = [item_of(t, None) for t in TEXTS]
    with engine.load(src) as a, engine.load(dst) as b:
        assert b.output_names == OUTPUTS
        want, got = a.outputs(items), b.outputs(items)
    assert 0 < np.abs(got - want).max() < 2e-2  # rounded weights: close, and not the same file
    with pytest.raises(ModelError, match="not empty"):
        fp16_storage_from_fp32(src, dst)


def test_a_multi_label_source_without_output_names_is_refused(tmp_path):
    from exports.onnx import check_source

    src = _tiny_multi(tmp_path / "hf", names=False)
    with pytest.raises(ModelError, match="9 labels; a Bradley-Terry reward model has one"):
        check_source(src)
    (src / "arbiter.json").write_text(json.dumps({"outputs": ["overall", "hate"]}))  # 2 names, 9 labels
    with pytest.raises(ModelError, match="9 labels"):
        check_source(src)


@pytest.mark.slow
def test_calibrate_fits_a_threshold_per_category_and_names_the_head_semantics(multi, tmp_path, monkeypatch):
    """`arbiter moderate calibrate` on a multi-output head: overall and every labelled category
    get their own threshold at the target, a category with no positive row says why it has none,
    and the file records the head's reading (sigmoid of its logits), not the reward-model one."""
    from app.cli.main import main
    from app.moderate import thresholds

    monkeypatch.setenv("ARBITER_HOME", str(tmp_path / "home"))
    model = multi / "onnx-fp32"
    texts = [f"{t} ({i})" for i in range(4) for t in TEXTS]
    with engine.load(model, threads=2) as rm:
        verdicts = RewardModerator(rm).score([Text(t) for t in texts])
    sexual = [v.category_scores["sexual"] for v in verdicts]
    hate = [v.category_scores["hate"] for v in verdicts]
    # labels from the model's own ranks: the top 5 per category
    s_pos = set(np.argsort(sexual)[-5:])
    h_pos = set(np.argsort(hate)[-5:])
    rows = [{"text": t, "S": int(i in s_pos), "H": int(i in h_pos), "V": 0} for i, t in enumerate(texts)]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.json"
    assert main(["moderate", "calibrate", str(labelled), "--model", str(model), "--target-recall", "1.0",
                 "--label-field", "S,H,V", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["semantics"] == HEAD_SEMANTICS
    # recall 1.0 at the highest threshold: the lowest score of a positive row, per category
    assert data["categories"]["sexual"] == pytest.approx(min(sexual[i] for i in s_pos))
    assert data["categories"]["hate"] == pytest.approx(min(hate[i] for i in h_pos))
    assert data["categories"]["sexual"] != pytest.approx(data["overall"])
    assert data["at_threshold"]["sexual"]["recall"] == 1.0
    assert data["at_threshold"]["sexual"]["tp"] == 5
    assert data["categories"]["violence"] is None  # no positive row: falls back to overall
    assert "no positive" in data["uncalibrated"]["violence"]
    assert data["categories"]["harassment"] is None and "harassment" not in data.get("uncalibrated", {})
    loaded = thresholds.load(out, data["model_sha256"])  # and the file reads back as it was written
    assert loaded.categories["sexual"] == pytest.approx(data["categories"]["sexual"])


def test_a_reward_model_has_one_output_and_no_categories(onnx_models):
    path = next(p for (arch, dtype), p in onnx_models.items() if dtype == "fp32")
    with engine.load(path) as rm:
        assert rm.output_names == ("score",)
        assert category_heads(rm) is None
        v = RewardModerator(rm).score([Text("hello")])[0]
        assert v.category_scores == {}


# ---- the shipped model ------------------------------------------------------------------------

def _shipped() -> None:
    """Its copies are assembled by `make install` from the delta in git (tests/test_moderation_assembly.py
    tests that); a checkout that has not run it skips, or fails under CI=true, naming the command."""
    from tests.models import missing

    if not (SHIPPED / "onnx" / "model.onnx").is_file() or not any((SHIPPED / "gguf").glob("*.gguf")):
        missing(f"{SHIPPED}: the built-in moderation model's copies are not assembled in this checkout "
                "(`make install`, or `python -m exports.moderation`, assembles them)")


def test_the_shipped_copies_agree_and_name_their_outputs():
    _shipped()
    items = [item_of(t, None) for t in TEXTS]
    out = {}
    for fmt in ("onnx", "gguf"):
        with engine.load("moderation", format=fmt, threads=2) as rm:
            assert rm.output_names == OUTPUTS
            out[fmt] = 1 / (1 + np.exp(-rm.outputs(items)))
    # the build's copies against torch (build.json records the gaps measured at build time)
    build = json.loads((SHIPPED / "build.json").read_text())
    assert build["verify"]["onnx fp16-stored"]["max_abs_logit_diff"] < 0.1
    assert build["verify"]["gguf f16"]["max_abs_logit_diff"] < 0.1
    assert np.abs(out["onnx"] - out["gguf"]).max() < 0.01


def test_each_assembled_copy_has_the_builds_thresholds_tied_to_its_own_sha256():
    _shipped()
    for fmt in ("onnx", "gguf"):
        with engine.load("moderation", format=fmt) as rm:
            assert rm.output_names == OUTPUTS
            sha = model_sha256(rm.info)
        got = json.loads((SHIPPED / f"thresholds-{fmt}.json").read_text())
        template = json.loads((SHIPPED / "delta" / f"thresholds-{fmt}.json").read_text())
        assert got["model_sha256"] == sha
        assert got["version"] == template["version"]


def test_windows_catch_a_threat_at_the_end_of_a_long_text():
    _shipped()
    threat = "I am going to find you and kill you and your whole family tonight."
    filler = " ".join(["The committee reviewed the quarterly budget and approved the minutes."] * 60)
    with engine.load("moderation", format="onnx", threads=2) as rm:
        mod = RewardModerator(rm)
        long_v, alone, benign = mod.score([Text(filler + " " + threat), Text(threat), Text(filler[:300])])
        parts = mod._window_items(mod.neutral, filler + " " + threat)
        per_window = 1 / (1 + np.exp(-rm.outputs(parts)))
    assert long_v.windows == len(parts) > 1
    assert long_v.score == pytest.approx(per_window[:, 0].max(), abs=1e-12)  # max over windows
    assert long_v.category_scores["violence"] == pytest.approx(per_window[:, 3].max(), abs=1e-12)
    assert alone.category_scores["violence"] > benign.category_scores["violence"]
    assert long_v.category_scores["violence"] > benign.category_scores["violence"]


def test_arbiter_moderate_with_the_builtin_model_scores_categories_at_shipped_thresholds(tmp_path):
    _shipped()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "app.cli.main", "moderate", str(src), "--model", "moderation",
                           "--id-field", "id", "--out", str(out), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(TEXTS))]
    with engine.load("moderation", format="onnx") as rm:
        sha = model_sha256(rm.info)
    shipped = json.loads((SHIPPED / "thresholds-onnx.json").read_text())
    assert shipped["model_sha256"] == sha
    assert shipped["semantics"] == HEAD_SEMANTICS  # the head's probabilities, not the RM reading
    for r in rows:
        assert r["model_sha256"] == sha
        assert r["thresholds_version"] == shipped["version"]  # calibrated, not default-0.5
        scored = {c for c, v in r["category_scores"].items() if v is not None}
        assert scored == set(OUTPUTS[1:])
        assert set(r["category_scores"]) == set(CATEGORIES)
        flags = [r["category_scores"][c] >= shipped["categories"][c] for c in OUTPUTS[1:]]
        assert r["flagged"] == (r["score"] >= shipped["overall"] or any(flags))


def test_thresholds_for_another_copy_are_not_used():
    from app.moderate.thresholds import DEFAULT_VERSION, shipped

    assert shipped("0" * 64).version == DEFAULT_VERSION


def test_the_refusal_cache_keeps_what_a_batch_needs(onnx_models, monkeypatch):
    """A context cached in an earlier batch (the oldest) is not evicted by this batch's new ones."""
    from app.moderate import scoring

    monkeypatch.setattr(scoring, "_CACHE", 2)
    path = next(p for (arch, dtype), p in onnx_models.items() if dtype == "fp32")
    with engine.load(path) as rm:
        mod = RewardModerator(rm)
        first = mod.score([Text("a", (Message("user", "A"),)), Text("b", (Message("user", "B"),))])
        again = mod.score([Text("a", (Message("user", "A"),)), Text("c", (Message("user", "C"),)),
                           Text("d", (Message("user", "D"),))])
    assert again[0] == first[0]
    assert len(mod._refusals) == 2
