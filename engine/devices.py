"""Device names: one vocabulary for every backend, the GUI and the CLI.

A user picks a device by name; each runtime maps the name onto what it has:

============  ===========================  =========================  ==========================
name          ONNX (onnxruntime)           torch reference            GGUF (llama.cpp)
============  ===========================  =========================  ==========================
``cpu``       CPUExecutionProvider         cpu                        no layers offloaded
``auto``      CUDA, DirectML, Core ML,     cuda, mps, else cpu        all layers on the GPU
              else CPU (no warning)        (no warning)               build, else CPU (no warning)
``gpu``       CUDA, DirectML, Core ML      cuda, mps                  any GPU backend
``cuda``      CUDAExecutionProvider        cuda                       a CUDA (or ROCm) build
``directml``  DmlExecutionProvider         -                          -
``coreml``    CoreMLExecutionProvider      -                          -
``metal``     CoreMLExecutionProvider      mps                        a Metal build
``vulkan``    -                            -                          a Vulkan build
============  ===========================  =========================  ==========================

A name a runtime cannot honour here (``-`` above, or a build or machine without that
device) runs on the CPU with one loud warning (:func:`warn_fallback`: logged at WARNING
and raised as :class:`ProviderFallbackWarning`), never silently and never as a refusal:
a user who asked for a GPU must know the scores came from the CPU, and a name the GUI
offers must open the model. ``auto`` is the one name that falls back quietly, since it
asks for nothing in particular. A name outside the vocabulary is a :class:`ModelError`.

The default is ``cpu`` everywhere (the CLI, the GUI, ``engine.load``): CPU scores are
the reference the parity tests pin, and they do not change with what is installed.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from pathlib import Path
from types import ModuleType

from engine.errors import ModelError, ProviderFallbackWarning

log = logging.getLogger(__name__)

#: every device name, with what it means (the GUI lists them in this order)
DEVICES: dict[str, str] = {
    "cpu": "the CPU (every format)",
    "auto": "the best device the model's runtime has, else the CPU without a warning",
    "gpu": "any GPU the model's runtime has",
    "cuda": "an NVIDIA GPU (onnxruntime-gpu, torch with CUDA, llama.cpp built with CUDA)",
    "directml": "DirectML on Windows (ONNX, with onnxruntime-directml)",
    "coreml": "Core ML on macOS (ONNX)",
    "metal": "an Apple GPU (GGUF built with Metal, torch MPS, ONNX through Core ML)",
    "vulkan": "a Vulkan GPU (GGUF built with Vulkan)",
}
DEFAULT_DEVICE = "cpu"

#: onnxruntime execution providers each name may use, best first (CPU is always appended)
ONNX_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "auto": ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"),
    "gpu": ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"),
    "cuda": ("CUDAExecutionProvider",),
    "directml": ("DmlExecutionProvider",),
    "coreml": ("CoreMLExecutionProvider",),
    "metal": ("CoreMLExecutionProvider",),
    "vulkan": (),
}
#: the vocabulary name of each onnxruntime provider (what ModelInfo.provider says)
ONNX_PROVIDER_NAMES: dict[str, str] = {
    "CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
    "DmlExecutionProvider": "directml", "CoreMLExecutionProvider": "coreml",
}
#: torch device types each name may use, best first
TORCH_DEVICES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",), "auto": ("cuda", "mps"), "gpu": ("cuda", "mps"), "cuda": ("cuda",),
    "directml": (), "coreml": (), "metal": ("mps",), "vulkan": (),
}
#: ggml backend registry names each name may offload to; None: any GPU backend
LLAMA_BACKENDS: dict[str, tuple[str, ...] | None] = {
    "cpu": (), "auto": None, "gpu": None, "cuda": ("CUDA", "ROCm"), "directml": (),
    "coreml": (), "metal": ("Metal",), "vulkan": ("Vulkan",),
}


def check_device(device: str) -> str:
    """The vocabulary name for ``device`` (case and spaces ignored), or a ModelError naming the choices."""
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return name


def warn_fallback(message: str, *, stacklevel: int = 3) -> None:
    """The one loud fallback: logged at WARNING (the CLI and GUI show it) and warned (tests catch it)."""
    log.warning("%s", message)
    warnings.warn(message, ProviderFallbackWarning, stacklevel=stacklevel)


def fall_back_to_cpu(runtime: str, device: str, why: str, fix: str = "") -> None:
    """Warn that ``device`` cannot be honoured by ``runtime``: the model runs on the CPU."""
    warn_fallback(f"device {device!r} was requested but {runtime} {why}; FALLING BACK TO CPU."
                  + (f" {fix}" if fix else ""), stacklevel=4)


def cli_help() -> str:
    """The ``--device`` help text."""
    return (f"{', '.join(DEVICES)} (default {DEFAULT_DEVICE}); a device the model's runtime "
            "cannot use runs on the CPU with a warning")


def llama_gpu_backends(llama: ModuleType) -> set[str] | None:
    """Names of the GPU backends this llama.cpp build registered (``CUDA``, ``Metal``, ...).

    llama-cpp-python does not bind ggml's backend registry, so it is read from the
    ``libggml`` it ships. None when that library cannot be read (a build laid out
    otherwise): callers then know only ``llama_supports_gpu_offload``.
    """
    lib_dir = Path(llama.__file__).parent / "lib"
    found = sorted(lib_dir.glob("libggml.*")) + sorted(lib_dir.glob("ggml.dll"))
    if not found:
        return None
    try:
        ggml = ctypes.CDLL(str(found[0]))
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
        ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        names = {ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode()
                 for i in range(ggml.ggml_backend_reg_count())}
    except (OSError, AttributeError):
        return None
    return names - {"CPU", "BLAS", "RPC"}  # the host-side ones: not a device to offload to
