"""`arbiter annotate export` and `arbiter annotate agreement`, on real SQLite stores, a real
exported reward model and real subprocesses for the error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.main import main
from trainer.curate.agreement import krippendorff_alpha
from trainer.curate.annotations import AnnotationStore
from trainer.data.record import pair, read_pairs, write_pairs

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["annotate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _subprocess(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli.main", "annotate", *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(n: int) -> list:
    return [pair(f"What is {i} + {i}?", f"{2 * i}.", f"{2 * i + 1}, I think.", id=f"p{i}",
                 source="unit-test", label_origin="llm", labellers=("judge-x",)) for i in range(n)]


# ---- export -----------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A curation run folder whose curation.db has 6 queued pairs (overlap 2) and human labels."""
    run = tmp_path / "run"
    with AnnotationStore(run / "curation.db") as store:
        store.enqueue([(p, {"task_category": "math"}, (i,)) for i, p in enumerate(_pairs(6))], overlap=2)
        for pid, ann, bob in [("p0", "1", "1"), ("p1", "2", "2"), ("p2", "tie", "tie"),
                              ("p3", "both_bad", "both_bad"), ("p4", "1", "2")]:
            store.label(pid, "ann", ann, seconds=3.5)
            store.label(pid, "bob", bob, seconds=2.0)
        store.label("p5", "ann", "1")  # one label of the two it needs
    return run


@pytest.mark.parametrize("name", ["gold.jsonl", "gold.parquet"])
def test_export_writes_gold_with_provenance(capsys, run_dir, tmp_path, name):
    out = tmp_path / "out" / name
    code, stdout, err = _cli(capsys, "export", run_dir, "-o", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    gold = {p.id: p for p in read_pairs(out)}
    # p3 both bad, p4 a conflict, p5 short of its overlap: left out
    assert list(gold) == ["p0", "p1", "p2"] and summary["gold_pairs"] == 3 and summary["ties"] == 1
    assert summary["progress"]["conflicts"] == 1
    src = {p.id: p for p in _pairs(6)}
    assert (gold["p0"].chosen, gold["p0"].rejected) == (src["p0"].chosen, src["p0"].rejected)
    assert (gold["p1"].chosen, gold["p1"].rejected) == (src["p1"].rejected, src["p1"].chosen)  # "2": swapped
    assert gold["p2"].tie and not gold["p0"].tie
    for p in gold.values():
        assert p.label_origin == "human" and p.labellers == ("ann", "bob")
        prov = p.attributes["curation"]
        assert prov["source"] == "unit-test" and prov["original_label_origin"] == "llm"
        assert prov["original_labellers"] == ["judge-x"]
        assert prov["preference_attributes"] == {"task_category": "math"}
        assert sorted(x["annotator"] for x in prov["human_labels"]) == ["ann", "bob"]
    assert gold["p1"].attributes["curation"]["agrees_with_original"] is False
    assert summary["agree_with_original"] == 1  # p0 only (a tie does not agree)


def test_export_from_an_annotation_db_file_and_min_labels(capsys, run_dir, tmp_path):
    out = tmp_path / "gold.jsonl"
    code, stdout, err = _cli(capsys, "export", run_dir / "curation.db", "-o", out, "--min-labels", "1")
    assert code == 0, err
    assert [p.id for p in read_pairs(out)] == ["p0", "p1", "p2", "p5"]  # p5's single label now counts
    assert stdout.startswith("4 gold pairs (1 ties) from 11 labels on 6 of 6 pairs; 1 conflicts left out")


def test_export_round_trips_through_a_pairs_file_store(capsys, tmp_path):
    src = tmp_path / "pool.jsonl"
    write_pairs(_pairs(3), src)
    with AnnotationStore.from_pairs(src, tmp_path / "pool.annotate.db") as store:
        store.label("p2", "ann", "2")
    out = tmp_path / "gold.jsonl"
    code, stdout, err = _cli(capsys, "export", tmp_path / "pool.annotate.db", "-o", out)
    assert code == 0, err
    assert "1 gold pairs" in stdout
    (p,) = read_pairs(out)
    assert (p.id, p.chosen, p.rejected) == ("p2", "5, I think.", "4.")


def test_export_refuses_what_is_not_an_annotation_db(tmp_path):
    pairs_file = tmp_path / "pairs.jsonl"
    write_pairs(_pairs(2), pairs_file)
    keep = tmp_path / "gold.jsonl"
    keep.write_text("kept\n")
    for target, says in [(pairs_file, "not an annotation database"),
                         (tmp_path, "no curation.db in it"),
                         (tmp_path / "nope", "no such file or folder")]:
        proc = _subprocess("export", target, "-o", keep)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"arbiter: error: {target}: ") and says in proc.stderr
        assert "Traceback" not in proc.stderr
    assert keep.read_text() == "kept\n"  # nothing written over the old file


def test_export_to_a_folder_is_refused(capsys, run_dir, tmp_path):
    code, _, err = _cli(capsys, "export", run_dir, "-o", tmp_path)
    assert code == 2 and f"arbiter: error: {tmp_path}: is a folder" in err


# ---- agreement --------------------------------------------------------------------------------

LABELS = [("p0", "ann", "1"), ("p0", "bob", "1"), ("p0", "cy", "1"),
          ("p1", "ann", "2"), ("p1", "bob", "2"),
          ("p2", "ann", "1"), ("p2", "bob", "2"), ("p2", "cy", "2"),
          ("p3", "ann", "tie"), ("p3", "cy", "tie"),
          ("p4", "bob", "both_bad"), ("p4", "cy", "1"),
          ("p5", "ann", "2")]


