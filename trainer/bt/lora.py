"""LoRA for reward models: low-rank updates on a frozen body, a fully trained score head.

Why: a decoder reward model can then ship as its adapter (a few MB) applied over a GGUF
that a registry package already installs (``exports/lora_gguf.py``; llama.cpp applies
LoRA at run time), instead of a second copy of the whole body. Training also gets
cheaper: the body's weights need no gradients and no optimizer moments.

Each targeted ``nn.Linear`` ``W`` (out x in) becomes ``W x + (alpha / r) * B (A x)``
with ``A`` (r x in, small random) and ``B`` (out x r, zeros): the model starts exactly
at its base. The layout (``lora_A`` r x in, ``lora_B`` out x r, scale alpha / r) is
the usual one, and the one llama.cpp's adapter files expect.

Saved next to the merged weights (``save_reward_model`` writes ``W + scale B A``, an
ordinary checkpoint every backend and exporter reads): ``lora.safetensors`` with
``<module>.lora_A`` / ``<module>.lora_B`` for every target, and ``score.weight`` (and
``score.bias``); ``arbiter.json`` records rank, alpha and targets under ``lora``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError

LORA_FILE = "lora.safetensors"


class LoraLinear(nn.Module):
    """``base(x) + scale * (x A^T) B^T``; the base stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, w.shape[1], dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> list[str]:
    """Freeze ``model``, wrap every ``nn.Linear`` whose name ends in a target; returns their names.

    The score head (``score`` for decoders, ``classifier`` for BERT) stays trainable.
    """
    if rank < 1:
        raise ModelError(f"a LoRA rank is a positive number of dimensions, not {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    if not names:
        raise ModelError(f"no linear layer named {', '.join(targets)} in {type(model).__name__}: "
                         "nothing for LoRA to adapt (set lora_targets)")
    for name in names:
        parent, child = _parent(model, name)
        setattr(parent, child, LoraLinear(getattr(parent, child), rank, alpha))
    for head in ("score", "classifier"):
        module = getattr(model, head, None)
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)
    return names


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, child


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Module name (as in the base model, e.g. ``model.layers.0.self_attn.q_proj``) -> its LoRA wrapper."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base model's own keys, each adapted weight replaced by ``W + scale B A``.

    ``state`` is the wrapped model's state dict (accelerate's gathered copy); taken from
    ``model`` when not given.
    """
    state = dict(state if state is not None else model.state_dict())
    for name, m in lora_modules(model).items():
        a, b, w = state.pop(f"{name}.lora_A"), state.pop(f"{name}.lora_B"), state.pop(f"{name}.base.weight")
        state[f"{name}.weight"] = w + (b.to(w.dtype) @ a.to(w.dtype)) * m.scale
        if f"{name}.base.bias" in state:
            state[f"{name}.bias"] = state.pop(f"{name}.base.bias")
    return state


def adapter_tensors(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """What the adapter file holds: every ``lora_A`` / ``lora_B`` and the score head, float32."""
    state = state if state is not None else model.state_dict()
    keep = {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))
            or k.split(".")[0] in ("score", "classifier")}
    return {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in keep.items()}


def save_adapter(model: nn.Module, out: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write ``tensors`` (from :func:`adapter_tensors`) as ``out/lora.safetensors``; returns the
    ``lora`` record for ``arbiter.json``."""
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise ModelError("this model has no LoRA layers to save")
    first = next(iter(mods.values()))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out) / LORA_FILE),
              metadata={"format": "pt"})
    return {"rank": first.rank, "alpha": first.alpha, "file": LORA_FILE,
            "targets": sorted({n.split(".")[-1] for n in mods}), "modules": len(mods)}
