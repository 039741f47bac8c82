"""Crash safety: real `arbiter` subprocesses killed with SIGKILL at random points.

For every long job (score, eval, train; later ones join by adding a :class:`CrashJob` to
``JOBS``) the harness runs the command once uninterrupted, then again in a fresh data
directory where it is killed ``ARBITER_CRASH_KILLS`` times (5 in ``make test``, 20 in
``make crash-test``) and rerun after each kill, then run to the end. It checks:

* after every kill: each SQLite file passes ``PRAGMA integrity_check``, and the output
  path holds nothing or the complete output (never half of it);
* at the end: the output equals the uninterrupted run's, no temp file is left, and the
  store shows no run as still "running".

Kill points are drawn (stratified, so they cover the whole run) from a seed printed on
failure; ``ARBITER_CRASH_SEED`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARBITER = [sys.executable, "-m", "app.cli.main"]
KILLS = int(os.environ.get("ARBITER_CRASH_KILLS", "5"))
SEED = int(os.environ.get("ARBITER_CRASH_SEED", str(random.SystemRandom().randrange(10**6))))


@dataclass(frozen=True)
class CrashJob:
    """One long command: how to run it and what of its output must survive any kill.

    ``argv(work, out)`` is the command line (the same for every attempt: a rerun is the user
    typing the same command again); ``outputs(out)`` maps a name to the bytes that must equal
    the uninterrupted run's (normalised where a field is a timestamp); ``complete(out)``
    says whether the output path holds a finished output (False: nothing there yet), and
    must raise if it holds half of one.
    """

    name: str
    prepare: Callable[[Path, dict], None]  # writes the inputs into the work folder
    argv: Callable[[Path, Path, dict], list[str]]
    outputs: Callable[[Path], dict[str, bytes]]
    complete: Callable[[Path], bool]


# ---- the jobs ---------------------------------------------------------------------

def _rows(n: int) -> str:
    return "".join(json.dumps({"prompt": f"question {i}: what is {i} + {i}?",
                               "response": f"It is {2 * i}." + " Indeed." * (i % 7), "id": i}) + "\n"
                   for i in range(n))


def _score_prepare(work: Path, ctx: dict) -> None:
    (work / "in.jsonl").write_text(_rows(300))


def _score_complete(out: Path) -> bool:
    f = out / "scored.jsonl"
    if not f.exists():
        return False
    lines = f.read_text().splitlines()
    assert len(lines) == 300 and all(json.loads(x)["id"] == i for i, x in enumerate(lines)), "half a file"
    return True


SCORE = CrashJob(
    "score", _score_prepare,
    lambda work, out, ctx: ["score", "-m", ctx["model"], str(work / "in.jsonl"), "-o", str(out / "scored.jsonl"),
                            "--batch-size", "4", "--threads", "1"],
    lambda out: {"scored.jsonl": (out / "scored.jsonl").read_bytes()},
    _score_complete)


def _eval_prepare(work: Path, ctx: dict) -> None:
    (work / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"question {i}?", "chosen": f"A careful, correct answer to question {i}.",
                    "rejected": "No." if i % 3 else f"A long and wrong reply to {i}, " * 3}) + "\n"
        for i in range(80)))


def _eval_outputs(out: Path) -> dict[str, bytes]:
    (js,) = out.glob("eval-*.json")
    result = json.loads(js.read_text())
    for volatile in ("started", "finished", "scoring"):  # when it ran and what it reused, not what it found
        result.pop(volatile)
    (md,) = out.glob("eval-*.md")
    return {js.name: json.dumps(result, sort_keys=True).encode(), md.name: md.read_bytes()}


def _eval_complete(out: Path) -> bool:
    files = sorted(out.glob("eval-*.json")) if out.exists() else []
    if not files:
        return False
    json.loads(files[0].read_text())  # half a file would not parse
    return True


EVAL = CrashJob(
    "eval", _eval_prepare,
    lambda work, out, ctx: ["eval", "-m", ctx["model"], "--bench", f"pairwise:{work / 'pairs.jsonl'}",
                            "--out", str(out), "--no-plots", "--batch-size", "4", "--threads", "1"],
    _eval_outputs, _eval_complete)


TRAIN_SETTINGS = {"max_length": 64, "per_device_batch": 4, "global_batch": 8, "lr": 1e-3, "max_steps": 24,
                  "eval_every": 4, "log_every": 2, "threads": 1, "progress": "false"}


def _train_prepare(work: Path, ctx: dict) -> None:
    from tests.test_trainer_bt import sentiment_pairs
    from trainer.data import write_pairs

    write_pairs(sentiment_pairs(48, 0, "t"), work / "train.jsonl")
    write_pairs(sentiment_pairs(8, 1, "g"), work / "gold.jsonl")


def _train_outputs(out: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    got = {}
    for part in ("best", "last"):
        tensors = load_file(out / part / "model.safetensors")
        got[f"{part}/model.safetensors"] = b"".join(k.encode() + tensors[k].tobytes() for k in sorted(tensors))
    summary = json.loads((out / "best" / "training.json").read_text())
    summary.pop("run_id")  # a fresh id per run; a resumed run keeps its own
    got["best/training.json"] = json.dumps(summary, sort_keys=True).encode()
    return got


def _train_complete(out: Path) -> bool:
    return (out / "data_report.json").exists()  # written last, once training has finished


TRAIN = CrashJob(
    "train", _train_prepare,
    lambda work, out, ctx: ["train", "--base", str(ctx["base"]), "--train", str(work / "train.jsonl"),
                            "--gold", str(work / "gold.jsonl"), "--out", str(out), "--resume",
                            *[x for k, v in TRAIN_SETTINGS.items() for x in ("--set", f"{k}={v}")]],
    _train_outputs, _train_complete)

def _moderate_prepare(work: Path, ctx: dict) -> None:
    (work / "texts.jsonl").write_text("".join(
        json.dumps({"id": f"t{i}", "text": f"Reply {i}: " + "more words here " * (i % 11)}) + "\n"
        for i in range(300)))


def _moderate_complete(out: Path) -> bool:
    f = out / "moderated.jsonl"
    if not f.exists():
        return False
    lines = f.read_text().splitlines()
    assert len(lines) == 300 and all(json.loads(x)["id"] == f"t{i}" for i, x in enumerate(lines)), "half a file"
    return True


MODERATE = CrashJob(
    "moderate", _moderate_prepare,
    lambda work, out, ctx: ["moderate", str(work / "texts.jsonl"), "-m", ctx["model"], "--out",
                            str(out / "moderated.jsonl"), "--id-field", "id", "--batch-rows", "8",
                            "--threads", "1"],
    lambda out: {"moderated.jsonl": (out / "moderated.jsonl").read_bytes()},
    _moderate_complete)

#: every long job the crash suite covers; a new one (moderate, curate) is one more entry
JOBS = [SCORE, EVAL, TRAIN, MODERATE]


# ---- the harness --------------------------------------------------------------------

def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "ARBITER_HOME": str(home), "OMP_NUM_THREADS": "1"}


def _run_to_end(argv: list[str], home: Path) -> float:
    """Run a command to completion; returns its duration in seconds."""
    t0 = time.monotonic()
    proc = subprocess.run([*ARBITER, *argv], cwd=ROOT, env=_env(home), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.monotonic() - t0


def _kill_after(argv: list[str], home: Path, delay: float) -> bool:
    """Start the command and SIGKILL it after ``delay`` seconds; False if it finished first."""
    proc = subprocess.Popen([*ARBITER, *argv], cwd=ROOT, env=_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err[-3000:]
    return False


def _check_databases(*folders: Path) -> None:
    for folder in folders:
        for db in folder.rglob("*.db"):
            conn = sqlite3.connect(db)
            try:
                assert conn.execute("pragma integrity_check").fetchone()[0] == "ok", db
            finally:
                conn.close()


def _running_rows(home: Path) -> list[tuple[str, str]]:
    """(table, run id) of runs the store still shows as running: after the last run, none may be."""
    conn = sqlite3.connect(home / "arbiter.db")
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        return [(t, r[0]) for t in ("eval_runs", "train_runs") if t in tables
                for r in conn.execute(f"select id from {t} where status = 'running'")]
    finally:
        conn.close()


def _temp_files(folder: Path) -> list[Path]:
    """Leftovers of interrupted writes: hidden temp files, checkpoint files not yet committed."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".next")
            or p.name == "COMMITTING" or ".tmp-" in p.name]


