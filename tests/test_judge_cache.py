"""CallCache / CachedJudge: zero calls on a rerun, resume after kill -9, schema retries, abstain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.types import Message
from tests.judge_helpers import JUDGE_THREADS, RuleJudge, gemma, prefers, verdict
from trainer.curate.cache import RETRY_TEMPERATURE, CachedJudge, CallCache, attempt_seed
from trainer.curate.judges import JudgeUnavailable, LocalJudge, Sampling
from trainer.curate.prompts import VERDICT_SCHEMA, pair_prompt
from trainer.curate.verdicts import judge_pair
from trainer.data.record import PreferencePair

ROOT = Path(__file__).resolve().parents[1]


def question(i: int) -> list[dict[str, str]]:
    p = PreferencePair(f"q{i}", (Message("user", f"question {i}"),), f"good {i}", f"poor {i}")
    return pair_prompt(p, None, [], swap=False)


def test_a_rerun_makes_zero_calls_and_keys_are_distinct(tmp_path):
    judge = RuleJudge("good", prefers("good"))
    first = CachedJudge(judge, CallCache(tmp_path / "c.db"))
    answers = [first.ask(question(i), VERDICT_SCHEMA, Sampling(), 0) for i in range(5)]
    assert first.calls_made == 5 and first.cache_hits == 0
    again = CachedJudge(judge, CallCache(tmp_path / "c.db"))  # a new process would open the file like this
    assert [again.ask(question(i), VERDICT_SCHEMA, Sampling(), 0) for i in range(5)] == answers
    assert again.calls_made == 0 and again.cache_hits == 5 and len(judge.calls) == 5
    # each part of the key is part of the key
    again.ask(question(0), VERDICT_SCHEMA, Sampling(), 1)  # another sample
    again.ask(question(0), VERDICT_SCHEMA, Sampling(temperature=0.5), 0)  # other sampling
    again.ask(question(0), {**VERDICT_SCHEMA, "title": "v2"}, Sampling(), 0)  # another schema
    CachedJudge(RuleJudge("other", prefers("good")), again.cache).ask(question(0), VERDICT_SCHEMA, Sampling(), 0)
    assert again.calls_made == 3 and again.cache.count() == 9


def test_schema_failures_are_retried_with_new_seeds_then_abstain(tmp_path):
    good_seed = attempt_seed(0, 0, 2)  # only the third try of sample 0 answers well

    def picky(one: str, two: str, seed: int) -> str:
        if seed == good_seed:
            return verdict("1")
        return '{"better": "1", "reas' if seed % 2 else '{"better": "maybe", "reason": "x"}'

    judge = RuleJudge("picky", picky)
    cj = CachedJudge(judge, CallCache(tmp_path / "c.db"), attempts=3)
    assert cj.ask(question(0), VERDICT_SCHEMA, Sampling(), 0) == {"better": "1", "reason": "rule"}
    assert cj.calls_made == 3 and cj.schema_failures == 2 and cj.abstained == 0
    assert len({seed for _, _, seed in judge.calls}) == 3  # a different seed each try
    assert judge.temperatures == [0.0, RETRY_TEMPERATURE, RETRY_TEMPERATURE]  # greedy, then sampled
    # sample 1 never gets a valid answer: abstain after `attempts`, and the abstention is cached
    assert cj.ask(question(0), VERDICT_SCHEMA, Sampling(), 1) is None
    assert cj.calls_made == 6 and cj.schema_failures == 5 and cj.abstained == 1
    again = CachedJudge(judge, cj.cache)
    assert again.ask(question(0), VERDICT_SCHEMA, Sampling(), 1) is None
    assert again.calls_made == 0 and again.abstained == 1


def test_an_unavailable_judge_is_raised_and_not_cached(tmp_path):
    def down(one: str, two: str, seed: int) -> str:
        raise JudgeUnavailable("http://127.0.0.1:9/v1/chat/completions: down")

    cache = CallCache(tmp_path / "c.db")
    with pytest.raises(JudgeUnavailable):
        CachedJudge(RuleJudge("j", down), cache).ask(question(0), VERDICT_SCHEMA, Sampling(), 0)
    assert cache.count() == 0
    cj = CachedJudge(RuleJudge("j", prefers("good")), cache)  # the endpoint is back: the rerun asks
    assert cj.ask(question(0), VERDICT_SCHEMA, Sampling(), 0) == {"better": "1", "reason": "rule"}
    assert cj.calls_made == 1


CHILD = """
import sys, time
from tests.judge_helpers import RuleJudge, prefers
from tests.test_judge_cache import question
from trainer.curate.cache import CachedJudge, CallCache
from trainer.curate.judges import Sampling
from trainer.curate.prompts import VERDICT_SCHEMA

def slow(one, two, seed):
    time.sleep(0.05)  # seconds: long enough that the kill lands between two answers or in one
    return prefers("good")(one, two, seed)

cj = CachedJudge(RuleJudge("good", slow), CallCache(sys.argv[1]))
for i in range(int(sys.argv[2])):
    cj.ask(question(i), VERDICT_SCHEMA, Sampling(), 0)
    print(i, flush=True)
"""


def test_kill_9_mid_run_then_the_rerun_resumes(tmp_path):
    total = 40
    db = tmp_path / "c.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(total)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(5):  # five answers committed, then kill -9 while it works on the next
        assert proc.stdout.readline(), "the child exited before answering"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    cache = CallCache(db)
    done = cache.count()
    assert 5 <= done < total
    judge = RuleJudge("good", prefers("good"))
    cj = CachedJudge(judge, cache)
    answers = [cj.ask(question(i), VERDICT_SCHEMA, Sampling(), 0) for i in range(total)]
    assert cj.calls_made == total - done and cj.cache_hits == done
    assert answers == [{"better": "1", "reason": "rule"}] * total
    assert cache.count() == total


@pytest.mark.slow
def test_gemma_rerun_makes_zero_calls(tmp_path):
    pair = PreferencePair("capital", (Message("user", "Capital of France?"),), "Paris.", "Berlin.")
    db = tmp_path / "c.db"
    with LocalJudge(gemma(), n_ctx=2048, threads=JUDGE_THREADS) as judge:
        first = CachedJudge(judge, CallCache(db))
        v1 = judge_pair([first], pair, None, [])
        assert first.calls_made == 2 + first.schema_failures and first.cache_hits == 0
        second = CachedJudge(judge, CallCache(db))
        t = time.perf_counter()
        v2 = judge_pair([second], pair, None, [])
        assert second.calls_made == 0 and second.cache_hits == 2
    assert v2 == v1
    assert judge.usage.calls == first.calls_made  # the model itself was asked only by the first run
    print(f"cached rerun: {time.perf_counter() - t:.4f} s", json.dumps(first.counters()))
