"""Importers: real preference-data formats -> :class:`PreferencePair`, streamed.

Each importer reads one file lazily and raises ``InputError`` naming the file, the
line (the row for parquet; the line an object starts on for JSON arrays) and the
field. :func:`load` picks the importer from the first row when ``fmt="auto"``.

=============  ==========================================================  ==========
format         rows                                                        labels by
=============  ==========================================================  ==========
arbiter        our own :meth:`PreferencePair.to_dict` rows                 as stored
prompt         ``{prompt | conversation, chosen, rejected}`` strings        option
messages       TRL / Skywork-Preference-80K: chosen/rejected message lists  option
hh-rlhf        Anthropic ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcripts     human
oasst          OASST rank pairs (``context, chosen, rejected, *_rank``)     human
pandalm        PandaLM test set, 3 annotators, majority vote                human
auto-j         Auto-J pairwise, label 0 = response 1, 1 = response 2, 2 = tie human
               (``autoj``, the name ``arbiter eval`` used, is an alias)
alpacaeval     AlpacaEval GPT-4 preference set                              llm
=============  ==========================================================  ==========

Every format reads JSONL (``.gz`` too), a JSON array (a file whose first character is
``[``) or parquet. PandaLM and Auto-J rows are parsed here only (:func:`pandalm_pair`,
:func:`auto_j_pair`): evaluation (trainer.eval.loaders) builds its records from the same
pairs, so training and evaluation read the same 999 PandaLM and 1,392 Auto-J rows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.jsonl import read_array
from engine.types import ROLES, Message, conversation
from trainer.data.record import (
    ORIGINS,
    PreferencePair,
    decode_parquet_row,
    is_parquet,
    iter_rows,
)

Importer = Callable[..., Iterator[PreferencePair]]
_ROLE_ALIASES = {"human": "user", "prompter": "user", "gpt": "assistant", "bot": "assistant",
                 "model": "assistant"}


def _text(row: dict[str, Any], name: str) -> str:
    v = row.get(name)
    if name not in row:
        raise InputError("missing", field=name)
    if not isinstance(v, str):
        raise InputError(f"must be a string; got {type(v).__name__}", field=name)
    return v


def _messages(raw: Any, where: str) -> list[Message]:
    """A message list with role aliases (human, prompter, gpt, ...) mapped to ours."""
    if not isinstance(raw, list):
        raise InputError("must be a list of {role, content} messages", field=where)
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise InputError("expected an object with role and content", field=f"{where}[{i}]")
        role = _ROLE_ALIASES.get(m.get("role"), m.get("role"))
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}; got {m.get('role')!r}",
                             field=f"{where}[{i}].role")
        if not isinstance(m.get("content"), str):
            raise InputError("content must be a string", field=f"{where}[{i}].content")
        out.append(Message(role, m["content"]))
    return out


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as dicts, with our parquet encoding undone; a non-object row is an error."""
    parquet = is_parquet(path)
    for n, row in iter_rows(path):
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}", source=str(path), line=n)
        if parquet:
            try:
                row = decode_parquet_row(row)
            except InputError as e:
                raise e.located(str(path), n) from None
        yield n, row


@dataclass
class ImportReport:
    """Rows an importer skipped (``errors="skip"``), each with where and why."""

    read: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "skipped": len(self.skipped), "rows": self.skipped}


def _located(path: Path, gen: Iterator[tuple[int, dict[str, Any]]],
             build: Callable[[int, dict[str, Any]], PreferencePair | None], *,
             errors: str = "raise", report: ImportReport | None = None, **_: Any) -> Iterator[PreferencePair]:
    """Run ``build`` on each row; a bad row raises (located) or, with ``errors="skip"``, is
    recorded in ``report`` and skipped. Real sets have a few such rows (hh-rlhf
    transcripts that diverge before the last turn; a PandaLM response stored as JSON
    ``true``); they are reported, never repaired."""
    if errors not in ("raise", "skip"):
        raise InputError(f"errors must be 'raise' or 'skip'; got {errors!r}")
    for n, row in gen:
        if report is not None:
            report.read += 1
        try:
            p = build(n, row)
        except InputError as e:
            located = e.located(str(path), n)
            if errors == "raise":
                raise located from None
            if report is not None:
                report.skipped.append({"source": str(path), "line": n, "field": e.field, "reason": e.reason})
            continue
        if p is not None:
            yield p


