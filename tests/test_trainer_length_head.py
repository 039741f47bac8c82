"""The length head (trainer/bt/length_head.py): its loss, what is saved, and what it learns."""

from __future__ import annotations

import math
import random

import pytest
import torch

from engine.errors import InputError
from trainer.bt import length_head
from trainer.bt.config import TrainConfig
from trainer.bt.train import train
from trainer.data import pair

GOOD = ["great", "wonderful", "excellent", "helpful", "kind", "clear", "correct", "lovely"]
BAD = ["awful", "terrible", "useless", "rude", "wrong", "confusing", "horrible", "broken"]
FILLER = ["so", "then", "well", "also", "as", "we", "said", "here", "and", "now", "it", "was"]


def test_disentangle_loss_hand_computed():
    chars = torch.tensor([3.0, 10.0, 30.0, 100.0])
    lens = torch.log1p(chars)
    # quality is length itself, the length output its opposite: the worst case, 1 - (-1)
    assert length_head.disentangle_loss(lens, -lens, chars).item() == pytest.approx(2.0, abs=1e-5)
    # quality flat (no length in it), the length output exactly length: the best case, 0 - 1
    flat = torch.zeros(4)
    assert length_head.disentangle_loss(flat, 2 * lens + 1, chars).item() == pytest.approx(-1.0, abs=1e-5)
    # a hand-computed middle case: pearson([1, 2, 3, 4], [1, 3, 2, 4]) = 0.8
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert length_head.pearson(x, y).item() == pytest.approx(0.8, abs=1e-5)
    w = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        w.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    model = torch.nn.Module()
    model.score = w
    assert length_head.orthogonality_loss(model).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    with pytest.raises(InputError, match="length_head"):
        TrainConfig(length_head=-1)


def test_gold_metrics_report_the_rewards_correlation_with_length():
    from trainer.bt.metrics import pair_metrics

    chars_c, chars_r = [10, 200, 40], [90, 5, 400]
    rc = [math.log1p(c) for c in chars_c]  # a pure "longer is better" model: reward = log length
    rr = [math.log1p(c) for c in chars_r]
    m = pair_metrics(rc, rr, [c > r for c, r in zip(chars_c, chars_r, strict=True)], response_chars=(chars_c, chars_r))
    assert m["reward_length_pearson"] == pytest.approx(1.0)
    flat = pair_metrics([0.0] * 3, [0.0] * 3, [None] * 3, response_chars=(chars_c, chars_r))
    assert math.isnan(flat["reward_length_pearson"])  # a constant reward has no correlation to report
    assert "reward_length_pearson" not in pair_metrics(rc, rr, [None] * 3)


def _reply(words: int, rng: random.Random, word: str) -> str:
    filler = [rng.choice(FILLER) for _ in range(words)]
    filler.insert(rng.randrange(len(filler) + 1), word)
    return " ".join(filler) + "."


def mixed_pairs(n: int, seed: int, prefix: str) -> list:
    """The chosen reply has a positive word; which side is longer is a coin flip (length-balanced data)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long_, short_ = rng.randint(9, 14), rng.randint(1, 5)
        a, b = (long_, short_) if rng.random() < 0.5 else (short_, long_)
        out.append(pair(f"How was reply {rng.randint(0, 999)}?", _reply(a, rng, rng.choice(GOOD)),
                        _reply(b, rng, rng.choice(BAD)), id=f"{prefix}{i}"))
    return out


def unconfounded_pairs(n: int, seed: int, prefix: str) -> list:
    """The positive word on the *shorter* reply: only content can pick the chosen one."""
    rng = random.Random(seed)
    return [pair(f"How was reply {rng.randint(0, 999)}?", _reply(rng.randint(1, 5), rng, rng.choice(GOOD)),
                 _reply(rng.randint(9, 14), rng, rng.choice(BAD)), id=f"{prefix}{i}") for i in range(n)]


def _run(tmp_path, name: str, weight: float, steps: int = 30):
    from tests.models import minilm_dir

    cfg = TrainConfig(max_length=48, per_device_batch=16, global_batch=16, lr=1e-4, max_steps=steps,
                      eval_every=10, log_every=steps, threads=1, seed=0, progress=False, length_head=weight)
    res = train(minilm_dir(), mixed_pairs(240, 0, "t"), unconfounded_pairs(48, 1, "g"), tmp_path / name, cfg)
    return res, tmp_path / name


@pytest.mark.slow
def test_saved_model_is_the_quality_output(hf_models, tmp_path, arbiter_home):
    """Two outputs in training, one in the folder: the engine scores exactly output 0."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from engine.backends.torch_ref import TorchScorer
    from engine.modelmeta import read_meta
    from engine.types import Item

    res, out = _run(tmp_path, "lh", 1.0, steps=2)
    best = out / "best"
    saved = load_file(best / "model.safetensors")
    assert saved["classifier.weight"].shape == (1, 384) and saved["classifier.bias"].shape == (1,)
    assert AutoConfig.from_pretrained(best).num_labels == 1
    assert read_meta(best)["trained_with_length_head"] is True
    # the training model, both outputs, from the resumable state of the same step
    two = AutoModelForSequenceClassification.from_pretrained(best, num_labels=2, ignore_mismatched_sizes=True)
    two.load_state_dict(load_file(out / "last" / "state" / "model.safetensors"))
    two.eval()
    rm = TorchScorer(best)
    p = unconfounded_pairs(1, 5, "x")[0]
    enc = rm.encoder.encode(Item(p.conversation, p.chosen))
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        both = two(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).logits[0]
    assert rm.score([Item(p.conversation, p.chosen)])[0].value == pytest.approx(both[0].item(), abs=1e-5)
    assert abs(both[1].item() - both[0].item()) > 1e-6  # the dropped output is a different number


