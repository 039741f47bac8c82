"""The `arbiter` CLI, run as a user runs it (a subprocess), on real exported models."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ARBITER = [sys.executable, "-m", "app.cli.main"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ARBITER, *args], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_models_add_list_info_remove(onnx_models, arbiter_home):
    run("models", "add", str(onnx_models["minilm", "int8"]), "--name", "mini")
    listed = json.loads(run("models", "list", "--json").stdout)
    choice = engine.registry.default_choice()  # the measured fastest copy (tests/test_default_model.py)
    builtin = [("default", choice.format)] if choice else []
    if engine.registry.moderation_model_path() is not None:  # the built-in moderation model
        builtin.append(("moderation", "onnx"))
    assert [(m["name"], m["format"]) for m in listed] == [*builtin, ("mini", "onnx")]
    assert (arbiter_home / "models" / "mini" / "model.onnx").is_file()
    info = json.loads(run("models", "info", "mini", "--json").stdout)
    assert info["architecture"] == "BertForSequenceClassification" and info["dtype"] == "int8"
    assert info["chat_template"] is None and info["pooling"] == "cls"
    dup = run("models", "add", str(onnx_models["minilm", "int8"]), "--name", "mini", ok=False)
    assert dup.returncode == 2 and "exists already" in dup.stderr
    run("models", "remove", "mini")
    after = json.loads(run("models", "list", "--json").stdout)
    assert [(m["name"], m["format"]) for m in after] == builtin
    removed = run("models", "remove", "default", ok=False)  # the built-in one stays
    assert removed.returncode == 2 and "cannot be removed" in removed.stderr


def test_compare_prints_margin_and_probability(onnx_models):
    import engine

    model = str(onnx_models["llama", "fp32"])
    out = json.loads(run("compare", "--model", model, "--prompt", "2+2?", "4", "five", "--json").stdout)
    with engine.load(model) as rm:
        c = rm.compare("2+2?", "4", "five")
    assert out["score_a"] == pytest.approx(c.score_a.value, abs=5e-5)
    assert out["p_a_better"] == pytest.approx(c.p_a_better, abs=1e-4)
    human = run("compare", "--model", model, "--prompt", "2+2?", "4", "five").stdout
    assert "P(A better than B)" in human and "margin" in human


def test_bon_ranks_candidates_from_a_text_file(onnx_models, tmp_path):
    cands = tmp_path / "c.txt"
    cands.write_text("Paris.\n---\nLyon,\nsurely.\n---\nI don't know.\n")
    out = json.loads(run("bon", "-m", str(onnx_models["qwen3", "fp32"]), "-p", "Capital of France?",
                         "--candidates", str(cands), "--json").stdout)
    scores = [r["score"] for r in out["ranking"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert {r["response"] for r in out["ranking"]} == {"Paris.", "Lyon,\nsurely.", "I don't know."}


def test_score_writes_every_row_atomically(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(20)]
    rows.append({"conversation": [{"role": "user", "content": "hi"}], "response": "hello", "id": "keep-me"})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    summary = json.loads(run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out),
                             "--batch-size", "3", "--json").stdout)
    assert summary["rows"] == 21
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["response"] for g in got] == [r["response"] for r in rows] and got[-1]["id"] == "keep-me"
    assert all(isinstance(g["score"], float) for g in got)


def test_bad_row_fails_with_line_and_field_and_writes_nothing(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "respons": "typo"}\n')
    out = tmp_path / "out.jsonl"
    proc = run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out), ok=False)
    assert proc.returncode == 2
    assert f"{src}:2: field 'response'" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_missing_default_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ARBITER_BUILTIN", str(tmp_path / "no-builtin"))  # a build without one
    proc = run("compare", "-p", "q", "a", "b", ok=False)
    assert proc.returncode == 2 and "no default model" in proc.stderr and "models add" in proc.stderr


def test_export_and_verify_commands(hf_models, tmp_path):
    out = tmp_path / "exported"
    res = json.loads(run("export", str(hf_models["minilm"]), str(out), "--format", "onnx", "--verify", "--json").stdout)
    assert res["outputs"] == [str(out)]
    assert res["verify"][0]["passed"] and res["verify"][0]["max_abs_diff"] <= 1e-4
    meta = json.loads((out / "arbiter.json").read_text())
    assert meta["architecture"] == "BertForSequenceClassification" and len(meta["source_sha256"]) == 64
    bad = run("verify", str(out), "--reference", str(hf_models["qwen3"]), ok=False)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_int8_export_calibrates_on_a_file_with_the_settings_asked_for(hf_models, tmp_path):
    calib = tmp_path / "calib.jsonl"
    rows = [{"prompt": f"Question {i}: what is {i} + {i}?", "response": f"It is {2 * i}."} for i in range(30)]
    calib.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "int8"
    res = run("export", str(hf_models["minilm"]), str(out), "--format", "onnx", "--quant", "int8",
              "--calibration", str(calib), "--int8-calibration", "percentile", "--int8-percentile", "99.9",
              "--int8-float", "/intermediate/dense/", "--int8-smooth", "0.5", "--int8-smooth-skip", "/query/",
              "--json")
    assert json.loads(res.stdout)["outputs"] == [str(out)]
    meta = json.loads((out / "arbiter.json").read_text())
    assert meta["calibration_items"] == 40 + 30  # the probes, then the file's rows
    assert meta["int8"] == {"method": "percentile", "percentile": 99.9, "keep_float": ["/intermediate/dense/"],
                           "smooth": 0.5, "smooth_skip": ["/query/"]}
    assert sum("/intermediate/dense/" in n for n in meta["kept_float"]) == 6


@pytest.mark.parametrize("extra, message", [
    (["--quant", "fp32", "--int8-float", "x"], "--int8-float: they set how int8 is made; add --quant int8"),
    (["--quant", "int8", "--calibration", "BAD"], "BAD:2:"),
    (["--quant", "int8", "--int8-float", "("], "not a regular expression"),
    (["--quant", "int8", "--int8-percentile", "99.9"], "--int8-percentile applies to --int8-calibration percentile"),
    (["--quant", "int8", "--int8-smooth-skip", "/query/"], "but smoothing is off"),
    (["--quant", "int8", "--calibration", "MISSING"], "MISSING"),
    (["--quant", "int8", "--calibration", "LATIN1"], "LATIN1:1:"),
])
def test_int8_flags_that_cannot_apply_say_why(hf_models, tmp_path, extra, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + '{"prompt": "q"}\n')
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9", "response": "a"}\n'.encode("latin-1"))
    files = {"BAD": bad, "MISSING": tmp_path / "missing.jsonl", "LATIN1": tmp_path / "latin1.jsonl"}
    extra = [str(files.get(a, a)) for a in extra]
    res = run("export", str(hf_models["minilm"]), str(tmp_path / "out"), "--format", "onnx", *extra, ok=False)
    for name, path in files.items():
        message = message.replace(name, str(path))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_over_long_response_names_its_line(onnx_models, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": "q", "response": "short"}] * 5 + [{"prompt": "q", "response": "word " * 600}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(tmp_path / "o.jsonl"),
               "--batch-size", "2", ok=False)
    assert proc.returncode == 2 and f"{src}:6: field 'response'" in proc.stderr and "512" in proc.stderr

    out = tmp_path / "skip.jsonl"
    summary = json.loads(run("score", "-m", str(onnx_models["minilm", "fp32"]), str(src), "-o", str(out),
                             "--on-too-long", "skip", "--json").stdout)
    assert summary["rows"] == 6 and summary["rows_skipped"] == 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[-1]["score"] is None and "512" in got[-1]["skipped"]
    assert all(isinstance(g["score"], float) for g in got[:5])


def test_default_compare_is_length_controlled_and_can_be_raw():
    """The built-in default subtracts its length correction; --no-length-control gives the raw margin."""
    import math

    if engine.registry.default_model_path() is None:
        pytest.skip("this build ships no default model")
    a, b = "Paris.", "The capital of France is Paris, a city on the Seine."
    args = ["compare", "--prompt", "What is the capital of France?", a, b, "--json"]
    controlled = json.loads(run(*args).stdout)
    raw = json.loads(run(*args, "--no-length-control").stdout)
    with engine.load("default") as rm:
        beta = rm.info.length_correction
    shift = beta * (math.log1p(len(a)) - math.log1p(len(b)))  # what control takes off A's margin over B
    assert beta > 0
    assert controlled["margin"] == pytest.approx(raw["margin"] - shift, abs=1e-4)
    info = run("models", "info", "default").stdout
    assert "length control" in info


# ---- output files, hostile input, signals (issue 13) ---------------------------------

@pytest.fixture(scope="module")
def default_model() -> str:
    """The shipped default model: real, and quick to load (no export needed)."""
    if engine.registry.default_model_path() is None:
        pytest.skip("this build ships no default model")
    return "default"


@pytest.fixture
def rows_file(tmp_path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"answer {i}"}) + "\n" for i in range(5)))
    return src


def run_umask(umask: int, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ARBITER, *args], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(),
                          umask=umask)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_output_goes_through_a_symlink_with_the_umask_or_the_files_mode(default_model, rows_file, tmp_path):
    """Defect 3: -o replaced a symlink with a regular file, and every output was 0600."""
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(real.name)
    run_umask(0o022, "score", "-m", default_model, str(rows_file), "-o", str(link))
    assert link.is_symlink() and len(real.read_text().splitlines()) == 5
    assert real.stat().st_mode & 0o777 == 0o644
    fresh = tmp_path / "fresh.jsonl"
    run_umask(0o027, "score", "-m", default_model, str(rows_file), "-o", str(fresh))
    assert fresh.stat().st_mode & 0o777 == 0o640
    real.chmod(0o664)  # replacing a file keeps its permissions
    run_umask(0o077, "score", "-m", default_model, str(rows_file), "-o", str(link))
    assert real.stat().st_mode & 0o777 == 0o664 and link.is_symlink()


def _private_null(tmp_path: Path) -> Path:
    """A /dev/null of the test's own (same device numbers), so a regression replaces that node,
    never the machine's /dev/null (running the old code as root once did exactly that)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        node.write_text("probe")  # a nodev mount refuses to open device nodes
    except OSError as e:
        pytest.skip(f"cannot make a device node here ({e.strerror}): needs root on a dev mount")
    return node


