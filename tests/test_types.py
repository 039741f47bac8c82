from __future__ import annotations

import math

import pytest

from engine import InputError, Item, conversation, sigmoid
from engine.types import Comparison, Score, ranking_from_scores


def test_sigmoid_is_stable_and_symmetric():
    assert sigmoid(0) == 0.5
    assert sigmoid(800) == 1.0 and sigmoid(-800) == 0.0
    assert math.isclose(sigmoid(2.0) + sigmoid(-2.0), 1.0)


def test_comparison_reports_margin_and_bradley_terry_probability():
    c = Comparison(Score(1.5, 10), Score(0.5, 12))
    assert c.margin == pytest.approx(1.0)
    assert c.p_a_better == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert c.winner == "A"
    assert Comparison(Score(0.0, 1), Score(2.0, 1)).winner == "B"


def test_ranking_is_best_first_with_stable_ties():
    r = ranking_from_scores(["a", "b", "c", "d"], [Score(v, 1) for v in (0.1, 2.0, 0.1, -1.0)])
    assert [c.index for c in r.candidates] == [1, 0, 2, 3]
    assert r.best.p_best_vs_this == 0.5
    assert r.candidates[-1].p_best_vs_this == pytest.approx(sigmoid(3.0))


def test_conversation_from_prompt_and_system():
    c = conversation("Hi", system="Be brief.")
    assert [(m.role, m.content) for m in c] == [("system", "Be brief."), ("user", "Hi")]


@pytest.mark.parametrize("messages, field", [
    ([{"role": "bot", "content": "x"}], "conversation[0].role"),
    ([{"role": "user", "content": 3}], "conversation[0].content"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "conversation[1].role"),
    (["just a string"], "conversation[0]"),
    ([], "conversation"),
])
def test_bad_conversations_name_the_field(messages, field):
    with pytest.raises(InputError) as e:
        conversation(messages)
    assert e.value.field == field
    assert f"field '{field}'" in str(e.value)


def test_item_rejects_non_string_response():
    with pytest.raises(InputError, match="response"):
        Item.of("q", None)  # type: ignore[arg-type]
