"""int8 weights as stored (U8S8) against read as uint8 (U8U8): speed and scores, side by side.

The built-in default model (ONNX int8), the probe items repeated to ``--items``, scored
end to end by the engine with ``ARBITER_INT8_WEIGHTS=signed`` and ``=unsigned`` in turns
(best of ``--repeat``), on ``--threads`` threads. It prints both rates, their ratio and
the largest score difference. On a VNNI CPU both are exact, so the difference is 0 and
the ratio is what the rewrite would cost there (the engine does not rewrite there); on a
CPU without VNNI the difference is what U8S8's saturating int16 adds, and the ratio is
what exactness costs (engine/int8_weights.py).
Run: ``.venv/bin/python bench/int8_weights.py [--items 480] [--threads 2] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.int8_weights import ENV, cpu_has_vnni  # noqa: E402
from engine.paths import builtin_dir  # noqa: E402
from exports.probes import probe_items  # noqa: E402


def _run(model: Path, items: list, threads: int, weights: str) -> tuple[float, np.ndarray, str]:
    os.environ[ENV] = weights
    with engine.load(model, threads=threads) as rm:
        rm.score(items[:16])  # warm-up: allocations, thread pool
        start = time.perf_counter()
        values = np.array([s.value for s in rm.score(items)])
        return len(items) / (time.perf_counter() - start), values, rm.info.extra["int8_weights"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=480)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    model = builtin_dir() / "default" / "onnx"
    probes = probe_items()[0]
    items = (probes * (args.items // len(probes) + 1))[:args.items]
    best: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.repeat):
        for weights in ("signed", "unsigned"):
            rate, scores[weights], how = _run(model, items, args.threads, weights)
            best[weights] = max(best.get(weights, 0.0), rate)
    print(f"CPU: {_cpu_name()}, VNNI: {cpu_has_vnni()}; "
          f"{model}, {len(items)} items, {args.threads} threads, best of {args.repeat}")
    print(f"  int8 weights as stored (U8S8): {best['signed']:7.1f} items/s")
    print(f"  int8 weights as uint8 (U8U8):  {best['unsigned']:7.1f} items/s  ({how})")
    print(f"  U8U8 / U8S8 speed: {best['unsigned'] / best['signed']:.2f}x; "
          f"max |score diff| {np.abs(scores['signed'] - scores['unsigned']).max():.3g}")


if __name__ == "__main__":
    main()
