"""`arbiter eval`: benchmark a reward model (or precomputed scores) with baselines beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.common import ProgressBar, add_json, add_model_options, emit, load_model, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a reward model on benchmarks (RewardBench, RM-Bench, JudgeBench, RMB, ...)",
        description="Scores every benchmark item with the model exactly as users run it, computes each "
                    "benchmark's published metric next to random / longer-wins / shorter-wins baselines, "
                    "and writes JSON, markdown and PNG plots. An interrupted run resumes: the same "
                    "command again scores only what is missing.")
    add_model_options(p)
    add_json(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bench", action="append", metavar="FORMAT:PATH",
                     help="a benchmark file or folder; FORMAT is one of pairwise, rewardbench, rewardbench2, "
                          "rm-bench, judgebench, rmb, llmbar, pandalm, auto-j (or its old name autoj), ppe (left out: recognised "
                          "from the rows). Repeat for several.")
    src.add_argument("--scores", action="append", metavar="FORMAT:PATH",
                     help="precomputed scores instead of a model: judgebench-rm (JudgeBench's published "
                          "reward-model outputs) or scored-pairs (JSONL chosen_score, rejected_score)")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON, markdown and PNG files")
    p.add_argument("--batch-size", type=positive_int, default=None)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--limit", type=positive_int, default=None,
                      help="only the first N items of each benchmark (a run of its own in the store)")
    size.add_argument("--sample", type=positive_int, default=None,
                      help="N items spread evenly through each benchmark, so every file and category "
                           "of a large one (RMB) is in it (a run of its own in the store)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--on-too-long", choices=["skip", "window"], default="skip",
                   help="a record with a response over the model's context: left out of the metrics "
                        "and counted (default), or scored in overlapping windows (cross-encoders; a "
                        "run of its own in the store, its policy in the report)")
    p.add_argument("--window-agg", choices=["mean", "min", "max", "first", "last"], default=None,
                   help="with --on-too-long window: how the windows' scores make one (default: the "
                        "engine's, the best measured in bench/results/long_inputs.md)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from trainer.eval.report import jsonable, markdown
    from trainer.eval.runner import run_model, run_scores

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        from engine.errors import InputError

        raise InputError("is not a folder; --out names a folder for the JSON, markdown and PNG files",
                         source=str(args.out))
    if args.scores:
        outcome = run_scores(args.scores, out_dir=args.out, plots=not args.no_plots)
    else:
        bars: dict[str, ProgressBar] = {}

        def progress(name: str, done: int, total: int | None) -> None:
            bar = bars.setdefault(name, ProgressBar(f"scoring {name}"))
            bar(done, total)

        try:
            with load_model(args) as rm:
                from engine.scorer import WINDOW_AGG

                outcome = run_model(rm, args.bench, out_dir=args.out, limit=args.limit, sample=args.sample,
                                    batch_size=args.batch_size, progress=progress, plots=not args.no_plots,
                                    on_too_long=args.on_too_long, window_agg=args.window_agg or WINDOW_AGG)
        finally:
            for bar in bars.values():
                bar.close()
    human = markdown(outcome.result)
    if outcome.paths:
        human += "\nwritten: " + ", ".join([outcome.paths["json"], outcome.paths["markdown"]]
                                             + list(outcome.paths.get("plots", [])))
    if not args.scores:
        human += (f"\nscored {outcome.items_scored} responses, reused {outcome.items_reused} "
                  "from an earlier run of this model")
    emit(args, jsonable({**outcome.result, "written": outcome.paths}), human)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `arbiter`")
