"""The keyword baseline of `arbiter moderate report`: a small, documented list of terms.

A text is flagged when it holds one of :data:`TERMS` as a whole word (case-insensitive; a
trailing ``*`` allows any ending: ``kill*`` matches kill, killed, killing). The list is
deliberately generic (violent, sexual and self-harm vocabulary) and holds no slur.

What it is for: a floor that a model must beat to be worth its cost. Its limits (stated in
every report): it misses anything phrased without these words (threats by implication, hate
without slurs, coded language, any non-English text), and it flags benign uses ("kill a
process", "the shooting schedule of a film", sex education, news about suicide prevention),
which is exactly what the over-flagging sets measure.
"""

from __future__ import annotations

import re
from functools import cache

#: category -> terms (a category not listed uses every term)
TERMS: dict[str, tuple[str, ...]] = {
    "violence": ("kill*", "murder*", "stab*", "shoot*", "bomb*", "behead*", "massacre*", "slaughter*",
                 "torture*", "strangl*", "gun", "guns", "weapon*", "explosive*", "assault*"),
    "sexual": ("sex", "sexual*", "porn*", "nude*", "naked", "orgasm*", "erotic*", "xxx", "fuck*"),
    "self-harm": ("suicid*", "self-harm*", "selfharm*", "cutting myself", "kill myself", "overdos*",
                  "end my life"),
    "harassment": ("idiot*", "stupid", "moron*", "loser*", "worthless", "die"),
}
LIMITS = ("a generic list of violent, sexual, self-harm and insult words (app/moderate/keywords.py, "
          "no slurs), matched as whole words: it misses harm phrased without them and flags "
          "benign uses (\"kill a process\").")


@cache
def _pattern(category: str | None) -> re.Pattern[str]:
    terms = TERMS.get(category or "") or tuple(t for ts in TERMS.values() for t in ts)
    parts = [re.escape(t[:-1]) + r"\w*" if t.endswith("*") else re.escape(t) for t in terms]
    return re.compile(r"\b(?:" + "|".join(parts) + r")\b", re.IGNORECASE)


def hit(text: str, category: str | None = None) -> bool:
    """Whether ``text`` holds a term of ``category``'s group (any term for ``overall``)."""
    return _pattern(None if category == "overall" else category).search(text) is not None
