"""The tabular readers and writers (engine/tabular.py): every format round-trips, and bad input
is an InputError naming file, line (or row) and field. Real files, real SQLite, real pyarrow."""

from __future__ import annotations

import gzip
import os
import sqlite3
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.tabular import (
    count_rows,
    parse_location,
    read_table,
    text_value,
    write_table,
)

COLUMNS = {"id": "string", "n": "int", "score": "float", "flagged": "bool", "extra": "json", "text": "string"}
ROWS = [
    {"id": "a", "n": 1, "score": 0.25, "flagged": True, "extra": {"k": [1, 2]}, "text": "héllo, \"world\"\nline 2"},
    {"id": "b", "n": 2, "score": None, "flagged": None, "extra": None, "text": ""},
    {"id": "c", "n": 3, "score": -1.5, "flagged": False, "extra": [], "text": "日本語"},
]


def _spec(tmp_path: Path, kind: str) -> str:
    return {"jsonl": str(tmp_path / "t.jsonl"), "jsonl.gz": str(tmp_path / "t.jsonl.gz"),
            "csv": str(tmp_path / "t.csv"), "parquet": str(tmp_path / "t.parquet"),
            "sqlite": f"sqlite:{tmp_path / 't.db'}:results"}[kind]


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "csv", "parquet", "sqlite"])
def test_every_format_round_trips(kind, tmp_path):
    spec = _spec(tmp_path, kind)
    with write_table(spec, COLUMNS) as w:
        for r in ROWS:
            w.write(r)
    got = [row for _, row in read_table(spec)]
    assert [r["id"] for r in got] == ["a", "b", "c"]
    assert [r["text"] for r in got] == [r["text"] for r in ROWS]
    if kind.startswith("jsonl"):
        assert got == ROWS
    elif kind == "csv":  # text cells: numbers as written, JSON columns as JSON text, null as ""
        assert got[0] == {"id": "a", "n": "1", "score": "0.25", "flagged": "true",
                          "extra": '{"k": [1, 2]}', "text": ROWS[0]["text"]}
        assert got[1]["score"] == "" and got[1]["extra"] == ""
    else:
        assert got[0]["extra"] == '{"k": [1, 2]}' and got[1]["extra"] is None
        assert [r["score"] for r in got] == [0.25, None, -1.5]
        assert [bool(r["flagged"]) if r["flagged"] is not None else None for r in got] == [True, None, False]


def test_row_numbers_are_lines_rows_and_rowids(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('id,text\n1,"two\nlines"\n2,x\n')
    assert [n for n, _ in read_table(str(p))] == [2, 4]
    db = tmp_path / "in.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (text)")
        conn.executemany("insert into t (rowid, text) values (?, ?)", [(5, "a"), (9, "b")])
    assert [n for n, _ in read_table(f"sqlite:{db}:t")] == [5, 9]
    assert count_rows(f"sqlite:{db}:t") == 2


def test_a_sqlite_table_written_twice_is_replaced_whole(tmp_path):
    spec = _spec(tmp_path, "sqlite")
    for rows in (ROWS, ROWS[:1]):
        with write_table(spec, COLUMNS) as w:
            for r in rows:
                w.write(r)
    assert len(list(read_table(spec))) == 1


def test_a_failed_write_leaves_nothing(tmp_path):
    for kind in ("csv", "parquet", "sqlite"):
        spec = _spec(tmp_path, kind)
        with pytest.raises(RuntimeError), write_table(spec, COLUMNS) as w:
            w.write(ROWS[0])
            raise RuntimeError("killed")
        if kind == "sqlite":
            conn = sqlite3.connect(tmp_path / "t.db")
            assert conn.execute("select count(*) from sqlite_master where name = 'results'").fetchone()[0] == 0
            conn.close()
        else:
            assert not Path(spec).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_non_utf8_csv_names_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"id,text\n1,fine\n2,caf\xe9\n")
    with pytest.raises(InputError, match=r"bad.csv:3: not valid UTF-8 \(byte 0xe9 at offset 5"):
        list(read_table(str(p)))


