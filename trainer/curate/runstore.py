"""The stage-1 run's SQLite record, ``DIR/curation.db``: what every pair is and who labelled it.

One file per curation run, shared with the human queue (``trainer.curate.annotations``
opens the same file and keeps its own tables). Tables:

* ``pairs``: every pool, gold and silver pair as imported (``pair`` is its JSON), its
  ``source``, its ``original_label`` (``"1"``: chosen first, as read), its ``attributes``,
  the ``round_added`` (0 = an input; a human gold pair snapshotted at round r has r) and a
  ``status`` (pool: ``new``, ``labelled``, ``abstained``; inputs: ``input``);
* ``votes``: each judge's answer per (pair, round, sample, order);
* ``decisions``: per (pair, round) the p that retrieved it (the lowest p among the gold pairs
  that did), the label (``"1"``, ``"2"``, ``"tie"`` or null) and ``labelled_by``
  (``judge``, ``human``, ``abstain``);
* ``retrieved``: per round the pool pairs retrieval picked, which gold pairs picked them,
  the best similarity and k;
* ``gold_p``: per round p = sigmoid(r(chosen) - r(rejected)) of every gold pair;
* ``rounds``: state (``training`` -> ``scored`` -> ``retrieved`` -> ``judged`` -> ``done``),
  metrics JSON, started/ended (Unix seconds).

Every write is its own transaction (``engine.store``), so a run killed with SIGKILL leaves
whole rows only, and a rerun continues from the last committed state.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.store import Store
from trainer.data.record import PreferencePair

DB_NAME = "curation.db"
SETS = ("pool", "gold", "silver")
#: round states in order; a round resumes at the first step after its state
STATES = ("training", "scored", "retrieved", "judged", "done")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


class RunStore(Store):
    """``DIR/curation.db``; see the module docstring for the tables."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        super().__init__(self.folder / DB_NAME)

    def _migrate(self) -> None:
        with self.transaction():
            have = set(self.db.table_names())
            if "pairs" not in have:
                self.db["pairs"].create(
                    {"id": str, "set": str, "pair": str, "source": str, "original_label": str,
                     "attributes": str, "round_added": int, "status": str, "seq": int},
                    pk=("set", "id"))
            if "votes" not in have:
                self.db["votes"].create(
                    {"pair_id": str, "round": int, "judge": str, "sample": int, "order": str, "better": str},
                    pk=("pair_id", "round", "judge", "sample", "order"))
            if "decisions" not in have:
                self.db["decisions"].create(
                    {"pair_id": str, "round": int, "p": float, "label": str, "labelled_by": str,
                     "judges": str, "decided": float},
                    pk=("pair_id", "round"))
            if "retrieved" not in have:
                self.db["retrieved"].create(
                    {"round": int, "pool_id": str, "by_gold_ids": str, "similarity": float, "k": int},
                    pk=("round", "pool_id"))
            if "gold_p" not in have:
                self.db["gold_p"].create({"round": int, "pair_id": str, "p": float}, pk=("round", "pair_id"))
            if "rounds" not in have:
                self.db["rounds"].create(
                    {"round": int, "state": str, "metrics": str, "started": float, "ended": float}, pk="round")
            if "inputs" not in have:  # one row per set: a fingerprint of what the run was started on
                self.db["inputs"].create({"set": str, "fingerprint": str, "n": int}, pk="set")

    # -- inputs ---------------------------------------------------------------------

    def import_set(self, name: str, pairs: Iterable[PreferencePair]) -> int:
        """Store an input set once; a rerun with the same pairs is a no-op, with others an error.

        The fingerprint is the sha256 over every pair's id and content key, in order: a
        resumed run must be continuing the run it started, not a different one.
        """
        if name not in SETS:
            raise ValueError(f"set must be one of {SETS}, not {name!r}")
        pairs = list(pairs)
        h = hashlib.sha256()
        for p in pairs:
            h.update(f"{p.id}\x00{p.key()}\x01".encode())
        fp = h.hexdigest()
        row = self.db.execute("select fingerprint, n from inputs where [set] = ?", [name]).fetchone()
        if row is not None:
            if row[0] != fp:
                raise InputError(f"{self.path}: this run was started with a different {name} set "
                                 f"({row[1]} pairs); use a new --out folder or the original {name} file")
            return len(pairs)
        seen: set[str] = set()
        for p in pairs:
            if p.id in seen:
                raise InputError(f"pair id {p.id!r} appears twice in the {name} set; ids must be unique",
                                 field="id")
            seen.add(p.id)
        with self.transaction():
            for i, p in enumerate(pairs):
                self._insert_pair(name, p, 0, "new" if name == "pool" else "input", i)
            self.db["inputs"].insert({"set": name, "fingerprint": fp, "n": len(pairs)})
        return len(pairs)

    def _insert_pair(self, name: str, p: PreferencePair, round_added: int, status: str, seq: int) -> None:
        self.db["pairs"].insert(
            {"id": p.id, "set": name, "pair": _dumps(p.to_dict()), "source": p.source,
             "original_label": "tie" if p.tie else "1", "attributes": None, "round_added": round_added,
             "status": status, "seq": seq}, replace=True)

    def pairs(self, name: str, *, round_added: int | None = None) -> list[PreferencePair]:
        """A set's pairs in input order (human gold pairs after the inputs, by round)."""
        sql, args = "select pair from pairs where [set] = ?", [name]
        if round_added is not None:
            sql, args = sql + " and round_added = ?", [*args, round_added]
        rows = self.db.execute(sql + " order by round_added, seq", args).fetchall()
        return [PreferencePair.from_dict(json.loads(r[0])) for r in rows]

    def add_gold(self, pairs: Sequence[PreferencePair], round_: int) -> None:
        """Human-labelled pairs snapshotted into gold at the start of ``round_`` (one transaction)."""
        with self.transaction():
            self.db.execute("delete from pairs where [set] = 'gold' and round_added = ?", [round_])
            for i, p in enumerate(pairs):
                self._insert_pair("gold", p, round_, "human", i)
                # the humans' label in the pool pair's stored order (gold_pairs() reorients the pair)
                label = (p.attributes.get("curation") or {}).get("majority", "tie" if p.tie else "1")
                self.db.execute(
                    "insert or replace into decisions (pair_id, round, p, label, labelled_by, judges, decided) "
                    "values (?, ?, null, ?, 'human', ?, ?)",
                    [p.id, round_, label, _dumps(list(p.labellers)), time.time()])

    def human_gold_ids(self) -> set[str]:
        rows = self.db.execute("select id from pairs where [set] = 'gold' and round_added > 0").fetchall()
        return {r[0] for r in rows}

    # -- attributes -------------------------------------------------------------------

    def attributes(self, name: str, pair_id: str) -> dict[str, Any] | None:
        row = self.db.execute("select attributes from pairs where [set] = ? and id = ?", [name, pair_id]).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def set_attributes(self, name: str, pair_id: str, attrs: dict[str, Any] | None) -> None:
        with self.transaction():
            self.db.execute("update pairs set attributes = ? where [set] = ? and id = ?",
                            [None if attrs is None else _dumps(attrs), name, pair_id])

    # -- rounds -----------------------------------------------------------------------

    def round_state(self, round_: int) -> str | None:
        row = self.db.execute("select state from rounds where round = ?", [round_]).fetchone()
        return row[0] if row else None

    def set_round(self, round_: int, state: str, metrics: dict[str, Any] | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        now = time.time()
        with self.transaction():
            if self.db.execute("select 1 from rounds where round = ?", [round_]).fetchone() is None:
                self.db["rounds"].insert({"round": round_, "state": state, "metrics": None, "started": now,
                                          "ended": None})
            self.db.execute("update rounds set state = ? where round = ?", [state, round_])
            if metrics is not None:
                self.db.execute("update rounds set metrics = ? where round = ?", [_dumps(metrics), round_])
            if state == "done":
                self.db.execute("update rounds set ended = ? where round = ?", [now, round_])

    def round_metrics(self, round_: int) -> dict[str, Any] | None:
        row = self.db.execute("select metrics from rounds where round = ?", [round_]).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # -- gold p and retrieval ---------------------------------------------------------

    def save_gold_p(self, round_: int, ps: dict[str, float], state_metrics: dict[str, Any]) -> None:
        """Every gold p of a round and the state ``scored``, in one transaction."""
        with self.transaction():
            self.db.execute("delete from gold_p where round = ?", [round_])
            for pid, p in ps.items():
                self.db["gold_p"].insert({"round": round_, "pair_id": pid, "p": p})
            self.db.execute("update rounds set state = 'scored', metrics = ? where round = ?",
                            [_dumps(state_metrics), round_])

    def gold_p(self, round_: int) -> dict[str, float]:
        rows = self.db.execute("select pair_id, p from gold_p where round = ? order by rowid", [round_]).fetchall()
        return {r[0]: r[1] for r in rows}

    def save_retrieved(self, round_: int, rows: Sequence[tuple[str, tuple[str, ...], float, int]]) -> None:
        """(pool id, gold ids, similarity, k) rows and the state ``retrieved``, in one transaction."""
        with self.transaction():
            self.db.execute("delete from retrieved where round = ?", [round_])
            for pool_id, by, sim, k in rows:
                self.db["retrieved"].insert({"round": round_, "pool_id": pool_id, "by_gold_ids": _dumps(list(by)),
                                             "similarity": sim, "k": k})
            self.db.execute("update rounds set state = 'retrieved' where round = ?", [round_])

    def retrieved(self, round_: int) -> list[tuple[str, tuple[str, ...], float, int]]:
        rows = self.db.execute("select pool_id, by_gold_ids, similarity, k from retrieved where round = ? "
                               "order by rowid", [round_]).fetchall()
        return [(r[0], tuple(json.loads(r[1])), r[2], r[3]) for r in rows]

    # -- votes and decisions ------------------------------------------------------------

    def decided(self, round_: int) -> set[str]:
        rows = self.db.execute("select pair_id from decisions where round = ? and labelled_by != 'human'",
                               [round_]).fetchall()
        return {r[0] for r in rows}

    def decided_before(self, round_: int) -> set[str]:
        """Pool ids a judge already decided (labelled or abstained) in an earlier round."""
        rows = self.db.execute("select pair_id from decisions where round < ? and labelled_by != 'human'",
                               [round_]).fetchall()
        return {r[0] for r in rows}

    def record_decision(self, pair_id: str, round_: int, p: float, label: str | None,
                        votes: Iterable[tuple[str, int, str, str | None]], per_judge: dict[str, str | None]) -> None:
        """One pool pair's votes (judge, sample, order, better), its decision and status, together."""
        with self.transaction():
            self.db.execute("delete from votes where pair_id = ? and round = ?", [pair_id, round_])
            for judge, sample, order, better in votes:
                self.db["votes"].insert({"pair_id": pair_id, "round": round_, "judge": judge, "sample": sample,
                                         "order": order, "better": better})
            self.db.execute(
                "insert or replace into decisions (pair_id, round, p, label, labelled_by, judges, decided) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                [pair_id, round_, p, label, "abstain" if label is None else "judge", _dumps(per_judge), time.time()])
            self.db.execute("update pairs set status = ? where [set] = 'pool' and id = ?",
                            ["abstained" if label is None else "labelled", pair_id])

    def decisions(self, *, labelled_by: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        sql, args = "select pair_id, round, p, label, labelled_by, judges from decisions where 1", []
        if labelled_by is not None:
            sql, args = sql + " and labelled_by = ?", [*args, labelled_by]
        if before is not None:
            sql, args = sql + " and round < ?", [*args, before]
        rows = self.db.execute(sql + " order by round, rowid", args).fetchall()
        return [{"pair_id": r[0], "round": r[1], "p": r[2], "label": r[3], "labelled_by": r[4],
                 "per_judge": json.loads(r[5]) if r[5] else {}} for r in rows]

    def votes(self, pair_id: str | None = None) -> Iterator[dict[str, Any]]:
        sql, args = "select pair_id, round, judge, sample, [order], better from votes", []
        if pair_id is not None:
            sql, args = sql + " where pair_id = ?", [pair_id]
        for r in self.db.execute(sql + " order by round, rowid", args):
            yield {"pair_id": r[0], "round": r[1], "judge": r[2], "sample": r[3], "order": r[4], "better": r[5]}

    def close(self) -> None:
        self.db.conn.close()
