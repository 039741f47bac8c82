"""Timing llama.cpp's ways of running a decoder reward model, for bench/throughput.py.

The engine runs embedding mode with LAST pooling: llama.cpp then marks every token an
output, so the vocabulary projection runs for every token. Two alternatives, timed here
on the same token ids and the same GGUF file (timing only; their numbers are not read):

* generative mode, only each sequence's last token an output (the "head as an lm_head
  row" idea of the runtime notes, §1.4): the vocabulary projection runs once per
  sequence. The exported file's tied embedding stands in for a [V, H] head matrix of
  the same size, so the cost is the one that idea would pay;
* the same with 4 sequences per decode in separate KV streams (``kv_unified=False``), so
  no sequence attends over another's cells.
"""

from __future__ import annotations

import time


def _context(ll, model, *, embeddings: bool, streams: int, threads: int, size: int):
    cp = ll.llama_context_default_params()
    cp.n_ctx = cp.n_batch = size
    cp.n_ubatch = 512
    cp.n_seq_max = max(1, streams)
    cp.embeddings = embeddings
    cp.pooling_type = ll.LLAMA_POOLING_TYPE_LAST
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = streams == 1
    cp.flash_attn_type = 0
    cp.type_k = cp.type_v = 1
    return ll.llama_init_from_model(model, cp)


def time_modes(scorer, seqs: list[list[int]], threads: int, repeat: int) -> dict[str, float]:
    """Seconds (best of ``repeat``) to run all ``seqs`` each way, on ``scorer``'s loaded model."""
    ll, model = scorer.llama, scorer.model
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    longest = max(len(s) for s in seqs)
    modes = {"embedding mode, every token an output (the engine)": (True, 1),
             "generative mode, last token only": (False, 1),
             "generative mode, last token only, 4 per decode": (False, 4)}
    out = {}
    for name, (embeddings, per_decode) in modes.items():
        size = 512
        while size < longest * per_decode:
            size *= 2
        ctx = _context(ll, model, embeddings=embeddings, streams=per_decode, threads=threads,
                       size=size if per_decode == 1 else size * per_decode)
        if not embeddings:
            ll.llama_set_embeddings(ctx, False)
        mem = ll.llama_get_memory(ctx)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for s in range(0, len(order), per_decode):
                ll.llama_memory_clear(mem, True)
                scorer._decode(ctx, [(k, seqs[i], 0) for k, i in enumerate(order[s:s + per_decode])],
                               all_outputs=embeddings)
            best = min(best, time.perf_counter() - t0)
        ll.llama_free(ctx)
        out[name] = best
    return out
