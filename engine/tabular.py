"""Tables of rows in and out: JSONL (gzip too), CSV, Parquet and SQLite tables, streamed.

The one reader per file format, shared by training, evaluation, curation and moderation
(JSONL is :mod:`engine.jsonl`'s reader, reused here, never a second one). A *location* is a
path whose name says the format (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv``,
``.parquet``), ``-`` for JSONL on stdin, or ``sqlite:PATH.db:TABLE`` for a SQLite table.

Every reader yields ``(row number, dict)`` one row at a time (Parquet by record batch,
SQLite through a cursor), so memory stays flat. The row number is the line the row starts
on (JSONL, CSV: the header is line 1), the 1-based row (Parquet) or the ``rowid`` (SQLite),
and every error names the file, that line or row and the field:

* bytes that are not UTF-8 (the line and offsets, as the JSONL reader says them);
* a CSV quoting error, or a CSV record with more or fewer fields than its header;
* a row over :data:`MAX_ROW_BYTES` (a runaway CSV quote swallowing the file is one);
* a SQLite table that does not exist (the tables that do are listed);
* a Parquet file pyarrow cannot read.

pyarrow is imported only when a Parquet file is read or written (it is an optional extra).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from engine.errors import InputError
from engine.jsonl import read_json_or_jsonl, read_rows

#: the largest row a reader accepts (bytes of its text; 64 MiB): far above any real text row,
#: low enough that a runaway CSV quote is reported instead of read into memory
MAX_ROW_BYTES = 64 << 20
#: rows per Parquet record batch / SQLite insert batch
BATCH_ROWS = 1024

Kind = Literal["jsonl", "csv", "parquet", "sqlite"]
_SUFFIXES = ".jsonl, .jsonl.gz, .json, .csv, .parquet or sqlite:PATH.db:TABLE"


@dataclass(frozen=True, slots=True)
class Location:
    """Where a table is: its format, its file, and for SQLite the table name."""

    kind: Kind
    path: str
    table: str | None = None

    def __str__(self) -> str:
        return f"sqlite:{self.path}:{self.table}" if self.kind == "sqlite" else self.path


def parse_location(spec: str | Path) -> Location:
    """The format of ``spec`` from its name; InputError for a name that says none."""
    text = str(spec)
    if text.startswith("sqlite:"):
        path, sep, table = text[len("sqlite:"):].rpartition(":")
        if not sep or not path or not table:
            raise InputError("a SQLite table is written sqlite:PATH.db:TABLE", source=text)
        return Location("sqlite", path, table)
    name = text.lower()
    if text == "-" or name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson", ".json.gz")):
        return Location("jsonl", text)
    if name.endswith((".csv", ".csv.gz")):
        return Location("csv", text)
    if name.endswith(".parquet"):
        return Location("parquet", text)
    raise InputError(f"cannot tell the format from the name; use {_SUFFIXES}", source=text)


# ---- readers ------------------------------------------------------------------------

def read_table(spec: str | Path | Location) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) for every row at ``spec``, streamed (see the module docstring)."""
    loc = spec if isinstance(spec, Location) else parse_location(spec)
    if loc.kind == "jsonl":
        return _read_jsonl(loc.path)
    if loc.kind == "csv":
        return read_csv(loc.path)
    if loc.kind == "parquet":
        return read_parquet(loc.path)
    return read_sqlite(loc.path, loc.table or "")


def _read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = read_rows(path) if path == "-" else read_json_or_jsonl(path)
    for n, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}", source=path, line=n)
        yield n, row


def _check_file(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise InputError("is a folder; give a file", source=path)
    if not p.exists():
        raise InputError("no such file", source=path)


def _decoded_lines(f: IO[bytes], path: str) -> Iterator[str]:
    """Physical lines as text; a non-UTF-8 byte is an InputError naming the line and offsets."""
    offset = 0
    for n, raw in enumerate(f, start=1):
        if len(raw) > MAX_ROW_BYTES:
            raise InputError(f"a line of {len(raw):,} bytes, over the {MAX_ROW_BYTES:,}-byte limit",
                             source=path, line=n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start} of the "
                             f"line, offset {offset + e.start} of the file); save the file as UTF-8",
                             source=path, line=n) from None
        offset += len(raw)
        yield text.removeprefix("\ufeff") if n == 1 else text


