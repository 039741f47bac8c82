"""One device vocabulary (engine/devices.py) in all three backends, the GUI and the CLI.

Every name the GUI offers opens a model in every format: it runs on the device, or on the
CPU with the loud ProviderFallbackWarning (logged too), never silently and never as a
refusal. Real runtimes: the built-in default's GGUF and ONNX files, a tiny torch model.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import engine
from engine import devices
from engine.errors import ModelError, ProviderFallbackWarning
from engine.paths import builtin_dir
from engine.types import Item

ITEMS = [Item.of("What is 2+2?", "4"), Item.of("Name a prime.", "Seven, which is prime.")]
#: names no runtime of that format can ever honour: they always fall back, on any machine
NEVER = {"onnx": ["vulkan"], "torch": ["directml", "coreml", "vulkan"], "gguf": ["directml", "coreml"]}


@pytest.fixture(scope="module")
def model_paths(hf_models):
    root = builtin_dir() / "default"
    gguf = next(iter(sorted((root / "gguf").glob("*.gguf"))), None)
    if gguf is None or not any((root / "onnx").glob("*.onnx")):
        pytest.skip("this build ships no default model files")
    return {"onnx": root / "onnx", "gguf": gguf, "torch": hf_models["minilm"]}


@pytest.fixture(scope="module")
def cpu_scores(model_paths):
    out = {}
    for fmt, path in model_paths.items():
        with engine.load(path, device="cpu") as rm:
            out[fmt] = np.array([s.value for s in rm.score(ITEMS)])
    return out


def _open(path, device):
    """Load with ``device``; the fallback warnings it raised."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rm = engine.load(path, device=device)
    return rm, [w for w in seen if issubclass(w.category, ProviderFallbackWarning)]


def test_names_are_normalised_and_unknown_ones_refused():
    assert devices.check_device(" CUDA ") == "cuda"
    assert devices.DEFAULT_DEVICE in devices.DEVICES
    with pytest.raises(ModelError, match=r"unknown device 'tpu'; choose one of cpu, auto, gpu, cuda"):
        devices.check_device("tpu")
    # every backend's table covers the whole vocabulary, nothing else
    for table in (devices.ONNX_PROVIDERS, devices.TORCH_DEVICES, devices.LLAMA_BACKENDS):
        assert set(table) == set(devices.DEVICES)


@pytest.mark.parametrize("fmt", ["onnx", "gguf", "torch"])
def test_an_unknown_device_is_a_model_error_in_every_backend(fmt, model_paths):
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        engine.load(model_paths[fmt], device="tpu")


@pytest.mark.parametrize("fmt", ["onnx", "gguf", "torch"])
@pytest.mark.parametrize("device", list(devices.DEVICES))
def test_every_name_runs_on_the_device_or_falls_back_loudly(fmt, device, model_paths, cpu_scores, caplog):
    caplog.set_level(logging.WARNING)
    rm, fallbacks = _open(model_paths[fmt], device)
    with rm:
        on_cpu = rm.info.provider == "cpu"
        scores = np.array([s.value for s in rm.score(ITEMS)])
    if device == "cpu":
        assert on_cpu and not fallbacks
    elif device == "auto":
        assert not fallbacks  # auto asks for nothing in particular: no warning either way
    elif on_cpu:
        assert len(fallbacks) == 1, [str(w.message) for w in fallbacks]
        message = str(fallbacks[0].message)
        assert f"device {device!r}" in message and "FALLING BACK TO CPU" in message
        logged = [r for r in caplog.records if r.levelno == logging.WARNING and "FALLING BACK" in r.getMessage()]
        assert logged, "the fallback must be logged too (the CLI and GUI show the log)"
    else:
        assert not fallbacks, "a device that is in use must not warn"
    if on_cpu:  # the fallback is the CPU model itself
        assert np.abs(scores - cpu_scores[fmt]).max() <= 1e-6
    if device in NEVER[fmt]:
        assert on_cpu and fallbacks


def test_torch_no_longer_falls_back_silently(model_paths):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: there is no fallback to observe")
    with pytest.warns(ProviderFallbackWarning, match="device 'cuda' was requested but torch finds no cuda"):
        rm = engine.load(model_paths["torch"], device="cuda")
    assert rm.info.provider == "cpu"


def test_gguf_accepts_the_names_the_gui_offers(model_paths):
    # it used to refuse directml and coreml with "choose auto, cpu or gpu"
    for device in ("directml", "coreml"):
        with pytest.warns(ProviderFallbackWarning, match="llama.cpp has no such backend"):
            rm = engine.load(model_paths["gguf"], device=device)
        assert rm.info.extra["n_gpu_layers"] == 0
        rm.close()


def test_llama_gpu_backends_reads_this_build():
    import llama_cpp

    from engine.backends.gguf import _llama

    have = devices.llama_gpu_backends(_llama())
    assert have is not None, "libggml's backend registry could not be read"
    # the registry agrees with llama.cpp's own answer (CPU, BLAS, RPC are not GPUs)
    assert bool(have) == bool(llama_cpp.llama_supports_gpu_offload())


def test_gui_and_cli_read_the_vocabulary():
    from app.cli.main import build_parser

    assert build_parser().parse_args(["score", "x.jsonl", "-o", "y.jsonl"]).device == devices.DEFAULT_DEVICE
    assert all(name in devices.cli_help() for name in devices.DEVICES)
    pytest.importorskip("PySide6")
    from app.gui.models_view import DEVICES

    assert list(devices.DEVICES) == DEVICES


def test_cli_prints_an_unknown_device_as_an_error(capsys):
    from app.cli.main import main

    rc = main(["compare", "--device", "tpu", "--prompt", "q", "a", "b"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("arbiter: error: unknown device 'tpu'") and "Traceback" not in err
