"""`arbiter curate stage1`: bad input stops a real process with exit 2 and one clear line.

Every case here fails before any model loads, so these run in seconds; the rounds
themselves are tests/test_stage1.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: a bound on a hang (the CLI imports the trainer's data side only), not a speed check
TIMEOUT_S = 300


def _alpaca_row(i: int, **drop: bool) -> str:
    row = {"prompt": f"Name a colour ({i}).", "chosen": "Blue.", "rejected": "Seven.", "annotator": "gpt4",
           "preference": 1, "chosen_generator": "a", "rejected_generator": "b", "source_dataset": "x"}
    for k in drop:
        row.pop(k)
    return json.dumps(row)


@pytest.fixture
def sets(tmp_path) -> dict[str, Path]:
    out = {}
    for name in ("pool", "gold", "silver"):
        out[name] = tmp_path / f"{name}.jsonl"
        out[name].write_text("".join(_alpaca_row(i) + "\n" for i in range(3)))
    return out


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"ARBITER_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "app.cli.main", "curate", "stage1", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def _base_args(sets: dict[str, Path], tmp_path: Path) -> list[str]:
    return ["--pool", str(sets["pool"]), "--gold", str(sets["gold"]), "--silver", str(sets["silver"]),
            "--rounds", "1", "--out", str(tmp_path / "run")]


def _fails_cleanly(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("arbiter: error: "), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert not r.stdout


def test_a_bad_pool_row_names_file_line_and_field(sets, tmp_path):
    sets["pool"].write_text(_alpaca_row(0) + "\n" + _alpaca_row(1, chosen=True) + "\n" + _alpaca_row(2) + "\n")
    r = _run(tmp_path, *_base_args(sets, tmp_path), "--judge", str(tmp_path / "no.gguf"))
    _fails_cleanly(r, f"{sets['pool']}:2: field 'chosen': missing")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_judge_endpoint_that_is_down_fails_before_training(sets, tmp_path):
    """Nothing listens on 127.0.0.1:9 (discard): the run stops in seconds naming the endpoint,
    before it trains, embeds or writes a run folder."""
    r = _run(tmp_path, *_base_args(sets, tmp_path), "--judge-url", "http://127.0.0.1:9", "--judge-model", "m")
    _fails_cleanly(r, "http://127.0.0.1:9/v1/chat/completions: cannot reach the judge", "is the server up?")
    assert not (tmp_path / "run").exists()


def test_a_bad_gold_row_is_caught_before_any_judge_loads(sets, tmp_path):
    sets["gold"].write_text(_alpaca_row(0) + "\n" + '{"prompt": "x", "chosen": 3, "rejected": "y"}\n')
    r = _run(tmp_path, *_base_args(sets, tmp_path), "--judge", str(tmp_path / "no.gguf"))
    _fails_cleanly(r, f"{sets['gold']}:2: field 'chosen'")


@pytest.mark.parametrize(("extra", "needle"), [
    ((), "give a judge: --judge GGUF or --judge-url URL --judge-model NAME"),
    (("--judge-url", "http://127.0.0.1:9"), "each --judge-url needs its --judge-model"),
    (("--judge", "MISSING"), "MISSING: no such judge model file"),
    (("--judge-url", "ftp://x", "--judge-model", "m"), "expected http://HOST[:PORT]"),
    (("--judge-url", "http://127.0.0.1:9", "--judge-model", "m", "--api-key-env", "ARBITER_TEST_NO_SUCH_KEY"),
     "the API key variable ARBITER_TEST_NO_SUCH_KEY is not set"),
    (("--judge", "x.gguf", "--human-share", "1.5"), "--human-share must be between 0 and 1"),
    (("--judge", "x.gguf", "--embedder", "nowhere"), "nowhere: not an exported embedder folder"),
    (("--judge", "x.gguf", "--set", "max_length=2"), "max_length"),
])
def test_bad_options_fail_with_one_line(sets, tmp_path, extra, needle):
    r = _run(tmp_path, *_base_args(sets, tmp_path), *extra)
    _fails_cleanly(r, needle)


def test_the_command_is_registered_with_its_options(tmp_path):
    r = subprocess.run([sys.executable, "-m", "app.cli.main", "curate", "stage1", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    for opt in ("--pool", "--gold", "--silver", "--judge", "--judge-url", "--judge-model", "--api-key-env",
                "--rounds", "--out", "--base", "--samples", "--human-share", "--embedder"):
        assert opt in r.stdout
