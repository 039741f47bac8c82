"""One preference pair, and reading/writing sets of them as JSONL or parquet, streamed.

A pair is a conversation (the engine's one format: ``{role, content}`` messages, the
last one not an assistant turn) and two candidate next assistant turns, ``chosen``
and ``rejected``. Who decided matters for curation (Skywork-V2 keeps human "gold"
pairs apart from LLM "silver" ones), so every pair carries its ``label_origin`` and
the ids of its labellers.

Files are read row by row (JSONL line by line, parquet row group by row group), so
a set larger than memory streams; only a JSON array (a file starting with ``[``) is
read whole. Every read error is an ``InputError`` naming the file and the line (the
row, for parquet) and the field.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import InputError
from engine.jsonl import parse_json, read_json_or_jsonl
from engine.tabular import read_parquet
from engine.types import Conversation, Message, conversation

#: who decided: people, an LLM judge, a reward model, or a rule (synthetic negatives)
LabelOrigin = Literal["human", "llm", "model", "synthetic", "unknown", "flipped"]
ORIGINS: tuple[str, ...] = ("human", "llm", "model", "synthetic", "unknown", "flipped")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """``chosen`` is preferred to ``rejected`` as the next assistant turn of ``conversation``.

    ``tie`` marks pairs whose labellers saw no winner (kept for evaluation and
    reporting; the Bradley-Terry loss has no use for them and the trainer skips them).
    """

    id: str
    conversation: Conversation
    chosen: str
    rejected: str
    source: str = ""
    label_origin: LabelOrigin = "unknown"
    labellers: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    tie: bool = False

    @property
    def chosen_longer(self) -> bool | None:
        """True/False when the lengths (characters) differ, None when equal: the length-bias axis."""
        a, b = len(self.chosen), len(self.rejected)
        return None if a == b else a > b

    def key(self) -> str:
        """Content hash of (conversation, chosen, rejected): the de-duplication key."""
        h = hashlib.sha256()
        for m in self.conversation:
            h.update(f"{m.role}\x00{m.content}\x01".encode())
        h.update(b"\x02" + self.chosen.encode() + b"\x03" + self.rejected.encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation": [m.to_dict() for m in self.conversation],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
            "label_origin": self.label_origin,
            "labellers": list(self.labellers),
            "attributes": self.attributes,
            "split": self.split,
            "tie": self.tie,
        }

    @staticmethod
    def from_dict(row: Any) -> PreferencePair:
        """The inverse of :meth:`to_dict`; raises InputError naming the bad field."""
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}")
        for name in ("chosen", "rejected"):
            if not isinstance(row.get(name), str):
                raise InputError(f"must be a string; got {type(row.get(name)).__name__}", field=name)
        origin = row.get("label_origin", "unknown")
        if origin not in ORIGINS:
            raise InputError(f"must be one of {', '.join(ORIGINS)}; got {origin!r}", field="label_origin")
        attrs = row.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise InputError("must be an object", field="attributes")
        conv_raw = row.get("conversation")
        if not isinstance(conv_raw, list):
            raise InputError("must be a list of {role, content} messages", field="conversation")
        labellers = row.get("labellers") or []
        if not isinstance(labellers, list):
            raise InputError(f"must be a list of labeller ids; got {type(labellers).__name__}", field="labellers")
        return PreferencePair(
            id=str(row.get("id", "")),
            conversation=conversation(conv_raw),
            chosen=row["chosen"],
            rejected=row["rejected"],
            source=str(row.get("source", "")),
            label_origin=origin,
            labellers=tuple(str(x) for x in labellers),
            attributes=attrs,
            split=str(row.get("split", "train")),
            tie=bool(row.get("tie", False)),
        )


def pair(conv: Iterable[dict[str, Any] | Message] | str, chosen: str, rejected: str, **kw: Any) -> PreferencePair:
    """Build a validated pair (a bare string conversation is one user turn); the id defaults
    to a content hash."""
    p = PreferencePair(id=kw.pop("id", ""), conversation=conversation(conv), chosen=chosen, rejected=rejected, **kw)
    return p if p.id else dataclasses.replace(p, id=p.key()[:16])


# -- files ---------------------------------------------------------------------

def is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet"


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line, parsed value) for each non-blank line (``.gz`` too), or for each
    element of a JSON array (the line it starts on): the engine's reader."""
    return read_json_or_jsonl(path)


def iter_parquet(path: Path, batch_rows: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, row dict), one record batch at a time: the engine's one Parquet reader."""
    return read_parquet(path, batch_rows)


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a JSONL (optionally gzipped) or parquet file, streamed."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", source=str(path))
    return iter_parquet(path) if is_parquet(path) else iter_jsonl(path)


def read_pairs(path: Path) -> Iterator[PreferencePair]:
    """Pairs written by :func:`write_pairs` (our own format), streamed."""
    parquet = is_parquet(Path(path))
    for n, row in iter_rows(path):
        try:
            yield PreferencePair.from_dict(decode_parquet_row(row) if parquet else row)
        except InputError as e:
            raise e.located(str(path), n) from None


def write_pairs(pairs: Iterable[PreferencePair], path: Path, *, batch_rows: int = 1024) -> int:
    """Write JSONL (``.jsonl``/``.jsonl.gz``) or parquet (``.parquet``); returns the count.

    Parquet stores ``conversation``, ``labellers`` and ``attributes`` as JSON strings so
    a free-form attribute dict never fights the schema.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    if not is_parquet(path):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
                count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: pq.ParquetWriter | None = None
    buf: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal writer
        table = pa.Table.from_pylist(buf)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        buf.clear()

    try:
        for p in pairs:
            d = p.to_dict()
            for k in ("conversation", "labellers", "attributes"):
                d[k] = json.dumps(d[k], ensure_ascii=False)
            buf.append(d)
            count += 1
            if len(buf) >= batch_rows:
                flush()
        if buf:
            flush()
        elif writer is None:  # an empty set still gets a readable file
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), path)
    finally:
        if writer is not None:
            writer.close()
    return count


def decode_parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`write_pairs`' JSON-string columns (InputError naming the column)."""
    out = dict(row)
    for k in ("conversation", "labellers", "attributes"):
        if isinstance(out.get(k), str):
            try:
                out[k] = parse_json(out[k])
            except InputError as e:
                raise InputError(e.reason, field=k) from None
    return out
