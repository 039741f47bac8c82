"""Can this machine run llama.cpp's extra CPU buffer types (AMX, repacked q4/q8) safely?

Those buffers hold weights in layouts for faster CPU kernels (Intel AMX tiles, the
interleaved "repack" formats). They are what makes quantized models fast on a CPU
that has the instructions, and llama.cpp turns them on by default. But a build can
carry kernels the machine cannot run: a llama-cpp-python wheel compiled with
``-march=native`` on a host that reports AMX, then run in a VM that exposes the AMX
tile state but not AMX-INT8, dies with SIGSEGV at the first ``ldtilecfg`` in
``ggml_backend_amx_mul_mat`` (measured on this project's 2-core dev VM: every q8_0
model, including through the high-level ``Llama()``). A crash kills the whole
process, GUI included, so it cannot be caught in-process.

So the engine asks once, in a child process: load the model with extra buffers on and
decode a few tokens. Exit 0: turn them on. A signal, an error or a timeout: leave them
off (llama.cpp's plain CPU kernels, always safe). The answer is cached per llama.cpp
build, CPU and weight type in ``<data dir>/gguf-probe.json``; ``ARBITER_GGUF_EXTRA_BUFTS=1|0``
overrides it.

Run by the engine as ``python -m engine.backends.gguf_probe MODEL.gguf``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)
ENV = "ARBITER_GGUF_EXTRA_BUFTS"
TIMEOUT_S = 120
_lock = threading.Lock()
_quiet = None  # the child's log callback (a ctypes object must outlive every call to it)
_memo: dict[str, bool] = {}  # this process's answers: one probe per key, whatever the data dir


@functools.cache
def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


@functools.cache
def _build_fingerprint() -> str:
    """llama-cpp-python's version and the identity of its shared libraries (a rebuild changes it)."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in lib.glob("*.so*")) if lib.is_dir() else []
    return f"{llama_cpp.__version__}|{libs}"


def cache_key(file_type: int | str) -> str:
    h = hashlib.sha256(f"{_build_fingerprint()}|{_cpu_fingerprint()}|{file_type}".encode())
    return h.hexdigest()[:24]


def _cache_file() -> Path:
    from engine.paths import data_dir

    return data_dir() / "gguf-probe.json"


def run_probe(path: Path) -> tuple[bool, str]:
    """Load ``path`` with extra buffers on and decode, in a child process. (ok, what happened)."""
    cmd = [sys.executable, "-m", "engine.backends.gguf_probe", str(path)]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return False, f"no answer in {TIMEOUT_S} s"
    if proc.returncode == 0:
        return True, "decoded"
    why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return False, why + (f" ({tail[0][:200]})" if tail else "")


def extra_bufts_allowed(path: Path, file_type: int | str) -> bool:
    """Whether to load ``path`` with llama.cpp's extra CPU buffer types (see the module doc)."""
    env = os.environ.get(ENV)
    if env in ("0", "1"):
        return env == "1"
    if str(file_type) in ("0", "1", "32"):  # f32 / f16 / bf16: no repacked layouts, nothing to gain or risk
        return False
    key = cache_key(file_type)
    with _lock:
        if key in _memo:
            return _memo[key]
        cache_path = _cache_file()
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            _memo[key] = bool(cache[key]["ok"])
            return _memo[key]
        ok, what = run_probe(path)
        if not ok:
            log.warning("llama.cpp's fast CPU kernels (AMX / repacked weights) crash on this machine (%s); "
                        "using its plain kernels. Set %s=1 to force them on.", what, ENV)
        cache[key] = {"ok": ok, "what": what, "file_type": str(file_type), "probe_model": str(path)}
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_path)
        _memo[key] = ok
        return ok


def _child(path: str) -> int:
    """The probe itself: what the engine does, with the extra buffers on."""
    import llama_cpp
    import numpy as np

    global _quiet
    _quiet = llama_cpp.llama_log_callback(lambda *a: None)  # kept alive: llama.cpp calls it later
    llama_cpp.llama_log_set(_quiet, None)
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = True
    mp.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    if not model:
        return 3
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 64
    cp.embeddings = True
    cp.n_threads = cp.n_threads_batch = min(2, os.cpu_count() or 1)
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        return 4
    n = 48  # a prompt-sized matmul (the batched kernels), not just a one-token one
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    vocab = llama_cpp.llama_n_vocab(llama_cpp.llama_model_get_vocab(model))
    np.ctypeslib.as_array(batch.token, shape=(n,))[:] = np.arange(n) % max(1, min(vocab, 1000)) + 1
    np.ctypeslib.as_array(batch.pos, shape=(n,))[:] = np.arange(n)
    np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
    np.ctypeslib.as_array(batch.logits, shape=(n,))[:] = 1
    for j in range(n):
        batch.seq_id[j][0] = 0
    batch.n_tokens = n
    rc = llama_cpp.llama_decode(ctx, batch)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return 0 if rc == 0 else 5


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
