"""Edge export: bundle sizes, cold start and items/s of the Python runner, the Node runner and the engine.

    .venv/bin/python bench/edge.py [--src default] [--pairs 64] [--repeat 3] [--threads 2]

Builds the edge folder of ``--src`` (`arbiter export SRC OUT --edge`), a fresh venv with only
the Python runner's packages, and ``npm ci`` of the Node runner in the folder (skipped, and
said, when npm or the Node files are absent). Every variant is a real process started the way a
user starts it, on the same JSONL rows (real AlpacaEval pairs from ../shared/data when present):

* cold start: wall seconds of a run on one row (interpreter, imports, model load, one score);
* items/s: (N - 1) / (wall of N rows - wall of one row), i.e. without the start-up.

The variants take turns in every round (the machine is shared) and each figure is the best of
``--repeat`` rounds. The runners score one row at a time; the engine (`arbiter score`) is shown
at its default batch of 16 and at batch 1. The scores of all variants are compared too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import load_pairs  # noqa: E402  (bench/ is not a package)

RUNNER_PACKAGES = ("onnxruntime", "tokenizers", "numpy", "jinja2")


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks not followed)."""
    return sum(p.lstat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def make_venv(where: Path) -> Path:
    """A venv with only the runner's packages, at the engine's versions; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *(f"{p}=={version(p)}" for p in RUNNER_PACKAGES)], check=True)
    return python


def npm_ci(edge: Path) -> bool:
    if not (shutil.which("npm") and (edge / "runner.mjs").is_file() and (edge / "package-lock.json").is_file()):
        return False
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=edge, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"npm ci failed, no Node runner figures: {done.stderr[-400:]}", file=sys.stderr)
    return done.returncode == 0


def wall(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of ``cmd``; CPU time moves less than
    wall time when other processes share the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scores(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="default", help="what to export (default: the built-in model)")
    ap.add_argument("--pairs", type=int, default=64, help="real pairs: 2x this many rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", type=Path, help="a runner venv's python (default: make one)")
    args = ap.parse_args()

    import engine
    from engine.errors import InputTooLongError
    from exports.edge import build_edge, edge_sources

    tmp = Path(tempfile.mkdtemp(prefix="arbiter-bench-edge-"))
    sources = edge_sources(args.src, None, tmp / "engine")
    edge = build_edge(sources, tmp / "edge")
    kind = "int8" if "int8" in sources.folders else "fp32"
    engine_folder = sources.folders[kind]
    with engine.load(engine_folder, format="onnx") as rm:
        def fits(prompt: str, response: str) -> bool:
            try:
                rm.encode(engine.Item.of(prompt, response))
                return True
            except InputTooLongError:
                return False

        items, origin = load_pairs(args.pairs, fits)
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
                            for p, r in items), encoding="utf-8")
    one = tmp / "one.jsonl"
    one.write_text(rows.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")

    python = args.python or make_venv(tmp / "venv")
    node = npm_ci(edge)
    t = str(args.threads)
    arbiter = str(Path(sys.executable).with_name("arbiter"))
    variants = {
        "Python runner (`runner.py`, batch 1)":
            lambda inp, out: [str(python), str(edge / "runner.py"), str(inp), "-o", str(out), "--model", kind,
                              "--threads", t],
        **({"Node runner (`runner.mjs`, batch 1)":
            lambda inp, out: ["node", str(edge / "runner.mjs"), str(inp), "-o", str(out), "--model", kind,
                              "--threads", t]} if node else {}),
        "engine (`arbiter score`, batch 16)":
            lambda inp, out: [arbiter, "score", "--model", str(engine_folder), "--threads", t, str(inp), "-o",
                              str(out)],
        "engine (`arbiter score`, batch 1)":
            lambda inp, out: [arbiter, "score", "--model", str(engine_folder), "--threads", t, "--batch-size", "1",
                              str(inp), "-o", str(out)],
    }
    outs = {name: tmp / f"out-{i}.jsonl" for i, name in enumerate(variants)}
    load = os.getloadavg()  # other processes on the machine: the figures are only as quiet as it is
    inf = (float("inf"), float("inf"))
    cold, full = dict.fromkeys(variants, inf), dict.fromkeys(variants, inf)
    for name, cmd in variants.items():  # warm-up: page cache, first-run compilation
        wall(cmd(one, outs[name]))
    for _ in range(args.repeat):
        for name, cmd in variants.items():
            c, f = wall(cmd(one, outs[name])), wall(cmd(rows, outs[name]))
            cold[name] = tuple(map(min, cold[name], c))
            full[name] = tuple(map(min, full[name], f))

    n = len(items)
    ref = scores(outs["engine (`arbiter score`, batch 16)"])
    print(f"\nsource: {args.src} ({kind}); rows: {n} from {origin}; {args.threads} threads; best of "
          f"{args.repeat}; {os.cpu_count()} CPUs; load average before / after: {load[0]:.2f} / "
          f"{os.getloadavg()[0]:.2f}\n")
    sizes = [("edge folder (all files)", du(edge) - (du(edge / "node_modules") if node else 0)),
             (f"model file `{'onnx/model_int8.onnx' if kind == 'int8' else 'onnx/model.onnx'}`",
              (edge / ("onnx/model_int8.onnx" if kind == "int8" else "onnx/model.onnx")).stat().st_size),
             ("Python runner's venv (onnxruntime, tokenizers, numpy, jinja2, pip)", du(python.parents[1]))]
    if node:
        sizes.append(("Node runner's `node_modules` (`npm ci`)", du(edge / "node_modules")))
    print("| what | size |\n|---|---|")
    for what, size in sizes:
        print(f"| {what} | {mib(size)} |")
    print(f"\n| runner | cold start, 1 row: wall s (CPU s) | items/s after start | CPU s per {n} rows "
          "after start | max \\|diff\\| vs engine batch 16 |")
    print("|---|---|---|---|---|")
    for name in variants:
        rate = (n - 1) / max(full[name][0] - cold[name][0], 1e-9)
        diff = max(abs(a - b) for a, b in zip(scores(outs[name]), ref, strict=True))
        print(f"| {name} | {cold[name][0]:.2f} ({cold[name][1]:.2f}) | {rate:.1f} | "
              f"{full[name][1] - cold[name][1]:.2f} | {diff:.1e} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
