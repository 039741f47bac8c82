"""Responses longer than the context: ``on_too_long="window"`` (engine/scorer.py, engine/encoding.py).

Real runtimes throughout: the built-in default (ONNX int8, as users run it), and the session's
MiniLM with a seeded head (tests/conftest.py) as torch, ONNX fp32 and GGUF f32 for the
cross-format check, and its tiny Qwen3 for the decoder's error.
Long responses are made of numbered sentences, so their token counts are known from the
tokenizer, not assumed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.encoding import window_starts
from engine.errors import InputError
from engine.scorer import WINDOW_AGG, WINDOW_AGGS, pad_batch
from engine.templates import conversation_as_text
from engine.types import Item, conversation
from exports.probes import probe_items

ROOT = Path(__file__).resolve().parents[1]
ARBITER = [sys.executable, "-m", "app.cli.main"]
PROMPT = "Summarise the history of the numbered sentences below, and say which ones matter most."


def long_text(n_sentences: int, seed: int = 0) -> str:
    """A response of about 8 tokens per sentence; seeded, so every run reads the same text."""
    rng = np.random.default_rng(seed)
    words = ["river", "stone", "market", "winter", "garden", "letter", "engine", "harbour"]
    return " ".join(f"Sentence {i} tells of the {words[rng.integers(8)]} and the "
                    f"{words[rng.integers(8)]}." for i in range(n_sentences))


def response_tokens(rm, text: str) -> int:
    return len(rm.encoder.tokenizer.ids(text, add_special=False))


def text_of_tokens(rm, at_least: int) -> str:
    """The shortest long_text with at least ``at_least`` response tokens."""
    n = at_least // 10
    while response_tokens(rm, long_text(n)) < at_least:
        n += 1
    return long_text(n)


@pytest.fixture(scope="module")
def default():
    with engine.load("default", threads=2) as rm:
        assert rm.info.format == "onnx" and rm.encoder.kind == "pair"
        yield rm


def test_responses_that_fit_score_exactly_as_without_windows(default):
    items, _ = probe_items()
    long = Item(conversation(PROMPT), text_of_tokens(default, 3 * default.info.max_length))
    mixed = [*items[:5], long, *items[5:]]
    plain = default.score(items)
    windowed = default.score(mixed, on_too_long="window")
    del windowed[5]
    assert [s.value for s in windowed] == [s.value for s in plain]  # bit-identical
    assert [s.n_tokens for s in windowed] == [s.n_tokens for s in plain]
    assert all(s.windows == 1 and s.policy == f"window-{WINDOW_AGG}/384/stride-288" for s in windowed)
    assert all(s.policy is None for s in plain)


@pytest.mark.parametrize(("size", "stride"), [(None, None), (256, 128), (500, 500)])
def test_a_response_of_three_contexts_gets_the_windows_its_stride_implies(default, size, stride):
    rm = default
    item = Item(conversation(PROMPT), text_of_tokens(rm, 3 * rm.info.max_length))
    n = response_tokens(rm, item.response)
    policy = rm.window_policy("mean", size, stride)
    assert (policy.size, policy.stride) == ((size, stride) if size else (384, 288))
    want = 1 + math.ceil((n - policy.size) / policy.stride)
    (s,) = rm.score([item], on_too_long="window", window_agg="mean", window_tokens=size,
                    window_stride=stride)
    assert s.windows == want == len(window_starts(n, policy.size, policy.stride))
    assert s.policy == f"window-mean/{policy.size}/stride-{policy.stride}"
    # the windows cover the response: the first starts at 0, the last ends at its last token
    resp = rm.encoder.tokenizer.ids(item.response, add_special=False)
    parts = rm.encoder.encode_windows(item, policy.size, policy.stride)
    tail = len(rm.encoder._pair_layout.suffix)
    assert list(parts[0].ids[-tail - policy.size:-tail]) == resp[:policy.size]
    assert list(parts[-1].ids[-tail - policy.size:-tail]) == resp[-policy.size:]
    assert all(len(p.ids) <= rm.info.max_length for p in parts)
    assert s.n_tokens == sum(len(p.ids) for p in parts)


def _by_hand(rm, item: Item, size: int, stride: int) -> list[float]:
    """Raw outputs of the windows, each built from the tokenizer and the pair layout and run
    through the backend alone (batch of one)."""
    tok, layout = rm.encoder.tokenizer, rm.encoder._pair_layout
    first = tok.ids(conversation_as_text(item.conversation), add_special=False)
    resp = tok.ids(item.response, add_special=False)
    budget = rm.info.max_length - layout.n_special - size
    out = []
    for s in range(0, len(resp) - size, stride):
        out.append(_forward_one(rm, layout, first[-budget:], resp[s:s + size]))
    out.append(_forward_one(rm, layout, first[-budget:], resp[-size:]))
    return out


def _forward_one(rm, layout, a: list[int], b: list[int]) -> float:
    from engine.encoding import Encoded

    ids, types = layout.join(a, b)
    enc = Encoded(tuple(ids), tuple(types) if rm.encoder.files.token_types == "segment" else (0,) * len(ids),
                  0, 0)
    return float(rm._forward(pad_batch([enc], rm.encoder.pad_token_id))[0])


def test_every_aggregation_equals_the_windows_scored_by_hand(default):
    rm = default
    assert rm.info.length_correction != 0  # so "once on the whole response" is tested
    conv = conversation([{"role": "user", "content": long_text(60, seed=1)}])  # a cut conversation too
    item = Item(conv, text_of_tokens(rm, 1000))
    raw = _by_hand(rm, item, 384, 288)
    assert len(raw) >= 3 and np.ptp(raw) > 1e-3  # the windows differ, so the aggregations do
    expect = {"mean": sum(raw) / len(raw), "min": min(raw), "max": max(raw), "first": raw[0], "last": raw[-1]}
    term = rm.info.length_correction * math.log1p(len(item.response))
    for agg in WINDOW_AGGS:
        (s,) = rm.score([item], on_too_long="window", window_agg=agg)
        assert s.windows == len(raw) and s.cut_tokens > 0
        assert abs(s.value - (expect[agg] - term)) <= 1e-4, agg  # test_parity's batch tolerance
    rm.length_control = False
    try:
        (raw_mean,) = rm.score([item], on_too_long="window")
    finally:
        rm.length_control = True
    (controlled,) = rm.score([item], on_too_long="window")
    assert controlled.value == pytest.approx(raw_mean.value - term, abs=1e-9)  # applied once


def _windowed_scores(path: Path, fmt: str) -> tuple[np.ndarray, list[int]]:
    conv = conversation(PROMPT)
    with engine.load(path, format=fmt) as rm:
        assert rm.info.format == fmt
        items = [Item(conv, "A short answer."), Item(conv, text_of_tokens(rm, 800))]
        scores = rm.score(items, on_too_long="window", window_agg="min")
    return np.array([s.value for s in scores]), [s.windows for s in scores]


def test_windows_agree_across_onnx_torch_and_gguf(hf_models, onnx_models, gguf_models):
    """MiniLM with a seeded head (the session's exports, which test_parity and test_gguf build
    too): ONNX fp32 against its torch source, and GGUF f32 against its own torch source (trained
    with zero token types, which llama.cpp feeds), within those files' tolerances."""
    torch_v, torch_w = _windowed_scores(hf_models["minilm"], "torch")
    onnx_v, onnx_w = _windowed_scores(onnx_models["minilm", "fp32"], "onnx")
    zeros_v, zeros_w = _windowed_scores(gguf_models["minilm", "source"], "torch")
    gguf_v, gguf_w = _windowed_scores(gguf_models["minilm", "f32"], "gguf")
    assert torch_w[0] == 1 and torch_w[1] >= 3
    assert onnx_w == torch_w == zeros_w == gguf_w
    assert np.abs(onnx_v - torch_v).max() <= 1e-4  # tests/test_parity.py, ONNX fp32
    assert np.abs(gguf_v - zeros_v).max() <= 1e-2  # tests/test_gguf.py, MiniLM GGUF f32
    assert np.ptp(torch_v) > 0.01 and np.ptp(zeros_v) > 0.01  # the items do score differently


