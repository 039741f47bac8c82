"""PyInstaller hook: onnxruntime's ``capi`` libraries.

The Python extension links libonnxruntime, but the execution-provider bridge
``onnxruntime_providers_shared`` (and any provider plugin: CUDA, DirectML, ...) is opened
with dlopen at session creation, so import analysis misses it and the frozen app fails
when a session is made. Everything in ``onnxruntime/capi`` that is a shared library goes to
the same relative folder. The build stops here if the bridge is missing rather than
shipping a bundle that fails on first use.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = collect_dynamic_libs("onnxruntime")
# ORT's own model-optimisation and quantisation tools import torch/onnx/transformers; the
# engine only creates InferenceSessions
excludedimports = ["onnxruntime.transformers", "onnxruntime.quantization", "onnxruntime.tools",
                   "onnx", "torch", "transformers"]

_names = [src.replace("\\", "/").rsplit("/", 1)[-1] for src, _ in binaries]
if not any(n.startswith(("libonnxruntime_providers_shared", "onnxruntime_providers_shared"))
           for n in _names):
    raise SystemExit(f"hook-onnxruntime: onnxruntime_providers_shared not found in capi ({_names})")
