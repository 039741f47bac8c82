"""PyInstaller hook: llama-cpp-python's shared libraries.

llama_cpp loads libllama / libggml* with ctypes from its own ``lib`` folder
(``Path(llama_cpp.__file__).parent / "lib"``), which PyInstaller's import analysis cannot
see: without this hook the frozen app fails with "Shared library with base name 'llama'
not found". They go to ``llama_cpp/lib`` inside the bundle, the same place relative to the
module, so llama_cpp's own loader finds them. Windows (.dll) and macOS (.dylib, plus the
Metal shader source or metallib when the build has Metal and does not embed it) are
collected by the same calls.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs

binaries = collect_dynamic_libs("llama_cpp")
datas = collect_data_files("llama_cpp", includes=["lib/*.metal", "lib/*.metallib"])
# the OpenAI-compatible server and its web dependencies are not part of the app
excludedimports = ["llama_cpp.server", "uvicorn", "fastapi", "starlette", "sse_starlette"]

if not any("llama" in src.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] for src, _ in binaries):
    raise SystemExit("hook-llama_cpp: no libllama in llama_cpp/lib; is llama-cpp-python installed?")
