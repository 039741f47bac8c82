"""The length head (trainer/bt/length_head.py): its loss, what is saved, and what it learns."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InputError
from tests.length_pairs import mixed_pairs, unconfounded_pairs
from trainer.bt import length_head
from trainer.bt.config import TrainConfig
from trainer.bt.train import train


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


def test_a_one_label_reward_model_can_be_trained_with_a_length_head(hf_models, tmp_path):
    # the tiny Qwen3 is a saved one-label reward model; a second output used to be a raw
    # "size mismatch" RuntimeError from transformers
    from trainer.bt.model import load_base

    base = load_base(hf_models["qwen3"], TrainConfig(length_head=1.0), work_dir=tmp_path)
    assert base.model.config.num_labels == 2
    assert base.model.score.weight.shape[0] == 2
