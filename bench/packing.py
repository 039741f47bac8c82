"""Padding-free packing vs padded batches: one training step's forward + backward, side by side.

Same model, same real pairs, same micro-batches (the trainer's own length-grouped
global batches, cut the trainer's way), measured in one run:

* padded: ``collate`` (right padding to the micro-batch's longest sequence);
* packed: ``trainer/bt/packing.py`` (sequences end to end in rows of ``max_length``).

Models: all-MiniLM-L6-v2 as a cross-encoder (the default model's base), and the real
SmolLM2-135M body with a score head (bench/decoder_rm.py). Data: AlpacaEval GPT-4
pairs from ../shared/data (generated text when absent). Prints token slots computed
and seconds per step for both, and the ratio.

Run: ``.venv/bin/python bench/packing.py [--pairs 128] [--steps 4] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(name: str, base_dir: Path, pairs: list, args: argparse.Namespace) -> None:

    from trainer.bt.batches import collate, encode_pairs, epoch_order, micro_batches
    from trainer.bt.config import TrainConfig
    from trainer.bt.loss import bt_loss
    from trainer.bt.model import load_base
    from trainer.bt.packing import pack, packed_rewards

    cfg = TrainConfig(max_length=args.max_length, per_device_batch=args.micro, global_batch=args.micro * 2,
                      precision="fp32", threads=args.threads)
    base = load_base(base_dir, cfg, work_dir=Path(tempfile.mkdtemp()))
    model = base.model.train()
    data = encode_pairs(pairs, base.encoder)
    pad_id = base.encoder.pad_token_id
    steps = epoch_order(data, cfg, 0)[: args.steps]
    micro = [m for s in steps for m in micro_batches(s, data, cfg.per_device_batch, 0, 1)]
    causal = base.kind == "chat"

    def run(kind: str) -> tuple[float, int]:
        cells = 0
        t0 = time.perf_counter()
        for idx in micro:
            if kind == "padded":
                b = collate(idx, data, pad_id)
                r = model(**b.model_inputs("cpu")).logits[:, 0]
                cells += b.input_ids.numel()
            else:
                b = pack(idx, data, pad_id, args.max_length, causal=causal)
                r = packed_rewards(model, b, "cpu")
                cells += b.cells
            bt_loss(r[: len(idx)], r[len(idx):]).mean().backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, cells

    run("padded")  # warm-up
    real = sum(len(data.chosen[i]) + len(data.rejected[i]) for m in micro for i in m)
    res = {k: min((run(k) for _ in range(args.repeat)), key=lambda x: x[0]) for k in ("padded", "packed")}
    print(f"\n{name}: {len(micro)} micro-batches of {args.micro} pairs, {real} real tokens, max_length "
          f"{args.max_length}, {args.threads} threads, best of {args.repeat}")
    print(f"{'batches':<8} {'token slots':>12} {'padding':>8} {'seconds':>8} {'s/step':>7}")
    for k, (t, cells) in res.items():
        print(f"{k:<8} {cells:>12} {1 - real / cells:>7.1%} {t:>8.2f} {t / len(steps):>7.2f}")
    print(f"packed vs padded: {res['padded'][0] / res['packed'][0]:.2f}x the speed, "
          f"{res['packed'][1] / res['padded'][1]:.2f}x the token slots")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="global batches (of 2 micro-batches) to time")
    ap.add_argument("--micro", type=int, default=8, help="pairs per micro-batch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="reuse bench/bon.py's --work folder (SmolLM2 RM)")
    ap.add_argument("--skip-decoder", action="store_true")
    args = ap.parse_args()
    import torch

    from app.pipelines.default_model import minilm_dir
    from bench.decoder_rm import smollm2_reward_model
    from bench.throughput import load_pairs
    from trainer.data import pair

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    items, source = load_pairs(args.pairs, lambda p, r: True)
    pairs = [pair(items[i][0], items[i][1], items[i + 1][1], id=str(i)) for i in range(0, len(items), 2)]
    print(f"data: {source}")
    measure("MiniLM cross-encoder (22.7M)", minilm_dir(), pairs, args)
    if not args.skip_decoder:
        with tempfile.TemporaryDirectory() as tmp:
            hf = (args.work or Path(tmp)) / "hf"
            if not (hf / "config.json").is_file():
                smollm2_reward_model(hf)
            measure("SmolLM2-135M reward model", hf, pairs, args)


if __name__ == "__main__":
    main()