@pytest.mark.slow
def test_length_head_takes_the_length_and_leaves_the_content(hf_models, tmp_path, arbiter_home):
    """The split the head is for: output 1 follows response length, output 0 (the saved one) does not,
    and output 0 still learns the preference (tested where the chosen reply is the shorter)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from engine.encoding import Encoder, TokenizerFiles
    from engine.types import Item

    res, out = _run(tmp_path, "headed", 1.0)
    assert res.best_gold["accuracy"] >= 0.8, res.best_gold  # 0.875 measured
    two = AutoModelForSequenceClassification.from_pretrained(out / "best", num_labels=2,
                                                             ignore_mismatched_sizes=True)
    two.load_state_dict(load_file(out / "last" / "state" / "model.safetensors"))
    two.eval()
    enc = Encoder(TokenizerFiles.from_folder(out / "best"), 48)
    held_out = [(p.conversation, r) for p in mixed_pairs(64, 7, "p") for r in (p.chosen, p.rejected)]
    with torch.no_grad():
        outs = torch.stack([two(input_ids=(ids := torch.tensor([enc.encode(Item(c, r)).ids])),
                                attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).logits[0]
                            for c, r in held_out])
    lens = length_head.length_signal(torch.tensor([float(len(r)) for _, r in held_out]))
    quality, length = (length_head.pearson(outs[:, k], lens).item() for k in (0, 1))
    assert length > 0.7 and abs(quality) < 0.3, (quality, length)  # measured: -0.08 and 0.93


def test_covariance_penalty_is_in_reward_units_with_a_bounded_gradient():
    chars = torch.tensor([3.0, 10.0, 30.0, 100.0])
    lens = torch.log1p(chars)
    z = (lens - lens.mean()) / lens.std(unbiased=False)
    assert length_head.covariance_penalty(z, chars).item() == pytest.approx(1.0, abs=1e-5)
    assert length_head.covariance_penalty(3 * z + 7, chars).item() == pytest.approx(3.0, abs=1e-5)  # scales
    assert length_head.covariance_penalty(torch.zeros(4), chars).item() == 0.0  # nothing learnt: no penalty
    r = (0.01 * z).requires_grad_()  # a barely trained, length-correlated reward: the gradient stays z / n
    length_head.covariance_penalty(r, chars).backward()
    assert torch.allclose(r.grad, z / 4, atol=1e-5)
    with pytest.raises(InputError, match="length_penalty"):
        TrainConfig(length_penalty=-0.5)


def skewed_pairs(n: int, seed: int, share_longer: float) -> list:
    """The chosen reply has the positive word; it is also the longer one in ``share_longer`` of pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long_, short_ = rng.randint(9, 14), rng.randint(1, 5)
        a, b = (long_, short_) if rng.random() < share_longer else (short_, long_)
        out.append(pair(f"How was reply {rng.randint(0, 999)}?", _reply(a, rng, rng.choice(GOOD)),
                        _reply(b, rng, rng.choice(BAD)), id=f"s{i}"))
    return out


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
