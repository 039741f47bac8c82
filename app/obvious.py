"""The obvious cases: a fixed, hand-written list of pairs whose better answer is not in doubt.

A wrong fact, number or unit against the right one; an ignored instruction against a followed
one; a refusal against compliance with a harmful request, and a needless refusal against a
helpful answer to a safe one; a padded wrong answer against a short right one; an off-topic
answer; broken code. The list was written (``app/data/obvious_cases.jsonl``, 41 pairs, the
chosen answer longer in 18) before any model scored it, and it does not change to suit one.

Two readers: the app's demo pair is the case marked ``"demo": true`` (so the screenshot is
not picked for a flattering score), and the default model's card reports its accuracy on the
whole list beside the random and length baselines (``arbiter eval pairwise:PATH`` reads it).
Training data is decontaminated against these prompts, whole and by 13-grams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OBVIOUS_CASES = Path(__file__).with_name("data") / "obvious_cases.jsonl"


@dataclass(frozen=True)
class DemoPair:
    """The app's demo comparison: a conversation and two responses, A the better one."""

    id: str
    conversation: list[dict[str, str]]
    a: str
    b: str


def demo_pair(path: Path = OBVIOUS_CASES) -> DemoPair:
    """The case marked ``"demo": true`` (exactly one); A is its chosen answer."""
    marked = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if raw.strip():
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"{path}, line {n}: not UTF-8") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
            if isinstance(row, dict) and row.get("demo"):
                marked.append((n, row))
    if len(marked) != 1:
        raise ValueError(f"{path}: expected one case marked \"demo\": true, found {len(marked)}")
    n, row = marked[0]
    missing = [k for k in ("id", "conversation", "chosen", "rejected") if k not in row]
    if missing:
        raise ValueError(f"{path}, line {n}: the demo case lacks {', '.join(missing)}")
    return DemoPair(row["id"], list(row["conversation"]), row["chosen"], row["rejected"])
