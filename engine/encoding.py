"""From (conversation, response) to token ids, the same way for every backend.

Two encodings:

* decoder reward models (Qwen3, Llama, ...): the model's own chat template with the
  response as the final assistant turn, the textual BOS removed when the tokenizer
  adds one itself (as the Skywork-Reward-V2 model cards do), so BOS is never doubled;
* cross-encoders without a template (BERT-style): the text pair
  (conversation as text, response), ``[CLS] conversation [SEP] response [SEP]``.

Truncation policy, for input longer than the model's context: the response is kept
whole, and the conversation is cut from its start (the end of a conversation is
what the response answers). Every cut is counted in ``Encoded.cut_tokens``. A
response that alone does not fit is refused (:class:`InputTooLongError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from engine.errors import InputError, InputTooLongError, ModelError
from engine.modelmeta import meta_field_error, read_config, read_json_object
from engine.templates import ChatTemplate, conversation_as_text
from engine.types import Item, Message

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: tuple[int, ...]
    type_ids: tuple[int, ...] | None  # cross-encoders only
    cut_tokens: int  # conversation tokens dropped from the start
    prompt_len: int  # tokens before the response starts (shared by Best-of-N candidates)


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as strings or AddedToken dicts
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class TokenizerFiles:
    """What a model folder says about its text side (tokenizer, template, pad id)."""

    tokenizer_path: Path
    chat_template: str | None
    special_tokens: dict[str, str | None]
    pad_token_id: int | None
    max_length: int
    token_types: Literal["segment", "zeros"]
    #: where ``max_length`` comes from (file and field), for the error that refuses more
    max_length_source: str = ""

    @staticmethod
    def from_folder(folder: Path, arbiter_meta: dict[str, Any] | None = None) -> TokenizerFiles:
        folder = Path(folder)
        tok_path = folder / "tokenizer.json"
        if not tok_path.is_file():
            raise ModelError(
                f"{folder}: no tokenizer.json. Arbiter needs the fast tokenizer file next to "
                "the model; re-export it, or save the tokenizer with "
                "AutoTokenizer.from_pretrained(...).save_pretrained(folder)."
            )
        meta = arbiter_meta or {}
        cfg = read_config(folder)
        tcfg = read_json_object(folder / "tokenizer_config.json")
        limit, source = _trained_length(folder, meta, cfg, tcfg)
        pad_id = meta.get("pad_token_id", cfg.get("pad_token_id"))
        return TokenizerFiles(
            tokenizer_path=tok_path,
            chat_template=_chat_template(folder, meta, tcfg),
            special_tokens={k: _token_text(tcfg.get(k)) for k in ("bos_token", "eos_token", "pad_token",
                                                                  "unk_token")},
            pad_token_id=pad_id if type(pad_id) is int else None,
            max_length=limit,
            token_types=meta.get("token_types") or "segment",
            max_length_source=source,
        )


#: a tokenizer_config.json model_max_length at or above this is transformers' "no limit" (1e30)
_NO_LIMIT = 10**7


def _trained_length(folder: Path, meta: dict[str, Any], cfg: dict[str, Any],
                    tcfg: dict[str, Any]) -> tuple[int, str]:
    """The longest input the model was made for, in tokens, and the file and field that say so.

    The smallest of arbiter.json ``max_length``, config.json ``max_position_embeddings`` and
    tokenizer_config.json ``model_max_length``; 512 when none says (BERT's table size).
    """
    found = [(v, f"{folder / name}: {key}") for name, data, key in (
        ("arbiter.json", meta, "max_length"),
        ("config.json", cfg, "max_position_embeddings"),
        ("tokenizer_config.json", tcfg, "model_max_length"),
    ) if type(v := data.get(key)) is int and 0 < v < _NO_LIMIT]
    return min(found) if found else (512, f"{folder}: no length in its metadata, 512 assumed")


def _chat_template(folder: Path, meta: dict[str, Any], tcfg: dict[str, Any]) -> str | None:
    """arbiter.json's template, else chat_template.jinja, else tokenizer_config.json's (typed)."""
    template = meta.get("chat_template")
    if template is None:
        jinja = folder / "chat_template.jinja"
        try:
            template = jinja.read_text(encoding="utf-8") if jinja.is_file() else tcfg.get("chat_template")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"{jinja}: not readable as UTF-8 text ({e})") from e
        if isinstance(template, list):  # named templates: take the default one
            named = [t for t in template if isinstance(t, dict)]
            template = next((t.get("template") for t in named if t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise meta_field_error(folder / "tokenizer_config.json", "chat_template", template,
                               "a string or a list of {name, template} objects")
    return template or None


def load_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a bare Exception on bad files; a Rust panic is a BaseException
        raise ModelError(f"{path}: not a valid tokenizer.json ({str(e)[:200]})") from e
    tok.no_truncation()  # truncation is ours (see the module docstring)
    tok.no_padding()
    return tok


@dataclass(frozen=True, slots=True)
class PairLayout:
    """Where a cross-encoder puts its special tokens: ``prefix A middle B suffix``.

    Learnt once per tokenizer, so truncation and joining are plain list operations
    for every runtime (BERT: ``[CLS] A [SEP] B [SEP]``, RoBERTa: ``<s> A </s></s> B </s>``).
    """

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    # segment (token-type) ids: prefix, A, middle, B, suffix
    types: tuple[tuple[int, ...], int, tuple[int, ...], int, tuple[int, ...]]

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def join(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        ids = [*self.prefix, *a, *self.middle, *b, *self.suffix]
        tp, ta, tm, tb, ts = self.types
        return ids, [*tp, *[ta] * len(a), *tm, *[tb] * len(b), *ts]


class TextTokenizer(Protocol):
    """What the encoder needs from a tokenizer; HF ``tokenizers`` and llama.cpp both provide it."""

    def ids(self, text: str, add_special: bool) -> list[int]:
        """Token ids of ``text``; special-token text inside it is parsed as special tokens."""
        ...

    def token_to_id(self, token: str) -> int | None: ...

    def pair_layout(self) -> PairLayout: ...

    def decode(self, ids: list[int]) -> str: ...


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (``"\\ud800"``, from a broken JSON escape or a
    cut UTF-16 string) is bad input, not a crash in the tokenizer."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"not valid Unicode: a lone surrogate {text[e.start]!r} at character "
                         f"{e.start}; no tokenizer can read it") from None


class HFTextTokenizer:
    """A ``tokenizer.json`` through Hugging Face ``tokenizers`` (ONNX and torch backends)."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = load_tokenizer(path)
        self.path = path

    def ids(self, text: str, add_special: bool) -> list[int]:
        if not text.isascii():
            utf8(text)  # a lone surrogate: a clear InputError, not the tokenizer's TypeError
        return self.tokenizer.encode(text, add_special_tokens=add_special).ids

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def pair_layout(self) -> PairLayout:
        # post-process two one-token sentinels and read where the specials landed
        tok = self.tokenizer
        a, b = tok.encode("a", add_special_tokens=False), tok.encode("b", add_special_tokens=False)
        enc = tok.post_process(a, b, add_special_tokens=True)
        ids, types = enc.ids, enc.type_ids
        if len(a.ids) != 1 or len(b.ids) != 1 or a.ids == b.ids or a.ids[0] not in ids or b.ids[0] not in ids:
            raise ModelError(f"{self.path}: cannot learn this tokenizer's text-pair layout (it does not "
                             "encode 'a' and 'b' as one token each)")
        ia, ib = ids.index(a.ids[0]), len(ids) - 1 - ids[::-1].index(b.ids[0])
        return PairLayout(tuple(ids[:ia]), tuple(ids[ia + 1:ib]), tuple(ids[ib + 1:]),
                          (tuple(types[:ia]), types[ia], tuple(types[ia + 1:ib]), types[ib],
                           tuple(types[ib + 1:])))


def _max_length(files: TokenizerFiles, requested: int | None) -> int:
    """The token limit to encode to: the model's own, or a smaller one that was asked for.

    More than the model was trained for is refused: its position table ends there, so longer
    input makes llama.cpp abort (GGML_ASSERT in get_rows) and onnxruntime fail mid-run.
    """
    limit = files.max_length
    if requested is None:
        return limit
    if type(requested) is not int or requested < 1:
        raise ModelError(f"max_length {requested!r}: expected a positive number of tokens")
    if requested > limit:
        source = files.max_length_source or (
            f"{files.tokenizer_path}: context_length / arbiter.max_length"
            if files.tokenizer_path.suffix == ".gguf" else f"{files.tokenizer_path}: its metadata")
        raise ModelError(f"max_length {requested} is more than this model was trained for: {limit} "
                         f"tokens ({source}). Use --max-length {limit} or less.")
    return requested


def _template_origin(files: TokenizerFiles) -> str:
    """Where a chat template came from, for its error messages: the GGUF file, or the folder."""
    p = files.tokenizer_path
    return str(p if p.suffix == ".gguf" else p.parent)


class Encoder:
    """Turns items into token ids for one model; shared by every backend."""

    def __init__(self, files: TokenizerFiles, max_length: int | None = None,
                 tokenizer: TextTokenizer | None = None) -> None:
        self.files = files
        self.tokenizer: TextTokenizer = tokenizer or HFTextTokenizer(files.tokenizer_path)
        self.max_length = _max_length(files, max_length)
        self.template = (
            ChatTemplate(files.chat_template, files.special_tokens, origin=_template_origin(files))
            if files.chat_template else None
        )
        bos = files.special_tokens.get("bos_token")
        bos_id = self.tokenizer.token_to_id(bos) if bos else None
        added = self.tokenizer.ids("", add_special=True)
        # Strip the template's textual BOS only when the tokenizer adds BOS itself.
        self._strip_bos = bos if bos and bos_id is not None and bos_id in added else None
        self.pad_token_id = self._pad_id()
        self._pair_layout = self.tokenizer.pair_layout() if not self.template else None

    def _pad_id(self) -> int:
        if self.files.pad_token_id is not None:
            return self.files.pad_token_id
        for name in ("pad_token", "eos_token"):
            tok = self.files.special_tokens.get(name)
            if tok and (i := self.tokenizer.token_to_id(tok)) is not None:
                return i
        return 0

    @property
    def kind(self) -> Literal["chat", "pair"]:
        return "chat" if self.template else "pair"

    # -- chat-template models -------------------------------------------------
    def render(self, item: Item) -> str:
        """The exact text the model reads (no special-token removal besides a doubled BOS)."""
        assert self.template is not None
        text = self.template.render((*item.conversation, Message("assistant", item.response)),
                                    add_generation_prompt=False)
        return self._no_bos(text)

    def render_prompt(self, item: Item) -> str:
        assert self.template is not None
        return self._no_bos(self.template.render(item.conversation, add_generation_prompt=True))

    def prompt_ids(self, item: Item) -> list[int]:
        """Token ids of the conversation up to where the response starts (no cut)."""
        return self.tokenizer.ids(self.render_prompt(item), add_special=True)

    def _no_bos(self, text: str) -> str:
        if self._strip_bos and text.startswith(self._strip_bos):
            return text[len(self._strip_bos):]
        return text

    def _encode_chat(self, item: Item) -> Encoded:
        full = self.tokenizer.ids(self.render(item), add_special=True)
        prompt = self.prompt_ids(item)
        # the boundary: prompt tokens usually prefix the full tokenization; a BPE merge
        # across it (rare with chat templates) moves it to the longest common prefix
        p = 0
        for a, b in zip(prompt, full, strict=False):
            if a != b:
                break
            p += 1
        if len(full) <= self.max_length:
            return Encoded(tuple(full), None, 0, p)
        head = 1 if self._strip_bos else 0  # keep the tokenizer-added BOS
        response = full[p:]
        budget = self.max_length - head - len(response)
        if budget < 1:
            raise InputTooLongError(
                f"the response alone is {len(response)} tokens; this model reads at most "
                f"{self.max_length}. A cut response would be a different response, so it is not scored."
            )
        kept = full[:head] + full[head:p][-budget:]
        ids = kept + response
        return Encoded(tuple(ids), None, len(full) - len(ids), len(kept))

    # -- cross-encoders ---------------------------------------------------------
    def _encode_pair(self, item: Item) -> Encoded:
        tok = self.tokenizer
        first = tok.ids(conversation_as_text(item.conversation), add_special=False)
        second = tok.ids(item.response, add_special=False)
        return self._join_pair(first, second)

    def _join_pair(self, first: list[int], second: list[int]) -> Encoded:
        """Conversation ids ``first`` cut from their start to fit beside the whole ``second``."""
        layout = self._pair_layout
        budget = self.max_length - layout.n_special - len(second)
        if budget < 1:
            raise InputTooLongError(
                f"the response alone is {len(second)} tokens; this model reads at most "
                f"{self.max_length}. A cut response would be a different response, so it is not scored."
            )
        cut = max(0, len(first) - budget)
        first = first[cut:]
        ids, types = layout.join(first, second)
        type_ids = tuple(types) if self.files.token_types == "segment" else (0,) * len(ids)
        prompt_len = len(layout.prefix) + len(first) + len(layout.middle)
        return Encoded(tuple(ids), type_ids, cut, prompt_len)

    def encode(self, item: Item) -> Encoded:
        return self._encode_chat(item) if self.template else self._encode_pair(item)

    # -- windows over a response too long for the context (``on_too_long="window"``) --
    def max_window(self) -> int:
        """The most response tokens one window can hold: the context less the pair's special
        tokens and one conversation token (a window is never scored without its context)."""
        if self.template:
            raise InputError(
                "windows over the response are only for cross-encoders (text-pair models): this "
                "model is a decoder that reads its score at the end of the response's turn, which "
                "a window cut mid-response does not have; use on_too_long 'error' or 'skip'",
                field="on_too_long")
        return self.max_length - self._pair_layout.n_special - 1

    def encode_windows(self, item: Item, size: int, stride: int) -> list[Encoded]:
        """The response's tokens in windows of ``size`` tokens starting every ``stride`` tokens
        (:func:`window_starts`), each joined with the conversation as :meth:`encode` does (cut
        from its start to fit beside the window). A response of ``size`` tokens or fewer is one
        window, equal to :meth:`encode`."""
        if not 1 <= size <= self.max_window():
            raise InputError(f"window size {size} tokens: must be 1 to {self.max_window()} for this "
                             f"model ({self.max_length} tokens of context)", field="window_tokens")
        if not 1 <= stride <= size:
            raise InputError(f"window stride {stride} tokens: must be 1 to the window size ({size})",
                             field="window_stride")
        tok = self.tokenizer
        first = tok.ids(conversation_as_text(item.conversation), add_special=False)
        second = tok.ids(item.response, add_special=False)
        return [self._join_pair(first, second[s:s + size]) for s in window_starts(len(second), size, stride)]


def window_starts(n_tokens: int, size: int, stride: int) -> list[int]:
    """Start positions of windows of ``size`` tokens, ``stride`` tokens apart, over ``n_tokens``
    tokens, and a last window that ends at the last token: ``1 + ceil((n - size) / stride)``
    windows (one when ``n <= size``). The idea of ``app.moderate.windows.starts`` (stride three
    quarters of a window there), with the stride given."""
    if n_tokens <= size:
        return [0]
    out = list(range(0, n_tokens - size, stride))
    out.append(n_tokens - size)
    return out
