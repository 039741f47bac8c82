"""HF sequence classifier -> ONNX (fp32, or dynamic int8 with the head kept in float).

``optimum`` does the graph export (task ``text-classification``), which traces
Hugging Face's own last-non-pad-token logic into the graph, so left and right
padding both give the reference score. Quantization is onnxruntime's dynamic int8
(per-channel weights); the reward head and the BERT pooler stay float, because
their precision is the score's precision.

The output folder holds ``model.onnx`` (plus ``model.onnx_data`` above 2 GB), the
tokenizer files, ``config.json`` and ``arbiter.json``. For decoder reward models it also
holds ``model_with_past.onnx``, the prefix model used to score Best-of-N candidates
with the conversation computed once (docs/runtimes.md §4.4): the same body exported
as a ``*ForCausalLM`` with past key/values (task ``text-generation-with-past``) whose
``lm_head`` is the score head, so ``logits`` is ``[batch, seq, 1]``, one reward per
token, and no vocabulary-sized work is done. The text-classification graph cannot
share a prefix: it has no key/value inputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from engine.errors import ModelError
from engine.files import sha256_file
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, read_config, read_meta, write_meta

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.txt", "merges.txt", "vocab.json")
QUANTS = ("int8",)
# node-name fragments of the layers that make the score: kept in float when quantizing
HEAD_NODES = ("/score/", "/classifier/", "/pooler/")
PREFIX_MODEL = "model_with_past.onnx"
# sequence classifiers whose causal-LM twin optimum exports with past key/values
# (the decoders of exports/gguf.py's map that optimum-onnx 0.1.0 registers; Gemma 3's
# text model has no text-classification export there, so it never gets this far)
PREFIX_ARCHS = {
    "Qwen3ForSequenceClassification": "Qwen3ForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "MistralForSequenceClassification": "MistralForCausalLM",
    "GemmaForSequenceClassification": "GemmaForCausalLM",
    "Gemma2ForSequenceClassification": "Gemma2ForCausalLM",
}


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


def quantize_int8(src_model: Path, dst_model: Path, head_nodes: tuple[str, ...] = HEAD_NODES) -> list[str]:
    """Dynamic int8 (per-channel); returns the names of the nodes kept in float.

    ``head_nodes``: name fragments of the layers that make the score (the prefix model's
    score head is its ``/lm_head/``).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src_model), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and any(frag in n.name for frag in head_nodes)]
    quantize_dynamic(str(src_model), str(dst_model), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=keep, use_external_data_format=False)
    return keep


def _score_lm(src: Path, cfg: dict):
    """The seq classifier as a ``*ForCausalLM`` whose ``lm_head`` is the score head.

    The body module is the classifier's own (no copy; the causal shell is built on the
    meta device, so a large model is not allocated twice); ``tie_word_embeddings`` is
    off so the one-row head is not tied to the embedding.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    seq = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32)
    seq.eval()
    lm_cfg = {k: v for k, v in seq.config.to_dict().items()
              if k not in ("id2label", "label2id", "num_labels", "problem_type")}
    lm_cfg["architectures"] = [PREFIX_ARCHS[cfg["architectures"][0]]]
    lm_cfg["tie_word_embeddings"] = False
    if lm_cfg.get("final_logit_softcapping") is not None:  # Gemma 2 squashes LM logits; a score is raw
        lm_cfg["final_logit_softcapping"] = None
    config = AutoConfig.for_model(**lm_cfg)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    prefix = lm.base_model_prefix
    setattr(lm, prefix, getattr(seq, seq.base_model_prefix))
    head = seq.score
    lm.lm_head = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None)
    with torch.no_grad():
        lm.lm_head.weight.copy_(head.weight)
        if head.bias is not None:
            lm.lm_head.bias.copy_(head.bias)
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ModelError(f"{src}: cannot build the prefix model; tensors without weights: {left[:5]}")
    return lm.eval()


def _export_prefix(src: Path, cfg: dict, work: Path, final: Path, quant: str | None,
                   opset: int) -> dict:
    """Write ``final/model_with_past.onnx``; returns its arbiter.json entry."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model

    raw = work / "prefix"
    onnx_export_from_model(_score_lm(src, cfg), str(raw), task="text-generation-with-past", opset=opset,
                           do_validation=False)
    graph = onnx.load(str(raw / "model.onnx"), load_external_data=False).graph
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.output)}
    if shapes.get("logits", [None])[-1] != 1:
        raise ModelError(f"{src}: the prefix model's logits are {shapes.get('logits')}, not [batch, seq, 1]")
    past = sorted((n for n in shapes if n.startswith("past_key_values.")),
                  key=lambda n: (int(n.split(".")[1]), n))
    if not past:
        raise ModelError(f"{src}: the text-generation-with-past export has no past key/value inputs")
    kept: list[str] = []
    dst = final / PREFIX_MODEL
    if quant == "int8":
        kept = quantize_int8(raw / "model.onnx", dst, head_nodes=(*HEAD_NODES, "/lm_head/"))
    elif (raw / "model.onnx_data").exists():  # above 2 GB: the data file's name is inside the graph
        model = onnx.load(str(raw / "model.onnx"))
        onnx.save_model(model, str(dst), save_as_external_data=True, location=f"{PREFIX_MODEL}_data")
    else:
        shutil.move(str(raw / "model.onnx"), dst)
    _, kv_heads, _, head_dim = shapes[past[0]]
    entry = {
        "file": PREFIX_MODEL,
        "num_layers": len(past) // 2,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "past_inputs": past,
        "inputs": [v.name for v in graph.input],
        "outputs": [v.name for v in graph.output],
        "kept_float": kept,
    }
    return entry


