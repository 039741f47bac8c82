"""Bad models and bad input give clear errors naming the file (and line and field)."""

from __future__ import annotations

import math
import shutil

import pytest

import engine
from engine import InputError, ModelError
from engine.jsonl import read_items


def test_truncated_onnx_file_is_a_clear_error(tmp_path, onnx_models):
    bad = tmp_path / "bad"
    shutil.copytree(onnx_models["minilm", "fp32"], bad)
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=r"model\.onnx.*cannot load"):
        engine.load(bad)


def test_missing_tokenizer_is_a_clear_error(tmp_path, onnx_models):
    bad = tmp_path / "notok"
    shutil.copytree(onnx_models["qwen3", "fp32"], bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="no tokenizer.json"):
        engine.load(bad)


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match="never loads pickles"):
        engine.load(folder)


def test_unknown_things_are_not_models(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a model file"):
        engine.load(tmp_path / "notes.txt")
    with pytest.raises(ModelError, match="no model named 'nope'"):
        engine.load("nope")
    monkeypatch.setenv("ARBITER_BUILTIN", str(tmp_path / "no-builtin"))  # a build without one
    with pytest.raises(ModelError, match="no default model"):
        engine.load("default")


@pytest.mark.parametrize("line, field, message", [
    ('{"prompt": "q"}', "response", "missing"),
    ('{"response": "r"}', "conversation", "missing"),
    ('{"prompt": 5, "response": "r"}', "prompt", "string"),
    ('{"conversation": [{"role": "user"}], "response": "r"}', "conversation[0].content", "string"),
    ('{"conversation": "hi", "response": "r"}', "conversation", "list"),
    ('{"prompt": "q", "response": "r"', None, "not valid JSON"),
    ('[1, 2]', None, "JSON object"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n\n' + line + "\n")
    with pytest.raises(InputError) as e:
        list(read_items(path))
    assert e.value.source == str(path) and e.value.line == 3 and e.value.field == field
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_requested_gpu_falls_back_loudly(onnx_models):
    import onnxruntime as ort

    from engine.errors import ProviderFallbackWarning

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: there is no fallback to observe")
    with pytest.warns(ProviderFallbackWarning, match="FALLING BACK TO CPU"):
        rm = engine.load(onnx_models["minilm", "fp32"], device="cuda")
    assert rm.info.provider == "cpu"


def test_the_writer_refuses_nan_and_a_failed_write_keeps_the_old_file(tmp_path):
    """Issue 13, defects 9 and 10: bare NaN reached output files; a failed run left temp files."""
    import math

    from engine.output import atomic_output, json_line

    with pytest.raises(InputError, match=r"in\.jsonl:7: holds a NaN or infinite number"):
        json_line({"score": math.nan}, source="in.jsonl", line=7)
    with pytest.raises(InputError):
        json_line({"nested": [1.0, -math.inf]})
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    with pytest.raises(RuntimeError), atomic_output(out) as f:
        f.write("half")
        raise RuntimeError("the run failed midway")
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("fmt", ["onnx", "gguf"])
def test_a_lone_surrogate_is_bad_input_not_a_tokenizer_crash(fmt):
    """Python callers and the server pass str objects that JSON readers never made (``"\\ud800"``):
    both tokenizers (HF's raised TypeError, llama.cpp's path UnicodeEncodeError) now give an InputError."""
    rm = engine.load("default", format=fmt)
    for item in [("hi", "a\ud800b"), ("\udfff", "fine")]:
        with pytest.raises(InputError, match="lone surrogate"):
            rm.score([item])
    assert math.isfinite(rm.score([("hi", "héllo ✓")])[0].value)  # real non-ASCII text still scores
