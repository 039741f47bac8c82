"""Scoring on Ray Data: the generic layer under ``--engine ray`` (moderation, curation stage 2).

Ray is optional (the ``scale`` extra) and heavy, so this module imports it only inside its
functions; :func:`import_ray` turns its absence into the CLI's clear exit-2 error.

* :class:`ModelRef`: how an actor opens a model (what :func:`engine.load` takes), picklable.
* :class:`ModelActor`: Ray Data's stateful ``map_batches`` callable. It opens its models once
  per actor process (one :class:`ModelRef`, or several: curation scores every pair under two
  reward models) and then runs every batch through a :class:`BatchTask` bound to them.
* :func:`map_with_model`: a dataset through a pool of those actors (N actors, G GPUs each).
* :func:`ordered`: results back in input order, so a driver can commit them in order.
* Input: :func:`put_blocks` (rows a driver read into the object store, as Arrow blocks) and
  :func:`parquet_plan` + :func:`read_row_groups` (a Parquet file read by Ray tasks, one per
  row group, on the workers), both as rows of :func:`INPUT_SCHEMA`: position, line, and the
  raw row pickled, so an actor sees exactly the values the local reader yields.
* Errors: Ray Data hands an actor's exception back as its own ``UserCodeException``, without
  the original, so a task whose schema has an :data:`ERROR_FIELD` column gets the actor's
  Arbiter errors (a model that did not open on that worker, a non-finite score) as data: one
  row carrying it, which the driver raises in its place in the order (:func:`raise_carried`),
  said plainly (file, line, field) and never as a Ray traceback. :func:`arbiter_cause` digs
  the engine's error out of Ray's wrappers where one is there.

A task is any picklable object with ``bind(*models) -> fn`` where
``fn(rows: list[dict]) -> list[dict]`` and ``schema()`` (the output's pyarrow schema).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from engine import errors
from engine.errors import ArbiterError, InputError, ModelError

#: rows per map_batches call on an actor
BATCH_ROWS = 64
SCALE_HINT = "pip install 'arbiter[scale]'"
#: the column (string) of a task's output schema that carries an actor's Arbiter error
ERROR_FIELD = "arbiter_error"


def import_ray(field: str = "--engine") -> Any:
    """Ray (with Ray Data), or InputError naming the ``scale`` extra (the CLI's exit code 2)."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its data extra is no use here)
    except ImportError as e:
        raise InputError(f"--engine ray needs Ray Data, which is not installed ({e}): {SCALE_HINT}",
                         field=field) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs on Ray."""

    address: str | None = None  # None: the Ray already initialised in this process, else a local one
    num_actors: int | None = None  # None: one per CPU of the cluster (cpus_per_actor each)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray for the duration of a job: the one this process already joined, else ``address``
    (None: a new local instance), shut down afterwards only if this call started it."""
    started = not ray.is_initialized()
    try:
        if started:  # Ray's own INFO lines would bury the command's output on stderr
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def num_actors(ray: Any, opts: RayOptions) -> int:
    """The actors to start: as asked, else as many as the cluster's CPUs hold."""
    if opts.num_actors:
        return opts.num_actors
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // max(opts.cpus_per_actor, 1e-9)))


# ---- score rows with models in map_batches ---------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """How an actor opens the model: what :func:`engine.load` takes, picklable."""

    spec: str
    format: str | None = None
    device: str | None = None
    threads: int | None = None
    max_length: int | None = None
    length_control: bool = True

    def open(self) -> Any:
        import engine

        given = {"format": self.format, "device": self.device, "threads": self.threads,
                 "max_length": self.max_length}
        rm = engine.load(self.spec, **{k: v for k, v in given.items() if v is not None})
        rm.length_control = self.length_control
        return rm


class BatchTask(Protocol):
    """What an actor runs: bound once to the opened model(s), then called per batch of rows."""

    def bind(self, *rms: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]: ...

    def schema(self) -> Any:  # the output's pyarrow schema (every batch the same, also when empty)
        ...


def _refs(models: ModelRef | Sequence[ModelRef]) -> tuple[ModelRef, ...]:
    return (models,) if isinstance(models, ModelRef) else tuple(models)


class ModelActor:
    """Ray Data's stateful callable: its models opened once per actor process, kept for every batch."""

    def __init__(self, models: ModelRef | Sequence[ModelRef], task: BatchTask) -> None:
        self.error: ArbiterError | None = None
        self.schema = task.schema()
        self.rms: list[Any] = []
        spec = ""
        try:
            for ref in _refs(models):
                spec = ref.spec
                self.rms.append(ref.open())
            self.fn = task.bind(*self.rms)
        except ArbiterError as e:  # raised from the first batch: Ray reports a failed constructor
            self.error = e         # only as a dead actor, without the exception the driver can say
        except Exception as e:     # a model the runtime cannot read, on this worker's machine
            self.error = ModelError(f"a Ray actor could not open {spec}: {e}")

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        try:
            if self.error is not None:
                raise self.error
            out = self.fn(batch.to_pylist())
        except ArbiterError as e:
            if ERROR_FIELD not in self.schema.names:
                raise
            out = [{ERROR_FIELD: error_json(e)}]  # the other columns null; the driver raises it
        return pa.Table.from_pylist(out, schema=self.schema)


def map_with_model(ds: Any, models: ModelRef | Sequence[ModelRef], task: BatchTask, *, num_actors: int,
                   gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0, batch_rows: int = BATCH_ROWS) -> Any:
    """``ds`` through ``num_actors`` actors that each hold the model(s) (``gpus_per_actor`` GPUs,
    ``cpus_per_actor`` CPUs each); the output keeps the input's order when the DataContext's
    ``preserve_order`` is set (:func:`ordered`)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(ModelActor, fn_constructor_args=(models, task), batch_size=batch_rows,
                          batch_format="pyarrow", compute=ActorPoolStrategy(size=num_actors),
                          num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor)


def ordered() -> None:
    """Make Ray Data hand results back in input order (drivers commit in order), and keep its
    progress bars off stdout (``--json`` prints there; Arbiter draws its own bar)."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False


def iter_results(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows as dicts, streamed batch by batch (close it to stop the actors)."""
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


# ---- input ------------------------------------------------------------------------------------

def INPUT_SCHEMA() -> Any:  # noqa: N802  (a constant, built lazily: pyarrow is imported only here)
    """What the driver sends: the row's position and line, and the raw row, pickled (every
    value keeps its exact type: bytes, ints, nested lists, so the actor sees what local sees)."""
    import pyarrow as pa

    return pa.schema([("position", pa.int64()), ("line", pa.int64()), ("row", pa.binary())])


def input_row(position: int, line: int, raw: Any) -> dict[str, Any]:
    """One row of :func:`INPUT_SCHEMA`."""
    return {"position": position, "line": line, "row": pickle.dumps(raw, protocol=5)}


def put_blocks(ray: Any, rows: Iterator[dict[str, Any]], block_rows: int) -> list[Any]:
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


def _unreadable(e: Exception, source: str, line: int | None = None) -> InputError:
    return InputError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:200]})",
                      source=source, line=line)


def parquet_plan(path: str | Path, source: str, skip: int, stop: int | None = None) -> list[dict[str, Any]]:
    """One read task per row group of a Parquet file holding positions ``skip`` (0-based, the
    rows a resumed job already has) to ``stop`` (exclusive; None: the end): its file, index,
    first position, and which of its rows to yield. ``source`` names the file in errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    resolved = str(Path(path).resolve())  # the workers open it: a path that means the same there
    try:
        meta = pq.ParquetFile(resolved).metadata
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _unreadable(e, source) from None
    plan, first = [], 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        if first + n > skip and (stop is None or first < stop):
            plan.append({"path": resolved, "source": source, "group": group, "first": first,
                         "skip": max(0, skip - first), "stop": -1 if stop is None else stop})
        first += n
    return plan


def read_row_groups(batch: Any) -> Iterator[Any]:
    """Ray Data read task: the rows of each planned Parquet row group, as engine.tabular reads
    them (``to_pylist`` per record batch, 1-based row numbers), with their positions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.tabular import BATCH_ROWS as READ_ROWS

    for item in batch.to_pylist():
        position = item["first"]
        start, stop = item["first"] + item["skip"], item.get("stop", -1)
        try:
            f = pq.ParquetFile(item["path"])
            for records in f.iter_batches(batch_size=READ_ROWS, row_groups=[item["group"]]):
                rows = []
                for raw in records.to_pylist():
                    if position >= start and (stop < 0 or position < stop):
                        rows.append(input_row(position, position + 1, raw))
                    position += 1
                yield pa.Table.from_pylist(rows, schema=INPUT_SCHEMA())
        except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
            raise _unreadable(e, item["source"], position + 1) from None


def read_parquet_ds(ray: Any, path: str | Path, source: str, skip: int, stop: int | None = None) -> Any:
    """The Parquet rows from position ``skip`` to ``stop`` as a Ray dataset read on the workers
    (one task per row group, in parallel); None when there are none."""
    plan = parquet_plan(path, source, skip, stop)
    if not plan:
        return None
    return ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
        read_row_groups, batch_size=1, batch_format="pyarrow")


# ---- errors -----------------------------------------------------------------------------------

def error_json(e: ArbiterError) -> str:
    """An Arbiter error as :data:`ERROR_FIELD` carries it: its class and what it says."""
    d: dict[str, Any] = {"class": type(e).__name__, "message": str(e)}
    if isinstance(e, InputError):
        d.update(reason=e.reason, source=e.source, line=e.line, field=e.field)
    return json.dumps(d)


def raise_carried(text: str) -> NoReturn:
    """Raise the error an actor carried in :data:`ERROR_FIELD` (:func:`error_json`) as itself."""
    d = json.loads(text)
    if d["class"] == "InputError":
        raise InputError(d["reason"], source=d["source"], line=d["line"], field=d["field"])
    cls = getattr(errors, d["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, ArbiterError)) or cls is InputError:
        cls = ModelError
    raise cls(d["message"])


def arbiter_cause(e: BaseException) -> ArbiterError | None:
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
