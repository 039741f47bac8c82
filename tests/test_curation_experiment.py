"""The curation experiment (app/pipelines/curation_experiment.py) and its recorded judge.

The judge is checked on the real verdict prompts through the real call cache and verdict
code; the pipeline runs its ``--quick`` budget (a tiny random BERT, a few pairs per arm) on
../shared/data end to end, then again to show it reuses every finished step.
"""

from __future__ import annotations

import json
import re

import pytest

from trainer.curate.cache import CachedJudge, CallCache
from trainer.curate.prompts import ATTRIBUTES_SCHEMA, Example, attributes_prompt, pair_prompt
from trainer.curate.recorded import NEUTRAL_ATTRIBUTES, RecordedJudge, candidates, chosen_confidence
from trainer.curate.verdicts import judge_pair
from trainer.data.record import pair


def _pair(i: int, preference: float | None) -> object:
    attrs = {} if preference is None else {"preference": preference}
    return pair(f"Question {i}?", f"good answer {i}\n\nCandidate 2:\nnot a real marker",
                f"bad answer {i}", id=f"p{i}", attributes=attrs, labellers=("weighted_alpaca_eval_gpt4_turbo",))


def test_confidence_is_the_recorded_soft_preference():
    assert chosen_confidence(_pair(0, 1.0)) == 1.0  # first output certain (the chosen one)
    assert chosen_confidence(_pair(0, 2.0)) == 1.0  # second output certain (it was made the chosen)
    assert chosen_confidence(_pair(0, 1.4)) == pytest.approx(0.6)
    assert chosen_confidence(_pair(0, 1.9)) == pytest.approx(0.9)
    assert chosen_confidence(_pair(0, None)) == 1.0  # hard-label annotators: the label is the vote
    assert chosen_confidence(_pair(0, 7.0)) == 1.0  # out of range: no soft signal


def test_the_judge_answers_real_prompts_in_both_orders_and_abstains_without_a_record(tmp_path):
    sure, unsure, unknown = _pair(1, 1.05), _pair(2, 1.4), _pair(3, 1.0)
    judge = RecordedJudge([sure, unsure], threshold=0.75)
    examples = [Example(unsure, None, "1")]  # an example above the judged pair must not be read as it
    shown = candidates(pair_prompt(sure, None, examples, swap=True)[-1]["content"])
    assert shown[0] != (sure.rejected, sure.chosen)  # the marker inside the chosen text misleads the first split
    assert (sure.rejected, sure.chosen) in shown
    cache = CallCache(tmp_path / "calls.db")
    try:
        cached = CachedJudge(judge, cache)
        assert judge_pair([cached], sure, None, examples).label == "1"  # both orders, mapped back
        assert judge_pair([cached], unsure, None, examples).label == "tie"  # P(chosen) 0.6 < 0.75
        abstained = judge_pair([cached], unknown, None, examples)
        assert abstained.label is None and all(v.better is None for v in abstained.votes)
        attrs = cached.ask(attributes_prompt(sure), ATTRIBUTES_SCHEMA, _params(), 0)
        assert attrs == NEUTRAL_ATTRIBUTES
    finally:
        cache.close()
    assert RecordedJudge([sure]).identity != RecordedJudge([sure, unsure]).identity


def _params():
    from trainer.curate.verdicts import default_sampling

    return default_sampling(1)


