"""Moderation on Ray Data (``arbiter moderate --engine ray``), and the generic piece under it.

Two layers, so that curation stage 2 (issue 15) can reuse the first:

* **generic**: :class:`ModelRef` (how an actor opens a model: picklable), :class:`ModelActor`
  (the stateful ``map_batches`` callable: the model is opened once per actor, then every batch
  goes through a :class:`BatchTask` bound to it) and :func:`map_with_model` (a dataset through
  a pool of those actors, N actors, G GPUs each). A task is any picklable object with
  ``bind(rm) -> fn`` where ``fn(rows: list[dict]) -> list[dict]``; rows travel as Arrow.
* **moderation**: :class:`ModerateTask` runs, per row, exactly what the local path runs
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
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from engine.errors import ArbiterError, InputError, ModelError
from engine.tabular import Location, count_rows, read_table

#: rows per shard: the unit committed (and skipped by a rerun) together
SHARD_ROWS = 4096
#: rows per map_batches call on an actor
BATCH_ROWS = 64
SCALE_HINT = "pip install 'arbiter[scale]'"


def import_ray():
    """Ray (with Ray Data), or InputError naming the ``scale`` extra (the CLI's exit code 2)."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its data extra is no use here)
    except ImportError as e:
        raise InputError(f"--engine ray needs Ray Data, which is not installed ({e}): {SCALE_HINT}",
                         field="--engine") from None
    return ray


# ---- generic: score rows with a model in map_batches -----------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """How an actor opens the model: what :func:`engine.load` takes, picklable."""

    spec: str
    format: str | None = None
    device: str | None = None
    threads: int | None = None
    max_length: int | None = None
    length_control: bool = True

    def open(self):
        import engine

        given = {"format": self.format, "device": self.device, "threads": self.threads,
                 "max_length": self.max_length}
        rm = engine.load(self.spec, **{k: v for k, v in given.items() if v is not None})
        rm.length_control = self.length_control
        return rm


class BatchTask(Protocol):
    """What an actor runs: bound once to the opened model, then called per batch of rows."""

    def bind(self, rm: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]: ...

    def schema(self) -> Any:  # the output's pyarrow schema (every batch the same, also when empty)
        ...


class ModelActor:
    """Ray Data's stateful callable: one model per actor process, kept for every batch."""

    def __init__(self, model: ModelRef, task: BatchTask) -> None:
        self.error: ArbiterError | None = None
        self.schema = task.schema()
        try:
            self.rm = model.open()
            self.fn = task.bind(self.rm)
        except ArbiterError as e:  # raised from the first batch: Ray reports a failed constructor
            self.error = e         # only as a dead actor, without the exception the driver can say
        except Exception as e:     # a model the runtime cannot read, on this worker's machine
            self.error = ModelError(f"a Ray actor could not open {model.spec}: {e}")

    def __call__(self, batch):
        import pyarrow as pa

        if self.error is not None:
            raise self.error
        return pa.Table.from_pylist(self.fn(batch.to_pylist()), schema=self.schema)


def map_with_model(ds, model: ModelRef, task: BatchTask, *, num_actors: int, gpus_per_actor: float = 0.0,
                   cpus_per_actor: float = 1.0, batch_rows: int = BATCH_ROWS):
    """``ds`` through ``num_actors`` actors that each hold the model (``gpus_per_actor`` GPUs,
    ``cpus_per_actor`` CPUs each); the output keeps the input's order when the DataContext's
    ``preserve_order`` is set (:func:`ordered`)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(ModelActor, fn_constructor_args=(model, task), batch_size=batch_rows,
                          batch_format="pyarrow", compute=ActorPoolStrategy(size=num_actors),
                          num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor)


def ordered() -> None:
    """Make Ray Data hand results back in input order (the driver commits shards in order), and
    keep its progress bars off stdout (``--json`` prints there; Arbiter draws its own bar)."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False


def put_blocks(ray, rows: Iterator[dict[str, Any]], block_rows: int) -> list:
    """Rows as Arrow blocks of ``block_rows`` rows in the object store (one block in memory here)."""
    import pyarrow as pa

    refs, chunk = [], []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= block_rows:
            refs.append(ray.put(pa.Table.from_pylist(chunk, schema=INPUT_SCHEMA())))
            chunk = []
    if chunk:
        refs.append(ray.put(pa.Table.from_pylist(chunk, schema=INPUT_SCHEMA())))
    return refs


def INPUT_SCHEMA():  # noqa: N802  (a constant, built lazily: pyarrow is imported only here)
    """What the driver sends: the row's position and line, and the raw row, pickled (every
    value keeps its exact type: bytes, ints, nested lists, so the actor sees what local sees)."""
    import pyarrow as pa

    return pa.schema([("position", pa.int64()), ("line", pa.int64()), ("row", pa.binary())])


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
class RayOptions:
    """How the job runs on Ray: where, how many actors, what each takes."""

    address: str | None = None  # None: the Ray already initialised in this process, else a local one
    num_actors: int | None = None  # None: one per CPU of the cluster (cpus_per_actor each)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
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
    started = not ray.is_initialized()
    try:
        if started:  # Ray's own INFO lines would bury the command's output on stderr
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
            ray.init(address=ray_opts.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        job = _score_all(ray, model, opts, loc, thresholds, model_sha256, store, job, ray_opts, progress)
        write_output(opts, out, job, summary, store)
    except BaseException:
        store.stop(job)
        raise
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    return summary


def _pending(loc: Location, skip: int) -> Iterator[dict[str, Any]]:
    for position, (line, raw) in enumerate(read_table(loc)):
        if position >= skip:
            yield {"position": position, "line": line, "row": pickle.dumps(raw, protocol=5)}


def _parquet_plan(loc: Location, skip: int) -> list[dict[str, Any]]:
    """One read task per unfinished row group of a Parquet input: its file, index, first
    position, and how many of its rows a resumed job already has."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(Path(loc.path).resolve())  # the workers open it: a path that means the same there
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:200]})",
                         source=str(loc)) from None
    plan, first = [], 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        if first + n > skip:
            plan.append({"path": path, "source": str(loc), "group": group, "first": first,
                         "skip": max(0, skip - first)})
        first += n
    return plan


def read_row_groups(batch) -> Iterator[Any]:
    """Ray Data read task: the rows of each planned Parquet row group, as engine.tabular reads
    them (``to_pylist`` per record batch, 1-based row numbers), with their positions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.tabular import BATCH_ROWS as READ_ROWS

    for item in batch.to_pylist():
        position = item["first"]
        try:
            f = pq.ParquetFile(item["path"])
            for records in f.iter_batches(batch_size=READ_ROWS, row_groups=[item["group"]]):
                rows = []
                for raw in records.to_pylist():
                    if position >= item["first"] + item["skip"]:
                        rows.append({"position": position, "line": position + 1,
                                     "row": pickle.dumps(raw, protocol=5)})
                    position += 1
                yield pa.Table.from_pylist(rows, schema=INPUT_SCHEMA())
        except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
            raise InputError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:200]})",
                             source=item["source"], line=position + 1) from None


