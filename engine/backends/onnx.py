"""ONNX Runtime backend: an exported sequence classifier (``logits [batch, 1]``).

Execution providers are chosen explicitly from the device vocabulary
(engine/devices.py). A provider that was asked for but is not there (not installed,
no device) falls back to CPU with the loud warning, never silently: a user who asked
for a GPU must know the scores came from the CPU.

Best-of-N and compare share the conversation between candidates when the folder has
a prefix model (``model_with_past.onnx``, named in arbiter.json; see exports/onnx.py):
the conversation is run once with an empty past, its key/values are tiled for the
candidates, and only their responses are run. The classifier graph cannot do that:
it has no key/value inputs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.devices import (
    DEFAULT_DEVICE,
    ONNX_PROVIDER_NAMES,
    ONNX_PROVIDERS,
    check_device,
    fall_back_to_cpu,
    warn_fallback,
)
from engine.encoding import Encoder, TokenizerFiles
from engine.errors import ModelError
from engine.files import folder_files
from engine.int8_weights import session_source
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, architecture_of, read_meta
from engine.scorer import Batch, Scorer, length_batches, pad_batch
from engine.types import Item, ModelInfo

log = logging.getLogger(__name__)

#: candidates whose tails run in one prefix-model call (each holds a copy of the
#: conversation's key/values: this bounds that memory)
PREFIX_CHUNK = 16
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

def choose_providers(device: str) -> list[str]:
    """Providers to ask onnxruntime for, best first, always ending with CPU (engine/devices.py)."""
    import onnxruntime as ort

    device = check_device(device)
    available = ort.get_available_providers()
    wanted = ONNX_PROVIDERS[device]
    names = [p for p in wanted if p in available]
    if device not in ("cpu", "auto") and not names:
        why = (f"this onnxruntime build has only {', '.join(sorted(available))}" if wanted
               else "has no execution provider for it")
        fall_back_to_cpu("onnxruntime", device, why,
                         "Install onnxruntime-gpu (CUDA), onnxruntime-directml (Windows) or use a build "
                         "with CoreML (macOS); for Vulkan, use the GGUF export.")
    return [*names, "CPUExecutionProvider"]


def find_onnx_file(folder: Path) -> Path:
    candidates = sorted(p for p in Path(folder).glob("*.onnx"))
    if not candidates:
        raise ModelError(f"{folder}: no .onnx file in this folder")
    if len(candidates) > 1:
        named = [p for p in candidates if p.name == "model.onnx"]
        if not named:
            raise ModelError(f"{folder}: several .onnx files ({', '.join(p.name for p in candidates)}); "
                             "keep one model per folder, named model.onnx")
        return named[0]
    return candidates[0]


def session_options(threads: int | None) -> Any:
    """onnxruntime options: ``threads`` intra-op threads (None: onnxruntime's choice), quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only; our own warnings are the loud ones
    return opts


def load_session(model_file: Path, opts: Any, providers: list[str], dtype: str | None = None) -> Any:
    """An InferenceSession, or a ModelError naming the file (truncated, not ONNX)."""
    return open_session(model_file, opts, providers, dtype)[0]


def open_session(model_file: Path, opts: Any, providers: list[str],
                 dtype: str | None = None) -> tuple[Any, str]:
    """The session, and how its int8 weights are read (engine/int8_weights.py).

    ``dtype``: arbiter.json's; a float export is opened as it is, an int8 or unknown one
    has its int8 weights read as uint8 on CPUs without VNNI, where U8S8 would clip.
    """
    import onnxruntime as ort

    try:
        source, weights = (session_source(model_file) if dtype in (None, "int8")
                           else (str(model_file), "as stored"))
        return ort.InferenceSession(source, sess_options=opts, providers=providers), weights
    except ModelError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
        raise ModelError(f"{model_file}: cannot load this file as ONNX ({e}). "
                         "The file may be truncated or not an ONNX model; re-export it.") from e


def check_started(device: str, requested: list[str], in_use: list[str]) -> None:
    """The loud warning when the provider asked for is installed but could not start."""
    if requested[0] == in_use[0]:
        return
    runs_on = ("FALLING BACK TO CPU." if in_use[0] == "CPUExecutionProvider"
               else f"the session runs on {in_use[0]}.")
    message = (f"device {device!r} was requested but onnxruntime could not start {requested[0]} "
               f"(no device or driver?); {runs_on}")
    if device == "auto":
        log.info("%s", message)  # auto asked for nothing in particular
    else:
        warn_fallback(message, stacklevel=4)


#: exports whose activations are quantized at run time, per tensor (see share_prompt_by_default)
DYNAMIC_QUANT = ("int8",)


def output_names(model_file: Path, out: Any, meta: dict[str, Any]) -> tuple[str, ...]:
    """The columns of the graph's first output: ``("score",)``, or arbiter.json's ``outputs``.

    A graph with more than one column is accepted only when arbiter.json names every column
    (a multi-output head made on purpose); otherwise it is not a reward model.
    """
    width = out.shape[-1] if isinstance(out.shape[-1], int) else 1
    names = meta.get("outputs")
    if width == 1 and not names:
        return ("score",)
    if isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == width:
        return tuple(names)
    if names:
        raise ModelError(f"{model_file}: arbiter.json names {len(names)} outputs, the graph's "
                         f"{out.name} has {width}; re-export the model")
    raise ModelError(f"{model_file}: output {out.name} has {width} labels; a reward "
                     "model has one score (num_labels=1)")


class OnnxScorer(Scorer):
    def __init__(self, path: Path, *, device: str = DEFAULT_DEVICE, threads: int | None = None,
                 max_length: int | None = None, batch_size: int = 16, name: str | None = None) -> None:
        device = check_device(device)  # a typo fails before the model is read
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        meta = read_meta(folder)
        model_file = find_onnx_file(folder)
        encoder = Encoder(TokenizerFiles.from_folder(folder, meta), max_length)
        opts = session_options(threads)
        requested = choose_providers(device)
        self._opts, self._providers = opts, requested
        self._dtype = str(meta["dtype"]) if "dtype" in meta else None
        self.session, int8_weights = open_session(model_file, opts, requested, self._dtype)
        in_use = self.session.get_providers()
        check_started(device, requested, in_use)
        self._inputs = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ModelError(f"{model_file}: graph inputs lack {sorted(missing)}; "
                             "export it with `arbiter export --format onnx`")
        out = self.session.get_outputs()[0]
        #: what each column of the output is: one score, or a multi-output head's names
        #: (arbiter.json "outputs", e.g. the built-in moderation model's); ``score`` reads column 0
        self.output_names: tuple[str, ...] = output_names(model_file, out, meta)
        self._output = out.name
        # the prefix model: opened on first use (plain scoring never needs it)
        prefix_name = meta.get("prefix_model")
        prefix_file = folder / prefix_name if isinstance(prefix_name, str) else None
        self._prefix_file = prefix_file if (prefix_file and prefix_file.is_file()
                                            and encoder.kind == "chat") else None
        # Dynamic int8 picks each activation tensor's scale from everything computed together,
        # so a prompt run alone and its responses run as a batch score differently from full
        # scoring (bench/bon.py: up to 1.9 on SmolLM2-135M, another best candidate). Sharing
        # stays available (shared_prompt=True) but is not the default for such exports. Static
        # int8 (fixed scales, arbiter.json "activation_quant") shares; legacy int8 is dynamic.
        self.share_prompt_by_default = not (str(meta.get("dtype", "fp32")) in DYNAMIC_QUANT
                                            and meta.get("activation_quant", "dynamic") == "dynamic")
        if prefix_file and not self._prefix_file:
            log.info("%s: arbiter.json names %s but it is not there; candidates are scored in full",
                     folder, prefix_name)
        self._prefix: Any = None
        self._prefix_lock = threading.Lock()
        provider = ONNX_PROVIDER_NAMES.get(in_use[0], in_use[0].removesuffix("ExecutionProvider").lower())
        info = ModelInfo(
            name=name or folder.name,
            format="onnx",
            architecture=architecture_of(folder, meta),
            pooling=meta.get("pooling") or (DECODER_POOLING if encoder.kind == "chat" else ENCODER_POOLING),
            max_length=encoder.max_length,
            chat_template=encoder.files.chat_template,
            dtype=str(meta.get("dtype", "fp32")),
            files=folder_files(folder, (".onnx", ".onnx_data", ".json", ".jinja")),
            provider=provider,
            length_correction=float(meta.get("length_correction") or 0.0),
            extra={"threads": threads or 0, "inputs": sorted(self._inputs), "outputs": list(self.output_names),
                   "int8_weights": int8_weights,
                   # how an int8 file was made (exports/onnx.py Int8Settings; absent: min/max or dynamic)
                   "activation_quant": meta.get("activation_quant"), "int8": meta.get("int8"),
                   "kept_float": len(meta.get("kept_float") or []),
                   "prompt_sharing": self._prefix_file is not None,
                   "prompt_sharing_by_default": self._prefix_file is not None and self.share_prompt_by_default},
        )
        super().__init__(info, encoder, batch_size=batch_size, prompt_sharing=self._prefix_file is not None,
                         share_prompt_by_default=self.share_prompt_by_default)

    def _open(self, model_file: Path) -> Any:
        return load_session(model_file, self._opts, self._providers, self._dtype)

    def _feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = (batch.token_type_ids if batch.token_type_ids is not None
                                       else np.zeros_like(batch.input_ids))
        return feeds

    def _forward(self, batch: Batch) -> np.ndarray:
        return self._logits(batch)[:, 0]

    def _logits(self, batch: Batch) -> np.ndarray:
        (logits,) = self.session.run([self._output], self._feeds(batch))
        return np.asarray(logits, dtype=np.float64).reshape(len(batch.lengths), -1)

    def outputs(self, items: Sequence[Item], *, batch_size: int | None = None) -> np.ndarray:
        """Every output of the head per item, ``[len(items), len(output_names)]`` float64.

        For a multi-output head (``score`` gives only column 0). Items too long for the model
        raise InputTooLongError: the caller windows them (app.moderate.scoring), nothing is cut.
        """
        encoded = [self.encode(i) for i in items]
        out = np.zeros((len(encoded), len(self.output_names)), dtype=np.float64)
        for rows in length_batches([len(e.ids) for e in encoded], batch_size or self.batch_size,
                                   self.batch_tokens):
            out[rows] = self._logits(pad_batch([encoded[i] for i in rows], self.encoder.pad_token_id))
        return out

    # ---- prompt sharing (Best-of-N, compare) ----------------------------------------------
    def _prefix_session(self) -> _PrefixModel:
        with self._prefix_lock:
            if self._prefix is None:
                assert self._prefix_file is not None
                self._prefix = _PrefixModel(self._open(self._prefix_file), self._prefix_file)
            return self._prefix

    def _score_tails(self, prompt: Sequence[int], tails: Sequence[Sequence[int]]) -> list[float]:
        """The conversation runs once with an empty past; its key/values are tiled for the tails."""
        return self._prefix_session().score_tails(prompt, tails)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        self._prefix = None


class _PrefixModel:
    """A ``text-generation-with-past`` graph whose logits are the score: ``[batch, seq, 1]``."""

    def __init__(self, session: Any, path: Path) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        need = {"input_ids", "attention_mask"}
        # without position_ids (optimum's Gemma 2 export) positions count on from the past's
        # length, which is P + arange for right-padded tails: what is fed otherwise
        self.positions = "position_ids" in inputs
        if not self.past or need - set(inputs):
            raise ModelError(f"{path}: not a prefix model (inputs {sorted(inputs)}); re-export the folder")
        first = inputs[self.past[0]]
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        self.dtype = _ORT_FLOATS.get(first.type, np.float32)
        outputs = [o.name for o in session.get_outputs()]
        # present.N.key -> past_key_values.N.key
        self.present = {"present." + n.removeprefix("past_key_values."): n for n in self.past}
        missing = set(self.present) - set(outputs)
        if missing or "logits" not in outputs:
            raise ModelError(f"{path}: outputs lack {sorted(missing) or ['logits']}; re-export the folder")
        self.outputs = ["logits", *self.present]

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             past: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if self.positions:
            feeds["position_ids"] = positions
        return self.session.run(self.outputs, feeds)

    def score_tails(self, prompt: Sequence[int], tails: Sequence[Sequence[int]],
                    chunk: int = PREFIX_CHUNK) -> list[float]:
        """Score ``prompt + tail`` for every tail; the prompt runs once."""
        p = len(prompt)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.dtype)
        out = self._run(np.array([prompt], dtype=np.int64), np.ones((1, p), dtype=np.int64),
                        np.arange(p, dtype=np.int64)[None], dict.fromkeys(self.past, empty))
        kv = {self.present[name]: arr for name, arr in zip(self.outputs[1:], out[1:], strict=True)}
        values: list[float] = []
        for start in range(0, len(tails), chunk):
            rows = tails[start:start + chunk]
            n, longest = len(rows), max(len(t) for t in rows)
            ids = np.zeros((n, longest), dtype=np.int64)  # right padding: causal attention
            mask = np.zeros((n, p + longest), dtype=np.int64)  # never lets a real token see it
            mask[:, :p] = 1
            for r, t in enumerate(rows):
                ids[r, :len(t)] = t
                mask[r, p:p + len(t)] = 1
            positions = np.broadcast_to(np.arange(p, p + longest, dtype=np.int64), (n, longest))
            past = {k: np.repeat(v, n, axis=0) for k, v in kv.items()}
            logits = self._run(ids, mask, np.ascontiguousarray(positions), past)[0]
            values += [float(logits[r, len(t) - 1, 0]) for r, t in enumerate(rows)]
        return values
