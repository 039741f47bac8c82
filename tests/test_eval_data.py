"""The evaluator on the real benchmark files (skipped where ../shared/data is absent)."""

from __future__ import annotations

import json

import pytest

from app.cli.main import main
from trainer.eval.loaders import detect, load
from trainer.eval.runner import resolve, run_scores


def test_judgebench_known_answer(shared_data):
    """Skywork-Reward-Gemma-2-27B's published outputs must give JudgeBench's published numbers."""
    path = shared_data / "judgebench/reference_rm_outputs/Skywork_Skywork-Reward-Gemma-2-27B.jsonl"
    bench = run_scores([f"judgebench-rm:{path}"]).result["benchmarks"][0]
    m = bench["metrics"]["model"]
    got = {"overall": m["accuracy"], **{k: v["accuracy"] for k, v in m["by_category"].items()}}
    assert {k: round(v, 1) for k, v in got.items()} == {
        "overall": 64.3, "math": 83.9, "reasoning": 66.3, "code": 50.0, "knowledge": 59.7}
    assert m["n"] == 350 and m["score_ties"] == 3
    # the texts were joined from the JudgeBench pairs beside it, so length baselines exist
    assert set(bench["metrics"]) == {"model", "random", "longer", "shorter"}


def test_judgebench_known_answer_through_the_cli(shared_data, tmp_path, capsys):
    folder = shared_data / "judgebench/reference_rm_outputs"
    assert main(["eval", "--scores", f"judgebench-rm:{folder}", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {b["name"]: b["metrics"]["model"]["accuracy"] for b in out["benchmarks"]}
    assert len(by_name) == 5
    assert round(by_name["Skywork_Skywork-Reward-Gemma-2-27B"], 1) == 64.3
    assert "| accuracy | 64.3 |" in (tmp_path / "eval-scores.md").read_text()
    assert (tmp_path / "Skywork_Skywork-Reward-Gemma-2-27B_categories.png").stat().st_size > 0


@pytest.mark.parametrize(("rel", "fmt", "n"), [
    ("judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl", "judgebench", 350),
    ("rm-bench/chat_filtered.json", "rm-bench", 129),
    ("rm-bench/safety-response_filtered.json", "rm-bench", 157),
    ("llmbar/Dataset/LLMBar/Natural/dataset.json", "llmbar", 100),
    ("llmbar/Dataset/LLMBar/Adversarial/Neighbor/dataset.json", "llmbar", 134),
    ("pandalm/testset-v1.json", "pandalm", 999),
    ("auto-j/testdata_pairwise.jsonl", "auto-j", 1392),
    ("oasst-en100/pairs_from_ranks.jsonl", "pairwise", 754),
])
def test_loaders_on_real_files(shared_data, rel, fmt, n):
    path = shared_data / rel
    assert detect(path) == fmt
    recs = load(fmt, path)
    assert len(recs) == n
    assert all(r.responses and r.conversation for r in recs)
    assert len({r.key for r in recs}) == n or fmt in ("llmbar", "auto-j")


def test_ties_on_real_files_are_counted(shared_data):
    autoj = load("autoj", shared_data / "auto-j/testdata_pairwise.jsonl")  # the old name still works
    assert sum(r.tie for r in autoj) == 373
    panda = load("pandalm", shared_data / "pandalm/testset-v1.json")
    assert 85 <= sum(r.tie for r in panda) < 200  # 85 unanimous ties plus majority ties


def test_rmb_folder_is_one_benchmark_with_both_kinds(shared_data):
    benches, ignored = resolve([str(shared_data / "rmb")])
    assert [b.format for b in benches] == ["rmb"] and not ignored
    recs = [r for f in benches[0].files for r in load("rmb", f)]
    kinds = [r.extra["kind"] for r in recs]
    assert kinds.count("pairwise") == 8456 and kinds.count("bon") == 2109
    assert all(r.good[0] and not any(r.good[1:]) for r in recs)


def test_folders_recognise_their_files(shared_data):
    benches, ignored = resolve([str(shared_data / "rm-bench"), str(shared_data / "pandalm"),
                                str(shared_data / "llmbar")])
    got = {b.format: len(b.files) for b in benches}
    n_llmbar = len(list((shared_data / "llmbar").rglob("dataset.json")))
    assert got == {"rm-bench": 2, "pandalm": 1, "llmbar": n_llmbar} and n_llmbar >= 7
    assert any("gpt-3.5-turbo" in p for p in ignored)  # judge outputs, not a benchmark
