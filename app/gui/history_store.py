"""Every comparison and ranking the app scored, kept in the user's SQLite database.

The table ``history`` lives in ``arbiter.db`` in the data directory (beside the
engine's tables) on the app's own connection: only the GUI thread writes it, and
every write is one transaction, so a crash never leaves half a row and a row is on
disk before the result is shown as saved.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

import engine
from engine.paths import data_dir
from engine.store import connect, write_transaction
from engine.types import window_fields

COLUMNS = {"id": int, "kind": str, "created": str, "model": str, "format": str, "dtype": str,
           "conversation": str, "responses": str, "scores": str, "result": str, "search": str}


@dataclass(frozen=True)
class Record:
    id: int
    kind: str  # "compare", "best_of_n" or "moderate"
    created: str  # ISO 8601, UTC
    model: str
    format: str
    dtype: str
    conversation: list[dict[str, str]]
    responses: list[str]
    scores: list[float]
    result: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "created": self.created, "model": self.model,
                "format": self.format, "dtype": self.dtype, "conversation": self.conversation,
                "responses": self.responses, "scores": self.scores, "result": self.result}


class HistoryStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else data_dir() / "arbiter.db"
        # WAL and a busy timeout (engine.store.connect): the CLI may write the same file meanwhile
        self.db = sqlite_utils.Database(connect(self.path))
        with write_transaction(self.db.conn):  # BEGIN IMMEDIATE: another process may migrate too
            if "history" not in self.db.table_names():
                self.db["history"].create(COLUMNS, pk="id")
                self.db["history"].create_index(["created"])

    def close(self) -> None:
        self.db.conn.close()

    def _add(self, kind: str, info: engine.ModelInfo, conv: list[dict[str, str]],
             responses: list[str], scores: list[float], result: dict[str, Any]) -> int:
        text = " ".join([info.name, *(m["content"] for m in conv), *responses])
        row = {"kind": kind, "created": datetime.now(UTC).isoformat(timespec="seconds"),
               "model": info.name, "format": info.format, "dtype": info.dtype,
               "conversation": json.dumps(conv, ensure_ascii=False),
               "responses": json.dumps(responses, ensure_ascii=False),
               "scores": json.dumps(scores), "result": json.dumps(result, ensure_ascii=False),
               "search": text.lower()}
        with write_transaction(self.db.conn):
            return self.db["history"].insert(row).last_pk

    def add_comparison(self, info: engine.ModelInfo, conv: list[dict[str, str]], a: str, b: str,
                       c: engine.Comparison) -> int:
        return self._add("compare", info, conv, [a, b], [c.score_a.value, c.score_b.value],
                         c.to_dict() | window_fields([c.score_a, c.score_b]))

    def add_ranking(self, info: engine.ModelInfo, conv: list[dict[str, str]],
                    candidates: list[str], r: engine.Ranking) -> int:
        scores = [0.0] * len(candidates)
        for c in r.candidates:
            scores[c.index] = c.score.value
        by_input = sorted(r.candidates, key=lambda c: c.index)
        return self._add("best_of_n", info, conv, candidates, scores,
                         r.to_dict() | window_fields([c.score for c in by_input]))

    def add_moderation(self, info: engine.ModelInfo, job: dict[str, Any]) -> int:
        """A moderation job: ``job`` holds what reopens it (input, fields, thresholds, the
        output file and M1's job id in ``moderation.db``); its rows stay in the output file."""
        return self._add("moderate", info, [], [str(job.get("input", ""))],
                         [float(job.get("flagged", 0))], job)  # one "score": the flagged count

    def search(self, text: str = "", limit: int = 500) -> list[Record]:
        """Newest first; ``text`` matches the model name, the conversation and the responses."""
        where, params = ("search like ?", [f"%{text.lower()}%"]) if text.strip() else (None, [])
        rows = self.db["history"].rows_where(where, params, order_by="id desc", limit=limit)
        return [self._record(r) for r in rows]

    def get(self, id: int) -> Record:
        return self._record(self.db["history"].get(id))

    def delete(self, ids: list[int]) -> None:
        with write_transaction(self.db.conn):
            for i in ids:
                self.db["history"].delete(i)

    def count(self) -> int:
        return self.db["history"].count

    @staticmethod
    def _record(r: dict[str, Any]) -> Record:
        return Record(r["id"], r["kind"], r["created"], r["model"], r["format"], r["dtype"],
                      json.loads(r["conversation"]), json.loads(r["responses"]),
                      json.loads(r["scores"]), json.loads(r["result"]))

    @staticmethod
    def to_jsonl(records: list[Record]) -> str:
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)

    @staticmethod
    def to_csv(records: list[Record]) -> str:
        """One row per scored response, so a spreadsheet can sort and filter scores."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "kind", "created", "model", "format", "dtype", "conversation",
                    "position", "response", "score"])
        for r in records:
            conv = json.dumps(r.conversation, ensure_ascii=False)
            for k, (resp, score) in enumerate(zip(r.responses, r.scores, strict=True)):
                pos = "AB"[k] if r.kind == "compare" else str(k)
                w.writerow([r.id, r.kind, r.created, r.model, r.format, r.dtype, conv, pos, resp,
                            f"{score:.6f}"])
        return buf.getvalue()


def restored_scores(values: list[float], result: dict[str, Any]) -> list[engine.Score]:
    """A history row's scores as the engine's (token counts are not kept), windows included."""
    windows = result.get("windows") or [1] * len(values)
    policy = result.get("policy")
    if len(windows) != len(values):  # a row written by another version: say nothing about windows
        windows, policy = [1] * len(values), None
    return [engine.Score(v, 0, windows=int(w), policy=policy) for v, w in zip(values, windows, strict=True)]
