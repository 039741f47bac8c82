"""What the judges are asked: the labelling guideline, the pair prompt, the answer schemas.

The guideline stands in for Skywork-Reward-V2's annotation guideline (the paper's App. D,
whose text is not in ``../shared/docs/skywork-reward-v2.md``, so nothing here quotes it):
it is written for Arbiter to cover the same points: instruction following first, then
correctness, helpfulness, harmlessness and honesty, read through the pair's own guideline
and desired attributes, with ties allowed. Like the paper's judge prompt (App. D.3) it has
no sentences about web search or asking other LLMs: a judge here has neither.

The pair is shown as "Candidate 1" and "Candidate 2"; ``swap=True`` shows the stored
second response first (position bias is measured by asking both orders). Long texts are
cut at the end, and the cut is stated in the prompt, so a prompt fits a small context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.curate.attributes import Attributes
    from trainer.data.record import PreferencePair

TASK_CATEGORIES = ("chat", "coding", "math", "reasoning", "writing", "knowledge", "safety", "other")
OBJECTIVITY = ("objective", "subjective")
CONTROVERSIALITY = ("low", "medium", "high")
#: at most this many labelled examples in one prompt (the issue's "at most 8")
MAX_EXAMPLES = 8
#: characters of each text of the judged pair / of an example pair before the cut
PAIR_CHARS, EXAMPLE_CHARS = 4000, 600

GUIDELINE = """\
You compare two candidate responses to the same conversation and decide which one is the \
better next reply of the assistant. Judge in this order:
1. Instruction following: a response that does what the user asked (task, format, length, \
language, constraints) beats one that does not, however good the latter is otherwise.
2. Correctness: facts, reasoning, calculations and code must be right. A confident wrong \
answer is worse than a hedged or partial right one.
3. Helpfulness: the response addresses the user's actual need, completely and clearly, \
without padding. Longer is not better by itself.
4. Harmlessness: a response must not help with clearly harmful requests; refusing a \
harmless request without reason is a fault too.
5. Honesty: the response does not invent facts, sources or abilities, and states \
uncertainty where there is some.
Each pair may come with its own annotation guideline and a list of desired attributes: \
apply them, they say what matters most for this particular conversation.
Judge the content only: ignore the order in which the candidates are shown and their \
length as such. Answer "tie" only when neither candidate is better on any of these points, \
or when both are equally good or equally bad."""

VERDICT_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "better": {"type": "string", "enum": ["1", "2", "tie"]},
        "reason": {"type": "string", "maxLength": 100},
    },
    "required": ["better", "reason"],
    "additionalProperties": False,
}

ATTRIBUTES_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "task_category": {"type": "string", "enum": list(TASK_CATEGORIES)},
        "objectivity": {"type": "string", "enum": list(OBJECTIVITY)},
        "controversiality": {"type": "string", "enum": list(CONTROVERSIALITY)},
        "desired_attributes": {"type": "array", "items": {"type": "string", "maxLength": 30},
                               "minItems": 1, "maxItems": 3},
        "guideline": {"type": "string", "maxLength": 160},
    },
    "required": ["task_category", "objectivity", "controversiality", "desired_attributes", "guideline"],
    "additionalProperties": False,
}

ATTRIBUTES_INSTRUCTIONS = f"""\
Describe the conversation below for people who will judge replies to it. Answer with JSON:
- task_category: one of {", ".join(TASK_CATEGORIES)};
- objectivity: "objective" when a reply can be checked right or wrong (math, code, facts), \
"subjective" when it is a matter of taste or opinion;
- controversiality: how much careful judges would disagree about which reply is better \
("low", "medium" or "high");
- desired_attributes: up to 3 qualities a good reply has here, a few words each;
- guideline: a sentence on how to judge replies to this conversation, in your own words."""


@dataclass(frozen=True)
class Example:
    """A labelled pair shown to the judge; ``label`` in stored order ("1", "2", "tie", "both_bad")."""

    pair: PreferencePair
    attributes: Attributes | None
    label: str


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... cut: {len(text) - limit} more characters not shown]"


def conversation_text(pair: PreferencePair, limit: int = PAIR_CHARS) -> str:
    return "\n".join(f"{m.role}: {_cut(m.content, limit)}" for m in pair.conversation)


def attributes_text(attrs: Attributes | None) -> str:
    if attrs is None:
        return ""
    desired = "; ".join(attrs.desired_attributes) or "none given"
    return (f"Task category: {attrs.task_category} ({attrs.objectivity}, "
            f"controversiality {attrs.controversiality})\nDesired attributes: {desired}\n"
            f"Guideline for this pair: {attrs.guideline or 'none given'}")


_SHOWN = {"1": "Candidate 1 is better", "2": "Candidate 2 is better", "tie": "tie",
          "both_bad": "both are bad (tie)"}


def _example_text(i: int, ex: Example) -> str:
    parts = [f"### Example {i}", conversation_text(ex.pair, EXAMPLE_CHARS)]
    if ex.attributes is not None:
        parts.append(attributes_text(ex.attributes))
    parts += [f"Candidate 1: {_cut(ex.pair.chosen, EXAMPLE_CHARS)}",
              f"Candidate 2: {_cut(ex.pair.rejected, EXAMPLE_CHARS)}",
              f"Verdict: {_SHOWN.get(ex.label, ex.label)}"]
    return "\n".join(parts)


def pair_prompt(pair: PreferencePair, attributes: Attributes | None, examples: Sequence[Example],
                swap: bool) -> list[dict[str, str]]:
    """Chat messages asking which candidate is better; ``swap`` shows ``rejected`` first.

    The answer's "1"/"2" refer to the screen order; ``verdicts`` maps them back.
    """
    examples = list(examples)[:MAX_EXAMPLES]
    first, second = (pair.rejected, pair.chosen) if swap else (pair.chosen, pair.rejected)
    parts: list[str] = []
    if examples:
        parts.append("Labelled examples of similar pairs:\n\n"
                     + "\n\n".join(_example_text(i + 1, ex) for i, ex in enumerate(examples)))
        parts.append("### The pair to judge")
    parts.append("Conversation:\n" + conversation_text(pair))
    if attributes is not None:
        parts.append(attributes_text(attributes))
    parts.append(f"Candidate 1:\n{_cut(first, PAIR_CHARS)}")
    parts.append(f"Candidate 2:\n{_cut(second, PAIR_CHARS)}")
    parts.append('Which candidate is the better reply? Answer with JSON: "better" is "1" for '
                 'Candidate 1, "2" for Candidate 2 or "tie"; "reason" says why in a few words.')
    return [{"role": "system", "content": GUIDELINE}, {"role": "user", "content": "\n\n".join(parts)}]


def attributes_prompt(pair: PreferencePair) -> list[dict[str, str]]:
    """Chat messages asking for the 5-tuple of ``pair`` (the conversation and both replies)."""
    body = "\n\n".join([
        "Conversation:\n" + conversation_text(pair),
        f"Reply A:\n{_cut(pair.chosen, PAIR_CHARS)}",
        f"Reply B:\n{_cut(pair.rejected, PAIR_CHARS)}",
    ])
    return [{"role": "system", "content": ATTRIBUTES_INSTRUCTIONS}, {"role": "user", "content": body}]