def test_window_scores_do_not_depend_on_the_batch(default):
    conv = conversation(PROMPT)
    items = [Item(conv, text_of_tokens(default, k)) for k in (600, 1000)]
    items += [Item(conv, r.response) for r in probe_items()[0][:6]]
    runs = [np.array([s.value for s in default.score(items, on_too_long="window", batch_size=bs)])
            for bs in (1, 3, 16)]
    for r in runs[1:]:
        assert np.abs(r - runs[0]).max() <= 1e-4  # test_parity's int8 batch tolerance
    streamed = [s.value for s in default.iter_scores(iter(items), on_too_long="window", window=2)]
    assert np.abs(np.array(streamed) - runs[0]).max() <= 1e-4


def test_bad_policy_options_are_clear_errors(default):
    item = Item(conversation(PROMPT), "fine")
    with pytest.raises(InputError, match="'median': expected one of mean, min, max, first, last") as e:
        default.score([item], on_too_long="window", window_agg="median")
    assert e.value.field == "window_agg"
    with pytest.raises(InputError, match="expected one of error, skip, window") as e:
        default.score([item], on_too_long="windows")
    assert e.value.field == "on_too_long"
    with pytest.raises(InputError, match="at most 508 response tokens") as e:
        default.score([item], on_too_long="window", window_tokens=509)
    assert e.value.field == "window_tokens"
    with pytest.raises(InputError, match="more than the window") as e:
        default.score([item], on_too_long="window", window_tokens=100, window_stride=101)
    assert e.value.field == "window_stride"


