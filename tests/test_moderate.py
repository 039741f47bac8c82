"""`arbiter moderate` (issue 17, first slice): semantics, windows, formats, resume, audit,
calibration, the OpenAI shape, bad input. Real runtimes, real files, real subprocesses.

Two real models: the built-in default RM (a general helpfulness model: it does not tell toxic
from benign text, so tests that need a known verdict use the second), and a *keyword reward
model*, a real ONNX graph on the default's real tokenizer whose reward is
``-8 x [the text holds "kill"] - 2 x [it holds "sorry"]``: the reference refusal scores -2, a
benign text 0 (P(refusal better) = sigmoid(-2) = 0.12), a text with "kill" -8 (0.998).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine
from app.cli.main import main
from app.moderate import thresholds as thr
from app.moderate import windows
from app.moderate.categories import CATEGORIES
from app.moderate.scoring import REFUSAL, RewardModerator, Text, model_sha256
from engine.errors import InputError
from engine.types import sigmoid

ROOT = Path(__file__).resolve().parents[1]
BAD, SORRY = -8.0, -2.0  # the keyword model's rewards per keyword


def _default_folder() -> Path:
    path = engine.registry.default_model_path("onnx")
    if path is None:
        pytest.skip("this build ships no default ONNX model")
    return Path(path) if Path(path).is_dir() else Path(path).parent


@pytest.fixture(scope="module")
def keyword_rm(tmp_path_factory) -> Path:
    """The keyword reward model (module docstring), as an ONNX folder the engine opens."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    src = _default_folder()
    out = tmp_path_factory.mktemp("keyword-rm") / "keyword-rm"
    out.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    meta = json.loads((src / "arbiter.json").read_text())
    for k in ("kept_float", "activation_quant", "calibration_items", "length_correction", "source_sha256"):
        meta.pop(k, None)
    meta.update(dtype="fp32", source="tests/test_moderate.py keyword model")
    (out / "arbiter.json").write_text(json.dumps(meta))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    kill, sorry = tok.token_to_id("kill"), tok.token_to_id("sorry")
    assert kill is not None and sorry is not None

    def hit(word_id: int, name: str) -> list:
        return [helper.make_node("Constant", [], [f"{name}_id"], value=helper.make_tensor(
                    f"{name}_v", TensorProto.INT64, [], [word_id])),
                helper.make_node("Equal", ["input_ids", f"{name}_id"], [f"{name}_eq"]),
                helper.make_node("Cast", [f"{name}_eq"], [f"{name}_f"], to=TensorProto.FLOAT),
                helper.make_node("ReduceMax", [f"{name}_f"], [f"{name}_hit"], axes=[1], keepdims=1)]

    nodes = [*hit(kill, "kill"), *hit(sorry, "sorry"),
             helper.make_node("Constant", [], ["wk"], value=helper.make_tensor("wkv", TensorProto.FLOAT, [], [BAD])),
             helper.make_node("Constant", [], ["ws"], value=helper.make_tensor("wsv", TensorProto.FLOAT, [], [SORRY])),
             helper.make_node("Mul", ["kill_hit", "wk"], ["a"]),
             helper.make_node("Mul", ["sorry_hit", "ws"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["logits"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "keyword_rm", ids,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("ARBITER_HOME", str(h))
    return h


def _cli(*argv: str) -> int:
    return main(["moderate", *map(str, argv)])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- semantics ---------------------------------------------------------------------

def test_a_text_alone_is_p_refusal_better(keyword_rm):
    with engine.load(str(keyword_rm), threads=1) as rm:
        got = RewardModerator(rm).score([Text("a sunny day in the park"), Text("I will kill you"),
                                         Text(REFUSAL)])
    assert got[0].score == pytest.approx(sigmoid(SORRY - 0.0))
    assert got[1].score == pytest.approx(sigmoid(SORRY - BAD))
    assert got[2].score == pytest.approx(0.5)  # the refusal against itself
    assert [v.windows for v in got] == [1, 1, 1] and got[1].reward == pytest.approx(BAD)
    assert all(v.category_scores == {} for v in got)  # an RM scores no category


def test_a_response_in_context_is_read_against_a_refusal_in_that_context(keyword_rm):
    """The context is part of what is scored: 'kill' in the context scores refusal and response
    alike (the cross-encoder reads both), so only the response's own content moves the score."""
    from engine.types import conversation

    with engine.load(str(keyword_rm), threads=1) as rm:
        ctx = conversation("how do I kill a process in linux?")
        (v,) = RewardModerator(rm).score([Text("run kill -9 PID", ctx)])
        r_text = rm.score([(ctx, "run kill -9 PID")])[0].value
        r_ref = rm.score([(ctx, REFUSAL)])[0].value
    assert v.score == pytest.approx(sigmoid(r_ref - r_text))
    assert r_ref == pytest.approx(BAD + SORRY) and r_text == pytest.approx(BAD)


# ---- windows ----------------------------------------------------------------------

FILLER = "The committee met on Tuesday to review the annual budget for the town library. "


def test_a_toxic_sentence_at_the_end_of_a_long_text_is_caught(keyword_rm, home, tmp_path):
    long_text = FILLER * 60 + "And then I will kill you."  # about 1,000 tokens; the model reads 512
    rows = [{"id": "long", "text": long_text}, {"id": "benign", "text": FILLER * 60}]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "out.jsonl", "--id-field", "id") == 0
    long_row, benign = _jsonl(tmp_path / "out.jsonl")
    assert long_row["flagged"] is True and long_row["windows"] > 1
    assert long_row["score"] == pytest.approx(sigmoid(SORRY - BAD))
    assert benign["flagged"] is False and benign["windows"] > 1
    with engine.load(str(keyword_rm), threads=1) as rm:  # what a cut would have scored: safe
        first = windows.split(rm.encoder.tokenizer, long_text, 500)[0]
        assert "kill" not in first


def test_windows_cover_the_whole_text_and_overlap():
    from engine.encoding import HFTextTokenizer

    tok = HFTextTokenizer(_default_folder() / "tokenizer.json")  # the engine's, truncation off

    text = " ".join(f"word{i}" for i in range(400))
    parts = windows.split(tok, text, 100)
    assert len(parts) > 4 and parts[0].startswith("word0 ") and parts[-1].endswith("word399")
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.split()[-1] in b.split()  # consecutive windows share their boundary
    joined = set(" ".join(parts).split())
    assert joined == set(text.split())
    assert windows.split(tok, "short text", 100) == ["short text"]
    assert windows.starts(10, 4) == [0, 3, 6]  # step 3 (a quarter overlap), last one ends at 10


# ---- formats, output shape, statuses ---------------------------------------------------

def test_every_format_in_and_out_gives_the_same_rows(home, tmp_path):
    from engine.tabular import read_table, write_table

    rows = [{"id": f"r{i}", "text": f"Reply number {i}: the answer is {i * 3}."} for i in range(12)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert _cli(src, "--out", tmp_path / "ref.jsonl", "--id-field", "id", "--threads", "1") == 0
    ref = _jsonl(tmp_path / "ref.jsonl")
    assert [r["id"] for r in ref] == [r["id"] for r in rows]
    for r in ref:
        assert set(r) == {"id", "status", "error", "flagged", "score", "categories", "category_scores",
                          "windows", "thresholds_version", "model_sha256"}
        assert list(r["categories"]) == list(CATEGORIES) and set(r["category_scores"].values()) == {None}
        assert 0.0 < r["score"] < 1.0 and r["thresholds_version"] == "default-0.5"
    specs = {"csv": tmp_path / "in.csv", "parquet": tmp_path / "in.parquet",
             "sqlite": f"sqlite:{tmp_path / 'in.db'}:posts", "jsonl.gz": tmp_path / "in.jsonl.gz"}
    outs = {"csv": tmp_path / "o.csv", "parquet": tmp_path / "o.parquet",
            "sqlite": f"sqlite:{tmp_path / 'o.db'}:results", "jsonl.gz": tmp_path / "o.jsonl.gz"}
    for kind, spec in specs.items():
        with write_table(spec, {"id": "string", "text": "string"}) as w:
            for r in rows:
                w.write(r)
        assert _cli(spec, "--out", outs[kind], "--id-field", "id", "--threads", "1") == 0
        got = [row for _, row in read_table(outs[kind])]
        assert [g["id"] for g in got] == [r["id"] for r in ref], kind
        assert [g["score"] if kind != "csv" else float(g["score"]) for g in got] == \
            pytest.approx([r["score"] for r in ref]), kind
        cats = [g["categories"] if kind.startswith("jsonl") else json.loads(g["categories"]) for g in got]
        assert cats == [r["categories"] for r in ref], kind


def test_missing_and_empty_text_get_a_status_never_a_drop(home, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,hello\n2,\n3,   \n")
    jsonl = _write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "ok"}, {"id": 2}, {"id": 3, "text": None}])
    assert _cli(src, "--out", tmp_path / "a.jsonl", "--id-field", "id") == 0
    assert [r["status"] for r in _jsonl(tmp_path / "a.jsonl")] == ["ok", "empty_text", "empty_text"]
    assert _cli(jsonl, "--out", tmp_path / "b.jsonl", "--id-field", "id") == 0
    got = _jsonl(tmp_path / "b.jsonl")
    assert [r["status"] for r in got] == ["ok", "missing_text", "missing_text"]
    assert [r["flagged"] for r in got][1:] == [None, None] and got[1]["error"]


def test_openai_format_has_exactly_the_documented_shape(keyword_rm, home, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": "kill them all"}, {"text": "nice weather"}])
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "o.jsonl", "--openai-format") == 0
    got = _jsonl(tmp_path / "o.jsonl")
    for row in got:  # OpenAI's moderation result: results[{flagged, categories, category_scores}]
        assert list(row) == ["results"] and len(row["results"]) == 1
        result = row["results"][0]
        assert set(result) == {"flagged", "categories", "category_scores"}
        assert isinstance(result["flagged"], bool)
        assert list(result["categories"]) == list(CATEGORIES) == list(result["category_scores"])
    assert [r["results"][0]["flagged"] for r in got] == [True, False]


# ---- bad input -----------------------------------------------------------------------

def test_a_non_unique_id_is_an_error_naming_both_lines(home, tmp_path, capsys):
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert _cli(src, "--out", tmp_path / "o.jsonl", "--id-field", "id") == 2
    err = capsys.readouterr().err
    assert "in.jsonl:3: field 'id': not unique: 'a' is also the id on line 1" in err
    assert not (tmp_path / "o.jsonl").exists()
    # across committed batches too (batch of 1 row: the first 'a' is in the store already)
    assert _cli(src, "--out", tmp_path / "o.jsonl", "--id-field", "id", "--batch-rows", "1") == 2
    assert "is also the id on line 1" in capsys.readouterr().err


def test_bad_inputs_are_clear_errors(home, tmp_path, capsys):
    db = tmp_path / "d.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table posts (text)")
    assert _cli(f"sqlite:{db}:comments", "--out", tmp_path / "o.jsonl") == 2
    assert "no table 'comments' in the database (tables: posts)" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"id,text\n1,ok\n2,\xff\n")
    assert _cli(bad, "--out", tmp_path / "o.jsonl") == 2
    assert "bad.csv:3: not valid UTF-8" in capsys.readouterr().err
    q = tmp_path / "q.csv"
    q.write_text('id,text\n1,"open"quote\n')
    assert _cli(q, "--out", tmp_path / "o.jsonl") == 2
    assert "q.csv:2: CSV quoting error" in capsys.readouterr().err
    missing_id = _write_jsonl(tmp_path / "m.jsonl", [{"text": "x"}])
    assert _cli(missing_id, "--out", tmp_path / "o.jsonl", "--id-field", "uid") == 2
    assert "m.jsonl:1: field 'uid': missing" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_10_mb_row_is_windowed_or_given_a_status(home, tmp_path):
    big = "word " * (2 << 20)  # 10 MiB of text: over the default 1,000,000-character limit
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": big}, {"text": "fine"}])
    assert _cli(src, "--out", tmp_path / "o.jsonl") == 0
    too_long, fine = _jsonl(tmp_path / "o.jsonl")
    assert too_long["status"] == "too_long" and too_long["flagged"] is None
    assert "10,485,760 characters" in too_long["error"] and fine["status"] == "ok"


