"""The moderation job store and its audit table (``moderation.db`` in the data folder).

One SQLite file (WAL, busy timeout: :func:`engine.store.connect`) holds:

* ``moderation_jobs``: one row per job, keyed by what makes its output (input and its size
  and mtime, output, model sha256, thresholds version, fields, output shape), with the
  number of input rows consumed so far (``position``);
* ``moderation_results``: the finished rows of unfinished jobs, by position; deleted once
  the output file is written;
* ``moderation_audit``: append-only (triggers refuse UPDATE and DELETE): input row hash,
  model sha256, thresholds version, decision, time, for every row ever decided.

A batch of results, its audit rows and the job's new position are committed in one
transaction, so after kill -9 the rerun starts exactly after the last committed batch: no
row lost, none written twice, none audited twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.paths import data_dir
from engine.store import connect, host, write_transaction

SCHEMA = """
create table if not exists moderation_jobs (
    id text primary key, key text not null, status text not null, input text, output text,
    model_sha256 text, thresholds_version text, options text, position integer not null,
    created text, finished text, pid integer, host text);
create index if not exists moderation_jobs_key on moderation_jobs (key, status);
create table if not exists moderation_results (
    job_id text not null, position integer not null, line integer, row_id text not null,
    result text not null, primary key (job_id, position));
create unique index if not exists moderation_results_id on moderation_results (job_id, row_id);
create table if not exists moderation_audit (
    seq integer primary key autoincrement, time text not null, job_id text not null,
    row_id text, input_hash text not null, model_sha256 text not null,
    thresholds_version text not null, decision text not null, score real);
create trigger if not exists moderation_audit_no_update before update on moderation_audit
    begin select raise(abort, 'the moderation audit is append-only'); end;
create trigger if not exists moderation_audit_no_delete before delete on moderation_audit
    begin select raise(abort, 'the moderation audit is append-only'); end;
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Job:
    id: str
    position: int  # input rows consumed and committed


@dataclass(frozen=True)
class Decided:
    """One row ready to commit: its position, line, id, output row and audit fields."""

    position: int
    line: int
    row_id: str
    result: dict[str, Any]
    input_hash: str
    decision: str
    score: float | None


class ModerationStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / "moderation.db"
        self.conn = connect(self.path)
        with write_transaction(self.conn):
            for stmt in SCHEMA.split(";\n"):  # statements end a line; trigger bodies do not
                if stmt.strip():
                    self.conn.execute(stmt)

    def close(self) -> None:
        self.conn.close()

    def open_job(self, key: str, *, input: str, output: str, model_sha256: str,
                 thresholds_version: str, options: dict[str, Any]) -> Job:
        """The unfinished job with this key (resumed), or a new one."""
        with write_transaction(self.conn):
            row = self.conn.execute("select id, position from moderation_jobs where key = ? and "
                                    "status != 'done' order by created desc limit 1", [key]).fetchone()
            if row:
                self.conn.execute("update moderation_jobs set status = 'running', pid = ?, host = ? "
                                  "where id = ?", [os.getpid(), host(), row[0]])
                return Job(row[0], row[1])
            job_id = f"mod-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(4).hex()}"
            self.conn.execute(
                "insert into moderation_jobs (id, key, status, input, output, model_sha256, "
                "thresholds_version, options, position, created, pid, host) "
                "values (?, ?, 'running', ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                [job_id, key, input, output, model_sha256, thresholds_version,
                 json.dumps(options, sort_keys=True), _now(), os.getpid(), host()])
            return Job(job_id, 0)

    def earlier_lines(self, job: Job, row_ids: Sequence[str]) -> dict[str, int]:
        """row id -> the line it was first seen on, for ids this job already committed."""
        out: dict[str, int] = {}
        for start in range(0, len(row_ids), 500):  # SQLite's bound-parameter limit is 999+
            chunk = list(row_ids[start:start + 500])
            marks = ", ".join("?" for _ in chunk)
            for rid, line in self.conn.execute(
                    f"select row_id, line from moderation_results where job_id = ? and row_id in ({marks})",
                    [job.id, *chunk]):
                out[rid] = line
        return out

    def commit(self, job: Job, decided: Sequence[Decided], position: int, *,
               model_sha256: str, thresholds_version: str) -> Job:
        """Results, audit rows and the new position, in one transaction."""
        now = _now()
        with write_transaction(self.conn):
            self.conn.executemany(
                "insert into moderation_results (job_id, position, line, row_id, result) values (?, ?, ?, ?, ?)",
                [(job.id, d.position, d.line, d.row_id, json.dumps(d.result, ensure_ascii=False, allow_nan=False))
                 for d in decided])
            self.conn.executemany(
                "insert into moderation_audit (time, job_id, row_id, input_hash, model_sha256, "
                "thresholds_version, decision, score) values (?, ?, ?, ?, ?, ?, ?, ?)",
                [(now, job.id, d.row_id, d.input_hash, model_sha256, thresholds_version, d.decision,
                  d.score) for d in decided])
            self.conn.execute("update moderation_jobs set position = ? where id = ?", [position, job.id])
        return Job(job.id, position)

    def results(self, job: Job) -> Iterator[dict[str, Any]]:
        """The job's rows in input order, streamed from the store."""
        cur = self.conn.execute("select result from moderation_results where job_id = ? order by position",
                                [job.id])
        for (text,) in cur:
            yield json.loads(text)

    def finish(self, job: Job) -> None:
        """The output is written: drop the job's rows (the audit keeps every decision)."""
        with write_transaction(self.conn):
            self.conn.execute("delete from moderation_results where job_id = ?", [job.id])
            self.conn.execute("update moderation_jobs set status = 'done', finished = ?, pid = null "
                              "where id = ?", [_now(), job.id])

    def stop(self, job: Job) -> None:
        """The process stops before the end (an error, Ctrl-C): the job waits for a rerun."""
        with write_transaction(self.conn):
            self.conn.execute("update moderation_jobs set status = 'interrupted' where id = ? "
                              "and status = 'running'", [job.id])

    def audit(self, *, job: str | None = None, decision: str | None = None, since: str | None = None,
              row_id: str | None = None, input_hash: str | None = None, limit: int | None = None
              ) -> list[dict[str, Any]]:
        """Audit rows matching every filter given, oldest first."""
        where, args = [], []
        for column, value in (("job_id", job), ("decision", decision), ("row_id", row_id),
                              ("input_hash", input_hash)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        sql = "select seq, time, job_id, row_id, input_hash, model_sha256, thresholds_version, decision, score " \
              "from moderation_audit"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by seq"
        if limit is not None:
            sql += f" limit {int(limit)}"
        cur = self.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]
