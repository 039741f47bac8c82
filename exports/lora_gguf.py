"""A LoRA-trained decoder reward model -> a GGUF LoRA adapter over its base GGUF.

The trainer (``lora_rank > 0``, trainer/bt/lora.py) leaves ``lora.safetensors`` beside
the merged checkpoint. When the base was a GGUF file (a registry package's SmolLM2,
say), the reward model needs none of the body's weights again: llama.cpp applies a
LoRA adapter to the base at load time (``llama_adapter_lora_init``). This writes that
adapter, a few MB instead of a second copy of the body:

* ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``: what
  llama.cpp reads; its scale is alpha / rank, as in training;
* for every adapted projection ``W``, tensors ``<gguf name>.lora_a`` (r x in) and
  ``.lora_b`` (out x r), f16 or f32, under the base file's own tensor names. llama.cpp's
  converter stores Llama's q/k rows in another order (its rotary layout); the trainer
  saw the HF order (transformers undoes the permutation when it reads a GGUF), so the
  same permutation is applied to ``lora_b`` here;
* Arbiter's keys as in any Arbiter GGUF (``arbiter.head.weight`` / ``bias``, pad id,
  BOS/EOS, template, max length, length correction) plus the base it needs:
  ``arbiter.base.sha256``, ``arbiter.base.file``, ``arbiter.base.path`` and, when the base is a file of an
  installed distribution, ``arbiter.base.package`` and ``arbiter.base.package_path``,
  so the engine finds it on any machine that installed the same package.

The merged checkpoint (``best/`` itself) is what ONNX (``arbiter export best OUT --format
onnx``) and the edge bundle use: ONNX has no run-time adapters.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np

from engine.errors import ModelError
from engine.files import file_info
from engine.gguf_file import read_model_header
from engine.modelmeta import read_meta

#: GGUF architectures whose adapters are tested exactly against torch (tests/test_lora.py)
ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
FORMAT_VERSION = 1


def _permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's converter's q/k row order for Llama (rotary halves interleaved per head)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """The inverse of :func:`_permute_rows`: llama.cpp's q/k row order back to HF's (for merging)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tensor_name_map(header):
    """gguf-py's HF -> GGUF tensor-name map for the base file's architecture and depth."""
    import gguf

    arch_ids = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(arch_ids[header.architecture], int(header.arch_key("block_count")))


def base_package(base: Path) -> tuple[str, str] | None:
    """(distribution name, path inside it) when ``base`` is a file an installed distribution owns."""
    base = base.resolve()
    for dist in metadata.distributions():
        for f in dist.files or ():
            if f.name == base.name and Path(dist.locate_file(f)).resolve() == base:
                return dist.metadata["Name"], str(f)
    return None


def _gguf_names(header, modules: list[str]) -> dict[str, str]:
    """HF module name -> the base file's tensor name of its weight; refused when one is missing."""
    tmap = tensor_name_map(header)
    out = {}
    for m in modules:
        name = tmap.get_name(f"{m}.weight", try_suffixes=(".weight",))
        if name is None or name not in header.tensors:
            raise ModelError(f"{header.path}: the base has no tensor for {m} (looked for {name}); "
                             "is this the base the adapter was trained on?")
        out[m] = name
    return out


def export_base_gguf(src: Path, out: Path, outtype: str = "f16") -> Path:
    """The body of an HF decoder reward model as a plain LM GGUF (no head): a base for adapters.

    For a LoRA run on an HF-folder base: ``arbiter export BASE OUT --format gguf-base`` once,
    then every adapter trained on that base is a few MB.
    """
    import tempfile

    from exports.gguf import _convert, _stage_decoder
    from exports.onnx import check_source

    src, out = Path(src), Path(out)
    cfg = check_source(src)
    if out.exists():
        raise ModelError(f"{out}: exists; choose a new file name")
    with tempfile.TemporaryDirectory(prefix="arbiter-base-") as tmp:
        body, _, _ = _stage_decoder(src, cfg, Path(tmp))
        return _convert(body, out, outtype)


