"""`arbiter curate gold-rm` and `arbiter curate stage2`: curation stage 2 (trainer/curate/stage2.py).

    arbiter curate gold-rm --gold FILE... [--from-run STAGE1_DIR] --out DIR [--base B] [--set K=V]
    arbiter curate stage2 --pool P... --gold G... --gold-rm M --current-rm M --out DIR
        [--band auto|F] [--judge GGUF | --judge-url URL --judge-model NAME ...] [--no-recycle]
        [--format jsonl|parquet] [--engine local|ray] [--address A] [--actors N] [--gpus-per-actor G]

``gold-rm`` trains a Bradley-Terry RM on human-labelled pairs only (the gold files, and with
``--from-run`` the human labels of a stage-1 run) and exports it to ONNX fp32 in ``DIR/onnx``,
the fast scorer stage 2 wants. ``stage2`` streams the pool shards (files or folders of
.jsonl/.jsonl.gz/.parquet); a killed run resumes when the same command runs again.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from app.cli.common import add_json, emit, positive_int

#: share of the human pairs held out to pick the gold RM's checkpoint (at least one pair)
HOLDOUT = 0.1
#: origins that are not a person's judgement: the gold RM must never see them
NOT_HUMAN = ("llm", "model", "synthetic", "flipped")


def register_stage2(stages: argparse._SubParsersAction) -> None:
    """Add the ``gold-rm`` and ``stage2`` subcommands to ``arbiter curate``."""
    _register_gold_rm(stages)
    _register_stage2(stages)


def _register_gold_rm(stages: argparse._SubParsersAction) -> None:
    g = stages.add_parser("gold-rm", help="train the gold RM on human-labelled pairs only, export ONNX",
                          epilog="A killed run resumes its training when the same command is run again.")
    add_json(g)
    g.add_argument("--gold", nargs="+", default=[], metavar="FILE", help="human-labelled pair files")
    g.add_argument("--from-run", default=None, metavar="STAGE1_DIR",
                   help="also the human labels of a stage-1 run (its curation.db)")
    g.add_argument("--format", default="auto", help="input format of the gold files (default: detect)")
    g.add_argument("--out", required=True, help="folder: rm/ (checkpoints), onnx/ (the scorer)")
    g.add_argument("--base", default=None, help="the reward model's base (default: all-MiniLM-L6-v2, installed)")
    g.add_argument("--config", help="a YAML or JSON TrainConfig file")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one train setting")
    g.add_argument("--holdout", type=float, default=HOLDOUT,
                   help=f"share of the pairs held out to pick the checkpoint (default {HOLDOUT})")
    g.add_argument("--seed", type=int, default=0, help="which pairs are held out (default 0)")
    g.set_defaults(func=cmd_gold_rm)


def _register_stage2(stages: argparse._SubParsersAction) -> None:
    s = stages.add_parser("stage2", help="filter the pool: gold RM, current RM, judges where unsure",
                          epilog="A killed run resumes when the same command is run again.")
    add_json(s)
    s.add_argument("--pool", nargs="+", required=True, metavar="P", help="pool files or folders of shards")
    s.add_argument("--gold", nargs="+", required=True, metavar="G",
                   help="human gold pairs: the band, and the judges' examples")
    s.add_argument("--gold-format", default="auto", help="input format of the gold files (default: detect)")
    s.add_argument("--gold-rm", required=True, metavar="M", help="the gold RM (arbiter curate gold-rm's DIR/onnx)")
    s.add_argument("--current-rm", required=True, metavar="M", help="the current best RM")
    s.add_argument("--out", required=True, help="the run folder (stage2.db, kept/, flipped/)")
    s.add_argument("--band", default="auto", help="auto (measured on gold) or a number in [0, 0.5)")
    s.add_argument("--band-target", type=float, default=0.9,
                   help="auto: the current RM's gold accuracy outside the band to reach (default 0.9)")
    from app.cli.curate import add_judge_args

    add_judge_args(s)
    s.add_argument("--samples", type=positive_int, default=1, help="samples per judge, majority (default 1)")
    s.add_argument("--embedder", default=None,
                   help="an exported embedder folder for the judges' examples (default: all-MiniLM-L6-v2)")
    s.add_argument("--no-recycle", action="store_true", help="do not write discarded pairs flipped")
    s.add_argument("--round", type=positive_int, default=1, help="the curation round recorded (default 1)")
    s.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="output format (default jsonl)")
    s.add_argument("--chunk-rows", type=positive_int, default=1024, help="rows per committed chunk (default 1024)")
    s.add_argument("--batch-size", type=positive_int, default=32, help="scoring batch (default 32)")
    s.add_argument("--threads", type=positive_int, default=None, help="CPU threads per model")
    s.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    s.add_argument("--seed", type=int, default=0, help="which order each pair is shown to a judge first")
    s.add_argument("--engine", choices=("local", "ray"), default="local", help="where the RMs score (default local)")
    s.add_argument("--address", default=None, help="Ray: a cluster address (default: a local Ray for the run)")
    s.add_argument("--actors", type=positive_int, default=None, help="Ray: scoring actors")
    s.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray: GPUs per actor (default 0)")
    s.set_defaults(func=cmd_stage2)


# -- gold-rm ------------------------------------------------------------------------------------

def _human_pairs(args: argparse.Namespace) -> list[Any]:
    """Every human-labelled pair, ties out, ids unique (a later copy of an id replaces none)."""
    from engine.errors import InputError
    from trainer.data import load

    if not args.gold and not args.from_run:
        raise InputError("give human-labelled pairs: --gold FILE... and/or --from-run STAGE1_DIR")
    pairs: list[Any] = []
    for f in args.gold:
        for p in load(f, args.format, split="gold"):
            if p.label_origin in NOT_HUMAN:
                raise InputError(f"pair {p.id!r} is labelled by {p.label_origin!r}; the gold RM trains on "
                                 "human labels only", source=f, field="label_origin")
            pairs.append(p)
    if args.from_run:
        pairs += _run_humans(Path(args.from_run))
    seen: set[str] = set()
    unique = []
    for p in pairs:
        if not p.tie and p.id not in seen:
            seen.add(p.id)
            unique.append(p)
    if len(unique) < 2:
        raise InputError(f"{len(unique)} usable human pairs (ties left out); the gold RM needs at least 2")
    return unique


def _run_humans(folder: Path) -> list[Any]:
    """A stage-1 run's human labels: the majority label of each pair humans labelled."""
    from engine.errors import InputError
    from trainer.curate.annotations import AnnotationStore
    from trainer.curate.runstore import DB_NAME

    db = folder / DB_NAME
    if not db.is_file():
        raise InputError(f"no stage-1 run here (no {DB_NAME})", source=str(folder))
    store = AnnotationStore(db)
    try:
        return list(store.gold_pairs())
    finally:
        store.close()


