"""The readers under bad bytes: regression tests (issue 13, defects 7 and 9), then fuzz targets.

Every reader of user files (engine.jsonl: JSONL, JSON arrays, ``.gz``; parquet;
every preference-data importer; every benchmark and score loader; the CLI's candidate
lists; the hygiene benchmark reader) either returns rows or raises ``InputError`` naming
the file, and the line when a row is at fault, and the field when a field is. Never
another exception, a signal or a hang.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli.scoring import read_candidates
from engine.errors import InputError
from engine.jsonl import lone_surrogate, read_array, read_items, read_json_or_jsonl, read_rows
from trainer.data.hygiene import benchmark_prompts
from trainer.data.importers import FORMATS, detect_format, load
from trainer.data.record import iter_rows, pair, write_pairs
from trainer.eval.loaders import LOADERS, detect
from trainer.eval.loaders import load as load_bench
from trainer.eval.precomputed import SCORE_LOADERS

ROW = {"prompt": "Hi", "response": "Hello"}


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def located(e: InputError, path: Path, line: int | None = None, field: str | None = None) -> None:
    assert e.source == str(path), e
    if line is not None:
        assert e.line == line, e
    if field is not None:
        assert e.field == field, e


# -- regression tests: each raised a traceback before ----------------------------------

def test_invalid_utf8_names_the_line_and_the_byte_offset(tmp_path):
    f = write_bytes(tmp_path / "in.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(InputError) as e:
        list(read_items(f))
    located(e.value, f, line=2)
    assert "not valid UTF-8 (byte 0xe9 at offset 15 of the line, offset 48 of the file)" in str(e.value)


def test_stdin_is_read_as_bytes_and_located_the_same_way():
    """'-' (stdin) goes through the same decoder: a real subprocess, real pipe."""
    code = ("from engine.jsonl import read_rows\nfrom engine.errors import InputError\n"
            "try:\n    list(read_rows('-'))\nexcept InputError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], input=b'{"a": 1}\n{"a": "\xff"}\n', capture_output=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.decode()
    assert out.startswith("<stdin>:2: not valid UTF-8 (byte 0xff at offset 7 of the line, offset 16 of the file)")


def test_a_corrupt_or_truncated_gz_is_an_input_error(tmp_path):
    good = gzip.compress(b"".join(json.dumps({**ROW, "n": i}).encode() + b"\n" for i in range(2000)))
    for name, data in {"cut.jsonl.gz": good[: len(good) // 2], "flipped.jsonl.gz": good[:30] + b"\xff" * 20 + good[50:],
                       "plain.jsonl.gz": b'{"a": 1}\n'}.items():
        f = write_bytes(tmp_path / name, data)
        with pytest.raises(InputError, match="the gzip data is corrupt or cut short") as e:
            list(read_rows(f))
        located(e.value, f)
        assert e.value.line is not None


def test_a_lone_surrogate_is_refused_with_its_field(tmp_path):
    f = write_bytes(tmp_path / "in.jsonl", b'{"conversation": [{"role": "user", "content": "x\\ud800"}], "response": "r"}\n')
    with pytest.raises(InputError, match="lone UTF-16 surrogate") as e:
        list(read_items(f))
    located(e.value, f, line=1, field="conversation[0].content")
    pair_ok = write_bytes(tmp_path / "ok.jsonl", b'{"prompt": "\\ud83d\\ude00", "response": "r"}\n')  # a valid pair
    assert [item.conversation[0].content for _, _, item in read_items(pair_ok)] == ["\U0001F600"]


def test_deep_nesting_and_huge_integers_are_input_errors(tmp_path):
    deep = write_bytes(tmp_path / "deep.jsonl", b"{}\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(InputError, match="nested deeper than 200 levels") as e:
        list(read_rows(deep))
    located(e.value, deep, line=2)
    big = write_bytes(tmp_path / "big.jsonl", b'{"prompt": "a", "response": "b", "n": ' + b"7" * 5000 + b"}\n")
    with pytest.raises(InputError, match="4300 digits") as e:
        list(read_rows(big))
    located(e.value, big, line=1)
    arr = write_bytes(tmp_path / "deep.json", b"[\n{},\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n]")
    with pytest.raises(InputError, match="nested deeper") as e:
        list(read_array(arr))
    located(e.value, arr, line=3)


@pytest.mark.parametrize("system", [3, {"text": "be kind"}, ["be", "kind"], True])
def test_a_system_field_that_is_not_a_string_is_refused(tmp_path, system):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"prompt": "Hi", "system": system, "response": "r"}) + "\n")
    with pytest.raises(InputError) as e:
        list(read_items(f))
    located(e.value, f, line=1, field="system")
    f.write_text(json.dumps({"prompt": "Hi", "system": system, "chosen": "a", "rejected": "b"}) + "\n")
    for read in (lambda: list(load(f, "prompt")), lambda: load_bench("pairwise", f)):
        with pytest.raises(InputError) as e:
            read()
        located(e.value, f, line=1, field="system")


def test_pandalm_and_auto_j_have_one_reader_and_one_name(tmp_path):
    """Training and evaluation read the same pairs; 'autoj' is the old name of 'auto-j'."""
    rows = [{"idx": 157, "instruction": "Verify.", "input": "x", "response1": True, "response2": "True.",
             "annotator1": 1, "annotator2": 1, "annotator3": 0},
            {"idx": 467, "instruction": " ", "input": "only the input", "response1": "a", "response2": "b",
             "annotator1": 2, "annotator2": 2, "annotator3": 2}]
    f = tmp_path / "panda.json"
    f.write_text(json.dumps(rows, indent=2))
    pairs, recs = list(load(f)), load_bench("pandalm", f)
    assert [(p.chosen, p.rejected) for p in pairs] == [("true", "True."), ("b", "a")] == [r.responses for r in recs]
    assert pairs[1].conversation[0].content == recs[1].conversation[0].content == "only the input"
    aj = tmp_path / "aj.jsonl"
    aj.write_text(json.dumps({"scenario": "s", "label": 1, "prompt": "P", "response 1": "a", "response 2": "b"}) + "\n")
    assert detect_format(aj) == detect(aj) == "auto-j" and "autoj" not in LOADERS
    assert [r.responses for r in load_bench("autoj", aj)] == [("b", "a")] == [(p.chosen, p.rejected) for p in load(aj, "autoj")]
    for bad in ({"label": True}, {"label": 1.0}, {"label": 3}, {"label": "one"}):  # never bools or floats
        aj.write_text(json.dumps({"scenario": "s", "prompt": "P", "response 1": "a", "response 2": "b", **bad}) + "\n")
        for read in (lambda: list(load(aj)), lambda: load_bench("auto-j", aj)):
            with pytest.raises(InputError) as e:
                read()
            located(e.value, aj, line=1, field="label")


def test_candidates_use_the_engine_reader(tmp_path):
    f = write_bytes(tmp_path / "c.json", b'[\n  "one",\n  "tw\\udc00o"\n]')
    with pytest.raises(InputError, match="lone UTF-16 surrogate") as e:
        read_candidates(str(f))
    located(e.value, f, line=3)
    f = write_bytes(tmp_path / "c.txt", b"one\n---\ntw\xffo\n")
    with pytest.raises(InputError, match="not valid UTF-8") as e:
        read_candidates(str(f))
    located(e.value, f, line=3)
    f = write_bytes(tmp_path / "c.jsonl", b'"one"\n{"response": "two"}\n')
    assert read_candidates(str(f)) == ["one", "two"]


def test_a_corrupt_parquet_file_is_an_input_error(tmp_path):
    f = tmp_path / "p.parquet"
    write_pairs([pair("q", "a", "b", id=str(i)) for i in range(50)], f)
    data = f.read_bytes()
    for name, bad in {"cut": data[: len(data) // 2], "junk": b"PAR1" + b"\x00" * 64 + b"PAR1",
                      "text": b"hello"}.items():
        g = write_bytes(tmp_path / f"{name}.parquet", bad)
        with pytest.raises(InputError, match="not a readable parquet file") as e:
            list(iter_rows(g))
        located(e.value, g)


# -- fuzz targets -----------------------------------------------------------------------

TEXT = st.one_of(st.text(max_size=12), st.text(st.characters(categories=["Cs"]), max_size=2),
                 st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: yo", "A>B", "B>A", "0", "1"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.integers(), st.floats(), TEXT)
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.one_of(st.sampled_from(["user", "assistant", "system",
                                                                                  "human", "gpt"]), SCALARS),
                                              "content": st.one_of(TEXT, SCALARS), "answer": TEXT})


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4)


JSON = st.recursive(SCALARS, _containers, max_leaves=12)
VALUES = st.one_of(SCALARS, JSON, st.lists(MESSAGE, max_size=4), MESSAGE, st.lists(TEXT, min_size=1, max_size=4),
                   st.lists(st.lists(MESSAGE, max_size=2), max_size=2))
#: every field any reader looks at, so that drawn rows get far into each format's checks
KEYS = sorted({
    "id", "conversation", "context", "prompt", "response", "chosen", "rejected", "system", "source",
    "label_origin", "labellers", "attributes", "split", "tie", "tree_id", "chosen_rank", "rejected_rank",
    "annotator1", "annotator2", "annotator3", "instruction", "input", "response1", "response2", "idx",
    "motivation_app", "cmp_key", "label", "response 1", "response 2", "scenario", "annotator",
    "chosen_generator", "rejected_generator", "preference", "source_dataset", "category", "subset",
    "domain", "pair_id", "question", "response_A", "response_B", "conversation_input", "category_path",
    "bon_best", "loser_list", "reject", "pair_uid", "bon_uid", "output_1", "output_2", "responses",
    "correct", "response_1", "score_1", "response_2", "score_2", "question_id", "num_correct",
    "judgments", "chosen_score", "rejected_score", "text", "turns",
})
U, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
#: one valid row per format: mutated a field or two at a time, rows get past the first check
VALID = {
    "arbiter": {"id": "1", "conversation": [U], "chosen": "a", "rejected": "b", "source": "s",
                "label_origin": "human", "labellers": ["x"], "attributes": {}, "split": "train", "tie": False},
    "prompt": {"prompt": "q", "chosen": "a", "rejected": "b", "system": "s", "id": "1"},
    "messages": {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "b"}]},
    "hh-rlhf": {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
    "oasst": {"context": [{"role": "prompter", "content": "q"}], "chosen": "a", "rejected": "b",
              "tree_id": "t", "chosen_rank": 0, "rejected_rank": 1},
    "pandalm": {"idx": 1, "instruction": "i", "input": "x", "response1": "a", "response2": "b",
                "annotator1": 1, "annotator2": 2, "annotator3": 1, "motivation_app": "m"},
    "auto-j": {"scenario": "s", "label": 1, "prompt": "p", "response 1": "a", "response 2": "b"},
    "alpacaeval": {"prompt": "q", "chosen": "a", "rejected": "b", "annotator": "g", "chosen_generator": "x",
                   "rejected_generator": "y", "preference": 1.0, "source_dataset": "s"},
    "rewardbench": {"id": 1, "prompt": "q", "chosen": "a", "rejected": "b", "subset": "hep-go"},
    "rewardbench2": {"id": "ref:1", "prompt": "q", "chosen": ["a"], "rejected": ["b", "c", "d"], "subset": "Ties"},
    "rm-bench": {"id": "1", "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"], "domain": "chat"},
    "judgebench": {"pair_id": "1", "source": "s", "question": "q", "response_A": "a", "response_B": "b",
                   "label": "A>B"},
    "rmb": {"pair_uid": "1", "conversation_input": [U], "chosen": {"answer": "a"}, "reject": {"answer": "b"},
            "category_path": "c"},
    "rmb-bon": {"bon_uid": "1", "conversation_input": [U], "bon_best": {"answer": "a"},
                "loser_list": [{"answer": "b"}], "category_path": "c"},
    "llmbar": {"input": "q", "output_1": "a", "output_2": "b", "label": 1},
    "ppe": {"prompt": "q", "responses": ["a", "b"], "correct": [True, False], "question_id": 1},
    "ppe-wide": {"prompt": "q", "response_1": "a", "score_1": 1, "response_2": "b", "score_2": 0},
    "scored-pairs": {"chosen_score": 1.0, "rejected_score": 0.5},
    "judgebench-rm": {"pair_id": "1", "source": "s", "label": "A>B",
                      "judgments": [{"judgment": {"scores": [1.0, 2.0]}, "decision": "A>B"}]},
}


@st.composite
def mutated(draw) -> object:
    """A valid row of some format with up to three fields deleted or replaced."""
    row = dict(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(row) + KEYS))
        if draw(st.booleans()) and key in row:
            del row[key]
        else:
            row[key] = draw(VALUES)
    return row


ROWS = st.one_of(mutated(), mutated(), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=10), JSON)
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def serialize(rows: list, style: str) -> bytes:
    """Rows as JSONL or a JSON array; strings with lone surrogates become invalid UTF-8 bytes
    half of the time (``surrogatepass``) and ``\\udXXX`` escapes otherwise."""
    if style == "array":
        text = json.dumps(rows, indent=1, ensure_ascii=False)
    else:
        text = "".join(json.dumps(r, ensure_ascii=style == "ascii") + "\n" for r in rows)
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def files(draw) -> bytes:
    """Bytes of a plausible file: real rows, then (often) a few bytes broken."""
    data = serialize(draw(st.lists(ROWS, max_size=4)), draw(st.sampled_from(["jsonl", "ascii", "array"])))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
        elif op == "cut":
            data = data[:i]
        else:
            data = data[:i] + draw(st.sampled_from([b"[" * 300, b"\xff", b"\\ud800", b"9" * 5000, b"\n", b'"']))
            data += data[i:]
    return data


def expect_rows_or_located_error(path: Path, read) -> None:  # noqa: ANN001 - any reader
    try:
        result = read(path)
        if not isinstance(result, list):
            list(result)
    except InputError as e:
        assert e.source is not None and Path(e.source).name == path.name, e
        assert e.field is None or e.line is not None or "parquet" in str(e), e


def _tmp(tmp_path_factory, suffix: str) -> Path:
    return tmp_path_factory.mktemp("fuzz") / f"input{suffix}"


@pytest.mark.fuzz
@FUZZ
@given(data=st.one_of(files(), st.binary(max_size=300)), suffix=st.sampled_from([".jsonl", ".json", ".jsonl.gz"]),
       gz=st.sampled_from(["none", "whole", "cut"]))
def test_fuzz_json_readers(tmp_path_factory, data, suffix, gz):
    if suffix.endswith(".gz") and gz != "none":
        data = gzip.compress(data)
        data = data if gz == "whole" else data[: len(data) * 2 // 3]
    path = write_bytes(_tmp(tmp_path_factory, suffix), data)
    for read in (read_rows, read_json_or_jsonl, read_items, read_array, benchmark_prompts, iter_rows,
                 lambda p: read_candidates(str(p))):
        expect_rows_or_located_error(path, read)


@pytest.mark.fuzz
@FUZZ
@given(data=files(), fmt=st.sampled_from(["auto", *FORMATS, "autoj"]), suffix=st.sampled_from([".jsonl", ".json"]),
       skip=st.booleans())
def test_fuzz_every_importer(tmp_path_factory, data, fmt, suffix, skip):
    path = write_bytes(_tmp(tmp_path_factory, suffix), data)
    opts = {"errors": "skip"} if skip else {}
    expect_rows_or_located_error(path, lambda p: load(p, fmt, **opts))


@pytest.mark.fuzz
@FUZZ
@given(data=files(), fmt=st.sampled_from([*LOADERS, "autoj", *SCORE_LOADERS, "detect"]),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_fuzz_every_benchmark_loader(tmp_path_factory, data, fmt, suffix):
    path = write_bytes(_tmp(tmp_path_factory, suffix), data)
    if fmt == "detect":
        detect(path)  # never raises: None for anything it does not recognise
        return
    read = SCORE_LOADERS[fmt] if fmt in SCORE_LOADERS else (lambda p: load_bench(fmt, p))
    expect_rows_or_located_error(path, read)


@pytest.mark.fuzz
@FUZZ
@given(rows=st.lists(ROWS, min_size=1, max_size=4), cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_fuzz_parquet_reader(tmp_path_factory, rows, cut, flips):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _tmp(tmp_path_factory, ".parquet")
    cols = {k: [json.dumps(r.get(k), ensure_ascii=True) if isinstance(r, dict) else None for r in rows]
            for k in ("conversation", "chosen", "rejected", "attributes", "labellers")}
    texts = [r.get("chosen") if isinstance(r, dict) and isinstance(r.get("chosen"), str) else None for r in rows]
    if any(texts):  # a plain string column; parquet stores UTF-8 only, so no lone surrogates
        cols["chosen"] = [json.dumps(x)[1:-1] if x is not None and lone_surrogate(x) else x for x in texts]
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    data = bytearray(buf.getvalue())
    for i in flips:
        data[i % len(data)] ^= 0xFF
    data = bytes(data[: max(1, int(len(data) * cut))] if cut < 0.5 else data)
    write_bytes(path, data)
    expect_rows_or_located_error(path, iter_rows)
    for fmt in ("arbiter", "auto", "prompt"):
        expect_rows_or_located_error(path, lambda p, fmt=fmt: load(p, fmt))
