"""int8 ONNX on CPUs without VNNI: the weights read as uint8, so no CPU clips a product.

onnxruntime multiplies uint8 activations by int8 weights (U8S8). On x86 CPUs without VNNI
(AVX2 ones, AVX-512 before Cascade Lake, AMD before Zen 4) it does so with ``VPMADDUBSW``,
which adds each pair of u8 x s8 products into a *saturating* int16: large activations that
meet large weights are clipped. VNNI CPUs accumulate in int32 and clip nothing. So one int8
model scored differently by CPU: a tiny Qwen3's int8 export kept the torch winner on 100%
of the probe pairs on an AVX-512-VNNI Xeon and on 93% on an AVX2-only EPYC (mean |diff|
0.12 against 0.55), which is how CI found it.

U8U8 (uint8 weights) has no saturating step on any x86 path; onnxruntime's quantization
guide gives it as the fix, beside 7-bit ``reduce_range`` weights (which quadrupled the
error on that Qwen3 here). The rewrite is lossless: ``w_u8 = w_s8 + 128`` with zero point
``zp + 128`` dequantizes to the very same floats, so on a VNNI CPU both give bit-equal
scores (measured: max |diff| 0.0 on the tiny decoders and the built-in default), and a CPU
without VNNI now computes the integers a VNNI one does. Where VNNI is there the file is
used as it is: U8U8 ran at 0.56x U8S8's speed on that Xeon (bench/int8_weights.py).

The edge folder stores its int8 file so (``rewrite_file``): its runners open it with a
plain onnxruntime, on whatever CPU the device has, and must reproduce the golden scores.

The rewritten copy is cached (``ARBITER_HOME/cache/int8-uint8/``, one entry per source
file, remade when its size or mtime changes, safe to delete): parsing costs a load about
0.6 s for the 24 MB default (most of it ``import onnx``) and more for large models, and a
cached copy opens as fast as the original.

``ARBITER_INT8_WEIGHTS`` overrides the choice: ``auto`` (default: by CPU), ``unsigned``
(always rewrite), ``signed`` (never: the file as it is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError, ModelError

log = logging.getLogger(__name__)

ENV = "ARBITER_INT8_WEIGHTS"
MODES = ("auto", "unsigned", "signed")
_MATMULS = {"MatMul", "Gemm"}
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
#: the cache of rewritten copies (engine.paths.data_dir()/cache/CACHE_DIR); bump the version
#: when the rewrite changes, so old copies are remade
CACHE_DIR, CACHE_VERSION = "int8-uint8", 1
#: protobuf's limit on one serialized graph; larger ones are written beside their data
_PROTO_LIMIT = 2**31 - 2**20


def vnni_flags(cpuinfo: str) -> set[str]:
    """The VNNI flags of a Linux ``/proc/cpuinfo`` text (AVX-512 VNNI, or the VEX AVX-VNNI)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[-1].split())
    return flags & {"avx512_vnni", "avx_vnni"}


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU does int8 dot products in int32 (VNNI); False where it cannot be told.

    Linux: ``/proc/cpuinfo`` (it lists AVX-VNNI, which numpy does not); elsewhere numpy's
    runtime dispatch table. Unknown counts as no: the rewrite is exact, only slower.
    """
    try:
        return bool(vnni_flags(Path("/proc/cpuinfo").read_text(errors="replace")))
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
    return bool(features.get("AVX512VNNI"))


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ModelError(f"{ENV}={value!r}: choose one of {', '.join(MODES)}")
    return value


def wanted() -> bool:
    """Whether int8 weights should be read as uint8 on this machine."""
    chosen = mode()
    if chosen != "auto":
        return chosen == "unsigned"
    return platform.machine().lower() in _X86 and not cpu_has_vnni()


def _consumers(graph: Any) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def _weight_sites(graph: Any) -> list[tuple[str, str | None, Any]]:
    """(weight, zero point, node) of every int8 initializer that a matmul multiplies.

    Static (QDQ) exports: ``DequantizeLinear(w, scale, zp)`` feeding MatMul/Gemm; dynamic
    ones: ``MatMulInteger``'s B (input 1) and its zero point (input 3).
    """
    from onnx import TensorProto

    inits = {t.name: t for t in graph.initializer}
    uses = _consumers(graph)
    sites = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and any(c.op_type in _MATMULS for c in uses[node.output[0]]):
            slot_w, slot_zp = 0, 2
        elif node.op_type == "MatMulInteger":
            slot_w, slot_zp = 1, 3
        else:
            continue
        w = node.input[slot_w] if len(node.input) > slot_w else ""
        zp = node.input[slot_zp] if len(node.input) > slot_zp and node.input[slot_zp] else None
        if w in inits and inits[w].data_type == TensorProto.INT8:
            sites.append((w, zp, node))
    return sites


def _shift(tensor: Any) -> None:
    """An int8 initializer, in place, as uint8 holding its value + 128."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor).astype(np.int16) + 128
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), tensor.name))


