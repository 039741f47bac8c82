"""Evaluation runs in the local SQLite store, and the per-item scores that make them resumable.

Two tables, created here (the engine's store knows nothing about evaluation):

* ``eval_runs``: one row per (model, benchmark files, ``--limit``): the model's name,
  format, quantization and files with their sha256, the benchmark files with theirs, the
  metrics, when the run started and finished, its status and the process running it
  (``pid``, ``host``). A run whose process died without a word (kill -9, power loss) is
  shown as ``interrupted`` as soon as any later run starts, and the same command
  again takes its row over (``attempts`` counts the tries);
* ``eval_scores``: one score per (model identity, benchmark file sha256, item key),
  written in a transaction every few dozen items, so an interrupted run loses at most
  that much and the same command continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.store import Store, host, mark_abandoned_runs
from engine.types import ModelInfo, Score
from trainer.eval.report import jsonable


def model_identity(info: ModelInfo) -> str:
    """What makes two runs' scores interchangeable: the model files' bytes and the options
    that change a score (context length, dtype, provider)."""
    parts = {"files": sorted(f.sha256 for f in info.files), "max_length": info.max_length,
             "dtype": info.dtype, "format": info.format, "provider": info.provider}
    if not info.files:  # a model without hashed files can only be trusted by its name
        parts["name"] = info.name
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredScore:
    value: float  # NaN when skipped
    skipped: str | None


RUN_COLUMNS = {
    "id": str, "model": str, "model_id": str, "format": str, "quantization": str,
    "model_files": str, "benchmarks": str, "metrics": str, "options": str,
    "started": float, "finished": float, "status": str, "attempts": int,
    "pid": int, "host": str,  # the process running it, so a dead one's row can be told apart
}


class EvalStore:
    """Evaluation tables on top of the engine's store (same file, same WAL database)."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store.default()
        self.db = self.store.db
        self._migrate()

    def _migrate(self) -> None:
        with self.store.transaction():  # BEGIN IMMEDIATE: another process may migrate the same file
            names = self.db.table_names()
            if "eval_runs" not in names:
                self.db["eval_runs"].create(RUN_COLUMNS, pk="id")
            else:  # a store made by an older Arbiter: add what it lacks
                have = self.db["eval_runs"].columns_dict
                for name, kind in RUN_COLUMNS.items():
                    if name not in have:
                        self.db["eval_runs"].add_column(name, kind)
            if "eval_scores" not in names:
                self.db["eval_scores"].create({
                    "model_id": str, "file_sha256": str, "item_key": str, "value": float,
                    "n_tokens": int, "cut_tokens": int, "skipped": str,
                }, pk=("model_id", "file_sha256", "item_key"))

    # ---- scores ------------------------------------------------------------------------
    def scores(self, model_id: str, file_sha256: str) -> dict[str, StoredScore]:
        rows = self.db.execute(
            "select item_key, value, skipped from eval_scores where model_id = ? and file_sha256 = ?",
            [model_id, file_sha256]).fetchall()
        return {k: StoredScore(math.nan if v is None else v, s) for k, v, s in rows}

    def save_scores(self, model_id: str, rows: Iterable[tuple[str, str, Score]]) -> int:
        """(file sha256, item key, score) rows in one transaction; returns how many."""
        records = [{"model_id": model_id, "file_sha256": sha, "item_key": key,
                    "value": None if s.skipped else s.value, "n_tokens": s.n_tokens,
                    "cut_tokens": s.cut_tokens, "skipped": s.skipped} for sha, key, s in rows]
        if records:
            with self.store.transaction():
                self.db["eval_scores"].upsert_all(records, pk=("model_id", "file_sha256", "item_key"))
        return len(records)

    # ---- runs --------------------------------------------------------------------------
    @staticmethod
    def run_id(model_id: str, benchmarks: Sequence[dict[str, Any]], limit: int | None = None,
               sample: int | None = None) -> str:
        """Same model, benchmark files and ``--limit`` / ``--sample``: same run (``--limit 30`` and
        80 differ, and so do ``--limit 30`` and ``--sample 30``)."""
        key: list[Any] = [model_id, sorted((b["format"], f["sha256"]) for b in benchmarks for f in b["files"])]
        if limit is not None:  # without a limit the id stays what older versions gave
            key.append({"limit": limit})
        if sample is not None:
            key.append({"sample": sample})
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]

    def mark_abandoned(self) -> int:
        """Runs left "running" by a process that died on this host become "interrupted"."""
        return mark_abandoned_runs(self.store, "eval_runs")

    def start_run(self, run_id: str, info: ModelInfo, model_id: str,
                  benchmarks: Sequence[dict[str, Any]], options: dict[str, Any]) -> None:
        self.mark_abandoned()
        with self.store.transaction():
            row = self.db.execute("select attempts from eval_runs where id = ?", [run_id]).fetchone()
            self.db["eval_runs"].upsert({
                "id": run_id, "model": info.name, "model_id": model_id, "format": info.format,
                "quantization": info.dtype, "model_files": json.dumps(info.to_dict()["files"]),
                "benchmarks": json.dumps(benchmarks), "metrics": None, "options": json.dumps(options),
                "started": time.time(), "finished": None, "status": "running",
                "attempts": (row[0] if row else 0) + 1, "pid": os.getpid(), "host": host(),
            }, pk="id")

    def finish_run(self, run_id: str, metrics: Any, *, status: str = "done") -> None:
        with self.store.transaction():
            self.db["eval_runs"].update(run_id, {"metrics": json.dumps(jsonable(metrics)),
                                                 "finished": time.time(), "status": status})

    def run(self, run_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.db["eval_runs"].get(run_id))
        except Exception:  # sqlite_utils.db.NotFoundError
            return None