@pytest.fixture(scope="module")
def crash_context(tmp_path_factory) -> dict:
    """What the jobs share: the default model (score, eval) and a tiny decoder base (train)."""
    import engine

    if engine.registry.default_model_path() is None:
        pytest.skip("this build ships no default model")
    return {"model": "default"}


def _train_base(ctx: dict, tmp_path_factory) -> None:
    from tests.models import save_gguf_tokenizer, smollm2_gguf, tiny_decoder

    if "base" not in ctx:
        d = tmp_path_factory.mktemp("crash-base")
        tok = save_gguf_tokenizer(smollm2_gguf(), d / "tokenizer")
        ctx["base"] = tiny_decoder("qwen3", d / "qwen3", tok)


@pytest.mark.slow
@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_killed_runs_rerun_to_the_uninterrupted_result(job: CrashJob, crash_context, tmp_path, tmp_path_factory):
    if job is TRAIN:
        _train_base(crash_context, tmp_path_factory)
    work = tmp_path / "work"
    work.mkdir()
    job.prepare(work, crash_context)
    ref_home, ref_out = tmp_path / "ref-home", tmp_path / "ref-out"
    duration = _run_to_end(job.argv(work, ref_out, crash_context), ref_home)
    expected = job.outputs(ref_out)

    home, out = tmp_path / "home", tmp_path / "out"
    argv = job.argv(work, out, crash_context)
    rng = random.Random(f"{SEED}-{job.name}")
    delays = [duration * (k + rng.random()) / KILLS for k in range(KILLS)]  # stratified over the run
    rng.shuffle(delays)
    killed = []
    for delay in delays:
        killed.append(_kill_after(argv, home, delay))
        _check_databases(home, out)
        job.complete(out)  # nothing, or all of it: raises on half a file
    _run_to_end(argv, home)
    _check_databases(home, out)
    assert job.outputs(out) == expected, f"seed {SEED}, kills at {[round(d, 2) for d in delays]} s"
    assert not _temp_files(out), _temp_files(out)
    assert not _running_rows(home), _running_rows(home)
    assert any(killed), f"seed {SEED}: every run finished before its kill point"


