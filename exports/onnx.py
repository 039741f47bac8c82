"""HF sequence classifier -> ONNX (fp32, or static int8 with the head kept in float).

``optimum`` does the graph export (task ``text-classification``), which traces
Hugging Face's own last-non-pad-token logic into the graph, so left and right
padding both give the reference score. Quantization is onnxruntime's static QDQ int8:
per-channel int8 weights, and one fixed uint8 scale per activation tensor, calibrated
(min/max unless :class:`Int8Settings` says otherwise) on the probe set plus the caller's
real items, each run alone so padding never enters the ranges. Fixed scales make a
score independent of the batch it runs in and of the padding (dynamic int8, what exports before ``activation_quant`` was recorded
used, takes each scale over the whole batch, padding included: one row's score moved
with its neighbours). Only matmuls with a weight are quantized; their outputs, the
attention's activation x activation matmuls, the reward head and the BERT pooler stay
float, because the head's precision is the score's precision.

The output folder holds ``model.onnx`` (plus ``model.onnx_data`` above 2 GB), the
tokenizer files, ``config.json`` and ``arbiter.json``. For decoder reward models it also
holds ``model_with_past.onnx``, the prefix model used to score Best-of-N candidates
with the conversation computed once (docs/runtimes.md §4.4): the same body exported
as a ``*ForCausalLM`` with past key/values (task ``text-generation-with-past``) whose
``lm_head`` is the score head, so ``logits`` is ``[batch, seq, 1]``, one reward per
token, and no vocabulary-sized work is done. The text-classification graph cannot
share a prefix: it has no key/value inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ModelError
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, read_config, read_meta, write_meta

if TYPE_CHECKING:
    from engine.types import Item

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.txt", "merges.txt", "vocab.json")
QUANTS = ("int8",)
#: how int8 activations are quantized, recorded in arbiter.json as ``activation_quant``
#: (an int8 export without the key is a legacy dynamic one)
STATIC, DYNAMIC = "static", "dynamic"
#: calibration batches whose activations onnxruntime keeps before folding them into ranges.
#: None: all of them. onnxruntime 1.32's MinMaxCalibrater *drops* each full chunk of
#: ``CalibMaxIntermediateOutputs`` items without folding it into the ranges (calibrate.py,
#: ``collect_data``: clear_collected_data, no compute_data), so with 16 the ranges came from
#: the last ``n % 16`` items only, and ``n % 16 == 0`` failed ("No data is collected"). The
#: MinMax graph keeps only each tensor's min and max per item, so holding all is small.
CALIB_FLUSH: int | None = None
# node-name fragments of the layers that make the score: kept in float when quantizing
HEAD_NODES = ("/score/", "/classifier/", "/pooler/")
PREFIX_MODEL = "model_with_past.onnx"
# sequence classifiers whose causal-LM twin optimum exports with past key/values
# (the decoders of exports/gguf.py's map that optimum-onnx 0.1.0 registers; Gemma 3's
# text model has no text-classification export there, so it never gets this far)
PREFIX_ARCHS = {
    "Qwen3ForSequenceClassification": "Qwen3ForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "MistralForSequenceClassification": "MistralForCausalLM",
    "GemmaForSequenceClassification": "GemmaForCausalLM",
    "Gemma2ForSequenceClassification": "Gemma2ForCausalLM",
}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("arbiter", "optimum", "optimum-onnx", "onnx", "onnxruntime", "transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def source_digest(src: Path) -> str:
    """sha256 over the checkpoint's weight files (sorted by name), to tie an export to its source.

    Each file's hash comes from the engine's cache (path, size, mtime), so asking again (the
    default embedder's folder is found by it on every use) does not reread ~90 MB of weights."""
    import hashlib

    from engine.files import file_info

    h = hashlib.sha256()
    for p in sorted(Path(src).glob("*.safetensors")):
        h.update(p.name.encode() + b"\0" + file_info(p).sha256.encode())
    return h.hexdigest()


def check_source(src: Path) -> dict:
    src = Path(src)
    cfg = read_config(src)
    if not cfg:
        raise ModelError(f"{src}: no config.json; expected a Hugging Face model folder")
    if not any(src.glob("*.safetensors")):
        raise ModelError(f"{src}: no .safetensors weights (pickled weights are never loaded)")
    if not (src / "tokenizer.json").is_file():
        raise ModelError(f"{src}: no tokenizer.json; save the fast tokenizer next to the model")
    archs = cfg.get("architectures") or []
    if not archs or not archs[0].endswith("ForSequenceClassification"):
        raise ModelError(f"{src}: architecture {archs} is not a *ForSequenceClassification reward model")
    labels = cfg.get("num_labels", len(cfg.get("id2label", {})) or 1)
    outputs = read_meta(src).get("outputs")  # a multi-output head made on purpose names each output
    if labels != 1 and not (isinstance(outputs, list) and len(outputs) == labels):
        raise ModelError(f"{src}: {labels} labels; a Bradley-Terry reward model has one (a "
                         "multi-output head names its outputs in arbiter.json \"outputs\")")
    return cfg


def _staged_source(src: Path, cfg: dict, work: Path) -> Path:
    """The source itself, or a copy whose config names a pad token (decoders need one to batch)."""
    if cfg.get("pad_token_id") is not None or cfg.get("model_type") == "bert":
        return src
    from engine.encoding import Encoder, TokenizerFiles

    pad = Encoder(TokenizerFiles.from_folder(src)).pad_token_id
    staged = work / "src"
    staged.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (staged / p.name).symlink_to(p.resolve())
    (staged / "config.json").unlink()
    (staged / "config.json").write_text(json.dumps({**cfg, "pad_token_id": pad}, indent=2))
    return staged


#: how static activation ranges are taken from the calibration items
CALIBRATION_METHODS = ("minmax", "percentile")


@dataclass(frozen=True)
class Int8Settings:
    """How static int8 is made, recorded in arbiter.json as ``int8``.

    ``method``: ``minmax`` takes each activation's full range over the calibration items;
    ``percentile`` cuts (100 - ``percentile``) / 2 % of the values off each end (onnxruntime's
    histogram), trading the rare outlier for finer steps everywhere else.
    ``keep_float``: regular expressions; a weighted matmul whose node name matches one
    stays float, beside the score head (``bench/int8_calibration.py`` measures which
    layers carry the error).
    ``smooth``: SmoothQuant's alpha (``exports/smoothquant.py``), 0 for off: each matmul
    input's outlier channels are divided down and their weight rows multiplied up first;
    ``smooth_skip``: regular expressions of matmuls left unsmoothed (still int8).
    """

    method: str = "minmax"
    percentile: float = 99.999
    keep_float: tuple[str, ...] = ()
    smooth: float = 0.0
    smooth_skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ModelError(f"unknown int8 calibration {self.method!r}; choose {' or '.join(CALIBRATION_METHODS)}")
        if not 0.0 <= self.smooth < 1.0:
            raise ModelError(f"int8 smooth (SmoothQuant alpha) {self.smooth} is outside [0, 1)")
        if self.smooth_skip and not self.smooth:
            raise ModelError("int8 smooth_skip names matmuls to leave unsmoothed, but smoothing is off (smooth 0)")
        if not 50.0 < self.percentile <= 100.0:
            raise ModelError(f"int8 calibration percentile {self.percentile} is outside (50, 100]")
        for pattern in (*self.keep_float, *self.smooth_skip):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ModelError(f"int8 layer pattern {pattern!r} is not a regular expression ({e})") from e

    def to_meta(self) -> dict:
        return {**asdict(self), "keep_float": list(self.keep_float), "smooth_skip": list(self.smooth_skip)}


def quantize_int8(src_model: Path, dst_model: Path, head_nodes: tuple[str, ...] = HEAD_NODES,
                  calibration: Sequence[dict[str, np.ndarray]] | None = None,
                  settings: Int8Settings = Int8Settings()) -> list[str]:
    """int8 with per-channel weights; returns the names of the nodes kept in float.

    ``calibration``: graph feeds (one item each) for static activation scales; ``None``
    gives onnxruntime's dynamic int8 (per-batch scales: kept for comparison benchmarks).
    ``head_nodes``: name fragments of the layers that make the score (the prefix model's
    score head is its ``/lm_head/``); ``settings.keep_float`` adds layers by pattern.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src_model), load_external_data=False).graph
    patterns = [re.compile(p) for p in settings.keep_float]
    keep = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and (any(frag in n.name for frag in head_nodes) or any(p.search(n.name) for p in patterns))]
    if calibration is None:
        quantize_dynamic(str(src_model), str(dst_model), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=keep, use_external_data_format=False)
        return keep
    _quantize_static(src_model, dst_model, graph, keep, calibration, settings)
    return keep


def _quantize_static(src_model: Path, dst_model: Path, graph, keep: list[str],
                     calibration: Sequence[dict[str, np.ndarray]], settings: Int8Settings) -> None:
    """Static QDQ: fixed activation ranges from ``calibration``, matmul outputs left float.

    Leaving the outputs float lets onnxruntime fuse each quantized matmul into
    ``MatMulIntegerToFloat`` (one rounding per input, none on the output; quantizing the
    outputs too cost accuracy and speed on MiniLM). Embedding tables (``Gather``) are
    stored int8 and dequantized as read, as dynamic int8 stores them: they are most of a
    small model's bytes.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise ModelError(f"{src_model}: static int8 needs calibration items; none could be encoded")
    weights = {i.name for i in graph.initializer}
    # activation x activation matmuls (attention scores, attention x values) have no weight
    # to quantize ahead of time: they stay float
    no_weight = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                 and not any(i in weights for i in n.input)]

    class Feeds(CalibrationDataReader):
        """The items in order; ``set_range`` lets onnxruntime read them a slice at a time."""

        def __init__(self) -> None:
            self._it = iter(calibration)

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(calibration[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    if settings.method == "percentile":
        method = CalibrationMethod.Percentile
        # the histogram calibrater holds every activation of the items it reads at once (GBs
        # for a few hundred items), and stacks them, which items of different lengths cannot
        # do: it reads one item at a time, its histograms merging between them. Each side of
        # the range is cut at (100 - percentile) / 2 %, so a one-sided activation (after
        # GELU) keeps its own lower end.
        calib = {"CalibPercentile": settings.percentile, "CalibTensorRangeSymmetric": False,
                 "CalibStridedMinMax": 1}
    else:
        method, calib = CalibrationMethod.MinMax, {}
    # onnxruntime's histogram calibrater prints its settings to stdout: kept off a CLI's output
    quiet = contextlib.redirect_stdout(io.StringIO()) if settings.method == "percentile" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="arbiter-calib-") as tmp, quiet:  # tmp: onnxruntime's augmented graph
        if settings.smooth:
            from exports.smoothquant import smooth_model

            smoothed = Path(tmp) / "smoothed.onnx"
            unsmoothed = [n.name for n in graph.node if any(re.search(p, n.name) for p in settings.smooth_skip)]
            smooth_model(src_model, smoothed, calibration, settings.smooth, skip=[*keep, *no_weight, *unsmoothed])
            src_model = smoothed
        quantize_static(str(src_model), str(dst_model), Feeds(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Gather"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[*keep, *no_weight], use_external_data_format=False,
                        calibrate_method=method,
                        calibration_cache_path=Path(tmp) / "augmented.onnx",
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Gather"], **calib,
                                       **({"CalibMaxIntermediateOutputs": CALIB_FLUSH} if CALIB_FLUSH else {})})


def calibration_items(extra: Iterable[Item] = ()) -> list[Item]:
    """What static int8 is calibrated on: the probe set, then the caller's real items."""
    from exports.probes import probe_items

    return [*probe_items()[0], *extra]


def _encodable(rm: Any, items: Iterable[Item]) -> list[Any]:
    """The items' encodings; an item too long for the model is skipped (it cannot be scored either)."""
    from engine.errors import InputError, InputTooLongError

    out = []
    for item in items:
        try:
            out.append(rm.encode(item))
        except (InputError, InputTooLongError):
            continue
    return out


def _classifier_feeds(folder: Path, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
    """Feeds of the fp32 classifier in ``folder``, one item each (no padding), as the engine encodes."""
    import engine
    from engine.scorer import pad_batch

    with engine.load(folder, format="onnx") as rm:
        return [rm._feeds(pad_batch([e], rm.encoder.pad_token_id)) for e in _encodable(rm, items)]


def _prefix_feeds(folder: Path, items: Sequence[Item], entry: dict) -> list[dict[str, np.ndarray]]:
    """Feeds of the fp32 prefix model: each item's full ids with an empty past.

    Scores come from the same per-token activations whether the prompt runs alone or with
    its response, so ranges from full items cover prompt-shared scoring too.
    """
    import engine

    empty = np.zeros((1, entry["num_kv_heads"], 0, entry["head_dim"]), dtype=np.float32)
    feeds = []
    with engine.load(folder, format="onnx") as rm:
        for e in _encodable(rm, items):
            n = len(e.ids)
            f = {"input_ids": np.array([e.ids], dtype=np.int64), "attention_mask": np.ones((1, n), dtype=np.int64),
                 **dict.fromkeys(entry["past_inputs"], empty)}
            if "position_ids" in entry["inputs"]:
                f["position_ids"] = np.arange(n, dtype=np.int64)[None]
            feeds.append(f)
    return feeds


def _score_lm(src: Path, cfg: dict):
    """The seq classifier as a ``*ForCausalLM`` whose ``lm_head`` is the score head.

    The body module is the classifier's own (no copy; the causal shell is built on the
    meta device, so a large model is not allocated twice); ``tie_word_embeddings`` is
    off so the one-row head is not tied to the embedding.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    seq = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32)
    seq.eval()
    lm_cfg = {k: v for k, v in seq.config.to_dict().items()
              if k not in ("id2label", "label2id", "num_labels", "problem_type")}
    lm_cfg["architectures"] = [PREFIX_ARCHS[cfg["architectures"][0]]]
    lm_cfg["tie_word_embeddings"] = False
    if lm_cfg.get("final_logit_softcapping") is not None:  # Gemma 2 squashes LM logits; a score is raw
        lm_cfg["final_logit_softcapping"] = None
    config = AutoConfig.for_model(**lm_cfg)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    prefix = lm.base_model_prefix
    setattr(lm, prefix, getattr(seq, seq.base_model_prefix))
    head = seq.score
    lm.lm_head = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None)
    with torch.no_grad():
        lm.lm_head.weight.copy_(head.weight)
        if head.bias is not None:
            lm.lm_head.bias.copy_(head.bias)
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ModelError(f"{src}: cannot build the prefix model; tensors without weights: {left[:5]}")
    return lm.eval()


def _export_prefix(src: Path, cfg: dict, work: Path, final: Path, opset: int) -> dict:
    """Write ``final/model_with_past.onnx`` (fp32); returns its arbiter.json entry."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model

    raw = work / "prefix"
    onnx_export_from_model(_score_lm(src, cfg), str(raw), task="text-generation-with-past", opset=opset,
                           do_validation=False)
    graph = onnx.load(str(raw / "model.onnx"), load_external_data=False).graph
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.output)}
    if shapes.get("logits", [None])[-1] != 1:
        raise ModelError(f"{src}: the prefix model's logits are {shapes.get('logits')}, not [batch, seq, 1]")
    past = sorted((n for n in shapes if n.startswith("past_key_values.")),
                  key=lambda n: (int(n.split(".")[1]), n))
    if not past:
        raise ModelError(f"{src}: the text-generation-with-past export has no past key/value inputs")
    dst = final / PREFIX_MODEL
    if (raw / "model.onnx_data").exists():  # above 2 GB: the data file's name is inside the graph
        model = onnx.load(str(raw / "model.onnx"))
        onnx.save_model(model, str(dst), save_as_external_data=True, location=f"{PREFIX_MODEL}_data")
    else:
        shutil.move(str(raw / "model.onnx"), dst)
    _, kv_heads, _, head_dim = shapes[past[0]]
    entry = {
        "file": PREFIX_MODEL,
        "num_layers": len(past) // 2,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "past_inputs": past,
        "inputs": [v.name for v in graph.input],
        "outputs": [v.name for v in graph.output],
        "kept_float": [],
    }
    return entry


