"""Reading JSON input (JSONL, or a JSON array) lazily, with errors that name file, line and field.

The one JSON reader: scoring input, candidate lists, preference sets and benchmark
files all come through here, so every one of them refuses bad bytes the same way,
with a message instead of a traceback:

* bytes that are not UTF-8 (the line, and the byte offset in the line and in the file);
* a ``.gz`` file that is corrupt or cut short;
* JSON that is invalid, nested deeper than :data:`MAX_DEPTH`, or holds an integer
  longer than Python converts (4,300 digits);
* a string holding a lone UTF-16 surrogate (``"\\ud800"``): not text, and it would fail
  later, far from its line, when tokenized or written out.

Accepted scoring rows::

    {"conversation": [{"role": "user", "content": "..."}, ...], "response": "..."}
    {"prompt": "...", "response": "..."}            # a single user turn
    {"prompt": "...", "system": "...", "response": "..."}
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from engine.errors import InputError
from engine.types import Item, conversation

#: deepest nesting of arrays/objects accepted; real rows nest 3 or 4 deep
MAX_DEPTH = 200
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def item_from_row(row: Any) -> Item:
    if not isinstance(row, dict):
        raise InputError(f"expected a JSON object, got {type(row).__name__}")
    if "response" not in row:
        raise InputError("missing (every row needs the response to score)", field="response")
    if "conversation" in row:
        conv_raw = row["conversation"]
        if not isinstance(conv_raw, list):
            raise InputError("must be a list of {role, content} messages", field="conversation")
        conv = conversation(conv_raw, system=row.get("system"))
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise InputError("must be a string", field="prompt")
        conv = conversation(row["prompt"], system=row.get("system"))
    else:
        raise InputError("missing: give 'conversation' (a list of messages) or 'prompt' (a string)",
                         field="conversation")
    return Item.of(conv, row["response"])


def _source_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def _open_binary(path: str | Path) -> IO[bytes]:
    name = _source_name(path)
    if name == "<stdin>":  # bytes, so bad UTF-8 on stdin is located like in a file
        buffer = getattr(sys.stdin, "buffer", None)
        return buffer if buffer is not None else io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))
    try:
        if str(path).endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except IsADirectoryError:
        raise InputError("is a folder; give a file", source=name) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror or e})", source=name) from None


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets


def _too_deep(text: str, limit: int = MAX_DEPTH) -> int | None:
    """The offset of the first bracket nested deeper than ``limit``, or None. Checked
    before json.loads, whose recursion would end in RecursionError on deep input."""
    if text.count("[") + text.count("{") <= limit:
        return None  # the common case, at C speed
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            if depth > limit:
                return m.start()
        elif c in "]}":
            depth -= 1
    return None


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """The dotted path of the first string in ``value`` holding a lone surrogate, or None."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return at or "(value)"
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and lone_surrogate(k) is not None:
                    return f"{at}.{k!r}" if at else repr(k)
                stack.append((x, f"{at}.{k}" if at else str(k)))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def parse_json(text: str, *, source: str | None = None, line: int | None = None) -> Any:
    """One JSON value, or an InputError that says what is wrong with it and where."""
    if _too_deep(text) is not None:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels", source=source, line=line)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", source=source, line=line) from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits, ...
        raise InputError(f"not usable JSON ({e})", source=source, line=line) from None
    if _ESCAPED_SURROGATE.search(text):
        _refuse_surrogates(value, source, line)
    return value


def _refuse_surrogates(value: Any, source: str | None, line: int | None) -> None:
    at = lone_surrogate(value)
    if at is not None:
        raise InputError("holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                         "which is not text", source=source, line=line, field=at)


def _decode(raw: bytes, *, source: str, line: int, file_offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1].hex()
        raise InputError(f"not valid UTF-8 (byte 0x{bad} at offset {e.start} of the line, offset "
                         f"{file_offset + e.start} of the file); save the file as UTF-8",
                         source=source, line=line) from None


def _lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset of the line in the file, raw line) of a file or stdin;
    a corrupt or truncated ``.gz`` is an InputError naming the line it stopped at."""
    name = _source_name(path)
    f = _open_binary(path)
    n, offset = 0, 0
    try:
        while True:
            try:
                raw = f.readline()
            except _GZIP_ERRORS as e:
                raise InputError(f"the gzip data is corrupt or cut short ({e})", source=name,
                                 line=n + 1) from None
            except OSError as e:
                raise InputError(f"cannot read ({e.strerror or e})", source=name, line=n + 1) from None
            if not raw:
                return
            n += 1
            yield n, offset, raw
            offset += len(raw)
    finally:
        if f is not getattr(sys.stdin, "buffer", None):
            f.close()


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; '-' reads standard input and
    ``.gz`` files are decompressed on the fly. The one JSONL reader every loader uses."""
    name = _source_name(path)
    for n, offset, raw in _lines(path):
        text = _decode(raw, source=name, line=n, file_offset=offset)
        if n == 1:
            text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark
        if text.strip():
            yield n, parse_json(text, source=name, line=n)


def read_text(path: str | Path) -> str:
    """A whole file (or stdin, or a ``.gz``) as UTF-8 text, with the reader's errors."""
    name = _source_name(path)
    parts = [_decode(raw, source=name, line=n, file_offset=off) for n, off, raw in _lines(path)]
    return "".join(parts).removeprefix("\ufeff")


def read_array(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line the element starts on, element) for each element of a top-level JSON array."""
    name = _source_name(path)
    text = read_text(path)
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise InputError("expected a JSON array", source=name, line=text.count("\n", 0, pos) + 1)
    deep = _too_deep(text, MAX_DEPTH + 1)  # + 1: the array itself
    if deep is not None:
        raise InputError(f"JSON nested deeper than {MAX_DEPTH} levels", source=name,
                         line=text.count("\n", 0, deep) + 1)
    dec, pos, line, last = json.JSONDecoder(), pos + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise InputError("the JSON array is not closed (no final ']')", source=name,
                             line=text.count("\n") + 1)
        if text[pos] == "]":
            return
        line += text.count("\n", last, pos)
        last = pos
        value, end = _decode_element(dec, text, pos, name, line)
        if _ESCAPED_SURROGATE.search(text, pos, end):
            _refuse_surrogates(value, name, line)
        pos = end
        yield line, value


def _decode_element(dec: json.JSONDecoder, text: str, pos: int, source: str, line: int) -> tuple[Any, int]:
    """The JSON value starting at ``pos`` and where it ends; errors located at their line."""
    try:
        return dec.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", source=source, line=e.lineno) from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits, ...
        raise InputError(f"not usable JSON ({e})", source=source, line=line) from None


def is_json_array(path: str | Path) -> bool:
    """True when a file's first non-blank character is '[' (stdin is always JSONL)."""
    if str(path) == "-":
        return False
    with _open_binary(path) as f:
        try:
            head = f.read(1 << 12)
        except (*_GZIP_ERRORS, OSError):
            return False  # read_rows then says what is wrong, at its line
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def read_json_or_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """A JSON array when the file starts with '[' (:func:`read_array`), else JSONL."""
    return read_array(path) if is_json_array(path) else read_rows(path)


def read_items(path: str | Path) -> Iterator[tuple[int, dict[str, Any], Item]]:
    """(line number, raw row, Item) for every row; the first bad row raises InputError."""
    name = _source_name(path)
    for n, row in read_rows(path):
        try:
            yield n, row, item_from_row(row)
        except InputError as e:
            raise e.located(name, n) from None
