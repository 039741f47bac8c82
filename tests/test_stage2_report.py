"""`arbiter curate report RUN` (issue 15): the stage-2 report on hand-made runs with every reason
(counts, flipped apart, band, agreement, histograms checked against numbers worked out by
hand), on runs with empty classes (no judges, nothing kept, nothing decided: no division by
zero), and on bad input (exit 2, the file named). Real parts: a real stage2.db written through
trainer.curate.stage2_store, the real CLI, matplotlib's real Agg backend.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import engine
from app.cli.main import main
from trainer.curate import stage2_report
from trainer.curate.stage2_store import Stage2Store

PNG = b"\x89PNG\r\n\x1a\n"
BAND = {"band": 0.05, "setting": "auto", "target": 0.9, "reached": True,
        "measured_on": {"files": ["gold.jsonl"], "pairs": 40},
        "table": [{"band": 0.0, "accuracy": 0.8, "coverage": 1.0}, {"band": 0.025, "accuracy": 0.85, "coverage": 0.9},
                  {"band": 0.05, "accuracy": 0.925, "coverage": 0.7}]}


def _row(row: int, decision: str, reason: str, gold_p: float | None, current_p: float | None,
         judge_label: str | None = None, votes: list | None = None) -> dict:
    return {"row": row, "pair_id": f"p{row}", "decision": decision, "reason": reason, "gold_p": gold_p,
            "current_p": current_p, "judge_label": judge_label, "votes": votes, "round": 1}


VOTE = [{"judge": "j", "sample": 0, "order": "ab", "better": "1"}]
#: one pair per reason, and a second gold+current; band 0.05 (confident: current_p > 0.55)
ROWS = [
    _row(1, "kept", "gold+current", 0.92, 0.81),
    _row(2, "kept", "gold+current", 0.66, 0.97),
    _row(3, "kept", "gold+judges", 0.71, 0.52, "1", VOTE),
    _row(4, "discarded", "gold_disagrees", 0.21, 0.93),
    _row(5, "discarded", "gold_disagrees", 0.5, 0.30),  # gold_p exactly 0.5: a 'tie' from the gold RM
    _row(6, "discarded", "judges_disagree", 0.64, 0.31, "2", VOTE),
    _row(7, "discarded", "judges_tie", 0.58, 0.49, "tie", VOTE),
    _row(8, "discarded", "judges_abstain", 0.83, 0.12, None, VOTE),
    _row(9, "unscored", "too_long", None, None),
]


def _run(folder: Path, rows: list[dict], *, judges: tuple[str, ...] = ("j",), band: dict | None = None,
         recycle: bool = True, done: bool = True) -> Path:
    """A stage2.db as the stage-2 driver writes it: meta, one shard, its decisions."""
    folder.mkdir(parents=True, exist_ok=True)
    s = Stage2Store(folder)
    try:
        b = BAND if band is None else band
        s.set_meta("config", {"identity": {"band": b["setting"], "recycle": recycle}, "settings": {"recycle": recycle}})
        s.set_meta("band", b)
        s.set_meta("models", {"gold_rm": {"path": "gold", "sha256": "a" * 64},
                              "current_rm": {"path": "cur", "sha256": "b" * 64}})
        s.set_meta("judges", list(judges))
        s.set_meta("round", 1)
        s.start_shard("00000-pool", folder / "pool.jsonl")
        if rows:
            s.commit_chunk("00000-pool", rows, rows[-1]["row"])
        if done:
            n = {d: sum(r["decision"] == d for r in rows) for d in ("kept", "discarded", "unscored")}
            s.finish_shard("00000-pool", {"rows": len(rows), **n, "flipped": n["discarded"] if recycle else 0})
    finally:
        s.close()
    return folder


def _report(run: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["curate", "report", str(run), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_counts_reasons_flipped_and_band(tmp_path, capsys):
    run = _run(tmp_path / "run", ROWS)
    data = _report(run, capsys)
    assert data["pairs"] == 9
    assert {d: v["pairs"] for d, v in data["decisions"].items()} == {"kept": 3, "discarded": 5, "unscored": 1}
    assert data["decisions"]["kept"]["share"] == pytest.approx(3 / 9)
    reasons = {(r["decision"], r["reason"]): r["pairs"] for r in data["reasons"]}
    assert reasons == {("kept", "gold+current"): 2, ("kept", "gold+judges"): 1, ("discarded", "gold_disagrees"): 2,
                       ("discarded", "judges_disagree"): 1, ("discarded", "judges_tie"): 1,
                       ("discarded", "judges_abstain"): 1, ("unscored", "too_long"): 1}
    assert [r["decision"] for r in data["reasons"]][:2] == ["kept"] * 2  # report order: kept first
    # flipped: counted apart (never in kept), unverified, and what the finished shard wrote
    assert data["flipped"] == {"recycle": True, "pairs": 5, "written": 5, "verified": False}
    assert data["band"]["band"] == 0.05 and data["band"]["how"] == "measured" and len(data["band"]["table"]) == 3
    # the judges: rows 3, 6, 7, 8 were asked; the abstention is counted as such
    assert data["judging"] == {"needed": 4, "asked": 4, "no_judge": 0, "agree_with_original": 0.25,
                               "labels": {"1": 1, "2": 1, "tie": 1, "abstain": 1}}
    md = (run / "report" / "report.md").read_text()
    assert "## Flipped (UNVERIFIED, counted apart)" in md and "5 discarded pairs recycled as flipped" in md
    assert "purely empirical" in md
    assert "| 0.050 (chosen) | 0.925 | 0.700 |" in md and "reaches the target 0.90 (reached)" in md
    assert "on 40 gold pairs of `gold.jsonl`" in md
    assert "| kept | gold+judges | 1 | 11.1% |" in md
    assert json.loads((run / "report" / "report.json").read_text())["pairs"] == 9


def test_agreement_rates_worked_out_by_hand(tmp_path, capsys):
    data = _report(_run(tmp_path / "run", ROWS), capsys, "--no-plots")
    ag = data["agreement"]
    # labels per row (original is always '1'):
    #   gold_rm:    1 1 1 2 tie 1 1 1 -   current_rm: 1 1 1 1 2 2 2 2 -   judges: - - 1 - - 2 tie - -
    assert ag["labelled"] == {"original": 9, "gold_rm": 8, "current_rm": 8, "judges": 3}
    rates = {(p["a"], p["b"]): (p["both"], p["agree"]) for p in ag["pairs"]}
    assert rates == {("original", "gold_rm"): (8, 6), ("original", "current_rm"): (8, 4),
                     ("original", "judges"): (3, 1), ("gold_rm", "current_rm"): (8, 3),
                     ("gold_rm", "judges"): (3, 1), ("current_rm", "judges"): (3, 2)}
    by = {(p["a"], p["b"]): p["rate"] for p in ag["pairs"]}
    assert by[("original", "gold_rm")] == pytest.approx(0.75) and by[("gold_rm", "current_rm")] == pytest.approx(3 / 8)


def test_histograms_bin_by_decision_and_pngs_are_written(tmp_path, capsys):
    run = _run(tmp_path / "run", ROWS)
    data = _report(run, capsys)
    h = data["histograms"]
    assert len(h["edges"]) == stage2_report.BINS + 1 and h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    kept_gold = h["gold_p"]["kept"]
    assert sum(kept_gold) == 3 and kept_gold[18] == 1 and kept_gold[13] == 1 and kept_gold[14] == 1  # .92 .66 .71
    assert sum(h["gold_p"]["discarded"]) == 5 and h["gold_p"]["discarded"][10] == 1  # 0.5 opens the 0.50 bin
    assert sum(h["current_p"]["discarded"]) == 5 and sum(h["gold_p"]["unscored"]) == 0  # no p: not counted
    for name in ("gold_p_hist.png", "current_p_hist.png"):
        png = (run / "report" / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 1000
    assert sorted(Path(p).name for p in data["plots"]) == ["current_p_hist.png", "gold_p_hist.png"]


def test_no_judges_nothing_kept_no_division_by_zero(tmp_path, capsys):
    rows = [_row(1, "discarded", "gold_disagrees", 0.2, 0.9), _row(2, "discarded", "no_judge", 0.7, 0.4),
            _row(3, "unscored", "too_long", None, None)]
    band = {"band": 0.1, "setting": 0.1, "table": []}  # set by hand (here with no table)
    run = _run(tmp_path / "run", rows, judges=(), band=band, recycle=False)
    data = _report(run, capsys, "--out", str(tmp_path / "elsewhere"))
    assert data["decisions"]["kept"] == {"pairs": 0, "share": 0.0}
    assert data["flipped"]["pairs"] == 0 and data["flipped"]["recycle"] is False
    assert data["judging"]["asked"] == 0 and data["judging"]["no_judge"] == 1
    assert data["judging"]["agree_with_original"] is None
    judge_rates = [p for p in data["agreement"]["pairs"] if "judges" in (p["a"], p["b"])]
    assert judge_rates and all(p["both"] == 0 and p["rate"] is None for p in judge_rates)
    assert data["band"]["how"] == "set" and data["band"]["table"] == []
    md = (tmp_path / "elsewhere" / "report.md").read_text()
    assert "set by hand (`--band 0.1`)" in md and "Recycling was off" in md and "| original | judges | 0 | 0 | - |" in md
    assert not (run / "report").exists()  # --out: written there only


def test_a_run_with_no_decisions_yet_and_an_unfinished_shard(tmp_path, capsys):
    run = _run(tmp_path / "run", [], done=False)
    data = _report(run, capsys)
    assert data["pairs"] == 0 and all(v == {"pairs": 0, "share": None} for v in data["decisions"].values())
    assert all(p["rate"] is None for p in data["agreement"]["pairs"])
    assert data["shards"]["unfinished"] == 1
    assert any("not finished" in n for n in data["notes"]) and any("no pair yet" in n for n in data["notes"])
    assert (run / "report" / "gold_p_hist.png").read_bytes().startswith(PNG)  # an empty plot says so


def test_report_reads_only_and_changes_nothing(tmp_path, capsys):
    run = _run(tmp_path / "run", ROWS)
    db = run / "stage2.db"
    with sqlite3.connect(db) as c:  # fold the WAL into the file so its bytes are the whole state
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    _report(run, capsys, "--no-plots")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    data = _report(db, capsys, "--no-plots")  # the database file itself is accepted as RUN
    assert data["pairs"] == 9


def test_a_snapshot_while_the_run_writes(tmp_path, capsys):
    """A chunk the run has not committed yet is not in the report; once committed, it is
    (WAL: the report's read never waits for the writer, and never sees half a chunk)."""
    run = _run(tmp_path / "run", ROWS, done=False)
    writer = sqlite3.connect(run / "stage2.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("insert into decisions (shard, row, pair_id, decision, reason, gold_p, current_p, round) "
                       "values ('00000-pool', 10, 'p10', 'kept', 'gold+current', 0.9, 0.9, 1)")
        assert _report(run, capsys, "--no-plots")["pairs"] == 9
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert _report(run, capsys, "--no-plots")["pairs"] == 10


# ---- a real run ------------------------------------------------------------------------------

def _word_rm(out: Path, weights: dict[str, float]) -> Path:
    """A reward model whose reward is the sum of ``weights[w]`` over the words ``w`` present in
    the text: the built-in default's tokenizer and config, and a small ONNX graph (Equal, Cast,
    ReduceMax per word), so every p of the run below is known in advance."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    src = Path(engine.registry.default_model_path("onnx"))
    src = src if src.is_dir() else src.parent
    out.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    meta = json.loads((src / "arbiter.json").read_text())
    for k in ("kept_float", "activation_quant", "calibration_items", "length_correction", "source_sha256"):
        meta.pop(k, None)
    (out / "arbiter.json").write_text(json.dumps({**meta, "dtype": "fp32", "source": "test word RM"}))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    nodes, terms = [], []
    for i, (word, weight) in enumerate(weights.items()):
        tid = tok.token_to_id(word)
        assert tid is not None, word

        def const(name: str, kind: int, value: float | int) -> onnx.NodeProto:
            return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", kind, [], [value]))

        nodes += [const(f"id{i}", TensorProto.INT64, tid),
                  helper.make_node("Equal", ["input_ids", f"id{i}"], [f"eq{i}"]),
                  helper.make_node("Cast", [f"eq{i}"], [f"f{i}"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceMax", [f"f{i}"], [f"hit{i}"], axes=[1], keepdims=1),
                  const(f"w{i}", TensorProto.FLOAT, weight),
                  helper.make_node("Mul", [f"hit{i}", f"w{i}"], [f"t{i}"])]
        terms.append(f"t{i}")
    nodes.append(helper.make_node("Sum", terms, ["logits"]))
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "word_rm", ids,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


def _pair(i: int, chosen: str, rejected: str) -> dict:
    return {"id": f"p{i}", "conversation": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": chosen, "rejected": rejected}


def test_report_of_a_real_stage2_run(tmp_path, capsys):
    """run_stage2 on a tiny pool with two word RMs and no judges; the report's counts equal the
    run's summary and its output files, and every p is the one worked out from the weights."""
    from engine.types import sigmoid
    from trainer.curate import stage2
    from trainer.curate.stage2 import Stage2Config, run_stage2

    gold_rm = _word_rm(tmp_path / "gold-rm", {"good": 3.0})
    current_rm = _word_rm(tmp_path / "current-rm", {"great": 3.0})
    pool = [_pair(1, "good and great", "bad"),  # gold .95, current .95: kept / gold+current
            _pair(2, "good", "bad"),  # gold .95, current .5 (not confident): discarded / no_judge
            _pair(3, "bad", "good and great"),  # gold .05: discarded / gold_disagrees
            _pair(4, "good and great", "word " * 900),  # over the 512 tokens: unscored / too_long
            _pair(5, "great", "fine")]  # gold .5 (not > .5), current .95: discarded / gold_disagrees
    n_gold = max(5, getattr(stage2, "MIN_BAND_PAIRS", 1))  # enough for the band to be measured
    gold = [_pair(10 + i, "a great answer", "a plain answer") for i in range(n_gold)]  # current right: band 0
    for name, rows in (("pool", pool), ("gold", gold)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = Stage2Config(pool=[tmp_path / "pool.jsonl"], gold=[tmp_path / "gold.jsonl"], gold_rm=gold_rm,
                       current_rm=current_rm, out=tmp_path / "out", threads=1)
    summary = run_stage2(cfg)
    data = _report(tmp_path / "out", capsys)
    assert data["pairs"] == summary.rows == 5
    assert {d: v["pairs"] for d, v in data["decisions"].items()} == {
        "kept": summary.kept, "discarded": summary.discarded, "unscored": summary.unscored} == {
        "kept": 1, "discarded": 3, "unscored": 1}
    assert {r["reason"]: r["pairs"] for r in data["reasons"]} == summary.reasons == {
        "gold+current": 1, "no_judge": 1, "gold_disagrees": 2, "too_long": 1}
    flipped_lines = (tmp_path / "out" / "flipped" / "00000-pool.jsonl").read_text().splitlines()
    assert data["flipped"]["pairs"] == data["flipped"]["written"] == summary.flipped == len(flipped_lines) == 3
    assert len((tmp_path / "out" / "kept" / "00000-pool.jsonl").read_text().splitlines()) == 1
    assert data["band"]["band"] == 0.0 and data["band"]["how"] == "measured" and data["band"]["reached"] is True
    assert data["band"]["measured_on"]["pairs"] == n_gold and len(data["band"]["table"]) == 13
    assert data["judges"] == [] and data["judging"] == {
        "needed": 1, "asked": 0, "no_judge": 1, "labels": {"1": 0, "2": 0, "tie": 0, "abstain": 0},
        "agree_with_original": None}
    hi = sigmoid(3.0)
    gold_bins = data["histograms"]["gold_p"]
    assert gold_bins["kept"][int(hi * 20)] == 1 and gold_bins["discarded"][int((1 - hi) * 20)] == 1
    assert gold_bins["discarded"][10] == 1  # pair 5: gold_p exactly 0.5
    rates = {(p["a"], p["b"]): (p["both"], p["agree"]) for p in data["agreement"]["pairs"]}
    # gold_rm: 1 1 2 tie; current_rm: 1 tie 2 1 (pair 4 unscored: no label from either RM)
    assert rates[("original", "gold_rm")] == (4, 2) and rates[("original", "current_rm")] == (4, 2)
    assert rates[("gold_rm", "current_rm")] == (4, 2)
    assert (tmp_path / "out" / "report" / "current_p_hist.png").read_bytes().startswith(PNG)
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"| 0.000 (chosen) | 1.000 | 1.000 | {n_gold} |" in md and "chosen by `--band auto`" in md


# ---- bad input -------------------------------------------------------------------------------

def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["curate", "report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arbiter: error: ") and "Traceback" not in err
    return err


def test_missing_folder_and_folder_without_a_run(tmp_path, capsys):
    assert "no such folder" in _error([str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    err = _error([str(tmp_path / "empty")], capsys)
    assert str(tmp_path / "empty") in err and "not a stage-2 run: no stage2.db" in err
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "curation.db").write_bytes(b"")
    assert "a stage-1 run" in _error([str(tmp_path / "s1")], capsys)
    assert not (tmp_path / "empty" / "stage2.db").exists()  # nothing was created


def test_damaged_and_foreign_databases_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "stage2.db").write_bytes(b"this is not sqlite, just text " * 100)
    err = _error([str(bad)], capsys)
    assert str(bad / "stage2.db") in err and "cannot be read" in err
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "stage2.db") as c:
        c.execute("create table meta (key text primary key, value text)")
    err = _error([str(other)], capsys)
    assert str(other / "stage2.db") in err and "no table 'shards'" in err
    with sqlite3.connect(other / "stage2.db") as c:
        c.execute("create table shards (name text)")
        c.execute("create table decisions (decision text)")
    assert "table 'shards' lacks column(s) state, rows" in _error([str(other)], capsys)


def test_out_that_is_a_file(tmp_path, capsys):
    run = _run(tmp_path / "run", ROWS)
    (tmp_path / "taken").write_text("x")
    err = _error([str(run), "--out", str(tmp_path / "taken")], capsys)
    assert str(tmp_path / "taken") in err and "is a file" in err


def test_damaged_meta_value_names_the_key(tmp_path, capsys):
    run = _run(tmp_path / "run", ROWS)
    with sqlite3.connect(run / "stage2.db") as c:
        c.execute("update meta set value = '{not json' where key = 'band'")
    err = _error([str(run)], capsys)
    assert str(run / "stage2.db") in err and "meta 'band' is not JSON" in err
