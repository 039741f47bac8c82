"""HF sequence classifier -> ONNX (fp32, or dynamic int8 with the head kept in float).

``optimum`` does the graph export (task ``text-classification``), which traces
Hugging Face's own last-non-pad-token logic into the graph, so left and right
padding both give the reference score. Quantization is onnxruntime's dynamic int8
(per-channel weights); the reward head and the BERT pooler stay float, because
their precision is the score's precision.

The output folder holds one model: ``model.onnx`` (plus ``model.onnx_data`` above
2 GB), the tokenizer files, ``config.json`` and ``arbiter.json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from engine.errors import ModelError
from engine.files import sha256_file
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, read_config, write_meta

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.txt", "merges.txt", "vocab.json")
QUANTS = ("int8",)
# node-name fragments of the layers that make the score: kept in float when quantizing
HEAD_NODES = ("/score/", "/classifier/", "/pooler/")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("arbiter", "optimum", "optimum-onnx", "onnx", "onnxruntime", "transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def source_digest(src: Path) -> str:
    """sha256 over the checkpoint's weight files (sorted by name), to tie an export to its source."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(src).glob("*.safetensors")):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def check_source(src: Path) -> dict:
    src = Path(src)
    cfg = read_config(src)
    if not cfg:
        raise ModelError(f"{src}: no config.json; expected a Hugging Face model folder")
    if not any(src.glob("*.safetensors")):
        raise ModelError(f"{src}: no .safetensors weights (pickled weights are never loaded)")
    if not (src / "tokenizer.json").is_file():
        raise ModelError(f"{src}: no tokenizer.json; save the fast tokenizer next to the model")
    archs = cfg.get("architectures") or []
    if not archs or not archs[0].endswith("ForSequenceClassification"):
        raise ModelError(f"{src}: architecture {archs} is not a *ForSequenceClassification reward model")
    labels = cfg.get("num_labels", len(cfg.get("id2label", {})) or 1)
    if labels != 1:
        raise ModelError(f"{src}: {labels} labels; a Bradley-Terry reward model has one")
    return cfg


def _staged_source(src: Path, cfg: dict, work: Path) -> Path:
    """The source itself, or a copy whose config names a pad token (decoders need one to batch)."""
    if cfg.get("pad_token_id") is not None or cfg.get("model_type") == "bert":
        return src
    from engine.encoding import Encoder, TokenizerFiles

    pad = Encoder(TokenizerFiles.from_folder(src)).pad_token_id
    staged = work / "src"
    staged.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (staged / p.name).symlink_to(p.resolve())
    (staged / "config.json").unlink()
    (staged / "config.json").write_text(json.dumps({**cfg, "pad_token_id": pad}, indent=2))
    return staged


def quantize_int8(src_model: Path, dst_model: Path) -> list[str]:
    """Dynamic int8 (per-channel); returns the names of the nodes kept in float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src_model), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and any(frag in n.name for frag in HEAD_NODES)]
    quantize_dynamic(str(src_model), str(dst_model), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=keep, use_external_data_format=False)
    return keep


def export_onnx(src: Path, out: Path, *, quant: str | None = None, opset: int = 18) -> Path:
    """Export ``src`` (HF folder) to the ONNX folder ``out``; returns ``out``."""
    from optimum.exporters.onnx import main_export

    src, out = Path(src), Path(out)
    cfg = check_source(src)
    if quant not in (None, "fp32", *QUANTS):
        raise ModelError(f"unknown ONNX quantization {quant!r}; choose fp32 or {', '.join(QUANTS)}")
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="arbiter-export-") as tmp:
        work = Path(tmp)
        staged = _staged_source(src, cfg, work)
        raw = work / "raw"
        main_export(str(staged), output=str(raw), task="text-classification", opset=opset,
                    do_validation=False, no_post_process=False, library_name="transformers")
        final = work / "final"
        final.mkdir()
        kept_float: list[str] = []
        if quant == "int8":
            kept_float = quantize_int8(raw / "model.onnx", final / "model.onnx")
        else:
            for p in raw.glob("model.onnx*"):
                shutil.move(str(p), final / p.name)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, final / name)
        final_cfg = read_config(staged)
        (final / "config.json").write_text(json.dumps(final_cfg, indent=2))
        from engine.encoding import TokenizerFiles

        tf = TokenizerFiles.from_folder(final)
        is_decoder = tf.chat_template is not None
        write_meta(final, {
            "format": "onnx",
            "architecture": (cfg.get("architectures") or ["unknown"])[0],
            "pooling": DECODER_POOLING if is_decoder else ENCODER_POOLING,
            "chat_template": tf.chat_template,
            "max_length": tf.max_length,
            "pad_token_id": final_cfg.get("pad_token_id"),
            "token_types": "segment",
            "dtype": quant or "fp32",
            "kept_float": kept_float,
            "opset": opset,
            "source": str(src.resolve()),
            "source_sha256": source_digest(src),
            "versions": _versions(),
        })
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(final), out)
    return out
