"""`arbiter moderate --engine ray` (issue 17, scale): Ray Data equals the local run.

A real local Ray instance (2 CPUs, no dashboard) started by this module and shut down after it,
with a check that it left no process behind; the keyword reward model of tests/test_moderate.py
(a real ONNX graph: "kill" scores -8, "sorry" -2), real files, the real store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.moderate.distributed import ModelRef, RayOptions, run_ray
from app.moderate.job import Options, run
from app.moderate.scoring import model_sha256
from app.moderate.store import ModerationStore
from app.moderate.thresholds import Thresholds
from engine.errors import InputError
from tests.test_moderate import keyword_rm  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.enable_socket]
ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int) -> list[dict]:
    texts = ["a sunny day in the park", "I will kill you", "sorry, not today", "kill the lights please",
             "a recipe for bread"]
    rows = [{"uid": f"r{i}", "text": texts[i % len(texts)] + f" #{i}"} for i in range(n)]
    rows[3]["text"] = "   "  # empty_text: a per-row status, never a drop
    del rows[5]["text"]  # missing_text
    rows[7]["ctx"] = "how do I kill a process in linux?"  # a response in context
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _ray_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray for this module; afterwards none of its processes may be left."""
    before = _ray_children()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    gone, alive = psutil.wait_procs(left, timeout=60)
    assert not alive, f"Ray left processes behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture
def model(keyword_rm):  # noqa: F811
    import engine

    with engine.load(str(keyword_rm), threads=1) as rm:
        yield rm, model_sha256(rm.info), ModelRef(str(keyword_rm), threads=1)


def _both(model, tmp_path: Path, src: Path, suffix: str, ray_opts: RayOptions, **fields):
    rm, sha, ref = model
    thr = Thresholds.default()
    outs = []
    for engine_name in ("local", "ray"):
        store = ModerationStore(tmp_path / f"{engine_name}.db")
        opts = Options(str(src), str(tmp_path / f"{engine_name}.{suffix}"), batch_rows=3, **fields)
        try:
            if engine_name == "local":
                summary = run(rm, opts, thr, model_sha256=sha, store=store)
            else:
                summary = run_ray(ref, opts, thr, model_sha256=sha, store=store, ray_opts=ray_opts)
        finally:
            store.close()
        outs.append((summary, tmp_path / f"{engine_name}.{suffix}"))
    return outs


def test_ray_equals_local_jsonl(local_ray, model, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(23))
    (ls, lo), (rs, ro) = _both(model, tmp_path, src, "jsonl", RayOptions(num_actors=2, shard_rows=5),
                               id_field="uid", context_field="ctx")
    local, dist = _jsonl(lo), _jsonl(ro)
    assert len(dist) == 23 and [r["id"] for r in dist] == [f"r{i}" for i in range(23)]
    assert dist == local  # same rows, same scores (the engine scores each row alone), same flags
    assert sum(r["flagged"] is True for r in dist) > 0 and sum(r["flagged"] is False for r in dist) > 0
    assert {r["status"] for r in dist} == {"ok", "empty_text", "missing_text"}
    assert (rs.rows, rs.flagged, rs.statuses) == (ls.rows, ls.flagged, ls.statuses)