def test_thresholds_for_another_model_are_refused(keyword_rm, home, tmp_path, capsys):
    t = thr.Thresholds("v1", 0.7, model_sha256="0" * 64)
    (tmp_path / "t.json").write_text(json.dumps(t.to_dict()))
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "o.jsonl", "--thresholds", tmp_path / "t.json") == 2
    err = capsys.readouterr().err
    assert "t.json: field 'model_sha256': these thresholds were calibrated for another model" in err


# ---- calibration ---------------------------------------------------------------------

def test_calibration_picks_the_threshold_that_meets_the_target():
    # scores high to low with labels:   .9 T  .8 T  .7 F  .6 T  .5 F  .4 T  .3 F  .2 F
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    labels = [True, True, False, True, False, True, False, False]
    # precision at t: .9 1/1, .8 2/2, .7 2/3, .6 3/4, .5 3/5, .4 4/6 ...
    p = thr.choose(scores, labels, "precision", 0.75)
    assert (p.threshold, p.tp, p.fp, p.fn, p.tn) == (0.6, 3, 1, 1, 3)  # lowest t with precision >= .75
    assert thr.choose(scores, labels, "precision", 1.0).threshold == 0.8
    r = thr.choose(scores, labels, "recall", 0.75)
    assert r.threshold == 0.6 and r.recall == 0.75  # highest t with recall >= .75
    assert thr.choose(scores, labels, "recall", 1.0).threshold == 0.4
    with pytest.raises(InputError, match="no threshold reaches precision"):
        thr.choose([0.9, 0.1], [False, True], "precision", 0.9)


