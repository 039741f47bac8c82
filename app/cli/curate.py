"""`arbiter curate stage1`: the stage-1 curation loop (trainer/curate/stage1.py).

    arbiter curate stage1 --pool POOL --gold GOLD --silver SILVER --judge GGUF --rounds R --out DIR
    arbiter curate stage1 ... --judge-url http://127.0.0.1:8080 --judge-model NAME [--api-key-env VAR]

``--judge`` and ``--judge-url``/``--judge-model`` repeat (several judges, majority across
them). Pool, gold and silver are read by the trainer's importers (any format they read);
a bad row stops the run before any model loads, with ``FILE:LINE: field 'X': ...``. A run
that was killed, or that lost its judge endpoint, resumes when the same command runs again:
the judges are asked nothing they answered before.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.cli.common import add_json, emit, positive_int
from app.cli.curate_report import register_report
from app.cli.curate_stage2 import register_stage2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="curate preference data with LLM judges (needs arbiter[curate])",
                       description="arbiter curate stage1 --pool POOL --gold GOLD --silver SILVER "
                                   "(--judge GGUF | --judge-url URL --judge-model NAME) --rounds R --out DIR")
    stages = p.add_subparsers(dest="stage", required=True)
    s = stages.add_parser("stage1", help="train, retrieve what the RM gets wrong, judge it, queue humans",
                          epilog="A killed run resumes when the same command is run again.")
    add_json(s)
    s.add_argument("--pool", required=True, help="unlabelled (or noisily labelled) pairs to retrieve from")
    s.add_argument("--gold", required=True, help="human-labelled pairs: checkpoint selection and retrieval")
    s.add_argument("--silver", required=True, help="pairs the reward model is trained on")
    s.add_argument("--format", default="auto", help="input format of the three files (default: detect)")
    add_judge_args(s)
    s.add_argument("--rounds", type=positive_int, required=True, help="rounds to run (a rerun continues)")
    s.add_argument("--out", required=True, help="the run folder (curation.db, calls.db, round-N/, silver.jsonl)")
    s.add_argument("--base", default=None, help="the reward model's base (default: all-MiniLM-L6-v2, installed)")
    s.add_argument("--config", help="a YAML or JSON TrainConfig file (default: 128 tokens, one epoch)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one train setting")
    s.add_argument("--samples", type=positive_int, default=1, help="samples per judge, majority (default 1)")
    s.add_argument("--human-share", type=float, default=0.25,
                   help="at most this share of each round's retrieved pairs goes to the human queue, "
                        "objective low-controversy ones only (default 0.25)")
    s.add_argument("--overlap", type=positive_int, default=1, help="annotators per queued pair (default 1)")
    s.add_argument("--embedder", default=None,
                   help="an exported embedder folder (default: all-MiniLM-L6-v2, exported once)")
    s.add_argument("--seed", type=int, default=0, help="which order each pair is shown first (default 0)")
    s.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the local judge")
    s.set_defaults(func=cmd_stage1)
    register_report(stages)
    register_stage2(stages)


def add_judge_args(s: argparse.ArgumentParser) -> None:
    """The judge options stage 1 and stage 2 share: local GGUF judges and HTTP endpoints."""
    s.add_argument("--judge", action="append", default=[], metavar="GGUF", help="a local GGUF chat model (repeat)")
    s.add_argument("--judge-url", action="append", default=[], metavar="URL",
                   help="an OpenAI-compatible endpoint (repeat; each with its --judge-model)")
    s.add_argument("--judge-model", action="append", default=[], metavar="NAME",
                   help="the model name for the --judge-url of the same position")
    s.add_argument("--api-key-env", action="append", default=[], metavar="VAR",
                   help="the environment variable holding the API key of the --judge-url of the same "
                        "position (give one for all, or one each; never logged)")
    s.add_argument("--concurrency", type=positive_int, default=4, help="pairs judged at once (default 4)")


def _read_sets(args: argparse.Namespace) -> dict[str, list[Any]]:
    """All three files, whole, before anything slow: a bad row fails here (FILE:LINE: field)."""
    from trainer.data import load

    return {name: list(load(getattr(args, name), args.format, split="gold" if name == "gold" else "train"))
            for name in ("pool", "gold", "silver")}


def _judges(args: argparse.Namespace) -> list[Any]:
    from engine.errors import InputError
    from trainer.curate.judges import HTTPJudge, LocalJudge

    if not args.judge and not args.judge_url:
        raise InputError("give a judge: --judge GGUF or --judge-url URL --judge-model NAME")
    if len(args.judge_model) != len(args.judge_url):
        raise InputError(f"each --judge-url needs its --judge-model ({len(args.judge_url)} urls, "
                         f"{len(args.judge_model)} models)")
    keys = args.api_key_env
    if len(keys) not in (0, 1, len(args.judge_url)):
        raise InputError(f"give one --api-key-env for all endpoints or one per --judge-url, not {len(keys)}")
    judges: list[Any] = [LocalJudge(Path(g), threads=args.threads) for g in args.judge]
    for i, (url, model) in enumerate(zip(args.judge_url, args.judge_model, strict=True)):
        key = keys[i] if len(keys) > 1 else (keys[0] if keys else None)
        judges.append(HTTPJudge(url, model, api_key_env=key, concurrency=args.concurrency))
        judges[-1].check()  # a down endpoint or a refused key fails now, not after training
    return judges


def _config(args: argparse.Namespace) -> Any:
    from trainer.bt.config import TrainConfig, parse_override

    overrides = {"max_length": 128, "progress": False, **dict(parse_override(x) for x in args.set)}
    return TrainConfig.from_file(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)


def cmd_stage1(args: argparse.Namespace) -> int:
    from engine.errors import InputError
    from trainer.curate.stage1 import label_counts, run_stage1

    if not 0.0 <= args.human_share <= 1.0:
        raise InputError(f"--human-share must be between 0 and 1, not {args.human_share}")
    sets = _read_sets(args)
    cfg = _config(args)
    if args.embedder and not (Path(args.embedder) / "arbiter.json").is_file():
        raise InputError("not an exported embedder folder (no arbiter.json)", source=args.embedder)
    judges = _judges(args)  # before the embedder export: a wrong judge fails in a second
    try:
        embedder = Path(args.embedder) if args.embedder else _default_embedder()
        metrics = run_stage1(sets["pool"], sets["gold"], sets["silver"], judges, args.rounds, args.out,
                             base=args.base, train_config=cfg, embedder=embedder, samples=args.samples,
                             human_share=args.human_share, overlap=args.overlap, seed=args.seed,
                             concurrency=args.concurrency, progress=_log)
    finally:
        for j in judges:
            j.close()
    totals = label_counts(metrics)
    data = {"out": str(Path(args.out)), "rounds": [m.to_dict() for m in metrics], "totals": totals}
    human = (f"{len(metrics)} rounds in {args.out}: {totals.get('labelled', 0)} pairs labelled, "
             f"{totals.get('abstained', 0)} abstained, {totals.get('queued_for_humans', 0)} sent to humans; "
             f"judge calls this run {totals.get('calls_this_run', 0)}\n"
             f"silver with provenance: {Path(args.out) / 'silver.jsonl'}; "
             f"label the human queue: arbiter gui (Annotate), export it: arbiter annotate export {args.out}")
    emit(args, data, human)
    return 0


def _default_embedder() -> Path:
    from exports.embedder import default_embedder

    return default_embedder()


def _log(line: str) -> None:
    print(f"arbiter curate: {line}", file=sys.stderr, flush=True)