def test_csv_quoting_error_names_the_line(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('id,text\n1,ok\n2,"quoted"tail\n')
    with pytest.raises(InputError, match=r"q.csv:3: CSV quoting error"):
        list(read_table(str(p)))
    p.write_text('id,text\n1,"never closed\n2,x\n')
    with pytest.raises(InputError, match=r"q.csv:2: CSV quoting error"):
        list(read_table(str(p)))


def test_csv_field_count_and_header(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("id,text\n1,a,extra\n")
    with pytest.raises(InputError, match=r"f.csv:2: 3 fields where the header has 2"):
        list(read_table(str(p)))
    p.write_text("id,id\n1,2\n")
    with pytest.raises(InputError, match=r"f.csv:1: the header names column 'id' twice"):
        list(read_table(str(p)))


def test_a_10_mb_row_is_read_whole(tmp_path):
    """10 MB is under the 64 MiB row limit: read whole, never cut (moderation windows it)."""
    big = "x" * (10 << 20)
    p = tmp_path / "big.csv"
    p.write_text(f"id,text\n1,{big}\n")
    ((_, row),) = list(read_table(str(p)))
    assert row["text"] == big
    j = tmp_path / "big.jsonl.gz"
    with gzip.open(j, "wt") as f:
        f.write('{"text": "' + big + '"}\n')
    assert next(read_table(str(j)))[1]["text"] == big


def test_a_row_over_the_limit_is_an_error_not_a_hang(tmp_path, monkeypatch):
    import engine.tabular as tabular

    monkeypatch.setattr(tabular, "MAX_ROW_BYTES", 1000)
    p = tmp_path / "runaway.csv"
    p.write_text("id,text\n1,ok\n2," + "y" * 2000 + "\n")
    with pytest.raises(InputError, match=r"runaway.csv:3: a line of 2,003 bytes, over the 1,000-byte limit"):
        list(read_table(str(p)))


def test_missing_sqlite_table_lists_the_tables(tmp_path):
    db = tmp_path / "d.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table posts (text)")
    with pytest.raises(InputError, match=r"no table 'comments' in the database \(tables: posts\)"):
        list(read_table(f"sqlite:{db}:comments"))
    with pytest.raises(InputError, match="no such file"):
        list(read_table(f"sqlite:{tmp_path / 'none.db'}:t"))
    assert not (tmp_path / "none.db").exists()  # a reader never creates the file


def test_sqlite_non_utf8_text_is_named_by_field(tmp_path):
    db = tmp_path / "d.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (text)")
        conn.execute("insert into t values (cast(x'6361fe' as text))")
    ((n, row),) = list(read_table(f"sqlite:{db}:t"))
    with pytest.raises(InputError, match=r"field 'text': not valid UTF-8 \(byte 0xfe at offset 2\)"):
        text_value(row, "text")


def test_non_utf8_jsonl_uses_the_engine_reader(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid UTF-8"):
        list(read_table(str(p)))


def test_unknown_names_are_refused():
    for bad in ("data.txt", "sqlite:only.db", "sqlite::t"):
        with pytest.raises(InputError):
            parse_location(bad)
    assert parse_location("sqlite:a:b.db:t").path == "a:b.db"


def test_corrupt_parquet_names_the_file(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"x.parquet: not a readable parquet file"):
        list(read_table(str(p)))


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_the_real_openai_moderation_set_reads_whole():
    path = DATA / "openai-moderation" / "samples-1680.jsonl.gz"
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (CI must have ../shared/data)")
        pytest.skip(f"{path} is absent (the shared data folder is not here)")
    rows = list(read_table(str(path)))
    assert len(rows) == 1680 and all(isinstance(r["prompt"], str) and r["prompt"] for _, r in rows)
    assert [n for n, _ in rows] == list(range(1, 1681))
    assert count_rows(str(path)) is None  # gzip: no cheap count, the bar shows rows and rate only