def read_csv(path: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line the record starts on, {header: value}) for each CSV record after the header.

    Quoting is strict (``"a"b`` is an error, not silently joined), a record must have as many
    fields as the header, and a record may span lines (a quoted newline).
    """
    _check_file(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from _csv_records(_decoded_lines(f, path), path)


def _csv_records(lines: Iterable[str], path: str) -> Iterator[tuple[int, dict[str, str]]]:
    previous = csv.field_size_limit(MAX_ROW_BYTES)
    try:
        reader = csv.reader(lines, strict=True)
        header: list[str] | None = None
        start = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise InputError(f"CSV quoting error ({e})", source=path, line=start) from None
            if header is None:
                header = _csv_header(record, path)
            elif record:  # a blank line is no record
                if len(record) != len(header):
                    raise InputError(f"{len(record)} fields where the header has {len(header)}",
                                     source=path, line=start)
                yield start, dict(zip(header, record, strict=True))
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(previous)


def _csv_header(record: list[str], path: str) -> list[str]:
    if not record or not any(record):
        raise InputError("the first line must be a header naming the columns", source=path, line=1)
    seen: set[str] = set()
    for name in record:
        if name in seen:
            raise InputError(f"the header names column {name!r} twice", source=path, line=1)
        seen.add(name)
    return record


def read_parquet(path: str | Path, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, row dict), one record batch in memory at a time; a file pyarrow cannot
    read is an InputError naming it (and the row it stopped at)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_file(str(path))
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
        # pyarrow's readers raise these on corrupt files (ArrowInvalid, OSError, ...)
        raise InputError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:200]})",
                         source=str(path), line=n + 1 if n else None) from None


def _sqlite_source(path: str, table: str) -> str:
    return f"sqlite:{path}:{table}"


def open_sqlite_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (a reader never creates or changes the file)."""
    _check_file(path)
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise InputError(f"not a readable SQLite database ({e})", source=path) from None
    return conn


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "select name from sqlite_master where type in ('table', 'view') "
        "and name not like 'sqlite_%' order by name")]


