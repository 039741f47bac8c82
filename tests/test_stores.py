"""The SQLite stores: WAL, a busy timeout, migrations that two processes can run at once,
and a damaged ``arbiter.db`` that says what to do (real files, real processes)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

#: one process's share of the race: open every store on the shared folder, write to each
WORKER = r"""
import os, sys, time
from pathlib import Path
go = Path(sys.argv[1])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
from engine.store import Store
from engine.types import Score
from trainer.eval.runs import EvalStore
from trainer.bt.runlog import RunLog
from app.gui.history_store import HistoryStore
me = str(os.getpid())
store = Store.default()
store.remember_hash("/f" + me, 1, 1, "0" * 64)
evals = EvalStore(store)
evals.save_scores("m", [("sha", f"k{me}#{i}", Score(0.5, 3, 0)) for i in range(20)])
log = RunLog(store)
log.start(base="b", out="o", config={}, world_size=1, train_pairs=1, gold_pairs=0, steps=1)
log.log(1, "train", {"loss": 0.5})
HistoryStore().count()
"""


def _race(home: Path, processes: int) -> list[subprocess.CompletedProcess]:
    """Start ``processes`` workers on a fresh ``home`` and release them at the same moment."""
    go = home.parent / f"go-{home.name}"
    env = {**os.environ, "ARBITER_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    for p in procs:  # every worker has imported everything and spins on `go`
        assert p.stdout.readline().strip() == "ready", p.communicate()[1]
    go.touch()
    return [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate()) for p in procs]


def test_processes_sharing_a_fresh_data_dir_never_see_database_is_locked(tmp_path):
    """Issue 13, defect 5: `arbiter score` twice on a fresh folder, one died migrating."""
    for k in range(int(os.environ.get("ARBITER_STORE_RACES", "6"))):
        home = tmp_path / f"home{k}"
        results = _race(home, 4)
        failed = [r.stderr for r in results if r.returncode]
        assert not failed, failed[0]
        db = sqlite3.connect(home / "arbiter.db")
        assert db.execute("select count(*) from eval_scores").fetchone()[0] == 4 * 20
        assert db.execute("select count(*) from train_runs").fetchone()[0] == 4
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def _pragma(conn: sqlite3.Connection, name: str):
    return conn.execute(f"pragma {name}").fetchone()[0]


def test_every_store_connection_is_wal_with_a_busy_timeout(arbiter_home):
    from app.gui.history_store import HistoryStore
    from engine.store import Store
    from trainer.bt.runlog import RunLog
    from trainer.eval.runs import EvalStore

    store = Store.default()
    conns = {"store": store.db.conn, "eval": EvalStore(store).db.conn,
             "runlog": RunLog(store).store.db.conn, "history": HistoryStore().db.conn}
    for name, conn in conns.items():
        assert _pragma(conn, "journal_mode") == "wal", name
        assert _pragma(conn, "busy_timeout") >= 10_000, name  # milliseconds


def _damage(db: Path, how: str) -> None:
    if how == "random bytes":
        db.write_bytes(os.urandom(64 * 1024))
    else:  # truncated: the header survives, most pages do not
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])


def _filled_store(home: Path) -> Path:
    """A real arbiter.db with hashes, eval scores and a training log, checkpointed into the file."""
    from engine.store import Store
    from engine.types import Score
    from trainer.bt.runlog import RunLog
    from trainer.eval.runs import EvalStore

    store = Store(home / "arbiter.db")
    for i in range(300):
        store.remember_hash(f"/file{i}", i, i, f"{i:064d}")
    EvalStore(store).save_scores("m", [("sha", f"k{i}", Score(0.1 * i, 5, 0)) for i in range(500)])
    RunLog(store).log(1, "train", {"loss": 0.5})
    store.db.execute("pragma wal_checkpoint(truncate)")
    store.db.conn.close()
    return home / "arbiter.db"


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_a_damaged_store_is_a_clear_error_and_no_obstacle_to_hashing(arbiter_home, tmp_path, how, caplog):
    """Issue 13, defect 6: a corrupt arbiter.db stopped plain scoring with a traceback."""
    from engine.files import file_info, sha256_file
    from engine.store import Store, StoreError
    from trainer.eval.runs import EvalStore

    arbiter_home.mkdir(parents=True)
    db = _filled_store(arbiter_home)
    _damage(db, how)
    with pytest.raises(StoreError, match=r"arbiter\.db: the local database cannot be read .* move it aside"):
        EvalStore(Store(db)).scores("m", "sha")
    some = tmp_path / "weights.bin"
    some.write_bytes(b"x" * 1000)
    assert file_info(some).sha256 == sha256_file(some)  # scoring's only use of the store: a cache
    assert "file hashes are not cached" in caplog.text and "move it aside" in caplog.text


def test_a_damaged_work_database_is_not_called_replaceable(tmp_path):
    """Only arbiter.db (caches, logs) may be moved aside and rebuilt; a curation run's or a
    moderation job's database holds work, so its error says to restore a copy instead."""
    from engine.store import Store, StoreError

    db = tmp_path / "curation.db"
    db.write_bytes(b"this is not an SQLite file at all" * 200)
    with pytest.raises(StoreError, match=r"curation\.db: the database cannot be read .*restore it from a copy") as e:
        Store(db).db.execute("select 1")
    assert "starts a new one" not in str(e.value)


