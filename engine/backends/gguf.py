"""GGUF backend: llama.cpp through llama-cpp-python's low-level API.

Two kinds of GGUF score here:

* Arbiter reward models (``arbiter export --format gguf``): a decoder body whose score
  head is stored as metadata (``arbiter.head.weight``/``bias``). llama.cpp returns the
  final-norm hidden state of each sequence's last token (LAST pooling) and the head is
  a float64 dot product in numpy. Cross-encoders exported by Arbiter carry their
  head (and the restored BERT pooler) as llama.cpp's own ``cls`` tensors and use RANK
  pooling.
* Rerankers made elsewhere that carry llama.cpp's RANK head (``cls.output``) and are
  encoders (BERT, RoBERTa, ...): scored as text pairs, like any cross-encoder.

Anything else (a chat LM, a decoder yes/no reranker) is refused with a message that
says how to export a reward model.

Why not ``Llama.embed()``: it tokenizes with special=False (chat-template markers
become plain text) and cuts the *end* of long input, which is the token the head
reads. Here the rendered template is tokenized with special tokens parsed, batches are
built by hand and the pooled state is read with ``llama_get_embeddings_seq``.

Decoding strategy (measured here): every sequence, and every Best-of-N candidate after
the shared prompt, gets its own ``llama_decode`` call (``pack_tokens=0``). On CPU that
is not slower than one unified batch (every token would attend over every sequence's
cells, masked), and it makes a score independent of what else is in the job: packing
two candidates into one decode moved a q8_0 score by 0.19 and an f16 one by 6e-3
(SmolLM2-135M, 1.3k tokens; the other sequences change the kernels' summation order
and quantized activations amplify it), while one-by-one shared-prompt scores equal
full scoring exactly. ``pack_tokens=N`` packs sequences up to N tokens per decode.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.backends.gguf_probe import extra_bufts_allowed
from engine.encoding import Encoded, Encoder, PairLayout, TokenizerFiles
from engine.errors import ModelError, ProviderFallbackWarning
from engine.files import file_info
from engine.gguf_file import GgufHeader, read_header
from engine.scorer import CancelToken, Scorer
from engine.types import Conversation, Item, ModelInfo, Score

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("engine.llama_cpp")
_init_lock = threading.Lock()
_initialised = False

#: llama_ftype (general.file_type) -> the name users know
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k",
              11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s",
              17: "q5_k_m", 18: "q6_k", 32: "bf16"}
#: encoders llama.cpp runs with RANK pooling (non-causal attention)
ENCODER_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
                 "modern-bert", "neo-bert"}
MAX_SEQS = 255  # llama.cpp allows 256 sequences in one context; seq 0 holds a shared prompt
HOW_TO_EXPORT = ("Arbiter scores GGUF reward models exported with `arbiter export SRC OUT --format "
                 "gguf` from a Hugging Face *ForSequenceClassification checkpoint (the score head "
                 "is stored in the file's metadata), and encoder rerankers with a RANK head.")


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints model-loading chatter on stderr; route it to logging (-v shows it)
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        _llama_log.log(logging.WARNING if level == 4 else logging.DEBUG, "%s", msg)  # 4: GGML_LOG_LEVEL_ERROR


_live: weakref.WeakSet[GgufScorer] = weakref.WeakSet()


def _close_all() -> None:
    # at exit, free llama.cpp objects while the library is still whole: a model freed by a
    # finalizer after llama.cpp's own teardown crashed a GUI process (seen once, exit -11)
    for scorer in list(_live):
        with contextlib.suppress(Exception):
            scorer.close()


def _llama():
    """Import llama_cpp once, with its log routed to Python logging."""
    global _initialised
    import llama_cpp

    with _init_lock:
        if not _initialised:
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            atexit.register(_close_all)  # runs before handlers registered earlier (LIFO)
            _initialised = True
    return llama_cpp


class LlamaTextTokenizer:
    """The GGUF's own vocabulary through llama.cpp (special-token text is parsed)."""

    def __init__(self, vocab, *, add_bos: bool, add_eos: bool) -> None:
        self.llama = _llama()
        self.vocab, self.add_bos, self.add_eos = vocab, add_bos, add_eos
        ll = self.llama
        self.bos, self.eos = ll.llama_vocab_bos(vocab), ll.llama_vocab_eos(vocab)
        self.sep = ll.llama_vocab_sep(vocab)

    def ids(self, text: str, add_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n = len(raw) + 8
        while True:
            buf = (self.llama.llama_token * n)()
            k = self.llama.llama_tokenize(self.vocab, raw, len(raw), buf, n, False, True)
            if k >= 0:
                break
            n = -k
        ids = list(buf[:k])
        if add_special:
            ids = ([self.bos] if self.add_bos and self.bos >= 0 else []) + ids + \
                  ([self.eos] if self.add_eos and self.eos >= 0 else [])
        return ids

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(256)
        k = self.llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(k, 0)].decode("utf-8", "replace")

    def token_to_id(self, token: str) -> int | None:
        ids = self.ids(token, add_special=False)
        return ids[0] if len(ids) == 1 else None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.piece(t) for t in ids)

    def pair_layout(self) -> PairLayout:
        # [CLS] A [SEP] B [SEP]; llama.cpp ignores token types, so they are all 0
        if self.bos < 0 or self.sep < 0:
            raise ModelError("this GGUF vocabulary has no CLS/SEP tokens for text pairs")
        return PairLayout((self.bos,), (self.sep,), (self.sep,), ((0,), 0, (0,), 0, (0,)))


