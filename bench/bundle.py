"""What the desktop bundle's portable llama.cpp costs: the same rows through the built-in
GGUF default with the bundle venv's build (GGML_NATIVE=OFF, AVX2 baseline, packaging/) and
the dev venv's build (`make install`: GGML_NATIVE=ON, here AVX-512 + AMX).

Each run is a child process of one venv's Python (``--worker``) that loads the model, then
times ``Scorer.score`` over the rows (load and llama.cpp's safety probe not included). The
variants take turns in every round (the machine is shared), best of ``--repeats``:

- ``portable`` / ``native``: as users get them (each build's own probe decides llama.cpp's
  extra CPU buffers, the repacked q8_0 layouts; on our machines the native build's AMX path
  crashes, so its probe turns them off, and the line "probe" below says so);
- ``portable, plain``: the portable build with the extra buffers off
  (ARBITER_GGUF_EXTRA_BUFTS=0): the instruction sets alone against ``native`` when the
  native probe failed. ``--native-plain`` adds the native build with them off.

    .venv/bin/python bench/bundle.py --rows 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RM_BENCH = Path("/work/shared/data/rm-bench/chat_filtered.json")


def rm_bench_rows(path: Path) -> list[dict[str, str]]:
    """RM-Bench chat as (prompt, response) rows, in file order: each item's chosen, then rejected."""
    rows: list[dict[str, str]] = []
    for item in json.loads(path.read_text()):
        for response in [*item["chosen"], *item["rejected"]]:
            rows.append({"prompt": item["prompt"], "response": response})
    return rows


def worker(rows_path: str, threads: int, n: int) -> None:
    """In the venv under test: load the default GGUF, score the first ``n`` rows that fit
    (a response over the model's 512 tokens is refused, never cut), print seconds and scores."""
    import engine
    from engine.errors import InputTooLongError
    from engine.types import Item

    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines()]
    with engine.load("default", format="gguf", threads=threads) as rm:
        items = []
        for r in rows:
            item = Item.of(r["prompt"], r["response"])
            try:
                rm.encode(item)
            except InputTooLongError:
                continue
            items.append(item)
        if len(items) < n:
            raise SystemExit(f"only {len(items)} rows fit the model, fewer than --rows {n}")
        items = items[:n]
        rm.score(items[:2])  # warm-up: first-call allocations
        start = time.perf_counter()
        scores = rm.score(items, batch_size=16)
        seconds = time.perf_counter() - start
    import llama_cpp

    print(json.dumps({"seconds": seconds, "scores": [s.value for s in scores],
                      "system_info": llama_cpp.llama_print_system_info().decode().strip()}))


def run_variant(python: Path, rows: Path, threads: int, n: int, home: Path, extra_bufts: str | None) -> dict:
    env = {**os.environ, "ARBITER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("ARBITER_GGUF_EXTRA_BUFTS", None)
    if extra_bufts is not None:
        env["ARBITER_GGUF_EXTRA_BUFTS"] = extra_bufts
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", str(rows),
                           "--threads", str(threads), "--rows", str(n)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{python}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=RM_BENCH)
    p.add_argument("--portable", type=Path, default=ROOT / "build/bundle-venv/bin/python")
    p.add_argument("--native", type=Path, default=ROOT / ".venv/bin/python")
    p.add_argument("--native-plain", action="store_true", help="also the native build, buffers off")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.rows)
        return 0
    variants = {"portable": (args.portable, None), "portable, plain": (args.portable, "0"),
                "native": (args.native, None)}
    if args.native_plain:
        variants["native, plain"] = (args.native, "0")
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in rm_bench_rows(args.data)))
        best: dict[str, float] = {}
        scores: dict[str, list[float]] = {}
        info: dict[str, str] = {}
        probes: dict[str, object] = {}
        for rnd in range(args.repeats):
            for name, (python, bufts) in variants.items():
                home = Path(tmp) / name.replace(", ", "-")  # one probe cache per variant
                out = run_variant(python, rows, args.threads, args.rows, home, bufts)
                best[name] = min(best.get(name, float("inf")), out["seconds"])
                scores[name], info[name] = out["scores"], out["system_info"]
                cache = home / "gguf-probe.json"
                probes[name] = ([v["what"] for v in json.loads(cache.read_text()).values()]
                                if cache.exists() else "not run (forced)")
                print(f"round {rnd + 1} {name:16s} {out['seconds']:7.2f} s", flush=True)
    n = args.rows
    print(f"\n{n} RM-Bench rows (the first that fit 512 tokens), default GGUF q8_0, {args.threads} threads, best of {args.repeats}:")
    print("| build | s | items/s | vs native |")
    print("|---|---|---|---|")
    for name in variants:
        print(f"| {name} | {best[name]:.2f} | {n / best[name]:.1f} | {best[name] / best['native']:.2f}x time |")
    for a, b in [("portable", "native"), ("portable, plain", "native"), ("portable", "portable, plain")]:
        diff = max(abs(x - y) for x, y in zip(scores[a], scores[b], strict=True))
        print(f"max |score diff| {a} vs {b}: {diff:.3g}")
    for name in ("portable", "native"):
        print(f"{name}: {info[name]}; probe: {probes[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
