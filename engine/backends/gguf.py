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

Outputs only where the head reads: in embedding mode llama.cpp makes every token an
output (the last layer's FFN, the vocabulary projection and a logits copy for each
token), but a decoder's head reads one hidden state. So a decoder's tokens but the last
two, and a shared prompt, are decoded with embeddings off and no outputs (the KV cache is
all they leave), and each sequence's last two tokens are then decoded in embedding mode
with LAST pooling. Two, not one: llama.cpp runs a one-row micro-batch through other
kernels, which sum in another order (that moved a q8_0 SmolLM2 score by 0.14), so no
decode here is ever a lone token. Scores equal the every-token-an-output path exactly
(max |diff| 0, tests/test_gguf.py), and prompt-shared scores equal full scoring exactly.
``GgufScorer.all_outputs = True`` restores the old path (bench/llama_modes.py times both).
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
from engine.devices import (
    DEFAULT_DEVICE,
    LLAMA_BACKENDS,
    check_device,
    fall_back_to_cpu,
    llama_gpu_backends,
)
from engine.encoding import Encoded, Encoder, PairLayout, TokenizerFiles, utf8
from engine.errors import ModelError
from engine.files import file_info
from engine.gguf_adapter import RewardAdapter, read_scorable
from engine.gguf_file import GgufHeader, reward_head
from engine.scorer import CancelToken, Scorer
from engine.types import ModelInfo

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
#: tokens per llama.cpp micro-batch for decoders (`bench/throughput.py --llama-tune` sweeps it)
UBATCH = 512
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
        raw = utf8(text)
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
    """Layers to offload for a device name (engine/devices.py): 0 (CPU), or all of them.

    A name this build cannot honour runs on the CPU with the loud fallback warning.
    """
    device = check_device(device)
    wanted = LLAMA_BACKENDS[device]
    if device == "cpu":
        return 0
    supported = bool(llama.llama_supports_gpu_offload())
    rebuild = ("Reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on (or -DGGML_METAL=on / "
               "-DGGML_VULKAN=on).")
    if wanted is None:  # auto, gpu: whichever GPU backend the build has
        if not supported and device == "gpu":
            fall_back_to_cpu("this llama-cpp-python build", device, "has no GPU offload", rebuild)
        return 999 if supported else 0
    if not wanted:
        fall_back_to_cpu("llama.cpp", device, "has no such backend (it offloads to CUDA, Metal or Vulkan)",
                         "For DirectML or Core ML, export the model to ONNX (`arbiter export --format onnx`).")
        return 0
    have = llama_gpu_backends(llama)
    if supported and (have is None or have & set(wanted)):
        return 999
    built = f"has only {', '.join(sorted(have))}" if have else "has no GPU offload"
    fall_back_to_cpu("this llama-cpp-python build", device, built, rebuild)
    return 0


def _no_lone_token(seqs: Sequence[tuple[int, Sequence[int], int]]) -> list[list[tuple[int, Sequence[int], int]]]:
    """Decodes for ``seqs`` such that llama.cpp's micro-batches (UBATCH tokens) never end in one token.

    A one-token micro-batch runs other kernels (see ``GgufScorer._decode_scored``); when the
    total is 1 more than a multiple of UBATCH, the last run's last two tokens get a decode of
    their own.
    """
    n = sum(len(t) for _, t, _ in seqs)
    s, t, p0 = seqs[-1]
    if n < UBATCH or n % UBATCH != 1 or len(t) < 3:
        return [list(seqs)]
    return [[*seqs[:-1], (s, t[:-2], p0)], [(s, t[-2:], p0 + len(t) - 2)]]