def test_quick_run_trains_every_arm_on_the_same_pairs_and_reuses_finished_steps(
        shared_data, embedder_dir, tmp_path, capsys):
    from app.pipelines.curation_experiment import ARM_NAMES, main

    work = tmp_path / "work"
    argv = ["--quick", "--data", str(shared_data), "--work", str(work), "--embedder", str(embedder_dir)]
    assert main(argv) == 0
    first = capsys.readouterr()
    out = json.loads((work / "results.json").read_text())
    facts, evals = out["facts"], out["evals"]
    n = facts["data"]["budget"]["pairs"]
    assert facts["train_pairs"] == {"a": n, "b": n, "c": n, "d": n}
    assert sum(facts["arm_b"].values()) == n
    s2 = facts["stage2"]
    assert s2["kept"] + s2["discarded"] + s2["unscored"] == s2["rows"] == facts["data"]["sizes"]["pool"]
    assert facts["stage2_outputs"] == {"kept": s2["kept"], "flipped": s2["flipped"]}
    # arm d is drawn from kept + flipped; its flipped pairs are the ones marked so
    d_train = [json.loads(x) for x in (work / "stage2" / "flipped").glob("*.jsonl").__next__().read_text()
               .splitlines()]
    assert all(p["label_origin"] == "flipped" for p in d_train)
    assert 0 <= facts["arm_d"]["flipped"] <= n
    assert set(evals) == {"a", "b", "c", "d", "gold"}
    # every model's run says how far it got, so a table of models that learnt nothing says so
    assert set(facts["learning"]) == {"a", "b", "c", "d", "gold"}
    assert all(v["steps"] >= v["best_step"] >= 1 and 0 <= v["gold_select"] <= 1 for v in facts["learning"].values())
    by_len = facts["stage2_by_length"]  # every decided pool pair of unequal lengths, counted once
    assert s2["unscored"] == 0  # the pool holds only pairs that fit, so stage 2 decided every one
    pool = _pool_pairs(work)
    assert by_len["chosen_longer"] == sum(p.chosen_longer is True for p in pool)
    assert by_len["chosen_shorter"] == sum(p.chosen_longer is False for p in pool)
    assert facts["command"].startswith("python -m app.pipelines.curation_experiment --quick")
    table = (work / "results.md").read_text()
    assert "Did each model learn?" in table and facts["command"] in table
    for name in ARM_NAMES.values():
        assert f"| {name} |" in table
    for who in ("random", "longer wins", "shorter wins"):
        assert f"| baseline: {who} |" in table
    # the longer-wins baseline on gold is exactly the share, among the gold pairs the arm's exported
    # model scores (its trained max_length cuts the rest), of those with the longer answer chosen
    import engine
    from engine.types import Item
    from trainer.data.record import read_pairs

    gold = list(read_pairs(work / "data" / "gold_eval.jsonl"))
    with engine.load(str(work / "models" / "a")) as rm:
        scores = rm.score([Item(p.conversation, r) for p in gold for r in (p.chosen, p.rejected)],
                          on_too_long="skip")
    fits = [scores[2 * i].skipped is None and scores[2 * i + 1].skipped is None for i in range(len(gold))]
    graded = [len(p.chosen) > len(p.rejected) for p, ok in zip(gold, fits, strict=True) if ok]
    assert graded
    assert evals["a"]["gold"]["longer"]["accuracy"] == pytest.approx(100 * sum(graded) / len(graded))
    assert "training" in first.err

    assert main(argv) == 0  # everything is there: nothing is trained, exported or scored again
    again = capsys.readouterr()
    assert "training" not in again.err and "round 1: training" not in again.err
    assert json.loads((work / "results.json").read_text())["evals"] == evals


def test_budget_flags_override_the_full_budget_and_zero_reads_every_benchmark_record():
    from app.pipelines.curation_experiment import FULL, budget_of, parser

    b = budget_of(parser().parse_args(["--pairs", "800", "--epochs", "2", "--gold-epochs", "4", "--batch", "8",
                                       "--eval-every", "10", "--stage1-pool", "50", "--bench-limit", "300"]))
    assert (b.pairs, b.epochs, b.gold_epochs, b.batch, b.eval_every, b.stage1_pool) == (800, 2.0, 4.0, 8, 10, 50)
    assert (b.bench_limit, b.rmb_limit) == (300, 300)  # RMB follows --bench-limit
    assert (b.max_length, b.stage2_pool) == (FULL.max_length, FULL.stage2_pool)  # what was not given stays
    every = budget_of(parser().parse_args(["--bench-limit", "0", "--stage2-pool", "0"]))
    assert (every.bench_limit, every.rmb_limit, every.stage2_pool) == (None, 600, None)
    assert budget_of(parser().parse_args([])) == FULL


def _pool_pairs(work):
    from trainer.data.record import read_pairs

    return list(read_pairs(work / "data" / "pool.jsonl"))


@pytest.mark.parametrize(("argv", "says"), [
    (["--batch", "0"], "--batch 0: expected a positive number"),
    (["--epochs", "-1"], "--epochs -1.0: expected a positive number"),
    (["--bench-limit", "-3"], "--bench-limit -3: expected a positive number (or 0: all)"),
])
def test_a_bad_budget_is_refused_before_any_work(argv, says):
    from app.pipelines.curation_experiment import budget_of, parser

    with pytest.raises(SystemExit, match=re.escape(says)):
        budget_of(parser().parse_args(argv))


def test_render_only_without_a_finished_run_says_so(tmp_path):
    from app.pipelines.curation_experiment import main

    with pytest.raises(SystemExit, match="no finished run to render"):
        main(["--work", str(tmp_path), "--render-only", "--data", str(tmp_path)])