@pytest.fixture
def labels_file(tmp_path) -> Path:
    return _write(tmp_path / "labels.jsonl", [{"pair_id": p, "annotator": a, "label": x} for p, a, x in LABELS])


def test_agreement_json(capsys, labels_file, tmp_path):
    votes = _write(tmp_path / "votes.jsonl", [{"pair_id": "p0", "judge": "gemma", "label": "1"},
                                              {"pair_id": "p1", "judge": "gemma", "label": "1"},
                                              {"pair_id": "p2", "judge": "gemma", "label": None}])
    code, out, err = _cli(capsys, "agreement", labels_file, "--judge-votes", votes, "--json")
    assert code == 0, err
    r = json.loads(out)
    units: dict[str, list[str]] = {}
    for p, _, x in LABELS:
        units.setdefault(p, []).append(x)
    assert r["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(units))
    lo, hi = r["alpha_interval"]
    assert lo <= r["krippendorff_alpha"] <= hi
    assert (r["units"], r["labels"], r["pairable_units"]) == (6, 13, 5)
    kappas = {tuple(k["annotators"]): k for k in r["cohen_kappa"]}
    assert set(kappas) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    assert kappas["ann", "bob"]["units"] == 3  # p0, p1, p2
    assert r["judges"]["gemma"] == {"agreement": 0.5, "pairs": 2, "abstained": 1}
    assert "model" not in r


def test_agreement_of_one_category_prints_null_and_the_reason(capsys, tmp_path):
    path = _write(tmp_path / "same.jsonl", [{"pair_id": f"p{i}", "annotator": a, "label": "1"}
                                            for i in range(3) for a in ("ann", "bob")])
    code, out, _ = _cli(capsys, "agreement", path, "--json")
    assert code == 0
    assert "NaN" not in out
    r = json.loads(out)
    assert r["krippendorff_alpha"] is None and r["alpha_interval"] == [None, None]
    assert "one category" in r["alpha_undefined"]
    code, out, _ = _cli(capsys, "agreement", path)
    assert "alpha n/a" in out and "undefined:" in out


@pytest.mark.parametrize(("row", "field", "says"), [
    ({"pair_id": "p9", "annotator": "ann", "label": "left"}, "label", "unknown label 'left'"),
    ({"pair_id": "p0", "annotator": "bob", "label": "2"}, "label", "a second label for pair 'p0' from annotator 'bob'"),
])
def test_agreement_bad_rows_exit_2_naming_file_line_and_field(labels_file, row, field, says):
    with labels_file.open("a") as f:
        f.write(json.dumps(row) + "\n")
    proc = _subprocess("agreement", labels_file, "--json")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"arbiter: error: {labels_file}:{len(LABELS) + 1}: field '{field}': ")
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_agreement_reads_a_run_folder_or_annotation_db(capsys, run_dir):
    code, out, err = _cli(capsys, "agreement", run_dir, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert (r["labels"], r["units"], r["annotators"]) == (11, 6, ["ann", "bob"])
    assert r["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(
        {"p0": ["1", "1"], "p1": ["2", "2"], "p2": ["tie", "tie"], "p3": ["both_bad"] * 2, "p4": ["1", "2"]}))
    code, out2, _ = _cli(capsys, "agreement", run_dir / "curation.db", "--json")
    assert code == 0 and json.loads(out2) == r


def test_model_needs_pairs(capsys, labels_file):
    code, _, err = _cli(capsys, "agreement", labels_file, "--model", "default")
    assert code == 2 and "--model needs --pairs" in err


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> Path:
    """MiniLM with a seeded random head, exported to ONNX fp32: a real RM that takes seconds."""
    from exports.onnx import export_onnx
    from tests.models import minilm_reward_model

    d = tmp_path_factory.mktemp("annotate-rm")
    return export_onnx(minilm_reward_model(d / "hf", seed=3), d / "onnx")


def test_agreement_with_the_reward_model(capsys, tmp_path, tiny_rm):
    import engine

    pairs = _pairs(8)
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    with engine.load(str(tiny_rm)) as rm:
        rm_label = {p.id: "1" if rm.compare(p.conversation, p.chosen, p.rejected).p_a_better > 0.5 else "2"
                    for p in pairs}
    flip = {"1": "2", "2": "1"}
    # humans agree with the RM on p0-p3, disagree on p4-p5, say tie on p6; p7 is not labelled
    human = {f"p{i}": rm_label[f"p{i}"] if i < 4 else flip[rm_label[f"p{i}"]] for i in range(6)} | {"p6": "tie"}
    labels = _write(tmp_path / "labels.jsonl", [{"pair_id": k, "annotator": a, "label": v}
                                                for k, v in human.items() for a in ("ann", "bob")]
                    + [{"pair_id": "p9", "annotator": "ann", "label": "1"}])  # not in the pairs file
    code, out, err = _cli(capsys, "agreement", labels, "--pairs", tmp_path / "pairs.jsonl",
                          "--model", tiny_rm, "--json")
    assert code == 0, err
    m = json.loads(out)["model"]
    assert (m["agreement"], m["pairs"]) == (pytest.approx(4 / 6), 6)
    assert (m["scored"], m["too_long"], m["missing_from_pairs"], m["human_tie_or_both_bad"]) == (7, 0, 1, 1)


def test_agreement_pairs_without_the_labelled_ids(capsys, labels_file, tmp_path, tiny_rm):
    other = tmp_path / "other.jsonl"
    write_pairs([pair("Hi", "Hello.", "Go away.", id="zz")], other)
    code, _, err = _cli(capsys, "agreement", labels_file, "--pairs", other, "--model", tiny_rm)
    assert code == 2
    assert f"{other}: field 'id': none of the labelled pair ids" in err
