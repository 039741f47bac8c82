"""A fixed probe set for parity checks: multi-turn, long, non-ASCII, empty-ish responses.

Each probe is one conversation with several responses, so rank agreement can be
measured on every pair of responses to the same conversation.
"""

from __future__ import annotations

from itertools import combinations

from engine.types import Item, conversation

_LONG_CONTEXT = " ".join(
    f"Paragraph {i}: the committee reviewed budget line {i * 7} and deferred item {i + 3} to the next meeting."
    for i in range(40)
)

PROBES: list[tuple[list[dict[str, str]] | str, list[str]]] = [
    ("What is the capital of France?",
     ["Paris.", "The capital of France is Paris.", "Lyon.", "I don't know."]),
    ("Write a haiku about autumn.",
     ["Crimson leaves drifting\nquiet rivers carry them\nthe year exhales slow",
      "Autumn is a season.", "", "Leaves fall. Cold. The end of summer, which was warm."]),
    ([{"role": "system", "content": "You are a terse assistant."},
      {"role": "user", "content": "How many legs does a spider have?"},
      {"role": "assistant", "content": "Eight."},
      {"role": "user", "content": "And an insect?"}],
     ["Six.", "Insects have six legs.", "Eight, like spiders.", "."]),
    ("Übersetze bitte: 'Good morning, how are you?'",
     ["Guten Morgen, wie geht es dir?", "Bonjour, comment ça va ?", "Guten Abend.", "wie geht's"]),
    ("用一句话介绍你自己。",
     ["我是一个乐于助人的人工智能助手。", "I am an assistant.", "你好！", "🙂"]),
    ("Is it safe to mix bleach and ammonia for cleaning?",
     ["No. Mixing them releases toxic chloramine gas; use one product at a time and ventilate.",
      "Yes, it makes a stronger cleaner.", "Maybe.", "Never mix cleaning products without reading labels."]),
    (f"Summarise the minutes below in one sentence.\n\n{_LONG_CONTEXT}",
     ["The committee reviewed forty budget lines and deferred several items.",
      "Nothing happened.", "The minutes list paragraphs.", " "]),
    ("Compute 17 * 23.", ["391", "17 * 23 = 391.", "401", "It is 391 because 17*20=340 and 17*3=51."]),
    ([{"role": "user", "content": "Give me a Python one-liner to reverse a string s."}],
     ["s[::-1]", "''.join(reversed(s))", "s.reverse()", "reverse(s)"]),
    ("Tell me a joke about databases.",
     ["A SQL query walks into a bar, sees two tables and asks: may I join you?",
      "Databases are not funny.", "Knock knock.", "\n\n\n"]),
]


def probe_items() -> tuple[list[Item], list[tuple[int, int]]]:
    """Items in a flat list, and the index pairs (responses to the same conversation)."""
    items: list[Item] = []
    pairs: list[tuple[int, int]] = []
    for conv, responses in PROBES:
        c = conversation(conv)
        start = len(items)
        items.extend(Item(c, r) for r in responses)
        pairs.extend(combinations(range(start, start + len(responses)), 2))
    return items, pairs
