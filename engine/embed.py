"""Sentence embeddings: an exported encoder (exports/embedder.py) run by onnxruntime.

Curation retrieves pool pairs that resemble the gold pairs the reward model gets wrong,
so it needs one vector per conversation. The engine runs the encoder graph
(``last_hidden_state``), then pools as sentence-transformers defines it for
all-MiniLM-L6-v2: the mean of the token vectors over the attention mask, then L2
normalisation, so a dot product is the cosine similarity.

Too-long text is **cut at the end** to the folder's ``max_length`` (256 tokens for
MiniLM, what it was trained at), keeping ``[CLS]`` and ``[SEP]``. This is retrieval, not
scoring: a cut embedding is still a fair summary of where a conversation is going,
whereas a reward-model score of a cut response would score another text (the scorer
refuses those). :attr:`Embedder.truncated` counts the texts cut so far.

Sessions, threads and execution providers are set up exactly as for ONNX scoring
(engine/backends/onnx.py): an unavailable device falls back to CPU loudly.

:class:`EmbeddingCache` keeps vectors in SQLite under (embedder identity, sha256 of the
text), so a rerun over the same pool embeds nothing (:func:`cached_embed`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engine.backends.onnx import (
    check_started,
    choose_providers,
    find_onnx_file,
    load_session,
    session_options,
)
from engine.devices import check_device
from engine.encoding import load_tokenizer
from engine.errors import InputError, ModelError
from engine.files import file_info
from engine.modelmeta import read_meta
from engine.store import connect, write_transaction

#: what exports/embedder.py writes as arbiter.json "kind"
EMBEDDER_KIND = "embedder"
#: sentence-transformers' normalisation epsilon (torch.nn.functional.normalize's default)
_NORM_EPS = 1e-12


class Embedder:
    """An ONNX sentence embedder folder, opened. Use :meth:`open`; close it (or ``with``)."""

    def __init__(self, folder: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        device = check_device(device)  # a typo fails before the model is read
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta.get("kind") != EMBEDDER_KIND:
            raise ModelError(f"{self.folder / 'arbiter.json'}: field 'kind': {meta.get('kind')!r}, expected "
                             f"'{EMBEDDER_KIND}'; this folder is not a sentence embedder (make one with "
                             "exports.embedder.export_embedder)")
        if meta.get("pooling", "mean") != "mean":
            raise ModelError(f"{self.folder / 'arbiter.json'}: field 'pooling': {meta.get('pooling')!r}, "
                             "expected 'mean' (the only pooling the engine runs for embedders)")
        self.model_file = find_onnx_file(self.folder)
        self.normalize = bool(meta.get("normalize", True))
        self.max_length = int(meta.get("max_length") or 256)  # tokens
        self._tok = load_tokenizer(self.folder / "tokenizer.json")
        # the end is cut, [CLS]/[SEP] kept (module docstring)
        self._tok.enable_truncation(max_length=self.max_length)
        providers = choose_providers(device)
        self.session: Any = load_session(self.model_file, session_options(threads), providers,
                                          str(meta["dtype"]) if "dtype" in meta else None)
        check_started(device, providers, self.session.get_providers())
        self._inputs = {i.name for i in self.session.get_inputs()}
        output = str(meta.get("output") or "last_hidden_state")
        outputs = {o.name: o for o in self.session.get_outputs()}
        if output not in outputs or not {"input_ids", "attention_mask"} <= self._inputs:
            raise ModelError(f"{self.model_file}: expected inputs input_ids, attention_mask and output "
                             f"{output!r}; found {sorted(self._inputs)} -> {sorted(outputs)}. Re-export it")
        self._output = output
        width = outputs[output].shape[-1]
        self.dim = int(meta.get("dim") or (width if isinstance(width, int) else 0))
        self.identity = file_info(self.model_file).sha256[:16]
        self.name = self.folder.name
        self.truncated = 0  # texts cut to max_length so far
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, threads: int | None = None, device: str = "cpu") -> Embedder:
        """``path``: the embedder folder or its ``model.onnx``."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path}: no such embedder folder")
        return cls(path.parent if path.is_file() else path, threads=threads, device=device)

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.session = None

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """float32 ``(len(texts), dim)``, one L2-normalised row per text, in the order given.

        Texts are run longest-first in batches of ``batch_size`` so each batch pads little;
        the rows do not depend on the batch they ran in (to float rounding, see the tests).
        """
        check_texts(texts)
        if batch_size < 1:
            raise InputError(f"{batch_size}, expected at least 1", field="batch_size")
        if self.session is None:
            raise ModelError(f"{self.folder}: this embedder is closed")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        self.truncated += sum(1 for e in encodings if e.overflowing)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._run([encodings[i].ids for i in rows])
        return out

    def _run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled vectors of one batch (right-padded; padding is masked out of attention and mean)."""
        longest = max(len(r) for r in ids)
        input_ids = np.zeros((len(ids), longest), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for r, row in enumerate(ids):
            input_ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)  # one segment
        with self._lock:  # one run at a time per session keeps thread counts honest
            (hidden,) = self.session.run([self._output], feeds)
        return mean_pool(np.asarray(hidden, dtype=np.float32), mask, normalize=self.normalize)


def check_texts(texts: Sequence[str]) -> None:
    """A list of strings, or an InputError naming the first bad entry."""
    if isinstance(texts, str):
        raise InputError("a single string; expected a list of texts", field="texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"a {type(t).__name__}, expected a string", field=f"texts[{i}]")


def mean_pool(hidden: np.ndarray, mask: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Mean of ``hidden [batch, seq, dim]`` over ``mask [batch, seq]``, then L2-normalised rows."""
    m = mask.astype(np.float32)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), _NORM_EPS)
    return pooled.astype(np.float32)