def export_onnx(src: Path, out: Path, *, quant: str | None = None, opset: int = 18,
                prefix: bool | None = None) -> Path:
    """Export ``src`` (HF folder) to the ONNX folder ``out``; returns ``out``.

    ``prefix``: also write the prefix model (``model_with_past.onnx``) that lets
    ``rank``/``compare`` compute the conversation once. ``None`` (the default) means
    for every decoder that has one; a failure there is logged and the folder still
    scores in full, since the prefix model only makes Best-of-N faster. ``True`` makes
    that failure an error; cross-encoders never have one (they attend both ways).
    """
    from optimum.exporters.onnx import main_export

    src, out = Path(src), Path(out)
    cfg = check_source(src)
    if quant not in (None, "fp32", *QUANTS):
        raise ModelError(f"unknown ONNX quantization {quant!r}; choose fp32 or {', '.join(QUANTS)}")
    arch = (cfg.get("architectures") or ["unknown"])[0]
    if prefix and arch not in PREFIX_ARCHS:
        raise ModelError(f"{src}: no prefix model for {arch}; it is made for "
                         f"{', '.join(sorted(PREFIX_ARCHS))}")
    want_prefix = prefix is not False and arch in PREFIX_ARCHS
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
        prefix_entry: dict | None = None
        if want_prefix:
            try:
                prefix_entry = _export_prefix(staged, cfg, work, final, quant, opset)
            except Exception as e:  # optimum/torch export errors have no common base class
                if prefix:
                    raise ModelError(f"{src}: the prefix model could not be exported ({e})") from e
                log.warning("%s: no prefix model (Best-of-N will score in full): %s", src, e)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, final / name)
        final_cfg = read_config(staged)
        (final / "config.json").write_text(json.dumps(final_cfg, indent=2))
        from engine.encoding import TokenizerFiles

        tf = TokenizerFiles.from_folder(final)
        is_decoder = tf.chat_template is not None
        src_meta = read_meta(src)
        write_meta(final, {
            "format": "onnx",
            "architecture": (cfg.get("architectures") or ["unknown"])[0],
            "pooling": DECODER_POOLING if is_decoder else ENCODER_POOLING,
            "chat_template": tf.chat_template,
            "max_length": tf.max_length,
            "pad_token_id": final_cfg.get("pad_token_id"),
            # what the model was trained with: a cross-encoder trained on all-zero segment ids
            # must be fed zeros here too (it was written as "segment" always: a parity bug)
            "token_types": src_meta.get("token_types", "segment"),
            "length_correction": float(src_meta.get("length_correction") or 0.0),
            "dtype": quant or "fp32",
            "kept_float": kept_float,
            "prefix_model": prefix_entry["file"] if prefix_entry else None,
            "prefix": prefix_entry,
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
