"""Curation stage 2's RM scoring on Ray Data (``arbiter curate stage2 --engine ray``).

:func:`ray_scored_chunks_factory` returns the ``scored_chunks`` seam of
:func:`trainer.curate.stage2.run_stage2`: for a shard and its last committed row it yields
the rest of the shard as :class:`~trainer.curate.stage2.ScoredPair` chunks, scored under
both reward models by a pool of Ray actors (:class:`engine.distributed.ModelActor`: each
actor opens the gold and the current RM once and keeps them for every batch). Judging,
deciding, committing and writing stay on the driver, in :func:`run_stage2`, unchanged.

Why the results equal the local path's, float for float: the unit sent to an actor is one
whole local chunk (the same ``chunk_rows`` rows after the same start row, one Ray row per
chunk, ``batch_size=1``), and the actor scores it with the local path's own
:func:`~trainer.curate.stage2.pair_ps` at the same ``batch_size``. The engine's scores are
batch-invariant only to about 1e-5 (ONNX fp32; the built-in int8 model happens to be exact),
so any other cut of the rows into batches could move the last digits of ``gold_p``/``current_p``
and with them the outputs' bytes (tests/test_stage2_ray.py proves it with a model whose score
moves with its batch). An actor's own error (a model it cannot open) comes back as data and is
raised on the driver as itself (:data:`engine.distributed.ERROR_FIELD`).
Pairs travel as ``PreferencePair.to_dict()`` JSON; results come back in input order (Ray
Data's ``preserve_order``), checked by each chunk's first row.

Reading: a Parquet shard is read by ``ray.data.read_parquet`` on the workers; the blocks are
then cut into the local chunks by Ray tasks (row numbers follow from the blocks' order and
sizes: Ray's reader carries none), each decoding its rows as the trainer's reader does. A
Parquet shard's rows are held in the object store (spilled to disk when large) while it is
scored, as a JSONL shard's are: a shard, not the pool, is the unit of memory there. A
JSONL shard is read on the driver with the trainer's reader
(:func:`trainer.curate.stage2.read_rows`: the same lines, the same errors) and put into the
object store one chunk per block. A bad row reaches the driver in its place in the order and
is raised there as the local path raises it (``FILE:ROW: field 'NAME': ...``), after the
chunks before it. Both paths need the shard files and the models at the same paths on every
node of the cluster.

Actors live for one shard (one ``map_batches`` per call), so the models load once per actor
and shard; shards are the pool's large units, so that cost is small beside the scoring.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import distributed as dist
from engine.distributed import ModelRef
from engine.errors import InputError, ModelError
from trainer.curate.stage2 import ScoredPair, Shard, Stage2Config, pair_ps, read_rows
from trainer.data.record import PreferencePair, decode_parquet_row

__all__ = ["RayOptions", "RayScoredChunks", "Stage2Task", "ray_scored_chunks_factory"]


@dataclass(frozen=True)
class RayOptions(dist.RayOptions):
    """:class:`engine.distributed.RayOptions`, with ``actors`` (the CLI's ``--actors``) for
    ``num_actors``."""

    actors: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.num_actors is None:
            object.__setattr__(self, "num_actors", self.actors)
        for name in ("num_actors", "actors"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"must be at least 1; got {v}", field=f"--{name.replace('num_', '')}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise InputError("GPUs per actor must be >= 0 and CPUs per actor > 0", field="--gpus-per-actor")


def CHUNK_SCHEMA() -> Any:  # noqa: N802  (a constant, built lazily: pyarrow is imported only here)
    """One local chunk: its first row, the row numbers, the pairs as ``to_dict`` JSON, and the
    error of the row that ended the shard's reading there (JSON: reason, field, row; or null)."""
    import pyarrow as pa

    return pa.schema([("first", pa.int64()), ("rows", pa.list_(pa.int64())), ("pairs", pa.list_(pa.string())),
                      ("error", pa.string())])


def SCORED_SCHEMA() -> Any:  # noqa: N802
    """A chunk as the actors return it: CHUNK_SCHEMA plus both RMs' p per pair (null: too long),
    and the actor's own error (a model that did not open there; null when none)."""
    import pyarrow as pa

    return pa.schema([*CHUNK_SCHEMA(), ("gold", pa.list_(pa.float64())), ("current", pa.list_(pa.float64())),
                      (dist.ERROR_FIELD, pa.string())])


def _chunk_row(rows: list[int], pairs: list[str], error: InputError | None = None, row: int | None = None
               ) -> dict[str, Any]:
    err = None if error is None else json.dumps({"reason": error.reason, "field": error.field, "row": row})
    return {"first": rows[0] if rows else (row or 0), "rows": rows, "pairs": pairs, "error": err}


def _pair_json(p: PreferencePair) -> str:
    return json.dumps(p.to_dict(), ensure_ascii=False)


# ---- the actors' task ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage2Task:
    """Score each chunk under the gold RM and the current RM, as ``local_scored_chunks`` does."""

    batch_size: int

    def schema(self) -> Any:
        return SCORED_SCHEMA()

    def bind(self, gold_rm: Any, current_rm: Any) -> Any:
        return lambda rows: [self.score(gold_rm, current_rm, r) for r in rows]

    def score(self, gold_rm: Any, current_rm: Any, chunk: dict[str, Any]) -> dict[str, Any]:
        pairs = [PreferencePair.from_dict(json.loads(s)) for s in chunk["pairs"]]
        gold = pair_ps(gold_rm, pairs, self.batch_size) if pairs else []
        current = pair_ps(current_rm, pairs, self.batch_size) if pairs else []
        return {**chunk, "gold": gold, "current": current, dist.ERROR_FIELD: None}


# ---- reading a shard into chunks -----------------------------------------------------------------

def _jsonl_chunks(shard: Shard, start_row: int, chunk_rows: int, errors: list[InputError]
                  ) -> Iterator[dict[str, Any]]:
    """The local chunks of a JSONL shard, read here with the local path's reader. A bad row
    ends them with an error chunk (the rows before it in its chunk are dropped, as local drops
    them) and its error, exactly as the reader raised it, appended to ``errors``."""
    rows: list[int] = []
    pairs: list[str] = []
    it = read_rows(shard.path, start_row)
    while True:
        try:
            n, p = next(it)
        except StopIteration:
            break
        except InputError as e:
            errors.append(e)
            yield _chunk_row([], [], e, e.line)
            return
        rows.append(n)
        pairs.append(_pair_json(p))
        if len(rows) >= chunk_rows:
            yield _chunk_row(rows, pairs)
            rows, pairs = [], []
    if rows:
        yield _chunk_row(rows, pairs)


def _parquet_chunk(source: str, first: int, pieces: list[tuple[int, int]], *blocks: Any) -> Any:
    """Ray task: one local chunk of a Parquet shard from slices of ``read_parquet``'s blocks
    (``pieces[i]`` = (start, stop) rows of ``blocks[i]``); ``first`` = the chunk's first row."""
    import pyarrow as pa

    rows: list[int] = []
    pairs: list[str] = []
    out = None
    n = first
    for (lo, hi), block in zip(pieces, blocks, strict=True):
        for raw in block.slice(lo, hi - lo).to_pylist():
            try:
                pairs.append(_pair_json(PreferencePair.from_dict(decode_parquet_row(raw))))
            except InputError as e:
                out = _chunk_row([], [], e, n)
                break
            rows.append(n)
            n += 1
        if out is not None:
            break
    return pa.Table.from_pylist([out or _chunk_row(rows, pairs)], schema=CHUNK_SCHEMA())


def _plan(sizes: list[int], start: int, chunk_rows: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Cut blocks of ``sizes`` rows, from position ``start`` (0-based), into chunks of
    ``chunk_rows``: per chunk its first position and (block, start, stop) slices."""
    chunks: list[tuple[int, list[tuple[int, int, int]]]] = []
    block_first = 0
    for b, size in enumerate(sizes):
        lo = max(start - block_first, 0)
        while lo < size:
            position = block_first + lo
            if not chunks or sum(hi - a for _, a, hi in chunks[-1][1]) >= chunk_rows:
                chunks.append((position, []))
            room = chunk_rows - sum(hi - a for _, a, hi in chunks[-1][1])
            hi = min(size, lo + room)
            chunks[-1][1].append((b, lo, hi))
            lo = hi
        block_first += size
    return chunks


def _parquet_chunk_refs(ray: Any, shard: Shard, start_row: int, chunk_rows: int) -> list[Any]:
    """The local chunks of a Parquet shard as object refs: the file read by
    ``ray.data.read_parquet`` on the workers (in its row order), then cut by Ray tasks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(Path(shard.path).resolve())  # the workers open it: a path that means the same there
    try:
        total = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:200]})",
                         source=str(shard.path)) from None
    if total <= start_row:
        return []
    ds = ray.data.read_parquet(path, partitioning=None).materialize()
    blocks = ds.to_arrow_refs()
    sizes = ray.get([_remote(ray, _num_rows).remote(b) for b in blocks])
    if sum(sizes) != total:
        raise ModelError(f"{shard.path}: Ray read {sum(sizes)} rows where the file holds {total}")
    task = _remote(ray, _parquet_chunk)
    refs = [task.remote(str(shard.path), position + 1, [(lo, hi) for _, lo, hi in pieces],
                        *[blocks[b] for b, _, _ in pieces])
            for position, pieces in _plan(sizes, start_row, chunk_rows)]
    # every chunk made before the actors start: actors hold their CPUs for life, and tasks
    # still queued behind them for a CPU would never feed them (a 2-CPU cluster, 2 actors)
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return refs


