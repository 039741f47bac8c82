"""int8 weights read as uint8 on CPUs without VNNI (engine/int8_weights.py).

The rewrite must be lossless (every weight dequantizes to the same float), cover static
(QDQ) and dynamic (MatMulInteger) exports, and give the scores a VNNI CPU gives. On a VNNI
CPU "as stored" and "as uint8" are both exact, so they must agree to the last bit there;
on a CPU without VNNI the engine's default ("auto") is the rewrite, so the default must
equal the forced rewrite on every machine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import engine
from engine import int8_weights
from engine.errors import InputError, ModelError
from engine.int8_weights import (
    ENV,
    _weight_sites,
    cache_entry,
    cpu_has_vnni,
    rewrite_file,
    session_source,
    unsigned_weights,
    vnni_flags,
    wanted,
)
from engine.modelmeta import read_meta, write_meta
from exports.onnx import quantize_int8
from exports.probes import probe_items

EPYC_FLAGS = "flags\t\t: fpu vme sse4_2 avx f16c fma avx2 bmi2 sha_ni clzero\n"
XEON_FLAGS = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8\n"


def _dequantized(model) -> dict[str, np.ndarray]:
    """Every matmul weight of an int8 graph as the float it stands for: (w - zp) * scale."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or inits[node.input[0]].ndim != 2:
            continue
        w, scale = inits[node.input[0]].astype(np.int32), inits[node.input[1]]
        zp = inits[node.input[2]].astype(np.int32) if len(node.input) > 2 else 0
        out[node.input[0]] = (w - zp) * scale
    return out


def _scores(folder, monkeypatch, weights: str) -> tuple[np.ndarray, str]:
    monkeypatch.setenv(ENV, weights)
    with engine.load(folder) as rm:
        return np.array([s.value for s in rm.score(probe_items()[0])]), rm.info.extra["int8_weights"]


def test_vnni_is_read_from_cpuinfo_flags():
    assert vnni_flags(EPYC_FLAGS) == set()
    assert vnni_flags(XEON_FLAGS) == {"avx512_vnni", "avx_vnni"}
    assert isinstance(cpu_has_vnni(), bool)


def test_the_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "unsigned")
    assert wanted()
    monkeypatch.setenv(ENV, "signed")
    assert not wanted()
    monkeypatch.setenv(ENV, "always")
    with pytest.raises(ModelError, match=ENV):
        wanted()


@pytest.mark.parametrize("arch", ["qwen3", "minilm"])
def test_rewrite_is_lossless_and_leaves_no_int8_matmul_weight(arch, onnx_models):
    model = onnx.load(str(onnx_models[arch, "int8"] / "model.onnx"))
    before = _dequantized(model)  # matmul weights and the (already uint8) embedding table
    weights = {w for w, _, _ in _weight_sites(model.graph)}
    assert len(weights) > 10 and unsigned_weights(model) == len(weights)
    after = _dequantized(model)
    assert before.keys() == after.keys() and weights < after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert _weight_sites(model.graph) == []
    inits = {t.name: t for t in model.graph.initializer}
    assert all(inits[k].data_type == TensorProto.UINT8 for k in weights)
    onnx.checker.check_model(model)


@pytest.mark.parametrize("arch", ["qwen3", "minilm"])
def test_default_equals_the_rewrite_on_this_cpu(arch, onnx_models, monkeypatch):
    """Bit-equal where it counts: VNNI (both exact) or not (the default is the rewrite)."""
    folder = onnx_models[arch, "int8"]
    auto, how_auto = _scores(folder, monkeypatch, "auto")
    unsigned, how = _scores(folder, monkeypatch, "unsigned")
    assert how.startswith("uint8 (") and ENV in how
    assert how_auto == ("as stored" if cpu_has_vnni() else how.replace(ENV, "no VNNI on this CPU"))
    assert np.abs(auto - unsigned).max() <= 1e-5
    if cpu_has_vnni():  # U8S8 clips nothing here: the file as stored gives the same integers
        signed, _ = _scores(folder, monkeypatch, "signed")
        assert np.abs(signed - unsigned).max() <= 1e-5


def test_dynamic_int8_matmulinteger_is_rewritten_too(onnx_models, tmp_path, monkeypatch):
    """Legacy dynamic exports: MatMulInteger's int8 B and its zero point."""
    fp32 = onnx_models["minilm", "fp32"]
    folder = tmp_path / "dynamic"
    shutil.copytree(fp32, folder, ignore=shutil.ignore_patterns("*.onnx"))
    quantize_int8(fp32 / "model.onnx", folder / "model.onnx", calibration=None)
    write_meta(folder, {**read_meta(folder), "dtype": "int8", "activation_quant": "dynamic"})
    model = onnx.load(str(folder / "model.onnx"))
    assert any(n.op_type == "MatMulInteger" for n in model.graph.node)
    assert unsigned_weights(model) > 0 and _weight_sites(model.graph) == []
    auto, _ = _scores(folder, monkeypatch, "auto")
    unsigned, how = _scores(folder, monkeypatch, "unsigned")
    assert how.startswith("uint8 (")
    assert np.abs(auto - unsigned).max() <= 1e-5


