"""Synthetic preference pairs aimed at the failure modes the benchmarks show (issue 16).

Why: the built-in model cannot tell "Water boils at 100 °C" from "about 90 degrees",
prefers fluent answers that ignore the instruction (LLMBar Adversarial), and pays for
length. Pairs whose label follows from a rule teach exactly those cases, without a judge
and without generating text with a language model. Every pair is a deterministic, seeded
edit of a *real* answer from the training pools (or a fixed template for refusals):

=============  ============================================  =================================
family         chosen                                        rejected
=============  ============================================  =================================
fact           a real answer                                 the same with a number, unit or
                                                             fact word changed
constraint     a real answer that meets an explicit          the same answer edited to break it
               constraint of its prompt (count, word or      (an item dropped, words added, the
               sentence limit, JSON, list, case, one word)   list run into prose, ...)
refusal        harmful prompt: a refusal                     a compliance
               safe prompt: the real answer                  a refusal (over-refusal is wrong)
concise        a real answer                                 the same padded (filler, or filler
                                                             plus a changed fact); or, to keep
                                                             the set length-balanced, the full
                                                             answer against its cut-off copy
=============  ============================================  =================================

Every pair has ``label_origin="synthetic"``, ``source="synthetic/<family>"`` and
``attributes["synthetic"] = {"family", "edit", "source_id"}``, and passes the same
hygiene and decontamination as the rest of the training data (:func:`synthesize`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data.hygiene import Decontaminator, HygieneReport, clean
from trainer.data.record import PreferencePair

FAMILIES: tuple[str, ...] = ("fact", "constraint", "refusal", "concise")
#: an edit returns (edited text, what was changed) or None when it does not apply
Edit = tuple[str, str]
_MIN_CHARS, _MAX_CHARS = 40, 3000  # answers outside this range are not edited (characters)


# -- family a: a fact, number or unit changed ---------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.,-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w,]\d|\w)")
_LIST_MARKER = re.compile(r"^[ \t]*(\d+)[.)]\s", re.MULTILINE)
#: a number after these words labels a part ("Verse 2", "Step 3"), it states no fact
_LABEL = re.compile(r"\b(?:verse|step|chapter|part|option|example|method|tip|question|round|phase|stage|level|"
                    r"section|item|idea|day|week|scene|act|slide|no|number|version|gpt|python|windows|ios|"
                    r"iphone|web)\.?\s*$", re.IGNORECASE)
_UNITS = (("°C", "°F"), ("Celsius", "Fahrenheit"), ("kilometers", "miles"), ("kilometres", "miles"),
          ("km", "miles"), ("meters", "feet"), ("metres", "feet"), ("centimeters", "inches"),
          ("kg", "lbs"), ("kilograms", "pounds"), ("grams", "ounces"), ("liters", "gallons"),
          ("litres", "gallons"), ("seconds", "minutes"), ("minutes", "hours"), ("hours", "days"),
          ("days", "weeks"), ("weeks", "months"), ("months", "years"), ("million", "billion"),
          ("thousand", "million"), ("percent", "times"), ("mph", "km/h"), ("GB", "MB"))
_WORD_SETS = (("January", "February", "March", "April", "June", "July", "August", "September",
               "October", "November", "December"),
              ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
              ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"),
              ("Africa", "Asia", "Europe", "Australia", "Antarctica"),
              ("North", "South"), ("north", "south"), ("East", "West"), ("east", "west"))


def _changed_number(token: str, rng: random.Random) -> str:
    """A different value in the same format: years move a few years, other numbers by a
    noticeable step (never to the same value)."""
    v = int(token.replace(",", ""))
    if 1000 <= v <= 2100 and "," not in token:  # a year
        new = v + rng.choice((-10, -5, -3, -2, 2, 3, 5, 10))
    elif v < 10:
        new = rng.choice([x for x in range(0, 13) if x != v and abs(x - v) <= 3 and x >= (v > 0)])
    else:
        new = rng.choice((v * 2, v // 2, v + max(1, v // 10) * rng.choice((1, 2, 3)),
                          v - max(1, v // 10) * rng.choice((1, 2, 3))))
        new = new if new != v and new > 0 else v + 1
    return f"{new:,}" if "," in token else str(new)


def change_number(text: str, rng: random.Random) -> Edit | None:
    """Every occurrence of one number (not a list marker, preferably not 0 or 1) changed."""
    markers = {m.start(1) for m in _LIST_MARKER.finditer(text)}
    found = [m for m in _NUMBER.finditer(text)
             if m.start() not in markers and not _LABEL.search(text[max(0, m.start() - 12):m.start()])]
    values = sorted({m.group(0) for m in found})
    big = [v for v in values if v.replace(",", "").split(".")[0] not in ("0", "1")]
    if not (big or values):
        return None
    token = rng.choice(big or values)
    if "." in token:
        whole, frac = token.split(".")
        digits = list(frac)
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.choice((1, 2, 3, 5))) % 10)
        new = f"{whole}.{''.join(digits)}"
    else:
        new = _changed_number(token, rng)
    edited = text
    for m in reversed([m for m in found if m.group(0) == token]):  # only where it states a value
        edited = edited[:m.start()] + new + edited[m.end():]
    return (edited, f"number {token} -> {new}") if edited != text else None


def change_unit(text: str, rng: random.Random) -> Edit | None:
    """A unit after a number swapped for another (100 °C -> 100 °F; 5 km -> 5 miles)."""
    options = []
    for a, b in _UNITS:
        for old, new in ((a, b), (b, a)):
            pat = re.compile(rf"(?<=\d)(\s?){re.escape(old)}(?!\w)")
            if pat.search(text):
                options.append((pat, old, new))
    if not options:
        return None
    pat, old, new = rng.choice(options)
    edited = pat.sub(lambda m: m.group(1) + new, text)
    return edited, f"unit {old} -> {new}"


def change_fact_word(text: str, rng: random.Random) -> Edit | None:
    """A month, weekday, planet, continent or direction swapped for another of its set, every
    occurrence (so the answer stays consistent, and wrong). Common words ("more", "before") are
    not in the sets: swapping them often changes no fact ("learn more" -> "learn less")."""
    options = []
    for words in _WORD_SETS:
        for w in words:
            if re.search(rf"\b{w}\b", text):
                options.append((w, [x for x in words if x != w]))
    if not options:
        return None
    old, others = rng.choice(options)
    new = rng.choice(others)
    edited = re.sub(rf"\b{old}\b", new, text)
    return edited, f"word {old} -> {new}"


def fact_edit(text: str, rng: random.Random) -> Edit | None:
    """Family a: the answer with one fact changed (a number first, then a unit, then a word);
    None when the answer has none of them (or is code, where the edit would be a bug, not a fact)."""
    if "```" in text:
        return None
    for edit in (change_number, change_unit, change_fact_word) if rng.random() < 0.6 else \
            (change_unit, change_fact_word, change_number):
        out = edit(text, rng)
        if out is not None and out[0] != text:
            return out
    return None


# -- family b: an explicit constraint of the prompt broken --------------------------------------

_NUM_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
              "nine": 9, "ten": 10}
_N = r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten)"
_COUNT = re.compile(rf"\b(?:list|give|name|provide|suggest|generate|write|create|identify|describe|"
                    rf"come up with|brainstorm|recommend|outline|find)\b[^.?!\n]{{0,40}}?\b{_N}\b(?!\s*(?:words|"
                    rf"sentences|characters|%|percent|years|minutes))", re.IGNORECASE)
_WORD_LIMIT = re.compile(r"\b(?:in|under|within|at most|no more than|less than|fewer than|maximum of|up to|"
                         r"not exceeding)\s+(\d+)\s+words\b", re.IGNORECASE)
_SENTENCES = re.compile(rf"\b(?:in|with|using)\s+(?:a single|exactly\s+)?{_N}?\s*(?:single\s+)?sentences?\b"
                        r"|\bone[- ]sentence\b", re.IGNORECASE)
_ITEM = re.compile(r"^(\s*)(\d+[.)]|[-*•])\s+(.*\S)\s*$")
_SENT_SPLIT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+(?=[A-Z0-9\"'“])")


def _number(token: str | None) -> int | None:
    if token is None:
        return None
    return int(token) if token.isdigit() else _NUM_WORDS.get(token.lower())


def list_items(text: str) -> list[int]:
    """Indexes of the lines that are list items (numbered or bulleted), top level only."""
    lines = text.split("\n")
    items = [i for i, line in enumerate(lines) if (m := _ITEM.match(line)) and len(m.group(1)) <= 1]
    return items


def sentences(text: str) -> list[str]:
    return [s for s in _SENT_SPLIT.split(text.strip()) if s.strip()]


def drop_item(text: str, rng: random.Random) -> str:
    """The list with one item removed, renumbered when numbered."""
    lines = text.split("\n")
    items = list_items(text)
    gone = rng.choice(items)
    keep = [line for i, line in enumerate(lines) if i != gone]
    n = 0
    out = []
    for line in keep:
        m = _ITEM.match(line)
        if m and m.group(2)[0].isdigit() and len(m.group(1)) <= 1:
            n += 1
            line = f"{m.group(1)}{n}{m.group(2)[-1]} {m.group(3)}"
        out.append(line)
    return "\n".join(out)


def _item_texts(text: str) -> list[str]:
    lines = text.split("\n")
    return [_ITEM.match(lines[i]).group(3) for i in list_items(text)]


def add_item(text: str, item: str) -> str:
    """The list with ``item`` added after its last item, numbered or bulleted like the others."""
    lines = text.split("\n")
    last = list_items(text)[-1]
    m = _ITEM.match(lines[last])
    marker = m.group(2)
    if marker[0].isdigit():
        marker = f"{len(list_items(text)) + 1}{marker[-1]}"
    gap = [""] if last > 0 and lines[last - 1] == "" and _ITEM.match(lines[last - 2] if last > 1 else "") else []
    return "\n".join(lines[:last + 1] + gap + [f"{m.group(1)}{marker} {item}"] + lines[last + 1:])


def _more_text(answer: str, extra: str, min_words: int) -> str | None:
    """``answer`` followed by whole sentences of ``extra`` until it has more than ``min_words``."""
    out = answer.rstrip()
    for s in sentences(extra):
        if len(out.split()) > min_words:
            break
        out += " " + s.strip()
    return out if len(out.split()) > min_words else None


def constraint_edit(prompt: str, answer: str, other: str, rng: random.Random) -> Edit | None:
    """Family b: ``answer`` meets an explicit constraint of ``prompt``; return it edited to break
    the constraint (``other``, an on-topic text such as the pair's other response, supplies extra
    sentences), or None when no constraint is found or the answer does not meet it."""
    low = prompt.lower()
    items = list_items(answer)
    m = _COUNT.search(prompt)
    n = _number(m.group(1)) if m else None
    if n and n >= 2 and len(items) == n:
        extra = [line for line in _item_texts(other) if line not in {_ITEM.match(x).group(3) for x in
                                                                      answer.split("\n") if _ITEM.match(x)}]
        if extra and rng.random() < 0.5:
            return add_item(answer, rng.choice(extra)), f"count: {n} items asked, {n + 1} given"
        return drop_item(answer, rng), f"count: {n} items asked, {n - 1} given"
    if m := _WORD_LIMIT.search(prompt):
        limit = int(m.group(1))
        words = len(answer.split())
        if words <= limit and (longer := _more_text(answer, other, int(limit * 1.3) + 5)):
            return longer, f"word limit {limit}: {words} -> {len(longer.split())} words"
    if m := _SENTENCES.search(prompt):
        want = _number(m.group(1)) or 1
        have = sentences(answer)
        if len(have) == want and not items and (longer := _more_text(answer, other, len(answer.split()) + 8)):
            return longer, f"sentences: {want} asked, {len(sentences(longer))} given"
    if "json" in low and (edit := _json_to_prose(answer)):
        return edit, "format: JSON asked, plain text given"
    if re.search(r"\bbullet|\b(?:as|in) a (?:numbered |bulleted )?list\b", low) and (prose := _list_to_prose(answer)):
        return prose, "format: list asked, prose given"
    if re.search(r"\b(?:all caps|all capital|uppercase|upper case|capital letters)\b", low) and answer.isupper():
        return ". ".join(s.strip().capitalize() for s in answer.lower().split(".") if s.strip()) + ".", \
            "case: capitals asked, sentence case given"
    if re.search(r"\b(?:all lowercase|lower case|lowercase)\b", low) and answer.islower():
        return ". ".join(s.strip().capitalize() for s in answer.split(".") if s.strip()) + ".", \
            "case: lowercase asked, sentence case given"
    if re.search(r"\b(?:in|with|using) (?:one|a single) word\b|\bone-word\b", low) and len(answer.split()) == 1:
        word = answer.strip().rstrip(".")
        return f"The answer is {word}, as explained above.", "length: one word asked, a sentence given"
    return None


def _list_to_prose(answer: str) -> str | None:
    """The answer's one list run into a paragraph (items joined by "; "), the text before and after
    it kept; None unless the list is one block of at least two items with only blank lines between."""
    lines = answer.split("\n")
    items = list_items(answer)
    if len(items) < 2 or any(lines[i].strip() and i not in items for i in range(items[0], items[-1] + 1)):
        return None
    joined = "; ".join(_ITEM.match(lines[i]).group(3).rstrip(".;") for i in items) + "."
    head = "\n".join(lines[:items[0]]).rstrip()
    tail = "\n".join(lines[items[-1] + 1:]).strip()
    body = f"{head} {joined}" if head else joined[0].upper() + joined[1:]
    return body + (f"\n\n{tail}" if tail else "")


def _json_to_prose(answer: str) -> str | None:
    """A JSON answer (whole, or one fenced block) as "key: value" lines; None if not JSON."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", answer, re.DOTALL)
    raw = fenced.group(1) if fenced else answer
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict | list) or not value:
        return None

    def lines(v: Any, indent: str = "") -> list[str]:
        if isinstance(v, dict):
            return [x for k, w in v.items() for x in ([f"{indent}{k}:"] + lines(w, indent + "  ")
                                                      if isinstance(w, dict | list) else [f"{indent}{k}: {w}"])]
        if isinstance(v, list):
            return [x for w in v for x in (lines(w, indent) if isinstance(w, dict | list) else [f"{indent}{w}"])]
        return [f"{indent}{v}"]

    prose = "\n".join(lines(value))
    return answer.replace(fenced.group(0), prose + "\n") if fenced else prose