def _num_rows(block: Any) -> int:
    return block.num_rows


_REMOTES: dict[Any, Any] = {}


def _remote(ray: Any, fn: Any) -> Any:
    """``ray.remote(fn)`` made once per function (a cheap task: one CPU, no retries of bad input)."""
    if fn not in _REMOTES:
        _REMOTES[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
    return _REMOTES[fn]


# ---- the seam ----------------------------------------------------------------------------------

class RayScoredChunks:
    """``scored_chunks`` for :func:`~trainer.curate.stage2.run_stage2` on Ray (see the module
    docstring). Joins ``ray_opts.address`` (None: the Ray this process already joined, else a
    new local one) on first use; :meth:`close` (or ``with``) shuts down a Ray it started."""

    def __init__(self, cfg: Stage2Config, ray_opts: dist.RayOptions) -> None:
        self.ray = dist.import_ray()
        self.opts = ray_opts
        self.batch_size = cfg.batch_size
        self.models = tuple(ModelRef(str(Path(p)), device=cfg.device, threads=cfg.threads)
                            for p in (cfg.gold_rm, cfg.current_rm))
        self._session: Any = None

    def _start(self) -> None:
        if self._session is None:
            self._session = dist.ray_session(self.ray, self.opts.address)
            self._session.__enter__()
            dist.ordered()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(None, None, None)

    def __enter__(self) -> RayScoredChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, shard: Shard, start_row: int, chunk_rows: int) -> Iterator[list[ScoredPair]]:
        self._start()
        ray = self.ray
        errors: list[InputError] = []  # a JSONL shard's bad row, as the driver's reader raised it
        if Path(shard.path).suffix == ".parquet":
            refs = _parquet_chunk_refs(ray, shard, start_row, chunk_rows)
        else:
            refs = [_put_chunk(ray, c) for c in _jsonl_chunks(shard, start_row, chunk_rows, errors)]
        if not refs:
            return iter(())
        ds = dist.map_with_model(ray.data.from_arrow_refs(refs), self.models, Stage2Task(self.batch_size),
                                 num_actors=min(dist.num_actors(ray, self.opts), len(refs)),
                                 gpus_per_actor=self.opts.gpus_per_actor,
                                 cpus_per_actor=self.opts.cpus_per_actor, batch_rows=1)
        return _scored(shard, ds, refs, errors)


