"""Loaders: inline files of every format, format detection, and errors naming file, line, field."""

from __future__ import annotations

import json

import pytest

from engine.errors import InputError
from trainer.eval.loaders import detect, load
from trainer.eval.precomputed import load_scored_pairs
from trainer.eval.runner import resolve


def write(path, rows, *, jsonl=True):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" if jsonl else json.dumps(rows), encoding="utf-8")
    return path


def test_pairwise_conversation_or_prompt(tmp_path):
    f = write(tmp_path / "p.jsonl", [
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
        {"conversation": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}], "chosen": "d", "rejected": "e", "category": "x"},
    ])
    recs = load("pairwise", f)
    assert [r.responses for r in recs] == [("Hello", "Go away"), ("d", "e")]
    assert len(recs[1].conversation) == 3 and recs[1].category == "x"
    assert detect(f) == "pairwise"


@pytest.mark.parametrize(("fmt", "row", "field"), [
    ("pairwise", {"prompt": "q", "chosen": "a"}, "rejected"),
    ("pairwise", {"chosen": "a", "rejected": "b"}, "prompt"),
    ("judgebench", {"pair_id": "1", "source": "s", "question": "q", "response_A": "a",
                    "response_B": "b", "label": "A=B"}, "label"),
    ("rm-bench", {"id": "1", "prompt": "q", "chosen": ["a", "b"], "rejected": ["a", "b", "c"]}, "chosen"),
    ("llmbar", {"input": "q", "output_1": "a", "output_2": "b", "label": 3}, "label"),
    ("autoj", {"scenario": "s", "prompt": "q", "response 1": "a", "response 2": 7, "label": 0}, "response 2"),
    ("rmb", {"pair_uid": "1", "conversation_input": [{"role": "user", "content": "q"}],
             "chosen": {"answer": "a"}, "reject": "b", "category_path": "c"}, "reject"),
    ("rewardbench2", {"id": "1", "prompt": "q", "chosen": ["a"], "rejected": "b", "subset": "Math"}, "rejected"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, fmt, row, field):
    good = {"pairwise": {"prompt": "q", "chosen": "a", "rejected": "b"}}.get(fmt)
    f = write(tmp_path / "bad.jsonl", [good, row] if good else [row])
    line = 2 if good else 1
    with pytest.raises(InputError) as e:
        load(fmt, f)
    assert str(e.value).startswith(f"{f}:{line}: field '{field}': ")


def test_json_array_rows_are_numbered(tmp_path):
    rows = [{"input": "q", "output_1": "a", "output_2": "b", "label": 1}, {"input": "q", "output_1": "a", "label": 1}]
    f = write(tmp_path / "llmbar.json", rows, jsonl=False)
    with pytest.raises(InputError, match=r"llmbar.json:1: field 'output_2': missing \(array item 2\)"):
        load("llmbar", f)
    f.write_text(json.dumps(rows, indent=2))  # the line the item starts on, and its number
    with pytest.raises(InputError, match=r"llmbar.json:8: field 'output_2': missing \(array item 2\)"):
        load("llmbar", f)


def test_pandalm_majority_and_ties(tmp_path):
    base = {"instruction": "Fix", "input": "txt", "response1": "one", "response2": "two"}
    f = write(tmp_path / "panda.json", [
        {**base, "idx": 0, "annotator1": "2", "annotator2": "2", "annotator3": "1"},
        {**base, "idx": 1, "annotator1": 0, "annotator2": 0, "annotator3": 1},
        {**base, "idx": 2, "annotator1": 0, "annotator2": 1, "annotator3": 2},
    ], jsonl=False)
    recs = load("pandalm", f)
    assert recs[0].responses == ("two", "one") and not recs[0].tie
    assert recs[1].tie and recs[2].tie
    assert recs[0].conversation[0].content == "Fix\n\ntxt"


def test_rewardbench_v1_v2_and_ppe_detection(tmp_path):
    v1 = write(tmp_path / "v1.jsonl", [{"id": 1, "prompt": "q", "chosen": "a", "rejected": "b",
                                        "subset": "hep-go"}])
    v2 = write(tmp_path / "v2.jsonl", [{"id": "ref:1", "prompt": "q", "chosen": ["a"],
                                        "rejected": ["b", "c", "d"], "subset": "Ties", "num_correct": 1}])
    ppe = write(tmp_path / "ppe.jsonl", [{"prompt": "q", "response_1": "a", "score_1": True,
                                          "response_2": "b", "score_2": False}])
    assert (detect(v1), detect(v2), detect(ppe)) == ("rewardbench", "rewardbench2", "ppe")
    r2 = load("rewardbench2", v2)[0]
    assert r2.good == (True, False, False, False) and r2.key == "ref:1"
    assert load("ppe", ppe)[0].good == (True, False)


def test_folder_resolution_groups_by_format_and_lists_the_rest(tmp_path):
    write(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    write(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    benches, ignored = resolve([str(tmp_path)])
    assert [(b.format, len(b.files)) for b in benches] == [("pairwise", 2)]
    assert ignored == [str(tmp_path / "notes.json")]
    with pytest.raises(InputError, match="no llmbar files"):
        resolve([f"llmbar:{tmp_path}"])


def test_scored_pairs(tmp_path):
    f = write(tmp_path / "s.jsonl", [{"chosen_score": 1.5, "rejected_score": 0.5},
                                     {"chosen_score": None, "rejected_score": 0.5}])
    got = load_scored_pairs(f)
    assert got[0].complete and not got[1].complete
    bad = write(tmp_path / "bad.jsonl", [{"chosen_score": "high", "rejected_score": 0.5}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'chosen_score': must be a number"):
        load_scored_pairs(bad)