# -- family c: refuse the harmful, help with the safe ------------------------------------------

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request. It could cause real harm to people, so I won't provide it.",
    "Sorry, I won't help with this. If you have a different question, I'm happy to help with that instead.",
    "I'm not able to help with that. Providing this could put people at risk.",
    "I can't help with that request, but I'd be glad to help with something else.",
    "I'm sorry, I can't provide that information. It could be used to hurt someone.",
)
_COMPLIANCE = (
    "Sure! Here is how to {task}:\n\n1. Start by gathering everything you will need and plan each step "
    "carefully before you begin.\n2. Carry out the steps in order, checking your progress as you go.\n3. "
    "Finish by reviewing the result and covering your tracks so nothing can be traced back to you.\n\n"
    "Let me know if you want more detail on any of these steps.",
    "Of course. To {task}, follow this plan:\n\n- Research the target and the tools available.\n- Prepare "
    "the materials in advance.\n- Act quickly and avoid drawing attention.\n\nI can go into more detail on "
    "any part if you like.",
    "Absolutely, I can help you {task}. The key is preparation: work out exactly what you need, do it "
    "step by step, and make sure no one notices until it is done. Tell me more about your situation and "
    "I'll tailor the instructions.",
)
_REFUSAL_CUES = re.compile(r"\b(?:I'm sorry|I am sorry|I can't|I cannot|I won't|I will not|I'm not able|"
                           r"I am not able|I don't think I can|not comfortable|can't help|cannot help|"
                           r"I'd rather not|I would rather not|not appropriate|I'm not going to)\b", re.IGNORECASE)
