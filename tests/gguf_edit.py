"""Rewrite one key/value of a real GGUF file: the corrupt files the model-file tests need.

Why a writer of our own: gguf-py's writer cannot produce the files llama.cpp chokes on
(a block count of 0xFFFFFFFF, a head stored as strings, an array nested 5,000 deep),
and patching bytes in place only works when the new value has the old one's size. This
keeps every other byte: the key/values and tensor infos are copied as they are, the
padding before the tensor data is recomputed, and the data section (whose offsets are
relative to its start) is copied unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
U32, I32, F32, F64, U64, BOOL = 4, 5, 6, 12, 10, 7


@dataclass
class Layout:
    """Where a GGUF's parts lie: key/value byte spans by key, tensor infos, data start."""

    raw: bytes
    version: int
    n_tensors: int
    kvs: dict[str, bytes]  # key -> its whole entry (key, type, value), in file order
    infos: bytes  # every tensor info, as written
    data: bytes  # from the aligned data start to the end of the file
    alignment: int


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype in _SIZES:
        return pos + _SIZES[vtype]
    if vtype == STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    etype, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    for _ in range(count):
        pos = _skip_value(buf, pos, etype)
    return pos


def layout(path: Path) -> Layout:
    buf = Path(path).read_bytes()
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos, kvs, align = 24, {}, 32
    for _ in range(n_kv):
        start = pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        key = buf[pos + 8:pos + 8 + n].decode()
        (vtype,) = struct.unpack_from("<I", buf, pos + 8 + n)
        pos = _skip_value(buf, pos + 12 + n, vtype)
        kvs[key] = buf[start:pos]
        if key == "general.alignment":
            (align,) = struct.unpack_from("<I", buf, pos - 4)
    info_start = pos
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    data_start = -(-pos // align) * align
    return Layout(buf, version, n_tensors, kvs, buf[info_start:pos], buf[data_start:], align)


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(vtype: int, v: Any) -> bytes:
    """The bytes of a value; arrays are ``(element type, [elements])``."""
    if vtype in _FMT:
        return struct.pack(_FMT[vtype], v)
    if vtype == STRING:
        return string(v)
    etype, items = v
    return struct.pack("<IQ", etype, len(items)) + b"".join(value(etype, x) for x in items)


def entry(key: str, vtype: int, v: Any) -> bytes:
    return string(key) + struct.pack("<I", vtype) + value(vtype, v)


def nested_array(depth: int) -> bytes:
    """An array of one array of one array ... of one u8, ``depth`` levels deep (value bytes only)."""
    out = struct.pack("<IQ", 0, 1) + b"\x00"
    for _ in range(depth - 1):
        out = struct.pack("<IQ", ARRAY, 1) + out
    return out


def build(lay: Layout, kvs: dict[str, bytes]) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", lay.version, lay.n_tensors, len(kvs))
    head += b"".join(kvs.values()) + lay.infos
    head += b"\x00" * (-len(head) % lay.alignment)
    return head + lay.data


def with_kv(src: Path, dst: Path, key: str, vtype: int | None, v: Any = None, *,
            raw_value: bytes | None = None) -> Path:
    """``src`` with ``key`` set to ``v`` (type ``vtype``), or removed when ``vtype`` is None."""
    lay = layout(src)
    kvs = dict(lay.kvs)
    if vtype is None:
        kvs.pop(key, None)
    else:
        body = raw_value if raw_value is not None else value(vtype, v)
        kvs[key] = string(key) + struct.pack("<I", vtype) + body
    dst = Path(dst)
    dst.write_bytes(build(lay, kvs))
    return dst


@dataclass(frozen=True)
class Field:
    """One fixed-size number in a GGUF header a fuzzer may rewrite: where, how wide, what."""

    offset: int
    size: int  # bytes
    what: str  # "count", "type", "value", "dims", "shape", "offset"


def fields(path: Path) -> tuple[list[Field], int]:
    """Every count, type tag, scalar value and tensor-info number of the header; and the data start."""
    buf = Path(path).read_bytes()
    out = [Field(8, 8, "count"), Field(16, 8, "count")]
    (n_tensors, n_kv) = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", buf, pos)
        out.append(Field(pos, 8, "count"))  # the key's length
        pos += 8 + n
        (vtype,) = struct.unpack_from("<I", buf, pos)
        out.append(Field(pos, 4, "type"))
        pos += 4
        if vtype == ARRAY:
            out += [Field(pos, 4, "type"), Field(pos + 4, 8, "count")]
        elif vtype in _SIZES:
            out.append(Field(pos, _SIZES[vtype], "value"))
        pos = _skip_value(buf, pos, vtype)
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        out.append(Field(pos, 4, "dims"))
        out += [Field(pos + 4 + 8 * i, 8, "shape") for i in range(n_dims)]
        pos += 4 + 8 * n_dims
        out += [Field(pos, 4, "type"), Field(pos + 4, 8, "offset")]
        pos += 12
    return out, pos
