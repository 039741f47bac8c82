"""`arbiter train`: a Bradley-Terry reward model from preference files.

    arbiter train --base B --train FILES --gold FILES --out DIR [--config FILE] [--set KEY=VALUE]

Train files go through the hygiene pass (empty responses, duplicates, 13-gram
decontamination against ``--benchmarks`` and the gold prompts); what was removed
and why is written to ``DIR/data_report.json``. Under ``accelerate launch`` every
process runs this command; only the main one writes and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.common import add_json, emit, finite_or_null
from engine.output import write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Bradley-Terry reward model (needs arbiter[train])")
    add_json(p)
    p.add_argument("--base", required=True, help="HF model folder (safetensors) or a .gguf file")
    p.add_argument("--train", nargs="+", required=True, metavar="FILE", help="preference files to train on")
    p.add_argument("--gold", nargs="*", default=[], metavar="FILE",
                   help="human-labelled validation files; the best checkpoint by their accuracy is kept")
    p.add_argument("--out", required=True, help="output folder (best/, last/, data_report.json)")
    p.add_argument("--config", help="a YAML or JSON TrainConfig file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p.add_argument("--format", default="auto", help="input format for every file (default: detect)")
    p.add_argument("--label-origin", default="unknown", help="for formats that do not say who labelled them")
    p.add_argument("--ties", choices=("keep", "drop"), default="drop", help="pairs labelled as ties")
    p.add_argument("--benchmarks", nargs="*", default=[], metavar="FILE",
                   help="benchmark files: train pairs sharing a 13-gram with their prompts are dropped")
    p.add_argument("--bad-rows", choices=("raise", "skip"), default="raise",
                   help="a malformed row stops the run (raise) or is skipped and reported (skip)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last (from the start when OUT holds no checkpoint yet, as "
                        "after a run killed before its first one)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from trainer.bt.config import TrainConfig, parse_override
    from trainer.bt.train import train
    from trainer.data import load
    from trainer.data.hygiene import Decontaminator, HygieneReport, clean
    from trainer.data.importers import ImportReport

    overrides = dict(parse_override(s) for s in args.set)
    cfg = TrainConfig.from_file(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)
    opts: dict[str, Any] = {"ties": args.ties, "errors": args.bad_rows, "label_origin": args.label_origin}
    imports: dict[str, ImportReport] = {}

    def read(files: list[str], split: str):
        for f in files:
            imports[f] = ImportReport()
            yield from load(f, args.format, split=split, report=imports[f], **opts)

    gold_report, train_report = HygieneReport(), HygieneReport()
    gold = list(clean(read(args.gold, "gold"), report=gold_report))
    decon = Decontaminator([Path(b) for b in args.benchmarks], report=train_report)
    decon.add_texts(("\n".join(m.content for m in p.conversation) for p in gold), "gold")
    train_pairs = clean(read(args.train, "train"), decontaminator=decon, report=train_report)
    resume = args.resume and _has_checkpoint(Path(args.out))
    if args.resume and not resume:
        print(f"arbiter: no checkpoint in {Path(args.out) / 'last'} yet: training from the start",
              file=sys.stderr)
    result = train(args.base, train_pairs, gold, args.out, cfg, resume=resume)
    if not PartialState().is_main_process:
        return 0
    report = {"train": train_report.to_dict(), "gold": gold_report.to_dict(),
              "import": {f: r.to_dict() for f, r in imports.items()}}
    write_text(Path(args.out, "data_report.json"),
               json.dumps(finite_or_null(report), indent=2, ensure_ascii=False, allow_nan=False))
    best = result.best_gold or {}
    data = {"run_id": result.run_id, "out": str(result.out), "steps": result.steps,
            "best_step": result.best_step, "best_gold": result.best_gold, "data": result.data,
            "hygiene": {"train": train_report.summary(), "gold": gold_report.summary()}}
    human = (f"run {result.run_id}: {result.steps} steps; best gold accuracy "
             f"{best.get('accuracy', float('nan')):.3f} at step {result.best_step} -> {Path(args.out) / 'best'}\n"
             f"length bias (gold): accuracy {_pct(best.get('accuracy_chosen_longer'))} when chosen is longer, "
             f"{_pct(best.get('accuracy_chosen_shorter'))} when shorter\n"
             f"train data: {train_report.summary()}")
    emit(args, data, human)
    return 0


def _has_checkpoint(out: Path) -> bool:
    """Whether OUT/last holds a resumable state (trainer.json is the checkpoint's last file)."""
    return (out / "last" / "state" / "trainer.json").is_file()


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
