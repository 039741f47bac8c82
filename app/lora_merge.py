"""A GGUF reward adapter merged back into an HF checkpoint: the adapter's way to ONNX and the edge.

ONNX has no run-time adapters, so a user who holds only an adapter (``--format gguf-lora``)
and the package that ships its base gets ONNX this way: the engine finds the base by sha256
(engine/gguf_adapter.py), the trainer dequantizes it (trainer/bt/gguf_base.py, the same
weights the adapter was trained on), each adapted weight becomes ``W + (alpha / r) B A`` (q/k
rows of a Llama put back in HF order), the head comes from ``arbiter.head.weight``, and the
folder is an ordinary reward-model checkpoint that ``exports.onnx`` and ``exports.edge`` read.

Lives in ``app`` because it joins ``trainer`` (dequantization) and ``exports`` (tensor names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ModelError


def merge_adapter(adapter: Path, out: Path) -> Path:
    """Write ``out``: the adapter's base with the LoRA merged in and its head, as an HF reward model."""
    import gguf
    import torch

    from engine.gguf_adapter import read_scorable
    from engine.gguf_file import read_header, reward_head
    from engine.modelmeta import write_meta
    from exports.lora_gguf import tensor_name_map, unpermute_rows
    from trainer.bt import gguf_base

    adapter, out = Path(adapter), Path(out)
    header, found = read_scorable(adapter)
    if found is None:
        raise ModelError(f"{adapter}: not a LoRA adapter; export a reward-model GGUF's source checkpoint instead")
    own = read_header(adapter)
    alpha, arch = float(own.get("adapter.lora.alpha")), header.architecture
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    gguf_base.save_tokenizer(found.base, out)
    model = gguf_base.load_model(found.base, num_labels=1)
    tmap = tensor_name_map(header)
    linear = {tmap.get_name(f"{n}.weight", try_suffixes=(".weight",)): (n, m)
              for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    n_head = int(header.arch_key("attention.head_count"))
    n_kv = int(header.arch_key("attention.head_count_kv", n_head))
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(str(adapter)).tensors}
    with torch.no_grad():
        for name in sorted(k.removesuffix(".lora_a") for k in tensors if k.endswith(".lora_a")):
            if name not in linear:
                raise ModelError(f"{adapter}: {name} is not a linear layer of {type(model).__name__}")
            hf_name, module = linear[name]
            a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]  # (r, in), (out, r)
            if arch == "llama" and hf_name.endswith("q_proj"):
                b = unpermute_rows(b, n_head, n_head)
            elif arch == "llama" and hf_name.endswith("k_proj"):
                b = unpermute_rows(b, n_head, n_kv)
            delta = torch.from_numpy(b.astype(np.float64) @ a.astype(np.float64) * (alpha / a.shape[0]))
            module.weight += delta.to(module.weight.dtype)
        w, bias = reward_head(header)
        model.score.weight.copy_(torch.from_numpy(w.astype(np.float32)).reshape(1, -1))
        if bias and getattr(model.score, "bias", None) is None:
            raise ModelError(f"{adapter}: its head has a bias ({bias}), {type(model).__name__}'s score has none")
    meta = header.metadata
    model.config.pad_token_id = int(meta["arbiter.pad_token_id"])
    model.save_pretrained(out, safe_serialization=True)
    record = {"architecture": type(model).__name__, "pooling": "last", "dtype": "fp32",
              "max_length": int(meta.get("arbiter.max_length") or 0) or None,
              "pad_token_id": int(meta["arbiter.pad_token_id"]),
              "source": f"{adapter.name} merged over {found.base.name}",
              "lora": {"merged_from": str(adapter), "rank": found.rank, "modules": found.modules}}
    if float(meta.get("arbiter.length_correction") or 0.0):
        record["length_correction"] = float(meta["arbiter.length_correction"])
    write_meta(out, {k: v for k, v in record.items() if v is not None})
    return out
