"""Variants of the default model's recipe, trained and evaluated side by side (meant for a GPU).

The CPU build takes an hour, so recipe choices against the length bias are made here:
each variant trains on prepared pairs (``app/pipelines/default_model.py`` writes them), its
best checkpoint is scored on the adversarial and length-sensitive benchmarks, and one
table compares them. Nothing here picks on the benchmarks automatically: the table is
for a person, and gold (held-out human pairs) is what the recipe selects checkpoints on.
Scores are the raw outputs: the length correction the shipped default gets
(``trainer/bt/length_control.py``) is not fitted here.

    python bench/default_recipe_sweep.py --pairs-dir build/default-model --bench ../shared/data \\
        --variant no-head:train.jsonl:length_head=0 --variant head:train.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCHES = (("llmbar", "llmbar/Dataset/LLMBar"), ("rm-bench", "rm-bench"), ("autoj", "auto-j/testdata_pairwise.jsonl"))


def parse_variant(text: str) -> tuple[str, str, dict]:
    """NAME:TRAIN_FILE[:key=value,key=value]."""
    name, train_file, *rest = text.split(":", 2)
    overrides = {}
    for kv in (rest[0].split(",") if rest and rest[0] else []):
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)  # numbers, true/false
        except json.JSONDecodeError:
            overrides[k] = v  # a plain string: linear, fp32
    return name, train_file, overrides


def bench_rows(result: dict) -> dict:
    """Headline accuracy, the adversarial part, and the length-bias split per benchmark."""
    rows = {}
    for b in result["benchmarks"]:
        m, diag = b["metrics"]["model"], b.get("diagnostics", {})
        lb = diag.get("length_bias", {})
        row = {k: round(v, 1) for k, v in m.items() if isinstance(v, float)}
        for cat, v in (m.get("by_category") or {}).items() if b["format"] == "llmbar" else ():
            if isinstance(v, dict) and "accuracy" in v:
                row[cat] = round(v["accuracy"], 1)
        if lb:
            row["longer"], row["shorter"] = round(lb["chosen_longer"]["accuracy"], 1), round(
                lb["chosen_shorter"]["accuracy"], 1)
        row["spearman"] = round(diag.get("score_length_correlation", {}).get("spearman", float("nan")), 3)
        rows[b["format"]] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs-dir", type=Path, required=True, help="holds the train files and gold.jsonl")
    ap.add_argument("--bench", type=Path, required=True, help="folder with llmbar/, rm-bench/, auto-j/")
    ap.add_argument("--base", type=Path, default=None, help="MiniLM folder (default: the installed package)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "sweep")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=int, default=None, help="records per benchmark (a smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines, one per variant")
    args = ap.parse_args(argv)

    import engine
    from app.pipelines import default_model
    from trainer.bt.train import train
    from trainer.data.record import read_pairs
    from trainer.eval.runner import run_model

    recipe = default_model.parser().parse_args([])  # the shipped recipe; each variant overrides some of it
    base = args.base or default_model.minilm_dir()
    gold = list(read_pairs(args.pairs_dir / "gold.jsonl"))
    results = []
    for spec in args.variant:
        name, train_file, overrides = parse_variant(spec)
        cfg = default_model.recipe_config(recipe, **{"threads": None, "progress": False, **overrides})
        run = args.work / name
        t0 = time.time()
        res = train(base, read_pairs(args.pairs_dir / train_file), gold, run, cfg)
        train_s = time.time() - t0
        curve = [(r["step"], round(r["accuracy_length_balanced"], 3), round(r["accuracy"], 3),
                  round(r.get("reward_length_pearson") or 0, 3))
                 for r in _gold_rows(res.run_id)]
        with engine.load(run / "best", device=args.device) as rm:
            out = run_model(rm, [f"{fmt}:{args.bench / rel}" for fmt, rel in BENCHES], plots=False, limit=args.limit)
        row = {"variant": name, "train_file": train_file, "overrides": overrides, "train_s": round(train_s),
               "best_step": res.best_step, "gold": {k: round(v, 3) for k, v in (res.best_gold or {}).items()
                                                    if isinstance(v, float)},
               "gold_curve (step, balanced, plain, reward-length r)": curve, "bench": bench_rows(out.result)}
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print("\nvariant | gold bal | gold plain | LLMBar | Adv | RM-B hard/normal/easy | Auto-J | "
          "longer/shorter (LLMBar, RM-B, Auto-J)")
    for r in results:
        b = r["bench"]
        lb, rb, aj = b.get("llmbar", {}), b.get("rm-bench", {}), b.get("autoj", {})
        adv = [v for k, v in lb.items() if k.startswith("Adversarial")]
        print(f"{r['variant']} | {r['gold'].get('accuracy_length_balanced')} | {r['gold'].get('accuracy')} | "
              f"{lb.get('accuracy')} | {adv} | {rb.get('hard')}/{rb.get('normal')}/{rb.get('easy')} | "
              f"{aj.get('accuracy')} | {lb.get('longer')}/{lb.get('shorter')}, {rb.get('longer')}/"
              f"{rb.get('shorter')}, {aj.get('longer')}/{aj.get('shorter')}")
    return 0


def _gold_rows(run_id: str) -> list[dict]:
    from engine.store import Store
    from trainer.bt.runlog import RunLog

    return RunLog(Store.default(), run_id).rows("gold")


if __name__ == "__main__":
    sys.exit(main())
