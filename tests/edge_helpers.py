"""Edge folders and a bare Python for the edge-runner tests (tests/test_edge.py, test_edge_node.py).

Each edge folder is built once per session (``arbiter export --edge``'s own code); the engine
export folders its files came from are kept beside it, so tests can score the same rows with
the engine (:func:`engine_folders`). Tests that damage a folder copy it first
(:func:`copy_edge`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from exports.edge import EdgeSources, build_edge, edge_sources

#: what a user installs for runner.py, pinned to the versions the engine here runs on
RUNNER_PACKAGES = ("onnxruntime", "tokenizers", "numpy", "jinja2")

_BUILT: dict[str, tuple[Path, EdgeSources]] = {}


def _edge(key: str, src: str | Path, tmp: Path, quant: str | None) -> Path:
    if key not in _BUILT:
        tmp.mkdir(parents=True, exist_ok=True)
        sources = edge_sources(src, quant, tmp / "engine")
        _BUILT[key] = build_edge(sources, tmp / "edge"), sources
    return _BUILT[key][0]


def edge_default(tmp: Path) -> Path:
    """The built-in default's edge folder (static int8 only), built once per session."""
    return _edge("default", "default", Path(tmp), None)


def edge_decoder(tmp: Path, hf_dir: Path, quant: str | None = None) -> Path:
    """The edge folder of an HF checkpoint (fp32 + int8), built once per session per checkpoint."""
    return _edge(f"{Path(hf_dir).resolve()}:{quant}", hf_dir, Path(tmp), quant)


def engine_folders(edge: Path) -> dict[str, Path]:
    """The engine ONNX folders (``fp32``/``int8``) whose model files the edge folder ships."""
    return next(s.folders for out, s in _BUILT.values() if out == edge)


def copy_edge(edge: Path, dst: Path) -> Path:
    """A copy to damage (the session's folders are shared by every test)."""
    return Path(shutil.copytree(edge, dst))


def make_venv(tmp: Path) -> Path:
    """A fresh venv with only the runner's packages; its python. A skip (a failure in CI)
    when pip cannot install them (no registry and no cache)."""
    from tests.models import missing

    env = Path(tmp) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = env / "bin" / "python"
    pins = [f"{p}=={version(p)}" for p in RUNNER_PACKAGES]
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"pip could not install {' '.join(pins)} into a fresh venv: {done.stderr[-500:]}")
    return python


@pytest.fixture(scope="session")
def runner_python(tmp_path_factory) -> Path:
    """Python of a fresh venv holding only onnxruntime, tokenizers, numpy and jinja2."""
    return make_venv(tmp_path_factory.mktemp("runner-venv"))


@pytest.fixture(scope="session")
def edge_default_dir(tmp_path_factory) -> Path:
    return edge_default(tmp_path_factory.mktemp("edge-default"))


@pytest.fixture(scope="session")
def edge_qwen3_dir(tmp_path_factory, hf_models) -> Path:
    return edge_decoder(tmp_path_factory.mktemp("edge-qwen3"), hf_models["qwen3"])


@pytest.fixture(scope="session")
def edge_minilm_dir(tmp_path_factory, hf_models) -> Path:
    return edge_decoder(tmp_path_factory.mktemp("edge-minilm"), hf_models["minilm"])