def text_key(text: str) -> str:
    """sha256 of the text's UTF-8 bytes (lone surrogates escaped, never an encode error)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


#: rows asked for in one SQL statement (SQLite's bound-variable limit is 32766)
_CHUNK = 500


class EmbeddingCache:
    """Vectors in SQLite under (embedder identity, sha256 of the text), float32 blobs.

    ``hits`` and ``misses`` count the texts :func:`cached_embed` found and computed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        with self._lock, write_transaction(self.conn):
            self.conn.execute("create table if not exists embeddings (embedder text not null, "
                              "text_sha256 text not null, dim integer not null, vector blob not null, "
                              "primary key (embedder, text_sha256))")

    def get(self, identity: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """The vectors held for ``keys`` (text hashes); absent keys are left out."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _CHUNK):
                part = unique[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = self.conn.execute(
                    f"select text_sha256, vector from embeddings where embedder = ? and dim = ? "
                    f"and text_sha256 in ({marks})", [identity, dim, *part]).fetchall()
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, identity: str, vectors: dict[str, np.ndarray]) -> None:
        """Store ``vectors`` (text hash -> row) in one transaction."""
        rows = [(identity, k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for k, v in vectors.items()]
        with self._lock, write_transaction(self.conn):
            self.conn.executemany("insert or replace into embeddings values (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self.conn.execute("select count(*) from embeddings").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def cached_embed(embedder: Embedder, texts: Sequence[str], cache: EmbeddingCache, *,
                 batch_size: int = 32) -> np.ndarray:
    """``embedder.embed(texts)``, computing only the texts ``cache`` does not hold (each once)."""
    check_texts(texts)
    keys = [text_key(t) for t in texts]
    held = cache.get(embedder.identity, keys, embedder.dim)
    todo: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in held and key not in todo:
            todo[key] = text
    if todo:
        fresh = embedder.embed(list(todo.values()), batch_size=batch_size)
        new = dict(zip(todo, fresh, strict=True))
        cache.put(embedder.identity, new)
        held.update(new)
    cache.misses += len(todo)
    cache.hits += len(texts) - len(todo)
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for i, key in enumerate(keys):
        out[i] = held[key]
    return out
