"""The `arbiter` CLI, run as a user runs it (a subprocess), on real exported models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ARBITER = [sys.executable, "-m", "app.cli.main"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ARBITER, *args], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_models_add_list_info_remove(onnx_models, arbiter_home):
    run("models", "add", str(onnx_models["minilm", "int8"]), "--name", "mini")
    listed = json.loads(run("models", "list", "--json").stdout)
    builtin = [("default", "gguf")] if engine.registry.default_model_path() else []
    assert [(m["name"], m["format"]) for m in listed] == [*builtin, ("mini", "onnx")]
    assert (arbiter_home / "models" / "mini" / "model.onnx").is_file()
    info = json.loads(run("models", "info", "mini", "--json").stdout)
    assert info["architecture"] == "BertForSequenceClassification" and info["dtype"] == "int8"
    assert info["chat_template"] is None and info["pooling"] == "cls"
    dup = run("models", "add", str(onnx_models["minilm", "int8"]), "--name", "mini", ok=False)
    assert dup.returncode == 2 and "exists already" in dup.stderr
    run("models", "remove", "mini")
    after = json.loads(run("models", "list", "--json").stdout)
    assert [(m["name"], m["format"]) for m in after] == builtin
    removed = run("models", "remove", "default", ok=False)  # the built-in one stays
    assert removed.returncode == 2 and "cannot be removed" in removed.stderr


def test_compare_prints_margin_and_probability(onnx_models):
    import engine

    model = str(onnx_models["llama", "fp32"])
    out = json.loads(run("compare", "--model", model, "--prompt", "2+2?", "4", "five", "--json").stdout)
    with engine.load(model) as rm:
        c = rm.compare("2+2?", "4", "five")
    assert out["score_a"] == pytest.approx(c.score_a.value, abs=5e-5)
    assert out["p_a_better"] == pytest.approx(c.p_a_better, abs=1e-4)
    human = run("compare", "--model", model, "--prompt", "2+2?", "4", "five").stdout
    assert "P(A better than B)" in human and "margin" in human


def test_bon_ranks_candidates_from_a_text_file(onnx_models, tmp_path):
    cands = tmp_path / "c.txt"
    cands.write_text("Paris.\n---\nLyon,\nsurely.\n---\nI don't know.\n")
    out = json.loads(run("bon", "-m", str(onnx_models["qwen3", "fp32"]), "-p", "Capital of France?",
                         "--candidates", str(cands), "--json").stdout)
    scores = [r["score"] for r in out["ranking"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert {r["response"] for r in out["ranking"]} == {"Paris.", "Lyon,\nsurely.", "I don't know."}


def test_score_writes_every_row_atomically(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(20)]
    rows.append({"conversation": [{"role": "user", "content": "hi"}], "response": "hello", "id": "keep-me"})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    summary = json.loads(run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out),
                             "--batch-size", "3", "--json").stdout)
    assert summary["rows"] == 21
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["response"] for g in got] == [r["response"] for r in rows] and got[-1]["id"] == "keep-me"
    assert all(isinstance(g["score"], float) for g in got)


def test_bad_row_fails_with_line_and_field_and_writes_nothing(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "respons": "typo"}\n')
    out = tmp_path / "out.jsonl"
    proc = run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out), ok=False)
    assert proc.returncode == 2
    assert f"{src}:2: field 'response'" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_missing_default_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ARBITER_BUILTIN", str(tmp_path / "no-builtin"))  # a build without one
    proc = run("compare", "-p", "q", "a", "b", ok=False)
    assert proc.returncode == 2 and "no default model" in proc.stderr and "models add" in proc.stderr


def test_export_and_verify_commands(hf_models, tmp_path):
    out = tmp_path / "exported"
    res = json.loads(run("export", str(hf_models["minilm"]), str(out), "--format", "onnx", "--verify", "--json").stdout)
    assert res["outputs"] == [str(out)]
    assert res["verify"][0]["passed"] and res["verify"][0]["max_abs_diff"] <= 1e-4
    meta = json.loads((out / "arbiter.json").read_text())
    assert meta["architecture"] == "BertForSequenceClassification" and len(meta["source_sha256"]) == 64
    bad = run("verify", str(out), "--reference", str(hf_models["qwen3"]), ok=False)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_over_long_response_names_its_line(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": "q", "response": "short"}] * 5 + [{"prompt": "q", "response": "word " * 600}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(tmp_path / "o.jsonl"),
               "--batch-size", "2", ok=False)
    assert proc.returncode == 2 and f"{src}:6: field 'response'" in proc.stderr and "512" in proc.stderr

    out = tmp_path / "skip.jsonl"
    summary = json.loads(run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out),
                             "--on-too-long", "skip", "--json").stdout)
    assert summary["rows"] == 6 and summary["rows_skipped"] == 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[-1]["score"] is None and "512" in got[-1]["skipped"]
    assert all(isinstance(g["score"], float) for g in got[:5])


def test_default_compare_is_length_controlled_and_can_be_raw():
    """The built-in default subtracts its length correction; --no-length-control gives the raw margin."""
    import math

    if engine.registry.default_model_path() is None:
        pytest.skip("this build ships no default model")
    a, b = "Paris.", "The capital of France is Paris, a city on the Seine."
    args = ["compare", "--prompt", "What is the capital of France?", a, b, "--json"]
    controlled = json.loads(run(*args).stdout)
    raw = json.loads(run(*args, "--no-length-control").stdout)
    with engine.load("default") as rm:
        beta = rm.info.length_correction
    shift = beta * (math.log1p(len(a)) - math.log1p(len(b)))  # what control takes off A's margin over B
    assert beta > 0
    assert controlled["margin"] == pytest.approx(raw["margin"] - shift, abs=1e-4)
    info = run("models", "info", "default").stdout
    assert "length control" in info
