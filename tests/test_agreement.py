"""Agreement statistics (trainer/curate/agreement.py) against hand-computed cases,
Krippendorff's own worked example, and the `krippendorff` package."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import krippendorff
import numpy as np
import pytest

from engine.errors import InputError
from trainer.curate.agreement import (
    LabelRow,
    agreement_report,
    alpha_interval,
    alpha_undefined_reason,
    cohen_kappa,
    kappa_pairs,
    krippendorff_alpha,
    label_agreement,
    majority,
    read_judge_votes,
    read_labels,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data,
# 4 observers, 12 units, missing values ("."); the paper's result is alpha = 0.743
KRIPPENDORFF_2011 = [
    "1 2 3 3 2 1 4 1 2 . . .",
    "1 2 3 3 2 2 4 1 2 5 . 3",
    ". 3 3 3 2 3 4 2 2 5 1 .",
    "1 2 3 3 2 4 4 1 2 5 1 .",
]


def _units(coders: list[list[str | None]]) -> dict[str, list[str]]:
    """units from a coders x units table, None = missing."""
    n = len(coders[0])
    return {f"u{u}": [c[u] for c in coders if c[u] is not None] for u in range(n)}


def _reliability(coders: list[list[str | None]], categories: list[str]) -> np.ndarray:
    """The same table as the `krippendorff` package wants it: coders x units floats, NaN = missing."""
    code = {c: float(i) for i, c in enumerate(categories)}
    return np.array([[np.nan if x is None else code[x] for x in c] for c in coders])


def test_krippendorffs_worked_example_with_missing_data():
    coders = [[None if x == "." else x for x in row.split()] for row in KRIPPENDORFF_2011]
    alpha = krippendorff_alpha(_units(coders))
    assert round(alpha, 3) == 0.743
    assert alpha == pytest.approx(krippendorff.alpha(reliability_data=_reliability(coders, list("12345")),
                                                     level_of_measurement="nominal"), abs=1e-12)


def test_missing_data_by_hand():
    # coincidences: u1 (a, a, b) adds o_aa 1, o_ab 1, o_ba 1 (each ordered pair / (m - 1) = 2);
    # u2 (a, b): o_ab 1, o_ba 1; u3 (b, b): o_bb 2; u5 (a, a): o_aa 2. n_a 5, n_b 4, n 9:
    # alpha = 1 - (n - 1) (o_ab + o_ba) / (2 n_a n_b) = 1 - 8 * 4 / 40 = 0.2
    units = {"u1": ["a", "a", "b"], "u2": ["a", "b"], "u3": ["b", "b"], "u5": ["a", "a"]}
    assert krippendorff_alpha(units) == pytest.approx(0.2, abs=1e-12)
    # a unit labelled once has no one to agree with: it changes nothing
    assert krippendorff_alpha({**units, "u4": ["a"], "u6": ["b"]}) == pytest.approx(0.2, abs=1e-12)


def test_full_agreement_is_one():
    units = {"p1": ["1", "1", "1"], "p2": ["2", "2"], "p3": ["tie", "tie", "tie", "tie"], "p4": ["1"]}
    assert krippendorff_alpha(units) == 1.0
    assert alpha_undefined_reason(units) is None
    assert alpha_interval(units) == (1.0, 1.0)


def test_a_single_category_is_undefined_and_says_why():
    units = {"p1": ["1", "1"], "p2": ["1", "1", "1"], "p3": ["2"]}  # p3 is not pairable
    assert math.isnan(krippendorff_alpha(units))
    assert "'1'" in alpha_undefined_reason(units) and "undefined" in alpha_undefined_reason(units)
    lo, hi = alpha_interval(units)
    assert math.isnan(lo) and math.isnan(hi)
    report = agreement_report([LabelRow(p, f"a{i}", x) for p, xs in units.items() for i, x in enumerate(xs)])
    assert math.isnan(report["krippendorff_alpha"]) and report["alpha_undefined"]


def test_no_pairable_unit_is_undefined():
    units = {"p1": ["1"], "p2": ["2"]}
    assert math.isnan(krippendorff_alpha(units))
    assert "two or more annotators" in alpha_undefined_reason(units)


def test_two_annotators_by_hand_alpha_and_kappa():
    # 50 units: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # kappa: p_o 0.7, p_e 0.5*0.6 + 0.5*0.4 = 0.5 -> 0.4.
    # alpha: n_yes 55, n_no 45, n 100, 15 disagreeing units give o_yn + o_ny = 30:
    # 1 - 99 * 30 / (2 * 55 * 45) = 1 - 2970 / 4950 = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert krippendorff_alpha({str(i): [x, y] for i, (x, y) in enumerate(zip(a, b, strict=True))}) \
        == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_edges():
    assert cohen_kappa(["1", "2", "tie"], ["1", "2", "tie"]) == 1.0
    assert cohen_kappa(["1", "2", "1", "2"], ["2", "1", "2", "1"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["1", "1"], ["1", "1"]))  # chance agreement is certain
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="same units"):
        cohen_kappa(["1"], ["1", "2"])


@pytest.mark.parametrize("seed", range(5))
def test_alpha_matches_the_krippendorff_package_with_missing_data(seed):
    rng = random.Random(seed)
    coders = rng.randint(2, 6)
    n_units = rng.randint(5, 60)
    labels = ["1", "2", "tie", "both_bad"]
    table = [[rng.choice(labels) if rng.random() < 0.7 else None for _ in range(n_units)]
             for _ in range(coders)]
    ours = krippendorff_alpha(_units(table))
    theirs = krippendorff.alpha(reliability_data=_reliability(table, labels), level_of_measurement="nominal")
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_kappa_per_annotator_pair_on_the_units_both_labelled():
    rows = [LabelRow("p1", "ann", "1"), LabelRow("p1", "bob", "1"), LabelRow("p2", "ann", "2"),
            LabelRow("p2", "bob", "1"), LabelRow("p3", "ann", "2"), LabelRow("p3", "cy", "2"),
            LabelRow("p4", "bob", "2"), LabelRow("p4", "ann", "2")]
    pairs = {tuple(k["annotators"]): k for k in kappa_pairs(rows)}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    ab = pairs["ann", "bob"]  # p1, p2, p4: ann 1 2 2, bob 1 1 2: p_o 2/3, p_e (1*2 + 2*1) / 9
    assert ab["units"] == 3
    assert ab["kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert pairs["ann", "cy"]["units"] == 1 and math.isnan(pairs["ann", "cy"]["kappa"])
    assert pairs["bob", "cy"]["units"] == 0 and math.isnan(pairs["bob", "cy"]["kappa"])


def test_bootstrap_interval_is_seeded_brackets_alpha_and_narrows_with_more_units():
    rng = random.Random(3)
    base = {f"p{i}": [x, x if rng.random() < 0.8 else rng.choice("12")] for i in range(40)
            for x in [rng.choice("12")]}
    alpha = krippendorff_alpha(base)
    lo, hi = alpha_interval(base, seed=7)
    assert lo <= alpha <= hi and lo < hi
    assert alpha_interval(base, seed=7) == (lo, hi)
    assert alpha_interval(base, seed=8) != (lo, hi)
    tenfold = {f"{k}.{r}": v for k, v in base.items() for r in range(10)}  # same alpha, 10x the units
    assert krippendorff_alpha(tenfold) == pytest.approx(alpha, abs=0.02)
    lo10, hi10 = alpha_interval(tenfold, seed=7)
    assert hi10 - lo10 < (hi - lo) / 2  # ~1/sqrt(10) as wide


def test_label_agreement_and_majority():
    assert label_agreement({"a": "1", "b": "2", "c": "tie"}, {"a": "1", "b": "1", "d": "2"}) == (0.5, 2)
    share, n = label_agreement({"a": "1"}, {"b": "1"})
    assert n == 0 and math.isnan(share)
    rows = [LabelRow("p", "x", "1"), LabelRow("p", "y", "1"), LabelRow("p", "z", "2"),
            LabelRow("q", "x", "1"), LabelRow("q", "y", "2"), LabelRow("r", "x", "tie")]
    assert majority(rows) == {"p": "1", "r": "tie"}  # q: 1 vs 2, no majority


def test_report_compares_the_model_on_decisive_pairs_and_each_judge():
    rows = [LabelRow("p1", "x", "1"), LabelRow("p1", "y", "1"), LabelRow("p2", "x", "2"),
            LabelRow("p3", "x", "tie"), LabelRow("p4", "x", "1"), LabelRow("p4", "y", "2")]
    model = {"p1": "1", "p2": "1", "p3": "1", "p4": "1"}
    judges = {"g": {"p1": "1", "p2": None, "p3": "tie"}, "h": {"p1": "2"}}
    r = agreement_report(rows, model_labels=model, judge_labels=judges, n_boot=50)
    assert (r["units"], r["pairable_units"], r["labels"], r["annotators"]) == (4, 2, 6, ["x", "y"])
    assert r["human_majority"] == {"pairs": 3, "no_majority": 1}
    # the RM is compared where humans said 1 or 2 (p1 right, p2 wrong); p3 (tie) is counted apart
    assert (r["model"]["agreement"], r["model"]["pairs"], r["model"]["human_tie_or_both_bad"]) == (0.5, 2, 1)
    assert r["judges"]["g"] == {"agreement": 1.0, "pairs": 2, "abstained": 1}
    assert r["judges"]["h"]["agreement"] == 0.0
    assert r["label_counts"] == {"1": 3, "2": 2, "tie": 1}


# ---- files ------------------------------------------------------------------------------------

def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_labels_jsonl_and_array(tmp_path):
    rows = [{"pair_id": "p1", "annotator": "ann", "label": "1", "note": "clear"},
            {"pair_id": "p1", "annotator": "bob", "label": "both_bad", "seconds": 4.2}]
    assert read_labels(_write(tmp_path / "l.jsonl", rows)) == [LabelRow("p1", "ann", "1"),
                                                               LabelRow("p1", "bob", "both_bad")]
    (tmp_path / "l.json").write_text(json.dumps(rows, indent=1))
    assert read_labels(tmp_path / "l.json") == read_labels(tmp_path / "l.jsonl")


@pytest.mark.parametrize(("row", "field", "says"), [
    ({"pair_id": "p2", "annotator": "ann", "label": "3"}, "label", "unknown label '3'"),
    ({"pair_id": "p2", "annotator": "ann", "label": 2}, "label", 'write it as a string: "2"'),
    ({"pair_id": "p2", "annotator": "ann"}, "label", "missing; one of '1', '2', 'tie', 'both_bad'"),
    ({"pair_id": "p2", "label": "1"}, "annotator", "missing"),
    ({"pair_id": " ", "annotator": "ann", "label": "1"}, "pair_id", "empty"),
    ({"pair_id": "p1", "annotator": "ann", "label": "2"}, "label", "second label for pair 'p1' from "
                                                                  "annotator 'ann' (the first is on line 1)"),
])
def test_bad_label_rows_name_file_line_and_field(tmp_path, row, field, says):
    path = _write(tmp_path / "labels.jsonl", [{"pair_id": "p1", "annotator": "ann", "label": "1"}, row])
    with pytest.raises(InputError) as e:
        read_labels(path)
    assert str(e.value).startswith(f"{path}:2: field '{field}': ")
    assert says in str(e.value)


def test_empty_and_malformed_label_files(tmp_path):
    with pytest.raises(InputError, match="no labels"):
        read_labels(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(InputError, match=r"bad\.jsonl:1: "):
        read_labels(_write(tmp_path / "bad.jsonl", ["{not json"]))
    with pytest.raises(InputError, match=r"list\.jsonl:1: expected a JSON object"):
        read_labels(_write(tmp_path / "list.jsonl", [["p1", "ann", "1"]]))


def test_read_judge_votes(tmp_path):
    path = _write(tmp_path / "votes.jsonl", [{"pair_id": "p1", "judge": "gemma", "label": "1"},
                                             {"pair_id": "p2", "judge": "gemma", "label": None},
                                             {"pair_id": "p1", "judge": "big", "label": "tie"}])
    assert read_judge_votes(path) == {"gemma": {"p1": "1", "p2": None}, "big": {"p1": "tie"}}
    _write(path, [{"pair_id": "p1", "judge": "g", "label": "1"}, {"pair_id": "p1", "judge": "g", "label": "2"}])
    with pytest.raises(InputError, match=r"votes\.jsonl:2: field 'label': a second label"):
        read_judge_votes(path)
