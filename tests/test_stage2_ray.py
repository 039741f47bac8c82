"""Curation stage 2 on Ray Data (issue 15, ``--engine ray``): byte for byte the local path.

A real local Ray instance (2 CPUs, no dashboard) started by this module and shut down after
it, with a check that it left no process behind. Two real reward models: the gold RM is the
built-in default ONNX model (continuous scores, so ``gold_p`` has all its digits to get
wrong), the current RM the keyword model of tests/test_moderate.py (a real ONNX graph:
"kill" scores -8, "sorry" -2), so the pool has pairs the current RM is sure of and pairs it
is not, plus 0.001 x the padded length of its batch: a score that moves with the batch it ran
in, so only the local path's very batches give the local path's bytes (the default model
is batch-invariant to the bit here, which would hide a different cut of the rows). Real shards (JSONL with a blank line, so rows are lines, not ordinals; Parquet in
several row groups), the real store, the real writer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.errors import InputError, ModelError
from tests.test_moderate import _default_folder, keyword_rm  # noqa: F401  (the fixture)
from trainer.curate.stage2 import ScoredPair, Shard, Stage2Config, run_stage2, shards_of
from trainer.curate.stage2_ray import RayOptions, _plan, ray_scored_chunks_factory
from trainer.data.record import PreferencePair, pair, write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.enable_socket]
ray = pytest.importorskip("ray")

CHUNK_ROWS = 4


def _pairs(n: int, tag: str) -> list[PreferencePair]:
    good = ["Here is a clear answer with the steps #{i}.", "Bread needs flour, water and salt #{i}.",
            "Sorry, I cannot help with that #{i}.", "Kill the process with kill -9 #{i}.", "A short reply #{i}."]
    out = []
    for i in range(n):
        c, r = good[i % 5].format(i=i), good[(i * 3 + 1) % 5].format(i=i)
        if c == r:
            r += " (again)"
        out.append(pair(f"Question {tag}{i}: how do I do this?", c, r, id=f"{tag}{i}", label_origin="llm",
                        attributes={"n": i, "tag": tag}))
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray for this module; afterwards none of its processes may be left."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=60)
    assert not alive, f"Ray left processes behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="module")
def padded_rm(keyword_rm, tmp_path_factory) -> Path:  # noqa: F811
    """The keyword model + 0.001 x the batch's padded length (the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    out = tmp_path_factory.mktemp("padded-rm") / "padded-rm"
    shutil.copytree(keyword_rm, out)
    model = onnx.load(out / "model.onnx")
    for node in model.graph.node:
        node.output[:] = ["keyword_logits" if o == "logits" else o for o in node.output]
    model.graph.node.extend([
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Constant", [], ["axis1"], value=helper.make_tensor("axis1_v", TensorProto.INT64, [1], [1])),
        helper.make_node("Gather", ["shape", "axis1"], ["padded"], axis=0),
        helper.make_node("Cast", ["padded"], ["padded_f"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["eps"], value=helper.make_tensor("eps_v", TensorProto.FLOAT, [], [1e-3])),
        helper.make_node("Mul", ["padded_f", "eps"], ["pad_term"]),
        helper.make_node("Add", ["keyword_logits", "pad_term"], ["logits"]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    """Two shards, JSONL (11 pairs, a blank line after the 5th) and Parquet (10 pairs in row
    groups of 3), and a gold file."""
    d = tmp_path_factory.mktemp("stage2-ray")
    (d / "pool").mkdir()
    a = [p.to_dict() for p in _pairs(11, "a")]
    lines = [json.dumps(x) for x in a]
    (d / "pool" / "a.jsonl").write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    write_pairs(_pairs(10, "b"), d / "pool" / "b.parquet", batch_rows=3)
    write_pairs(_pairs(8, "g"), d / "gold.jsonl")
    return {"pool": d / "pool", "gold": d / "gold.jsonl"}


def _cfg(pool: dict[str, Path], keyword: Path, out: Path) -> Stage2Config:
    return Stage2Config(pool=[pool["pool"]], gold=[pool["gold"]], gold_rm=_default_folder(), current_rm=keyword,
                        out=out, band="auto", chunk_rows=CHUNK_ROWS, batch_size=3, threads=1)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("kept", "flipped") for p in sorted((out / sub).iterdir())}


def _decisions(out: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(out / "stage2.db")) as db:
        return db.execute("SELECT * FROM decisions ORDER BY shard, row").fetchall()


def _band(out: Path) -> str:
    with contextlib.closing(sqlite3.connect(out / "stage2.db")) as db:
        return db.execute("SELECT value FROM meta WHERE key = 'band'").fetchone()[0]


@pytest.fixture(scope="module")
def local_run(pool, padded_rm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    summary = run_stage2(_cfg(pool, padded_rm, out))
    assert summary.rows == 21 and summary.shards == 2
    assert summary.kept > 0 and summary.discarded > 0 and summary.flipped == summary.discarded
    assert {"gold+current", "no_judge"} <= set(summary.reasons)  # the current RM sure and unsure
    return out


class Recording:
    """The Ray scorer, with its calls recorded; ``stop_in`` a shard: KeyboardInterrupt after
    that shard's first chunk was handed on (the run commits it, then dies)."""

    def __init__(self, inner, stop_in: str | None = None) -> None:
        self.inner, self.stop_in, self.calls = inner, stop_in, []

    def __call__(self, shard: Shard, start: int, rows: int) -> Iterator[list[ScoredPair]]:
        self.calls.append((shard.name, start))
        with contextlib.closing(self.inner(shard, start, rows)) as chunks:
            for i, chunk in enumerate(chunks):
                if self.stop_in == shard.name and i == 1:
                    raise KeyboardInterrupt
                yield chunk


def test_ray_equals_local_and_a_rerun_skips_finished_shards(local_ray, pool, padded_rm, local_run,
                                                           tmp_path):
    """Killed inside the Parquet shard, then rerun: the rerun does not touch the finished JSONL
    shard, resumes the Parquet one after its committed chunk, and every output file and every
    stored decision equals the local run's, byte for byte."""
    out = tmp_path / "ray"
    cfg = _cfg(pool, padded_rm, out)
    first = Recording(ray_scored_chunks_factory(cfg, RayOptions(actors=2)), stop_in="00001-b")
    with pytest.raises(KeyboardInterrupt):
        run_stage2(cfg, scored_chunks=first)
    assert first.calls == [("00000-a", 0), ("00001-b", 0)]
    assert not (out / "kept" / "00001-b.jsonl").exists()

    again = Recording(ray_scored_chunks_factory(cfg, RayOptions(num_actors=1)))
    summary = run_stage2(cfg, scored_chunks=again)
    assert again.calls == [("00001-b", CHUNK_ROWS)]  # a is done; b resumes after its row 4
    assert summary.rows == 21
    assert _files(out) == _files(local_run)
    assert _decisions(out) == _decisions(local_run)
    assert _band(out) == _band(local_run)  # --band auto: measured on gold the same way
    assert {r[0] for r in _decisions(out)} == {"00000-a", "00001-b"}
    assert [r[1] for r in _decisions(out) if r[0] == "00000-a"] == [1, 2, 3, 4, 5, *range(7, 13)]  # lines

    done = Recording(ray_scored_chunks_factory(cfg, RayOptions(num_actors=1)))
    run_stage2(cfg, scored_chunks=done)
    assert done.calls == [] and _files(out) == _files(local_run)


def test_a_bad_parquet_row_is_raised_in_its_place(local_ray, pool, padded_rm, tmp_path):
    """Read on the workers, a bad row still stops at FILE:ROW: field, after the chunks before it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(pool["pool"] / "b.parquet").to_pylist()
    rows[5]["chosen"] = None  # row 6: the second chunk
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad, row_group_size=3)
    scorer = ray_scored_chunks_factory(_cfg(pool, padded_rm, tmp_path / "o"), RayOptions(num_actors=1))
    with contextlib.closing(scorer(shards_of([bad])[0], 0, CHUNK_ROWS)) as chunks:
        assert [s.row for s in next(chunks)] == [1, 2, 3, 4]
        with pytest.raises(InputError, match=r"bad.parquet:6: field 'chosen': must be a string"):
            next(chunks)


def test_a_model_an_actor_cannot_open_is_said_plainly(local_ray, pool, padded_rm, tmp_path):
    """The actor's ModelError comes back as itself (Ray's own error would lose it), not as a
    Ray traceback: the CLI prints it and exits 2."""
    empty = tmp_path / "no-model"
    empty.mkdir()
    cfg = _cfg(pool, padded_rm, tmp_path / "o")
    cfg.gold_rm = empty
    scorer = ray_scored_chunks_factory(cfg, RayOptions(num_actors=1))
    with contextlib.closing(scorer(shards_of([pool["pool"]])[0], 0, CHUNK_ROWS)) as chunks, \
            pytest.raises(ModelError, match=r"no-model: no .onnx, .gguf or .safetensors model found here"):
        next(chunks)


@pytest.mark.parametrize("sizes, start, want", [
    ([3, 3, 3], 0, [(0, [(0, 0, 3), (1, 0, 1)]), (4, [(1, 1, 3), (2, 0, 2)]), (8, [(2, 2, 3)])]),
    ([3, 3, 3], 4, [(4, [(1, 1, 3), (2, 0, 2)]), (8, [(2, 2, 3)])]),
    ([10], 2, [(2, [(0, 2, 6)]), (6, [(0, 6, 10)])]),
    ([2, 0, 2], 0, [(0, [(0, 0, 2), (2, 0, 2)])]),
    ([4], 4, []),
])
def test_parquet_blocks_are_cut_into_the_local_chunks(sizes, start, want):
    """Chunks of 4 rows from ``start``, whatever the blocks Ray's reader made."""
    assert _plan(sizes, start, 4) == want


def test_importing_the_ray_path_imports_no_ray():
    """Ray is an optional extra: the engine and the curation modules import it only when used."""
    import subprocess
    import sys

    code = ("import sys, engine.distributed, trainer.curate.stage2_ray, app.moderate.distributed; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout
