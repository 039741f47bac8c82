"""`arbiter data`: make training data files.

    arbiter data synthesize --out F.jsonl [--per-family N] [--seed S] [--family NAME ...] [--data DIR]

``synthesize`` writes rule-made preference pairs aimed at the default model's failure modes
(trainer/data/synthetic.py): a changed fact, a broken constraint, refusal vs compliance, concise
vs padded. They are edits of real answers in the shared data folder, decontaminated against
every benchmark there, each labelled ``synthetic``. The file is written only when complete.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.cli.common import add_json, emit, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make training data files (synthetic pairs)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synthesize", help="rule-made pairs aimed at the failure modes (labelled synthetic)")
    add_json(s)
    s.add_argument("--out", required=True, help="output pairs file (.jsonl, .jsonl.gz or .parquet)")
    s.add_argument("--per-family", type=positive_int, default=200, help="pairs per family at most (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--family", action="append", default=None, metavar="NAME",
                   help="only this family (repeatable): fact, constraint, refusal, concise")
    s.add_argument("--data", default=None,
                   help="the shared data folder (default: ../shared/data beside the checkout)")
    s.set_defaults(func=cmd_synthesize)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from engine.errors import InputError
    from trainer.data import synthetic
    from trainer.data.record import write_pairs

    data = Path(args.data) if args.data else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not data.is_dir():
        raise InputError("no such folder: synthetic pairs are edits of the shared data's answers (--data)",
                         source=str(data))
    families = args.family or list(synthetic.FAMILIES)
    bad = sorted(set(families) - set(synthetic.FAMILIES))
    if bad:
        raise InputError(f"unknown family {', '.join(bad)}; one of {', '.join(synthetic.FAMILIES)}",
                         field="--family")
    pools = synthetic.load_pools(data)
    decon = synthetic.decontaminator_for(data)
    stats = synthetic.SynthesisStats()
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{''.join(out.suffixes)}")
    try:
        n = write_pairs(synthetic.synthesize(pools, per_family=args.per_family, seed=args.seed, families=families,
                                             decontaminator=decon, stats=stats), tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary = stats.to_dict()
    summary["contaminated_by"] = {_rel(k, data): v for k, v in summary["contaminated_by"].items()}
    human = "\n".join(
        [f"wrote {n} synthetic pairs to {out}"]
        + [f"  {f:<10} kept {stats.kept[f]:>4} of {stats.made[f]:>4} made; chosen longer "
           f"{_pct(stats.share_longer(f))}; removed {summary['removed'].get(f) or 'none'}" for f in families]
        + [f"  all        chosen longer {_pct(stats.share_longer())}"])
    emit(args, {"out": str(out), "pairs": n, **summary}, human)
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _rel(name: str, data: Path) -> str:
    try:
        return str(Path(name).relative_to(data))
    except ValueError:
        return name
