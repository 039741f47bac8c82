"""The desktop bundle (packaging/, `make bundle`): the frozen CLI and GUI, run as users run them.

Marked ``bundle``. It runs when a bundle exists: ``make bundle-test`` builds one and sets
ARBITER_BUNDLE (then a missing bundle is a failure); otherwise, with no ``dist/arbiter``,
``make test`` skips it and says why. The frozen CLI's scores must equal those of the bundle
venv it was frozen from (same llama.cpp build, same onnxruntime) exactly; the difference to
the dev venv (a native llama.cpp build) is measured and reported, not asserted. Figures
(size, start-up, differences) go to ``build/bundle-report.json`` and the terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = Path(os.environ.get("ARBITER_BUNDLE", ROOT / "dist" / "arbiter")).resolve()
BUNDLE_VENV = ROOT / "build" / "bundle-venv"
REPORT = ROOT / "build" / "bundle-report.json"
EXE = ".exe" if os.name == "nt" else ""
HEAVY = ("torch", "transformers", "accelerate", "optimum", "safetensors")

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.skipif(not (BUNDLE / f"arbiter{EXE}").exists() and "ARBITER_BUNDLE" not in os.environ,
                       reason="no desktop bundle in dist/arbiter: `make bundle-test` builds and tests one"),
]
_report: dict[str, object] = {}


def _record(key: str, value: object) -> None:
    """Keep a measured figure for the report file (written after each test: a failure keeps the rest)."""
    _report[key] = value
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(_report, indent=2) + "\n")
    print(f"\n[bundle] {key}: {value}")


@pytest.fixture(scope="module")
def bundle() -> Path:
    assert (BUNDLE / f"arbiter{EXE}").is_file(), f"{BUNDLE}: no frozen CLI; run `make bundle`"
    assert (BUNDLE / f"arbiter-desktop{EXE}").is_file(), f"{BUNDLE}: no frozen GUI entry point"
    return BUNDLE


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """The probe set (multi-turn, long, non-ASCII, empty-ish; 40 rows) as `score` input."""
    from exports.probes import PROBES

    lines = []
    for conv, responses in PROBES:
        for r in responses:
            row = {"conversation": conv, "response": r} if isinstance(conv, list) else {"prompt": conv, "response": r}
            lines.append(json.dumps(row, ensure_ascii=False))
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(cmd: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "ARBITER_HOME": str(home), "QT_QPA_PLATFORM": "offscreen", **env}
    environ.pop("ARBITER_GGUF_EXTRA_BUFTS", None)  # each build decides by its own probe, as users get it
    home.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=home.parent)


def _scores(cmd: list[str], rows: Path, fmt: str, home: Path, **env: str) -> list[float]:
    out = home.parent / f"out-{fmt}.jsonl"
    proc = _run([*cmd, "score", "--model", "default", "--format", fmt, str(rows), "-o", str(out)], home, **env)
    assert proc.returncode == 0, f"{cmd[0]} score --format {fmt} failed:\n{proc.stderr[-3000:]}"
    return [json.loads(line)["score"] for line in out.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_frozen_scores_equal_the_bundle_venv(bundle, rows, fmt, tmp_path):
    frozen = _scores([str(bundle / f"arbiter{EXE}")], rows, fmt, tmp_path / "frozen" / "home")
    py = BUNDLE_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert py.exists(), f"{BUNDLE_VENV}: the bundle venv the bundle is built from is missing; run `make bundle`"
    venv = _scores([str(py), "-m", "app.cli.main"], rows, fmt, tmp_path / "venv" / "home", PYTHONPATH=str(ROOT))
    dev = _scores([sys.executable, "-m", "app.cli.main"], rows, fmt, tmp_path / "dev" / "home")
    assert len(frozen) == len(venv) == 40
    assert frozen == venv, f"{fmt}: frozen scores differ from the bundle venv's (same build)"
    _record(f"max |frozen - dev venv| {fmt} (40 probe rows)", max(abs(a - b) for a, b in zip(frozen, dev, strict=True)))
    if fmt == "gguf":
        # the engine's llama.cpp probe runs as `sys.executable -m engine.backends.gguf_probe`,
        # which in the bundle is the frozen CLI (packaging/arbiter_frozen.py answers it); the
        # portable build has no AMX kernels, so on any CPU of its baseline it must decode
        probe = json.loads((tmp_path / "frozen" / "home" / "gguf-probe.json").read_text())
        assert [v["what"] for v in probe.values()] == ["decoded"]


def test_frozen_app_reads_int8_weights_as_uint8_when_asked(bundle, tmp_path):
    """onnx is in the bundle, so on a CPU without VNNI the frozen app rewrites as the dev venv does."""
    proc = _run([str(bundle / f"arbiter{EXE}"), "models", "info", "default", "--format", "onnx"],
                tmp_path / "home", ARBITER_INT8_WEIGHTS="unsigned")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("int8 weights"))
    assert "matmul weights rewritten" in line, line


def test_frozen_gui_screenshot(bundle, tmp_path):
    from PySide6.QtGui import QImage

    home = tmp_path / "home"
    png = tmp_path / "shot.png"
    start = time.perf_counter()
    proc = _run([str(bundle / f"arbiter-desktop{EXE}"), "--screenshot", str(png)], home)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = QImage(str(png))
    assert not image.isNull(), f"{png}: not a readable PNG"
    assert (image.width(), image.height()) >= (800, 500), (image.width(), image.height())
    colours = {image.pixel(x, y) for x in range(0, image.width(), 4) for y in range(0, image.height(), 4)}
    assert len(colours) > 50, f"{png}: {len(colours)} colours; the window did not render"
    _record("frozen GUI --screenshot (start, load default, score, save, exit) s", round(seconds, 2))


def test_frozen_cli_version_names_the_cpu_baseline(bundle, tmp_path):
    info = json.loads((bundle / "BUILD_INFO.json").read_text())
    assert info["cpu"]["needs"] == ["sse4_2", "avx", "avx2", "bmi2", "fma", "f16c"]
    assert "AVX512" not in info["llama_cpp_system_info"] and "AMX" not in info["llama_cpp_system_info"]
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        start = time.perf_counter()
        proc = _run([str(bundle / f"arbiter{EXE}"), "--version"], tmp_path / "home")
        best = min(best, time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr
    assert "needs sse4_2 avx avx2 bmi2 fma f16c" in proc.stdout
    assert "desktop bundle" in proc.stdout
    _record("frozen `arbiter --version` s (best of 3)", round(best, 3))


def test_portable_llama_cpp_has_no_avx512_or_amx_code(bundle):
    """The recorded baseline is what the code needs: no zmm register and no AMX tile
    instruction anywhere in the bundle's ggml CPU backend (a native build here has both)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) not installed: cannot read the machine code")
    libs = sorted((bundle / "_internal" / "llama_cpp" / "lib").glob("libggml-cpu*"))
    assert libs, "no libggml-cpu in the bundle's llama_cpp/lib"
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(libs[0])], capture_output=True,
                          text=True, check=True).stdout
    assert "vfmadd" in code  # AVX2/FMA kernels are there: the disassembly is real
    assert "%zmm" not in code, "AVX-512 instructions in the portable build"
    assert not any(op in code for op in ("ldtilecfg", "tileloadd", "tdpbssd")), "AMX instructions"


