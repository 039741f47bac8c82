"""verdicts.judge_pair / judge_pairs: both orders, self-consistency, majority, abstain.

The aggregation is tested with RuleJudge (tests/judge_helpers.py): a real Judge that
answers by reading the prompt, so which candidate sits in which position is checked end to
end through pair_prompt. Then one pair through the real Gemma 3 270M, in-process and over
llama-cpp-python's HTTP server.
"""

from __future__ import annotations

import pytest

from engine.errors import InputError
from engine.types import Message
from tests.judge_helpers import (
    JUDGE_THREADS,
    RuleJudge,
    always,
    gemma,
    prefers,
    start_llama_server,
    verdict,
)
from trainer.curate.cache import CachedJudge, CallCache
from trainer.curate.judges import HTTPJudge, JudgeUnavailable, LocalJudge, Sampling
from trainer.curate.verdicts import first_order, judge_pair, judge_pairs, strict_majority
from trainer.data.record import PreferencePair


def pair(i: int = 0, chosen: str = "a good answer", rejected: str = "a poor answer") -> PreferencePair:
    return PreferencePair(f"p{i}", (Message("user", f"question {i}"),), chosen, rejected)


@pytest.fixture
def cache(tmp_path):
    c = CallCache(tmp_path / "calls.db")
    yield c
    c.close()


def cached(judge, cache) -> CachedJudge:
    return CachedJudge(judge, cache)


def test_a_consistent_judge_labels_in_stored_order(cache):
    good = cached(RuleJudge("good", prefers("good")), cache)
    v = judge_pair([good], pair(), None, [])
    assert v.label == "1" and v.per_judge == {"good": "1"}
    assert sorted(x.order for x in v.votes) == ["ab", "ba"]  # both orders asked
    assert all(x.better == "1" for x in v.votes)  # "ba" answers were mapped back to stored order
    # the rejected response is better: "2" in stored order, whichever order was shown
    v2 = judge_pair([good], pair(1, chosen="a poor answer", rejected="a good answer"), None, [])
    assert v2.label == "2" and {x.better for x in v2.votes} == {"2"}


def test_position_bias_abstains(cache):
    biased = cached(RuleJudge("biased", always("1")), cache)
    v = judge_pair([biased], pair(), None, [])
    assert v.label is None and v.per_judge == {"biased": None}
    assert {x.better for x in v.votes} == {"1", "2"}  # "1" in both screens = both responses


def test_tie_counts_when_both_orders_say_tie(cache):
    tie = cached(RuleJudge("tie", always("tie")), cache)
    assert judge_pair([tie], pair(), None, []).label == "tie"


def test_majority_across_judges_is_strict(cache):
    good = [cached(RuleJudge(f"good{i}", prefers("good")), cache) for i in range(2)]
    biased = cached(RuleJudge("biased", always("1")), cache)
    poor = cached(RuleJudge("poor", prefers("poor")), cache)
    assert judge_pair([*good, biased], pair(), None, []).label == "1"  # 2 of 3
    assert judge_pair([good[0], biased], pair(), None, []).label is None  # 1 of 2 is no majority
    v = judge_pair([good[0], poor], pair(), None, [])
    assert v.label is None and v.per_judge == {"good0": "1", "poor": "2"}
    assert judge_pair([*good, poor], pair(), None, []).label == "1"


def test_judges_need_distinct_names(cache):
    a, b = (cached(RuleJudge("same", prefers("good"), identity=f"rule:{i}"), cache) for i in range(2))
    with pytest.raises(InputError, match="distinct names"):
        judge_pair([a, b], pair(), None, [])


def test_self_consistency_majority_over_samples(cache):
    # consistent on samples whose seed is even (each sample has its own seed), biased otherwise
    def flaky(one: str, two: str, seed: int) -> str:
        return prefers("good")(one, two, seed) if seed % 2 == 0 else verdict("1")

    judge = RuleJudge("flaky", flaky)
    cj = cached(judge, cache)
    v = judge_pair([cj], pair(), None, [], samples=5, params=Sampling(temperature=0.7, max_tokens=64))
    from trainer.curate.cache import attempt_seed

    n_consistent = sum(attempt_seed(0, s, 0) % 2 == 0 for s in range(5))
    assert len(v.votes) == 10 and {x.sample for x in v.votes} == set(range(5))
    assert v.label == ("1" if 2 * n_consistent > 5 else None)
    assert strict_majority(["1", "1", None], 3) == "1"
    assert strict_majority(["1", None, None], 3) is None
    assert strict_majority(["1", "2"], 2) is None
    assert strict_majority([None], 1) is None