def _split(pairs: list[Any], share: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded ``share`` (at least one pair, at most all but one) held out."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = min(len(pairs) - 1, max(1, round(share * len(pairs))))
    held = set(order[:k])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def cmd_gold_rm(args: argparse.Namespace) -> int:
    from engine.errors import InputError
    from trainer.bt.config import TrainConfig, parse_override
    from trainer.bt.train import train

    if not 0.0 < args.holdout < 1.0:
        raise InputError(f"--holdout must be between 0 and 1, not {args.holdout}")
    pairs = _human_pairs(args)
    overrides = {"progress": False, **dict(parse_override(x) for x in args.set)}
    cfg = TrainConfig.from_file(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)
    train_pairs, held = _split(pairs, args.holdout, args.seed)
    out = Path(args.out)
    rm_dir = out / "rm"
    resume = (rm_dir / "last" / "state" / "trainer.json").is_file()
    _log(f"gold RM: training on {len(train_pairs)} human pairs, checkpoint picked on {len(held)}"
         + (" (resumed)" if resume else ""))
    result = train(_base(args.base), train_pairs, held, rm_dir, cfg, resume=resume,
                   notes={"curation": "gold-rm", "out": str(out)})
    onnx_dir = _export(rm_dir / "best", out / "onnx")
    best = result.best_gold or {}
    data = {"out": str(out), "onnx": str(onnx_dir), "checkpoint": str(rm_dir / "best"),
            "train_pairs": len(train_pairs), "heldout_pairs": len(held), "steps": result.steps,
            "best_step": result.best_step, "best_gold": result.best_gold}
    acc = best.get("accuracy")
    human = (f"gold RM: {len(train_pairs)} human pairs, {result.steps} steps, held-out accuracy "
             f"{'n/a' if acc is None else f'{acc:.3f}'} at step {result.best_step}\n{onnx_dir}")
    emit(args, data, human)
    return 0


def _base(base: str | None) -> Path:
    if base is not None:
        return Path(base)
    from trainer.reference_models import minilm_dir

    return minilm_dir()


def _export(best: Path, final: Path) -> Path:
    """ONNX fp32 of the best checkpoint, into a stage folder renamed over ``final`` when whole."""
    import warnings

    from exports.onnx import export_onnx

    stage = final.with_name(final.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    with warnings.catch_warnings():  # torch's tracer notes on the HF graph: noise to a user here
        warnings.simplefilter("ignore")
        export_onnx(best, stage, quant=None)
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    return final


# -- stage2 -------------------------------------------------------------------------------------

def _band(text: str) -> float | str:
    from engine.errors import InputError

    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--band must be auto or a number in [0, 0.5), not {text!r}") from None
    if not 0.0 <= value < 0.5:
        raise InputError(f"--band must be in [0, 0.5), not {value}")
    return value


def _judges(args: argparse.Namespace) -> list[Any]:
    """The judges given (none is allowed: unconfident pairs are then discarded, ``no_judge``)."""
    if not args.judge and not args.judge_url:
        return []
    from app.cli.curate import _judges as stage1_judges

    for g in args.judge:
        if not Path(g).is_file():
            from engine.errors import ModelError

            raise ModelError(f"{g}: no such judge model file")
    return stage1_judges(args)


def _check_models(args: argparse.Namespace) -> None:
    from engine.errors import ModelError

    for flag, path in (("--gold-rm", args.gold_rm), ("--current-rm", args.current_rm)):
        if not Path(path).exists():
            raise ModelError(f"{path}: no such model ({flag})")


def cmd_stage2(args: argparse.Namespace) -> int:
    from trainer.curate.stage2 import Stage2Config, run_stage2

    _check_models(args)
    cfg = Stage2Config(pool=[Path(p) for p in args.pool], gold=[Path(g) for g in args.gold],
                       gold_rm=Path(args.gold_rm), current_rm=Path(args.current_rm), out=Path(args.out),
                       band=_band(args.band), judges=[], embedder=Path(args.embedder) if args.embedder else None,
                       samples=args.samples, recycle=not args.no_recycle, round=args.round,
                       chunk_rows=args.chunk_rows, batch_size=args.batch_size, output_format=args.format,
                       threads=args.threads, device=args.device, seed=args.seed, band_target=args.band_target,
                       concurrency=args.concurrency, gold_format=args.gold_format)
    cfg.judges = _judges(args)
    scored = None
    try:
        if cfg.judges and cfg.embedder is None:  # the judges' examples are the nearest gold pairs
            from exports.embedder import default_embedder

            cfg.embedder = default_embedder()
        scored = _ray_chunks(args, cfg) if args.engine == "ray" else None
        summary = run_stage2(cfg, progress=_log, scored_chunks=scored)
    finally:
        close = getattr(scored, "close", None)  # the Ray path's actors, where it has any
        if callable(close):
            close()
        for j in cfg.judges:
            j.close()
    out = Path(args.out)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items())) or "none"
    human = (f"stage 2 in {out}: {summary.rows} pairs in {summary.shards} shards; kept {summary.kept}, "
             f"discarded {summary.discarded}, flipped {summary.flipped}, unscored {summary.unscored} "
             f"(band {summary.band}{'' if summary.band_reached else ', target not reached'}); reasons: {reasons}; "
             f"judged {summary.judged} ({summary.calls_made} calls, {summary.cache_hits} cached)\n"
             f"kept: {out / 'kept'}" + (f"; flipped: {out / 'flipped'}" if cfg.recycle else ""))
    emit(args, summary.to_dict(), human)
    return 0


def _ray_chunks(args: argparse.Namespace, cfg: Any) -> Any:
    from engine.errors import InputError

    try:
        from trainer.curate.stage2_ray import RayOptions, ray_scored_chunks_factory
    except ImportError as e:
        raise InputError(f"--engine ray needs Ray: pip install 'arbiter[scale]' ({e})") from None
    opts = RayOptions(address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    return ray_scored_chunks_factory(cfg, opts)


def _log(line: str) -> None:
    print(f"arbiter curate: {line}", file=sys.stderr, flush=True)