class GgufScorer(Scorer):
    """A GGUF reward model (or encoder reranker) scored by llama.cpp; see the module docstring."""

    #: True: every token an output in embedding mode, the path before outputs were asked for only
    #: where the head reads (kept for the parity test and bench/llama_modes.py)
    all_outputs: bool = False

    def __init__(self, path: Path, *, device: str = DEFAULT_DEVICE, threads: int | None = None,
                 max_length: int | None = None, batch_size: int = 16, name: str | None = None,
                 pack_tokens: int = 0) -> None:
        path = Path(path)
        # structure and hparams validated before llama.cpp sees it; an adapter's base found by sha256
        header, self.adapter = read_scorable(path)
        self.kind = _kind(header)
        self.llama = _llama()
        self.model = self._ctx = self._lora = None  # set first: close() frees whatever a failed load left
        self._ctx_size = 0
        self._lock = threading.Lock()
        _live.add(self)
        n_gpu_layers = self._load_model(self.adapter.base if self.adapter else path, header, device)
        if self.adapter:
            self._load_adapter(self.adapter)
        if self.kind == "head":
            self.head_w, self.head_b = self._head(path, header)
        #: a RANK head's outputs (llama.cpp's n_cls_out, named by {arch}.classifier.output_labels):
        #: one score, or a multi-output head's names; ``score`` reads the first
        self.output_names = self._output_names(path)
        encoder = self._encoder(path, header, max_length)
        self.threads = threads or os.cpu_count() or 1
        self.pack_tokens = pack_tokens
        info = self._info(path, header, encoder, name, n_gpu_layers)
        # a cross-encoder (RANK) attends both ways: only decoders share the prompt
        super().__init__(info, encoder, batch_size=batch_size, prompt_sharing=self.kind == "head")

    def _load_model(self, path: Path, header: GgufHeader, device: str) -> int:
        """Load the weights into llama.cpp (``self.model``); returns the layers offloaded to a GPU."""
        ll = self.llama
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = _gpu_layers(device, ll)
        # llama.cpp's extra CPU buffers (AMX tiles, repacked q4/q8 layouts) are its fast quantized
        # kernels, but a build can carry kernels this machine cannot run (an AMX build in a VM
        # without AMX-INT8 segfaults): a child process tries them once per build, CPU and type.
        mp.use_extra_bufts = extra_bufts_allowed(path, header.metadata.get("general.file_type", "?"))
        self.model = ll.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelError(f"{path}: llama.cpp could not load this model (run with -v for its log); "
                             "the file may be for a newer llama.cpp, or damaged.")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_embd = ll.llama_model_n_embd(self.model)
        return mp.n_gpu_layers

    def _load_adapter(self, adapter: RewardAdapter) -> None:
        """llama.cpp reads the LoRA tensors; every context gets them (``_context``) at scale 1."""
        self._lora = self.llama.llama_adapter_lora_init(self.model, str(adapter.path).encode())
        if not self._lora:
            raise ModelError(f"{adapter.path}: llama.cpp could not apply this LoRA adapter to "
                             f"{adapter.base.name} (run with -v for its log)")

    def _head(self, path: Path, header: GgufHeader) -> tuple[np.ndarray, float]:
        """The score head from the metadata, as long as the hidden state llama.cpp returns."""
        w, b = reward_head(header)  # float64, finite, checked
        if w.shape != (self.n_embd,):
            raise ModelError(f"{path}: arbiter.head.weight has {w.size} values, the model's "
                             f"hidden size is {self.n_embd}; re-export the model")
        return w, b

    def _output_names(self, path: Path) -> tuple[str, ...]:
        """("score",), or the labels of a RANK head with several outputs (n_cls_out > 1)."""
        if self.kind != "rank":
            return ("score",)
        ll = self.llama
        n = int(ll.llama_model_n_cls_out(self.model))
        if n <= 1:
            return ("score",)
        names = []
        for i in range(n):
            label = ll.llama_model_cls_label(self.model, i)
            names.append(label.decode("utf-8", "replace") if label else f"output_{i}")
        return tuple(names)

    def _encoder(self, path: Path, header: GgufHeader, max_length: int | None) -> Encoder:
        """The file's own vocabulary and template, with the BOS/EOS handling the export recorded."""
        meta = header.metadata
        if self.kind == "head":
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
        return Encoder(files, max_length, tokenizer=tokenizer)

    def _info(self, path: Path, header: GgufHeader, encoder: Encoder, name: str | None,
              n_gpu_layers: int) -> ModelInfo:
        """What ``arbiter models info`` and stored results say about this file and how it runs."""
        meta = header.metadata
        dtype = FILE_TYPES.get(int(meta.get("general.file_type", -1)), f"ftype{meta.get('general.file_type')}")
        return ModelInfo(
            name=name or path.stem,
            format="gguf",
            architecture=str(meta.get("arbiter.architecture") or f"{header.architecture} reranker"),
            pooling="last" if self.kind == "head" else "rank",
            max_length=encoder.max_length,
            chat_template=encoder.files.chat_template,
            dtype=dtype,
            files=(file_info(path, root=path.parent),
                   *((file_info(self.adapter.base),) if self.adapter else ())),
            provider="gpu" if n_gpu_layers else "cpu",
            length_correction=float(meta.get("arbiter.length_correction") or 0.0),
            extra={"threads": self.threads, "n_gpu_layers": n_gpu_layers, "outputs": list(self.output_names),
                   "pack_tokens": self.pack_tokens, "gguf_architecture": header.architecture,
                   **({"lora_base": str(self.adapter.base), "lora_rank": self.adapter.rank,
                       "lora_modules": self.adapter.modules} if self.adapter else {})},
        )

    # ---- llama.cpp context -------------------------------------------------------------
    def _context(self, n_tokens: int):
        """A context whose KV cache holds ``n_tokens``; grown (doubling) when work needs more."""
        if self._ctx is not None and n_tokens <= self._ctx_size:
            return self._ctx
        size = max(512, self._ctx_size)
        while size < n_tokens:
            size *= 2
        if self._ctx is not None:
            self.llama.llama_free(self._ctx)
            self._ctx = None
        ctx = self.llama.llama_init_from_model(self.model, self._context_params(size))
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {size} tokens (out of memory?)")
        if self._lora:
            ll = self.llama
            rc = ll.llama_set_adapters_lora(ctx, (ll.llama_adapter_lora_p_ctypes * 1)(self._lora), 1,
                                            (ctypes.c_float * 1)(1.0))
            if rc != 0:
                ll.llama_free(ctx)
                raise ModelError(f"llama.cpp could not set the LoRA adapter on a context (code {rc})")
        self._ctx, self._ctx_size = ctx, size
        return ctx

    def _context_params(self, size: int):
        """Parameters of a ``size``-token context (KV cache cells = one decode's tokens)."""
        ll = self.llama
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = size
        # RANK (non-causal) pooling needs each sequence whole in one micro-batch
        cp.n_ubatch = size if self.kind == "rank" else min(size, UBATCH)
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
        return cp

    def _decode(self, ctx, seqs: Sequence[tuple[int, Sequence[int], int]], *, outputs: str = "all") -> None:
        """One ``llama_decode`` of (seq id, tokens, first position) runs.

        ``outputs``: ``all`` marks every token (embedding mode needs that: llama.cpp overrides
        anything less), ``last`` each run's last token, ``none`` no token (generative mode:
        the KV cache is filled and no output row is computed).
        """
        ll = self.llama
        n = sum(len(t) for _, t, _ in seqs)
        batch = ll.llama_batch_init(n, 0, 1)
        try:
            token = np.ctypeslib.as_array(batch.token, shape=(n,))
            pos = np.ctypeslib.as_array(batch.pos, shape=(n,))
            np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
            marks = np.ctypeslib.as_array(batch.logits, shape=(n,))
            marks[:] = 1 if outputs == "all" else 0
            k = 0
            for seq, toks, p0 in seqs:
                m = len(toks)
                token[k:k + m] = toks
                pos[k:k + m] = np.arange(p0, p0 + m)
                for j in range(k, k + m):
                    batch.seq_id[j][0] = seq
                k += m
                if outputs == "last":
                    marks[k - 1] = 1
            batch.n_tokens = n
            rc = ll.llama_decode(ctx, batch)
        finally:
            ll.llama_batch_free(batch)
        if rc != 0:
            raise ModelError(f"llama_decode failed (code {rc}) on {n} tokens")

    def _fill(self, ctx, seqs: Sequence[tuple[int, Sequence[int], int]]) -> None:
        """Decode runs whose outputs nobody reads (a shared prompt, a sequence's body): KV cache only.

        Embedding mode makes llama.cpp treat every token as an output, which costs the final
        layer's FFN, the vocabulary projection and a logits copy per token; so embeddings are
        switched off for this decode and no token is marked.
        """
        seqs = [s for s in seqs if len(s[1])]
        if not seqs:
            return
        if self.all_outputs:
            self._decode(ctx, seqs)
            return
        self.llama.llama_set_embeddings(ctx, False)
        try:
            for part in _no_lone_token(seqs):
                self._decode(ctx, part, outputs="none")
        finally:
            self.llama.llama_set_embeddings(ctx, True)

    def _decode_scored(self, ctx, seqs: Sequence[tuple[int, Sequence[int], int]]) -> None:
        """Decode runs so that ``_pooled`` can read each one's score.

        A decoder's head reads only the last token: the tokens before go through
        :meth:`_fill`, then the last two (all of a run of up to three, so that no fill is a
        single token) are decoded in embedding mode with LAST pooling. Never one token alone:
        llama.cpp computes a one-row micro-batch with other kernels, which sum in another order
        (a q8_0 SmolLM2 score moved by 0.14); rows of larger ones score exactly as before.
        A cross-encoder's RANK pooling needs each sequence whole.
        """
        if self.kind == "rank" or self.all_outputs:
            self._decode(ctx, seqs)
            return
        cut = [len(t) - (len(t) if len(t) <= 3 else 2) for _, t, _ in seqs]
        self._fill(ctx, [(s, t[:c], p0) for (s, t, p0), c in zip(seqs, cut, strict=True)])
        self._decode(ctx, [(s, t[c:], p0 + c) for (s, t, p0), c in zip(seqs, cut, strict=True)])

    def _pooled(self, ctx, seq: int) -> float:
        ptr = self.llama.llama_get_embeddings_seq(ctx, seq)
        if not ptr:
            raise ModelError(f"llama.cpp returned no pooled output for sequence {seq}")
        if self.kind == "rank":
            return float(ptr[0])
        h = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        return float(h @ self.head_w + self.head_b)

    def _pooled_all(self, ctx, seq: int) -> np.ndarray:
        """Every output of a RANK head for sequence ``seq`` (llama.cpp writes n_cls_out floats)."""
        ptr = self.llama.llama_get_embeddings_seq(ctx, seq)
        if not ptr:
            raise ModelError(f"llama.cpp returned no pooled output for sequence {seq}")
        return np.ctypeslib.as_array(ptr, shape=(len(self.output_names),)).astype(np.float64)

    def outputs(self, items: Sequence, *, batch_size: int | None = None) -> np.ndarray:
        """Every output of the head per item, ``[len(items), len(output_names)]`` float64.

        For a multi-output RANK head (``score`` gives only the first). Items too long raise
        InputTooLongError: the caller windows them (app.moderate.scoring), nothing is cut.
        Decoded as ``score`` decodes them (one sequence per decode unless ``pack_tokens``), so
        the first column equals ``score`` exactly.
        """
        if self.kind != "rank":
            return np.array([[s.value] for s in self.score(items, batch_size=batch_size)])
        seqs = [self._tokens(self.encode(i)) for i in items]
        out = np.zeros((len(seqs), len(self.output_names)), dtype=np.float64)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        with self._lock:
            for pack in self._packs([len(t) for t in seqs], order):
                ctx = self._context(sum(len(seqs[i]) for i in pack))
                self.llama.llama_memory_clear(self.llama.llama_get_memory(ctx), True)
                self._decode_scored(ctx, [(s, seqs[i], 0) for s, i in enumerate(pack)])
                for s, i in enumerate(pack):
                    out[i] = self._pooled_all(ctx, s)
        return out

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
                self._decode_scored(ctx, [(s, seqs[i], 0) for s, i in enumerate(pack)])
                for s, i in enumerate(pack):
                    out[i] = self._pooled(ctx, s)
        return out

    def _score_tails(self, prompt: Sequence[int], tails: Sequence[Sequence[int]]) -> list[float]:
        """Decode the conversation once (seq 0), ``seq_cp`` it to each candidate, decode the tails.

        No head reads the prompt (every tail is non-empty), so it is decoded without outputs,
        but for its last token, which each candidate decodes again before its tail: a one-token
        tail then still ends in a two-token decode, as in full scoring (see ``_decode_scored``).
        """
        p = len(prompt) - 1 if len(prompt) >= 3 else 0  # the shared positions
        runs = [[*prompt[p:], *t] for t in tails]
        ll = self.llama
        values: list[float] = [0.0] * len(tails)
        packs = self._packs([len(r) for r in runs])
        with self._lock:
            ctx = self._context(p + max(sum(len(runs[i]) for i in pack) for pack in packs))
            mem = ll.llama_get_memory(ctx)
            ll.llama_memory_clear(mem, True)
            self._fill(ctx, [(0, prompt[:p], 0)])
            for pack in packs:  # copy the prompt to this pack's sequences, decode, read, drop
                for s in range(1, len(pack) + 1):
                    ll.llama_memory_seq_cp(mem, 0, s, -1, -1)
                self._decode_scored(ctx, [(s, runs[i], p) for s, i in enumerate(pack, start=1)])
                for s, i in enumerate(pack, start=1):
                    values[i] = self._pooled(ctx, s)
                for s in range(1, len(pack) + 1):
                    ll.llama_memory_seq_rm(mem, s, -1, -1)
        return values

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
                ll.llama_model_free(self.model)  # frees a LoRA adapter loaded on it too
                self.model = self._lora = None

    def __del__(self) -> None:
        if sys.is_finalizing():  # _close_all ran already; the library may be half torn down
            return
        with contextlib.suppress(Exception):
            self.close()
