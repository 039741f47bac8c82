"""`arbiter annotate`: the human side of curation outside the app.

    arbiter annotate export RUN -o gold.jsonl
    arbiter annotate agreement LABELS.jsonl [--pairs PAIRS [--model M]] [--judge-votes VOTES.jsonl] --json

``export`` writes the human-labelled pairs of a curation run (RUN/curation.db) or of an
annotation DB as gold, in the trainer's format, with each pair's provenance. ``agreement``
measures how far the annotators agree (Krippendorff's alpha with a bootstrap interval, Cohen's
kappa per pair of annotators) and how far the human majority agrees with the reward model and
with each judge. Labels are in the pairs' stored order: "1" = the first (chosen) response.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli.common import ProgressBar, add_json, add_model_options, emit, positive_int

_SQLITE_MAGIC = b"SQLite format 3\x00"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="human labels: export gold pairs, measure agreement",
                       description="arbiter annotate export RUN -o gold.jsonl | agreement LABELS.jsonl")
    actions = p.add_subparsers(dest="action", required=True)

    e = actions.add_parser("export", help="write a run's human-labelled pairs as gold (trainer format)",
                           epilog="Each pair gets the strict majority of its labels (as many as its overlap "
                                  "asks for); conflicts and both_bad pairs are left out, ties are kept "
                                  "with tie=true. Provenance is in attributes.curation.")
    add_json(e)
    e.add_argument("run", help="a curation run folder (holding curation.db) or an annotation DB (.db)")
    e.add_argument("--out", "-o", required=True, help="the gold file: .jsonl, .jsonl.gz or .parquet")
    e.add_argument("--min-labels", type=positive_int, default=None,
                   help="labels a pair needs to count (default: its overlap)")
    e.set_defaults(func=cmd_export)

    a = actions.add_parser("agreement", help="agreement among annotators, and with the RM and judges",
                           epilog='LABELS rows: {"pair_id", "annotator", "label"}, label one of "1", "2", '
                                  '"tie", "both_bad" (the stored order). VOTES rows: {"pair_id", "judge", '
                                  '"label"} (null = abstained).')
    add_json(a)
    add_model_options(a)
    a.set_defaults(model=None)  # the RM is asked only with --pairs; then 'default' unless given
    a.add_argument("labels", help="the labels file (JSONL or a JSON array), or a run folder / "
                                  "annotation DB (its labels in force)")
    a.add_argument("--pairs", default=None,
                   help="the labelled pairs (any format the trainer reads): the RM scores them")
    a.add_argument("--judge-votes", default=None, metavar="VOTES", help="judges' labels to compare with")
    a.add_argument("--resamples", type=positive_int, default=1000,
                   help="bootstrap resamples for alpha's 95%% interval (default 1000)")
    a.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    a.set_defaults(func=cmd_agreement)


# ---- export ----------------------------------------------------------------------------------

def annotation_db(run: str) -> Path:
    """The SQLite file RUN names: RUN/curation.db for a folder, else RUN itself (checked)."""
    from engine.errors import InputError

    p = Path(run)
    if p.is_dir():
        db = p / "curation.db"
        if not db.is_file():
            raise InputError("not a curation run folder (no curation.db in it)", source=run)
        return db
    if not p.exists():
        raise InputError("no such file or folder", source=run)
    if not is_sqlite(p):
        raise InputError("not an annotation database (SQLite); a pairs file is labelled in the app "
                         "first (Annotate, Open), which creates FILE.annotate.db beside it", source=run)
    return p


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is an SQLite database file (by its 16-byte header), not a pairs or labels file."""
    from engine.errors import InputError

    try:
        with path.open("rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except IsADirectoryError:
        return False
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", source=str(path)) from None


def cmd_export(args: argparse.Namespace) -> int:
    from engine.errors import InputError
    from engine.output import atomic_output
    from trainer.curate.annotations import AnnotationStore
    from trainer.data.record import write_pairs

    db = annotation_db(args.run)
    try:
        with AnnotationStore(db) as store:
            pairs = list(store.gold_pairs(min_labels=args.min_labels))
            progress = store.progress()
    except sqlite3.DatabaseError as e:  # not the data folder's arbiter.db: name this file
        raise InputError(f"cannot read the annotation tables ({e})", source=str(db)) from None
    # write_pairs picks the format from the name; it writes to a scratch copy of that name,
    # which atomic_output then puts in place whole (or streams to a device or FIFO)
    with tempfile.TemporaryDirectory(prefix="arbiter-annotate-") as tmp:
        scratch = Path(tmp) / Path(args.out).name
        n = write_pairs(pairs, scratch)
        with atomic_output(args.out, binary=True) as f, scratch.open("rb") as src:
            shutil.copyfileobj(src, f)
    ties = sum(p.tie for p in pairs)
    data = {"output": args.out, "database": str(db), "gold_pairs": n, "ties": ties,
            "agree_with_original": sum(bool(p.attributes.get("curation", {}).get("agrees_with_original"))
                                       for p in pairs),
            "progress": progress}
    human = (f"{n} gold pairs ({ties} ties) from {progress['labels']} labels on {progress['labelled']} "
             f"of {progress['total']} pairs; {progress['conflicts']} conflicts left out -> {args.out}")
    emit(args, data, human)
    return 0


# ---- agreement -------------------------------------------------------------------------------

def _usage(message: str) -> int:
    print(f"arbiter annotate agreement: error: {message}", file=sys.stderr)
    return 2


def cmd_agreement(args: argparse.Namespace) -> int:
    from trainer.curate.agreement import agreement_report, read_judge_votes

    if args.model is not None and args.pairs is None:
        return _usage("--model needs --pairs: the pairs the labels refer to, for the model to score")
    rows = label_rows(args.labels)
    judges = read_judge_votes(args.judge_votes) if args.judge_votes else None  # read before the RM loads
    model_labels, scored = (None, None)
    if args.pairs is not None:
        model_labels, scored = model_verdicts(args, {r.pair_id for r in rows})
    report = agreement_report(rows, model_labels=model_labels, judge_labels=judges,
                              n_boot=args.resamples, seed=args.seed)
    if scored is not None:
        report["model"].update(scored)
    emit(args, report, render(report))
    return 0


def label_rows(path: str) -> list:
    """The labels of a labels file, or the labels in force in a run folder or annotation DB."""
    from engine.errors import InputError
    from trainer.curate.agreement import read_labels
    from trainer.curate.annotations import AnnotationStore

    p = Path(path)
    if not (p.is_dir() or (p.is_file() and is_sqlite(p))):
        return read_labels(path)
    db = annotation_db(path)
    try:
        with AnnotationStore(db) as store:
            rows = store.human_labels()
    except sqlite3.DatabaseError as e:
        raise InputError(f"cannot read the annotation tables ({e})", source=str(db)) from None
    if not rows:
        raise InputError("no human labels yet", source=str(db))
    return rows


def model_verdicts(args: argparse.Namespace, wanted: set[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """pair id -> "1" if the RM's p = sigmoid(r(first) - r(second)) > 0.5 else "2", for the
    labelled pairs found in --pairs; and what was scored (model, counts)."""
    from app.cli.common import load_model
    from engine.errors import InputError
    from engine.types import Item, sigmoid
    from trainer.data.importers import load

    pairs = {}
    for p in load(args.pairs):
        if p.id not in wanted:
            continue
        if p.id in pairs:
            raise InputError(f"pair id {p.id!r} appears twice; the labels cannot say which one they mean",
                             source=args.pairs, field="id")
        pairs[p.id] = p
    if not pairs:
        raise InputError("none of the labelled pair ids is in this file; give the pairs the labels "
                         "were made on", source=args.pairs, field="id")
    ordered = list(pairs.values())
    items = [Item.of(p.conversation, r) for p in ordered for r in (p.chosen, p.rejected)]
    args.model = args.model or "default"
    bar = ProgressBar("scoring")
    try:
        with load_model(args) as rm:
            scores = rm.score(items, progress=bar, on_too_long="skip")
            name = rm.info.name
    finally:
        bar.close()
    labels, too_long = {}, 0
    for i, p in enumerate(ordered):
        a, b = scores[2 * i].value, scores[2 * i + 1].value
        if math.isnan(a) or math.isnan(b):
            too_long += 1
            continue
        labels[p.id] = "1" if sigmoid(a - b) > 0.5 else "2"
    return labels, {"name": name, "scored": len(labels), "too_long": too_long,
                    "missing_from_pairs": len(wanted) - len(pairs)}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def render(r: dict[str, Any]) -> str:
    """The human-readable report (``--json`` prints the dict itself)."""
    lo, hi = r["alpha_interval"]
    lines = [f"{r['labels']} labels by {len(r['annotators'])} annotators on {r['units']} pairs "
             f"({r['pairable_units']} labelled twice or more)",
             f"Krippendorff's alpha {_fmt(r['krippendorff_alpha'])} (95% bootstrap {_fmt(lo)} to {_fmt(hi)})"]
    if r["alpha_undefined"]:
        lines.append(f"  undefined: {r['alpha_undefined']}")
    lines += [f"Cohen's kappa {a} / {b}: {_fmt(k['kappa'])} on {k['units']} pairs"
              for k in r["cohen_kappa"] for a, b in [k["annotators"]]]
    lines += _versus_lines("reward model" + (f" {r['model']['name']}" if "name" in r.get("model", {}) else ""),
                           r.get("model"))
    for judge, v in (r.get("judges") or {}).items():
        lines += _versus_lines(f"judge {judge}", v)
    return "\n".join(lines)


def _versus_lines(who: str, v: dict[str, Any] | None) -> Sequence[str]:
    if v is None:
        return []
    return [f"{who} agrees with the human majority on {_fmt(v['agreement'])} of {v['pairs']} pairs"]
