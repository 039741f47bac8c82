"""A moderation job: stream rows in, score them, commit in batches, write the output whole.

The loop reads the input once, in order, skipping the rows the job store says are already
committed (a rerun after kill -9 resumes there), scores a batch, and commits its results,
their audit rows and the new input position in one transaction
(:meth:`app.moderate.store.ModerationStore.commit`). Only when every row is in the store is
the output written (atomically: whole or not at all) from the store in input order, so a
resumed job writes exactly what an uninterrupted one does. Memory holds one batch.

Per-row statuses (the row is in the output, ``flagged`` null, never dropped): ``ok``,
``missing_text`` (no such field, or null), ``empty_text`` (only whitespace), ``too_long``
(over ``max_text_chars``). Errors that stop the job, naming file, line and field: a
non-unique id, a missing id with ``--id-field``, a text that is not text, a bad context.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.moderate.categories import category_map
from app.moderate.scoring import SEMANTICS_VERSION, RewardModerator, Text
from app.moderate.store import Decided, Job, ModerationStore
from app.moderate.thresholds import Thresholds
from engine.errors import InputError
from engine.tabular import (
    ColumnType,
    Location,
    count_rows,
    parse_location,
    read_table,
    text_value,
    write_table,
)
from engine.types import Conversation, conversation

#: input rows per committed batch: a kill loses at most this many rows' work
BATCH_ROWS = 64
#: a longer text gets status too_long instead of thousands of windows (characters)
MAX_TEXT_CHARS = 1_000_000

COLUMNS: dict[str, ColumnType] = {
    "id": "string", "status": "string", "error": "string", "flagged": "bool", "score": "float",
    "categories": "json", "category_scores": "json", "windows": "int",
    "thresholds_version": "string", "model_sha256": "string"}
OPENAI_COLUMNS: dict[str, ColumnType] = {"results": "json"}

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Options:
    input: str
    output: str
    text_field: str = "text"
    context_field: str | None = None
    id_field: str | None = None
    openai_format: bool = False
    max_text_chars: int = MAX_TEXT_CHARS
    batch_rows: int = BATCH_ROWS


@dataclass
class Summary:
    job: str
    rows: int = 0
    flagged: int = 0
    resumed_from: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    windowed: int = 0
    output: str = ""
    model_sha256: str = ""
    thresholds_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprint(loc: Location) -> dict[str, Any]:
    """What identifies the input's content cheaply: size and mtime of the file."""
    if loc.path == "-":
        raise InputError("moderation reads a file (it resumes by position); stdin cannot be reread",
                         source="<stdin>")
    p = Path(loc.path)
    try:
        st = p.stat()
    except OSError:
        raise InputError("no such file", source=str(loc)) from None
    return {"path": str(p.resolve()), "table": loc.table, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def job_key(opts: Options, loc: Location, model_sha256: str, thresholds: Thresholds) -> str:
    """The same command on the same input, model and thresholds is the same job."""
    out = parse_location(opts.output)
    body = {"input": _fingerprint(loc), "output": [out.kind, str(Path(out.path).resolve()), out.table],
            "model": model_sha256, "thresholds": thresholds.version, "semantics": SEMANTICS_VERSION,
            "options": {k: v for k, v in asdict(opts).items() if k not in ("input", "output")}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def row_hash(row: dict[str, Any]) -> str:
    """sha256 of the input row as canonical JSON (bytes values by their repr)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _Row:
    line: int
    raw: dict[str, Any]
    id: Any
    row_id: str
    text: Text | None
    status: str
    error: str | None


def _context(value: Any, source: str, line: int, field: str) -> Conversation | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # no context: the text is moderated alone
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        from engine.jsonl import parse_json

        value = parse_json(value, source=source, line=line)  # a conversation stored as JSON text
    try:
        return conversation(value)
    except InputError as e:
        raise InputError(e.reason, source=source, line=line,
                         field=f"{field}.{e.field}" if e.field else field) from None


def _parse(opts: Options, source: str, line: int, raw: dict[str, Any]) -> _Row:
    if opts.id_field is not None:
        rid = raw.get(opts.id_field)
        if rid is None or rid == "":
            raise InputError("missing: with --id-field every row needs an id", source=source,
                             line=line, field=opts.id_field)
    else:
        rid = line
    try:
        text = text_value(raw, opts.text_field)
    except InputError as e:
        raise InputError(e.reason, source=source, line=line, field=e.field) from None
    status, error, item = "ok", None, None
    if text is None:
        status, error = "missing_text", f"no field {opts.text_field!r} (or it is null)"
    elif not text.strip():
        status, error = "empty_text", f"field {opts.text_field!r} is empty"
    elif len(text) > opts.max_text_chars:
        status, error = "too_long", (f"{len(text):,} characters, over the {opts.max_text_chars:,} "
                                     "limit (--max-text-chars); not scored")
    else:
        ctx = (_context(raw.get(opts.context_field), source, line, opts.context_field)
               if opts.context_field else None)
        item = Text(text, ctx)
    return _Row(line, raw, rid, json.dumps(rid, ensure_ascii=False, default=str), item, status, error)


def _rows(opts: Options, loc: Location, skip: int) -> Iterator[tuple[int, _Row]]:
    """(position, row) from position ``skip`` on."""
    source = str(loc)
    for position, (line, raw) in enumerate(read_table(loc)):
        if position >= skip:
            yield position, _parse(opts, source, line, raw)


def _result(row: _Row, verdict, thresholds: Thresholds, model_sha256: str, openai: bool) -> dict[str, Any]:
    if verdict is None:
        flagged, cats, scores, score, windows = None, category_map(), category_map(), None, 0
    else:
        scores = category_map(verdict.category_scores)
        flagged, cats = thresholds.decide(verdict.score, scores)
        score, windows = verdict.score, verdict.windows
    if openai:
        return {"results": [{"flagged": flagged, "categories": cats, "category_scores": scores}]}
    return {"id": row.id, "status": row.status, "error": row.error, "flagged": flagged, "score": score,
            "categories": cats, "category_scores": scores, "windows": windows,
            "thresholds_version": thresholds.version, "model_sha256": model_sha256}


class _Batch:
    def __init__(self) -> None:
        self.rows: list[tuple[int, _Row]] = []
        self.ids: dict[str, int] = {}


def open_job(opts: Options, thresholds: Thresholds, model_sha256: str,
             store: ModerationStore) -> tuple[Location, Location, Job, Summary]:
    """(input, output, the job row (new, or the unfinished one of the same key), its summary):
    the start every engine (local, Ray) shares, so they resume each other's jobs."""
    loc = parse_location(opts.input)
    out = parse_location(opts.output)
    job = store.open_job(job_key(opts, loc, model_sha256, thresholds), input=str(loc), output=str(out),
                         model_sha256=model_sha256, thresholds_version=thresholds.version,
                         options=asdict(opts))
    summary = Summary(job.id, resumed_from=job.position, output=str(out), model_sha256=model_sha256,
                      thresholds_version=thresholds.version)
    return loc, out, job, summary


def run(rm, opts: Options, thresholds: Thresholds, *, model_sha256: str,
        store: ModerationStore, progress: Progress | None = None) -> Summary:
    """Moderate ``opts.input`` into ``opts.output``, resuming an unfinished job of the same key."""
    loc, out, job, summary = open_job(opts, thresholds, model_sha256, store)
    try:
        job = _score_all(rm, opts, loc, thresholds, model_sha256, store, job, progress)
        write_output(opts, out, job, summary, store)
    except BaseException:
        store.stop(job)
        raise
    return summary


def write_output(opts: Options, out: Location, job: Job, summary: Summary, store: ModerationStore) -> None:
    """Every stored result of a fully scored ``job``, in input order, into ``out`` (written whole at
    the end, so a resumed job's file equals an uninterrupted one's); then mark the job finished."""
    with write_table(out, OPENAI_COLUMNS if opts.openai_format else COLUMNS) as w:
        for r in store.results(job):
            w.write(r)
            _count(summary, r)
    store.finish(job)


def _count(summary: Summary, r: dict[str, Any]) -> None:
    summary.rows += 1
    result = r["results"][0] if "results" in r else r
    summary.flagged += bool(result["flagged"])
    status = r.get("status", "ok" if result["flagged"] is not None else "not scored")
    summary.statuses[status] = summary.statuses.get(status, 0) + 1
    summary.windowed += r.get("windows", 0) > 1


def _score_all(rm, opts: Options, loc: Location, thresholds: Thresholds, model_sha256: str,
               store: ModerationStore, job: Job, progress: Progress | None) -> Job:
    moderator = RewardModerator(rm)
    total = count_rows(loc)
    batch = _Batch()
    if progress:
        progress(job.position, total)
    for position, row in _rows(opts, loc, job.position):
        _check_unique(opts, loc, batch, row)
        batch.rows.append((position, row))
        if len(batch.rows) >= opts.batch_rows:
            job = _commit(moderator, opts, loc, thresholds, model_sha256, store, job, batch)
            batch = _Batch()
            if progress:
                progress(job.position, total)
    if batch.rows:
        job = _commit(moderator, opts, loc, thresholds, model_sha256, store, job, batch)
        if progress:
            progress(job.position, total)
    return job


def _check_unique(opts: Options, loc: Location, batch: _Batch, row: _Row) -> None:
    earlier = batch.ids.get(row.row_id)
    if earlier is not None:
        raise InputError(f"not unique: {row.id!r} is also the id on line {earlier}", source=str(loc),
                         line=row.line, field=opts.id_field or "id")
    batch.ids[row.row_id] = row.line


def _commit(moderator: RewardModerator, opts: Options, loc: Location, thresholds: Thresholds,
            model_sha256: str, store: ModerationStore, job: Job, batch: _Batch) -> Job:
    seen = store.earlier_lines(job, list(batch.ids))
    if seen:
        rid, first = next(iter(seen.items()))
        row = next(r for _, r in batch.rows if r.row_id == rid)
        raise InputError(f"not unique: {row.id!r} is also the id on line {first}", source=str(loc),
                         line=row.line, field=opts.id_field or "id")
    scored = [r for _, r in batch.rows if r.text is not None]
    verdicts = dict(zip((r.line for r in scored), moderator.score([r.text for r in scored]), strict=True))
    decided = []
    for position, row in batch.rows:
        verdict = verdicts.get(row.line)
        result = _result(row, verdict, thresholds, model_sha256, opts.openai_format)
        flagged = result["results"][0]["flagged"] if opts.openai_format else result["flagged"]
        decision = "error" if flagged is None else ("flagged" if flagged else "allowed")
        decided.append(Decided(position, row.line, row.row_id, result, row_hash(row.raw), decision,
                               verdict.score if verdict else None))
    return store.commit(job, decided, batch.rows[-1][0] + 1, model_sha256=model_sha256,
                        thresholds_version=thresholds.version)