def test_calibrate_writes_versioned_thresholds_that_moderate_uses(keyword_rm, home, tmp_path):
    rows = ([{"text": f"I will kill person {i}", "S": 0, "V": 1} for i in range(5)]
            + [{"text": f"Lovely weather on day {i}", "S": 0, "V": 0} for i in range(5)]
            + [{"text": "sorry, I am busy", "S": 0, "V": 0},  # scores like the refusal: 0.5
               {"text": "you are rude", "S": 1}])  # unsafe, scores like the weather; V unknown
    labelled = _write_jsonl(tmp_path / "labelled.jsonl", rows)
    out = tmp_path / "thresholds.json"
    assert _cli("calibrate", labelled, "--model", keyword_rm, "--target-precision", "1.0",
                "--label-field", "S,V", "--out", out) == 0
    data = json.loads(out.read_text())
    assert data["overall"] == pytest.approx(sigmoid(SORRY - BAD))  # only the 'kill' rows: precision 1
    assert data["version"].startswith("cal-") and data["target"] == {"metric": "precision", "value": 1.0}
    assert data["split"]["rows"] == 12 and data["split"]["positives"] == 6
    assert data["split"]["rows_with_unknown_labels"] == 1
    assert data["at_threshold"]["overall"]["precision"] == 1.0
    assert data["at_threshold"]["overall"]["recall"] == pytest.approx(5 / 6)
    with engine.load(str(keyword_rm)) as rm:
        assert data["model_sha256"] == model_sha256(rm.info)
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": "kill"}, {"text": "sorry"}])
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "o.jsonl", "--thresholds", out) == 0
    got = _jsonl(tmp_path / "o.jsonl")
    assert [r["flagged"] for r in got] == [True, False]
    assert {r["thresholds_version"] for r in got} == {data["version"]}
    # the default model is another model: its sha256 does not match
    assert _cli(src, "--out", tmp_path / "o2.jsonl", "--thresholds", out) == 2


