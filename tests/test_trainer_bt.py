"""Bradley-Terry training: the loss, batching, a real learning run, resume, 2 processes, GGUF."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.encoding import Encoder, TokenizerFiles
from engine.errors import InputError
from engine.types import Item
from trainer.bt.batches import EncodedPairs, encode_pairs, epoch_order, micro_batches
from trainer.bt.config import TrainConfig
from trainer.bt.loss import bt_loss
from trainer.bt.train import train
from trainer.data import pair, write_pairs

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["great", "wonderful", "excellent", "helpful", "kind", "clear", "correct", "lovely"]
BAD = ["awful", "terrible", "useless", "rude", "wrong", "confusing", "horrible", "broken"]


def sentiment_pairs(n: int, seed: int, prefix: str) -> list:
    """A learnable preference: the chosen reply uses a positive word, the rejected a negative one.

    Half the pairs have the longer reply chosen, half the shorter, so length predicts nothing.
    """
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        g, b = rng.choice(GOOD), rng.choice(BAD)
        short, long = "That is {}.", "I think that answer is really quite {} overall."
        c, r = (long, short) if i % 2 else (short, long)
        out.append(pair(f"How was reply {rng.randint(0, 999)}?", c.format(g), r.format(b), id=f"{prefix}{i}"))
    return out


# -- the loss -----------------------------------------------------------------------

def test_bt_loss_hand_computed():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # -log sigmoid(2) = log(1 + e^-2); -log sigmoid(-1) = log(1 + e)
    want = [math.log(1 + math.exp(-2)), math.log(1 + math.e)]
    assert torch.allclose(bt_loss(rc, rr), torch.tensor(want))
    # margin 1 on the first pair: -log sigmoid(2 - 1) = log(1 + e^-1)
    got = bt_loss(rc, rr, margin=torch.tensor([1.0, 0.0]))
    assert math.isclose(got[0].item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # centering adds c * (r_c + r_r)^2: 0.01 * 4 and 0.01 * 1
    got = bt_loss(rc, rr, center=0.01)
    assert torch.allclose(got, torch.tensor([want[0] + 0.04, want[1] + 0.01]))
    # equal rewards: log 2, the loss of a coin flip
    assert math.isclose(bt_loss(torch.zeros(1), torch.zeros(1)).item(), math.log(2), rel_tol=1e-6)


def test_config_file_schedule_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1.0e-4\nschedule: linear\nwarmup_steps: 2\nglobal_batch: 8\nper_device_batch: 4\n")
    cfg = TrainConfig.from_file(f, {"seed": 3})
    assert (cfg.lr, cfg.seed, cfg.accumulation(1), cfg.accumulation(2)) == (1e-4, 3, 2, 1)
    lrs = [cfg.lr_at(s, 10) for s in range(10)]
    assert lrs[0] == pytest.approx(5e-5) and lrs[1] == pytest.approx(1e-4)  # warmup
    assert lrs[2] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4 / 8)  # linear decay to 0 at step 10
    assert TrainConfig(lr=3e-6).lr_at(500, 1000) == 3e-6  # constant (Skywork-V2 final runs)
    f.write_text("lr: 1.0e-4\nlearning_rate: 3\n")
    with pytest.raises(InputError) as e:
        TrainConfig.from_file(f)
    assert e.value.field == "learning_rate" and e.value.source == str(f)
    with pytest.raises(InputError, match="multiple of per_device_batch"):
        TrainConfig(global_batch=10, per_device_batch=4)
    with pytest.raises(InputError, match="processes"):
        TrainConfig(global_batch=8, per_device_batch=8).accumulation(2)


# -- batching ---------------------------------------------------------------------------

def _fake_encoded(lengths: list[int], longer: list[bool | None]) -> EncodedPairs:
    import numpy as np

    d = EncodedPairs()
    for n, cl in zip(lengths, longer, strict=True):
        d.chosen.append(np.ones(n, dtype=np.int32))
        d.rejected.append(np.ones(max(1, n - 1), dtype=np.int32))
        d.chosen_types.append(None)
        d.rejected_types.append(None)
        d.chosen_longer.append(cl)
        d.margin.append(0.0)
        d.ids.append(str(len(d.ids)))
    return d


def test_global_batches_are_the_same_for_any_process_count():
    import random

    rng = random.Random(0)
    data = _fake_encoded([rng.randint(5, 300) for _ in range(400)], [rng.random() < 0.8 for _ in range(400)])
    cfg = TrainConfig(global_batch=16, per_device_batch=4)
    order = epoch_order(data, cfg, 0)
    assert order == epoch_order(data, cfg, 0) and order != epoch_order(data, cfg, 1)
    for batch in order[:5]:
        one = micro_batches(batch, data, 4, 0, 1)  # 1 process, accumulation 4
        two = micro_batches(batch, data, 4, 0, 2) + micro_batches(batch, data, 4, 1, 2)
        assert sorted(map(tuple, one)) == sorted(map(tuple, two))
    # length grouping: much less padding than a plain shuffle
    def padding(batches):
        return sum(max(data.length(i) for i in mb) * len(mb) - sum(data.length(i) for i in mb)
                   for b in batches for mb in micro_batches(b, data, 4, 0, 1))
    plain = epoch_order(data, TrainConfig(global_batch=16, per_device_batch=4, length_grouped=False), 0)
    assert padding(order) < 0.3 * padding(plain)
    # length balance: equal shares of chosen-longer and chosen-shorter pairs each epoch
    bal = epoch_order(data, TrainConfig(global_batch=16, per_device_batch=4, length_balance=True), 0)
    flags = [data.chosen_longer[i] for b in bal for i in b]
    n_short = sum(1 for x in data.chosen_longer if x is False)
    assert abs(flags.count(True) - flags.count(False)) <= 16 and flags.count(False) >= n_short - 16


def test_training_tokens_are_the_engines(hf_models):
    """Training sees exactly the ids the engine scores: chat template for decoders, zero segments for pairs."""
    from trainer.bt.model import load_base

    cfg = TrainConfig(max_length=24)
    p = pair([{"role": "user", "content": "a long question " * 20}], "Short.", "Also short.")
    for name in ("llama", "minilm"):
        base = load_base(hf_models[name], cfg, work_dir=Path("/nonexistent"))
        enc = encode_pairs([p], base.encoder)
        engine_enc = Encoder(TokenizerFiles.from_folder(hf_models[name]), 24)
        want = engine_enc.encode(Item(p.conversation, p.chosen))
        assert tuple(enc.chosen[0].tolist()) == want.ids and len(want.ids) == 24  # the conversation was cut
        if name == "minilm":
            assert set(enc.chosen_types[0].tolist()) == {0}  # token_types "zeros" (as GGUF and ONNX run it)


# -- real training runs --------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_learns_a_preference_and_the_engine_scores_the_result(hf_models, tmp_path, arbiter_home):
    from engine.backends.torch_ref import TorchScorer
    from engine.modelmeta import read_meta
    from engine.store import Store
    from tests.models import minilm_dir
    from trainer.bt.runlog import RunLog

    cfg = TrainConfig(max_length=48, per_device_batch=16, global_batch=16, lr=1e-4, max_steps=24, eval_every=8,
                      log_every=4, threads=2, seed=0, progress=False)
    gold = sentiment_pairs(48, 1, "g")
    res = train(minilm_dir(), sentiment_pairs(192, 0, "t"), gold, tmp_path / "out", cfg)
    first, last = sum(res.step_losses[:4]) / 4, sum(res.step_losses[-4:]) / 4
    assert first > 0.6 and last < 0.3, res.step_losses  # from a coin flip (log 2) to a learnt preference
    assert res.best_gold["accuracy"] >= 0.9
    assert res.best_gold["accuracy_chosen_longer"] >= 0.85 and res.best_gold["accuracy_chosen_shorter"] >= 0.85
    best = tmp_path / "out" / "best"
    assert read_meta(best)["token_types"] == "zeros" and not list(best.glob("*.bin"))
    assert json.loads((best / "training.json").read_text())["best_step"] == res.best_step
    rm = TorchScorer(best)  # the engine's reference backend reads the folder as trained
    won = sum(rm.compare(p.conversation, p.chosen, p.rejected).margin > 0 for p in gold)
    assert won / len(gold) == pytest.approx(res.best_gold["accuracy"], abs=1 / len(gold))
    log = RunLog(Store.default(), res.run_id)
    kinds = [r["kind"] for r in log.rows()]
    assert kinds.count("train") == 6 and kinds.count("gold") == 3
    assert all(r["tokens_per_s"] > 0 for r in log.rows("train"))


def _decoder_run(model: Path, out: Path, steps: int, resume: bool = False, **kw):
    cfg = TrainConfig(max_length=64, per_device_batch=4, global_batch=8, lr=1e-3, max_steps=steps, eval_every=2,
                      log_every=1, dropout=0.1, progress=False, threads=2, **kw)
    return train(model, sentiment_pairs(40, 0, "t"), sentiment_pairs(8, 1, "g"), out, cfg, resume=resume)


@pytest.mark.slow
def test_resume_reaches_the_same_weights(hf_models, tmp_path):
    """4 steps straight == 2 steps, stop, resume to 4 (dropout on: the RNG state must come back too)."""
    straight = _decoder_run(hf_models["llama"], tmp_path / "a", 4, warmup_steps=3)
    first = _decoder_run(hf_models["llama"], tmp_path / "b", 2, warmup_steps=3)
    resumed = _decoder_run(hf_models["llama"], tmp_path / "b", 4, resume=True, warmup_steps=3)
    assert resumed.step_losses == straight.step_losses[2:]
    a = load_file(tmp_path / "a" / "last" / "state" / "model.safetensors")
    b = load_file(tmp_path / "b" / "last" / "state" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.run_id == first.run_id != straight.run_id  # a resumed run keeps its id
    assert json.loads((tmp_path / "b" / "last" / "state" / "trainer.json").read_text())["step"] == 4


@pytest.mark.slow
def test_two_processes_equal_one_process(hf_models, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) vs one process at the same global batch.

    accelerate 1.15's ``--cpu`` launcher starts a single process unless MPI is configured,
    so the launch goes through its torchrun path with ``ACCELERATE_USE_CPU=true``.

    fp64 and no dropout: the two runs do the same arithmetic on the same micro-batches,
    except that DDP averages gradients across processes where one process sums them
    over accumulation steps, so they agree to rounding (1e-12), not bit for bit.
    """
    write_pairs(sentiment_pairs(48, 0, "t"), tmp_path / "train.jsonl")
    write_pairs(sentiment_pairs(8, 1, "g"), tmp_path / "gold.jsonl")
    common = ["train", "--base", str(hf_models["llama"]), "--train", str(tmp_path / "train.jsonl"),
              "--gold", str(tmp_path / "gold.jsonl"), "--json",
              "--set", "max_length=64", "--set", "per_device_batch=4", "--set", "global_batch=8",
              "--set", "lr=1e-3", "--set", "max_steps=3", "--set", "eval_every=3", "--set", "precision=fp64",
              "--set", "dropout=0.0", "--set", "threads=1", "--set", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    one = subprocess.run([sys.executable, "-m", "app.cli.main", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    accel = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(accel), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--main_process_port", "29517",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "app.cli.main", *common,
                          "--out", str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert r1["data"]["world_size"] == 1 and r2["data"]["world_size"] == 2
    assert r1["data"]["accumulation"] == 2 and r2["data"]["accumulation"] == 1
    a = load_file(tmp_path / "one" / "last" / "state" / "model.safetensors")
    b = load_file(tmp_path / "two" / "last" / "state" / "model.safetensors")
    base = load_file(hf_models["llama"] / "model.safetensors")
    assert a["model.embed_tokens.weight"].dtype == torch.float64
    moved = max((a[k] - base[k].double()).abs().max().item() for k in base if k in a)
    assert moved > 1e-4  # training did something
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-10
    assert r1["best_gold"]["loss"] == pytest.approx(r2["best_gold"]["loss"], abs=1e-10)


@pytest.mark.slow
def test_gguf_base_builds_a_sequence_classifier(tmp_path):
    """The real SmolLM2 GGUF (Q4_1, dequantized) as a LlamaForSequenceClassification."""
    from tests.models import smollm2_gguf
    from trainer.bt.batches import collate
    from trainer.bt.model import load_base

    base = load_base(smollm2_gguf(), TrainConfig(max_length=64), work_dir=tmp_path)
    # the folder carries the GGUF's context length (8192), not the 512 readers assume without one
    assert TokenizerFiles.from_folder(base.tokenizer_dir).max_length == 8192
    assert type(base.model).__name__ == "LlamaForSequenceClassification" and base.kind == "chat"
    assert (tmp_path / "gguf-tokenizer" / "tokenizer.json").is_file()
    data = encode_pairs([pair("Name a prime.", "7", "8")], base.encoder)
    b = collate([0], data, base.encoder.pad_token_id)
    with torch.no_grad():
        r = base.model(**b.model_inputs("cpu")).logits[:, 0]
    assert r.shape == (2,) and torch.isfinite(r).all() and r[0] != r[1]


def test_length_balanced_accuracy_scores_longer_wins_at_one_half():
    """On a set where 70% of chosen answers are longer, "longer wins" gets 0.7 plain, 0.5 balanced."""
    from trainer.bt.metrics import pair_metrics

    longer = [True] * 7 + [False] * 3
    # the "longer wins" model: the longer answer gets the higher reward
    rc = [1.0 if cl else 0.0 for cl in longer]
    rr = [0.0 if cl else 1.0 for cl in longer]
    m = pair_metrics(rc, rr, longer)
    assert m["accuracy"] == pytest.approx(0.7)
    assert (m["accuracy_chosen_longer"], m["accuracy_chosen_shorter"]) == (1.0, 0.0)
    assert m["accuracy_length_balanced"] == pytest.approx(0.5)
    # no chosen-shorter pairs at all: the balanced metric falls back to plain accuracy
    assert pair_metrics([1.0, 0.0], [0.0, 1.0], [True, True])["accuracy_length_balanced"] == 0.5
    with pytest.raises(InputError, match="select_on"):
        TrainConfig(select_on="loss")


def test_best_checkpoint_follows_the_chosen_gold_metric(hf_models, tmp_path, arbiter_home):
    from engine.store import Store
    from trainer.bt.runlog import RunLog

    res = _decoder_run(hf_models["llama"], tmp_path / "run", 8, select_on="length_balanced")
    gold = {r["step"]: r for r in RunLog(Store.default(), res.run_id).rows("gold")}
    assert sorted(gold) == [2, 4, 6, 8]
    best = max(gold, key=lambda s: (gold[s]["accuracy_length_balanced"], -s))  # the first of equals
    assert res.best_step == best
    saved = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert saved["best_step"] == best and saved["config"]["select_on"] == "length_balanced"


def test_stop_after_cuts_the_run_without_shortening_the_schedule(hf_models, tmp_path, arbiter_home):
    """A budget cut at step 3 of a 6-step linear schedule: the same first 3 steps as the full run
    (the learning rate included), gold scored at the cut, and the run ends there."""
    from engine.store import Store
    from trainer.bt.runlog import RunLog

    full = _decoder_run(hf_models["llama"], tmp_path / "full", 6, schedule="linear", warmup_steps=1)
    cut = _decoder_run(hf_models["llama"], tmp_path / "cut", 6, schedule="linear", warmup_steps=1, stop_after=3)
    assert cut.step_losses == full.step_losses[:3]
    lr = {n: {r["step"]: r["lr"] for r in RunLog(Store.default(), res.run_id).rows("train")}
          for n, res in (("full", full), ("cut", cut))}
    assert lr["cut"] == {s: lr["full"][s] for s in (1, 2, 3)}
    assert sorted(r["step"] for r in RunLog(Store.default(), cut.run_id).rows("gold")) == [2, 3]
    assert json.loads((tmp_path / "cut" / "last" / "state" / "trainer.json").read_text())["step"] == 3
    with pytest.raises(InputError, match="positive"):
        TrainConfig(stop_after=0)