def test_float_exports_are_opened_as_stored(onnx_models, monkeypatch):
    _, how = _scores(onnx_models["minilm", "fp32"], monkeypatch, "unsigned")
    assert how == "as stored"


def test_models_info_says_how_int8_weights_are_read(monkeypatch, capsys):
    from app.cli.main import main

    monkeypatch.setenv(ENV, "unsigned")
    assert main(["models", "info", "default", "--format", "onnx"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("int8 weights"))
    assert "uint8 (" in line and "matmul weights rewritten" in line


def test_the_uint8_copy_is_cached_and_remade_when_the_source_changes(onnx_models, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(onnx_models["minilm", "int8"], tmp_path / "m"))
    source = folder / "model.onnx"
    monkeypatch.setenv(ENV, "unsigned")
    first, how = session_source(source)
    entry = cache_entry(source)
    assert first == str(entry / "model.onnx") and how.startswith("uint8 (")
    stamp = json.loads((entry / "stamp.json").read_text())
    assert stamp["source"] == str(source.resolve()) and stamp["count"] > 10

    def no_parsing(*a, **k):
        raise AssertionError("a current cached copy must not be parsed again")

    with monkeypatch.context() as m:
        m.setattr(onnx, "load", no_parsing)
        assert session_source(source) == (first, how)
    killed, busy = entry / ".writing-killed", entry / ".writing-busy"  # a kill -9's leftover; a live writer's
    for folder_, age in ((killed, 2 * int8_weights.STALE_WRITE_S), (busy, 60)):
        folder_.mkdir()
        (folder_ / "model.onnx").write_bytes(b"half")
        os.utime(folder_, (time.time() - age, time.time() - age))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert session_source(source) == (first, how)  # remade: the stamp follows the file
    assert not killed.exists() and busy.is_dir()
    assert json.loads((entry / "stamp.json").read_text())["mtime_ns"] == source.stat().st_mtime_ns
    scores, _ = _scores(folder, monkeypatch, "unsigned")
    def no_home(_):  # what engine.paths says of an ARBITER_HOME that cannot be a folder
        raise InputError("ARBITER_HOME: /x is not a folder")

    monkeypatch.setattr(int8_weights, "cache_entry", no_home)
    in_memory, how = session_source(source)
    assert isinstance(in_memory, bytes) and how.startswith("uint8 (")
    again, _ = _scores(folder, monkeypatch, "unsigned")
    assert np.array_equal(scores, again)


def test_a_graph_with_nothing_to_rewrite_is_remembered_as_such(onnx_models, monkeypatch):
    source = onnx_models["minilm", "fp32"] / "model.onnx"
    monkeypatch.setenv(ENV, "unsigned")
    assert session_source(source) == (str(source), "as stored")  # no arbiter.json dtype given
    assert json.loads((cache_entry(source) / "stamp.json").read_text())["count"] == 0
    assert not (cache_entry(source) / "model.onnx").exists()


def test_rewrite_file_keeps_weights_stored_beside_the_graph(onnx_models, tmp_path):
    """An edge folder's file whose weights come in model_int8.onnx_data keeps that layout."""
    model = onnx.load(str(onnx_models["minilm", "int8"] / "model.onnx"))
    before = _dequantized(model)
    path = tmp_path / "model_int8.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="model_int8.onnx_data", size_threshold=0)
    size = (tmp_path / "model_int8.onnx_data").stat().st_size
    assert rewrite_file(path) > 10
    assert (tmp_path / "model_int8.onnx_data").stat().st_size < 1.5 * size  # written afresh, not added to
    stored = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    after = _dequantized(onnx.load(str(path)))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert _weight_sites(onnx.load(str(path)).graph) == []


def test_a_truncated_int8_file_is_a_clear_error_and_caches_nothing(onnx_models, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(onnx_models["minilm", "int8"], tmp_path / "m"))
    source = folder / "model.onnx"
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    monkeypatch.setenv(ENV, "unsigned")
    with pytest.raises(ModelError, match=r"model\.onnx: cannot load this file as ONNX .*truncated"):
        engine.load(folder)
    assert not (cache_entry(source) / "stamp.json").exists()