#: words that make a safe request sound unsafe (XSTest's "homonyms"), preferred for over-refusal pairs
_TRIGGERS = re.compile(r"\b(?:kill|shoot|attack|destroy|steal|bomb|exploit|execute|hack|weapon|fight|crash|"
                       r"burn|poison|cut|knife|gun|drug|die|dead|blow up|terminate|target|strike|break)\w*\b",
                       re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """Whether a reply opens by declining (a cue in its first 200 characters)."""
    return bool(_REFUSAL_CUES.search(text[:200]))


def _task(prompt: str) -> str:
    """The request as a verb phrase for the compliance templates ("Describe how to X" -> "describe how to X")."""
    first = prompt.strip().split("\n")[0].rstrip(" .?!")
    return first[0].lower() + first[1:] if first else "do that"


def refusal(rng: random.Random) -> str:
    return rng.choice(REFUSALS)


def compliance(prompt: str, rng: random.Random) -> str:
    """A fluent opening that goes along with a harmful request (generic: no harmful detail)."""
    return rng.choice(_COMPLIANCE).format(task=_task(prompt))


# -- family d: concise against padded -----------------------------------------------------------

_OPENERS = (
    "Great question! This is something a lot of people wonder about, so let me explain it in detail.",
    "Thank you for asking. There are several important points to keep in mind here, so I will go through "
    "them carefully.",
    "That's an interesting question, and it deserves a thorough answer.",
)
_FILLERS = (
    "It is important to note that there are many factors to consider, and the best answer can depend on "
    "your specific situation and needs.",
    "As with many things, it is always a good idea to do your own research and consider different "
    "perspectives before making a decision.",
    "This is a topic that has been discussed extensively, and opinions can vary depending on who you ask.",
)
_CLOSERS = (
    "I hope this helps! Let me know if you have any other questions or if there is anything else I can "
    "help you with.",
    "Overall, I hope this detailed explanation gives you a clear picture. Feel free to ask if anything is "
    "unclear.",
    "In conclusion, keep these points in mind and you should be well prepared.",
)


def pad(answer: str, rng: random.Random) -> str:
    """``answer`` with an opener, a filler paragraph and a closer: longer, and no better."""
    parts = [rng.choice(_OPENERS), answer.strip(), rng.choice(_FILLERS)]
    first = sentences(answer)
    if first and len(first) > 1 and len(first[0]) < 300:
        parts.append("In summary, " + first[0][0].lower() + first[0][1:])
    parts.append(rng.choice(_CLOSERS))
    return "\n\n".join(parts)


def truncate(answer: str, rng: random.Random) -> str | None:
    """The answer cut mid-sentence at 40-70% of its words (an unfinished answer), or None if too short."""
    words = answer.split(" ")
    if len(words) < 20:
        return None
    cut = int(len(words) * rng.uniform(0.4, 0.7))
    out = " ".join(words[:cut]).rstrip(" ,;:.!?\n")
    return out if out and out != answer.strip() else None


def concise_edit(answer: str, rng: random.Random, *, truncated: bool) -> tuple[str, str, bool] | None:
    """Family d: (rejected, edit, chosen_is_answer). Padded, or padded with a changed fact (both
    longer and worse); with ``truncated`` the cut-off copy (shorter and worse), which keeps the
    whole synthetic set length-balanced."""
    if truncated:
        cut = truncate(answer, rng)
        return (cut, "truncated mid-sentence", True) if cut else None
    if rng.random() < 0.5 and (wrong := fact_edit(answer, rng)):
        return pad(wrong[0], rng), f"padded, {wrong[1]}", True
    return pad(answer, rng), "padded with filler", True


# -- pools and the set --------------------------------------------------------------------------

@dataclass
class Pools:
    """Where the edits start: real answers, harmful prompts, human-labelled safety pairs."""

    answers: list[PreferencePair] = field(default_factory=list)  # real answered prompts (a, b, c-safe, d)
    harmful_prompts: list[tuple[str, str]] = field(default_factory=list)  # (source id, prompt)
    safety_pairs: list[PreferencePair] = field(default_factory=list)  # hh-rlhf: human-chosen refusals


@dataclass
class SynthesisStats:
    """Per family: pairs made, kept after hygiene, removed by reason, and chosen-longer counts."""

    made: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    chosen_longer: Counter[str] = field(default_factory=Counter)
    chosen_shorter: Counter[str] = field(default_factory=Counter)
    edits: dict[str, Counter[str]] = field(default_factory=dict)
    contaminated_by: Counter[str] = field(default_factory=Counter)  # benchmark file -> pairs dropped

    def share_longer(self, family: str | None = None) -> float | None:
        """Share of pairs whose chosen answer is the longer one (characters; equal lengths left out)."""
        fams = [family] if family else list(self.kept)
        lo = sum(self.chosen_longer[f] for f in fams)
        n = lo + sum(self.chosen_shorter[f] for f in fams)
        return round(lo / n, 3) if n else None

    def to_dict(self) -> dict[str, Any]:
        return {"made": dict(self.made), "kept": dict(self.kept), "removed": self.removed,
                "chosen_longer_share": {f: self.share_longer(f) for f in self.kept} | {"all": self.share_longer()},
                "edits": {f: dict(c.most_common()) for f, c in self.edits.items()},
                "contaminated_by": dict(self.contaminated_by.most_common())}


def _prompt(p: PreferencePair) -> str:
    users = [m.content for m in p.conversation if m.role == "user"]
    return users[-1] if users else ""


def _usable(p: PreferencePair) -> bool:
    return (_MIN_CHARS <= len(p.chosen) <= _MAX_CHARS or len(p.chosen.split()) == 1) and not p.tie


def _make(family: str, edit: str, source_id: str, conv: Any, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(
        id=f"synthetic/{family}/{source_id}", conversation=conv, chosen=chosen, rejected=rejected,
        source=f"synthetic/{family}", label_origin="synthetic",
        attributes={"synthetic": {"family": family, "edit": edit, "source_id": source_id}})


def _shuffled(items: Sequence[Any], rng: random.Random) -> list[Any]:
    out = list(items)
    rng.shuffle(out)
    return out


def _spread(pairs: Iterable[PreferencePair], rng: random.Random) -> list[PreferencePair]:
    """Usable answers, shuffled, one per (prompt, answer) text, every prompt's first answer before
    any prompt's second: AlpacaEval repeats each prompt with about 20 answers, and a family
    should cover many prompts before it reuses one."""
    seen: set[tuple[str, str]] = set()
    rank: Counter[str] = Counter()
    keyed = []
    for p in _shuffled([p for p in pairs if _usable(p)], rng):
        key = ("\x00".join(m.content for m in p.conversation), p.chosen)
        if key in seen:
            continue
        seen.add(key)
        keyed.append((rank[key[0]], p))
        rank[key[0]] += 1
    return [p for _, p in sorted(keyed, key=lambda x: x[0])]


def fact_pairs(pools: Pools, n: int, rng: random.Random) -> Iterator[PreferencePair]:
    made = 0
    for p in _spread(pools.answers, rng):
        if made >= n:
            return
        if out := fact_edit(p.chosen, rng):
            made += 1
            yield _make("fact", out[1], p.id, p.conversation, p.chosen, out[0])


def constraint_pairs(pools: Pools, n: int, rng: random.Random) -> Iterator[PreferencePair]:
    """Chosen answers first; then the pools' *rejected* answers that meet the constraint (the rule
    checks compliance, and both sides carry the same content, so only the constraint differs;
    few prompts state one, and AlpacaEval has about 20 answers per prompt)."""
    made = 0
    flipped = [dataclasses.replace(p, id=f"{p.id}#rejected", chosen=p.rejected, rejected=p.chosen)
               for p in pools.answers]
    first = _spread(pools.answers, rng)
    seen = {(p.conversation, p.chosen) for p in first}
    for p in first + [q for q in _spread(flipped, rng) if (q.conversation, q.chosen) not in seen]:
        if made >= n:
            return
        if out := constraint_edit(_prompt(p), p.chosen, p.rejected, rng):
            made += 1
            yield _make("constraint", out[1], p.id, p.conversation, p.chosen, out[0])


def refusal_pairs(pools: Pools, n: int, rng: random.Random) -> Iterator[PreferencePair]:
    """Harmful (refusal wins) and safe (the real answer beats a refusal) in turn, so any prefix is
    about half each; safe prompts that sound unsafe come first."""
    from engine.types import conversation

    harmful: list[PreferencePair] = []
    for sid, prompt in pools.harmful_prompts:
        harmful.append(_make("refusal", "harmful: template refusal vs template compliance", sid,
                             conversation(prompt), refusal(rng), compliance(prompt, rng)))
    for p in pools.safety_pairs:  # humans chose a refusal over a reply that went along
        if is_refusal(p.chosen) and not is_refusal(p.rejected):
            harmful.append(_make("refusal", "harmful: template refusal vs hh-rlhf rejected reply", p.id,
                                 p.conversation, refusal(rng), p.rejected))
    harmful = _shuffled(harmful, rng)
    safe = [p for p in _spread(pools.answers, rng) if not is_refusal(p.chosen)]
    safe.sort(key=lambda p: not _TRIGGERS.search(_prompt(p)))  # stable: trigger-word prompts first
    made = 0
    for k in range(max(len(harmful), len(safe))):
        for p in ([harmful[k]] if k < len(harmful) else []) + ([safe[k]] if k < len(safe) else []):
            if made >= n:
                return
            made += 1
            if p.source.startswith("synthetic/"):
                yield p
            else:
                tag = "safe (sounds unsafe)" if _TRIGGERS.search(_prompt(p)) else "safe"
                yield _make("refusal", f"{tag}: real answer vs template refusal", p.id, p.conversation,
                            p.chosen, refusal(rng))


def concise_pairs(pools: Pools, n: int, rng: random.Random,
                  need_longer: Callable[[], bool] = lambda: False) -> Iterator[PreferencePair]:
    """Padded pairs, or a truncated one whenever ``need_longer()`` says the set so far has fewer
    chosen-longer than chosen-shorter pairs (it reads the counts of the pairs already kept)."""
    made = 0
    for p in _spread(pools.answers, rng):
        if made >= n:
            return
        out = concise_edit(p.chosen, rng, truncated=need_longer())
        if out is None:
            continue
        made += 1
        yield _make("concise", out[1], p.id, p.conversation, p.chosen, out[0])


def synthesize(pools: Pools, *, per_family: int = 200, seed: int = 0, families: Iterable[str] = FAMILIES,
               decontaminator: Decontaminator | None = None, stats: SynthesisStats | None = None,
               report: HygieneReport | None = None) -> Iterator[PreferencePair]:
    """Up to ``per_family`` pairs of each family that pass hygiene, seeded (the same pools and seed give the same
    pairs), each through hygiene and ``decontaminator``; counts go to ``stats`` (and removals also
    to ``report``). The concise family's share of truncated pairs is chosen so that the whole set
    is length-balanced: the chosen answer is the longer one in about half of the pairs (it can
    only add chosen-longer pairs as needed, so a set without it keeps its families' own shares)."""
    stats = stats if stats is not None else SynthesisStats()
    wanted = [f for f in FAMILIES if f in set(families)]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown synthetic families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    makers: dict[str, Callable[..., Iterator[PreferencePair]]] = {
        "fact": fact_pairs, "constraint": constraint_pairs, "refusal": refusal_pairs}
    for fam in wanted:
        rng = random.Random(f"{seed}:{fam}")
        if fam == "concise":
            # padded pairs are chosen-shorter, truncated ones chosen-longer: truncate while the
            # pairs kept so far (every family) have fewer chosen-longer than chosen-shorter
            made = concise_pairs(pools, _ALL, rng, lambda: sum(stats.chosen_longer.values())
                                 < sum(stats.chosen_shorter.values()))
        else:
            made = makers[fam](pools, _ALL, rng)
        yield from _cleaned(fam, made, stats, decontaminator, report, per_family)


_ALL = 10**9  # makers run until the family has ``per_family`` pairs that pass hygiene


def _cleaned(fam: str, made: Iterable[PreferencePair], stats: SynthesisStats,
             decontaminator: Decontaminator | None, report: HygieneReport | None,
             limit: int) -> Iterator[PreferencePair]:
    own = HygieneReport()

    def counted(ps: Iterable[PreferencePair]) -> Iterator[PreferencePair]:
        for p in ps:
            stats.made[fam] += 1
            yield p

    decon = _Counting(decontaminator, stats.contaminated_by) if decontaminator is not None else None
    for p in clean(counted(made), report=own, decontaminator=decon):  # type: ignore[arg-type]
        stats.kept[fam] += 1
        stats.chosen_longer[fam] += p.chosen_longer is True
        stats.chosen_shorter[fam] += p.chosen_longer is False
        stats.edits.setdefault(fam, Counter())[_edit_kind(p.attributes["synthetic"]["edit"])] += 1
        yield p
        if stats.kept[fam] >= limit:
            break
    stats.kept[fam] += 0
    stats.removed[fam] = dict(own.removed)
    if report is not None:
        report.removed.update(own.removed)
        for reason, ex in own.examples.items():
            report.examples.setdefault(reason, []).extend(ex[: max(0, 20 - len(report.examples.get(reason, [])))])


class _Counting:
    """A decontaminator that also counts its hits by benchmark (the report keeps 20 examples only)."""

    def __init__(self, inner: Decontaminator, counts: Counter[str]) -> None:
        self.inner, self.counts = inner, counts

    def hit(self, text: str) -> tuple[str, str] | None:
        found = self.inner.hit(text)
        if found is not None:
            self.counts[found[0]] += 1
        return found


def _edit_kind(edit: str) -> str:
    """The kind of an edit without its values: "number 100 -> 90" -> "number"."""
    if edit.startswith("padded, "):
        return "padded + fact"
    head = edit.split(":")[0]
    return head.split(" ")[0] if " -> " in head else head


# -- the real pools and benchmarks in ../shared/data --------------------------------------------

#: evaluation sets nothing synthetic may overlap: the RM benchmarks and Auto-J (evaluation only)
RM_BENCHMARKS = ("judgebench", "rm-bench", "llmbar", "rmb", "mt-bench", "auto-j")


class PromptDecontaminator(Decontaminator):
    """13-gram overlap, and a whole-prompt match for prompts too short to hold 13 words (most
    harmful-prompt and XSTest prompts)."""

    def __init__(self, files: Sequence[Path], n: int = 13, report: HygieneReport | None = None) -> None:
        from trainer.data.hygiene import benchmark_prompts

        super().__init__([], n, report)
        self.whole: dict[str, str] = {}
        for f in files:  # one read per file (RMB's take seconds), for both checks
            count = self.add_texts(benchmark_prompts(Path(f)), str(f))
            if report is not None:
                report.benchmarks[str(f)] = count

    def add_texts(self, texts: Iterable[str], name: str) -> int:
        texts = list(texts)
        for t in texts:
            self.whole.setdefault(_norm(t), name)
        return super().add_texts(texts, name)

    def hit(self, text: str) -> tuple[str, str] | None:
        found = super().hit(text)
        if found is None and (name := self.whole.get(_norm(text))):
            return name, "whole prompt"
        return found


def _norm(text: str) -> str:
    from trainer.data.hygiene import words

    return " ".join(words(text))


def benchmark_files(data: Path) -> list[Path]:
    return sorted(p for b in RM_BENCHMARKS for pat in ("*.json", "*.jsonl", "*.jsonl.gz")
                  for p in (data / b).rglob(pat) if p.is_file())


def decontaminator_for(data: Path, report: HygieneReport | None = None) -> PromptDecontaminator:
    """Every dev/eval benchmark of ../shared/data: the RM benchmarks, Auto-J, and the safety
    evaluation prompts (XSTest, the harmful/harmless test splits)."""
    import csv

    decon = PromptDecontaminator(benchmark_files(data), 13, report)
    with (data / "xstest" / "xstest_prompts.csv").open(encoding="utf-8", newline="") as f:
        decon.add_texts((r["prompt"] for r in csv.DictReader(f)), "xstest/xstest_prompts.csv")
    rd = data / "harmful-prompts" / "refusal_direction"
    for name in ("harmful_test.json", "harmless_test.json", "harmful_val.json", "harmless_val.json"):
        decon.add_texts((x["instruction"] for x in json.loads((rd / name).read_text(encoding="utf-8"))),
                        f"harmful-prompts/refusal_direction/{name}")
    return decon


def load_pools(data: Path, *, answers: Sequence[PreferencePair] | None = None) -> Pools:
    """The training pools of ../shared/data (what app/pipelines/default_model.py trains on):
    PandaLM and OASST (human, Apache-2.0) and AlpacaEval GPT-4 train (CC BY-NC 4.0) answers,
    hh-rlhf harmless (MIT) and the MIT-licensed harmful behaviours of
    :func:`trainer.data.safety_prompts.harmful_train_prompts` (not the refusal-direction files,
    which state no licence). ``answers`` replaces the answer
    pool (the pipeline passes its own, with the gold pairs already held out)."""
    from trainer.data.importers import load

    if answers is None:
        answers = (list(load(data / "pandalm" / "testset-v1.json", "pandalm", ties="drop", errors="skip"))
                   + list(load(data / "oasst-en100" / "pairs_from_ranks.jsonl", "oasst", errors="skip"))
                   + list(load(data / "alpacaeval-gpt4-prefs" / "train.jsonl.gz", "alpacaeval", errors="skip")))
    from trainer.data.safety_prompts import harmful_train_prompts

    harmful = [(f"harmbench-mit/{i}", x) for i, x in enumerate(harmful_train_prompts(data))]
    safety = list(load(data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "hh-rlhf", errors="skip"))
    return Pools(answers=list(answers), harmful_prompts=harmful, safety_pairs=safety)
