"""Bases in (HF folder or GGUF file), reward-model folders out.

Whatever the base, the trained model is scored by the engine, so it is tokenized by
the engine: :class:`engine.encoding.Encoder` on the same tokenizer files, the same
chat template rendering, the same cross-encoder pair encoding and truncation. The
saved folder is what ``exports/onnx.py`` and the engine's TorchScorer read:
safetensors only, ``tokenizer.json``, a config with ``pad_token_id``, and
``arbiter.json`` (for cross-encoders ``token_types: "zeros"``, so every runtime
feeds the same all-zero segment ids the model was trained with).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.encoding import Encoder, TokenizerFiles
from engine.errors import ModelError
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, read_meta, write_meta
from trainer.bt import lora as _lora
from trainer.bt.config import TrainConfig

log = logging.getLogger(__name__)

#: text-side files copied next to the trained weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.txt")
DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "fp64": torch.float64}  # bf16: autocast, fp32 master


@dataclass
class Base:
    """A loaded base: the model, the engine's encoder for it, and where its tokenizer lives."""

    model: Any
    encoder: Encoder
    tokenizer_dir: Path
    source: str

    @property
    def kind(self) -> str:
        return self.encoder.kind  # "chat" (decoder, template) or "pair" (cross-encoder)


def _dropout_overrides(config: Any, p: float) -> dict[str, float]:
    return {k: p for k, v in config.to_dict().items()
            if "dropout" in k and isinstance(v, float) and not k.endswith("_rate")}


def load_base(base: str | Path, cfg: TrainConfig, *, work_dir: Path) -> Base:
    """Build a one-label ``AutoModelForSequenceClassification`` from ``base``.

    ``base`` is an HF folder with safetensors (never pickles) or a ``.gguf`` file;
    ``work_dir`` receives the tokenizer folder converted out of a GGUF.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    src = Path(base)
    dtype = DTYPES[resolve_precision(cfg.precision)]
    if src.is_file() and src.suffix == ".gguf":
        from trainer.bt import gguf_base

        tok_dir = gguf_base.save_tokenizer(src, work_dir / "gguf-tokenizer")
        model = gguf_base.load_model(src, num_labels=heads(cfg))
        if cfg.dropout is not None:
            for k, v in _dropout_overrides(model.config, cfg.dropout).items():
                setattr(model.config, k, v)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
        model = model.to(dtype)
    elif src.is_dir():
        if not any(src.glob("*.safetensors")):
            raise ModelError(f"{src}: no .safetensors weights; Arbiter never loads pickled weights "
                             "(.bin/.pt can run code). Convert them to safetensors first.")
        config = AutoConfig.from_pretrained(src)
        extra = _dropout_overrides(config, cfg.dropout) if cfg.dropout is not None else {}
        if _has_other_head(config, heads(cfg)):
            # a reward model trained with another number of outputs (length_head adds one): its
            # score head cannot be loaded into this shape, so a fresh head is trained
            log.warning("%s: its score head has %d output(s), this run trains %d; the head is "
                        "initialised fresh (the body is kept)", src, config.num_labels, heads(cfg))
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                src, num_labels=heads(cfg), use_safetensors=True, dtype=dtype,
                ignore_mismatched_sizes=True, **extra)
        except (OSError, ValueError) as e:
            raise ModelError(f"{src}: transformers cannot build a sequence classifier from it ({e})") from e
        tok_dir = src
    else:
        raise ModelError(f"{src}: not an HF model folder or a .gguf file")
    files = TokenizerFiles.from_folder(tok_dir, read_meta(tok_dir))
    if files.chat_template is None:
        files = dataclasses.replace(files, token_types=cfg.token_types)
    encoder = Encoder(files, min(cfg.max_length, files.max_length))
    if model.config.pad_token_id is None:
        # HF pools the last token that is not pad_token_id; right padding makes that the real last token
        model.config.pad_token_id = encoder.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return Base(model, encoder, tok_dir, str(src))


def _has_other_head(config: Any, n_outputs: int) -> bool:
    """Whether ``config`` is a sequence classifier whose head has another number of outputs."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels != n_outputs


def heads(cfg: TrainConfig) -> int:
    """Outputs of the head while training: 2 with the length head (trainer/bt/length_head.py), else 1."""
    return 2 if cfg.length_head else 1


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def save_reward_model(model: Any, base: Base, out: Path, *, state_dict: dict[str, Any] | None = None,
                      extra_meta: dict[str, Any] | None = None) -> Path:
    """An HF folder the engine and the exporters accept (safetensors, float32, one label).

    A model trained with the length head has two outputs; only the quality one is saved.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    config = model.config
    trained_heads = config.num_labels
    adapter: dict[str, Any] | None = None
    if _lora.lora_modules(model):  # the merged weights here, the adapter beside them
        adapter = _lora.adapter_tensors(model, sd)
        sd = _lora.merged_state_dict(model, sd)
    if trained_heads == 2:
        from trainer.bt.length_head import quality_only

        sd = quality_only(sd, model)
        adapter = quality_only(adapter, model) if adapter is not None else None
    elif trained_heads != 1:
        raise ModelError(f"a reward model has one output (or two with the length head), not {trained_heads}")
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    saved_dtype = getattr(config, "dtype", None)
    config.dtype = torch.float32
    config.num_labels = 1
    try:
        model.save_pretrained(out, state_dict=sd, safe_serialization=True)
    finally:
        config.dtype = saved_dtype
        config.num_labels = trained_heads
    for name in TOKENIZER_FILES:
        f = base.tokenizer_dir / name
        if f.is_file() and f.resolve() != (out / name).resolve():
            shutil.copyfile(f, out / name)
    enc = base.encoder
    meta: dict[str, Any] = {
        "architecture": type(model).__name__,
        "pooling": DECODER_POOLING if enc.kind == "chat" else ENCODER_POOLING,
        "max_length": enc.max_length,
        "pad_token_id": int(model.config.pad_token_id),
        "dtype": "fp32",
        "source": base.source,
    }
    if enc.kind == "pair":
        meta["token_types"] = enc.files.token_types
    if trained_heads == 2:
        meta["trained_with_length_head"] = True  # its length output was dropped here
    if adapter is not None:
        meta["lora"] = _lora.save_adapter(model, out, adapter)
    meta.update(extra_meta or {})
    write_meta(out, meta)
    return out
