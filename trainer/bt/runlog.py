"""Training runs and their logs in the local SQLite store (``arbiter.db``).

Two tables, created on first use (a migration owned by this module):
``train_runs`` (one row per run: base, output, config, status, best gold accuracy)
and ``train_log`` (one row per logged step: kind ``train`` or ``gold``, the numbers
of :func:`trainer.bt.metrics.pair_metrics`, learning rate and throughput).
Every write is a transaction (``BEGIN IMMEDIATE``: other processes share the file).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from engine.store import Store, host, mark_abandoned_runs

LOG_COLUMNS = {
    "run_id": str, "step": int, "kind": str, "time": float, "pairs": int, "loss": float,
    "accuracy": float, "margin": float, "reward_mean": float, "reward_std": float,
    "chosen_mean": float, "rejected_mean": float, "accuracy_chosen_longer": float,
    "accuracy_chosen_shorter": float, "accuracy_length_balanced": float, "n_chosen_longer": int,
    "n_chosen_shorter": int, "reward_length_pearson": float,
    "lr": float, "pairs_per_s": float, "tokens_per_s": float,
}


RUN_COLUMNS = {
    "id": str, "started": float, "finished": float, "status": str, "base": str, "out": str,
    "config": str, "world_size": int, "train_pairs": int, "gold_pairs": int,
    "best_step": int, "best_gold_accuracy": float, "steps": int,
    "pid": int, "host": str,  # the process training it: a run whose process died shows "interrupted"
}


def migrate(store: Store) -> None:
    """Create or extend the tables; inside BEGIN IMMEDIATE, so two processes do it in turn."""
    db = store.db
    with store.transaction():
        if "train_runs" not in db.table_names():
            db["train_runs"].create(RUN_COLUMNS, pk="id")
        else:
            have = db["train_runs"].columns_dict
            for name, kind in RUN_COLUMNS.items():
                if name not in have:
                    db["train_runs"].add_column(name, kind)
        if "train_log" not in db.table_names():
            db["train_log"].create(LOG_COLUMNS)
            db["train_log"].create_index(["run_id", "step"])
        else:  # a store made by an older Arbiter: add the columns it lacks
            have = db["train_log"].columns_dict
            for name, kind in LOG_COLUMNS.items():
                if name not in have:
                    db["train_log"].add_column(name, kind)


class RunLog:
    def __init__(self, store: Store, run_id: str | None = None) -> None:
        self.store = store
        self.run_id = run_id or uuid.uuid4().hex[:12]
        migrate(store)

    def start(self, **fields: Any) -> None:
        mark_abandoned_runs(self.store, "train_runs")  # runs killed before they could say so
        row = {"id": self.run_id, "started": time.time(), "status": "running", "pid": os.getpid(),
               "host": host(), **fields}
        if isinstance(row.get("config"), dict):
            row["config"] = json.dumps(row["config"])
        with self.store.transaction():
            self.store.db["train_runs"].upsert(row, pk="id")

    def update(self, **fields: Any) -> None:
        with self.store.transaction():
            self.store.db["train_runs"].update(self.run_id, fields)

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        row = {k: metrics.get(k) for k in LOG_COLUMNS if k in metrics}
        row.update(run_id=self.run_id, step=step, kind=kind, time=time.time())
        with self.store.transaction():
            self.store.db["train_log"].insert(row)

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "select * from train_log where run_id = ?" + (" and kind = ?" if kind else "") + " order by rowid"
        args = [self.run_id] + ([kind] if kind else [])
        return [dict(r) for r in self.store.db.query(q, args)]
