"""Overlapping token windows for texts longer than the model reads.

A text that does not fit the model's context beside its conversation is never cut and never
passed as safe: it is split into windows of at most ``size`` tokens that overlap by a quarter
of a window (so a sentence cut by one window boundary is whole in the next window), and every
window is scored. The caller takes the maximum over windows per category.

Windows are slices of the original text at token boundaries: where the tokenizer reports
character offsets (Hugging Face ``tokenizers``: ONNX and torch models) the text itself is
sliced, so a window is exactly a part of the input; otherwise the window's tokens are decoded
back to text.
"""

from __future__ import annotations

from typing import Any

#: share of a window repeated in the next one
OVERLAP = 0.25


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]] | None:
    """(start, end) character offsets of each token of ``text``, or None when the tokenizer
    cannot say (then :func:`split` decodes ids)."""
    inner = getattr(tokenizer, "tokenizer", None)
    encode = getattr(inner, "encode", None)
    if encode is None:
        return None
    try:
        enc = encode(text, add_special_tokens=False)
    except TypeError:
        return None
    offsets = getattr(enc, "offsets", None)
    return [tuple(o) for o in offsets] if offsets is not None else None


#: at most this many tokens are given up at each end of a window to keep words whole
_SNAP = 16


def _word_bounds(spans: list[tuple[int, int]], first: int, last: int) -> tuple[int, int]:
    """Tokens [first, last) moved inward so the window neither starts nor ends inside a word
    (a token that follows its neighbour with no gap continues a word); unchanged when the
    word is longer than :data:`_SNAP` tokens. The overlap (a quarter) keeps the cover whole."""
    a = first
    while 0 < a < first + _SNAP and a < last - 1 and spans[a][0] == spans[a - 1][1]:
        a += 1
    b = last
    while b < len(spans) and b > last - _SNAP and b - 1 > a and spans[b][0] == spans[b - 1][1]:
        b -= 1
    ok_a = a == 0 or spans[a][0] != spans[a - 1][1]
    ok_b = b >= len(spans) or spans[b][0] != spans[b - 1][1]
    return (a if ok_a else first), (b if ok_b else last)


def starts(n_tokens: int, size: int) -> list[int]:
    """Window start positions over ``n_tokens`` tokens: step ``size`` less the overlap, and a
    last window that ends at the last token."""
    if n_tokens <= size:
        return [0]
    step = max(1, size - int(size * OVERLAP))
    out = list(range(0, n_tokens - size, step))
    out.append(n_tokens - size)
    return out


def split(tokenizer: Any, text: str, size: int) -> list[str]:
    """``text`` as overlapping windows of at most ``size`` tokens (one window if it fits)."""
    if size < 1:
        raise ValueError(f"window size must be at least 1 token, got {size}")
    spans = token_spans(tokenizer, text)
    if spans is not None:
        if len(spans) <= size:
            return [text]
        out = []
        for s in starts(len(spans), size):
            first, last = _word_bounds(spans, s, s + size)
            begin = 0 if first == 0 else spans[first][0]
            end = len(text) if last >= len(spans) else spans[last - 1][1]
            out.append(text[begin:end])
        return out
    ids = tokenizer.ids(text, add_special=False)
    if len(ids) <= size:
        return [text]
    return [tokenizer.decode(ids[s:s + size]) for s in starts(len(ids), size)]
