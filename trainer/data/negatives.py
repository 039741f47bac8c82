"""Synthetic pairs whose *longer* answer is the worse one, built from real pairs.

Why: in LLM-judged preference data the chosen answer is usually the longer one (86%
of the AlpacaEval GPT-4 pairs), so a small reward model learns "longer wins". Two
kinds of pair whose label needs no judge and whose rejected answer is the longer one
teach the opposite lesson: *what* is said matters, not how much.

* ``off_topic``: chosen = a real answer to this conversation; rejected = a real,
  longer answer written for a different prompt. Fluent, long and beside the point:
  the shape of LLMBar's "neighbour" adversarial pairs.
* ``padded``: chosen = a real answer; rejected = the same answer followed by a
  paragraph of an answer to another prompt. Same content plus irrelevant bulk: the
  verbosity that RM-Bench's hard split rewards a biased model for.

Both carry ``label_origin="synthetic"`` and the ids they were made from, so a report
or a filter can always tell them from judged pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from trainer.data.record import PreferencePair


def _prompt_key(p: PreferencePair) -> str:
    return "\x00".join(m.content for m in p.conversation)


def _first_paragraph(text: str, min_chars: int = 80) -> str:
    """The first paragraph with at least ``min_chars`` characters (or the whole text)."""
    for para in text.split("\n\n"):
        if len(para.strip()) >= min_chars:
            return para.strip()
    return text.strip()


def off_topic(pairs: Sequence[PreferencePair], n: int, rng: random.Random,
              tries: int = 20) -> list[PreferencePair]:
    """Up to ``n`` pairs: each real chosen answer against a longer answer to another prompt."""
    out: list[PreferencePair] = []
    donors = [p for p in pairs if p.chosen.strip()]
    if len(donors) < 2:
        return out
    for p in rng.sample(donors, len(donors)):
        if len(out) >= n:
            break
        for _ in range(tries):
            q = donors[rng.randrange(len(donors))]
            if _prompt_key(q) != _prompt_key(p) and len(q.chosen) > len(p.chosen) and q.chosen != p.chosen:
                out.append(PreferencePair(
                    id=f"synthetic/off-topic/{p.id}+{q.id}", conversation=p.conversation, chosen=p.chosen,
                    rejected=q.chosen, source="synthetic/off-topic", label_origin="synthetic",
                    attributes={"kind": "off-topic", "chosen_from": p.id, "rejected_from": q.id}))
                break
    return out


def padded(pairs: Sequence[PreferencePair], n: int, rng: random.Random) -> list[PreferencePair]:
    """Up to ``n`` pairs: a real chosen answer against itself plus a paragraph from another prompt's answer."""
    out: list[PreferencePair] = []
    donors = [p for p in pairs if p.chosen.strip()]
    if len(donors) < 2:
        return out
    for p in rng.sample(donors, min(n, len(donors))):
        q = donors[rng.randrange(len(donors))]
        if _prompt_key(q) == _prompt_key(p):
            continue
        extra = _first_paragraph(q.chosen)
        out.append(PreferencePair(
            id=f"synthetic/padded/{p.id}+{q.id}", conversation=p.conversation, chosen=p.chosen,
            rejected=f"{p.chosen.rstrip()}\n\n{extra}", source="synthetic/padded", label_origin="synthetic",
            attributes={"kind": "padded", "chosen_from": p.id, "rejected_from": q.id}))
    return out