def _kind(header: GgufHeader) -> str:
    """``head`` (Arbiter decoder RM), ``rank`` (cls.output head), or a ModelError."""
    if "arbiter.head.weight" in header.metadata:
        return "head"
    arch = header.architecture
    if "cls.output.weight" in header.tensors:
        causal = header.arch_key("attention.causal", arch not in ENCODER_ARCHS)
        if causal:
            raise ModelError(f"{header.path}: a {arch} reranker with a yes/no head needs its own "
                             f"prompt format, which Arbiter does not implement. {HOW_TO_EXPORT}")
        return "rank"
    raise ModelError(f"{header.path}: this GGUF ({arch}) has no reward head: it is a language model, "
                     f"not a reward model. {HOW_TO_EXPORT}")


def _gpu_layers(device: str, llama) -> int:
    supported = bool(llama.llama_supports_gpu_offload())
    if device == "cpu":
        return 0
    if device == "auto":
        return 999 if supported else 0
    if device in ("gpu", "cuda", "metal", "vulkan"):
        if not supported:
            msg = (f"device {device!r} was requested but this llama-cpp-python build has no GPU "
                   "offload; FALLING BACK TO CPU. Reinstall it with CMAKE_ARGS=-DGGML_CUDA=on "
                   "(or -DGGML_METAL=on / -DGGML_VULKAN=on).")
            log.warning(msg)
            import warnings

            warnings.warn(msg, ProviderFallbackWarning, stacklevel=4)
            return 0
        return 999
    raise ModelError(f"unknown device {device!r}; choose auto, cpu or gpu")


