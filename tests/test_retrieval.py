"""Error-driven retrieval: the k rule, exact vs usearch HNSW, dedup, exclusion, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from trainer.curate.retrieval import (
    NeighbourIndex,
    Retrieved,
    embedding_text,
    retrieval_k,
    retrieve,
)
from trainer.data.record import PreferencePair

#: recall@8 of HNSW against exact search that the test demands (measured 1.0 at 20k x 384,
#: 500 clusters, noise 1.0; 0.989 at noise 2.0)
MIN_RECALL = 0.95


@pytest.mark.parametrize(("p", "k"), [
    (0.0, 8), (0.3, 8), (0.5, 8),  # wrong or unsure: the full k
    (0.51, 4),  # ceil(8 * 0.49) = ceil(3.92), not int() = 3
    (0.75, 2),  # 8 * 0.25 = 2 exactly
    (0.875, 1),  # 8 * 0.125 = 1 exactly: not 2
    (0.9, 1),  # 8 * 0.0999.. = 0.7999..: 1
    (0.99, 1), (0.999999, 1),
    (1.0, 0),
])
def test_k_rule(p, k):
    assert retrieval_k(p) == k


def test_k_rule_float_error_does_not_add_one():
    # 10 * (1 - 0.7) is 3.0000000000000004 in floats; the real number is 3
    assert 10 * (1 - 0.7) > 3
    assert retrieval_k(0.7, k_max=10) == 3
    assert retrieval_k(0.6, k_max=10) == 4  # 10 * 0.4 = 4.000000000000001 in floats
    assert retrieval_k(0.55, k_max=20) == 9


@pytest.mark.parametrize("p", [float("nan"), -0.1, 1.5, float("inf"), "0.5"])
def test_k_rule_refuses_a_non_probability(p):
    with pytest.raises(InputError, match="field 'p'"):
        retrieval_k(p)


def _pair(pid: str, question: str) -> PreferencePair:
    from engine.types import Message

    return PreferencePair(id=pid, conversation=(Message("system", "Be brief."), Message("user", question)),
                          chosen="good answer", rejected="bad answer")


def test_embedding_text_has_conversation_and_attributes():
    from trainer.curate.attributes import Attributes

    pair = _pair("a", "How do I boil an egg?")
    attrs = Attributes(task_category="cooking", objectivity="objective", controversiality="low",
                       desired_attributes=["accurate", "concise"], guideline="Prefer exact times.")
    text = embedding_text(pair, attrs)
    assert text.splitlines() == ["system: Be brief.", "user: How do I boil an egg?",
                                 "task category: cooking", "desired attributes: accurate, concise",
                                 "guideline: Prefer exact times."]
    assert embedding_text(pair, None) == "system: Be brief.\nuser: How do I boil an egg?"
    assert "good answer" not in text  # responses are not embedded


def _clustered(rng: np.random.Generator, n: int, centres: np.ndarray, noise: float) -> np.ndarray:
    """Points around random centres: neighbourhoods like real embeddings have (i.i.d. Gaussian
    vectors have none: every point is about equally far from every other)."""
    picks = rng.integers(0, len(centres), n)
    return (centres[picks] + noise * rng.standard_normal((n, centres.shape[1]))).astype(np.float32)


def test_hnsw_agrees_with_exact_at_20k():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((500, 384)).astype(np.float32)
    pool = _clustered(rng, 20_000, centres, 1.0)  # nearest cosine ~0.56, like real neighbours
    queries = _clustered(rng, 200, centres, 1.0)
    ids = [f"pool-{i}" for i in range(len(pool))]
    exact = NeighbourIndex.build(pool, ids, method="exact")
    hnsw = NeighbourIndex.build(pool, ids, method="hnsw")
    assert exact.method == "exact" and hnsw.method == "hnsw"
    got, want = hnsw.search(queries, 8), exact.search(queries, 8)
    recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 8 for g, w in zip(got, want, strict=True)])
    assert recall >= MIN_RECALL, recall
    # the similarities are cosines, the same number both ways
    w_sims = {(q, i): s for q, row in enumerate(want) for i, s in row}
    common = [(s, w_sims[q, i]) for q, row in enumerate(got) for i, s in row if (q, i) in w_sims]
    assert max(abs(a - b) for a, b in common) < 1e-4
    for row in got:  # most similar first
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)


def test_exact_below_threshold_and_results_are_cosines(monkeypatch):
    import trainer.curate.retrieval as retrieval

    monkeypatch.setattr(retrieval, "EXACT_BELOW", 512)  # the real one (200k) is too big to build here
    threshold = retrieval.EXACT_BELOW
    rng = np.random.default_rng(1)
    v = rng.standard_normal((threshold - 1, 16)).astype(np.float32)
    index = NeighbourIndex.build(v * 7.0, [str(i) for i in range(len(v))])  # scale is irrelevant
    assert index.method == "exact"
    top = index.search(v[:3], 1)
    assert [row[0][0] for row in top] == ["0", "1", "2"]  # a vector is its own nearest
    assert all(abs(row[0][1] - 1.0) < 1e-5 for row in top)
    assert NeighbourIndex.build(np.zeros((threshold, 16)) + 1, [str(i) for i in range(threshold)]
                                ).method == "hnsw"


def test_search_k_larger_than_index_and_empty_index():
    index = NeighbourIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    (row,) = index.search(np.array([[1.0, 0.1, 0.0]]), 10)
    assert [i for i, _ in row] == ["a", "b", "c"]
    empty = NeighbourIndex.build(np.zeros((0, 3), dtype=np.float32), [])
    assert empty.search(np.ones((2, 3)), 8) == [[], []]


def test_build_refuses_bad_input():
    with pytest.raises(ValueError, match="ids repeat"):
        NeighbourIndex.build(np.eye(2), ["a", "a"])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        NeighbourIndex.build(np.eye(2), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        NeighbourIndex.build(np.array([[np.nan, 1.0]]), ["a"])


def test_build_on_an_instance_fills_it():
    index = NeighbourIndex()
    assert index.build(np.eye(2), ["a", "b"]) is index and len(index) == 2


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_save_load_round_trip(tmp_path, method):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((300, 32)).astype(np.float32)
    ids = [f"id-{i}" for i in range(len(v))]
    index = NeighbourIndex.build(v, ids, method=method)
    path = index.save(tmp_path / "index.npz")
    loaded = NeighbourIndex.load(path)
    assert loaded.method == method and loaded.ids == ids and loaded.dim == 32
    q = rng.standard_normal((5, 32)).astype(np.float32)
    assert loaded.search(q, 8) == index.search(q, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]  # no temp file left


def test_load_refuses_a_file_that_is_not_an_index(tmp_path):
    bad = tmp_path / "index.npz"
    bad.write_bytes(b"not an index")
    with pytest.raises(InputError, match=str(bad)):
        NeighbourIndex.load(bad)


def _unit(angle_deg: float) -> list[float]:
    a = np.deg2rad(angle_deg)
    return [float(np.cos(a)), float(np.sin(a))]


def test_retrieve_dedups_excludes_and_follows_k():
    # pool on a circle at 0..90 degrees; cosine order from a gold vector is angle order
    angles = {f"p{d}": d for d in range(0, 91, 5)}
    index = NeighbourIndex.build(np.array([_unit(a) for a in angles.values()]), list(angles))
    gold = [("g-wrong", 0.2), ("g-sure", 0.8), ("g-right", 1.0)]  # k = 8, ceil(1.6) = 2, 0
    gold_vecs = np.array([_unit(0), _unit(12), _unit(90)])
    exclude = {"p0", "p10"}  # already labelled: never returned, and they do not use up k
    found = retrieve(gold, gold_vecs, index, exclude)
    ids = [r.pool_id for r in found]
    assert len(ids) == len(set(ids))  # each pool pair once
    assert not exclude & set(ids)
    # g-wrong: 8 nearest to 0 deg that are allowed; g-sure: 2 nearest to 12 deg (p15, p5)
    assert ids == ["p5", "p15", "p20", "p25", "p30", "p35", "p40", "p45"]
    by = {r.pool_id: r for r in found}
    assert by["p15"].by_gold_ids == ("g-sure", "g-wrong") and by["p15"].k == 2
    assert by["p5"].by_gold_ids == ("g-wrong", "g-sure")  # 5 deg from g-wrong, 7 from g-sure
    assert by["p5"].k == 8 and len(by["p5"].similarities) == 2
    assert by["p45"].by_gold_ids == ("g-wrong",) and by["p45"].by_gold_id == "g-wrong"
    assert all(isinstance(r, Retrieved) for r in found)
    assert all("g-right" not in r.by_gold_ids for r in found)  # p = 1: nothing retrieved
    assert abs(by["p45"].similarity - np.cos(np.deg2rad(45))) < 1e-6


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_retrieve_widens_past_excluded_neighbours(method):
    rng = np.random.default_rng(3)
    v = rng.standard_normal((50, 8)).astype(np.float32)
    index = NeighbourIndex.build(v, [str(i) for i in range(50)], method=method)
    nearest = [i for i, _ in index.search(v[:1], 20)[0]]
    assert len(index.search(v[:1], 100)[0]) == 50  # one query row, k over the size
    exclude = set(nearest[:10])  # the ten nearest are already labelled
    found = retrieve([("g", 0.0)], v[:1], index, exclude)
    assert [r.pool_id for r in found] == nearest[10:18]


def test_retrieve_runs_out_gracefully():
    index = NeighbourIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    found = retrieve([("g", 0.0)], np.array([[1.0, 0.0, 0.0]]), index, {"a", "b"})
    assert [r.pool_id for r in found] == ["c"]  # k = 8, but one pair is all that is left


def test_retrieve_with_real_embeddings(embedder_dir):
    from engine.embed import Embedder

    pool = {"bread": "user: What flour is best for sourdough bread?",
            "cake": "user: How long do I bake a sponge cake?",
            "tax": "user: How do I file my income tax return?",
            "gpu": "user: Which GPU should I buy for deep learning?",
            "loan": "user: Should I refinance my mortgage now?"}
    with Embedder.open(embedder_dir) as e:
        index = NeighbourIndex.build(e.embed(list(pool.values())), list(pool))
        gold = e.embed(["user: My sourdough loaf came out dense. What went wrong?",
                        "user: Is it a good time to take out a home loan?"])
    found = retrieve([("g-baking", 0.8), ("g-money", 0.8)], gold, index, set())  # k = 2 each
    by = {r.pool_id: r.by_gold_ids for r in found}
    assert by["bread"] == ("g-baking",) and by["loan"] == ("g-money",)
    assert "gpu" not in by


def test_importing_retrieval_and_embed_loads_nothing_heavy():
    """The GUI and CLI import these at start: usearch, onnxruntime and torch load on use only."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, engine.embed, trainer.curate.retrieval;"
            "bad = [m for m in ('torch', 'transformers', 'usearch', 'onnxruntime', 'PySide6', 'llama_cpp')"
            " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