def test_output_to_a_device_or_a_fifo_is_streamed_not_replaced(default_model, rows_file, tmp_path):
    """Defect 3: as root, -o /dev/null turned /dev/null into a regular file."""
    import threading

    null = _private_null(tmp_path)
    run("score", "-m", default_model, str(rows_file), "-o", str(null))
    assert stat.S_ISCHR(null.stat().st_mode) and null.read_text() == ""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(fifo.read_text().splitlines()))
    reader.start()
    run("score", "-m", default_model, str(rows_file), "-o", str(fifo))
    reader.join()
    assert stat.S_ISFIFO(fifo.stat().st_mode) and [json.loads(g)["response"] for g in got] == [
        f"answer {i}" for i in range(5)]


@pytest.mark.parametrize("case", ["missing input", "folder as input", "folder as -o", "batch size -3",
                                  "bon candidates not UTF-8", "compare conversation not UTF-8",
                                  "ARBITER_HOME is a file", "NaN in a row"])
def test_bad_input_is_a_message_not_a_traceback(case, default_model, rows_file, tmp_path, monkeypatch):
    """Defects 6, 7 and 9: each of these printed a traceback (or wrote bare NaN with exit 0)."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b'[{"role": "user", "content": "caf\xe9"}]')  # Latin-1, not UTF-8
    out = tmp_path / "out.jsonl"
    score = ["score", "-m", default_model]
    args, expect = {
        "missing input": ([*score, str(tmp_path / "nope.jsonl"), "-o", str(out)], "nope.jsonl: no such file"),
        "folder as input": ([*score, str(tmp_path), "-o", str(out)], "is a folder; give a JSONL file"),
        "folder as -o": ([*score, str(rows_file), "-o", str(tmp_path)], "is a folder; give the path of a file"),
        "batch size -3": ([*score, str(rows_file), "-o", str(out), "--batch-size", "-3"], "must be at least 1"),
        "bon candidates not UTF-8": (["bon", "-m", default_model, "-p", "q", "--candidates", str(bad)],
                                     "bad.txt:1: not valid UTF-8 (byte 0xe9"),
        "compare conversation not UTF-8": (["compare", "-m", default_model, "--conversation", str(bad), "a", "b"],
                                           "bad.txt:1: not valid UTF-8 (byte 0xe9"),
        "ARBITER_HOME is a file": ([*score, str(rows_file), "-o", str(out)], "is not a folder"),
        "NaN in a row": ([*score, str(tmp_path / "nan.jsonl"), "-o", str(out)], "nan.jsonl:2: holds a NaN"),
    }[case]
    if case == "ARBITER_HOME is a file":
        monkeypatch.setenv("ARBITER_HOME", str(bad))
    (tmp_path / "nan.jsonl").write_text('{"prompt": "a", "response": "b"}\n'
                                        '{"prompt": "a", "response": "b", "weight": NaN}\n')
    proc = run(*args, ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert expect in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_a_damaged_database_does_not_stop_scoring(default_model, rows_file, tmp_path, arbiter_home):
    """Defect 6: random bytes in arbiter.db (only a hash cache for scoring) gave a traceback."""
    arbiter_home.mkdir(parents=True)
    (arbiter_home / "arbiter.db").write_bytes(os.urandom(8192))
    out = tmp_path / "out.jsonl"
    proc = run("score", "-m", default_model, str(rows_file), "-o", str(out))
    assert len(out.read_text().splitlines()) == 5
    assert "file hashes are not cached" in proc.stderr and "move it aside" in proc.stderr
    proc = run("eval", "-m", default_model, "--bench", f"pairwise:{rows_file}", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "move it aside" in proc.stderr


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_of_dead_writers_go_and_nothing_else(default_model, rows_file, tmp_path):
    """Defect 10: hidden temp files stayed behind after kill -9; only our dead ones may go."""
    out = tmp_path / "out.jsonl"
    dead = tmp_path / f".out.jsonl.arbiter-{_dead_pid()}-0123abcd.tmp"
    alive = tmp_path / f".out.jsonl.arbiter-{os.getpid()}-0123abcd.tmp"  # a writer at work
    other = tmp_path / ".out.jsonl.swp"  # not ours
    for f in (dead, alive, other):
        f.write_text("partial")
    run("score", "-m", default_model, str(rows_file), "-o", str(out))
    assert not dead.exists() and alive.exists() and other.exists()
    assert len(out.read_text().splitlines()) == 5


def test_sigterm_is_an_interrupt_that_leaves_nothing_behind(default_model, tmp_path):
    """Defect 10: SIGTERM left the hidden temp file; now it is cleaned up like Ctrl-C."""
    import signal

    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"question {i}", "response": "an answer " * 20}) + "\n"
                           for i in range(20000)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*ARBITER, "score", "-m", default_model, str(src), "-o", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    while not list(tmp_path.glob(".out.jsonl.arbiter-*.tmp")) and proc.poll() is None:
        pass  # scoring has started once the temp file exists
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143 and "terminated" in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_sockets_are_blocked_in_tests():
    """No network in tests (pytest-socket): a test that needs 127.0.0.1 says so by marker."""
    import socket

    from pytest_socket import SocketBlockedError

    with pytest.raises(SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_local_server_may_use_loopback_by_marker():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            client.sendall(b"ok")
            assert conn.recv(2) == b"ok"
            conn.close()


def test_version_outside_the_bundle_and_a_missing_optional_package(tmp_path, capsys, monkeypatch):
    """`--version` prints the version; a command whose optional package is missing (here
    `export`, with `exports` made unimportable by a None entry in sys.modules) is exit code
    2 and one line, never a traceback (the desktop bundle leaves such packages out)."""
    from app.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("arbiter 0.1.0")
    monkeypatch.setitem(sys.modules, "exports.onnx", None)
    assert main(["export", str(tmp_path), str(tmp_path / "out"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arbiter: error: `arbiter export` needs the Python package 'exports.onnx'")


def test_models_info_says_how_an_int8_file_was_made(hf_models, onnx_models, tmp_path, capsys):
    from app.cli.main import main
    from exports.onnx import Int8Settings, int8_from_fp32

    smoothed = int8_from_fp32(onnx_models["minilm", "fp32"], tmp_path / "sq", prefix=False,
                              int8=Int8Settings(smooth=0.5, keep_float=("/intermediate/dense/",)))
    made = {}
    for name, folder in (("plain", onnx_models["minilm", "int8"]), ("smoothed", smoothed)):
        assert main(["models", "info", str(folder)]) == 0
        made[name] = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("int8 made"))
    assert made["plain"].endswith("static, minmax; 2 matmuls float")  # pooler and classifier
    assert made["smoothed"].endswith("static, minmax; SmoothQuant alpha 0.5; 8 matmuls float")
    assert main(["models", "info", str(smoothed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extra"]["int8"]["smooth"] == 0.5