@pytest.mark.parametrize("killed", ["before the commit", "midway through the commit"])
def test_a_checkpoint_killed_while_saving_resumes_whole(killed, tmp_path):
    """Files of a checkpoint are renamed into place together: a kill leaves the old one or the new
    one, never new weights with the old step (which resumed to a different model)."""
    import shutil

    import torch

    from trainer.bt.checkpoint import load_state, save_state

    def state_after(steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        for _ in range(steps):
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
        return model, opt

    state, scratch = tmp_path / "state", tmp_path / "scratch"
    save_state(state, *state_after(1), {"step": 1}, rank=0, is_main=True)
    save_state(scratch, *state_after(2), {"step": 2}, rank=0, is_main=True)
    names = sorted(p.name for p in scratch.iterdir())
    for name in names:  # what a kill leaves: step 2 written beside step 1 as *.next
        shutil.copy(scratch / name, state / f"{name}.next")
    if killed == "midway through the commit":
        (state / "COMMITTING").write_text("")
        (state / f"{names[0]}.next").replace(state / names[0])
    want_step = 1 if killed == "before the commit" else 2
    model, opt = state_after(0)
    assert load_state(state, model, opt, rank=0)["step"] == want_step
    reference = state_after(want_step)[0]
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)
    assert sorted(p.name for p in state.iterdir()) == names  # nothing half-done left behind


def test_a_safetensors_write_killed_midway_leaves_nothing_after_the_next_start(tmp_path):
    """safetensors writes ``.tmpXXXXXX`` and renames it; SIGKILL mid-write leaves the temp file,
    which a CI run found in ``last/state`` after the rerun. A run's start drops it, and only it."""
    from trainer.bt.checkpoint import drop_interrupted_writes

    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"previous checkpoint")
    (folder / ".tmp-notours").write_text("")  # not safetensors' pattern: kept
    script = ("import sys, torch; from safetensors.torch import save_file\n"
              "while True: save_file({'w': torch.zeros(50_000_000)}, sys.argv[1])\n")

    def temps() -> list[Path]:
        return [p for p in folder.iterdir() if p.name.startswith(".tmp") and p.name != ".tmp-notours"]

    leftovers: list[Path] = []
    for _attempt in range(20):  # a kill that lands just after a rename leaves nothing: try again
        writer = subprocess.Popen([sys.executable, "-c", script, str(folder / "model.safetensors")])
        try:
            while not temps():  # until the writer is caught mid-write (it writes 200 MB in a loop)
                assert writer.poll() is None, "the writer died on its own"
        finally:
            writer.kill()
            writer.wait()
        leftovers = temps()
        if leftovers:
            break
    assert leftovers, "20 kills all landed between two writes"
    assert drop_interrupted_writes(folder, tmp_path / "absent") == leftovers
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-notours", "model.safetensors"]
