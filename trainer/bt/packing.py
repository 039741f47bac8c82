"""Padding-free batches: several sequences share one row, and no token is padding.

A padded batch costs ``rows x longest`` tokens in every linear layer; with real,
mixed-length preference data (AlpacaEval answers run from 5 to 500 tokens) a large
share of that is padding even after length grouping. Packing puts the micro-batch's
sequences end to end into rows of ``capacity`` tokens (first fit, longest first) and
keeps them apart with the attention pattern and the position ids:

* decoders (Qwen3, Llama, Gemma, SmolLM2): ``attention_mask=None`` and position ids
  that restart at 0 for each sequence; transformers reads the restarts as packed
  sequences and builds a block-causal mask (the padding-free path of
  ``DataCollatorWithFlattening``). The trainer loads bases with transformers' default
  attention; flash-attention 2's variable-length kernel is not wired in.
  The reward is the score head on each sequence's *last* token.
* BERT-style cross-encoders: a block-diagonal ``[rows, capacity, capacity]`` mask
  (tokens attend only inside their own sequence) and restarting position ids; the
  reward is pooler + classifier on each sequence's *first* token ([CLS]).

Rewards equal the padded batch's (tested to float32 noise). Attention still runs over
the whole row, so on a CPU the gain is the padding the linear layers no longer see;
``bench/packing.py`` measures both side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.errors import InputError
from trainer.bt.batches import response_chars


@dataclass
class PackedBatch:
    """Chosen sequences then rejected ones, packed into rows; ``pool_*`` say where each is read."""

    input_ids: torch.Tensor  # [rows, capacity]
    position_ids: torch.Tensor  # [rows, capacity], restarting at 0 for each sequence
    segments: torch.Tensor  # [rows, capacity]: sequence number + 1, 0 on the row's unused tail
    pool_row: torch.Tensor  # [2 * pairs]: chosen sequences first, as TensorBatch's rows
    pool_col: torch.Tensor  # [2 * pairs]
    margin: torch.Tensor  # [pairs]
    chosen_longer: list[bool | None]
    n_tokens: int  # real tokens (all of them: nothing here is padding but the rows' tails)
    causal: bool
    response_chars: torch.Tensor  # [2 * pairs], chosen first: how long each response is

    @property
    def pairs(self) -> int:
        return self.pool_row.shape[0] // 2

    @property
    def cells(self) -> int:
        """Token slots the model computes (rows x capacity)."""
        return int(self.input_ids.numel())

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        d = {"input_ids": self.input_ids.to(device), "position_ids": self.position_ids.to(device)}
        if self.causal:
            d["use_cache"] = False  # with a cache, transformers ignores the packed position ids
        else:
            seg = self.segments.to(device)
            d["attention_mask"] = (seg[:, :, None] == seg[:, None, :]).long()  # block diagonal
            d["token_type_ids"] = torch.zeros_like(d["input_ids"])
        return d


def pack(indices: list[int], data: Any, pad_id: int, capacity: int, *, causal: bool) -> PackedBatch:
    """Pack the pairs ``indices`` of ``data`` (an :class:`EncodedPairs`) into rows of ``capacity``."""
    seqs = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    capacity = max(capacity, max(len(s) for s in seqs))
    fill: list[int] = []  # tokens used per row
    place: list[tuple[int, int]] = [(0, 0)] * len(seqs)  # (row, offset) per sequence
    for k in sorted(range(len(seqs)), key=lambda k: -len(seqs[k])):  # first fit, longest first
        n = len(seqs[k])
        row = next((r for r, used in enumerate(fill) if used + n <= capacity), None)
        if row is None:
            row = len(fill)
            fill.append(0)
        place[k] = (row, fill[row])
        fill[row] += n
    width = max(fill)  # rows need not be wider than the fullest one
    ids = torch.full((len(fill), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(fill), width), dtype=torch.long)
    seg = torch.zeros((len(fill), width), dtype=torch.long)
    pool_row = torch.empty(len(seqs), dtype=torch.long)
    pool_col = torch.empty(len(seqs), dtype=torch.long)
    for k, s in enumerate(seqs):
        r, o = place[k]
        n = len(s)
        ids[r, o:o + n] = torch.from_numpy(s.astype(np.int64))
        pos[r, o:o + n] = torch.arange(n)
        seg[r, o:o + n] = k + 1
        last = n - 1
        while causal and last > 0 and s[last] == pad_id:  # HF reads the last token that is not padding
            last -= 1
        pool_row[k], pool_col[k] = r, (o + last if causal else o)
    for r, used in enumerate(fill):  # each tail is its own "sequence": positions restart there too
        pos[r, used:] = torch.arange(width - used)
    return PackedBatch(ids, pos, seg, pool_row, pool_col, torch.tensor([data.margin[i] for i in indices]),
                       [data.chosen_longer[i] for i in indices], int(sum(len(s) for s in seqs)), causal,
                       response_chars(indices, data))


def head_of(model: Any) -> tuple[str, Any]:
    """("decoder", score) or ("encoder", (pooler, dropout, classifier)) for a packed forward."""
    inner = model.module if hasattr(model, "module") else model  # DDP / accelerate wrappers
    if hasattr(inner, "score"):
        return "decoder", inner.score
    pooler = getattr(getattr(inner, "base_model", None), "pooler", None)
    if hasattr(inner, "classifier") and pooler is not None:
        return "encoder", (pooler, getattr(inner, "dropout", torch.nn.Identity()), inner.classifier)
    raise InputError(f"packing supports decoders with a score head and BERT-style encoders with a pooler; "
                     f"{type(inner).__name__} has neither", field="packing")


def packed_rewards(model: Any, batch: PackedBatch, device: Any, *, n_outputs: int = 1) -> torch.Tensor:
    """One reward per packed sequence, chosen first: the same order as the padded path.

    ``n_outputs=2`` returns ``[2 * pairs, 2]``: every output of the head (the length head's training).
    """
    kind, head = head_of(model)
    # through the (possibly DDP-wrapped) model, so gradient sync sees the forward
    out = model(**batch.model_inputs(device), output_hidden_states=True)
    hidden = out.hidden_states[-1]  # the body's final (normed) states, [rows, width, H]
    picked = hidden[batch.pool_row.to(device), batch.pool_col.to(device)]  # [2 * pairs, H]
    if kind == "decoder":
        out = head(picked)
    else:
        pooler, dropout, classifier = head
        out = classifier(dropout(pooler.activation(pooler.dense(picked))))
    return out[:, 0] if n_outputs == 1 else out[:, :n_outputs]