def _put_chunk(ray: Any, chunk: dict[str, Any]) -> Any:
    import pyarrow as pa

    return ray.put(pa.Table.from_pylist([chunk], schema=CHUNK_SCHEMA()))


def _scored(shard: Shard, ds: Any, refs: list[Any], errors: list[InputError]) -> Iterator[list[ScoredPair]]:
    """The actors' chunks as ScoredPair lists, in order; a bad row or an engine error raised
    as the engine's own error, never as Ray's wrapper. ``refs`` (the input chunks) are held
    here until the shard's results are all back."""
    results = dist.iter_results(ds)
    last = 0
    try:
        for r in results:
            if r[dist.ERROR_FIELD] is not None:
                dist.raise_carried(r[dist.ERROR_FIELD])
            if r["error"] is not None:  # the shard's reading ended here: raised in its place
                if errors:
                    raise errors[0]
                e = json.loads(r["error"])
                raise InputError(e["reason"], field=e["field"]).located(str(shard.path), e["row"])
            if r["first"] <= last:  # preserve_order broken: never hand a shuffled chunk on
                raise ModelError(f"{shard.path}: Ray Data returned row {r['first']} after row {last} "
                                 "(its preserve_order is off?)")
            last = r["rows"][-1]
            pairs = [PreferencePair.from_dict(json.loads(s)) for s in r["pairs"]]
            yield [ScoredPair(shard.name, n, p, g, c)
                   for n, p, g, c in zip(r["rows"], pairs, r["gold"], r["current"], strict=True)]
    except Exception as e:  # Ray wraps an actor's error; ours (bad model, bad row) is said plainly
        ours = dist.arbiter_cause(e)
        if ours is None or ours is e:
            raise
        raise ours from None
    finally:
        results.close()  # a stopped run ends its actors now, not when the generator is collected
        del refs


def ray_scored_chunks_factory(cfg: Stage2Config, ray_opts: dist.RayOptions | None = None) -> RayScoredChunks:
    """The Ray ``scored_chunks`` for ``run_stage2(cfg, scored_chunks=...)`` (the contract's
    Part B): both RMs per actor, ``ray_opts`` for where and how wide."""
    return RayScoredChunks(cfg, ray_opts or RayOptions())