def test_arbiter_home_pointing_at_a_file_says_so(tmp_path, monkeypatch):
    from engine.paths import data_dir

    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("ARBITER_HOME", str(f))
    with pytest.raises(InputError, match="ARBITER_HOME: .*not-a-folder is not a folder"):
        data_dir()
    monkeypatch.setenv("ARBITER_HOME", str(f / "below"))
    with pytest.raises(InputError, match="is not a folder"):
        data_dir()


# ---- evaluation runs ------------------------------------------------------------------

def _info():
    from engine.types import ModelInfo

    return ModelInfo("m", "onnx", "BertForSequenceClassification", "cls", 512, None, "fp32")


KILLED_RUN = r"""
import os, signal
from engine.types import ModelInfo
from trainer.eval.runs import EvalStore
info = ModelInfo("m", "onnx", "BertForSequenceClassification", "cls", 512, None, "fp32")
EvalStore().start_run("killed-run", info, "mid", [], {})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_with_sigkill_is_shown_interrupted_and_taken_over(arbiter_home):
    """Issue 13, defect 11: eval_runs stayed "running" for ever after kill -9."""
    from trainer.eval.runs import EvalStore

    proc = subprocess.run([sys.executable, "-c", KILLED_RUN], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = EvalStore()
    assert store.run("killed-run")["status"] == "running"  # nobody could have said otherwise
    store.start_run("another-run", _info(), "mid", [], {})  # any later run looks around first
    assert store.run("killed-run")["status"] == "interrupted"
    assert store.run("another-run")["status"] == "running"  # this process is alive: left alone
    store.start_run("killed-run", _info(), "mid", [], {})  # the same command again takes it over
    store.finish_run("killed-run", {})
    row = store.run("killed-run")
    assert (row["status"], row["attempts"], row["pid"]) == ("done", 2, os.getpid())


@pytest.fixture(scope="module")
def default_model():
    from engine.registry import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("this build ships no default model")
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    import json

    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": f"a good answer {i}",
                                     "rejected": f"bad {i}"}) + "\n" for i in range(40)))
    return f


def test_limit_is_part_of_a_runs_identity(default_model, pairs_file, tmp_path):
    """`--limit 30` and `--limit 80` wrote the same eval file and store row."""
    import engine
    from trainer.eval.runner import run_model
    from trainer.eval.runs import EvalStore

    store = EvalStore()
    with engine.load(default_model, threads=1) as rm:
        runs = {n: run_model(rm, [f"pairwise:{pairs_file}"], out_dir=tmp_path / "out", limit=n,
                             store=store, plots=False) for n in (3, 5, None)}
    ids = {n: o.result["run_id"] for n, o in runs.items()}
    assert len(set(ids.values())) == 3
    assert {n: o.result["benchmarks"][0]["records"] for n, o in runs.items()} == {3: 3, 5: 5, None: 40}
    assert len({o.paths["json"] for o in runs.values()}) == 3
    assert {n: json.loads(store.run(i)["options"])["limit"] for n, i in ids.items()} == {3: 3, 5: 5, None: None}


def test_scores_are_committed_a_batch_at_a_time(default_model, pairs_file, arbiter_home):
    """Nothing reached the store before 128 scores: a kill lost up to 127 of them."""
    import engine
    from trainer.eval.runner import COMMIT_EVERY, run_model
    from trainer.eval.runs import EvalStore

    seen: list[tuple[int, int]] = []  # (scores done, rows another connection sees in the store)
    store = EvalStore()
    other = sqlite3.connect(arbiter_home / "arbiter.db")

    def progress(_name: str, done: int, _total: int | None) -> None:
        seen.append((done, other.execute("select count(*) from eval_scores").fetchone()[0]))

    with engine.load(default_model, threads=1) as rm:
        run_model(rm, [f"pairwise:{pairs_file}"], store=store, batch_size=4, progress=progress,
                  plots=False)
    assert COMMIT_EVERY <= 32
    assert seen[0][0] <= COMMIT_EVERY and seen[0][1] == seen[0][0]  # committed, not just scored
    assert all(committed == done for done, committed in seen)


KILLED_TRAINING = r"""
import os, signal
from engine.store import Store
from trainer.bt.runlog import RunLog
RunLog(Store.default(), "killed-training").start(base="b", out="o", steps=3)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_training_run_killed_with_sigkill_is_shown_interrupted(arbiter_home):
    """A training killed before its first checkpoint restarts under a new id: the old row must
    not say "running" for ever."""
    from engine.store import Store
    from trainer.bt.runlog import RunLog

    proc = subprocess.run([sys.executable, "-c", KILLED_TRAINING], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    status = "select status from train_runs where id = ?"
    store = Store.default()
    assert store.db.execute(status, ["killed-training"]).fetchone()[0] == "running"
    RunLog(store).start(base="b", out="o", steps=3)
    assert store.db.execute(status, ["killed-training"]).fetchone()[0] == "interrupted"
