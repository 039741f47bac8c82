"""From preference pairs to padded tensors, the engine's way, in length-grouped batches.

Tokenization is the engine's :class:`Encoder` (so training sees exactly the ids
scoring will). Pairs are encoded once and kept as int32 arrays.

Batches are planned per *global* batch (the pairs of one optimizer step, over all
processes) so that the result does not depend on how many processes share it: a
global batch is sorted by length and cut into ``per_device_batch`` micro-batches;
micro-batch ``j`` goes to process ``j % world``. One process with accumulation 2
and two processes with accumulation 1 therefore run the very same micro-batches.

CPU time is spent on tokens, so padding is waste: with ``length_grouped`` the
epoch's shuffled order is cut into windows of 50 global batches, each window is
sorted by length before being cut into global batches, and the global batches are
shuffled again (the "megabatch" trick of HF's LengthGroupedSampler).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.encoding import Encoder
from engine.errors import InputTooLongError
from engine.types import Item
from trainer.bt.config import TrainConfig
from trainer.data.record import PreferencePair

log = logging.getLogger(__name__)
WINDOW = 50  # global batches per length-sorting window


@dataclass
class EncodedPairs:
    """Token ids of chosen and rejected sequences, one entry per usable pair."""

    chosen: list[np.ndarray] = field(default_factory=list)
    rejected: list[np.ndarray] = field(default_factory=list)
    chosen_types: list[np.ndarray | None] = field(default_factory=list)
    rejected_types: list[np.ndarray | None] = field(default_factory=list)
    chosen_longer: list[bool | None] = field(default_factory=list)  # characters, as PreferencePair says
    chosen_chars: list[int] = field(default_factory=list)  # response length in characters (the length head's signal)
    rejected_chars: list[int] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: {"tie": 0, "too_long": 0})

    def __len__(self) -> int:
        return len(self.chosen)

    def length(self, i: int) -> int:
        """Tokens of the longer side: what a pair costs in a padded batch."""
        return max(len(self.chosen[i]), len(self.rejected[i]))


def encode_pairs(pairs: Iterable[PreferencePair], encoder: Encoder, *, margin_field: str | None = None) -> EncodedPairs:
    """Encode every pair; ties and pairs whose response alone overflows are counted and skipped."""
    out = EncodedPairs()
    for p in pairs:
        if p.tie:
            out.skipped["tie"] += 1
            continue
        try:
            c = encoder.encode(Item(p.conversation, p.chosen))
            r = encoder.encode(Item(p.conversation, p.rejected))
        except InputTooLongError:
            out.skipped["too_long"] += 1
            continue
        out.chosen.append(np.asarray(c.ids, dtype=np.int32))
        out.rejected.append(np.asarray(r.ids, dtype=np.int32))
        out.chosen_types.append(None if c.type_ids is None else np.asarray(c.type_ids, dtype=np.int8))
        out.rejected_types.append(None if r.type_ids is None else np.asarray(r.type_ids, dtype=np.int8))
        out.chosen_longer.append(p.chosen_longer)
        out.chosen_chars.append(len(p.chosen))
        out.rejected_chars.append(len(p.rejected))
        out.margin.append(float(p.attributes.get(margin_field, 0.0)) if margin_field else 0.0)
        out.ids.append(p.id)
    return out


def epoch_order(data: EncodedPairs, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The global batches of one epoch (lists of pair indices), the same on every process.

    ``length_balance`` keeps, each epoch, a random equal number of chosen-longer and
    chosen-shorter pairs (plus the equal-length ones), so length alone predicts
    nothing; a different subset of the majority side is drawn every epoch.
    """
    rng = np.random.default_rng([cfg.seed, epoch])
    idx = np.arange(len(data))
    if cfg.length_balance:
        longer = idx[[x is True for x in data.chosen_longer]]
        shorter = idx[[x is False for x in data.chosen_longer]]
        equal = idx[[x is None for x in data.chosen_longer]]
        k = min(len(longer), len(shorter))
        idx = np.concatenate([rng.permutation(longer)[:k], rng.permutation(shorter)[:k], equal])
    idx = rng.permutation(idx)
    g = cfg.global_batch
    idx = idx[: len(idx) // g * g]  # whole global batches only
    if cfg.length_grouped:
        lengths = np.array([data.length(i) for i in idx])
        for s in range(0, len(idx), g * WINDOW):
            w = slice(s, s + g * WINDOW)
            idx[w] = idx[w][np.argsort(-lengths[w], kind="stable")]
    batches = [idx[s:s + g].tolist() for s in range(0, len(idx), g)]
    if cfg.length_grouped:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def micro_batches(batch: list[int], data: EncodedPairs, per_device: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one global batch (sorted by length, dealt round-robin)."""
    order = sorted(batch, key=lambda i: -data.length(i))
    chunks = [order[s:s + per_device] for s in range(0, len(order), per_device)]
    return chunks[rank::world]


@dataclass
class TensorBatch:
    """Chosen rows then rejected rows, right-padded: ``input_ids`` is [2 * pairs, longest].

    >>> # pairs (c0, r0), (c1, r1) -> rows c0, c1, r0, r1; attention_mask 1 on real tokens
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    margin: torch.Tensor  # [pairs]
    chosen_longer: list[bool | None]
    n_tokens: int  # real (unpadded) tokens
    response_chars: torch.Tensor  # [2 * pairs], rows' order: how long each response is

    @property
    def pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        d = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.token_type_ids is not None:
            d["token_type_ids"] = self.token_type_ids.to(device)
        return d


def collate(indices: list[int], data: EncodedPairs, pad_id: int) -> TensorBatch:
    seqs = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    types = [data.chosen_types[i] for i in indices] + [data.rejected_types[i] for i in indices]
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    tt = torch.zeros((len(seqs), longest), dtype=torch.long) if types[0] is not None else None
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.from_numpy(s.astype(np.int64))
        mask[r, : len(s)] = 1
        if tt is not None:
            tt[r, : len(s)] = torch.from_numpy(types[r].astype(np.int64))
    return TensorBatch(ids, mask, tt, torch.tensor([data.margin[i] for i in indices]),
                       [data.chosen_longer[i] for i in indices], int(sum(len(s) for s in seqs)),
                       response_chars(indices, data))


def response_chars(indices: list[int], data: EncodedPairs) -> torch.Tensor:
    """Characters of each batch row's response, chosen rows first (as the rows are)."""
    return torch.tensor([data.chosen_chars[i] for i in indices] + [data.rejected_chars[i] for i in indices],
                        dtype=torch.float32)


def eval_batches(data: EncodedPairs, size: int, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """Length-sorted batches of this process's share of an evaluation set."""
    mine = sorted(range(rank, len(data), world), key=lambda i: -data.length(i))
    for s in range(0, len(mine), size):
        yield mine[s:s + size]
