"""Read and validate a GGUF file's header without llama.cpp and without gguf-py.

Why our own reader: llama.cpp aborts the whole process on some malformed files, and
a truncated download must give a clear error instead. This reader walks the header
(key/values and tensor infos) and checks that every tensor's bytes lie inside the
file before llama.cpp ever sees it. It also reads Arbiter's metadata (the reward
head stored as key/values), which llama-cpp-python does not return for arrays. It
needs only the standard library and numpy, so an edge install without gguf-py (which
ships with the converter and its torch dependency) can still score.

Format (little-endian), GGUF v2/v3: magic ``GGUF``, version u32, n_tensors u64,
n_kv u64; n_kv key/values (string key, u32 type, value); n_tensors infos (name,
n_dims u32, dims u64[n_dims], ggml type u32, offset u64); padding to
``general.alignment`` (default 32); tensor data.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError

MAGIC = b"GGUF"
_SCALARS = {  # GGUF value type -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
          11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
#: arrays inside arrays: llama.cpp reads none, gguf-py a few levels; deeper is a damaged file
#: (a 5,000-deep one exhausted Python's recursion before this limit)
MAX_ARRAY_DEPTH = 8
#: numeric arrays up to this many elements are kept for every key (per-layer hyperparameters
#: such as head counts); longer ones (token scores) only when their prefix is asked for
SMALL_ARRAY = 4096
#: a tensor larger than this many bytes cannot exist (ggml counts bytes in int64)
MAX_TENSOR_BYTES = 1 << 62

#: ggml tensor type -> (elements per block, bytes per block); checked against gguf-py in the tests
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order (fastest-varying first)
    ggml_type: int
    offset: int  # absolute, in the file
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, Any]  # arrays of skipped keys hold only their length (an int)
    tensors: dict[str, TensorInfo]
    #: GGUF value type of each key: ``(type,)``, or ``(9, element type)`` for an array
    types: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """``{architecture}.{suffix}``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: truncated or corrupt GGUF file ({what} at byte {self.pos} "
                          f"of {self.size}). Download or export it again.")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str, limit: int = 1 << 28) -> str:
        n = self.scalar("<Q", what)
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8") from e

    def skip_string(self, what: str) -> None:
        self.take(self.scalar("<Q", what), what)

    def value(self, vtype: int, key: str, keep: bool, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"value of {key}")
        if vtype == _STRING:
            return self.string(f"value of {key}")
        if vtype != _ARRAY:
            raise self.fail(f"unknown value type {vtype} for {key}")
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(f"array {key} is nested more than {MAX_ARRAY_DEPTH} deep")
        etype, count = self.scalar("<I", f"array type of {key}"), self.scalar("<Q", f"length of {key}")
        if count > self.size:
            raise self.fail(f"array {key} claims {count} elements")
        if etype in _NUMPY:
            itemsize = np.dtype(_NUMPY[etype]).itemsize
            start = self.take(itemsize * count, f"array {key}")
            if not keep and (count > SMALL_ARRAY or key.startswith("tokenizer.")):
                return count
            return np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=start).copy()
        if etype == _STRING:
            if not keep:
                for _ in range(count):
                    self.skip_string(f"array {key}")
                return count
            return [self.string(f"array {key}") for _ in range(count)]
        if etype == _ARRAY:
            return [self.value(_ARRAY, key, keep, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown array element type {etype} for {key}")

    def kind(self, vtype: int, key: str) -> tuple[int, ...]:
        """The type signature of a value about to be read (peeks at an array's element type)."""
        if vtype != _ARRAY or self.pos + 4 > self.size:
            return (vtype,)
        return (vtype, struct.unpack_from("<I", self.buf, self.pos)[0])


def _tensor_bytes(cur: _Cursor, name: str, shape: tuple[int, ...], ttype: int) -> int:
    """Bytes of a tensor's data; a ModelError for an unknown type or a shape that cannot be."""
    if ttype not in GGML_BLOCKS:
        raise ModelError(f"{cur.path}: tensor {name} has ggml type {ttype}, which this version "
                         "of Arbiter does not know; update Arbiter or re-quantize the model")
    per_block, block_bytes = GGML_BLOCKS[ttype]
    n = math.prod(shape)  # Python ints: a product of huge dims must not wrap around
    if shape and shape[0] % per_block:
        raise cur.fail(f"tensor {name} row of {shape[0]} is not a whole number of blocks")
    n_bytes = n // per_block * block_bytes
    if n_bytes > MAX_TENSOR_BYTES:
        raise cur.fail(f"tensor {name} claims shape {list(shape)}")
    return n_bytes


def read_header(path: Path | str, *, keep_arrays: Iterable[str] = ("arbiter.",)) -> GgufHeader:
    """Parse and validate ``path``; arrays are materialised only for keys with these prefixes.

    Raises :class:`ModelError` naming the file and the byte offset for anything that
    would make llama.cpp read outside the file.
    """
    path = Path(path)
    prefixes = tuple(keep_arrays)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise ModelError(f"{path}: {size} bytes; too small to be a GGUF file")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e})") from e
    try:
        cur = _Cursor(buf, path)
        if buf[:4] != MAGIC:
            raise ModelError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        cur.pos = 4
        version = cur.scalar("<I", "version")
        if version not in (2, 3):
            raise ModelError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = cur.scalar("<Q", "tensor count"), cur.scalar("<Q", "key count")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise cur.fail(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        meta: dict[str, Any] = {}
        types: dict[str, tuple[int, ...]] = {}
        for _ in range(n_kv):
            key = cur.string("key", limit=1 << 16)
            if key in meta:
                raise cur.fail(f"key {key} appears twice")
            vtype = cur.scalar("<I", f"type of {key}")
            types[key] = cur.kind(vtype, key)
            meta[key] = cur.value(vtype, key, keep=key.startswith(prefixes) or vtype != _ARRAY)
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = cur.string("tensor name", limit=1 << 16)
            n_dims = cur.scalar("<I", f"dims of {name}")
            if n_dims > 8:
                raise cur.fail(f"tensor {name} has {n_dims} dimensions")
            shape = tuple(cur.scalar("<Q", f"shape of {name}") for _ in range(n_dims))
            raw.append((name, shape, cur.scalar("<I", f"type of {name}"), cur.scalar("<Q", f"offset of {name}")))
        align = meta.get("general.alignment", 32)
        if type(align) is not int or align <= 0 or align & (align - 1):
            raise cur.fail(f"alignment {align!r} is not a power of two")
        data_start = -(-cur.pos // align) * align
        tensors: dict[str, TensorInfo] = {}
        for name, shape, ttype, offset in raw:
            if name in tensors:
                raise cur.fail(f"tensor {name} appears twice")
            n_bytes = _tensor_bytes(cur, name, shape, ttype)
            start = data_start + offset
            if offset % align or start + n_bytes > size:
                cur.pos = min(start, size)
                raise cur.fail(f"tensor {name} ({n_bytes} bytes) lies outside the file")
            tensors[name] = TensorInfo(name, shape, ttype, start, n_bytes)
        return GgufHeader(path, version, meta, tensors, types)
    finally:
        buf.close()


# ---- what llama.cpp asserts on ------------------------------------------------------------
# llama.cpp's loader checks most hyperparameters against the tensor shapes and fails politely,
# but a few it asserts on (GGML_ASSERT: SIGABRT, the whole process dies) or only meets at decode
# time: block_count outside 1..512 (asserted at load), a NaN or negative epsilon (asserted in
# the norm kernel), a zero head_count_kv (an integer division), expert counts. Found by
# mutating the built-in model's GGUF and loading it in a child process (tests/test_model_files.py).

LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 256
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
#: tokenizer.ggml.* special-token ids; each must be a token of the vocabulary
SPECIAL_TOKEN_KEYS = ("bos", "eos", "unknown", "seperator", "padding", "mask", "cls", "eot", "eom")
_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
          9: "array", 10: "u64", 11: "i64", 12: "f64"}


def _bad(header: GgufHeader, key: str, problem: str) -> ModelError:
    return ModelError(f"{header.path}: GGUF key '{key}': {problem}. The file is damaged or was not "
                      "written for this llama.cpp; download or export it again.")


def _stored_as(header: GgufHeader, key: str) -> str:
    sig = header.types.get(key, ())
    names = [_NAMES.get(t, str(t)) for t in sig]
    return " of ".join(names) if names else type(header.get(key)).__name__


def _int(header: GgufHeader, key: str, lo: int, hi: int, *, required: bool = False,
         default: int | None = None) -> int | None:
    """An integer key in ``[lo, hi]``; a ModelError naming the key otherwise."""
    if key not in header.metadata:
        if required:
            raise _bad(header, key, "missing (llama.cpp requires it)")
        return default
    v = header.metadata[key]
    if type(v) is not int or (header.types and header.types.get(key, (4,))[0] not in _INT_TYPES):
        raise _bad(header, key, f"stored as {_stored_as(header, key)}, expected an integer")
    if not lo <= v <= hi:
        raise _bad(header, key, f"{v} is outside {lo}..{hi}")
    return v


def _float(header: GgufHeader, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    """A finite number key in ``[lo, hi)`` (``(lo, hi)`` with ``lo_open``)."""
    if key not in header.metadata:
        return None
    v = header.metadata[key]
    if type(v) not in (int, float):
        raise _bad(header, key, f"stored as {_stored_as(header, key)}, expected a number")
    if not math.isfinite(v) or not (lo < v if lo_open else lo <= v) or not v < hi:
        raise _bad(header, key, f"{v} is not a finite number in {'(' if lo_open else '['}{lo}, {hi})")
    return float(v)


def _per_layer(header: GgufHeader, key: str, n_layer: int, lo: int, hi: int) -> list[int] | None:
    """A key llama.cpp reads as one integer or one per layer (head counts, feed-forward sizes)."""
    if key not in header.metadata:
        return None
    v = header.metadata[key]
    if not isinstance(v, np.ndarray):
        return [_int(header, key, lo, hi)] * n_layer  # type: ignore[list-item]
    if v.dtype.kind not in "iu" or v.ndim != 1 or len(v) != n_layer:
        raise _bad(header, key, f"an array of {len(v)} {v.dtype} values; expected one integer or "
                                f"{n_layer} (one per layer)")
    if len(v) and (int(v.min()) < lo or int(v.max()) > hi):
        raise _bad(header, key, f"values outside {lo}..{hi}")
    return [int(x) for x in v]


def _str(header: GgufHeader, key: str, choices: Iterable[str] | None = None) -> str | None:
    if key not in header.metadata:
        return None
    v = header.metadata[key]
    if not isinstance(v, str):
        raise _bad(header, key, f"stored as {_stored_as(header, key)}, expected a string")
    if choices is not None and v not in tuple(choices):
        raise _bad(header, key, f"{v!r} is not one of {', '.join(choices)}")
    return v


def _bool(header: GgufHeader, key: str) -> bool | None:
    if key not in header.metadata:
        return None
    v = header.metadata[key]
    if type(v) is not bool:
        raise _bad(header, key, f"stored as {_stored_as(header, key)}, expected a bool")
    return v


def _no_nested_arrays(header: GgufHeader) -> None:
    for key, sig in header.types.items():
        if sig == (_ARRAY, _ARRAY):
            raise _bad(header, key, "an array of arrays, which llama.cpp cannot read")


def check_llama_hparams(header: GgufHeader) -> None:
    """Refuse, with a ModelError naming the file and key, what would make llama.cpp abort.

    Checked: the keys llama.cpp requires (context_length, embedding_length, block_count) are
    integers in range; head counts, feed-forward sizes, rope and expert keys are well typed and
    consistent; every epsilon is finite and in [0, 1); the vocabulary matches the token
    embedding's rows, holds no token twice (llama.cpp asserts on a duplicate; the header must
    have been read with ``tokenizer.ggml.tokens`` kept) and every special-token id is a token of it.
    """
    _no_nested_arrays(header)
    arch = _str(header, "general.architecture")
    if not arch:
        raise _bad(header, "general.architecture", "missing or empty")
    a = f"{arch}."
    n_layer = _int(header, a + "block_count", 1, LLAMA_MAX_LAYERS, required=True)
    _int(header, a + "context_length", 1, 1 << 24, required=True)  # tokens
    n_embd = _int(header, a + "embedding_length", 1, 1 << 20, required=True)
    assert n_layer is not None and n_embd is not None
    _per_layer(header, a + "feed_forward_length", n_layer, 0, 1 << 24)
    heads = _per_layer(header, a + "attention.head_count", n_layer, 0, 1 << 16)
    kv = _per_layer(header, a + "attention.head_count_kv", n_layer, 0, 1 << 16)
    if heads and kv:
        for il, (h, k) in enumerate(zip(heads, kv, strict=True)):
            if h and not (k and h % k == 0):  # llama.cpp divides n_head by n_head_kv
                raise _bad(header, a + "attention.head_count_kv",
                           f"{k} in layer {il} does not divide the {h} attention heads")
    for suffix in ("attention.key_length", "attention.value_length"):
        _int(header, a + suffix, 1, 1 << 16)
    _int(header, a + "rope.dimension_count", 0, 1 << 16)
    _float(header, a + "rope.freq_base", 0.0, math.inf, lo_open=True)
    _float(header, a + "rope.scaling.factor", 0.0, math.inf)
    _str(header, a + "rope.scaling.type", ROPE_SCALING_TYPES)
    _check_experts(header, a)
    _int(header, a + "pooling_type", 0, 4)  # llama_pooling_type: none, mean, cls, last, rank
    _bool(header, a + "attention.causal")
    for key in header.metadata:  # layer_norm_epsilon, layer_norm_rms_epsilon, ...
        if key.startswith(a) and key.endswith("epsilon"):
            _float(header, key, 0.0, 1.0)
    _check_vocab(header, n_embd)


def _check_experts(header: GgufHeader, a: str) -> None:
    n_expert = _int(header, a + "expert_count", 0, LLAMA_MAX_EXPERTS, default=0) or 0
    used = _int(header, a + "expert_used_count", 0, n_expert, default=0) or 0
    groups = _int(header, a + "expert_group_count", 0, max(n_expert - 1, 0), default=0) or 0
    if n_expert and not used:
        raise _bad(header, a + "expert_used_count", f"0 of {n_expert} experts used")
    if groups > 1 and n_expert % groups:
        raise _bad(header, a + "expert_group_count", f"{groups} groups do not divide {n_expert} experts")
    if groups > 1:
        _int(header, a + "expert_group_used_count", 1, groups - 1, required=True)


def _check_vocab(header: GgufHeader, n_embd: int) -> None:
    tokens = header.get("tokenizer.ggml.tokens")
    n_vocab = tokens if type(tokens) is int else len(tokens) if isinstance(tokens, list) else None
    if "tokenizer.ggml.tokens" in header.metadata and header.types.get("tokenizer.ggml.tokens") != (_ARRAY, _STRING):
        raise _bad(header, "tokenizer.ggml.tokens", f"stored as {_stored_as(header, 'tokenizer.ggml.tokens')}, "
                                                    "expected an array of strings")
    if n_vocab is not None and n_vocab < 1:
        raise _bad(header, "tokenizer.ggml.tokens", "an empty vocabulary")
    if isinstance(tokens, list) and len(set(tokens)) != n_vocab:  # llama.cpp asserts on this
        raise _bad(header, "tokenizer.ggml.tokens", f"{n_vocab - len(set(tokens))} tokens appear twice")
    emb = header.tensors.get("token_embd.weight")
    if emb is not None and n_vocab is not None and len(emb.shape) >= 2 and emb.shape[1] != n_vocab:
        raise _bad(header, "tokenizer.ggml.tokens", f"{n_vocab} tokens, but token_embd.weight has "
                                                    f"{emb.shape[1]} rows")
    hi = (n_vocab - 1) if n_vocab else (1 << 31) - 1
    for name in SPECIAL_TOKEN_KEYS:
        _int(header, f"tokenizer.ggml.{name}_token_id", 0, hi)
    _int(header, "tokenizer.ggml.token_type_count", 0, 1 << 16)
    del n_embd  # checked against the tensors by llama.cpp itself (a polite error)


# ---- Arbiter's own key/values ------------------------------------------------------------

def reward_head(header: GgufHeader) -> tuple[np.ndarray, float]:
    """``arbiter.head.weight`` / ``bias`` as float64, checked: numbers, finite, the hidden size.

    A NaN head would score every input NaN with exit code 0; a head stored as strings or of
    the wrong length is a damaged export. Both are refused here, naming the file and key.
    """
    key = "arbiter.head.weight"
    w = header.get(key)
    if not isinstance(w, np.ndarray) or w.dtype.kind not in "fiu" or w.ndim != 1:
        raise _bad(header, key, f"stored as {_stored_as(header, key)}, expected an array of numbers")
    n_embd = header.arch_key("embedding_length")
    if type(n_embd) is int and w.shape != (n_embd,):
        raise _bad(header, key, f"{w.size} values, but the model's hidden size is {n_embd}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise _bad(header, key, f"{int((~np.isfinite(w)).sum())} values are NaN or infinite")
    bias = _float(header, "arbiter.head.bias", -math.inf, math.inf)
    return w, bias or 0.0


def length_correction(header: GgufHeader) -> float:
    """``arbiter.length_correction`` (beta, see engine/scorer.py): finite, 0 when absent."""
    return _float(header, "arbiter.length_correction", -math.inf, math.inf) or 0.0


def check_arbiter_meta(header: GgufHeader) -> None:
    """Arbiter's key/values, typed: what the GGUF backend reads from them cannot be garbage."""
    if "arbiter.head.weight" in header.metadata:
        reward_head(header)
    length_correction(header)
    _int(header, "arbiter.max_length", 1, 1 << 24)
    _int(header, "arbiter.pad_token_id", 0, (1 << 31) - 1)
    _int(header, "general.file_type", 0, 1 << 16)
    for key in ("arbiter.add_bos", "arbiter.add_eos", "tokenizer.ggml.add_bos_token", "arbiter.pooler_restored"):
        _bool(header, key)
    for key in ("arbiter.architecture", "arbiter.pooling", "arbiter.token_types", "tokenizer.chat_template"):
        _str(header, key)


def read_model_header(path: Path | str) -> GgufHeader:
    """The header of a GGUF that is safe to hand to llama.cpp (the GGUF backend, ``models add``)."""
    header = read_header(path, keep_arrays=("arbiter.", "tokenizer.ggml.tokens"))
    check_llama_hparams(header)
    check_arbiter_meta(header)
    return header