# ---- audit and resume ------------------------------------------------------------------

def test_every_decision_is_audited_append_only(keyword_rm, home, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "kill"}, {"id": 2, "text": "ok"},
                                              {"id": 3, "text": ""}])
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "o.jsonl", "--id-field", "id") == 0
    capsys.readouterr()
    assert _cli("audit", "--json") == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["decision"] for r in rows] == ["flagged", "allowed", "error"]
    assert [r["row_id"] for r in rows] == ["1", "2", "3"]
    assert len({r["input_hash"] for r in rows}) == 3 and {r["thresholds_version"] for r in rows} == {"default-0.5"}
    assert _cli("audit", "--json", "--decision", "flagged") == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 1
    conn = sqlite3.connect(home / "moderation.db")
    for sql in ("update moderation_audit set decision = 'allowed'", "delete from moderation_audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "ARBITER_HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_kill_9_then_rerun_gives_the_uninterrupted_output(home, tmp_path):
    """A real subprocess killed (SIGKILL) once it has committed some batches, then run again."""
    # 40 rows committed, then the kill: the ~700 left take far longer than one poll on any machine
    rows = [{"id": i, "text": f"Answer {i}: " + "and more words " * (i % 9)} for i in range(720)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    ref_home, ref_out = tmp_path / "ref-home", tmp_path / "ref.jsonl"
    argv = [sys.executable, "-m", "app.cli.main", "moderate", str(src), "--id-field", "id",
            "--threads", "1", "--batch-rows", "8"]
    subprocess.run([*argv, "--out", str(ref_out)], cwd=ROOT, env=_env(ref_home), check=True,
                   capture_output=True)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*argv, "--out", str(out)], cwd=ROOT, env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    position = 0
    while proc.poll() is None and position < 40:  # until a few batches are committed
        try:
            conn = sqlite3.connect(home / "moderation.db")
            row = conn.execute("select max(position) from moderation_jobs").fetchone()
            conn.close()
            position = row[0] or 0
        except sqlite3.OperationalError:  # not made yet
            pass
        time.sleep(0.05)  # seconds between polls: leave the CPU to the job
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    done = subprocess.run([*argv, "--out", str(out), "--json"], cwd=ROOT, env=_env(home), check=True,
                          capture_output=True, text=True)
    assert json.loads(done.stdout)["resumed_from"] >= 40
    assert out.read_bytes() == ref_out.read_bytes()
    conn = sqlite3.connect(home / "moderation.db")
    audited = [r[0] for r in conn.execute("select row_id from moderation_audit order by seq")]
    left = conn.execute("select count(*) from moderation_results").fetchone()[0]
    conn.close()
    assert audited == [str(i) for i in range(720)]  # every row audited once, none twice
    assert left == 0  # the finished job's rows left the store


def test_context_field_scores_the_response_in_its_conversation(keyword_rm, home, tmp_path):
    """'kill' in the context is read by both the response and the refusal, so only the response's
    own words move the score; the same text alone is flagged."""
    rows = [{"id": 1, "prompt": "How do I kill a process in Linux?", "reply": "Use kill -9 PID."},
            {"id": 2, "prompt": [{"role": "user", "content": "How do I kill a process?"}], "reply": "Use kill."},
            {"id": 3, "prompt": "", "reply": "Use kill -9 PID."}]  # an empty context: the text alone
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert _cli(src, "--model", keyword_rm, "--out", tmp_path / "o.jsonl", "--id-field", "id",
                "--text-field", "reply", "--context-field", "prompt") == 0
    got = _jsonl(tmp_path / "o.jsonl")
    assert [r["flagged"] for r in got] == [False, False, True]
    assert got[0]["score"] == pytest.approx(sigmoid((BAD + SORRY) - BAD))
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "robot", "content": "x"}], "reply": "y"}])
    assert _cli(bad, "--model", keyword_rm, "--out", tmp_path / "o2.jsonl", "--text-field", "reply",
                "--context-field", "prompt") == 2