def _input(ray, loc: Location, skip: int, shard_rows: int):
    """The pending rows as a Ray dataset: Parquet read by Ray tasks, one per row group (the
    workers read the file in parallel); other formats read here by engine.tabular and put into
    the object store in blocks of ``shard_rows``. None when nothing is left."""
    if loc.kind == "parquet":
        plan = _parquet_plan(loc, skip)
        if not plan:
            return None
        return ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
            read_row_groups, batch_size=1, batch_format="pyarrow")
    refs = put_blocks(ray, _pending(loc, skip), shard_rows)
    return ray.data.from_arrow_refs(refs) if refs else None


def _actors(ray, ray_opts: RayOptions) -> int:
    if ray_opts.num_actors:
        return ray_opts.num_actors
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // max(ray_opts.cpus_per_actor, 1e-9)))


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
    ds = map_with_model(rows, model, task, num_actors=_actors(ray, ray_opts),
                        gpus_per_actor=ray_opts.gpus_per_actor, cpus_per_actor=ray_opts.cpus_per_actor,
                        batch_rows=opts.batch_rows)
    shard = _Shard(job.position + ray_opts.shard_rows)  # shards by position, not by Ray's blocks
    results = _results(ds)
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
        ours = _arbiter_cause(e)
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


def _arbiter_cause(e: BaseException) -> ArbiterError | None:
    """The engine's own error inside Ray's wrappers (RayTaskError, UserCodeException), if any:
    the one whose class is exactly an Arbiter error, not Ray's dual class built on it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ArbiterError) and type(x).__module__.startswith("engine."):
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _results(ds) -> Iterator[dict[str, Any]]:
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


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
