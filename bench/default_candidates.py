"""Default-model candidates side by side, on the card's summary rows (app/pipelines/card_summary.py).

    .venv/bin/python bench/default_candidates.py NAME=MODEL [NAME=MODEL ...] [--gold build/default-model/gold.jsonl]
        [--out bench/results/default_candidates.md]

Each MODEL is anything ``engine.load`` opens (a shipped ONNX folder, a GGUF file, ``default``). Every
candidate is scored on the same records in one run, as users run it (long responses as the app
scores them: windows for a cross-encoder; length control as shipped), so the table compares
models, not days. The columns are the models and the three baselines; the last row is the
unweighted average of the rows above it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(model: str, data: Path, gold: Path | None, threads: int,
             reuse_store: bool = False) -> tuple[list, float, float]:
    """The summary rows of one model, its demo P(A) and the seconds it took. ``reuse_store``: read
    scores already in the user's evaluation store (the card's run put the shipped model's there;
    they are keyed by the model's files and the long-input policy), so only what is missing is
    scored; the seconds then measure that, not a whole evaluation."""
    import engine
    from app.pipelines import card_summary as cs

    rows: list = []
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arbiter-cand-") as tmp:
        if not reuse_store:
            os.environ["ARBITER_HOME"] = tmp  # an empty evaluation store: nothing reused between models
        with engine.load(model, threads=threads) as rm:
            for fmt, _, _, result in cs.card_results(rm, data, Path(tmp)):
                rows += cs.headline_rows(fmt, result)
            rows += cs.headline_rows("obvious", cs.obvious_result(rm, Path(tmp) / "obvious"))
            if gold is not None and (g := cs.gold_row(cs.score_gold(rm, gold))) is not None:
                rows.append(g)
            demo = cs.demo_probability(rm)
    return rows, demo, time.perf_counter() - t


def cached(model: str, args: argparse.Namespace, compute) -> tuple[list, float, float]:
    """A model's rows from ``--cache`` when the same files were scored with the same settings
    (the card's own evaluation stores its rows there too), else computed and stored."""
    from app.pipelines import card_summary as cs
    from engine.registry import default_model_path

    path = Path(model) if Path(model).exists() else default_model_path()
    file = cs.cache_file(args.cache, path, gold=args.gold, data=args.data) if path else None
    if file is not None and (hit := cs.load_rows(file)) is not None:
        print(f"{model}: rows from {file}", flush=True)
        return hit
    out = compute()
    if file is not None:
        cs.save_rows(file, *out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--gold", type=Path, default=None, help="the recipe's held-out gold.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-store", action="store_true",
                    help="reuse scores in the user's evaluation store (faster; the seconds are then not comparable)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "default-candidates",
                    help="rows per model files and settings, reused by a later run")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the shared data folder is needed")
    from app.pipelines import card_summary as cs

    results = {}
    for spec in args.models:
        name, _, model = spec.partition("=")
        results[name] = cached(model or name, args, lambda m=model or name: evaluate(
            m, args.data, args.gold, args.threads, args.reuse_store))
        rows, demo, secs = results[name]
        print(f"{name}: {len(rows)} rows in {secs:.0f} s, demo P(A) {demo:.1%}", flush=True)
    names = list(results)
    labels = [label for label, _, _ in results[names[0]][0]]
    head = "| row | " + " | ".join(names) + " | random | longer wins | shorter wins |"
    lines = [head, "|---" * (len(names) + 4) + "|"]
    for i, label in enumerate(labels):
        base = results[names[0]][0][i][1]
        cells = [f"{results[n][0][i][1]['model']:.1f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{base[c]:.1f}" for c in ("random", "longer", "shorter")) + " |")
    avg = {n: cs.average(results[n][0]) for n in names}
    lines.append("| **average** | " + " | ".join(f"{avg[n]['model']:.1f}" for n in names) + " | "
                 + " | ".join(f"{avg[names[0]][c]:.1f}" for c in ("random", "longer", "shorter")) + " |")
    lines.append("| demo pair P(A) | " + " | ".join(f"{results[n][1]:.1%}" for n in names) + " | | | |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/default_candidates.py " + " ".join(args.models) + (f" --gold {args.gold}" if args.gold else "")
        args.out.write_text(f"# Default-model candidates\n\n`{cmd}` ({time.strftime('%Y-%m-%d')}; accuracy in %, "
                            f"RMB {cs.RMB_SAMPLE} pairwise and {cs.RMB_SAMPLE} Best-of-N records spread through each set)\n\n{table}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
