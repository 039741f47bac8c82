"""The moderation categories: OpenAI's moderation API names, the vocabulary of every output row.

A model that does not score a category (any plain reward model: it gives one overall score)
reports ``None`` for it, never 0: "not scored" is not "safe".
"""

from __future__ import annotations

from collections.abc import Mapping

#: OpenAI's 13 category names, in its documented order
CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)


def category_map(values: Mapping[str, object] | None = None) -> dict[str, object]:
    """Every category name, with ``values``' entry or None (unscored)."""
    values = values or {}
    unknown = set(values) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown moderation categories: {sorted(unknown)}")
    return {name: values.get(name) for name in CATEGORIES}
