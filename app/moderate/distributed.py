"""Moderation on Ray Data (``arbiter moderate --engine ray``).

The generic layer under it (:class:`~engine.distributed.ModelRef`, the stateful
:class:`~engine.distributed.ModelActor`, :func:`~engine.distributed.map_with_model`, the
Parquet row-group reader, ...) lives in :mod:`engine.distributed`, shared with curation
stage 2 (issue 15); its names are re-exported here for the callers of this module. What is
moderation's own: :class:`ModerateTask` runs, per row, exactly what the local path runs
(:func:`app.moderate.job._parse`, :class:`~app.moderate.scoring.RewardModerator`,
:func:`app.moderate.job._result`), and :func:`run_ray` drives a job through the same
:class:`~app.moderate.store.ModerationStore` as :func:`app.moderate.job.run`.

Why results equal the local run's: the driver reads the input with the same reader
(:func:`engine.tabular.read_table`: same lines, same errors), the actors score with the same
code, and the output is written by the same writer from the same store, in input order
(Ray's ``preserve_order``). The engine scores every row alone, so the different batches change
nothing (``tests/test_moderate_ray.py`` compares the two runs).

Idempotent per shard: the input is cut into shards of ``shard_rows`` rows; the driver commits
a shard's results, audit rows and the job's new position in one transaction once all its rows
are back, so a rerun of the same command (same job key as the local path: a job begun locally
can finish on Ray and back) skips every finished shard and scores only the rest. No row is
lost or written twice after a kill at any point.

Reading: a Parquet input is read by Ray tasks, one per row group (in parallel, on the
workers: the file must be at the same path there, as the model must); JSONL, CSV and SQLite
are read by the driver with engine.tabular and put into Ray's object store in blocks of
``shard_rows`` (spilled to disk when large) before the actors start. Results come back to the
driver's store, which a single output file needs anyway.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.moderate.job import (
    Options,
    Progress,
    Summary,
    _parse,
    _result,
    open_job,
    row_hash,
    write_output,
)
from app.moderate.scoring import RewardModerator
from app.moderate.store import Decided, Job, ModerationStore
from app.moderate.thresholds import Thresholds
from engine import distributed as dist
from engine.distributed import (  # noqa: F401  (re-exported: this module's API before the move)
    BATCH_ROWS,
    INPUT_SCHEMA,
    SCALE_HINT,
    BatchTask,
    ModelActor,
    ModelRef,
    arbiter_cause,
    import_ray,
    map_with_model,
    ordered,
    put_blocks,
    read_row_groups,
)
from engine.errors import InputError, ModelError
from engine.tabular import Location, count_rows, read_table

#: rows per shard: the unit committed (and skipped by a rerun) together
SHARD_ROWS = 4096


# ---- moderation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModerateTask:
    """Moderate rows exactly as :func:`app.moderate.job.run` does, one batch at a time."""

    opts: Options
    source: str
    thresholds: Thresholds
    model_sha256: str

    def schema(self):
        import pyarrow as pa

        return pa.schema([("position", pa.int64()), ("line", pa.int64()), ("row_id", pa.string()),
                          ("result", pa.string()), ("input_hash", pa.string()), ("decision", pa.string()),
                          ("score", pa.float64()), ("fatal", pa.string())])

    def bind(self, rm) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
        moderator = RewardModerator(rm)
        return lambda rows: self.moderate(moderator, rows)

    def moderate(self, moderator: RewardModerator, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parsed, out = [], []
        for r in rows:
            raw = pickle.loads(r["row"])  # noqa: S301  (written by this job's own driver)
            try:
                parsed.append((r, raw, _parse(self.opts, self.source, r["line"], raw)))
            except InputError as e:  # stops the job at this row, raised by the driver in order
                parsed.append((r, raw, json.dumps({"reason": e.reason, "field": e.field})))
        scored = [p for _, _, p in parsed if not isinstance(p, str) and p.text is not None]
        verdicts = dict(zip((p.line for p in scored), moderator.score([p.text for p in scored]), strict=True))
        for r, raw, p in parsed:
            if isinstance(p, str):
                out.append({"position": r["position"], "line": r["line"], "row_id": "", "result": "",
                            "input_hash": "", "decision": "", "score": None, "fatal": p})
                continue
            verdict = verdicts.get(p.line)
            result = _result(p, verdict, self.thresholds, self.model_sha256, self.opts.openai_format)
            flagged = result["results"][0]["flagged"] if self.opts.openai_format else result["flagged"]
            out.append({"position": r["position"], "line": p.line, "row_id": p.row_id,
                        "result": json.dumps(result, ensure_ascii=False, allow_nan=False),
                        "input_hash": row_hash(raw),
                        "decision": "error" if flagged is None else ("flagged" if flagged else "allowed"),
                        "score": verdict.score if verdict else None, "fatal": None})
        return out


@dataclass(frozen=True)
class RayOptions(dist.RayOptions):
    """How the job runs on Ray: where, how many actors, what each takes, and how many rows
    the driver commits together."""

    shard_rows: int = SHARD_ROWS


@dataclass
class _Shard:
    stop: int  # one past its last position
    decided: list[Decided] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)


def run_ray(model: ModelRef, opts: Options, thresholds: Thresholds, *, model_sha256: str,
            store: ModerationStore, ray_opts: RayOptions = RayOptions(),
            progress: Progress | None = None) -> Summary:
    """:func:`app.moderate.job.run` on Ray Data: same job key, same store, same output."""
    ray = import_ray()
    loc, out, job, summary = open_job(opts, thresholds, model_sha256, store)
    try:
        with dist.ray_session(ray, ray_opts.address):
            job = _score_all(ray, model, opts, loc, thresholds, model_sha256, store, job, ray_opts, progress)
            write_output(opts, out, job, summary, store)
    except BaseException:
        store.stop(job)
        raise
    return summary


def _pending(loc: Location, skip: int) -> Iterator[dict[str, Any]]:
    for position, (line, raw) in enumerate(read_table(loc)):
        if position >= skip:
            yield dist.input_row(position, line, raw)


def _input(ray, loc: Location, skip: int, shard_rows: int):
    """The pending rows as a Ray dataset: Parquet read by Ray tasks, one per row group (the
    workers read the file in parallel); other formats read here by engine.tabular and put into
    the object store in blocks of ``shard_rows``. None when nothing is left."""
    if loc.kind == "parquet":
        return dist.read_parquet_ds(ray, loc.path, str(loc), skip)
    refs = put_blocks(ray, _pending(loc, skip), shard_rows)
    return ray.data.from_arrow_refs(refs) if refs else None


def _score_all(ray, model: ModelRef, opts: Options, loc: Location, thresholds: Thresholds,
               model_sha256: str, store: ModerationStore, job: Job, ray_opts: RayOptions,
               progress: Progress | None) -> Job:
    total = count_rows(loc)
    if progress:
        progress(job.position, total)
    ordered()
    rows = _input(ray, loc, job.position, ray_opts.shard_rows)
    if rows is None:
        return job
    task = ModerateTask(opts, str(loc), thresholds, model_sha256)
    ds = map_with_model(rows, model, task, num_actors=dist.num_actors(ray, ray_opts),
                        gpus_per_actor=ray_opts.gpus_per_actor, cpus_per_actor=ray_opts.cpus_per_actor,
                        batch_rows=opts.batch_rows)
    shard = _Shard(job.position + ray_opts.shard_rows)  # shards by position, not by Ray's blocks
    results = dist.iter_results(ds)
    expected = job.position
    try:
        for r in results:
            if r["position"] != expected:  # preserve_order broken: never commit a shuffled shard
                raise ModelError(f"Ray Data returned row {r['position']} where row {expected} was due "
                                 "(its preserve_order is off?); nothing after the last shard was kept")
            expected += 1
            if r["position"] >= shard.stop:
                job = _commit(opts, loc, thresholds, model_sha256, store, job, shard)
                shard = _Shard(shard.stop + ray_opts.shard_rows)
                if progress:
                    progress(job.position, total)
            _take(opts, loc, shard, r)
    except Exception as e:  # Ray wraps an actor's error; ours (bad model, bad row) is said plainly
        ours = arbiter_cause(e)
        if ours is None:
            raise
        raise ours from None
    finally:
        results.close()  # a stopped job ends its actors now, not when the generator is collected
    if shard.decided:
        job = _commit(opts, loc, thresholds, model_sha256, store, job, shard)
        if progress:
            progress(job.position, total)
    return job


def _take(opts: Options, loc: Location, shard: _Shard, r: dict[str, Any]) -> None:
    if r["fatal"] is not None:
        e = json.loads(r["fatal"])
        raise InputError(e["reason"], source=str(loc), line=r["line"], field=e["field"])
    earlier = shard.ids.get(r["row_id"])
    if earlier is not None:
        raise InputError(f"not unique: {_shown(r)!r} is also the id on line {earlier}", source=str(loc),
                         line=r["line"], field=opts.id_field or "id")
    shard.ids[r["row_id"]] = r["line"]
    shard.decided.append(Decided(r["position"], r["line"], r["row_id"], json.loads(r["result"]),
                                 r["input_hash"], r["decision"], r["score"]))


def _shown(r: dict[str, Any]) -> Any:
    return json.loads(r["row_id"])


def _commit(opts: Options, loc: Location, thresholds: Thresholds, model_sha256: str,
            store: ModerationStore, job: Job, shard: _Shard) -> Job:
    seen = store.earlier_lines(job, list(shard.ids))
    if seen:
        rid, first = next(iter(seen.items()))
        d = next(x for x in shard.decided if x.row_id == rid)
        raise InputError(f"not unique: {json.loads(rid)!r} is also the id on line {first}", source=str(loc),
                         line=d.line, field=opts.id_field or "id")
    return store.commit(job, shard.decided, shard.decided[-1].position + 1, model_sha256=model_sha256,
                        thresholds_version=thresholds.version)