def _origin(value: str) -> Any:
    if value not in ORIGINS:
        raise InputError(f"label origin must be one of {', '.join(ORIGINS)}; got {value!r}")
    return value


# -- formats ---------------------------------------------------------------------

def read_arbiter(path: Path, **opts: Any) -> Iterator[PreferencePair]:
    return _located(path, _rows(path), lambda n, row: PreferencePair.from_dict(row), **opts)


def read_prompt(path: Path, *, source: str | None = None, label_origin: str = "unknown",
                split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """``{prompt, chosen, rejected}`` (or ``conversation`` instead of ``prompt``), strings."""
    origin, src = _origin(label_origin), source or path.name

    def build(n: int, row: dict[str, Any]) -> PreferencePair:
        if "conversation" in row:
            conv = conversation(_messages(row["conversation"], "conversation"), system=_system(row))
        else:
            conv = conversation(_text(row, "prompt"), system=_system(row))
        extra = {k: v for k, v in row.items() if k not in ("prompt", "conversation", "chosen", "rejected",
                                                            "system", "id")}
        return PreferencePair(str(row.get("id", f"{src}:{n}")), conv, _text(row, "chosen"),
                              _text(row, "rejected"), src, origin, (), extra, split)
    return _located(path, _rows(path), build, **opts)


def _split_common(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], Message, Message]:
    """Shared history and the two final assistant turns of two full conversations."""
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1].role != "assistant":
            raise InputError("the last message must be the assistant's response", field=name)
    if chosen[:-1] != rejected[:-1]:
        k = next(i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
        raise InputError(f"chosen and rejected differ before their last turn (at message {k}); "
                         "a preference pair answers one conversation", field=f"rejected[{k}]")
    return chosen[:-1], chosen[-1], rejected[-1]


def read_messages(path: Path, *, source: str | None = None, label_origin: str = "unknown",
                  split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """TRL / Skywork-Preference-80K: ``chosen`` and ``rejected`` are whole conversations
    (history + final assistant turn); TRL's explicit form puts the history in ``prompt``."""
    origin, src = _origin(label_origin), source or path.name

    def build(n: int, row: dict[str, Any]) -> PreferencePair:
        prefix = _messages(row["prompt"], "prompt") if isinstance(row.get("prompt"), list) else []
        if "chosen" not in row or "rejected" not in row:
            raise InputError("missing", field="chosen" if "chosen" not in row else "rejected")
        hist, c, r = _split_common(prefix + _messages(row["chosen"], "chosen"),
                                   prefix + _messages(row["rejected"], "rejected"))
        extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "id")}
        return PreferencePair(str(row.get("id", f"{src}:{n}")), conversation(hist), c.content, r.content,
                              src, origin, (), extra, split)
    return _located(path, _rows(path), build, **opts)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh(transcript: str, where: str) -> list[Message]:
    """``\\n\\nHuman: hi\\n\\nAssistant: hello`` -> [user 'hi', assistant 'hello']."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise InputError("expected a transcript starting with '\\n\\nHuman: '", field=where)
    return [Message("user" if who == "Human" else "assistant", text)
            for who, text in zip(parts[1::2], parts[2::2], strict=True)]


def read_hh_rlhf(path: Path, *, split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    def build(n: int, row: dict[str, Any]) -> PreferencePair:
        hist, c, r = _split_common(parse_hh(_text(row, "chosen"), "chosen"),
                                   parse_hh(_text(row, "rejected"), "rejected"))
        return PreferencePair(f"hh-rlhf/{path.name}:{n}", conversation(hist), c.content, r.content,
                              "hh-rlhf", "human", (), {}, split)
    return _located(path, _rows(path), build, **opts)


def read_oasst(path: Path, *, split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """OASST ranked replies as pairs: the better-ranked reply is chosen (human ranking)."""
    def build(n: int, row: dict[str, Any]) -> PreferencePair:
        conv = conversation(_messages(row.get("context"), "context"))
        attrs = {k: row[k] for k in ("tree_id", "chosen_rank", "rejected_rank") if k in row}
        return PreferencePair(f"oasst/{row.get('tree_id', path.name)}:{n}", conv, _text(row, "chosen"),
                              _text(row, "rejected"), "oasst", "human", (), attrs, split)
    return _located(path, _rows(path), build, **opts)


#: elements of a top-level JSON array with the line each starts on (the engine's reader)
iter_json_array = read_array


def _system(row: dict[str, Any]) -> str | None:
    """The optional ``system`` field: a string, or absent/null; anything else is refused."""
    v = row.get("system")
    if v is not None and not isinstance(v, str):
        raise InputError(f"must be a string; got {type(v).__name__}", field="system")
    return v


def _vote(row: dict[str, Any], name: str, allowed: dict[int, str]) -> int:
    """An integer label, or the same digit as a string (PandaLM's judge files store
    results as "1"); never a bool or a float."""
    v = row.get(name)
    if name not in row:
        raise InputError("missing", field=name)
    if isinstance(v, str) and v.strip() in {str(k) for k in allowed}:
        return int(v.strip())
    if type(v) is not int or v not in allowed:
        choices = ", ".join(f"{k} ({what})" for k, what in allowed.items())
        raise InputError(f"must be one of {choices}; got {v!r}", field=name)
    return v


def _json_scalar_text(row: dict[str, Any], name: str) -> str:
    """A response the dataset stored as a bare JSON value: six PandaLM rows (idx 157 to
    164, "Verify the correctness of the given statement") answer ``true``, a JSON boolean
    where the other responses are text such as "True.". The three annotators judged
    that answer, so the pair is real: its text is the JSON literal, as the file has it."""
    v = row.get(name)
    if isinstance(v, bool | int | float):
        return json.dumps(v)
    return _text(row, name)


def pandalm_pair(n: int, row: dict[str, Any], *, ties: str = "keep", split: str = "train") -> PreferencePair | None:
    """One PandaLM row: three annotators vote 1 or 2 (the better response) or 0 (tie).

    The majority (2 of 3) decides; a majority for 0, or three different votes, is a tie,
    kept with ``tie=True`` (``ties="keep"``) or dropped (``None``, ``ties="drop"``). The
    prompt is the instruction and the input, either of which may be blank (row 467 has
    no instruction), not both.
    """
    votes = [_vote(row, k, {0: "tie", 1: "response1", 2: "response2"})
             for k in ("annotator1", "annotator2", "annotator3")]
    winner, count = Counter(votes).most_common(1)[0]
    tie = count < 2 or winner == 0
    if tie and ties == "drop":
        return None
    extra_input = row.get("input") or ""
    if not isinstance(extra_input, str):
        raise InputError(f"must be a string; got {type(extra_input).__name__}", field="input")
    prompt = "\n\n".join(x for x in (_text(row, "instruction").strip(), extra_input) if x.strip())
    if not prompt:
        raise InputError("is empty, and so is 'input'", field="instruction")
    a, b = _json_scalar_text(row, "response1"), _json_scalar_text(row, "response2")
    chosen, rejected = (b, a) if winner == 2 and not tie else (a, b)
    attrs = {"votes": votes, "idx": row.get("idx"), "cmp_key": row.get("cmp_key"),
             "motivation_app": row.get("motivation_app")}
    return PreferencePair(f"pandalm/{row.get('idx', n)}", conversation(prompt, system=_system(row)), chosen,
                          rejected, "pandalm", "human", ("annotator1", "annotator2", "annotator3"), attrs,
                          split, tie)


def _ties(ties: str) -> str:
    if ties not in ("keep", "drop"):
        raise InputError(f"ties must be 'keep' or 'drop'; got {ties!r}")
    return ties


def read_pandalm(path: Path, *, ties: str = "keep", split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """PandaLM test set (a JSON array, or JSONL): see :func:`pandalm_pair`."""
    ties = _ties(ties)
    return _located(path, _rows(path), lambda n, row: pandalm_pair(n, row, ties=ties, split=split), **opts)


def auto_j_pair(n: int, row: dict[str, Any], *, name: str = "", ties: str = "keep",
                split: str = "train") -> PreferencePair | None:
    """One Auto-J pairwise row: ``label`` 0 = response 1 better, 1 = response 2 better,
    2 = tie (kept with ``tie=True``, or dropped with ``ties="drop"``)."""
    label = _vote(row, "label", {0: "response 1", 1: "response 2", 2: "tie"})
    if label == 2 and ties == "drop":
        return None
    prompt = _text(row, "prompt")
    if not prompt.strip():
        raise InputError("is empty", field="prompt")
    scenario = row.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise InputError(f"must be a string; got {type(scenario).__name__}", field="scenario")
    a, b = _text(row, "response 1"), _text(row, "response 2")
    chosen, rejected = (b, a) if label == 1 else (a, b)
    return PreferencePair(f"auto-j/{name}:{n}", conversation(prompt, system=_system(row)), chosen, rejected,
                          "auto-j", "human", (), {"scenario": scenario}, split, label == 2)


def read_auto_j(path: Path, *, ties: str = "keep", split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """Auto-J pairwise: see :func:`auto_j_pair`."""
    ties = _ties(ties)
    return _located(path, _rows(path),
                    lambda n, row: auto_j_pair(n, row, name=path.name, ties=ties, split=split), **opts)


def read_alpacaeval(path: Path, *, split: str = "train", **opts: Any) -> Iterator[PreferencePair]:
    """AlpacaEval GPT-4 preferences: chosen/rejected already resolved, judged by an LLM."""
    keep = ("chosen_generator", "rejected_generator", "preference", "source_dataset")

    def build(n: int, row: dict[str, Any]) -> PreferencePair:
        annotator = row.get("annotator")
        return PreferencePair(f"alpacaeval/{path.name}:{n}", conversation(_text(row, "prompt")),
                              _text(row, "chosen"), _text(row, "rejected"), "alpacaeval", "llm",
                              (str(annotator),) if annotator else (), {k: row.get(k) for k in keep}, split)
    return _located(path, _rows(path), build, **opts)


FORMATS: dict[str, Importer] = {
    "arbiter": read_arbiter,
    "prompt": read_prompt,
    "messages": read_messages,
    "hh-rlhf": read_hh_rlhf,
    "oasst": read_oasst,
    "pandalm": read_pandalm,
    "auto-j": read_auto_j,
    "alpacaeval": read_alpacaeval,
}

#: old names a command accepted, each mapped to the one name (``arbiter eval --bench autoj:...``)
FORMAT_ALIASES: dict[str, str] = {"autoj": "auto-j"}


def canonical_format(name: str) -> str:
    """The one name of a format, given it or an old alias."""
    return FORMAT_ALIASES.get(name, name)


def detect_format(path: Path) -> str:
    """The format of a file, from its first row's fields."""
    path = Path(path)
    first = next(iter_rows(path), (1, None))[1]
    if not isinstance(first, dict):
        raise InputError("empty, or not a file of JSON objects", source=str(path))
    keys = set(first)
    if "label_origin" in keys and "conversation" in keys:
        return "arbiter"
    if {"annotator1", "response1", "response2"} <= keys:
        return "pandalm"
    if {"response 1", "response 2", "label"} <= keys:
        return "auto-j"
    if {"context", "chosen_rank"} <= keys:
        return "oasst"
    if {"chosen_generator", "annotator", "prompt"} <= keys:
        return "alpacaeval"
    if isinstance(first.get("chosen"), list):
        return "messages"
    if "prompt" in keys or "conversation" in keys:
        return "prompt"
    if isinstance(first.get("chosen"), str) and first["chosen"].startswith("\n\nHuman:"):
        return "hh-rlhf"
    raise InputError(f"unrecognised preference format (fields: {', '.join(sorted(keys))}); "
                     f"give the format explicitly, one of {', '.join(FORMATS)}", source=str(path), line=1)


def load(path: str | Path, fmt: str = "auto", **opts: Any) -> Iterator[PreferencePair]:
    """Pairs from one file, streamed. ``opts`` go to the importer (``ties``, ``split``,
    ``label_origin`` for formats that do not say who labelled them)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", source=str(path))
    name = detect_format(path) if fmt == "auto" else canonical_format(fmt)
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; one of {', '.join(FORMATS)}")
    return FORMATS[name](path, **opts)
