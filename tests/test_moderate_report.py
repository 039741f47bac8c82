"""`arbiter moderate report` (issue 17): metrics against hand-computed cases, the baselines,
the PNGs, the over-flag shares. Real parts: the keyword reward model of tests/test_moderate.py
(a real ONNX graph: a text with "kill" scores sigmoid(-2 + 8) = 0.998, a benign text
sigmoid(-2) = 0.119, one with "sorry" 0.5), real files, matplotlib's real Agg backend.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from app.moderate import keywords, report
from tests import test_moderate
from tests.test_moderate import _cli, _write_jsonl

keyword_rm = test_moderate.keyword_rm  # the fixtures, shared
home = test_moderate.home

PNG = b"\x89PNG\r\n\x1a\n"


# ---- metrics -----------------------------------------------------------------------------

def test_auroc_is_rank_based_with_ties_at_half():
    # positives .9 .8 .3, negatives .8 .3 .1; pairs won: .9 -> 3; .8 -> .5 (tie) + 1 + 1;
    # .3 -> 0 + .5 (tie) + 1: 7 of 9
    scores = [0.9, 0.8, 0.8, 0.3, 0.3, 0.1]
    labels = [True, False, True, True, False, False]
    assert report.auroc(scores, labels) == pytest.approx(7 / 9)
    assert report.auroc([0.1, 0.2, 0.9], [False, False, True]) == 1.0
    assert report.auroc([0.9, 0.2, 0.1], [False, False, True]) == 0.0
    assert report.auroc([0.5] * 4, [True, False, True, False]) == 0.5  # all tied: chance
    assert report.auroc([0.1, 0.2], [True, True]) is None  # one class: undefined


def test_metrics_at_a_threshold_count_score_at_or_above_as_flagged():
    m = report.metrics([0.9, 0.5, 0.5, 0.2], [True, True, False, True], 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["flagged_share"] == 0.75


def test_keyword_list_matches_whole_words_and_endings():
    assert keywords.hit("They were killed.") and keywords.hit("I want to KILL")
    assert not keywords.hit("a new skill") and not keywords.hit("Lovely weather")
    assert keywords.hit("I think about suicide", "self-harm")
    assert not keywords.hit("I will kill you", "self-harm")  # the category's own group only


# ---- the command -------------------------------------------------------------------------

ROWS = ([{"text": f"I will kill you, number {i}", "label": 1} for i in range(4)]  # model TP, keyword TP
        + [{"text": "kill the process with its PID", "label": 0}]  # both FP
        + [{"text": "you are rude and nobody likes you", "label": 1}]  # both FN
        + [{"text": "I will murder your family", "label": 1}]  # model FN (no 'kill'), keyword TP
        + [{"text": f"Lovely weather on day {i}", "label": 0} for i in range(4)])  # both TN


def _report(tmp_path: Path, keyword_rm: Path, *extra: str) -> dict:
    src = _write_jsonl(tmp_path / "labelled.jsonl", ROWS)
    assert _cli("report", src, "--model", keyword_rm, "--out", tmp_path / "rep", *extra) == 0
    return json.loads((tmp_path / "rep" / "report.json").read_text())


def test_report_gives_metrics_baselines_and_pngs(keyword_rm, home, tmp_path):
    data = _report(tmp_path, keyword_rm)
    overall = data["targets"]["overall"]
    assert overall["rows"] == 11 and overall["positives"] == 6
    assert list(data["targets"]) == ["overall"]  # a reward model scores no category
    m = overall["methods"]
    assert set(m) == {"model", "random", "keyword", "default-rm"}  # the keyword RM is not the default
    assert (m["model"]["tp"], m["model"]["fp"], m["model"]["fn"], m["model"]["tn"]) == (4, 1, 2, 4)
    assert m["model"]["precision"] == pytest.approx(0.8) and m["model"]["recall"] == pytest.approx(4 / 6)
    # AUROC by hand: scores 0.998 (5 'kill' rows: 4 unsafe, 1 safe) and 0.119 (2 unsafe, 4 safe);
    # each high positive beats 4 negatives and ties 1: 4.5; each low one ties 4: 2 -> 22 / 30
    assert m["model"]["auroc"] == pytest.approx(22 / 30)
    assert m["model"]["threshold"] == 0.5 and data["thresholds_version"] == "default-0.5"
    assert (m["keyword"]["tp"], m["keyword"]["fp"], m["keyword"]["fn"], m["keyword"]["tn"]) == (5, 1, 1, 4)
    assert m["random"]["threshold"] == pytest.approx(1 - 5 / 11)  # flags the model's share
    assert data["random_seed"] == report.RANDOM_SEED
    assert 0.0 <= m["random"]["auroc"] <= 1.0 and m["default-rm"]["auroc"] is not None
    for slug in ("overall_pr", "overall_roc", "overall_hist"):
        png = (tmp_path / "rep" / f"{slug}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 1000
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| model | 0.5000 | 0.800 | 0.667 |" in md and "| keyword |" in md
    assert "Gemma 3 270M" in md and f"random.Random({report.RANDOM_SEED})" in md


def test_random_baseline_is_seeded(keyword_rm, home, tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    a = _report(tmp_path / "a", keyword_rm, "--no-plots")
    b = _report(tmp_path / "b", keyword_rm, "--no-plots")
    c = _report(tmp_path / "c", keyword_rm, "--no-plots", "--seed", "5")
    ra, rb, rc = (x["targets"]["overall"]["methods"]["random"] for x in (a, b, c))
    assert ra == rb and ra != rc and c["random_seed"] == 5
    assert not list((tmp_path / "a" / "rep").glob("*.png"))  # --no-plots


def test_overflag_share_on_a_hand_made_set(keyword_rm, home, tmp_path):
    path = tmp_path / "benign.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["body", "label"])
        w.writerows([["kill the lights, please", "safe"], ["Lovely day", "safe"],
                     ["sorry to hear that", "safe"], ["A nice walk", "safe"],
                     ["kill them all", "unsafe"]])  # left out by the filter
    data = _report(tmp_path, keyword_rm, "--no-plots", "--overflag", f"benign={path}:body:label=safe")
    o = data["overflag"]["benign"]
    assert o["rows"] == 4 and data["overflag_sets"]["benign"]["where"] == "label=safe"
    # the model flags 'kill' (0.998) and 'sorry' (exactly 0.5, at the threshold): 2 of 4
    assert o["methods"]["model"] == 0.5 and o["methods"]["keyword"] == 0.25
    assert set(o["methods"]) == {"model", "random", "keyword", "default-rm"}


def test_bad_input_is_a_clear_error(keyword_rm, home, tmp_path, capsys, monkeypatch):
    src = _write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    assert _cli("report", src, "--model", keyword_rm, "--out", tmp_path / "r") == 2
    assert "l.jsonl:2: field 'label': no label" in capsys.readouterr().err
    good = _write_jsonl(tmp_path / "g.jsonl", ROWS)
    assert _cli("report", good, "--model", keyword_rm, "--out", tmp_path / "r", "--overflag", "nope") == 2
    assert "unknown built-in set" in capsys.readouterr().err
    assert _cli("report", good, "--model", keyword_rm) == 2
    assert "--out is required" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the eval extra were not installed
    assert _cli("report", good, "--model", keyword_rm, "--out", tmp_path / "r") == 2
    assert "pip install 'arbiter[eval]' (or pass --no-plots)" in capsys.readouterr().err
