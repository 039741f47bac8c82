"""A judge that answers from votes already recorded in the data, never from a model.

The curation experiment (``app/pipelines/curation_experiment.py``) needs judges stronger
than the local Gemma 3 270M. The AlpacaEval pool carries its GPT-4-family annotator's
verdict, and one annotator, ``weighted_alpaca_eval_gpt4_turbo``, records it as a soft
``preference`` (1 + P(second output better)). :class:`RecordedJudge` plays that recorded
annotator as a judge: it answers the stage-1/stage-2 verdict prompts the same way an LLM
judge would, through :class:`~trainer.curate.cache.CachedJudge`, so the curation code runs
unchanged.

What it can and cannot say, stated because it bounds what the experiment can show:

* AlpacaEval pairs have one annotator each, so the recorded vote is the very source of the
  pair's label: the judge never contradicts the label ("2" only when the candidates are
  shown swapped, which the verdict code maps back to "1");
* its only information beyond the label is the annotator's confidence,
  P(chosen better) = 0.5 + |preference - 1.5| (1.0 for the annotators that record a hard
  1 or 2). At or above ``threshold`` it votes for the recorded winner, below it "tie";
* a pair it holds no record for (a gold pair, an unknown text) is abstained on; so is, in
  effect, a pair recorded twice with opposite labels (the same two outputs, two annotators):
  each order then finds the record that puts its first candidate ahead, the two orders
  disagree, and the verdict code abstains (seen once in the experiment's 700-pair pool);
* it writes no attributes: the attributes question gets one fixed, neutral answer
  (subjective, medium controversy), so nothing is queued for humans on its word.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from trainer.curate.judges import Sampling
from trainer.curate.prompts import ATTRIBUTES_SCHEMA, PAIR_CHARS, VERDICT_SCHEMA, _cut
from trainer.data.record import PreferencePair

#: the verdict prompt's last paragraph starts with this (trainer/curate/prompts.pair_prompt)
_QUESTION = "\n\nWhich candidate is the better reply?"
_FIRST, _SECOND = "Candidate 1:\n", "\n\nCandidate 2:\n"
#: what the judge answers to the attributes question (it has no attributes to give)
NEUTRAL_ATTRIBUTES = {"task_category": "other", "objectivity": "subjective", "controversiality": "medium",
                      "desired_attributes": ["helpful"], "guideline": "recorded judge: no attributes"}
#: an answer no schema accepts: the cache retries, then records an abstention
ABSTAIN = "abstain"


def chosen_confidence(pair: PreferencePair) -> float:
    """P(chosen better) as the pair's annotator recorded it (1.0 when it recorded a hard label)."""
    pref = pair.attributes.get("preference")
    try:
        value = float(pref)
    except (TypeError, ValueError):
        return 1.0
    if not 1.0 <= value <= 2.0:
        return 1.0
    return 0.5 + abs(value - 1.5)


class RecordedJudge:
    """Answers verdict prompts from the pairs' recorded annotator votes (see the module doc)."""

    def __init__(self, pairs: Iterable[PreferencePair], *, threshold: float = 0.75, name: str = "recorded") -> None:
        if not 0.5 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0.5, 1]; got {threshold}")
        self.name = name
        self.threshold = threshold
        # (chosen, rejected) as the prompt shows them (cut at PAIR_CHARS) -> P(chosen better)
        self._votes: dict[tuple[str, str], float] = {}
        digest = hashlib.sha256(f"{threshold}".encode())
        for p in pairs:
            key = (_cut(p.chosen, PAIR_CHARS), _cut(p.rejected, PAIR_CHARS))
            self._votes[key] = chosen_confidence(p)
            digest.update(p.id.encode())
        # the call cache's key: a different record set or threshold is a different judge
        self.identity = f"recorded:{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self._votes)

    def vote(self, first: str, second: str) -> str | None:
        """"1", "2" or "tie" for the candidates in screen order; None when no record holds them."""
        if (first, second) in self._votes:
            return "1" if self._votes[first, second] >= self.threshold else "tie"
        if (second, first) in self._votes:
            return "2" if self._votes[second, first] >= self.threshold else "tie"
        return None

    def complete(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> str:
        """The JSON answer an LLM judge would give; ``ABSTAIN`` (not valid JSON) when it has no record."""
        if schema == ATTRIBUTES_SCHEMA:
            return json.dumps(NEUTRAL_ATTRIBUTES)
        if schema != VERDICT_SCHEMA:
            return ABSTAIN
        better = next((b for b in (self.vote(*c) for c in candidates(messages[-1]["content"])) if b is not None),
                      None)
        if better is None:
            return ABSTAIN
        return json.dumps({"better": better, "reason": "recorded annotator vote"})

    def close(self) -> None:
        """Nothing to release (the judges' interface)."""


def candidates(prompt: str) -> list[tuple[str, str]]:
    """Every (Candidate 1, Candidate 2) reading of a verdict prompt, the likeliest first; [] if it
    is not one.

    The pair to judge is always the prompt's last two candidates, right before the question,
    so the search runs from the end (past the examples above them). A response may itself
    contain a "Candidate 2:" line, so every split is offered and the record decides which is real.
    """
    end = prompt.rfind(_QUESTION)
    if end < 0:
        return []
    out = []
    for second in _positions(prompt, _SECOND, end):
        for first in _positions(prompt, _FIRST, second):
            out.append((prompt[first + len(_FIRST):second], prompt[second + len(_SECOND):end]))
    return out


def _positions(text: str, needle: str, end: int) -> list[int]:
    """Start indices of ``needle`` in ``text[:end]``, last first."""
    found = []
    i = text.rfind(needle, 0, end)
    while i >= 0:
        found.append(i)
        i = text.rfind(needle, 0, i)
    return found
