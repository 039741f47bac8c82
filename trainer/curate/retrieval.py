"""Error-driven adaptive retrieval (Skywork-Reward-V2 §4): more neighbours where the RM is wrong.

For each gold pair with p = sigmoid(r(chosen) - r(rejected)) under the current reward
model, the pool pairs nearest to it (cosine of sentence embeddings of conversation +
attributes, engine/embed.py) are retrieved for judging: ``k_max`` (8) when the model
gets the gold pair wrong or is unsure (p <= 0.5), fewer the surer it is right,
``ceil(k_max * (1 - p))``, none at p = 1. A pool pair retrieved by several gold pairs is
judged once; pairs already labelled are never returned.

Nearest neighbours: exact (one numpy matrix product) below :data:`EXACT_BELOW` rows, where
it is fast and has nothing to tune; above, an HNSW graph from **usearch** (cosine).
usearch over faiss-cpu, both maintained and on PyPI with HNSW:

* size: the usearch 2.26.6 wheel is 2.3 MB (11 MB installed), the faiss-cpu 1.15.1 wheel
  18.8 MB (63 MB installed, OpenBLAS inside) (both measured with ``pip download`` here);
* install: both ship manylinux/macOS/Windows wheels; usearch needs only numpy and is
  already in the ``curate`` extra;
* HNSW: both have it; usearch's takes string-free integer keys, as we use, and filters and
  exact search through the same object;
* persistence: usearch saves one file or buffer and can memory-map it (``view=True``),
  which is what an index over millions of pool pairs wants; faiss needs its own
  ``write_index``/``read_index`` and has no view for HNSW.

The index is persisted as one ``.npz`` file (ids, and the vectors or the usearch buffer).

Measured (``bench/embed.py --rows 1000 --repeats 3``, 2026-12-01, 2 shared cores at load
10-11): recall@8 of HNSW vs exact 0.9994 on 800 real hh-rlhf embeddings, 1.0000 on 20k
clustered vectors, 0.2562 on 20k i.i.d. Gaussian ones (no neighbourhood structure). At 20k
x 384 the HNSW build took 29 s and exact search of 200 queries 0.13 s, so below a few
hundred thousand rows exact search is the cheaper one for a single round's queries;
HNSW pays off when the pool is large or its index is saved and reused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from engine.errors import InputError
from engine.output import temp_name

if TYPE_CHECKING:
    from trainer.curate.attributes import Attributes
    from trainer.data.record import PreferencePair

#: rows below which search is exact (numpy); at and above, usearch HNSW. Measured: at 20k x 384
#: exact search of 200 queries took 0.13 s against an HNSW build of 29 s, so a graph only pays
#: once the pool is in the hundreds of thousands (a matrix product over 200k x 384 float32 is
#: 300 MB and ~10 ms per query here)
EXACT_BELOW = 200_000
#: HNSW graph degree and build/search breadth (usearch's defaults): recall@8 >= 0.95 at 20k
#: clustered vectors (tests/test_retrieval.py); i.i.d. Gaussian vectors, which have no
#: neighbourhood structure, get far less (0.26 at 20k x 384), see bench/embed.py
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 64
#: the paper's k for a gold pair the model gets wrong
K_MAX = 8
#: digits kept before the ceiling: 10 * (1 - 0.7) is 3.0000000000000004 in floats, and is 3
_K_DIGITS = 9

Method = Literal["auto", "exact", "hnsw"]


def retrieval_k(p: float, k_max: int = K_MAX) -> int:
    """``k_max`` if ``p <= 0.5`` else ``ceil(k_max * (1 - p))`` (a ceiling of the real number)."""
    if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise InputError(f"{p!r}, expected a probability in [0, 1]", field="p")
    if p <= 0.5:
        return k_max
    return math.ceil(round(k_max * (1.0 - p), _K_DIGITS))


def embedding_text(pair: PreferencePair, attributes: Attributes | None) -> str:
    """What a pair is embedded as: its conversation (``role: content`` lines) and attributes.

    The responses are left out: retrieval looks for pool pairs that ask the same kind of
    thing, whatever was answered.
    """
    lines = [f"{m.role}: {m.content}" for m in pair.conversation]
    if attributes is not None:
        lines.append(f"task category: {attributes.task_category}")
        if attributes.desired_attributes:
            lines.append("desired attributes: " + ", ".join(attributes.desired_attributes))
        if attributes.guideline:
            lines.append(f"guideline: {attributes.guideline}")
    return "\n".join(lines)


def _normalised(vectors: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d array (rows, dim), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what}: NaN or infinite values")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class _Build:
    """``NeighbourIndex.build(v, ids)`` makes an index; ``index.build(v, ids)`` fills that one."""

    def __get__(self, obj: NeighbourIndex | None, owner: type[NeighbourIndex]) -> Any:
        def build(vectors: np.ndarray, ids: Sequence[str], *, method: Method = "auto") -> NeighbourIndex:
            index = obj if obj is not None else owner()
            index._fill(vectors, ids, method)
            return index
        return build


class NeighbourIndex:
    """Cosine nearest neighbours over pool vectors, keyed by pool pair id."""

    build = _Build()

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.dim = 0
        self.method: Literal["exact", "hnsw"] = "exact"
        self._vectors: np.ndarray | None = None
        self._hnsw: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def _fill(self, vectors: np.ndarray, ids: Sequence[str], method: Method) -> None:
        v = _normalised(vectors, "NeighbourIndex.build")
        if len(ids) != len(v):
            raise ValueError(f"NeighbourIndex.build: {len(v)} vectors but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("NeighbourIndex.build: ids repeat; one vector per pool pair")
        self.ids, self.dim = [str(i) for i in ids], int(v.shape[1])
        use = method if method != "auto" else ("exact" if len(v) < EXACT_BELOW else "hnsw")
        if use not in ("exact", "hnsw"):
            raise ValueError(f"NeighbourIndex.build: method {method!r}; choose auto, exact or hnsw")
        self.method = use
        self._vectors, self._hnsw = (v, None) if use == "exact" else (None, self._new_hnsw(v))

    def _new_hnsw(self, v: np.ndarray) -> Any:
        from usearch.index import Index

        index = Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
                      expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        if len(v):
            index.add(np.arange(len(v), dtype=np.uint64), v)
        return index

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, up to ``k`` (pool id, cosine similarity), most similar first."""
        q = _normalised(queries, "NeighbourIndex.search")
        if len(q) and q.shape[1] != self.dim and self.ids:
            raise ValueError(f"NeighbourIndex.search: queries have dim {q.shape[1]}, the index {self.dim}")
        k = min(int(k), len(self.ids))
        if k <= 0 or not len(q):
            return [[] for _ in range(len(q))]
        if self.method == "exact":
            return self._search_exact(q, k)
        # asked for every row, a graph search can still miss one it cannot reach (HNSW is
        # approximate; a 50-row index gave 49 once): then usearch's own brute force answers
        found = self._hnsw.search(q, k, exact=k >= len(self.ids))
        # one query row comes back as Matches (1-d, no counts), several as BatchMatches
        counts = np.atleast_1d(getattr(found, "counts", len(found.keys)))
        keys, dists = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
        return [[(self.ids[int(key)], float(1.0 - d)) for key, d in zip(keys[r, :n], dists[r, :n], strict=True)]
                for r, n in enumerate(counts)]

    def _search_exact(self, q: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        assert self._vectors is not None
        sims = q @ self._vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = []
        for r in range(len(q)):
            row = top[r][np.argsort(-sims[r, top[r]], kind="stable")]
            out.append([(self.ids[int(i)], float(sims[r, i])) for i in row])
        return out

    def save(self, path: Path) -> Path:
        """One ``.npz`` file, written beside and renamed (a killed save leaves the old file)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"ids": np.array(self.ids, dtype=str),
                                         "method": np.array(self.method), "dim": np.array(self.dim)}
        if self.method == "exact":
            arrays["vectors"] = self._vectors if self._vectors is not None else np.zeros((0, self.dim))
        else:
            arrays["hnsw"] = np.frombuffer(self._hnsw.save(), dtype=np.uint8)
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: Path) -> NeighbourIndex:
        """An index saved by :meth:`save`; InputError naming the file when it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            index = cls()
            index.ids, index.dim = [str(i) for i in arrays["ids"]], int(arrays["dim"])
            index.method = str(arrays["method"])  # type: ignore[assignment]
            if index.method == "exact":
                index._vectors = np.asarray(arrays["vectors"], dtype=np.float32)
            else:
                from usearch.index import Index

                index._hnsw = Index.restore(arrays["hnsw"].tobytes())
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"not a neighbour index saved by Arbiter ({e}); rebuild it",
                             source=str(path)) from None
        if index._hnsw is None and index.method != "exact":
            raise InputError("the saved HNSW graph cannot be read; rebuild it", source=str(path))
        return index