def test_the_first_order_is_random_per_pair_and_sample_but_seeded():
    orders = [first_order(f"p{i}", 0, seed=0) for i in range(200)]
    assert 60 < orders.count("ab") < 140  # a fair coin over 200 pairs (p of failing < 1e-8)
    assert orders == [first_order(f"p{i}", 0, seed=0) for i in range(200)]  # deterministic
    assert orders != [first_order(f"p{i}", 0, seed=1) for i in range(200)]
    assert orders != [first_order(f"p{i}", 1, seed=0) for i in range(200)]


def test_judge_pair_asks_the_random_order_first(cache):
    judge = RuleJudge("good", prefers("good"))
    judge_pair([cached(judge, cache)], pair(7), None, [], seed=3)
    shown_first = "ab" if judge.calls[0][0] == "a good answer" else "ba"
    assert shown_first == first_order("p7", 0, 3)


def test_judge_pairs_keeps_order_delivers_each_and_stops_on_error(cache):
    good = cached(RuleJudge("good", prefers("good")), cache)
    items = [(pair(i, *(("a good answer", "a poor answer") if i % 2 else ("a poor answer", "a good answer"))),
              None, []) for i in range(12)]
    seen: dict[int, str | None] = {}
    out = judge_pairs([good], items, concurrency=4, on_verdict=lambda i, v: seen.__setitem__(i, v.label))
    assert [v.label for v in out] == ["2", "1"] * 6
    assert seen == {i: v.label for i, v in enumerate(out)}

    def down(one: str, two: str, seed: int) -> str:
        raise JudgeUnavailable("http://127.0.0.1:9/v1/chat/completions: down")

    with pytest.raises(JudgeUnavailable, match="127.0.0.1:9"):
        judge_pairs([cached(RuleJudge("down", down), cache)], items, concurrency=3)


def _check_real_verdict(v, judge_name: str) -> None:
    assert len(v.votes) == 2 and sorted(x.order for x in v.votes) == ["ab", "ba"]
    assert all(x.better in ("1", "2", "tie") for x in v.votes)  # the grammar: every answer parses
    a, b = (x.better for x in v.votes)
    assert v.per_judge == {judge_name: a if a == b else None}
    assert v.label == v.per_judge[judge_name]


OBVIOUS = PreferencePair("math", (Message("user", "What is 2 + 2? Answer with the number."),), "4", "5")


@pytest.mark.slow
def test_gemma_in_process(tmp_path):
    with LocalJudge(gemma(), n_ctx=2048, threads=JUDGE_THREADS) as judge:
        v = judge_pair([CachedJudge(judge, CallCache(tmp_path / "c.db"))], OBVIOUS, None, [])
    _check_real_verdict(v, judge.name)


@pytest.mark.slow
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_gemma_over_http(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_KEY", "k-7d2c-local")
    with start_llama_server(gemma(), n_ctx=2048, api_key_env="GEMMA_KEY") as server:
        with HTTPJudge(server.url, "gemma") as keyless, pytest.raises(JudgeUnavailable, match="refused the API key"):
            keyless.complete([{"role": "user", "content": "hi"}], {"type": "object"}, Sampling())
        judge = HTTPJudge(server.url, "gemma", concurrency=2, api_key_env="GEMMA_KEY")
        cj = CachedJudge(judge, CallCache(tmp_path / "c.db"))
        v = judge_pair([cj], OBVIOUS, None, [])
        assert judge.identity == f"http:{server.url}/v1/chat/completions|gemma"
        assert cj.calls_made == 2 and cj.schema_failures == 0
        judge.close()
    _check_real_verdict(v, "gemma")