def _add_zero_point(graph: Any, node: Any, weight: str, inits: dict) -> None:
    """Give ``node`` an explicit uint8 zero point of 128 (an int8 tensor's implicit one is 0)."""
    from onnx import TensorProto, helper

    slot, scale = (2, node.input[1]) if node.op_type == "DequantizeLinear" else (3, None)
    name = f"{weight}_u8_zero_point"
    if name not in inits:  # a weight that two nodes read gets one zero point
        dims = list(inits[scale].dims) if scale in inits else []
        inits[name] = helper.make_tensor(name, TensorProto.UINT8, dims, [128] * int(np.prod(dims or [1])))
        graph.initializer.append(inits[name])
    inputs = [*node.input, *[""] * (slot + 1 - len(node.input))]
    inputs[slot] = name
    del node.input[:]
    node.input.extend(inputs)


def unsigned_weights(model: Any) -> int:
    """Store ``model``'s int8 matmul weights as uint8, in place; how many were rewritten.

    A weight or zero point that another node also reads is left as it is, with a
    warning: shifting it would change what that node computes.
    """
    from onnx import TensorProto

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = _consumers(graph)
    sites = _weight_sites(graph)
    rewriting = {id(node) for _, _, node in sites}
    done: set[str] = set()
    for w, zp, node in sites:
        others = [n.name for name in (w, zp) if name for n in uses[name] if id(n) not in rewriting]
        if others:
            log.warning("%s: %s is also read by %s; left int8", node.name, w, ", ".join(others))
            continue
        for name in (w, zp):
            if name and name not in done and inits[name].data_type == TensorProto.INT8:
                _shift(inits[name])
                done.add(name)
        if zp is None:
            _add_zero_point(graph, node, w, inits)
    return len({w for w, _, _ in sites} & done)


def _write(model: Any, path: Path, external: bool, location: str | None = None) -> None:
    """Save ``model`` at ``path``; ``external``: its weights in ``location`` beside it."""
    import onnx

    onnx.save(model, str(path), save_as_external_data=external, location=location or f"{path.name}_data")