def test_ray_equals_local_parquet_openai_shape(local_ray, model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in _rows(12) if "text" in r]
    pq.write_table(pa.Table.from_pylist([{"uid": r["uid"], "text": r["text"]} for r in rows]),
                   tmp_path / "in.parquet", row_group_size=5)  # read by 3 Ray tasks, one per row group
    (_, lo), (_, ro) = _both(model, tmp_path, tmp_path / "in.parquet", "parquet",
                             RayOptions(num_actors=1, shard_rows=4), openai_format=True)
    assert pq.read_table(ro).to_pylist() == pq.read_table(lo).to_pylist()
    first = json.loads(pq.read_table(ro).to_pylist()[1]["results"])
    assert first[0]["flagged"] is True  # "I will kill you"


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_rerun_skips_the_finished_shards(local_ray, model, tmp_path, kind):
    """Stopped after its first shard, the rerun scores only the rest; the output equals the local
    run's and the audit holds each row once."""
    rm, sha, ref = model
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(17))
    if kind == "parquet":  # row groups of 4 rows: the resumed job starts inside the second
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(_jsonl(src)), tmp_path / "in.parquet", row_group_size=4)
        src = tmp_path / "in.parquet"
    opts = Options(str(src), str(tmp_path / "ray.jsonl"), id_field="uid", batch_rows=2)
    store = ModerationStore(tmp_path / "m.db")
    calls = []

    def stop_after_first_shard(done: int, total: int | None) -> None:
        calls.append(done)
        if done >= 6:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            run_ray(ref, opts, Thresholds.default(), model_sha256=sha, store=store,
                    ray_opts=RayOptions(num_actors=2, shard_rows=6), progress=stop_after_first_shard)
        assert not (tmp_path / "ray.jsonl").exists()
        summary = run_ray(ref, opts, Thresholds.default(), model_sha256=sha, store=store,
                          ray_opts=RayOptions(num_actors=2, shard_rows=6))
        audit = store.audit(job=summary.job)
    finally:
        store.close()
    assert summary.resumed_from == 6 and summary.rows == 17
    local_store = ModerationStore(tmp_path / "local.db")
    try:
        run(rm, Options(str(src), str(tmp_path / "local.jsonl"), id_field="uid"), Thresholds.default(),
            model_sha256=sha, store=local_store)
    finally:
        local_store.close()
    assert _jsonl(tmp_path / "ray.jsonl") == _jsonl(tmp_path / "local.jsonl")
    assert sorted(a["row_id"] for a in audit) == sorted(json.dumps(f"r{i}") for i in range(17))


def test_bad_rows_stop_the_job_naming_file_line_and_field(local_ray, model, tmp_path):
    _, sha, ref = model
    rows = _rows(9)
    rows[6]["uid"] = "r1"  # not unique, in another shard than its first use
    src = _write_jsonl(tmp_path / "dup.jsonl", rows)
    store = ModerationStore(tmp_path / "m.db")
    try:
        with pytest.raises(InputError, match=r"dup.jsonl:7: field 'uid': not unique: 'r1' is also the id on line 2"):
            run_ray(ref, Options(str(src), str(tmp_path / "o.jsonl"), id_field="uid"), Thresholds.default(),
                    model_sha256=sha, store=store, ray_opts=RayOptions(num_actors=1, shard_rows=4))
        rows = _rows(9)
        rows[2]["text"] = {"not": "text"}  # a text that is not text: raised in the actor, said plainly
        bad = _write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(InputError, match=r"bad.jsonl:3: field 'text'"):
            run_ray(ref, Options(str(bad), str(tmp_path / "o2.jsonl")), Thresholds.default(),
                    model_sha256=sha, store=store, ray_opts=RayOptions(num_actors=1, shard_rows=4))
    finally:
        store.close()
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o2.jsonl").exists()


def test_cli_joins_a_running_cluster(local_ray, keyword_rm, tmp_path):  # noqa: F811
    """`arbiter moderate --engine ray --address` in a real subprocess, against the local run."""
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(11))
    env = {**os.environ, "ARBITER_HOME": str(tmp_path / "home")}
    base = [sys.executable, "-m", "app.cli.main", "moderate", str(src), "--model", str(keyword_rm),
            "--threads", "1", "--id-field", "uid", "--json"]
    runs = {}
    for name, extra in (("local", []), ("ray", ["--engine", "ray", "--address", local_ray,
                                                "--num-actors", "1", "--shard-rows", "4"])):
        p = subprocess.run([*base, "--out", str(tmp_path / f"{name}.jsonl"), *extra], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        runs[name] = json.loads(p.stdout)
    assert runs["ray"]["engine"] == "ray" and runs["ray"]["rows"] == 11
    assert _jsonl(tmp_path / "ray.jsonl") == _jsonl(tmp_path / "local.jsonl")


def test_without_ray_the_scale_extra_is_named(keyword_rm, tmp_path):  # noqa: F811
    """An install without Ray: exit 2 and the extra's name, before any model loads."""
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(9))
    code = ("import sys; sys.modules['ray'] = None; from app.cli.main import main; "
            f"sys.exit(main(['moderate', {str(src)!r}, '--model', {str(keyword_rm)!r}, '--out', "
            f"{str(tmp_path / 'o.jsonl')!r}, '--engine', 'ray']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "ARBITER_HOME": str(tmp_path / "home")})
    assert p.returncode == 2, p.stderr
    assert "arbiter: error:" in p.stderr and "arbiter[scale]" in p.stderr and "Traceback" not in p.stderr