class GgufScorer(Scorer):
    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 max_length: int | None = None, batch_size: int = 16, name: str | None = None,
                 pack_tokens: int = 0) -> None:
        path = Path(path)
        header = read_header(path)  # validated before llama.cpp sees the file
        self.kind = _kind(header)
        meta = header.metadata
        ll = self.llama = _llama()
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = _gpu_layers(device, ll)
        # llama.cpp's extra CPU buffers (AMX tiles, repacked q4/q8 layouts) are its fast quantized
        # kernels, but a build can carry kernels this machine cannot run (an AMX build in a VM
        # without AMX-INT8 segfaults): a child process tries them once per build, CPU and type.
        mp.use_extra_bufts = extra_bufts_allowed(path, meta.get("general.file_type", "?"))
        self.model = ll.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelError(f"{path}: llama.cpp could not load this model (run with -v for its log); "
                             "the file may be for a newer llama.cpp, or damaged.")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_embd = ll.llama_model_n_embd(self.model)
        if self.kind == "head":
            self.head_w = np.asarray(meta["arbiter.head.weight"], dtype=np.float64)
            self.head_b = float(meta.get("arbiter.head.bias", 0.0))
            if self.head_w.shape != (self.n_embd,):
                raise ModelError(f"{path}: arbiter.head.weight has {self.head_w.size} values, the model's "
                                 f"hidden size is {self.n_embd}; re-export the model")
            add_bos = bool(meta.get("arbiter.add_bos", meta.get("tokenizer.ggml.add_bos_token", False)))
            add_eos = bool(meta.get("arbiter.add_eos", False))
        else:
            add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
            add_eos = False  # the pair layout adds [SEP] itself
        tokenizer = LlamaTextTokenizer(self.vocab, add_bos=add_bos, add_eos=add_eos)
        template = meta.get("tokenizer.chat_template") if self.kind == "head" else None
        ctx_train = int(header.arch_key("context_length", 0) or 0)
        limits = [v for v in (meta.get("arbiter.max_length"), ctx_train) if v]
        specials = {"bos_token": tokenizer.piece(tokenizer.bos) if tokenizer.bos >= 0 else None,
                    "eos_token": tokenizer.piece(tokenizer.eos) if tokenizer.eos >= 0 else None,
                    "pad_token": None, "unk_token": None}
        pad = meta.get("arbiter.pad_token_id", meta.get("tokenizer.ggml.padding_token_id"))
        files = TokenizerFiles(path, template, specials, int(pad) if pad is not None else None,
                               int(min(limits)) if limits else 512, "zeros")
        self.encoder = Encoder(files, max_length, tokenizer=tokenizer)
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self.pack_tokens = pack_tokens
        self._ctx = None
        self._ctx_size = 0
        self._lock = threading.Lock()
        _live.add(self)
        dtype = FILE_TYPES.get(int(meta.get("general.file_type", -1)), f"ftype{meta.get('general.file_type')}")
        self.info = ModelInfo(
            name=name or path.stem,
            format="gguf",
            architecture=str(meta.get("arbiter.architecture") or f"{header.architecture} reranker"),
            pooling="last" if self.kind == "head" else "rank",
            max_length=self.encoder.max_length,
            chat_template=template,
            dtype=dtype,
            files=(file_info(path, root=path.parent),),
            provider="gpu" if mp.n_gpu_layers else "cpu",
            length_correction=float(meta.get("arbiter.length_correction") or 0.0),
            extra={"threads": self.threads, "n_gpu_layers": mp.n_gpu_layers,
                   "pack_tokens": pack_tokens, "gguf_architecture": header.architecture},
        )

    # ---- llama.cpp context -------------------------------------------------------------
    def _context(self, n_tokens: int):
        """A context whose KV cache holds ``n_tokens``; grown (doubling) when work needs more."""
        if self._ctx is not None and n_tokens <= self._ctx_size:
            return self._ctx
        ll = self.llama
        size = max(512, self._ctx_size)
        while size < n_tokens:
            size *= 2
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = size
        # RANK (non-causal) pooling needs each sequence whole in one micro-batch
        cp.n_ubatch = size if self.kind == "rank" else min(size, 512)
        cp.n_seq_max = MAX_SEQS + 1
        cp.embeddings = True
        cp.pooling_type = ll.LLAMA_POOLING_TYPE_LAST if self.kind == "head" else ll.LLAMA_POOLING_TYPE_RANK
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.kv_unified = True  # seq_cp then shares the prompt's cells instead of copying them
        # Flash attention off: on CPU it made a sequence's score depend on what else was in the
        # batch (up to 0.015 on a score of 4.4); off, scores are batch-invariant. The KV cache
        # keeps f32 models in f32 (max |diff| vs torch 1e-5 instead of 4e-3 with an f16 cache).
        cp.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = cp.type_v = 0 if self.info.dtype == "f32" else 1  # GGML_TYPE_F32 / F16
        ctx = ll.llama_init_from_model(self.model, cp)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {size} tokens (out of memory?)")
        self._ctx, self._ctx_size = ctx, size
        return ctx

    def _decode(self, ctx, seqs: Sequence[tuple[int, Sequence[int], int]], *, all_outputs: bool = True) -> None:
        """One ``llama_decode`` of (seq id, tokens, first position) runs. Embeddings need every token
        an output; ``all_outputs=False`` marks only each run's last one (generative mode)."""
        ll = self.llama
        n = sum(len(t) for _, t, _ in seqs)
        batch = ll.llama_batch_init(n, 0, 1)
        try:
            token = np.ctypeslib.as_array(batch.token, shape=(n,))
            pos = np.ctypeslib.as_array(batch.pos, shape=(n,))
            np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
            outputs = np.ctypeslib.as_array(batch.logits, shape=(n,))
            outputs[:] = 1 if all_outputs else 0
            k = 0
            for seq, toks, p0 in seqs:
                m = len(toks)
                token[k:k + m] = toks
                pos[k:k + m] = np.arange(p0, p0 + m)
                for j in range(k, k + m):
                    batch.seq_id[j][0] = seq
                k += m
                outputs[k - 1] = 1
            batch.n_tokens = n
            rc = ll.llama_decode(ctx, batch)
        finally:
            ll.llama_batch_free(batch)
        if rc != 0:
            raise ModelError(f"llama_decode failed (code {rc}) on {n} tokens")

    def _pooled(self, ctx, seq: int) -> float:
        ptr = self.llama.llama_get_embeddings_seq(ctx, seq)
        if not ptr:
            raise ModelError(f"llama.cpp returned no pooled output for sequence {seq}")
        if self.kind == "rank":
            return float(ptr[0])
        h = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        return float(h @ self.head_w + self.head_b)

    def _tokens(self, e: Encoded) -> list[int]:
        """The ids llama.cpp reads: HF's scorer reads the last non-pad token, so trailing pads go."""
        ids = list(e.ids)
        if self.kind == "head":
            pad = self.encoder.pad_token_id
            while len(ids) > 1 and ids[-1] == pad:
                ids.pop()
        return ids

    # ---- Scorer ----------------------------------------------------------------------
    def _forward(self, batch) -> np.ndarray:  # pragma: no cover - _score_encoded is overridden
        raise NotImplementedError("the GGUF backend decodes unpadded sequences")

    def _score_encoded(self, encoded: Sequence[Encoded], batch_size: int,
                       cancel: CancelToken | None) -> list[float]:
        seqs = [self._tokens(e) for e in encoded]
        out = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        packs = self._packs([len(t) for t in seqs], order)
        with self._lock:
            for pack in packs:
                if cancel:
                    cancel.raise_if_cancelled()
                ctx = self._context(sum(len(seqs[i]) for i in pack))
                self.llama.llama_memory_clear(self.llama.llama_get_memory(ctx), True)
                self._decode(ctx, [(s, seqs[i], 0) for s, i in enumerate(pack)])
                for s, i in enumerate(pack):
                    out[i] = self._pooled(ctx, s)
        return out

    def _score_shared_prompt(self, conv: Conversation, responses: Sequence[str]) -> list[Score] | None:
        """Decode the conversation once (seq 0), ``seq_cp`` it to each candidate, decode the tails."""
        if self.kind != "head":
            return None  # a cross-encoder attends both ways: nothing to share
        items = [Item(conv, r) for r in responses]
        encoded = [self.encode(it) for it in items]
        prompt = self.encoder.prompt_ids(items[0])
        p = len(prompt)
        # the boundary must hold: the prompt's tokens prefix the full tokenization and nothing
        # was cut; a candidate where it does not (a BPE merge across it) is scored in full
        full_ids = [self._tokens(e) for e in encoded]
        ok = [i for i, (e, ids) in enumerate(zip(encoded, full_ids, strict=True))
              if not e.cut_tokens and len(ids) > p and ids[:p] == prompt]
        if not ok:
            return None
        rest = [i for i in range(len(encoded)) if i not in set(ok)]
        tails = [full_ids[i][p:] for i in ok]
        ll = self.llama
        values: list[float] = [0.0] * len(tails)
        packs = self._packs([len(t) for t in tails])
        with self._lock:
            ctx = self._context(p + max(sum(len(tails[i]) for i in pack) for pack in packs))
            mem = ll.llama_get_memory(ctx)
            ll.llama_memory_clear(mem, True)
            self._decode(ctx, [(0, prompt, 0)])
            for pack in packs:  # copy the prompt to this pack's sequences, decode, read, drop
                for s in range(1, len(pack) + 1):
                    ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
                self._decode(ctx, [(s, tails[i], p) for s, i in enumerate(pack, start=1)])
                for s, i in enumerate(pack, start=1):
                    values[i] = self._pooled(ctx, s)
                for s in range(1, len(pack) + 1):
                    ll.llama_memory_seq_rm(mem, s, -1, -1)
        scores = dict(zip(ok, values, strict=True))
        if rest:
            log.debug("%d candidate(s) cross the prompt's token boundary; scored in full", len(rest))
            scores |= dict(zip(rest, self._score_encoded([encoded[i] for i in rest], self.batch_size, None),
                               strict=True))
        return [Score(scores[i], len(e.ids), e.cut_tokens) for i, e in enumerate(encoded)]

    def _packs(self, lengths: Sequence[int], order: Sequence[int] | None = None) -> list[list[int]]:
        """Indices grouped into decodes of at most ``pack_tokens`` tokens and MAX_SEQS sequences.

        A sequence longer than ``pack_tokens`` gets a decode of its own.
        """
        packs: list[list[int]] = []
        used = 0
        for i in (order if order is not None else range(len(lengths))):
            if packs and len(packs[-1]) < MAX_SEQS and used + lengths[i] <= self.pack_tokens:
                packs[-1].append(i)
                used += lengths[i]
            else:
                packs.append([i])
                used = lengths[i]
        return packs

    def close(self) -> None:
        ll = self.llama
        with self._lock:
            if self._ctx is not None:
                ll.llama_free(self._ctx)
                self._ctx = None
            if self.model is not None:
                ll.llama_model_free(self.model)
                self.model = None

    def __del__(self) -> None:
        if sys.is_finalizing():  # _close_all ran already; the library may be half torn down
            return
        with contextlib.suppress(Exception):
            self.close()
