"""Fuzz the model loaders with mutated real files: a bad model is an Arbiter error, never a crash.

Targets: the GGUF header reader and loader on mutated real GGUFs (bit flips in the header,
truncation, rewritten counts, type tags, values and tensor infos) of the built-in default
model and of a tiny exported Qwen3; ONNX folder loading (a truncated model file, a missing or
garbage tokenizer.json, arbiter.json or config.json) of the default's ONNX copy.

Property: the in-process header check either accepts a file or raises ModelError naming it;
then the real load and one score run in a child process (``_Worker``). That child must
answer: a score, or an Arbiter error naming the file. A signal (llama.cpp's GGML_ASSERT
aborts with SIGABRT), an uncaught traceback or a child that stops answering fails the case.
The child is kept alive between cases (a fresh Python, llama.cpp and onnxruntime per case
cost about 2 s), and is restarted after it dies.

Profiles (tests/fuzz_profiles.py): ``make test`` runs 40 cases per target, ``make fuzz`` 1,000.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ModelError
from engine.gguf_file import read_model_header
from tests import gguf_edit as G

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engine" / "builtin" / "default"
DEFAULT_GGUF = DEFAULT / "gguf" / "model-q8_0.gguf"
#: how long the child may stay silent before the case counts as a hang (seconds). Not a speed
#: limit: a load and one score take about 0.3 s; this only turns a hang into a failure.
HANG_S = 300

_CHILD = r"""
import json, sys, traceback
import engine
from engine.errors import ArbiterError
for line in sys.stdin:
    path = line.strip()
    try:
        with engine.load(path, device="cpu", threads=1) as rm:
            value = rm.score([("Name a prime.", "7")])[0].value
        out = {"ok": repr(value)}
    except ArbiterError as e:
        out = {"error": str(e), "class": type(e).__name__}
    except Exception:
        out = {"traceback": traceback.format_exc()}
    print(json.dumps(out), flush=True)
"""


class _Worker:
    """A child process that loads and scores the models it is sent, one per line."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "GGML_NO_BACKTRACE": "1", "ARBITER_GGUF_EXTRA_BUFTS": "0"}
        return subprocess.Popen([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def load(self, path: Path) -> dict[str, str]:
        """The child's answer for ``path``; an AssertionError when it died or hung."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], HANG_S)
        line = proc.stdout.readline() if ready else ""
        if not line:
            if not ready:
                proc.kill()
            rc = proc.wait()
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            self.proc = None
            raise AssertionError(f"loading {path} {'hung' if not ready else 'killed the process'} "
                                 f"(exit code {rc}):\n{err}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker():
    w = _Worker()
    yield w
    w.close()


def _check(worker: _Worker, path: Path, names: Path) -> None:
    """The property, for one file or folder; ``names`` is what an error must mention."""
    answer = worker.load(path)
    assert "traceback" not in answer, answer.get("traceback")
    # a model that loads but reads very few tokens (context_length 1) refuses the input instead:
    # an error about the input, which is right, and names no file
    if "error" in answer and answer["class"] != "InputTooLongError":
        assert str(names) in answer["error"], answer["error"]


# ---- GGUF ------------------------------------------------------------------------------

class _Seed:
    """A real GGUF and the positions of its header's numbers."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, path.read_bytes()
        self.fields, self.header_end = G.fields(path)


@pytest.fixture(scope="module")
def gguf_seeds(gguf_models) -> list[_Seed]:
    return [_Seed(DEFAULT_GGUF), _Seed(gguf_models["qwen3", "q8_0"])]


_INTERESTING = [0, 1, 2, 7, 8, 9, 12, 255, 512, 513, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


#: a mutation, kept small so that hypothesis can print it: (seed index, edits); an edit is
#: ("truncate", length), ("flip", byte offset, bit) or ("set", byte offset, bytes)
Mutation = tuple[int, list[tuple]]


@st.composite
def _gguf_mutation(draw, seeds: list[_Seed]) -> Mutation:
    i = draw(st.integers(0, len(seeds) - 1))
    seed = seeds[i]
    kind = draw(st.sampled_from(["flip", "truncate", "field", "field", "field"]))
    if kind == "truncate":
        return i, [("truncate", draw(st.integers(0, len(seed.data) - 1)))]
    if kind == "flip":
        return i, [("flip", draw(st.integers(0, seed.header_end - 1)), draw(st.integers(0, 7)))
                   for _ in range(draw(st.integers(1, 8)))]
    edits: list[tuple] = []
    for _ in range(draw(st.integers(1, 3))):
        f = draw(st.sampled_from(seed.fields))
        value = draw(st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 2 ** (8 * f.size) - 1)))
        if f.what == "value" and f.size == 4 and draw(st.booleans()):  # a float, NaN included
            raw = struct.pack("<f", draw(st.floats(width=32)))
        else:
            raw = (value % 2 ** (8 * f.size)).to_bytes(f.size, "little")
        edits.append(("set", f.offset, raw))
    return i, edits


def _apply(seed: _Seed, edits: list[tuple]) -> bytes:
    buf = bytearray(seed.data)
    for edit in edits:
        if edit[0] == "truncate":
            del buf[edit[1]:]
        elif edit[0] == "flip":
            buf[edit[1]] ^= 1 << edit[2]
        else:
            buf[edit[1]:edit[1] + len(edit[2])] = edit[2]
    return bytes(buf)


def test_gguf_header_and_load_never_crash(gguf_seeds, worker):
    @given(_gguf_mutation(gguf_seeds))
    def case(mutation: Mutation) -> None:
        seed = gguf_seeds[mutation[0]]
        with tempfile.TemporaryDirectory(prefix="arbiter-fuzz-") as tmp:
            path = Path(tmp) / seed.path.name
            path.write_bytes(_apply(seed, mutation[1]))
            try:
                read_model_header(path)
            except ModelError as e:
                assert str(path) in str(e)
                return  # refused before llama.cpp saw it: the property holds
            _check(worker, path, path)

    case()


def test_the_unmutated_seeds_score(gguf_seeds, worker):
    """The property's other half: the real files load and score (so the fuzz can tell)."""
    for seed in gguf_seeds:
        assert "ok" in worker.load(seed.path)


# ---- ONNX folders ----------------------------------------------------------------------

_ONNX = DEFAULT / "onnx"
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4),
                     max_leaves=12)
