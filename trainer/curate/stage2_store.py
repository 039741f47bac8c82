"""The stage-2 run's SQLite record, ``OUT/stage2.db``: where each shard stands, every decision.

Tables (the contract, /work/notes/s4/stage2_contract.md):

* ``meta`` (key, value JSON): ``config``, ``band``, ``models``, ``judges``, ``round``;
* ``shards``: per input shard its path, ``position`` (the last committed row, 1-based as the
  readers number rows; 0 = none yet), ``state`` (``running`` -> ``done``), and at the end its
  counts (``rows``, ``kept``, ``discarded``, ``flipped``, ``unscored``) and ``finished``;
* ``decisions``: per (shard, row) the pair id, decision, reason, gold_p, current_p,
  judge_label, votes (JSON list of stage-1 Vote dicts, or null) and round.

A chunk's decisions and the shard's new position are one transaction
(:meth:`Stage2Store.commit_chunk`), so a run killed with SIGKILL resumes at a chunk boundary
and never records a row twice or skips one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.store import Store

DB_NAME = "stage2.db"
#: the columns of ``decisions`` after (shard, row), in stored order
DECISION_FIELDS = ("pair_id", "decision", "reason", "gold_p", "current_p", "judge_label", "votes", "round")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class DecisionRow:
    """One stored decision (``votes`` decoded)."""

    shard: str
    row: int
    pair_id: str
    decision: str
    reason: str
    gold_p: float | None
    current_p: float | None
    judge_label: str | None
    votes: list[dict[str, Any]] | None
    round: int


class Stage2Store(Store):
    """``OUT/stage2.db``; see the module docstring."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        super().__init__(self.folder / DB_NAME)

    def _migrate(self) -> None:
        with self.transaction():
            have = set(self.db.table_names())
            if "meta" not in have:
                self.db["meta"].create({"key": str, "value": str}, pk="key")
            if "shards" not in have:
                self.db["shards"].create(
                    {"name": str, "path": str, "position": int, "state": str, "rows": int, "kept": int,
                     "discarded": int, "flipped": int, "unscored": int, "finished": float}, pk="name")
            if "decisions" not in have:
                self.db["decisions"].create(
                    {"shard": str, "row": int, "pair_id": str, "decision": str, "reason": str,
                     "gold_p": float, "current_p": float, "judge_label": str, "votes": str, "round": int},
                    pk=("shard", "row"))

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        """The stored JSON value of ``key``, or None."""
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction():
            self.db.execute("insert or replace into meta (key, value) values (?, ?)", [key, _dumps(value)])

    def all_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("select key, value from meta order by key")}

    # -- shards -------------------------------------------------------------------------

    def shard(self, name: str) -> dict[str, Any] | None:
        """The shard's row as a dict, or None when it was never started."""
        cur = self.db.execute("select * from shards where name = ?", [name])
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row, strict=True))

    def shards(self) -> list[dict[str, Any]]:
        cur = self.db.execute("select * from shards order by name")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def start_shard(self, name: str, path: Path) -> int:
        """Register the shard (state ``running``, position 0) if new; returns its position."""
        with self.transaction():
            row = self.db.execute("select position from shards where name = ?", [name]).fetchone()
            if row is not None:
                return int(row[0])
            self.db["shards"].insert({"name": name, "path": str(path), "position": 0, "state": "running"})
        return 0

    def commit_chunk(self, shard: str, rows: Sequence[dict[str, Any]], position: int) -> None:
        """A chunk's decisions and the shard's position, in ONE transaction (see the module doc)."""
        with self.transaction():
            for r in rows:
                votes = r.get("votes")
                self.db.execute(
                    "insert or replace into decisions (shard, row, pair_id, decision, reason, gold_p, current_p, "
                    "judge_label, votes, round) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [shard, r["row"], r["pair_id"], r["decision"], r["reason"], r["gold_p"], r["current_p"],
                     r["judge_label"], None if votes is None else _dumps(votes), r["round"]])
            self.db.execute("update shards set position = max(position, ?) where name = ?", [position, shard])

    def decisions(self, shard: str) -> Iterator[DecisionRow]:
        """The shard's decisions in row order, streamed from a cursor (memory flat)."""
        cur = self.db.conn.execute(
            "select shard, row, pair_id, decision, reason, gold_p, current_p, judge_label, votes, round "
            "from decisions where shard = ? order by row", [shard])
        for r in cur:
            yield DecisionRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                              None if r[8] is None else json.loads(r[8]), r[9])

    def counts(self, shard: str) -> dict[str, int]:
        """decision -> rows of the shard."""
        rows = self.db.execute("select decision, count(*) from decisions where shard = ? group by decision",
                               [shard]).fetchall()
        return {d: n for d, n in rows}

    def reason_counts(self) -> dict[str, int]:
        """reason -> rows over every shard."""
        rows = self.db.execute("select reason, count(*) from decisions group by reason order by reason").fetchall()
        return {r: n for r, n in rows}

    def finish_shard(self, name: str, counts: dict[str, int]) -> None:
        """Counts and state ``done`` (after the shard's outputs are in place)."""
        with self.transaction():
            self.db.execute(
                "update shards set state = 'done', rows = ?, kept = ?, discarded = ?, flipped = ?, unscored = ?, "
                "finished = ? where name = ?",
                [counts["rows"], counts["kept"], counts["discarded"], counts["flipped"], counts["unscored"],
                 time.time(), name])

    def close(self) -> None:
        self.db.conn.close()
