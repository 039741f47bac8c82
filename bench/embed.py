"""Sentence-embedding throughput, the cached rerun, and HNSW recall vs exact search.

1. Embedding: the real pairs of hh-rlhf harmless-base-test (../shared/data), as
   retrieval embeds them (``embedding_text``: the conversation, no attributes), through
   the exported all-MiniLM-L6-v2 at batch sizes 1, 8 and 32; the variants take turns in
   each round, best of ``--repeats``. Then the same texts through ``cached_embed`` twice:
   the second pass embeds nothing and its time is the cache's.
2. Retrieval: recall@8 of usearch HNSW against exact search, with build and search
   times, on (a) those real embeddings, (b) 20k clustered vectors (500 centres, noise
   1.0, like tests/test_retrieval.py) and (c) 20k i.i.d. Gaussian vectors (no
   neighbourhood structure: the worst case for any graph index).

Run: ``.venv/bin/python bench/embed.py [--rows 2000] [--repeats 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def real_texts(rows: int) -> list[str]:
    from trainer.curate.retrieval import embedding_text
    from trainer.data.importers import load

    pairs = []
    for pair in load(DATA):
        pairs.append(pair)
        if len(pairs) >= rows:
            break
    return [embedding_text(p, None) for p in pairs]


def bench_embed(embedder, texts: list[str], repeats: int) -> np.ndarray:
    best: dict[int, float] = {}
    for _ in range(repeats):
        for bs in (1, 8, 32):  # interleaved: the same load falls on every variant
            t = time.perf_counter()
            vectors = embedder.embed(texts, batch_size=bs)
            best[bs] = min(best.get(bs, float("inf")), time.perf_counter() - t)
    tokens = sum(min(len(embedder._tok.encode(t).ids), embedder.max_length) for t in texts)
    print(f"embedding {len(texts)} texts ({tokens} tokens after the {embedder.max_length}-token cut, "
          f"{embedder.truncated // (3 * repeats)} cut), best of {repeats}:")
    for bs, s in best.items():
        print(f"  batch {bs:>2}: {s:7.2f} s  {len(texts) / s:7.1f} texts/s  {tokens / s:8.0f} tokens/s  "
              f"({best[1] / s:.2f}x batch 1)")
    return vectors


def bench_cache(embedder, texts: list[str]) -> None:
    from engine.embed import EmbeddingCache, cached_embed

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "emb.db")
        t = time.perf_counter()
        cached_embed(embedder, texts, cache)
        first = time.perf_counter() - t
        misses = cache.misses
        t = time.perf_counter()
        cached_embed(embedder, texts, cache)
        second = time.perf_counter() - t
        print(f"cached_embed: first {first:.2f} s ({misses} embedded), rerun {second:.3f} s "
              f"({cache.misses - misses} embedded, {first / second:.0f}x faster)")
        cache.close()


def recall(name: str, vectors: np.ndarray, queries: np.ndarray, k: int = 8) -> None:
    from trainer.curate.retrieval import NeighbourIndex

    ids = [str(i) for i in range(len(vectors))]
    t = time.perf_counter()
    exact = NeighbourIndex.build(vectors, ids, method="exact")
    want = exact.search(queries, k)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    hnsw = NeighbourIndex.build(vectors, ids, method="hnsw")
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    got = hnsw.search(queries, k)
    t_search = time.perf_counter() - t
    r = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / k for g, w in zip(got, want, strict=True)])
    print(f"  {name:<34} n={len(vectors):>6} d={vectors.shape[1]} recall@{k} {r:.4f}  "
          f"exact {t_exact:.2f} s, hnsw build {t_build:.2f} s + search {t_search:.3f} s "
          f"({len(queries)} queries)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from engine.embed import Embedder
    from exports.embedder import default_embedder

    folder = default_embedder()
    texts = real_texts(args.rows)
    with Embedder.open(folder, threads=args.threads) as embedder:
        vectors = bench_embed(embedder, texts, args.repeats)
        bench_cache(embedder, texts)
    rng = np.random.default_rng(0)
    print("retrieval (usearch HNSW vs exact):")
    q = rng.choice(len(vectors), size=min(200, len(vectors) // 2), replace=False)
    rest = np.setdiff1d(np.arange(len(vectors)), q)
    recall(f"hh-rlhf embeddings ({DATA.parent.name})", vectors[rest], vectors[q])
    centres = rng.standard_normal((500, 384)).astype(np.float32)

    def clustered(n: int) -> np.ndarray:
        return centres[rng.integers(0, 500, n)] + rng.standard_normal((n, 384)).astype(np.float32)

    recall("clustered (500 centres, noise 1.0)", clustered(20_000), clustered(200))
    recall("i.i.d. Gaussian (no structure)", rng.standard_normal((20_000, 384)).astype(np.float32),
           rng.standard_normal((200, 384)).astype(np.float32))


if __name__ == "__main__":
    main()