@dataclass(frozen=True)
class Retrieved:
    """A pool pair to judge, with every gold pair that retrieved it (first = most similar)."""

    pool_id: str
    by_gold_ids: tuple[str, ...]
    similarity: float  # the highest cosine over the gold pairs that retrieved it
    k: int  # the k of the gold pair with that highest similarity
    similarities: tuple[float, ...] = field(default=(), compare=False)  # one per by_gold_ids

    @property
    def by_gold_id(self) -> str:
        return self.by_gold_ids[0]


def retrieve(gold: Sequence[tuple[str, float]], gold_vectors: np.ndarray, index: NeighbourIndex,
             exclude: set[str]) -> list[Retrieved]:
    """The pool pairs to judge this round, deduplicated, none of them in ``exclude``.

    ``gold``: (gold pair id, p) per row of ``gold_vectors``. Each gold pair gets its own
    ``retrieval_k(p)`` nearest pool pairs that are not excluded (the search widens until it
    has them or the index runs out). Output order: by first retrieval, gold order then rank.
    """
    vectors = np.asarray(gold_vectors, dtype=np.float32)
    if len(gold) != len(vectors):
        raise ValueError(f"retrieve: {len(gold)} gold pairs but {len(vectors)} vectors")
    hits: dict[str, list[tuple[str, float, int]]] = {}
    for r, (gold_id, p) in enumerate(gold):
        k = retrieval_k(p)
        for pool_id, sim in _nearest_allowed(index, vectors[r:r + 1], k, exclude):
            hits.setdefault(pool_id, []).append((gold_id, sim, k))
    out = []
    for pool_id, by in hits.items():
        by = sorted(by, key=lambda h: -h[1])
        out.append(Retrieved(pool_id, tuple(g for g, _, _ in by), by[0][1], by[0][2],
                             tuple(s for _, s, _ in by)))
    return out


def _nearest_allowed(index: NeighbourIndex, query: np.ndarray, k: int,
                     exclude: set[str]) -> list[tuple[str, float]]:
    """``k`` nearest not in ``exclude``: ask for more, doubling, until enough are left."""
    if k <= 0:
        return []
    want = k
    while True:
        found = index.search(query, want)[0]
        allowed = [(i, s) for i, s in found if i not in exclude]
        if len(allowed) >= k or want >= len(index):
            return allowed[:k]
        want = min(len(index), want * 2 + len(exclude & {i for i, _ in found}))
