"""`arbiter curate stage2` pairs/s against plain `arbiter score` of the same rows, peak RSS, Ray.

Everything runs as real CLI subprocesses with the same two models, threads and batch size,
each job in a fresh ``ARBITER_HOME`` and a fresh ``--out`` (so no run resumes another). Stage 2
runs with no judges (a judge's cost is the judge's, not the filter's: those pairs get
``no_judge``) and a fixed ``--band`` (so no part of the measurement depends on the gold set).

1. **Throughput.** ``--pairs`` real pairs that fit the models (hh-rlhf harmless-base test,
   conversation and both responses under ``FIT_CHARS``; generated pairs where ../shared is
   absent). Stage 2 scores each pair under both RMs (chosen and rejected: 4 scores), decides,
   commits, and writes kept/ and flipped/. The baseline is what that scoring costs without the
   filter: ``arbiter score`` of the 2 x pairs rows {conversation, response} with the gold RM,
   then with the current RM (two commands, their times added). Each round runs every variant
   on 1 pair and on all of them, in turn (interleaved, so load from other processes hits all
   alike); pairs/s is ``(pairs - 1) / (t_all - t_1)``, each time the best of ``--repeat``
   rounds, so interpreter start and model loads are taken out. Goal (issue 15): >= 0.9x.
2. **Peak RSS** (the child's ``ru_maxrss`` from ``wait4``) of ``arbiter curate stage2`` over
   10k and 100k synthetic pool rows (one shard each; 1M with ``--million``), and of ``arbiter
   curate report`` of each run (its numbers are SQL aggregates, so it is flat too). Memory must be
   flat: one chunk is held, decisions are in SQLite, outputs are re-streamed. With
   ``--rss-model light`` (the default) both RMs are bench/moderate.py's *light* model (the
   built-in default's tokenizer and a one-node ONNX graph: reward = tokens / 100), so the
   figure is everything stage 2 holds but a real model's weights, at rates that make 1M rows
   affordable on a shared machine; a real model adds its fixed size on top.
3. **Ray** (when Ray and trainer/curate/stage2_ray.py are present): ``--engine ray`` on a
   local instance the run starts (``--actors``) against ``--engine local``, the same pairs and
   models, interleaved, best of ``--repeat``: the whole wall time at ``--pairs`` (Ray's start
   included) and the marginal pairs/s (start taken out), each as a ratio to local.

Run: ``.venv/bin/python bench/curate.py [--gold-rm default] [--current-rm default] [--pairs 256]
[--repeat 3] [--threads 2] [--batch-size 32] [--rss-rows 10000,100000] [--million]
[--rss-model light] [--actors 1] [--skip throughput,rss,ray]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
#: a pair this short (conversation + the longer response, characters) fits the default RM's 512 tokens
FIT_CHARS = 1200
ARBITER = [sys.executable, "-c", "import sys; from app.cli.main import main; sys.exit(main())"]
#: the band of every run (fixed: see the docstring)
BAND = "0.1"


def _moderate_bench():
    """bench/moderate.py as a module (its light model and subprocess runner, not copied)."""
    spec = importlib.util.spec_from_file_location("bench_moderate", ROOT / "bench" / "moderate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


moderate = _moderate_bench()


def run(argv: list[str], home: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one CLI subprocess in its own ARBITER_HOME; raises on a
    non-zero exit. Its stderr goes to a temp file, not a pipe: stage 2 logs a line per chunk,
    and a pipe nobody reads fills at 64 KiB and blocks the child (a 1M-row run hung so)."""
    env = {**os.environ, "ARBITER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([*ARBITER, *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"`arbiter {' '.join(argv)}` exited {proc.returncode}: "
                             f"{err.read().decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss  # KiB on Linux


def real_pairs(n: int) -> list[dict]:
    """``n`` pairs in the trainer's format: hh-rlhf test pairs that fit (cycled), else generated."""
    from trainer.data import load

    path = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    fit: list[dict] = []
    if path.exists():
        for p in load(path):
            conv = sum(len(m.content) for m in p.conversation)
            if conv + max(len(p.chosen), len(p.rejected)) <= FIT_CHARS:
                fit.append(p.to_dict())
            if len(fit) >= n:
                break
    if not fit:
        fit = [synthetic_pair(i) for i in range(n)]
    return [{**fit[i % len(fit)], "id": f"bench-{i}"} for i in range(n)]


def synthetic_pair(i: int) -> dict:
    """Row ``i`` of the synthetic pool: short texts whose lengths vary with ``i`` (so the light
    RM's p, and with it the decision, varies)."""
    return {"id": f"syn-{i}", "conversation": [{"role": "user", "content": f"Question number {i}: what now?"}],
            "chosen": "A fine answer" + " with detail" * ((7 * i) % 40),
            "rejected": "An answer" + " and more" * ((13 * i) % 40)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def score_rows(pairs: list[dict]) -> list[dict]:
    """The rows `arbiter score` reads for the same scoring: chosen, then rejected, per pair."""
    return [{"conversation": p["conversation"], "response": p[side]} for p in pairs for side in ("chosen", "rejected")]


def model_path(name: str) -> str:
    """A model path stage 2 takes: 'default' is the built-in default's ONNX folder."""
    if name != "default":
        return name
    import engine

    p = Path(engine.registry.default_model_path("onnx"))
    return str(p if p.is_dir() else p.parent)


class Work:
    """Temporary files and one fresh home and output per job."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.root / f"{name}{self.n}"


def stage2_argv(a: argparse.Namespace, w: Work, pool: Path, gold: Path, gold_rm: str, current_rm: str,
                *extra: str) -> list[str]:
    return ["curate", "stage2", "--pool", str(pool), "--gold", str(gold), "--gold-rm", gold_rm,
            "--current-rm", current_rm, "--out", str(w.fresh("out")), "--band", BAND, "--threads", str(a.threads),
            "--batch-size", str(a.batch_size), *extra]


Variant = Callable[[str], float]  # "one" | "all" -> wall seconds of that run


def interleaved(a: argparse.Namespace, variants: dict[str, Variant]) -> dict[str, tuple[float, float]]:
    """name -> (best t_1, best t_all) over a.repeat rounds, every variant run in turn per round."""
    best = {name: [float("inf"), float("inf")] for name in variants}
    for r in range(a.repeat):
        for name, fn in variants.items():
            best[name][0] = min(best[name][0], fn("one"))
            best[name][1] = min(best[name][1], fn("all"))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[1]:.2f} s" for k, v in best.items()), flush=True)
    return {k: (v[0], v[1]) for k, v in best.items()}


def rate(n: int, t: tuple[float, float]) -> float:
    return (n - 1) / max(t[1] - t[0], 1e-9)


def throughput(a: argparse.Namespace, w: Work) -> None:
    gold_rm, current_rm = model_path(a.gold_rm), model_path(a.current_rm)
    pairs = real_pairs(a.pairs)
    gold = write_jsonl(w.root / "gold.jsonl", pairs[:8])
    pools = {"one": write_jsonl(w.root / "p1.jsonl", pairs[:1]), "all": write_jsonl(w.root / "p.jsonl", pairs)}
    rows = {"one": write_jsonl(w.root / "s1.jsonl", score_rows(pairs[:1])),
            "all": write_jsonl(w.root / "s.jsonl", score_rows(pairs))}

    last: list[Path] = []

    def stage2(which: str) -> float:
        argv = stage2_argv(a, w, pools[which], gold, gold_rm, current_rm)
        last[:] = [Path(argv[argv.index("--out") + 1])]
        return run(argv, w.fresh("home"))[0]

    def score(which: str) -> float:
        return sum(run(["score", str(rows[which]), "-o", str(w.fresh("scored")), "--model", m, "--threads",
                        str(a.threads), "--batch-size", str(a.batch_size)], w.fresh("home"))[0]
                   for m in (gold_rm, current_rm))

    print(f"\nthroughput: {a.pairs} real pairs that fit (<= {FIT_CHARS} chars), gold RM {a.gold_rm}, current RM "
          f"{a.current_rm}, threads {a.threads}, batch {a.batch_size}, best of {a.repeat} interleaved rounds",
          flush=True)
    t = interleaved(a, {"score x2": score, "stage2": stage2})
    s, c = rate(a.pairs, t["score x2"]), rate(a.pairs, t["stage2"])
    print(f"  arbiter score (gold RM + current RM)  {s:8.1f} pairs/s  (t_1 {t['score x2'][0]:.2f} s, "
          f"t_all {t['score x2'][1]:.2f} s)")
    print(f"  arbiter curate stage2                 {c:8.1f} pairs/s  (t_1 {t['stage2'][0]:.2f} s, "
          f"t_all {t['stage2'][1]:.2f} s)   ratio {c / s:.2f}x (goal >= 0.9x)", flush=True)
    print(f"  the last stage-2 run's decisions: {reasons(last[0])}")


def reasons(out: Path) -> str:
    """reason -> pairs of a finished run (read from its stage2.db)."""
    import sqlite3

    with sqlite3.connect(out / "stage2.db") as c:
        rows = c.execute("select reason, count(*) from decisions group by reason order by 2 desc").fetchall()
    return ", ".join(f"{r} {n}" for r, n in rows)


def light_models(w: Work) -> tuple[str, str]:
    """Two light RMs (bench/moderate.py's), each in its own folder."""
    out = []
    for name in ("gold", "current"):
        folder = w.root / f"light-{name}"
        folder.mkdir()
        out.append(str(moderate.light_model(folder)))
    return out[0], out[1]


def rss(a: argparse.Namespace, w: Work) -> None:
    counts = [int(x) for x in a.rss_rows.split(",") if x] + ([1_000_000] if a.million else [])
    if a.rss_model == "light":
        gold_rm, current_rm = light_models(w)
    else:
        gold_rm = current_rm = model_path(a.rss_model)
    gold = write_jsonl(w.root / "rss-gold.jsonl", [synthetic_pair(i) for i in range(8)])
    print(f"\npeak RSS of arbiter curate stage2 (synthetic pool rows, one shard; models "
          f"{'light (built here)' if a.rss_model == 'light' else a.rss_model}, chunk 1024 rows)", flush=True)
    for n in counts:
        src = w.root / f"rss{n}.jsonl"
        with src.open("w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps(synthetic_pair(i)) + "\n")
        argv = stage2_argv(a, w, src, gold, gold_rm, current_rm)
        wall, kib = run(argv, w.fresh("home"))
        out = Path(argv[argv.index("--out") + 1])
        kept = sum(1 for _ in (out / "kept" / f"00000-rss{n}.jsonl").open("rb"))
        flipped = sum(1 for _ in (out / "flipped" / f"00000-rss{n}.jsonl").open("rb"))
        print(f"  {n:>9,} rows  peak RSS {kib / 1024:7.1f} MiB   {wall:7.1f} s  ({n / wall:,.0f} pairs/s)   "
              f"kept {kept:,}, flipped {flipped:,} ({reasons(out)})", flush=True)
        wall, kib = run(["curate", "report", str(out)], w.fresh("home"))
        print(f"  {'':>9}       arbiter curate report of it: peak RSS {kib / 1024:7.1f} MiB   {wall:7.1f} s",
              flush=True)
        src.unlink()


def ray_ready() -> str | None:
    """None when the Ray path can run, else why not."""
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'arbiter[scale]')"
    if importlib.util.find_spec("trainer.curate.stage2_ray") is None:
        return "trainer/curate/stage2_ray.py is not in the tree"
    return None


def ray_overhead(a: argparse.Namespace, w: Work) -> None:
    why = ray_ready()
    if why:
        print(f"\nRay: skipped: {why}")
        return
    gold_rm, current_rm = model_path(a.gold_rm), model_path(a.current_rm)
    pairs = real_pairs(a.pairs)
    gold = write_jsonl(w.root / "ray-gold.jsonl", pairs[:8])
    pools = {"one": write_jsonl(w.root / "r1.jsonl", pairs[:1]), "all": write_jsonl(w.root / "r.jsonl", pairs)}

    def engine(kind: str) -> Variant:
        extra = ["--engine", kind] + (["--actors", str(a.actors)] if kind == "ray" else [])
        return lambda which: run(stage2_argv(a, w, pools[which], gold, gold_rm, current_rm, *extra),
                                 w.fresh("home"))[0]

    print(f"\nRay (a local instance started per run, {a.actors} actor(s)) against the single process: "
          f"{a.pairs} pairs, best of {a.repeat} interleaved rounds", flush=True)
    t = interleaved(a, {"local": engine("local"), "ray": engine("ray")})
    lr, rr = rate(a.pairs, t["local"]), rate(a.pairs, t["ray"])
    print(f"  local  t_all {t['local'][1]:7.2f} s   {lr:8.1f} pairs/s (start taken out)")
    print(f"  ray    t_all {t['ray'][1]:7.2f} s   {rr:8.1f} pairs/s (start taken out)")
    print(f"  overhead: wall {t['ray'][1] / t['local'][1]:.2f}x the single process; marginal rate "
          f"{rr / lr:.2f}x; Ray's fixed cost (t_1 ray - t_1 local) {t['ray'][0] - t['local'][0]:.1f} s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gold-rm", default="default", help="a model path, or 'default' (the built-in ONNX)")
    p.add_argument("--current-rm", default="default", help="a model path, or 'default' (the built-in ONNX)")
    p.add_argument("--pairs", type=int, default=256, help="pairs for throughput and Ray")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rss-rows", default="10000,100000", help="comma-separated pool sizes for peak RSS")
    p.add_argument("--million", action="store_true", help="add 1,000,000 rows to the RSS runs")
    p.add_argument("--rss-model", default="light", help="'light' (built here; see the docstring) or a model path")
    p.add_argument("--actors", type=int, default=1, help="Ray: scoring actors")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,rss,ray")
    a = p.parse_args()
    if a.pairs < 2:
        p.error("--pairs must be at least 2 (rates take the 1-pair run out)")
    skip = set(filter(None, a.skip.split(",")))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        w = Work(Path(tmp))
        print(f"bench/curate.py: load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)
        if "throughput" not in skip:
            throughput(a, w)
        if "ray" not in skip:
            ray_overhead(a, w)
        if "rss" not in skip:
            rss(a, w)
    print(f"\ndone in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
