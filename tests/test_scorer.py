"""Scorer API behaviour on a real ONNX model: streaming, progress, cancel, compare, rank."""

from __future__ import annotations

import threading

import pytest

import engine
from engine import Cancelled, CancelToken, Item


@pytest.fixture(scope="module")
def rm(onnx_models):
    with engine.load(onnx_models["qwen3", "fp32"], batch_size=4) as scorer:
        yield scorer


def test_streams_a_generator_in_order_with_progress(rm):
    items = [Item.of(f"Question {i}?", "x" * (i % 7 + 1)) for i in range(50)]
    seen = []
    gen = (it for it in items)  # no len(): a real stream
    streamed = list(rm.iter_scores(gen, window=8, progress=lambda d, t: seen.append((d, t))))
    direct = [rm.score([it])[0] for it in items]
    assert [s.value for s in streamed] == pytest.approx([s.value for s in direct], abs=5e-5)
    assert seen[-1] == (50, None) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert rm.score(items[:3], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3)


def test_cancel_stops_before_the_next_batch(rm):
    token = CancelToken()
    done = []

    def progress(d, t):
        done.append(d)
        if d >= 8:
            token.cancel()

    with pytest.raises(Cancelled):
        rm.score([Item.of("q", f"r{i}") for i in range(64)], window=8, progress=progress, cancel=token)
    assert done == [8]


def test_cancel_from_another_thread(rm):
    token = CancelToken()
    canceller = threading.Thread(target=token.cancel)
    canceller.start()
    canceller.join()  # not a sleep: on a loaded machine a timer thread may not have run yet
    with pytest.raises(Cancelled):
        rm.score([Item.of("q", "r")] * 10, cancel=token)


def test_compare_and_rank_agree_with_score(rm):
    conv = engine.conversation("Name a prime number.")
    a, b, c = "7", "8", "Seven is prime."
    sa, sb, sc = (s.value for s in rm.score([Item(conv, a), Item(conv, b), Item(conv, c)]))
    cmp = rm.compare(conv, a, b)
    assert cmp.score_a.value == pytest.approx(sa, abs=5e-5) and cmp.score_b.value == pytest.approx(sb, abs=5e-5)
    assert cmp.p_a_better == pytest.approx(engine.sigmoid(sa - sb), abs=1e-4)
    ranking = rm.rank("Name a prime number.", [a, b, c])
    expect = sorted(range(3), key=lambda i: -(sa, sb, sc)[i])
    assert [x.index for x in ranking.candidates] == expect
    # decoder ONNX exports carry a with-past graph: the conversation is computed once
    assert ranking.prompt_shared is True
    assert rm.rank("Name a prime number.", [a, b, c], shared_prompt=False).prompt_shared is False


def test_info_describes_the_model(rm):
    info = rm.info
    assert info.format == "onnx" and info.architecture == "Qwen3ForSequenceClassification"
    assert info.pooling == "last" and info.chat_template and info.provider == "cpu"
    onnx_file = next(f for f in info.files if f.path == "model.onnx")
    assert len(onnx_file.sha256) == 64 and onnx_file.size > 1_000_000


# ---- the constructor and the prompt-sharing rules (engine/scorer.py) -----------------------
def test_constructor_sets_batch_size_and_length_control(onnx_models):
    from engine.paths import builtin_dir

    with engine.load(onnx_models["llama", "fp32"], batch_size=3) as rm:
        assert rm.batch_size == 3 and rm.length_control is True and rm.prompt_sharing is True
    default = builtin_dir() / "default" / "onnx"
    if not any(default.glob("*.onnx")):
        pytest.skip("this build ships no default model")
    with engine.load(default) as rm:  # the default carries a length correction (beta)
        beta = rm.info.length_correction
        assert beta > 0
        rm.length_control = False
        assert rm.info.length_correction == 0.0 and rm.length_control is False
        rm.length_control = True
        assert rm.info.length_correction == beta


@pytest.mark.parametrize("batch_size", [0, -2])
def test_a_batch_size_below_one_is_refused(onnx_models, batch_size):
    with pytest.raises(engine.InputError, match="batch size must be at least 1"):
        engine.load(onnx_models["llama", "fp32"], batch_size=batch_size)


def test_scorer_decides_which_candidates_share_and_the_hook_scores_only_tails(onnx_models):
    """The boundary rules are Scorer's: the hook sees the prompt once and, per sharing
    candidate, the tail that completes its own tokenization; a merged candidate is scored in full."""
    from engine.backends.onnx import OnnxScorer

    calls = []

    class Recording(OnnxScorer):
        def _score_tails(self, prompt, tails):
            calls.append((list(prompt), [list(t) for t in tails]))
            return super()._score_tails(prompt, tails)

    conv = [{"role": "user", "content": "Say something."}]
    cands = ["Hello there.", "\n\n\n", "Hi!"]  # "\n\n\n" merges across the template's boundary
    with Recording(onnx_models["qwen3", "fp32"]) as rm:
        shared = rm.rank(conv, cands)
        full = rm.rank(conv, cands, shared_prompt=False)
        prompt = rm.encoder.prompt_ids(Item.of(conv, cands[0]))
        scored = [rm._scored_ids(rm.encode(Item.of(conv, c))) for c in cands]
    assert shared.prompt_shared and not full.prompt_shared
    assert len(calls) == 1
    got_prompt, tails = calls[0]
    assert got_prompt == prompt
    assert [got_prompt + t for t in tails] == [scored[0], scored[2]]  # not the merged one
    assert all(tails)
    by_index = {c.index: c.score.value for c in shared.candidates}
    for c in full.candidates:
        assert by_index[c.index] == pytest.approx(c.score.value, abs=1e-4)


def test_a_backend_without_the_hook_scores_in_full(hf_models):
    with engine.load(hf_models["qwen3"]) as rm:  # torch: no prompt sharing
        assert rm.prompt_sharing is False
        assert rm._score_shared_prompt(engine.conversation("Name a prime."), ["7", "8"]) is None
        r = rm.rank("Name a prime.", ["7", "8"], shared_prompt=True)
        want = [s.value for s in rm.score([Item.of("Name a prime.", c) for c in ("7", "8")])]
    assert r.prompt_shared is False
    assert [c.score.value for c in sorted(r.candidates, key=lambda c: c.index)] == pytest.approx(want, abs=1e-6)


def test_length_batches_cap_rows_tokens_and_spread():
    from engine.scorer import length_batches

    lengths = [10, 500, 12, 11, 300, 13, 100, 400, 9]
    batches = list(length_batches(lengths, batch_size=3, batch_tokens=1024, max_ratio=1.25))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each row once
    assert [[lengths[i] for i in b] for b in batches] == [[9, 10, 11], [12, 13], [100], [300], [400, 500]]
    for b in batches:  # no batch over the caps, unless one row alone exceeds them
        longest = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) == 1 or len(b) * longest <= 1024)
        assert longest <= 1.25 * min(lengths[i] for i in b)
    assert [len(b) for b in length_batches([50] * 40, 32, 1024)] == [20, 20]  # 20 x 50 = 1000 tokens
    assert [len(b) for b in length_batches([50] * 40, 16, None)] == [16, 16, 8]


def test_scores_do_not_depend_on_the_token_cap(rm):
    items = [("Hi", "a " * n) for n in (1, 40, 3, 120, 7, 60)]
    capped = [s.value for s in rm.score(items)]
    rm.batch_tokens = None
    assert [s.value for s in rm.score(items)] == pytest.approx(capped, abs=1e-5)