def export_lora_gguf(run: Path, base: Path, out: Path, *, dtype: str = "f16") -> Path:
    """``run``: a trainer output folder with ``lora.safetensors``; ``base``: the GGUF it was trained on.

    ``dtype``: the LoRA tensors as f16 (half the file; on a quantized base its error is far below
    the base's own) or f32 (exact over an f32 base).
    """
    import gguf
    from safetensors.numpy import load_file

    from exports.gguf import _bos_eos, _versions
    from exports.onnx import source_digest

    run, base, out = Path(run), Path(base), Path(out)
    if dtype not in ("f16", "f32"):
        raise ModelError(f"LoRA tensors are stored as f16 or f32, not {dtype!r}")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    meta = read_meta(run)
    lora = meta.get("lora")
    if not lora:
        raise ModelError(f"{run}: not trained with LoRA (arbiter.json has no 'lora'); export it whole "
                         "with `arbiter export RUN OUT --format gguf`")
    header = read_model_header(base)
    arch = header.architecture
    if arch not in ARCHS:
        raise ModelError(f"{base}: LoRA adapters for {arch} are not supported; supported: {', '.join(ARCHS)}")
    tensors = load_file(str(run / lora["file"]))
    modules = sorted(k.removesuffix(".lora_A") for k in tensors if k.endswith(".lora_A"))
    names = _gguf_names(header, modules)
    head = tensors.get("score.weight")
    if head is None or head.shape[0] != 1:
        raise ModelError(f"{run / lora['file']}: no one-label score.weight; expected a decoder reward model")
    n_embd = int(header.arch_key("embedding_length"))
    if head.shape[1] != n_embd:
        raise ModelError(f"{run}: its head reads {head.shape[1]} values, {base.name} has hidden size {n_embd}; "
                         "this is not the base it was trained on")
    n_head = int(header.arch_key("attention.head_count"))
    n_kv = int(header.arch_key("attention.head_count_kv", n_head))

    V = gguf.GGUFValueType
    writer = gguf.GGUFWriter(str(out), arch=arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(lora["alpha"]))
    base_info = file_info(base)
    add_bos, add_eos = _bos_eos(run)
    from engine.encoding import TokenizerFiles

    files = TokenizerFiles.from_folder(run, meta)
    kvs = {
        "arbiter.format_version": (FORMAT_VERSION, V.UINT32),
        "arbiter.architecture": (f"{meta.get('architecture', arch)} + LoRA r{lora['rank']}", V.STRING),
        "arbiter.pooling": ("last", V.STRING),
        "arbiter.head.weight": ([float(x) for x in head.reshape(-1)], V.ARRAY),
        "arbiter.head.bias": (float(tensors["score.bias"].reshape(-1)[0]) if "score.bias" in tensors else 0.0,
                              V.FLOAT32),
        "arbiter.pad_token_id": (int(meta["pad_token_id"]), V.INT32),
        "arbiter.add_bos": (add_bos, V.BOOL),
        "arbiter.add_eos": (add_eos, V.BOOL),
        "arbiter.max_length": (int(files.max_length), V.UINT32),
        "arbiter.source_sha256": (source_digest(run), V.STRING),
        "arbiter.versions": (json.dumps(_versions()), V.STRING),
        "arbiter.lora.rank": (int(lora["rank"]), V.UINT32),
        "arbiter.base.sha256": (base_info.sha256, V.STRING),
        "arbiter.base.file": (base.name, V.STRING),
        "arbiter.base.path": (str(base.resolve()), V.STRING),
    }
    if files.chat_template:
        kvs["tokenizer.chat_template"] = (files.chat_template, V.STRING)
    if float(meta.get("length_correction") or 0.0):
        kvs["arbiter.length_correction"] = (float(meta["length_correction"]), V.FLOAT32)
    owner = base_package(base)
    if owner:
        kvs["arbiter.base.package"] = (owner[0], V.STRING)
        kvs["arbiter.base.package_path"] = (owner[1], V.STRING)
    for key, (value, vtype) in kvs.items():
        writer.add_key_value(key, value, vtype, sub_type=V.FLOAT32 if vtype == V.ARRAY else None)
    for m in modules:
        a = tensors[f"{m}.lora_A"].astype(np.float32)
        b = tensors[f"{m}.lora_B"].astype(np.float32)
        if arch == "llama" and m.endswith("q_proj"):
            b = _permute_rows(b, n_head, n_head)
        elif arch == "llama" and m.endswith("k_proj"):
            b = _permute_rows(b, n_head, n_kv)
        writer.add_tensor(f"{names[m]}.lora_a", np.ascontiguousarray(a, dtype=np_dtype))
        writer.add_tensor(f"{names[m]}.lora_b", np.ascontiguousarray(b, dtype=np_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