def test_bundle_leaves_torch_out_and_says_so(bundle, tmp_path):
    internal = bundle / "_internal"
    found = [p.name for p in internal.iterdir() if p.name.split("-")[0].split(".")[0] in HEAVY]
    found += [p.name for p in internal.glob("libtorch*")]
    assert not found, f"bundled anyway: {found}"
    proc = _run([str(bundle / f"arbiter{EXE}"), "export", "src", "out", "--format", "onnx"], tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("arbiter: error: `arbiter export` needs exports"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bundle_size_and_first_score(bundle, rows, tmp_path):
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and not p.is_symlink())
    _record("bundle size MiB (dist/arbiter, files)", round(size / 2**20, 1))
    one = tmp_path / "one.jsonl"
    one.write_text(rows.read_text().splitlines()[0] + "\n")
    for fmt in ("onnx", "gguf"):
        best = float("inf")
        for i in range(3):  # the first run also probes llama.cpp (cached after) in this home
            start = time.perf_counter()
            proc = _run([str(bundle / f"arbiter{EXE}"), "score", "--model", "default", "--format", fmt,
                         str(one), "-o", str(tmp_path / f"one-{fmt}-{i}.jsonl")], tmp_path / "home")
            best = min(best, time.perf_counter() - start)
            assert proc.returncode == 0, proc.stderr
        _record(f"frozen `arbiter score` of 1 row, {fmt}, s (start to exit, best of 3)", round(best, 2))
