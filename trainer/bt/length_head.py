"""A second head that soaks up "longer wins", so the shipped head does not learn it.

Length-balanced sampling removes length as a *label* signal, but a small model still
finds length the cheapest feature that separates answers, and LLM-judged data rewards
it. The disentangled reward of ODIN (Chen et al., 2024) gives length a place of its
own: the model is trained with a two-output head,

* output 0, the **quality** reward: the one that is exported and scored with;
* output 1, the **length** reward: thrown away when the model is saved.

Bradley-Terry is fit to their *sum*, so together they may explain the labels, length
included. Two terms decide which part explains what (``cfg.length_head`` weighs the
first, ``cfg.length_ortho`` the second):

* correlation: ``|pearson(quality, L)| - pearson(length, L)`` over the micro-batch's
  responses, L = log(1 + response characters): length goes to output 1, not output 0;
* orthogonality: ``|cos(w_quality, w_length)|`` between the two rows of the final
  linear layer, so the two outputs read different directions of the pooled state.

What is saved is an ordinary one-label reward model (row 0 of the head): every
runtime and exporter reads it unchanged.

Measured on the default model's data (2 CPU cores, MiniLM, same data and seed as the shipped
build): with ODIN's correlation terms the body learned slowly. A correlation's gradient
scales with 1/std of the rewards, which is tiny at the start, so the terms swamp
Bradley-Terry's gradient and, after clipping, shrink it (plain gold accuracy 0.47-0.55
through step 100, against 0.54-0.68 without). The length penalty (``length_penalty.py``)
avoids that and needs no second output. The default model uses neither: it ships with
length control at scoring time instead (``length_control.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import InputError

QUALITY, LENGTH = 0, 1  # the head's outputs
EPS = 1e-6


def final_linear(model: Any) -> tuple[str, torch.nn.Linear]:
    """(dotted name, module) of the layer whose rows are the reward outputs."""
    inner = model.module if hasattr(model, "module") else model  # DDP / accelerate wrappers
    for name in ("score", "classifier", "classifier.out_proj"):
        mod: Any = inner
        for part in name.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, torch.nn.Linear):
            return name, mod
    raise InputError(f"length_head needs a final linear head (score, classifier or classifier.out_proj); "
                     f"{type(inner).__name__} has none", field="length_head")


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors; 0 where either does not vary."""
    x = x - x.mean()
    y = y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm() + EPS)


def length_signal(response_chars: torch.Tensor) -> torch.Tensor:
    """log(1 + characters): answers run from a word to pages; the log keeps a few long ones from dominating."""
    return torch.log1p(response_chars.float())


def disentangle_loss(quality: torch.Tensor, length: torch.Tensor, response_chars: torch.Tensor) -> torch.Tensor:
    """|corr(quality, L)| - corr(length, L): in [-1, 1], lowest when length lives in output 1 alone."""
    lens = length_signal(response_chars).to(quality)
    return pearson(quality, lens).abs() - pearson(length, lens)


def orthogonality_loss(model: Any) -> torch.Tensor:
    """|cos| between the quality and the length rows of the final linear layer."""
    w = final_linear(model)[1].weight
    return torch.nn.functional.cosine_similarity(w[QUALITY].float(), w[LENGTH].float(), dim=0).abs()


def quality_only(state_dict: dict[str, Any], model: Any) -> dict[str, Any]:
    """The state dict with the head cut to its quality row: a one-label reward model."""
    name = final_linear(model)[0]
    out = dict(state_dict)
    for suffix in ("weight", "bias"):
        key = f"{name}.{suffix}"
        if key in out and out[key] is not None:
            out[key] = out[key][QUALITY:QUALITY + 1]
    return out
