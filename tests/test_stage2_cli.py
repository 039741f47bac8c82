"""`arbiter curate stage2` and `arbiter curate gold-rm` as users run them (real subprocesses).

The kill test is deterministic without a clock: the judge is an OpenAI-compatible endpoint in
this process (:class:`GatedJudge`, the rule of tests/test_stage2.py) that holds each request
until the test lets it through. While a request is held the run is blocked inside a chunk, so
what the test reads from stage2.db then is stable: it lets requests through until the database
shows a committed chunk, and kills the run (SIGKILL) while the next request is held.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.test_stage2 import QUESTIONS, gold_pairs, judge_rule, models, outputs, write_pool
from trainer.data import pair, write_pairs

ROOT = Path(__file__).resolve().parents[1]
#: a bound on a hang of one CLI run (a few dozen pairs on 2 busy cores), not a speed check (seconds)
RUN_TIMEOUT_S = 900


class GatedJudge:
    """A chat-completions endpoint answering by ``judge_rule``; with ``gated``, each request
    waits for :meth:`let_held_through` (``arrived`` counts the requests that came)."""

    def __init__(self, gated: bool) -> None:
        self.gated = gated
        self.arrived = 0
        self.let_through = 0
        self.changed = threading.Condition()
        self._permits = threading.Semaphore(0)
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client was killed while this request was held
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "rule", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.hold()
                from tests.judge_helpers import RuleJudge

                one, two = RuleJudge.candidates(body["messages"])
                answer = judge_rule(one, two, body.get("seed", 0))
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hold(self) -> None:
        with self.changed:
            self.arrived += 1
            self.changed.notify_all()
        if self.gated:
            self._permits.acquire()

    def let_held_through(self) -> None:
        """Answer every request held now (a client's retry of a held request included)."""
        with self.changed:
            n, self.let_through = self.arrived - self.let_through, self.arrived
        for _ in range(n):
            self._permits.release()

    def open_gate(self) -> None:
        """Answer everything from now on (and whatever is held)."""
        self.gated = False
        for _ in range(64):
            self._permits.release()

    def stop(self) -> None:
        self.open_gate()
        self.server.shutdown()
        self.server.server_close()


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_pool(data)
    write_pairs(gold_pairs(), data / "gold.jsonl")
    return data


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    gold_rm, current_rm = models()
    return [sys.executable, "-m", "app.cli.main", "curate", "stage2", "--pool", str(data / "s1.jsonl"),
            str(data / "s2.jsonl.gz"), str(data / "s3.parquet"), "--gold", str(data / "gold.jsonl"),
            "--gold-rm", str(gold_rm), "--current-rm", str(current_rm), "--out", str(out), "--threads", "1",
            "--batch-size", "8", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ARBITER_HOME": str(tmp_path / "home")}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    """The same command in this process (``app.cli.main.main``): exit code, stdout, stderr."""
    from app.cli.main import main

    capsys.readouterr()
    code = main(argv[argv.index("curate"):])
    out, err = capsys.readouterr()
    return code, out, err


def _committed(out: Path) -> int:
    """Decisions committed in OUT/stage2.db (0 before the file or its tables exist)."""
    try:
        conn = sqlite3.connect(f"file:{out / 'stage2.db'}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute("select count(*) from decisions").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _table(out: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{out / 'stage2.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.enable_socket
def test_a_run_killed_mid_chunk_resumes_to_identical_outputs(tmp_path, embedder_dir, capsys):
    data, env = _data(tmp_path), _env(tmp_path)
    # band 0.4: the current RM (p near 0.5) is never confident, so every pair the gold RM agrees
    # with goes to the judge: one of each mirrored pair, 12 pairs in 25 rows, chunks of 1 row
    extra = ["--band", "0.4", "--chunk-rows", "1", "--concurrency", "1", "--embedder", str(embedder_dir),
             "--judge-model", "rule", "--json"]
    free = GatedJudge(gated=False)
    try:
        ref_out = tmp_path / "ref"
        code, ref_stdout, err = _main(_argv(data, ref_out, "--judge-url", free.url, *extra), capsys)
        assert code == 0, err
    finally:
        free.stop()
    ref_summary = json.loads(ref_stdout)
    assert ref_summary["judged"] >= 2, "the kill needs a judged pair after a committed chunk"

    gate = GatedJudge(gated=True)
    out = tmp_path / "out"
    argv = _argv(data, out, "--judge-url", gate.url, *extra)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    exited = threading.Thread(target=lambda: (proc.wait(), _notify(gate)), daemon=True)
    exited.start()
    try:
        killed_at = None
        with gate.changed:
            while killed_at is None:
                # wait until a request is held (the run is blocked in a chunk) or the run ended
                gate.changed.wait_for(lambda: gate.arrived > gate.let_through or proc.poll() is not None)
                assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()}"
                if _committed(out) >= 1:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = _committed(out)
                else:
                    gate.let_held_through()  # the condition's lock is re-entrant
        proc.wait()
        exited.join()
        assert proc.returncode == -signal.SIGKILL
        at_kill = _table(out, "select shard, row, votes is not null from decisions order by shard, row")
        gate.open_gate()
        done = _run(argv, env)
        assert done.returncode == 0, done.stderr
        code, again, err = _main(argv, capsys)  # the finished run: nothing scored, asked or changed
        assert code == 0, err
    finally:
        gate.stop()
    summary = json.loads(done.stdout)
    assert outputs(out) == outputs(ref_out)  # byte for byte, kept and flipped
    keep = "select shard, row, pair_id, decision, reason, gold_p, current_p, judge_label, votes, round " \
           "from decisions order by shard, row"
    assert _table(out, keep) == _table(ref_out, keep)  # no duplicate, no lost pair
    assert _table(out, "select count(*) from decisions") == [(25,)]
    assert 1 <= killed_at < 25
    assert summary["rows"] == ref_summary["rows"] == 25
    assert len(at_kill) == killed_at
    # the committed chunks were not judged again: this run judged only the pairs after them
    assert summary["judged"] == ref_summary["judged"] - sum(j for _, _, j in at_kill)
    for k in ("kept", "discarded", "flipped", "unscored", "reasons"):
        assert summary[k] == ref_summary[k], k
    assert json.loads(again)["judged"] == 0 and outputs(out) == outputs(ref_out)


def _notify(gate: GatedJudge) -> None:
    with gate.changed:
        gate.changed.notify_all()


# -- bad input --------------------------------------------------------------------------------

def _fails(argv: list[str], capsys, *needles: str) -> str:
    """Exit 2 with one `arbiter: error:` line holding ``needles`` (in this process: these fail
    before any model loads, and the subprocess test above covers the real process)."""
    code, _, err = _main(argv, capsys)
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.startswith("arbiter: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_a_bad_pool_row_stops_the_run_with_its_file_and_line(tmp_path):
    data, env = _data(tmp_path), _env(tmp_path)
    bad = data / "s1.jsonl"
    lines = bad.read_text().splitlines()
    row = json.loads(lines[4])
    row["conversation"] = "not a list"
    lines[4] = json.dumps(row)
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = _run(_argv(data, out), env)  # a real process: exit 2, one line, no traceback
    assert r.returncode == 2 and r.stderr.startswith("arbiter: error: "), (r.returncode, r.stderr)
    assert f"{bad}:5: field 'conversation'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()  # nothing written, not even the database


def test_missing_models_and_bad_options_name_what_is_wrong(tmp_path, capsys):
    data = _data(tmp_path)
    out = tmp_path / "out"
    argv = _argv(data, out)
    missing = tmp_path / "no-such-rm"
    _fails([*argv[:argv.index("--gold-rm") + 1], str(missing), *argv[argv.index("--gold-rm") + 2:]], capsys,
           f"{missing}: no such model (--gold-rm)")
    _fails([*argv[:argv.index("--current-rm") + 1], str(missing), *argv[argv.index("--current-rm") + 2:]], capsys,
           f"{missing}: no such model (--current-rm)")
    judge = tmp_path / "judge.gguf"
    _fails([*argv, "--judge", str(judge)], capsys, f"{judge}: no such judge model file")
    _fails([*argv, "--band", "0.7"], capsys, "--band must be in [0, 0.5)")
    _fails([*argv, "--band", "wide"], capsys, "--band must be auto or a number")
    _fails([*argv, "--judge-url", "http://127.0.0.1:9"], capsys, "each --judge-url needs its --judge-model")
    (tmp_path / "empty").mkdir()
    _fails([*argv[:argv.index("--pool") + 1], str(tmp_path / "empty"), *argv[argv.index("--gold"):]], capsys,
           "empty: no .jsonl")
    assert not out.exists()


def test_a_rerun_with_other_settings_is_refused(tmp_path, capsys):
    data = _data(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = _main(_argv(data, out, "--band", "0.05"), capsys)
    assert code == 0, err
    assert "kept:" in stdout and "flipped:" in stdout
    _fails(_argv(data, out, "--band", "0.05", "--no-recycle"), capsys, "other settings (recycle differ)")


# -- gold-rm ----------------------------------------------------------------------------------

def test_gold_rm_refuses_pairs_no_human_labelled(tmp_path, capsys):
    silver = tmp_path / "silver.jsonl"
    write_pairs([pair(q, a, b, id=f"s{i}", label_origin="llm") for i, (q, a, b) in enumerate(QUESTIONS)], silver)
    base = [sys.executable, "-m", "app.cli.main", "curate", "gold-rm", "--out", str(tmp_path / "g")]
    _fails([*base, "--gold", str(silver)], capsys, str(silver), "field 'label_origin'", "human labels only")
    _fails([*base, "--from-run", str(tmp_path)], capsys, f"{tmp_path}: no stage-1 run here (no curation.db)")
    _fails(base, capsys, "give human-labelled pairs")


@pytest.mark.slow
def test_gold_rm_trains_on_human_pairs_and_exports_onnx(tmp_path):
    """A few steps on the human gold pairs, exported to ONNX fp32; stage 2 scores with it."""
    import engine
    from trainer.curate.stage2 import pair_ps

    env = _env(tmp_path)
    data = _data(tmp_path)
    out = tmp_path / "gold-rm"
    sets = ["--set", "max_length=64", "--set", "per_device_batch=4", "--set", "global_batch=4",
            "--set", "max_steps=2", "--set", "eval_every=2", "--set", "log_every=2", "--set", "threads=1"]
    r = _run([sys.executable, "-m", "app.cli.main", "curate", "gold-rm", "--gold", str(data / "gold.jsonl"),
              "--out", str(out), *sets, "--json"], env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    onnx = Path(info["onnx"])
    assert onnx == out / "onnx" and (onnx / "model.onnx").is_file() and not (out / "onnx.partial").exists()
    assert info["train_pairs"] + info["heldout_pairs"] == len(QUESTIONS) and info["heldout_pairs"] == 1
    assert info["steps"] == 2
    with engine.load(onnx) as rm:
        assert type(rm).__name__ == "OnnxScorer"
        ps = pair_ps(rm, gold_pairs(), 4)
    assert all(p is not None and 0.0 < p < 1.0 for p in ps)
    _, current_rm = models()
    run = _run([sys.executable, "-m", "app.cli.main", "curate", "stage2", "--pool", str(data / "s1.jsonl"),
                "--gold", str(data / "gold.jsonl"), "--gold-rm", str(onnx), "--current-rm", str(current_rm),
                "--out", str(tmp_path / "s2"), "--threads", "1", "--json"], env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["rows"] == 9
