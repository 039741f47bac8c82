"""`arbiter eval --model` end to end with a real model (MiniLM exported to ONNX): a run lands in
the SQLite store, JSON/markdown/PNG are written, and an interrupted run resumes without
re-scoring what it already has."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from app.cli.main import main
from engine.errors import Cancelled
from engine.registry import load
from engine.scorer import CancelToken
from trainer.eval.runner import run_model
from trainer.eval.runs import EvalStore

PAIRS = [
    ("What is 2+2?", "2+2 equals 4.", "It is 5."),
    ("Name a prime number.", "7 is a prime number.", "8"),
    ("Translate 'gato' to English.", "'Gato' means 'cat'.", "Dog."),
    ("What colour is the sky on a clear day?", "Blue.", "The sky is green with purple stripes."),
    ("Give a synonym for 'happy'.", "Joyful.", "Sad, unhappy, miserable, downcast."),
    ("What is the capital of France?", "Paris is the capital of France.", "London."),
]


@pytest.fixture
def pairs_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    return f


@pytest.fixture
def minilm(onnx_models):
    return onnx_models["minilm", "fp32"]


def test_eval_cli_writes_store_json_markdown_and_plots(minilm, pairs_file, tmp_path, arbiter_home, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(minilm), "--bench", f"pairwise:{pairs_file}", "--out", str(out),
                 "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    bench = result["benchmarks"][0]
    assert bench["records"] == 6 and bench["skipped"] == 0
    assert set(bench["metrics"]) == {"model", "random", "longer", "shorter"}
    assert result["scoring"] == {"items_scored": 12, "items_reused": 0}
    written = result["written"]
    assert json.loads(Path(written["json"]).read_text())["run_id"] == result["run_id"]
    assert "| accuracy |" in Path(written["markdown"]).read_text()
    assert written["plots"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written["plots"])

    db = sqlite3.connect(arbiter_home / "arbiter.db")
    model, fmt, quant, files, status, metrics = db.execute(
        "select model, format, quantization, model_files, status, metrics from eval_runs").fetchone()
    assert (fmt, quant, status) == ("onnx", "fp32", "done")
    assert all(len(f["sha256"]) == 64 for f in json.loads(files))
    assert json.loads(metrics)[0]["metrics"]["model"]["accuracy"] == bench["metrics"]["model"]["accuracy"]
    assert db.execute("select count(*) from eval_scores").fetchone()[0] == 12

    # the same command again scores nothing: every response is in the store
    assert main(["eval", "--model", str(minilm), "--bench", f"pairwise:{pairs_file}", "--json",
                 "--no-plots"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["scoring"] == {"items_scored": 0, "items_reused": 12}
    assert again["benchmarks"][0]["metrics"] == bench["metrics"]


def test_a_cancelled_run_resumes_where_it_stopped(minilm, pairs_file, tmp_path):
    store = EvalStore()
    token = CancelToken()

    def cancel_after_first_commit(_name, done, _total):
        if done >= 4:
            token.cancel()

    with load(minilm, threads=1) as rm:
        with pytest.raises(Cancelled):
            run_model(rm, [f"pairwise:{pairs_file}"], store=store, cancel=token, batch_size=2,
                      commit_every=4, progress=cancel_after_first_commit, plots=False)
        run_id = next(iter(store.db.execute("select id from eval_runs").fetchone()))
        assert store.run(run_id)["status"] == "interrupted"
        assert store.db.execute("select count(*) from eval_scores").fetchone()[0] == 4

        resumed = run_model(rm, [f"pairwise:{pairs_file}"], store=store, batch_size=2, plots=False)
        assert (resumed.items_scored, resumed.items_reused) == (8, 4)
        assert store.run(run_id)["status"] == "done" and store.run(run_id)["attempts"] == 2

        # resumed scores equal a fresh scoring of every item
        fresh = rm.score([(p, r) for p, c, rej in PAIRS for r in (c, rej)])
    assert resumed.result["benchmarks"][0]["records"] == 6
    stored = dict(store.db.execute("select item_key, value from eval_scores").fetchall())
    for k in range(len(PAIRS)):
        assert stored[f"row{k + 1}#0"] == pytest.approx(fresh[2 * k].value, abs=1e-5)
        assert stored[f"row{k + 1}#1"] == pytest.approx(fresh[2 * k + 1].value, abs=1e-5)


def test_limit_then_full_run_scores_only_the_rest(minilm, pairs_file):
    with load(minilm, threads=1) as rm:
        first = run_model(rm, [str(pairs_file)], limit=2, plots=False)
        assert first.result["benchmarks"][0]["records"] == 2 and first.items_scored == 4
        full = run_model(rm, [str(pairs_file)], plots=False)
    assert (full.items_scored, full.items_reused) == (8, 4)


def test_spread_takes_evenly_spaced_records_deterministically():
    from trainer.eval.runner import spread

    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]  # asking for more than there is: all of them
    assert spread(list(range(1000)), 7) == spread(list(range(1000)), 7)


def test_sample_spreads_through_every_file_of_a_folder(minilm, tmp_path, capsys):
    """`--sample` reaches the last file of a benchmark stored one category per file (RMB's
    layout), where `--limit` stops in the first; each is a run of its own in the store."""
    folder = tmp_path / "bench"
    folder.mkdir()
    for k, (p, c, r) in enumerate(PAIRS[:4]):  # four files of one pair each, read in name order
        (folder / f"cat{k}.jsonl").write_text(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
    from engine.files import file_info

    store = EvalStore()
    with load(minilm, threads=1) as rm:
        limited = run_model(rm, [f"pairwise:{folder}"], limit=2, plots=False, store=store).result
        first_two = {r[0] for r in store.db.execute("select distinct file_sha256 from eval_scores").fetchall()}
        sampled = run_model(rm, [f"pairwise:{folder}"], sample=2, plots=False, store=store).result
    sha = {file_info(folder / f"cat{k}.jsonl").sha256: k for k in range(4)}
    assert sorted(sha[s] for s in first_two) == [0, 1]
    every = {r[0] for r in store.db.execute("select distinct file_sha256 from eval_scores").fetchall()}
    assert sorted(sha[s] for s in every - first_two) == [2]  # the sample: files 0 and 2 of 4
    assert limited["run_id"] != sampled["run_id"]
    assert sampled["options"]["sample"] == 2 and "sample" not in limited["options"]
    assert sampled["benchmarks"][0]["records"] == 2

    out = tmp_path / "out"
    assert main(["eval", "--model", str(minilm), "--bench", f"pairwise:{folder}", "--sample", "2", "--json",
                 "--no-plots", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["benchmarks"][0]["records"] == 2
    with pytest.raises(SystemExit):  # argparse: --limit and --sample exclude each other
        main(["eval", "--model", str(minilm), "--bench", f"pairwise:{folder}", "--sample", "2", "--limit", "2"])
