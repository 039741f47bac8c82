"""Preference attributes: the Skywork-Reward-V2 5-tuple a judge writes for each pair.

(task category, preference objectivity, controversiality, desired attributes, an
instance-specific annotation guideline). They order the human queue (objective,
low-controversy pairs first: where people agree, their labels are worth most), go into the
labelling prompt, and into the retrieval embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import InputError
from trainer.curate.judges import Sampling
from trainer.curate.prompts import (
    ATTRIBUTES_SCHEMA,
    CONTROVERSIALITY,
    OBJECTIVITY,
    TASK_CATEGORIES,
    attributes_prompt,
)

#: sampling of the attribute call: greedy, and room for the guideline (tokens)
ATTRIBUTE_SAMPLING = Sampling(temperature=0.0, max_tokens=160)


@dataclass
class Attributes:
    task_category: str
    objectivity: Literal["objective", "subjective"]
    controversiality: Literal["low", "medium", "high"]
    desired_attributes: list[str] = field(default_factory=list)
    guideline: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"task_category": self.task_category, "objectivity": self.objectivity,
                "controversiality": self.controversiality,
                "desired_attributes": list(self.desired_attributes), "guideline": self.guideline}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "attributes") -> Attributes:
        """From stored JSON; InputError naming the field when one is missing or out of range."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected an object with the five attributes")
        for key in ("task_category", "objectivity", "controversiality"):
            if not isinstance(d.get(key), str):
                raise InputError(f"{where}: field '{key}': expected a string")
        if d["objectivity"] not in OBJECTIVITY:
            raise InputError(f"{where}: field 'objectivity': {d['objectivity']!r} is not one of {OBJECTIVITY}")
        if d["controversiality"] not in CONTROVERSIALITY:
            raise InputError(f"{where}: field 'controversiality': {d['controversiality']!r} "
                             f"is not one of {CONTROVERSIALITY}")
        desired = d.get("desired_attributes", [])
        if not isinstance(desired, list) or not all(isinstance(x, str) for x in desired):
            raise InputError(f"{where}: field 'desired_attributes': expected a list of strings")
        guideline = d.get("guideline", "")
        if not isinstance(guideline, str):
            raise InputError(f"{where}: field 'guideline': expected a string")
        return cls(d["task_category"], d["objectivity"], d["controversiality"], list(desired), guideline)


def generate_attributes(judge, pair, *, params: Sampling = ATTRIBUTE_SAMPLING) -> Attributes | None:
    """The judge's attributes for ``pair`` (a CachedJudge: cached, schema-checked), or None."""
    answer = judge.ask(attributes_prompt(pair), ATTRIBUTES_SCHEMA, params, 0)
    if answer is None:
        return None
    return Attributes.from_dict(answer, where=f"judge {judge.name}: attributes of pair {pair.id}")


_OBJ = {o: i for i, o in enumerate(OBJECTIVITY)}  # objective first
_CON = {c: i for i, c in enumerate(CONTROVERSIALITY)}  # low first


def queue_priority(attrs: Attributes | None) -> tuple[int, int, int]:
    """Sort key of the human queue, lower first: objective before subjective, then low
    controversy before high; pairs without attributes last."""
    if attrs is None:
        return (1, len(_OBJ), len(_CON))
    return (0, _OBJ.get(attrs.objectivity, len(_OBJ)), _CON.get(attrs.controversiality, len(_CON)))


__all__ = ["Attributes", "generate_attributes", "queue_priority", "TASK_CATEGORIES", "ATTRIBUTE_SAMPLING"]