def read_sqlite(path: str, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(rowid, row) in rowid order (a view or WITHOUT ROWID table: 1-based position).

    Text that is not UTF-8 comes back as ``bytes`` (the column may be a BLOB on purpose); a
    reader of text says so for its field (see :func:`text_value`).
    """
    source = _sqlite_source(path, table)
    conn = open_sqlite_readonly(path)
    try:
        if table not in sqlite_tables(conn):
            present = ", ".join(sqlite_tables(conn)) or "none"
            raise InputError(f"no table {table!r} in the database (tables: {present})", source=source)
        conn.text_factory = bytes
        try:
            cur = conn.execute(f'select rowid as "__rowid__", * from "{_quoted(table)}" order by rowid')
            with_rowid = True
        except sqlite3.OperationalError:
            cur = conn.execute(f'select * from "{_quoted(table)}"')
            with_rowid = False
        names = [d[0] for d in cur.description]
        for n, values in enumerate(cur, start=1):
            row = {k: _text_or_bytes(v) for k, v in zip(names, values, strict=True)}
            number = row.pop("__rowid__") if with_rowid else n
            yield int(number), row
    except sqlite3.DatabaseError as e:
        raise InputError(f"the database cannot be read ({e})", source=source) from None
    finally:
        conn.close()


def _quoted(name: str) -> str:
    return name.replace('"', '""')


def _text_or_bytes(v: Any) -> Any:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v
    return v


def text_value(row: Mapping[str, Any], field: str) -> str | None:
    """``row[field]`` as text, None when absent or null; bytes that are not UTF-8 (SQLite) or a
    non-string value are an InputError naming the field (the caller adds file and row)."""
    v = row.get(field)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        try:
            v.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 (byte 0x{v[e.start]:02x} at offset {e.start})",
                             field=field) from None
    raise InputError(f"must be text; got {type(v).__name__}", field=field)


def count_rows(spec: str | Path | Location) -> int | None:
    """How many rows ``spec`` holds where that is cheap to know (Parquet metadata, SQLite
    count, newlines of an uncompressed JSONL file); None otherwise. For progress bars only."""
    loc = spec if isinstance(spec, Location) else parse_location(spec)
    try:
        if loc.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(loc.path).metadata.num_rows
        if loc.kind == "sqlite":
            conn = open_sqlite_readonly(loc.path)
            try:
                return conn.execute(f'select count(*) from "{_quoted(loc.table or "")}"').fetchone()[0]
            finally:
                conn.close()
        if loc.kind == "jsonl" and loc.path != "-" and not loc.path.endswith(".gz"):
            n = 0
            with open(loc.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time
                    n += chunk.count(b"\n")
            return n
    except (OSError, sqlite3.Error, InputError, ImportError):
        return None
    except Exception:  # noqa: BLE001 - a corrupt parquet footer: the reader reports it properly
        return None
    return None


# ---- writers ------------------------------------------------------------------------

#: column types a writer knows (Parquet and SQLite need them; JSONL and CSV do not)
ColumnType = Literal["string", "int", "float", "bool", "json"]


def _cell(value: Any, kind: ColumnType | None) -> Any:
    """A value as a flat table cell: lists and dicts (and ``json`` columns) become JSON text."""
    if value is None:
        return None
    if kind == "json" or isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    if kind == "string" and not isinstance(value, str):
        return str(value)  # an id that is a number in one file and text in another
    return value


@contextmanager
def write_table(spec: str | Path | Location, columns: Mapping[str, ColumnType]
                ) -> Iterator[TableWriter]:
    """A writer for rows with these columns; the output appears whole or not at all.

    Files are written beside the target and renamed at the end (:func:`engine.output.atomic_output`);
    a SQLite table is replaced inside one transaction. JSONL keeps nested values as JSON; CSV,
    Parquet and SQLite store ``json`` columns (and any list or dict) as JSON text.
    """
    from engine.output import atomic_output

    loc = spec if isinstance(spec, Location) else parse_location(spec)
    if loc.kind == "sqlite":
        with _sqlite_writer(loc, columns) as w:
            yield w
        return
    binary = loc.kind == "parquet" or loc.path.endswith(".gz")
    with atomic_output(loc.path, binary=binary) as raw:
        f: IO[Any] = raw
        gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if loc.path.endswith(".gz") else None
        if gz is not None:
            f = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        writer = TableWriter(loc, columns, f)
        try:
            yield writer
            writer.close()
        finally:
            if gz is not None:
                f.flush()
                f.detach()
                gz.close()


class TableWriter:
    """Rows out, one at a time (:meth:`write`); made by :func:`write_table`."""

    def __init__(self, loc: Location, columns: Mapping[str, ColumnType], f: Any) -> None:
        self.loc, self.columns, self.f = loc, dict(columns), f
        self.rows = 0
        self._buf: list[dict[str, Any]] = []
        self._csv: Any = None
        self._parquet: Any = None
        if loc.kind == "csv":
            self._csv = csv.writer(f, lineterminator="\n")
            self._csv.writerow(list(self.columns))

    def write(self, row: Mapping[str, Any]) -> None:
        self.rows += 1
        if self.loc.kind == "jsonl":
            from engine.output import json_line

            self.f.write(json_line(dict(row)))
        elif self.loc.kind == "csv":
            self._csv.writerow(["" if (c := _cell(row.get(k), t)) is None else _csv_text(c)
                                for k, t in self.columns.items()])
        else:
            self._buf.append({k: _cell(row.get(k), t) for k, t in self.columns.items()})
            if len(self._buf) >= BATCH_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self.loc.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _arrow_schema(self.columns)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.f, schema)
            self._parquet.write_table(pa.Table.from_pylist(self._buf, schema=schema))
        elif self._buf:
            self.f(self._buf)  # the SQLite writer's insert
        self._buf.clear()

    def close(self) -> None:
        if self.loc.kind == "parquet":
            if self._buf or self._parquet is None:
                self._flush()
            self._parquet.close()
        elif self.loc.kind == "sqlite":
            self._flush()


def _csv_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _arrow_schema(columns: Mapping[str, ColumnType]) -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
             "json": pa.string()}
    return pa.schema([(k, types[t]) for k, t in columns.items()])


_SQL_TYPES = {"string": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER", "json": "TEXT"}


@contextmanager
def _sqlite_writer(loc: Location, columns: Mapping[str, ColumnType]) -> Iterator[TableWriter]:
    """The table is dropped, made and filled in one transaction: readers see the old table or
    the whole new one, and a killed run leaves the old one."""
    from engine.store import connect, write_transaction

    try:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        conn = connect(loc.path)
    except (OSError, sqlite3.Error) as e:
        raise InputError(f"cannot write the database ({e})", source=str(loc)) from None
    table = _quoted(loc.table or "")
    names = ", ".join(f'"{_quoted(k)}"' for k in columns)
    marks = ", ".join("?" for _ in columns)

    def insert(rows: list[dict[str, Any]]) -> None:
        conn.executemany(f'insert into "{table}" ({names}) values ({marks})',
                         [tuple(r.values()) for r in rows])

    try:
        with write_transaction(conn):
            conn.execute(f'drop table if exists "{table}"')
            cols = ", ".join(f'"{_quoted(k)}" {_SQL_TYPES[t]}' for k, t in columns.items())
            conn.execute(f'create table "{table}" ({cols})')
            writer = TableWriter(loc, columns, insert)
            yield writer
            writer.close()
    finally:
        conn.close()


__all__ = ["BATCH_ROWS", "MAX_ROW_BYTES", "Location", "TableWriter", "count_rows", "open_sqlite_readonly",
           "parse_location", "read_csv", "read_parquet", "read_sqlite", "read_table", "sqlite_tables",
           "text_value", "write_table"]

