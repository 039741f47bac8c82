"""Benchmark loaders: every supported file format -> a list of :class:`Record`.

One function per format, each documenting the fields it reads. A bad row raises
``InputError`` naming the file, the row (line for JSONL, item number for a JSON
array) and the field. :func:`detect` recognises a format from a file's first row, so a
folder can be evaluated as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.types import Conversation, conversation
from trainer.data.importers import auto_j_pair, canonical_format, pandalm_pair
from trainer.data.record import PreferencePair
from trainer.eval.items import Record, pair
from trainer.eval.reading import Row, first_row, rows
from trainer.eval.rewardbench import V1_SUBSETS


def _conv(r: Row, *, prompt_field: str = "prompt") -> Conversation:
    """``conversation`` (or ``context``: a list of {role, content}) or a single-turn ``prompt``."""
    for name in ("conversation", "context"):
        if not r.has(name):
            continue
        conv = r.get(name)
        if not isinstance(conv, list):
            raise InputError("must be a list of {role, content} messages", field=name)
        return conversation(conv, system=r.get("system"))
    return conversation(r.text(prompt_field, allow_empty=False), system=r.get("system"))


def _key(r: Row, n: int, *names: str) -> str:
    for name in names:
        v = r.get(name)
        if isinstance(v, str | int) and not isinstance(v, bool):
            return str(v)
    return f"row{n}"


def load_pairwise(path: Path) -> list[Record]:
    """Generic pairs: ``conversation`` (or ``context``) or ``prompt``, ``chosen``, ``rejected``; optional
    ``category`` (or ``subset``) and ``id``."""
    def build(n: int, r: Row) -> Record:
        cat = r.get("category", r.get("subset", ""))
        return pair(_key(r, n, "id"), _conv(r), r.text("chosen"), r.text("rejected"),
                    category=str(cat or ""))
    return rows(path, build)


def load_rewardbench(path: Path) -> list[Record]:
    """RewardBench v1 rows: ``prompt``, ``chosen``, ``rejected``, ``subset`` (+ ``id``)."""
    def build(n: int, r: Row) -> Record:
        return pair(_key(r, n, "id"), _conv(r), r.text("chosen"), r.text("rejected"),
                    category=r.text("subset", allow_empty=False))
    return rows(path, build)


def load_rewardbench2(path: Path) -> list[Record]:
    """RewardBench 2 rows: ``prompt``, ``chosen`` (list), ``rejected`` (list), ``subset``, ``id``.

    Ties rows carry ids ``ref:N`` / ``tied:N`` (upstream's sample_type:prompt_id) and
    several chosen responses; every other subset is one chosen against three rejected.
    """
    def build(n: int, r: Row) -> Record:
        chosen, rejected = r.texts("chosen"), r.texts("rejected")
        return Record(_key(r, n, "id"), _conv(r), tuple(chosen + rejected),
                      (True,) * len(chosen) + (False,) * len(rejected),
                      category=r.text("subset", allow_empty=False))
    return rows(path, build)


def load_rm_bench(path: Path) -> list[Record]:
    """RM-Bench rows: ``id``, ``prompt``, ``chosen[3]``, ``rejected[3]`` in the styles
    (concise, detailed plain, detailed markdown); the domain is ``domain`` when present,
    else the file name (``chat_filtered.json`` -> ``chat``), as upstream splits files."""
    domain_from_name = Path(path).stem.removesuffix("_filtered")

    def build(n: int, r: Row) -> Record:
        chosen, rejected = r.texts("chosen", n=3), r.texts("rejected", n=3)
        return Record(_key(r, n, "id"), _conv(r), tuple(chosen + rejected),
                      (True,) * 3 + (False,) * 3,
                      category=str(r.get("domain") or domain_from_name))
    return rows(path, build)


def load_judgebench(path: Path) -> list[Record]:
    """JudgeBench pairs: ``pair_id``, ``source``, ``question``, ``response_A``, ``response_B``,
    ``label`` ("A>B" or "B>A"). Responses keep their A/B positions: the decision rule
    and the swapped order depend on them."""
    def build(n: int, r: Row) -> Record:
        a_wins = r.choice("label", {"A>B": True, "B>A": False})
        return Record(_key(r, n, "pair_id"), _conv(r, prompt_field="question"),
                      (r.text("response_A"), r.text("response_B")), (a_wins, not a_wins),
                      category=r.text("source"))
    return rows(path, build)


def _answer(r: Row, name: str) -> str:
    v = r.get(name)
    if not isinstance(v, dict) or not isinstance(v.get("answer"), str):
        raise InputError("must be an object with a string 'answer'", field=name)
    return v["answer"]


def load_rmb(path: Path) -> list[Record]:
    """RMB rows, pairwise (``chosen``/``reject``) or Best-of-N (``bon_best``/``loser_list``),
    each with ``conversation_input`` and ``category_path``."""
    def build(n: int, r: Row) -> Record:
        conv_raw = r.get("conversation_input")
        if not isinstance(conv_raw, list):
            raise InputError("must be a list of {role, content} messages", field="conversation_input")
        conv = conversation(conv_raw)
        cat = r.text("category_path")
        if r.has("bon_best"):
            losers = r.get("loser_list")
            if not isinstance(losers, list) or not losers:
                raise InputError("must be a non-empty list of {answer}", field="loser_list")
            answers = []
            for i, loser in enumerate(losers):
                if not isinstance(loser, dict) or not isinstance(loser.get("answer"), str):
                    raise InputError("must be an object with a string 'answer'", field=f"loser_list[{i}]")
                answers.append(loser["answer"])
            return Record(_key(r, n, "bon_uid"), conv, (_answer(r, "bon_best"), *answers),
                          (True,) + (False,) * len(answers), category=cat, extra={"kind": "bon"})
        return pair(_key(r, n, "pair_uid"), conv, _answer(r, "chosen"), _answer(r, "reject"),
                    category=cat, kind="pairwise")
    return rows(path, build)


def load_llmbar(path: Path) -> list[Record]:
    """LLMBar rows: ``input``, ``output_1``, ``output_2``, ``label`` (1 or 2 = the better output).
    The category is the set's folder (``LLMBar/Natural``, ``Processed/MT-Bench``, ...)."""
    p = Path(path)
    category = "/".join(p.parent.parts[-2:]) if p.name == "dataset.json" else p.stem

    def build(n: int, r: Row) -> Record:
        first = r.choice("label", {1: True, 2: False})
        o1, o2 = r.text("output_1"), r.text("output_2")
        chosen, rejected = (o1, o2) if first else (o2, o1)
        return pair(f"row{n}", _conv(r, prompt_field="input"), chosen, rejected, category=category)
    return rows(path, build)


def _from_pair(p: PreferencePair | None, key: str, category: str) -> Record | None:
    """A benchmark record from the preference-data reader's pair (chosen first)."""
    if p is None:
        return None
    return pair(key, p.conversation, p.chosen, p.rejected, category=category, tie=p.tie)


def load_pandalm(path: Path) -> list[Record]:
    """PandaLM test set: ``instruction``, ``input``, ``response1``, ``response2`` and three
    annotators (0 = tie, 1 or 2 = the better response), read by the one PandaLM reader
    (:func:`trainer.data.importers.pandalm_pair`). A majority tie, or no majority, is a
    tie (counted, not scored)."""
    def build(n: int, r: Row) -> Record | None:
        motivation = r.get("motivation_app")
        return _from_pair(pandalm_pair(n, r.row), _key(r, n, "idx"),
                          motivation if isinstance(motivation, str) else "")
    return rows(path, build)


def load_auto_j(path: Path) -> list[Record]:
    """Auto-J pairwise test data: ``prompt``, ``response 1``, ``response 2``, ``label``
    (0 = response 1 better, 1 = response 2 better, 2 = tie), ``scenario``; read by the one
    Auto-J reader (:func:`trainer.data.importers.auto_j_pair`)."""
    def build(n: int, r: Row) -> Record | None:
        p = auto_j_pair(n, r.row, name=Path(path).name)
        return _from_pair(p, f"row{n}", (p.attributes.get("scenario") if p else None) or "")
    return rows(path, build)


def load_ppe(path: Path) -> list[Record]:
    """PPE-style correctness sets: ``prompt`` or ``conversation`` with either ``responses`` +
    ``correct`` (lists) or wide columns ``response_1..N`` + ``score_1..N`` (truthy = correct)."""
    def build(n: int, r: Row) -> Record:
        if r.has("responses"):
            responses = r.texts("responses")
            correct = r.get("correct")
            if not isinstance(correct, list) or len(correct) != len(responses):
                raise InputError("must be a list of booleans, one per response", field="correct")
        else:
            k = 1
            responses, correct = [], []
            while r.has(f"response_{k}"):
                responses.append(r.text(f"response_{k}"))
                if not r.has(f"score_{k}"):
                    raise InputError(f"missing (the correctness of response_{k})", field=f"score_{k}")
                correct.append(r.get(f"score_{k}"))
                k += 1
            if not responses:
                raise InputError("missing: give 'responses' or response_1..N", field="responses")
        good = []
        for i, c in enumerate(correct):
            if not isinstance(c, bool | int | float):
                raise InputError("must be a boolean (or 0/1)", field=f"correct[{i}]")
            good.append(bool(c))
        return Record(_key(r, n, "question_id", "id"), _conv(r), tuple(responses), tuple(good),
                      category=str(r.get("category", r.get("source", "")) or ""))
    return rows(path, build)


LOADERS: dict[str, Callable[[Path], list[Record]]] = {
    "pairwise": load_pairwise,
    "rewardbench": load_rewardbench,
    "rewardbench2": load_rewardbench2,
    "rm-bench": load_rm_bench,
    "judgebench": load_judgebench,
    "rmb": load_rmb,
    "llmbar": load_llmbar,
    "pandalm": load_pandalm,
    "auto-j": load_auto_j,
    "ppe": load_ppe,
}


def detect_row(row: Any) -> str | None:
    """The format a row belongs to, recognised by its fields (None: not a benchmark row)."""
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if {"pair_id", "judgments"} <= keys:
        return "judgebench-rm"
    if {"chosen_score", "rejected_score"} <= keys:
        return "scored-pairs"
    if {"pair_id", "response_A", "response_B", "label"} <= keys:
        return "judgebench"
    if "conversation_input" in keys and ({"chosen", "reject"} <= keys or "bon_best" in keys):
        return "rmb"
    if {"output_1", "output_2", "label"} <= keys:
        return "llmbar"
    if {"response1", "response2", "annotator1"} <= keys:
        return "pandalm"
    if {"response 1", "response 2", "label"} <= keys:
        return "auto-j"
    if ("responses" in keys and "correct" in keys) or {"response_1", "score_1"} <= keys:
        return "ppe"
    if {"chosen", "rejected"} <= keys:
        c, r = row["chosen"], row["rejected"]
        if isinstance(c, list) and isinstance(r, list):
            if len(c) == 3 and len(r) == 3 and "num_correct" not in keys:
                return "rm-bench"
            return "rewardbench2"
        if row.get("subset") in V1_SUBSETS:
            return "rewardbench"
        return "pairwise"
    return None


def detect(path: Path) -> str | None:
    """Recognise a file's format from its first row; None for anything else."""
    if Path(path).suffix not in (".json", ".jsonl"):
        return None
    return detect_row(first_row(Path(path)))


def load(fmt: str, path: Path) -> list[Record]:
    """Records of one file in a named format (an old alias such as ``autoj`` is accepted)."""
    fmt = canonical_format(fmt)
    if fmt not in LOADERS:
        raise InputError(f"unknown benchmark format {fmt!r}; one of {', '.join(LOADERS)}")
    return LOADERS[fmt](Path(path))
