"""``Scorer.score_texts``: already-rendered text scored as given (OpenRLHF's remote RM ``query``).

Every backend (torch, ONNX, GGUF) on a decoder (tiny Qwen3, ChatML template) and a cross-encoder
(MiniLM), each with a length correction so that the corrected and the raw paths both show.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

import engine
from engine.errors import InputError, InputTooLongError
from engine.modelmeta import read_meta, write_meta
from engine.types import Item
from exports.probes import probe_items

BETA = 0.5  # the length correction written into every source model here (reward per log-char)
FORMATS = ["torch", "onnx", "gguf"]


@pytest.fixture(scope="module")
def sources(hf_models, tmp_path_factory) -> dict[str, object]:
    """HF folders with a length correction: the decoder, and MiniLM trained with zero token types
    (what llama.cpp feeds, so its GGUF is the same model)."""
    from tests.models import minilm_reward_model

    root = tmp_path_factory.mktemp("score-texts")
    out = {}
    for arch, src in {"qwen3": hf_models["qwen3"],
                      "minilm": minilm_reward_model(root / "minilm-zeros-src", token_types="zeros")}.items():
        dst = root / arch
        shutil.copytree(src, dst)
        write_meta(dst, {**read_meta(dst), "length_correction": BETA})
        out[arch] = dst
    return out


@pytest.fixture(scope="module")
def model_paths(sources, tmp_path_factory) -> dict[tuple[str, str], object]:
    """(arch, format) -> a path engine.load opens: the HF folder, its ONNX fp32 and GGUF f32 exports."""
    from exports.gguf import export_gguf
    from exports.onnx import export_onnx

    root = tmp_path_factory.mktemp("score-texts-exports")
    out = {}
    for arch, src in sources.items():
        out[arch, "torch"] = src
        out[arch, "onnx"] = export_onnx(src, root / f"{arch}-onnx")
        out[arch, "gguf"] = export_gguf(src, root / f"{arch}-gguf", quants=("f32",))[0]
    return out


@pytest.fixture(scope="module", params=FORMATS)
def decoder(request, model_paths):
    with engine.load(model_paths["qwen3", request.param]) as rm:
        assert rm.encoder.kind == "chat" and rm.info.length_correction == pytest.approx(BETA)
        yield rm


@pytest.fixture(scope="module", params=FORMATS)
def cross(request, model_paths):
    with engine.load(model_paths["minilm", request.param]) as rm:
        assert rm.encoder.kind == "pair" and rm.info.length_correction == pytest.approx(BETA)
        yield rm


def _uncut(rm, items: list[Item]) -> list[Item]:
    """Probe items that fit whole (a cut conversation is not the rendered text any more)."""
    kept = [it for it in items if rm.encode(it).cut_tokens == 0]
    assert len(kept) >= 20
    return kept


def _values(scores) -> np.ndarray:
    return np.array([s.value for s in scores])


@contextlib.contextmanager
def raw(rm) -> Iterator:
    """Raw outputs inside the block; length control comes back on after."""
    rm.length_control = False
    try:
        yield rm
    finally:
        rm.length_control = True


# ---- decoders ---------------------------------------------------------------------------
def test_decoder_rendered_text_tokenizes_and_scores_as_the_item(decoder):
    items = _uncut(decoder, probe_items()[0])
    texts = [decoder.encoder.render(it) for it in items]
    prompts = [decoder.encoder.render_prompt(it) for it in items]
    # the same token ids as score() reads: nothing re-templated, no BOS added or doubled
    got_ids = [decoder.encoder.tokenizer.ids(decoder.encoder._no_bos(t), add_special=True) for t in texts]
    assert got_ids == [list(decoder.encode(it).ids) for it in items]

    with_prompt = decoder.score_texts(texts, prompts)
    want = decoder.score(items)
    assert np.abs(_values(with_prompt) - _values(want)).max() <= 1e-6
    assert [s.n_tokens for s in with_prompt] == [s.n_tokens for s in want]
    assert not any(s.uncorrected for s in with_prompt)

    # no prompt: the response's extent is unknown, so the raw output, flagged as such
    bare = decoder.score_texts(texts)
    with raw(decoder):
        want_raw = decoder.score(items)
        raw_bare = decoder.score_texts(texts)
    assert np.abs(_values(bare) - _values(want_raw)).max() <= 1e-6
    assert all(s.uncorrected for s in bare)
    assert not any(s.uncorrected for s in raw_bare)  # control off: nothing was skipped
    assert np.abs(_values(raw_bare) - _values(want_raw)).max() <= 1e-6
    # and the correction did change something (this test can tell the two paths apart)
    assert np.abs(_values(want) - _values(want_raw)).max() > 0.1


def test_decoder_length_term_counts_the_response_of_an_openrlhf_query(decoder):
    """OpenRLHF decodes prompt ids + generated ids, so the query ends in the EOS token's text
    (generation stops on it) without the template's trailing newline; a prompt that does not
    prefix the text leaves the score raw."""
    items = _uncut(decoder, probe_items()[0])[:8]
    # ChatML's end of turn (what SmolLM2-Instruct stops on), and the tokenizer's EOS text
    ends = ["<|im_end|>", decoder.encoder.files.special_tokens["eos_token"]] * 4
    prompts = [decoder.encoder.render_prompt(it) for it in items]
    queries = [p + it.response + end for p, it, end in zip(prompts, items, ends, strict=True)]
    assert not any(q == decoder.encoder.render(it) for q, it in zip(queries, items, strict=True))
    got = _values(decoder.score_texts(queries, prompts))
    with raw(decoder):
        outputs = _values(decoder.score_texts(queries, prompts))
    terms = np.array([BETA * math.log1p(len(it.response)) for it in items])
    assert np.abs(got - (outputs - terms)).max() <= 1e-9

    wrong = decoder.score_texts(queries, ["<not this prompt>"] * len(queries))
    assert all(s.uncorrected for s in wrong)
    assert np.abs(_values(wrong) - outputs).max() <= 1e-9


def test_decoder_a_too_long_text_is_refused_with_its_index(decoder):
    n = decoder.encoder.max_length
    ok = decoder.encoder.render(Item.of("Hi", "Hello."))
    with pytest.raises(InputTooLongError) as e:
        decoder.score_texts([ok, "word " * (n + 10), ok])
    assert e.value.item_index == 1
    assert f"at most {n}" in str(e.value)


# ---- cross-encoders ------------------------------------------------------------------------
def test_cross_encoder_splits_on_the_prompt(cross):
    items = [it for it in probe_items()[0] if len(it.conversation) == 1]
    items = _uncut(cross, items)
    prompts = [it.conversation[0].content for it in items]
    texts = [p + it.response for p, it in zip(prompts, items, strict=True)]
    got = cross.score_texts(texts, prompts)
    want = cross.score(items)
    assert np.abs(_values(got) - _values(want)).max() <= 1e-6
    assert [s.n_tokens for s in got] == [s.n_tokens for s in want]
    with raw(cross):
        raw_got = _values(cross.score_texts(texts, prompts))
    assert np.abs(_values(got) - raw_got).max() > 0.1  # the correction was applied


@pytest.mark.parametrize("prompts, field", [
    (None, "prompts[0]"),
    (["Hi", None], "prompts[1]"),
    (["Hi", "Not the start"], "prompts[1]"),
    (["Hi"], "prompts"),
])
def test_cross_encoder_needs_a_matching_prompt(cross, prompts, field):
    with pytest.raises(InputError) as e:
        cross.score_texts(["Hi there", "What is 2+2? 4"], prompts)
    assert e.value.field == field
    assert f"field '{field}'" in str(e.value)


def test_cross_encoder_never_cuts_the_prompt(cross):
    """score() would cut a long conversation from its start; rendered text is refused instead."""
    n = cross.encoder.max_length
    long_prompt = "word " * (n + 10)
    assert cross.score([Item.of(long_prompt, "ok")])[0].cut_tokens > 0
    with pytest.raises(InputTooLongError) as e:
        cross.score_texts(["Hi ok", long_prompt + "ok"], ["Hi ", long_prompt])
    assert e.value.item_index == 1


# ---- both ------------------------------------------------------------------------------------
def _rows(rm) -> tuple[list[str], list[str]]:
    items = _uncut(rm, probe_items()[0])
    if rm.encoder.kind == "chat":
        return [rm.encoder.render(it) for it in items], [rm.encoder.render_prompt(it) for it in items]
    prompts = [f"{it.conversation[-1].content}" for it in items]
    return [p + it.response for p, it in zip(prompts, items, strict=True)], prompts


def test_decoder_scores_do_not_depend_on_the_batch(decoder):
    _batch_invariant(decoder)


def test_cross_encoder_scores_do_not_depend_on_the_batch(cross):
    _batch_invariant(cross)


def _batch_invariant(rm) -> None:
    texts, prompts = _rows(rm)
    base = _values(rm.score_texts(texts, prompts, batch_size=1))
    for bs in (7, 32):
        assert np.abs(_values(rm.score_texts(texts, prompts, batch_size=bs)) - base).max() <= 1e-5, bs
    # a row scored alone equals the same row scored with every other row
    alone = [rm.score_texts([t], [p])[0].value for t, p in zip(texts[:5], prompts[:5], strict=True)]
    assert np.abs(np.array(alone) - base[:5]).max() <= 1e-5
    assert np.ptp(base) > 0.1  # the rows do score differently


@pytest.mark.parametrize("texts, prompts, field", [
    ("a bare string", None, "texts"),
    (["ok", 3], None, "texts[1]"),
    (["ok"], "ok", "prompts"),
    (["ok"], [7], "prompts[0]"),
])
def test_bad_arguments_name_the_field(decoder, texts, prompts, field):
    with pytest.raises(InputError) as e:
        decoder.score_texts(texts, prompts)
    assert e.value.field == field


def test_no_texts_no_scores(decoder, cross):
    assert decoder.score_texts([]) == [] and cross.score_texts([], []) == []
