"""Timing llama.cpp's ways of running a decoder reward model, for bench/throughput.py.

Every variant runs the same token ids through the same GGUF file, one sequence per
decode (the engine's batch-invariant default), and the variants are interleaved in
each repeat (best of ``repeat``), so a ratio between two lines is measured under the
same load:

* the engine before: embedding mode, where llama.cpp makes every token an output and
  so runs the last layer's FFN, the vocabulary projection and a logits copy for every
  token (``GgufScorer.all_outputs = True``);
* the engine now: all but the last two tokens decoded with embeddings off and no
  outputs (only the KV cache is filled), then those two in embedding mode, LAST
  pooling, for the one hidden state the head reads (two: a lone token would run
  llama.cpp's one-row kernels and score differently);
* generative mode, only each sequence's last token an output, logits read (the "head
  as an lm_head row" idea of the runtime notes, §1.4; the exported file's tied
  embedding stands in for the [V, H] head matrix): one decode per sequence, the floor
  the engine's two decodes are held against (timing only, its numbers are not read).

``tune`` sweeps micro-batch size and threads over the engine's own decode path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def _engine_context(scorer, size: int, *, ubatch: int | None = None, threads: int | None = None):
    """A context made as the engine makes it, with ``ubatch`` / ``threads`` overridden."""
    ll = scorer.llama
    cp = scorer._context_params(size)
    if ubatch is not None:
        cp.n_ubatch = min(ubatch, size)
    if threads is not None:
        cp.n_threads = cp.n_threads_batch = threads
    ctx = ll.llama_init_from_model(scorer.model, cp)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a {size}-token context")
    return ctx


def _size(seqs: Sequence[Sequence[int]]) -> int:
    size = 512
    while size < max(len(s) for s in seqs):
        size *= 2
    return size


def engine_run(scorer, seqs: Sequence[Sequence[int]], ctx, *, all_outputs: bool) -> list[float]:
    """Scores of ``seqs``, each decoded alone, by the engine's decode path on ``ctx``."""
    ll = scorer.llama
    mem = ll.llama_get_memory(ctx)
    before, scorer.all_outputs = scorer.all_outputs, all_outputs
    try:
        out = []
        for toks in seqs:
            ll.llama_memory_clear(mem, True)
            scorer._decode_scored(ctx, [(0, toks, 0)])
            out.append(scorer._pooled(ctx, 0))
        return out
    finally:
        scorer.all_outputs = before


def generative_run(scorer, seqs: Sequence[Sequence[int]], ctx) -> None:
    """Generative mode, the last token the only output (its logits are computed, not read)."""
    ll = scorer.llama
    mem = ll.llama_get_memory(ctx)
    ll.llama_set_embeddings(ctx, False)
    try:
        for toks in seqs:
            ll.llama_memory_clear(mem, True)
            scorer._decode(ctx, [(0, toks, 0)], outputs="last")
    finally:
        ll.llama_set_embeddings(ctx, True)


def interleaved(variants: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` seconds per variant, every variant run once per round (after a warm-up round)."""
    best = dict.fromkeys(variants, float("inf"))
    for r in range(repeat + 1):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if r:  # round 0 warms caches and first-decode allocations
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def time_modes(scorer, seqs: list[list[int]], threads: int, repeat: int,
               baseline: Callable[[], object] | None = None) -> dict[str, float]:
    """Seconds (best of ``repeat``, interleaved) to score all ``seqs`` each way, on ``scorer``'s model.

    ``baseline`` (HF transformers, say) is timed in the same rounds under the first key.
    """
    order = sorted(seqs, key=len)
    ctx = _engine_context(scorer, _size(order), threads=threads)
    variants: dict[str, Callable[[], object]] = {"HF transformers fp32": baseline} if baseline else {}
    variants |= {
        "embedding mode, every token an output (the engine before)":
            lambda: engine_run(scorer, order, ctx, all_outputs=True),
        "outputs only where the head reads (the engine now)":
            lambda: engine_run(scorer, order, ctx, all_outputs=False),
        "generative mode, last token's logits only (one decode)":
            lambda: generative_run(scorer, order, ctx),
    }
    try:
        return interleaved(variants, repeat)
    finally:
        scorer.llama.llama_free(ctx)


def tune(scorer, seqs: list[list[int]], repeat: int, *, ubatches: Sequence[int] = (128, 256, 512),
         threads: Sequence[int] = (1, 2, 4)) -> dict[tuple[int, int], float]:
    """(ubatch, threads) -> seconds (best of ``repeat``, interleaved) for the engine's decode path."""
    order = sorted(seqs, key=len)
    size = _size(order)
    ctxs = {(u, t): _engine_context(scorer, size, ubatch=u, threads=t) for u in ubatches for t in threads}
    try:
        return interleaved({k: (lambda c=c: engine_run(scorer, order, c, all_outputs=False))
                            for k, c in ctxs.items()}, repeat)
    finally:
        for c in ctxs.values():
            scorer.llama.llama_free(c)