def export_onnx(src: Path, out: Path, *, quant: str | None = None, opset: int = 18,
                prefix: bool | None = None, calibration: Iterable[Item] = (),
                activations: str = STATIC, max_length: int | None = None,
                int8: Int8Settings = Int8Settings()) -> Path:
    """Export ``src`` (HF folder) to the ONNX folder ``out``; returns ``out``.

    ``max_length``: the longest input the export reads, in tokens. ``None`` (the default) keeps
    what the source was trained at (its ``arbiter.json``), else its positions, so ONNX cuts
    where torch and GGUF cut; a number reads further (up to the positions), on purpose.

    int8 only: ``calibration`` adds real items to the probe set its activation ranges are
    taken from (the default model's recipe passes training pairs); ``activations`` is
    ``static`` (fixed ranges: batch-invariant, the default) or ``dynamic`` (onnxruntime's
    per-batch ranges, kept to compare against); ``int8`` says how static ranges are taken
    and which layers stay float (:class:`Int8Settings`).

    ``prefix``: also write the prefix model (``model_with_past.onnx``) that lets
    ``rank``/``compare`` compute the conversation once. ``None`` (the default) means
    for every decoder that has one; a failure there is logged and the folder still
    scores in full, since the prefix model only makes Best-of-N faster. ``True`` makes
    that failure an error; cross-encoders never have one (they attend both ways).
    """
    from optimum.exporters.onnx import main_export

    src, out = Path(src), Path(out)
    cfg = check_source(src)
    if quant not in (None, "fp32", *QUANTS):
        raise ModelError(f"unknown ONNX quantization {quant!r}; choose fp32 or {', '.join(QUANTS)}")
    if activations not in (STATIC, DYNAMIC):
        raise ModelError(f"unknown int8 activation quantization {activations!r}; choose {STATIC} or {DYNAMIC}")
    arch = (cfg.get("architectures") or ["unknown"])[0]
    if prefix and arch not in PREFIX_ARCHS:
        raise ModelError(f"{src}: no prefix model for {arch}; it is made for "
                         f"{', '.join(sorted(PREFIX_ARCHS))}")
    want_prefix = prefix is not False and arch in PREFIX_ARCHS
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="arbiter-export-") as tmp:
        work = Path(tmp)
        staged = _staged_source(src, cfg, work)
        raw = work / "raw"
        main_export(str(staged), output=str(raw), task="text-classification", opset=opset,
                    do_validation=False, no_post_process=False, library_name="transformers")
        fp32 = work / "fp32"
        fp32.mkdir()
        for p in raw.glob("model.onnx*"):
            shutil.move(str(p), fp32 / p.name)
        prefix_entry: dict | None = None
        if want_prefix:
            try:
                prefix_entry = _export_prefix(staged, cfg, work, fp32, opset)
            except Exception as e:  # optimum/torch export errors have no common base class
                if prefix:
                    raise ModelError(f"{src}: the prefix model could not be exported ({e})") from e
                log.warning("%s: no prefix model (Best-of-N will score in full): %s", src, e)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, fp32 / name)
        final_cfg = read_config(staged)
        (fp32 / "config.json").write_text(json.dumps(final_cfg, indent=2))
        from engine.encoding import TokenizerFiles

        src_meta = read_meta(src)
        # the source's trained max_length bounds the export too: torch and GGUF cut there, so
        # ONNX must, or it scores past the length the model was trained on
        tf = TokenizerFiles.from_folder(fp32, src_meta if max_length is None else {**src_meta, "max_length": None})
        if max_length is not None:
            if not 0 < max_length <= tf.max_length:
                raise ModelError(f"{src}: max_length {max_length} is outside 1..{tf.max_length} "
                                 f"({tf.max_length_source})")
            tf = replace(tf, max_length=max_length, max_length_source="export_onnx(max_length=...)")
        is_decoder = tf.chat_template is not None
        meta = {
            "format": "onnx",
            "architecture": (cfg.get("architectures") or ["unknown"])[0],
            "pooling": DECODER_POOLING if is_decoder else ENCODER_POOLING,
            "chat_template": tf.chat_template,
            "max_length": tf.max_length,
            "pad_token_id": final_cfg.get("pad_token_id"),
            # what the model was trained with: a cross-encoder trained on all-zero segment ids
            # must be fed zeros here too (it was written as "segment" always: a parity bug)
            "token_types": src_meta.get("token_types", "segment"),
            "length_correction": float(src_meta.get("length_correction") or 0.0),
            "outputs": src_meta.get("outputs"),  # a multi-output head's names (None: one score)
            "dtype": "fp32",
            "kept_float": [],
            "prefix_model": prefix_entry["file"] if prefix_entry else None,
            "prefix": prefix_entry,
            "opset": opset,
            "source": str(src.resolve()),
            "source_sha256": source_digest(src),
            "versions": _versions(),
        }
        write_meta(fp32, meta)
        final = fp32 if quant != "int8" else _int8_folder(fp32, work / "int8", meta, calibration, activations, int8)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(final), out)
    return out