def test_a_decoder_refuses_windows_with_a_clear_error(hf_models):
    with engine.load(hf_models["qwen3"]) as rm:
        assert rm.encoder.kind == "chat" and not rm.windows_long_responses
        with pytest.raises(InputError, match="only for cross-encoders") as e:
            rm.score([Item(conversation("Hi"), "Hello")], on_too_long="window")
        assert e.value.field == "on_too_long"
        with pytest.raises(InputError, match="only for cross-encoders"):
            rm.compare("Hi", "Hello", "Hey", on_too_long="window")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARBITER, *args], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())


def test_the_cli_scores_long_rows_in_windows(default, tmp_path):
    long = text_of_tokens(default, 1200)
    rows = [{"prompt": PROMPT, "response": "A short answer."}, {"prompt": PROMPT, "response": long}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    proc = _cli("score", "--model", "default", str(src), "-o", str(out), "--on-too-long", "window",
                "--window-agg", "min", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rows_windowed"] == 1 and summary["policy"] == "window-min/384/stride-288"
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = default.score([Item(conversation(PROMPT), r["response"]) for r in rows], on_too_long="window",
                         window_agg="min")
    assert [g["windows"] for g in got] == [w.windows for w in want] and want[1].windows > 1
    assert [g["score"] for g in got] == [w.value for w in want]
    assert all(g["policy"] == "window-min/384/stride-288" for g in got)

    bad = _cli("score", "--model", "default", str(src), "-o", str(out), "--on-too-long", "window",
               "--window-agg", "median")
    assert bad.returncode == 2 and "invalid choice: 'median'" in bad.stderr and "Traceback" not in bad.stderr

    cmp = _cli("compare", "--model", "default", "-p", PROMPT, "A short answer.", long,
               "--on-too-long", "window", "--json")
    assert cmp.returncode == 0, cmp.stderr
    c = json.loads(cmp.stdout)
    b = default.score([Item(conversation(PROMPT), long)], on_too_long="window")[0]
    assert c["windows"] == [1, b.windows] and c["policy"] == f"window-{WINDOW_AGG}/384/stride-288"
    assert c["score_b"] == b.value

    # without the flag a long response is refused, and the error says how to score it; the line is named
    refused = _cli("score", "--model", "default", str(src), "-o", str(tmp_path / "refused.jsonl"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"{src.name}:2: field 'response'" in refused.stderr
    assert "--on-too-long window scores it in overlapping windows." in refused.stderr
    refused = _cli("compare", "--model", "default", "-p", PROMPT, "A short answer.", long)
    assert refused.returncode != 0 and "--on-too-long window scores it" in refused.stderr


def test_eval_records_the_policy_and_the_windowed_records(default, tmp_path):
    from trainer.eval.report import markdown
    from trainer.eval.runner import run_model

    long = text_of_tokens(default, 900)
    rows = [{"prompt": PROMPT, "chosen": "Sentence 1 matters most.", "rejected": long},
            {"prompt": PROMPT, "chosen": long, "rejected": "No."},
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}]
    bench = tmp_path / "pairs.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skip = run_model(default, [f"pairwise:{bench}"], plots=False)
    (b,) = skip.result["benchmarks"]
    assert b["skipped"] == 2 and "policy" not in b
    win = run_model(default, [f"pairwise:{bench}"], plots=False, on_too_long="window", window_agg="max")
    (b,) = win.result["benchmarks"]
    assert b["skipped"] == 0 and b["windowed"] == 2 and b["policy"] == "window-max/384/stride-288"
    assert win.items_scored == 6 and win.items_reused == 0  # never the skipped NaNs of the first run
    assert win.result["options"]["policy"] == "window-max/384/stride-288"
    assert "policy: window-max/384/stride-288, 2 windowed" in markdown(win.result)
    again = run_model(default, [f"pairwise:{bench}"], plots=False, on_too_long="window", window_agg="max")
    assert again.items_reused == 6 and again.result["benchmarks"][0]["metrics"] == b["metrics"]
