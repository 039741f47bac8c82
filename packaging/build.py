"""Build the desktop bundle: the bundle venv, then PyInstaller (``make bundle``).

Run with any Python 3.11+ (``python packaging/build.py``); it needs no packages itself, so
the same script serves Linux, macOS and Windows. Steps:

1. The bundle venv (default ``build/bundle-venv``, never the dev ``.venv``): the scoring
   app's runtime and PyInstaller from ``packaging/requirements.txt``, and llama-cpp-python
   compiled PORTABLE. The dev venv's llama.cpp is a native (``-march=native``) build, which
   dies on CPUs that lack the build machine's features (docs/runtimes.md, addendum
   2026-12-01). A stamp file skips this step when nothing changed.
2. ``python -m PyInstaller packaging/arbiter.spec`` from that venv, into ``dist/arbiter/``.

Why an explicit baseline and not ``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``:
llama-cpp-python 0.3.36's CMakeLists installs only the ``ggml-cpu`` target into
``llama_cpp/lib`` (never the ``ggml-cpu-<variant>`` libraries the variant build makes),
and nothing in it calls ``ggml_backend_load_all()``; with ``BACKEND_DL`` llama.cpp would
find no CPU backend at all ("no backends are loaded"). The variant set would also choose
``sapphirerapids`` (AMX) on our machines, the very path that crashed. So on x86-64:
SSE4.2, AVX, AVX2, BMI2, FMA, F16C (Haswell and later), no AVX-512, no AVX-VNNI, no AMX;
``packaging/cpu_baseline.json`` records that list for the bundle.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMA_VERSION = "0.3.36"

_X86 = ["-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON", "-DGGML_FMA=ON",
        "-DGGML_F16C=ON", "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF",
        "-DGGML_AVX512_VNNI=OFF", "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def portable_cmake_args(machine: str | None = None) -> str:
    """CMAKE_ARGS for a llama.cpp that runs on any CPU of the recorded baseline."""
    machine = (machine or platform.machine()).lower()
    args = ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=OFF",
            "-DGGML_CPU_ALL_VARIANTS=OFF"]
    if machine in ("x86_64", "amd64"):
        args += _X86
    # arm64 (macOS, Linux): GGML_NATIVE=OFF alone gives the compiler's generic armv8 code;
    # on macOS Metal stays on (llama-cpp-python's default there)
    return " ".join(args)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip(py: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True, env=env)


def ensure_venv(venv: Path, python: str) -> None:
    """Create or update the bundle venv; skipped when its stamp matches what we would build."""
    cmake_args = portable_cmake_args()
    requirements = (HERE / "requirements.txt").read_text().rstrip("\n")
    want = f"llama-cpp-python=={LLAMA_VERSION} {cmake_args} {requirements}"
    stamp = venv / ".arbiter-bundle-venv"
    if stamp.is_file() and stamp.read_text().rstrip("\n") == want:
        print(f"bundle venv up to date: {venv}")
        return
    py = venv_python(venv)
    if not py.exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    _pip(py, "--upgrade", "pip")
    _pip(py, "-r", str(HERE / "requirements.txt"))
    env = {**os.environ, "CMAKE_ARGS": cmake_args,
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))}
    started = time.monotonic()
    # --no-cache-dir: pip's wheel cache may hold the dev venv's native build of the same
    # version, which it would reuse whatever CMAKE_ARGS say
    _pip(py, "--no-cache-dir", "--force-reinstall", "--no-deps", "--no-binary", "llama-cpp-python",
         f"llama-cpp-python=={LLAMA_VERSION}", env=env)
    print(f"llama-cpp-python compiled portable in {time.monotonic() - started:.0f} s")
    _pip(py, "diskcache", "typing-extensions")  # llama-cpp-python's small pure-Python deps
    stamp.write_text(want + "\n")


def run_pyinstaller(venv: Path, dist: Path, work: Path) -> None:
    subprocess.run([str(venv_python(venv)), "-m", "PyInstaller", "--noconfirm", "--clean",
                    "--log-level", "WARN", "--distpath", str(dist), "--workpath", str(work),
                    str(HERE / "arbiter.spec")], check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, default=ROOT / "build" / "bundle-venv")
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    p.add_argument("--python", default=sys.executable, help="the Python that makes the venv")
    p.add_argument("--venv-only", action="store_true", help="make the bundle venv and stop")
    args = p.parse_args(argv)
    started = time.monotonic()
    ensure_venv(args.venv.resolve(), args.python)
    if not args.venv_only:
        run_pyinstaller(args.venv.resolve(), args.dist.resolve(), args.work.resolve())
        print(f"bundle: {args.dist / 'arbiter'} ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
