"""Padding-free packing: the same rewards and gradients as padded batches, fewer token slots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.bt.batches import collate, encode_pairs
from trainer.bt.config import TrainConfig
from trainer.bt.loss import bt_loss
from trainer.bt.model import load_base
from trainer.bt.packing import pack, packed_rewards
from trainer.data import pair


def mixed_pairs(n: int) -> list:
    """Pairs whose sequences run from a few tokens to ~60: where padding costs most."""
    out = []
    for i in range(n):
        q = f"Tell me about topic {i}. " + "Please add detail. " * (i % 4)
        c = "Sure: " + "it is a fine subject, " * (1 + (i * 7) % 9)
        r = "No." if i % 3 else "I would rather not say anything about it at all, " * 2
        out.append(pair(q, c, r, id=f"p{i}"))
    return out


@pytest.mark.parametrize("arch", ["qwen3", "llama", "minilm"])
def test_packed_rewards_and_gradients_equal_the_padded_ones(hf_models, arch):
    torch.manual_seed(0)
    base = load_base(hf_models[arch], TrainConfig(max_length=128, precision="fp32"), work_dir=Path("/nonexistent"))
    model = base.model.eval()  # dropout off: both paths must see the same network
    data = encode_pairs(mixed_pairs(10), base.encoder)
    idx = list(range(len(data)))
    pad_id = base.encoder.pad_token_id
    padded = collate(idx, data, pad_id)
    packed = pack(idx, data, pad_id, 128, causal=base.kind == "chat")
    assert packed.n_tokens == padded.n_tokens
    assert packed.cells < padded.input_ids.numel()  # the point: fewer token slots computed
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # several sequences share a row

    def loss_and_grads(fn):
        model.zero_grad()
        r = fn()
        loss = bt_loss(r[: len(idx)], r[len(idx):]).mean()
        loss.backward()
        return r.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    r_pad, g_pad = loss_and_grads(lambda: model(**padded.model_inputs("cpu")).logits[:, 0])
    r_pack, g_pack = loss_and_grads(lambda: packed_rewards(model, packed, "cpu"))
    assert torch.allclose(r_pack, r_pad, atol=2e-5), (r_pack - r_pad).abs().max()
    assert set(g_pack) >= {k for k, g in g_pad.items() if g.abs().sum() > 0}
    for k, g in g_pad.items():
        assert torch.allclose(g_pack[k], g, atol=1e-5, rtol=1e-3), k


def test_packing_never_splits_a_sequence_and_keeps_rows_within_capacity(hf_models):
    base = load_base(hf_models["llama"], TrainConfig(max_length=128), work_dir=Path("/nonexistent"))
    data = encode_pairs(mixed_pairs(16), base.encoder)
    b = pack(list(range(len(data))), data, base.encoder.pad_token_id, 100, causal=True)
    assert b.input_ids.shape[1] <= max(100, max(len(s) for s in data.chosen + data.rejected))
    seqs = data.chosen + data.rejected
    for k, s in enumerate(seqs):
        row, last = int(b.pool_row[k]), int(b.pool_col[k])
        span = b.segments[row] == k + 1
        assert int(span.sum()) == len(s) and span.nonzero().max() == last  # whole, and read at its end
        assert b.input_ids[row][span].tolist() == s.tolist()
        assert b.position_ids[row][span].tolist() == list(range(len(s)))


def test_training_with_packing_learns(hf_models, tmp_path, arbiter_home):
    from tests.test_trainer_bt import sentiment_pairs
    from trainer.bt.train import train

    cfg = TrainConfig(max_length=48, per_device_batch=16, global_batch=16, lr=1e-4, max_steps=16, eval_every=8,
                      log_every=4, threads=2, seed=0, progress=False, packing=True)
    res = train(hf_models["minilm"], sentiment_pairs(128, 0, "t"), sentiment_pairs(32, 1, "g"), tmp_path / "o", cfg)
    assert sum(res.step_losses[-4:]) / 4 < sum(res.step_losses[:4]) / 4 - 0.2, res.step_losses
    assert res.best_gold["accuracy"] >= 0.85
