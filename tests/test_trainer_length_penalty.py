"""The length penalty (trainer/bt/length_penalty.py): its value, its gradient, what it does to training."""

from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from tests.length_pairs import mixed_pairs, skewed_pairs, unconfounded_pairs
from trainer.bt import length_head
from trainer.bt.config import TrainConfig
from trainer.bt.length_penalty import covariance_penalty
from trainer.bt.train import train


def test_covariance_penalty_is_in_reward_units_with_a_bounded_gradient():
    chars = torch.tensor([3.0, 10.0, 30.0, 100.0])
    lens = torch.log1p(chars)
    z = (lens - lens.mean()) / lens.std(unbiased=False)
    assert covariance_penalty(z, chars).item() == pytest.approx(1.0, abs=1e-5)
    assert covariance_penalty(3 * z + 7, chars).item() == pytest.approx(3.0, abs=1e-5)  # scales
    assert covariance_penalty(torch.zeros(4), chars).item() == 0.0  # nothing learnt: no penalty
    r = (0.01 * z).requires_grad_()  # a barely trained, length-correlated reward: the gradient stays z / n
    covariance_penalty(r, chars).backward()
    assert torch.allclose(r.grad, z / 4, atol=1e-5)
    with pytest.raises(InputError, match="length_penalty"):
        TrainConfig(length_penalty=-0.5)


@pytest.mark.slow
def test_length_penalty_takes_length_out_of_the_reward(hf_models, tmp_path, arbiter_home):
    """On data where the chosen reply is the longer one 90% of the time, the penalised reward
    follows length less on held-out replies, and still learns the content preference."""
    import engine
    from engine.types import Item
    from tests.models import minilm_dir

    held_out = [(p.conversation, r) for p in mixed_pairs(64, 7, "p") for r in (p.chosen, p.rejected)]
    lens = length_head.length_signal(torch.tensor([float(len(r)) for _, r in held_out]))
    corr, acc = {}, {}
    for weight in (0.0, 1.0):
        cfg = TrainConfig(max_length=48, per_device_batch=16, global_batch=16, lr=1e-4, max_steps=12,
                          eval_every=12, log_every=12, threads=1, seed=0, progress=False, length_penalty=weight)
        res = train(minilm_dir(), skewed_pairs(240, 0, 0.9), unconfounded_pairs(48, 1, "g"),
                    tmp_path / str(weight), cfg)
        acc[weight] = res.best_gold["accuracy"]
        with engine.load(tmp_path / str(weight) / "best", threads=1) as rm:
            r = torch.tensor([s.value for s in rm.score([Item(c, x) for c, x in held_out])])
        corr[weight] = length_head.pearson(r, lens).item()
    assert acc[1.0] >= 0.8, acc
    # measured: 0.136 without, 0.041 with (a weight of 5 overshoots to -0.23: |cov| pulls either way)
    assert abs(corr[1.0]) < abs(corr[0.0]) / 2, corr