def _int8_folder(fp32: Path, dst: Path, meta: dict, calibration: Iterable[Item], activations: str,
                 settings: Int8Settings = Int8Settings()) -> Path:
    """The int8 twin of the complete fp32 folder ``fp32`` (calibrated by running it)."""
    items = calibration_items(calibration) if activations == STATIC else []
    shutil.copytree(fp32, dst, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
    feeds = _classifier_feeds(fp32, items) if activations == STATIC else None
    kept = quantize_int8(fp32 / "model.onnx", dst / "model.onnx", calibration=feeds, settings=settings)
    prefix = meta.get("prefix")
    if prefix:
        pfeeds = _prefix_feeds(fp32, items, prefix) if activations == STATIC else None
        prefix = {**prefix, "kept_float": quantize_int8(fp32 / PREFIX_MODEL, dst / PREFIX_MODEL,
                                                        head_nodes=(*HEAD_NODES, "/lm_head/"),
                                                        calibration=pfeeds, settings=settings)}
    write_meta(dst, {**meta, "dtype": "int8", "activation_quant": activations, "kept_float": kept,
                     "prefix": prefix, "calibration_items": len(items),
                     **({"int8": settings.to_meta()} if activations == STATIC else {})})
    return dst


def int8_from_fp32(fp32: Path, dst: Path, *, calibration: Iterable[Item] = (), prefix: bool = True,
                   int8: Int8Settings = Int8Settings()) -> Path:
    """The static int8 twin of the fp32 export folder ``fp32``, written to the new folder ``dst``.

    The same int8 that ``export_onnx(..., quant="int8")`` makes, for a folder that was
    exported as fp32 earlier (the edge export makes int8 from it). ``prefix=False`` leaves
    the prefix model out (an edge folder ships only the classifier graph).
    """
    fp32, dst = Path(fp32), Path(dst)
    meta = read_meta(fp32)
    if str(meta.get("dtype", "fp32")) != "fp32":
        raise ModelError(f"{fp32}: is a {meta.get('dtype')} export; int8 is made from an fp32 one")
    if not prefix:
        meta = {**meta, "prefix_model": None, "prefix": None}
    if dst.exists() and any(dst.iterdir()):
        raise ModelError(f"{dst}: exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="arbiter-int8-") as tmp:
        built = _int8_folder(fp32, Path(tmp) / "int8", meta, calibration, STATIC, int8)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.rmdir()
        shutil.move(str(built), dst)
    return dst


def fp16_storage_from_fp32(fp32: Path, dst: Path, *, min_elements: int = 1024) -> Path:
    """The fp32 export folder ``fp32`` with its large weights *stored* as float16: half the bytes.

    Each float32 initializer of at least ``min_elements`` values becomes a float16 initializer
    and a ``Cast`` back to float32 in front of the graph. onnxruntime folds those casts when it
    opens the session, so the model runs in float32 at float32's speed; only the weights are
    rounded (to 11 significant bits), which moves scores as little as a GGUF f16 copy does.
    Why not int8 here: a classifier head that reads small differences of one hidden state (the
    built-in moderation model) amplifies int8's per-tensor rounding into logit shifts of whole
    units; float16 rounding stays in the hundredths (measured in its build.json).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fp32, dst = Path(fp32), Path(dst)
    meta = read_meta(fp32)
    if str(meta.get("dtype", "fp32")) != "fp32":
        raise ModelError(f"{fp32}: is a {meta.get('dtype')} export; fp16 storage is made from an fp32 one")
    if dst.exists() and any(dst.iterdir()):
        raise ModelError(f"{dst}: exists and is not empty; choose a new folder")
    model = onnx.load(str(fp32 / "model.onnx"))
    graph = model.graph
    casts, stored = [], 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
        stored += 1
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    shutil.copytree(fp32, dst, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"), dirs_exist_ok=True)
    onnx.save(model, str(dst / "model.onnx"))
    write_meta(dst, {**meta, "dtype": "fp32", "weights_stored_as": "float16", "fp16_initializers": stored})
    return dst