_FILES = ("model.onnx", "tokenizer.json", "arbiter.json", "config.json", "tokenizer_config.json")


@st.composite
def _folder_mutation(draw) -> tuple[str, str, object]:
    """(file, how, argument): which file of the folder to spoil, and how."""
    name = draw(st.sampled_from(_FILES))
    how = draw(st.sampled_from(["missing", "truncate", "garbage", "json", "field"]))
    if how == "truncate":
        return name, how, draw(st.floats(0, 1, exclude_max=True))
    if how == "garbage":
        return name, how, draw(st.binary(max_size=64))
    if how == "json":
        return name, how, draw(_JSON)
    if how == "field":
        keys = ["length_correction", "max_length", "pad_token_id", "token_types", "chat_template",
                "max_position_embeddings", "architectures", "model_max_length", "model", "added_tokens"]
        return name, how, (draw(st.sampled_from(keys)), draw(_JSON))
    return name, how, None


def _spoil(folder: Path, name: str, how: str, arg: object) -> None:
    target = folder / name
    original = (_ONNX / name).read_bytes() if (_ONNX / name).is_file() else b"{}"
    if target.is_symlink() or target.exists():
        target.unlink()
    if how == "missing":
        return
    if how == "truncate":
        target.write_bytes(original[:int(len(original) * float(arg))])  # type: ignore[arg-type]
    elif how == "garbage":
        target.write_bytes(arg)  # type: ignore[arg-type]
    elif how == "json":
        target.write_text(json.dumps(arg))
    else:
        key, value = arg  # type: ignore[misc]
        try:
            data = json.loads(original)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = value
        target.write_text(json.dumps(data))


def test_onnx_folder_loading_never_crashes(worker):
    @given(st.lists(_folder_mutation(), min_size=1, max_size=3))
    def case(mutations: list[tuple[str, str, object]]) -> None:
        with tempfile.TemporaryDirectory(prefix="arbiter-fuzz-") as tmp:
            folder = Path(tmp) / "rm"
            folder.mkdir()
            for f in _ONNX.iterdir():
                if f.name == "model.onnx":
                    (folder / f.name).symlink_to(f)
                else:
                    shutil.copy2(f, folder / f.name)
            for name, how, arg in mutations:
                _spoil(folder, name, how, arg)
            _check(worker, folder, folder)

    case()


def test_the_unspoilt_onnx_folder_scores(worker):
    assert "ok" in worker.load(_ONNX)


def test_a_signal_in_the_child_is_a_failure(tmp_path):
    """The harness itself: a child that dies on a signal is reported, not taken for an answer."""
    w = _Worker()
    w._start = lambda: subprocess.Popen(  # type: ignore[method-assign]
        [sys.executable, "-c", "import os, signal, sys; sys.stdin.readline(); os.kill(os.getpid(), signal.SIGABRT)"],
        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with pytest.raises(AssertionError, match="killed the process"):
        w.load(tmp_path)
