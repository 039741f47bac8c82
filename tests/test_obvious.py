"""The obvious cases (app/data/obvious_cases.jsonl): a fixed list that the app's demo pair comes from,
that the card reports, and that training data is decontaminated against."""

from __future__ import annotations

import json

import pytest

import engine
from app.obvious import OBVIOUS_CASES, demo_pair
from app.pipelines import card_summary as cs
from engine.paths import builtin_dir
from engine.registry import default_model_path
from trainer.data.hygiene import benchmark_prompts
from trainer.data.record import write_pairs
from trainer.data.synthetic import PromptDecontaminator
from trainer.eval.loaders import load_pairwise

ROWS = [json.loads(line) for line in OBVIOUS_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
needs_default = pytest.mark.skipif(default_model_path() is None, reason="this build ships no default model")


def test_the_list_is_what_its_docstring_says():
    """41 pairs, unique ids, one demo, readable by `arbiter eval pairwise:`; neither length baseline
    can solve it (the chosen answer is the longer one in 18)."""
    assert len(ROWS) == 41
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    assert sum(bool(r.get("demo")) for r in ROWS) == 1
    assert sum(len(r["chosen"]) > len(r["rejected"]) for r in ROWS) == 18
    records = load_pairwise(OBVIOUS_CASES)
    assert len(records) == 41 and {r.category for r in records} >= {"fact", "refusal", "safe", "code"}


def test_demo_pair_is_the_marked_case_with_the_better_answer_as_a():
    d = demo_pair()
    row = next(r for r in ROWS if r.get("demo"))
    assert (d.id, d.a, d.b) == (row["id"], row["chosen"], row["rejected"])
    assert d.conversation[-1]["role"] == "user" and "boiling point" in d.conversation[-1]["content"]


def test_demo_pair_refuses_a_list_without_exactly_one_demo(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text("\n".join(json.dumps({**r, "demo": True}) for r in ROWS[:2]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="found 2"):
        demo_pair(bad)
    bad.write_bytes(b'{"id": "x", "demo": true}\n\xff\xfe not json\n')
    with pytest.raises(ValueError, match="line 2"):
        demo_pair(bad)
    bad.write_text('{"id": "x", "demo": true}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: the demo case lacks conversation, chosen, rejected"):
        demo_pair(bad)


def test_training_prompts_equal_to_an_obvious_prompt_are_caught_whole():
    """Most obvious prompts hold fewer than 13 words, so 13-grams alone would never catch them."""
    decon = PromptDecontaminator([OBVIOUS_CASES], 13)
    prompts = list(benchmark_prompts(OBVIOUS_CASES))
    assert len(prompts) == 41
    assert decon.hit("what is the capital of  Australia?") is not None
    assert decon.hit("What is the capital of Austria?") is None


@needs_default
def test_card_summary_rows_on_the_shipped_default(tmp_path):
    """The obvious-case row, the gold row's baselines (length-balanced: 50 for either length rule)
    and the demo probability, from the real default model; the card states the same numbers."""
    from engine.types import conversation
    from trainer.data.record import PreferencePair

    gold = tmp_path / "gold.jsonl"
    write_pairs([PreferencePair(r["id"], conversation(r["conversation"]), r["chosen"], r["rejected"])
                 for r in ROWS], gold)
    with engine.load("default") as rm:
        (label, obvious, note), = cs.headline_rows("obvious", cs.obvious_result(rm, tmp_path / "eval"))
        label_g, g, _ = cs.gold_row(cs.score_gold(rm, gold))
        demo = cs.demo_probability(rm)
    assert note == "41 records, 0 in windows"  # every case fits: none needs the card's windows
    assert g["longer"] == pytest.approx(50.0) and g["shorter"] == pytest.approx(50.0)
    assert 0.0 <= demo <= 1.0 and 0.0 <= obvious["model"] <= 100.0
    card = (builtin_dir() / "default" / "MODEL_CARD.md").read_text(encoding="utf-8")  # states the same
    row = next(line for line in card.splitlines() if line.startswith("| Obvious cases"))
    assert row.split("|")[2].strip() == f"{obvious['model']:.1f}", row
    assert f"P(A better) = {demo:.1%}" in card
    table = cs.markdown([(label, obvious, note), (label_g, g, "x")])
    assert table.splitlines()[-1].startswith("| **average** |")


def test_card_benchmarks_exist_and_rmb_samples_reach_every_category(shared_data):
    """Every card benchmark is in ../shared/data, and RMB's spread samples hold every category
    file of each set (its first 600 records had held five of twelve Best-of-N categories and no
    pairwise record at all)."""
    from trainer.eval.runner import load_records, resolve

    for fmt, rel, sample in cs.CARD_BENCHMARKS:
        assert (shared_data / rel).exists(), rel
        if fmt != "rmb":
            continue
        bench, = resolve([f"{fmt}:{shared_data / rel}"])[0]
        picked = load_records(bench, None, sample)
        assert len(picked) == sample == cs.RMB_SAMPLE
        files_hit = {sha for sha, _, _ in picked}
        tops = {r.category.split("/")[2] for _, _, r in picked}  # Brainstorming, Chat, ..., Translation
        assert len(tops) == 12, (rel, sorted(tops))
        assert len(files_hit) >= 0.8 * len(bench.files), (rel, len(files_hit), len(bench.files))


def test_prompt_overlap_counts_benchmark_records_whose_prompt_training_shares(shared_data, tmp_path):
    """A training pair on an RM-Bench prompt (short: the whole-prompt test) and one on an obvious
    case are found from the benchmarks' side; an unrelated pair is found nowhere."""
    from engine.types import conversation
    from trainer.data.record import PreferencePair

    rm_bench_prompt = next(benchmark_prompts(shared_data / "rm-bench" / "chat_filtered.json"))
    case = ROWS[0]
    train = tmp_path / "train.jsonl"
    write_pairs([PreferencePair("a", conversation([{"role": "user", "content": rm_bench_prompt}]), "x", "y"),
                 PreferencePair("b", conversation(case["conversation"]), "x", "y"),
                 PreferencePair("c", conversation([{"role": "user", "content": "Zyzzyva quorble flint?"}]),
                                "x", "y")], train)
    found = {name: (hits, n) for name, hits, n in cs.prompt_overlap(train, shared_data)}
    assert found["rm-bench"][0] >= 1 and found["obvious cases"] == (1, 41)
    assert all(hits == 0 for name, (hits, _) in found.items() if name not in ("rm-bench", "obvious cases"))
    assert found["rmb (Pairwise_set)"][1] == found["rmb (BoN_set)"][1] == cs.RMB_SAMPLE