def rewrite_file(path: Path) -> int:
    """``unsigned_weights`` on one ONNX file, saved over it; how many weights were rewritten.

    For files that other runtimes open as they are (the edge folder's ``runner.py``, the
    Node runner): there nothing reads them as uint8 on the way in, so they are stored so.
    A graph whose weights came in a data file beside it keeps them in a file of that name.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(path), load_external_data=False)  # parsed once; the layout read first
    locations = sorted({e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                        for e in t.external_data if e.key == "location"})
    if locations:
        load_external_data_for_model(model, str(path.parent))
    count = unsigned_weights(model)
    if count:
        for name in locations:  # onnx refuses to write over a data file (FileExistsError): start afresh
            (path.parent / name).unlink()
        _write(model, path, bool(locations), locations[0] if len(locations) == 1 else None)
    return count


def _how(count: int) -> str:
    return f"uint8 ({count} matmul weights rewritten: {'no VNNI on this CPU' if mode() == 'auto' else ENV})"


def _stamp(model_file: Path) -> dict:
    """What the cached copy was made from: a changed source (size, mtime) is rewritten again."""
    st = model_file.stat()
    return {"source": str(model_file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "version": CACHE_VERSION}


def cache_entry(model_file: Path) -> Path:
    """The cache folder of one source file: one entry per path, remade when the file changes."""
    from engine.paths import data_dir

    key = hashlib.sha256(str(model_file.resolve()).encode()).hexdigest()[:20]
    return data_dir() / "cache" / CACHE_DIR / key


def _cached(entry: Path, stamp: dict, name: str) -> int | None:
    """The rewritten weights' count of a current entry (0: nothing to rewrite), else None."""
    try:
        saved = json.loads((entry / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    if {k: saved.get(k) for k in stamp} != stamp or not isinstance(saved.get("count"), int):
        return None
    return saved["count"] if saved["count"] == 0 or (entry / name).is_file() else None


#: a half-written entry older than this was left by a killed process: removed by the next writer
STALE_WRITE_S = 3600


def _save(model: Any, entry: Path, name: str, stamp: dict, count: int) -> None:
    """Write the entry so that a reader never sees half of it: the graph first, the stamp last.

    Each writer works in its own ``.writing-*`` folder (several processes may open the same
    model at once); one that a kill -9 left behind is removed once it is an hour old.
    """
    entry.mkdir(parents=True, exist_ok=True)
    for old in entry.glob(".writing-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_WRITE_S:
                shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=entry))
    try:
        if count:
            big = model.ByteSize() >= _PROTO_LIMIT
            _write(model, tmp / name, big)
            if big:
                os.replace(tmp / f"{name}_data", entry / f"{name}_data")
            os.replace(tmp / name, entry / name)
        (tmp / "stamp.json").write_text(json.dumps({**stamp, "count": count}))
        os.replace(tmp / "stamp.json", entry / "stamp.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def session_source(model_file: Path) -> tuple[str | bytes, str]:
    """What to open ``model_file`` from, and how its int8 weights are read (for ModelInfo).

    The file's own path where nothing is rewritten. Otherwise the rewritten copy in the
    cache (``ARBITER_HOME/cache/int8-uint8/``; made once per source file, remade when it
    changes; safe to delete), so a large model is not parsed again at every load; where the
    cache cannot be written, the rewritten graph's bytes.
    """
    if not wanted():
        return str(model_file), "as stored"
    name, stamp = model_file.name, _stamp(model_file)
    try:
        entry: Path | None = cache_entry(model_file)
    except InputError as e:  # ARBITER_HOME unusable: rewrite in memory
        log.info("%s: no cache for the uint8 copy (%s)", model_file, e)
        entry = None
    count = _cached(entry, stamp, name) if entry else None
    if count is not None:  # a current copy: no parsing, not even onnx's import (0.6 s)
        return (str(entry / name), _how(count)) if count and entry else (str(model_file), "as stored")
    try:
        import onnx
    except ImportError:
        log.warning("%s: the onnx package is missing, so int8 weights cannot be read as uint8 on "
                    "this CPU (no VNNI): int8 scores may differ from other CPUs'. pip install onnx",
                    model_file)
        return str(model_file), "as stored (onnx package missing)"
    model = onnx.load(str(model_file))
    count = unsigned_weights(model)
    if count:
        log.info("%s: int8 weights read as %s", model_file, _how(count))
    try:
        if entry:
            _save(model, entry, name, stamp, count)
            return (str(entry / name), _how(count)) if count else (str(model_file), "as stored")
    except OSError as e:
        log.info("%s: the uint8 copy could not be cached (%s); rewritten in memory", model_file, e)
    if not count:
        return str(model_file), "as stored"
    if model.ByteSize() < _PROTO_LIMIT:
        return model.SerializeToString(), _how(count)
    raise ModelError(f"{model_file}: its uint8 copy is over 2 GB and the cache "
                     f"({entry or 'ARBITER_HOME'}) cannot be written; set ARBITER_HOME to a writable folder "
                     f"or {ENV}=signed")
