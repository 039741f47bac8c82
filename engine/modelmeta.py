"""``arbiter.json``: what an export writes next to the model so the engine needs no guessing.

Fields (all optional; a plain optimum export without the file loads too):
``architecture``, ``pooling`` (last | cls), ``chat_template``, ``max_length``,
``pad_token_id``, ``token_types`` (segment | zeros), ``dtype`` (fp32, int8, ...),
``source`` and ``source_sha256`` (the HF checkpoint it came from), ``versions``
(the exporter's package versions), ``prefix_model`` and ``prefix`` (ONNX decoders: the
with-past graph whose head is the score head, used to share a prompt across Best-of-N
candidates). GGUF files carry the same facts as ``arbiter.*`` key/values instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engine.errors import ModelError

META_FILE = "arbiter.json"
DECODER_POOLING = "last"
ENCODER_POOLING = "cls"


#: arbiter.json fields and what each must be; other fields (trainer notes) pass unchecked
_META_TYPES: dict[str, tuple[type, ...]] = {
    "architecture": (str,), "pooling": (str,), "chat_template": (str,), "dtype": (str,),
    "source": (str,), "source_sha256": (str,), "prefix_model": (str,), "max_length": (int,),
    "pad_token_id": (int,), "length_correction": (int, float), "versions": (dict,),
}
TOKEN_TYPES = ("segment", "zeros")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def read_json_object(path: Path, *, what: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object: ``{}`` when absent, a ModelError naming it when not."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: not valid JSON ({e}){what}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {_type_name(data)}{what}")
    return data


def meta_field_error(path: Path, field: str, value: Any, expected: str) -> ModelError:
    return ModelError(f"{path}: field '{field}': {_type_name(value)} ({value!r:.60}), expected {expected}; "
                      "re-export the model or fix the file")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The fields the engine reads, typed; a NaN or infinite length correction is refused."""
    for key, types in _META_TYPES.items():
        if meta.get(key) is None:  # null is what an export writes for "not set"
            continue
        v = meta[key]
        if type(v) not in types:  # type(), not isinstance: a JSON true is not the integer 1
            raise meta_field_error(path, key, v, " or ".join(_type_name(t()) for t in types))
    beta = meta.get("length_correction")
    if beta is not None and not math.isfinite(beta):
        raise meta_field_error(path, "length_correction", beta, "a finite number")
    if meta.get("max_length") is not None and meta["max_length"] < 1:
        raise meta_field_error(path, "max_length", meta["max_length"], "a positive number of tokens")
    if meta.get("token_types") not in (None, *TOKEN_TYPES):
        raise meta_field_error(path, "token_types", meta["token_types"], "'segment' or 'zeros'")


def read_meta(folder: Path) -> dict[str, Any]:
    """``arbiter.json``, checked: every field the engine reads has its type (see _META_TYPES)."""
    path = Path(folder) / META_FILE
    meta = read_json_object(path, what="; re-export the model or delete the file")
    _check_meta(path, meta)
    return meta


def write_meta(folder: Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / META_FILE
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


#: config.json fields the engine reads, and their types (None is allowed for each)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "architectures": (list,), "max_position_embeddings": (int,), "pad_token_id": (int,),
    "num_labels": (int,),
}


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json``, checked: an object whose fields the engine reads are typed."""
    path = Path(folder) / "config.json"
    cfg = read_json_object(path)
    for key, types in _CONFIG_TYPES.items():
        v = cfg.get(key)
        if v is not None and type(v) not in types:
            raise meta_field_error(path, key, v, " or ".join(_type_name(t()) for t in types))
    archs = cfg.get("architectures")
    if archs is not None and not all(isinstance(a, str) for a in archs):
        raise meta_field_error(path, "architectures", archs, "a list of class names")
    return cfg


def architecture_of(folder: Path, meta: dict[str, Any] | None = None) -> str:
    meta = meta if meta is not None else read_meta(folder)
    if meta.get("architecture"):
        return str(meta["architecture"])
    archs = read_config(folder).get("architectures") or ["unknown"]
    return str(archs[0])
