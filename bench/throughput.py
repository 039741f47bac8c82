"""Throughput: engine ONNX fp32/int8 vs HF transformers fp32 vs a bare ONNX Runtime loop.

One model (all-MiniLM-L6-v2 as a one-label cross-encoder), one set of real
mixed-length preference pairs (AlpacaEval GPT-4 test split from ../shared/data, or
generated text when it is absent), everything measured in this one run:

* HF fp32 eager: ``tokenizer(..., padding=True)`` + ``model(**batch)`` in input order,
  batch 16, the way a user writes it;
* bare ORT: ``InferenceSession.run`` over the engine's own padded batches (encoding
  done beforehand, not timed): the floor the engine's overhead is measured against;
* engine ONNX fp32 and int8: ``Scorer.score`` end to end (tokenizing included), batches
  capped at ``Scorer.batch_tokens`` padded tokens (int8 also timed without the cap); int8 is
  the static export (fixed activation scales, calibrated on the probe set plus 32 real
  pairs that are not timed), and onnxruntime's dynamic int8 (per-batch scales, what
  exports used before) is timed beside it.

The runtimes take turns in every round (best of ``--repeat``), so load from other
processes hits them alike. Goals: engine int8 >= 4x HF fp32; engine fp32 within 10% of
the bare loop; int8 scores the same at batch size 1 and 16 (static: within 1e-4).

Second part, a decoder: SmolLM2-135M with a score head (bench/decoder_rm.py), the
same real pairs rendered with its chat template: HF transformers fp32 (batches of 8
in input order, right-padded; the engine's token ids, so tokenizing is not even
timed for HF) against the engine's GGUF q8_0 through llama.cpp. Goal (issue 13): >= 1.5x.
Run: ``.venv/bin/python bench/throughput.py [--pairs 128] [--threads 2] [--decoder-pairs 32]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "alpacaeval-gpt4-prefs" / "test.jsonl.gz"


def load_pairs(n: int, fits) -> tuple[list[tuple[str, str]], str]:
    """(prompt, response) items: chosen and rejected of n real pairs whose responses fit."""
    if DATA.is_file():
        items = []
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if not (fits(row["prompt"], row["chosen"]) and fits(row["prompt"], row["rejected"])):
                    continue
                items += [(row["prompt"], row["chosen"]), (row["prompt"], row["rejected"])]
                if len(items) >= 2 * n:
                    break
        return items, f"{DATA.relative_to(ROOT.parent)} (first {n} pairs whose responses fit)"
    import random

    rng = random.Random(0)
    words = ["the", "model", "answer", "question", "data", "reward", "score", "pair", "long", "short", "good", "bad", "clear"]
    items = [(" ".join(rng.choices(words, k=rng.randint(5, 40))), " ".join(rng.choices(words, k=rng.randint(5, 300))))
             for _ in range(2 * n)]
    return items, f"generated text ({n} pairs; ../shared/data absent)"


def interleaved(fns: dict, repeat: int) -> dict[str, float]:
    """Best time of each function over ``repeat`` rounds, every function once per round."""
    for fn in fns.values():
        fn()  # warm-up (first-run allocations, lazy init)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def timed(fn, repeat: int) -> float:
    fn()  # warm-up (first-run allocations, lazy init)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decoder-pairs", type=int, default=32, help="0 skips the decoder part")
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="reuse bench/bon.py's --work folder")
    ap.add_argument("--llama-modes", action="store_true",
                    help="decoder part: also time llama.cpp's ways to run the file, interleaved with HF "
                         "(bench/llama_modes.py)")
    ap.add_argument("--llama-tune", action="store_true",
                    help="decoder part: also sweep llama.cpp micro-batch size and threads (bench/llama_modes.py)")
    args = ap.parse_args()
    if not args.skip_encoder:
        encoder_part(args)
    if args.decoder_pairs:
        decoder_part(args)


def decoder_part(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    import engine
    from bench.decoder_rm import smollm2_reward_model
    from engine.types import Item
    from exports.gguf import export_gguf

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        hf_dir = work / "hf"
        if not (hf_dir / "config.json").is_file():
            smollm2_reward_model(hf_dir)
        q8 = work / "gguf" / "model-q8_0.gguf"
        if not q8.is_file():
            q8 = export_gguf(hf_dir, work / "gguf", quants=("q8_0",))[0]
        rm = engine.load(q8, threads=args.threads, device="cpu", max_length=args.max_length)
        items, source = load_pairs(args.decoder_pairs, lambda p, r: True)
        eng_items = []
        for p, r in items:
            try:
                rm.encode(Item.of(p, r))
                eng_items.append(Item.of(p, r))
            except engine.InputTooLongError:
                continue
        encoded = [rm.encode(it) for it in eng_items]
        n_tokens = sum(len(e.ids) for e in encoded)
        from transformers import AutoModelForSequenceClassification

        hf = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
        pad = rm.encoder.pad_token_id

        def run_hf():
            out = []
            with torch.no_grad():
                for i in range(0, len(encoded), 8):
                    chunk = encoded[i:i + 8]
                    n = max(len(e.ids) for e in chunk)
                    ids = torch.tensor([list(e.ids) + [pad] * (n - len(e.ids)) for e in chunk])
                    mask = (torch.arange(n)[None, :] < torch.tensor([len(e.ids) for e in chunk])[:, None]).long()
                    out.append(hf(input_ids=ids, attention_mask=mask).logits[:, 0])
            return torch.cat(out).numpy()

        repeat = max(1, args.repeat - 2)
        t_hf = timed(run_hf, repeat)
        t_q8 = timed(lambda: rm.score(eng_items), repeat)
        hf_scores = run_hf()
        q8_scores = np.array([s.value for s in rm.score(eng_items)])
        corr = float(np.corrcoef(hf_scores, q8_scores)[0, 1])
        modes, tuned = {}, {}
        if args.llama_modes:
            from bench.llama_modes import time_modes

            modes = time_modes(rm, [rm._tokens(e) for e in encoded], args.threads, repeat, baseline=run_hf)
        if args.llama_tune:
            from bench.llama_modes import tune

            tuned = tune(rm, [rm._tokens(e) for e in encoded], repeat)
    print(f"\nmodel: SmolLM2-135M reward model (real body, random head); data: {source}")
    print(f"{len(eng_items)} items, {n_tokens} tokens (chat template, <= {args.max_length}), "
          f"{args.threads} threads, best of {repeat}; q8_0 vs HF score correlation {corr:.4f}\n")
    print(f"{'runtime':<40} {'seconds':>8} {'items/s':>9} {'vs HF fp32':>11}")
    for name, t in (("HF transformers fp32 (eager)", t_hf), ("engine GGUF q8_0 (llama.cpp)", t_q8)):
        print(f"{name:<40} {t:>8.2f} {len(eng_items) / t:>9.1f} {t_hf / t:>10.2f}x")
    print(f"\nengine GGUF q8_0 vs HF fp32: {t_hf / t_q8:.2f}x (goal >= 1.5x)")
    if modes:
        hf_t = modes["HF transformers fp32"]
        print(f"\nllama.cpp ways to run the same q8_0 file, same {n_tokens} tokens, each sequence alone, "
              f"interleaved with HF in each of {repeat} rounds (best of):")
        for name, t in modes.items():
            print(f"{name:<58} {t:>8.2f} s {len(eng_items) / t:>7.2f} items/s {hf_t / t:>6.2f}x HF fp32")
    if tuned:
        print(f"\nengine decode path by (ubatch, threads), interleaved, best of {repeat}:")
        fastest = min(tuned.values())
        for (ubatch, threads), t in tuned.items():
            print(f"ubatch {ubatch:>5} threads {threads:>2} {t:>8.2f} s {len(eng_items) / t:>7.2f} items/s "
                  f"{t / fastest:>6.2f}x the fastest")


def encoder_part(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    import engine
    from engine.scorer import pad_batch
    from engine.types import Item
    from exports.onnx import export_onnx
    from trainer.reference_models import minilm_reward_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_dir = minilm_reward_model(tmp / "hf")
        fp32_dir = export_onnx(hf_dir, tmp / "fp32")
        opts = dict(threads=args.threads, batch_size=args.batch_size, max_length=args.max_length)
        rm32 = engine.load(fp32_dir, **opts)
        tk = rm32.encoder.tokenizer.tokenizer  # the HF tokenizers object
        items, source = load_pairs(args.pairs + 32, lambda p, r: len(tk.encode(p, r).ids) <= args.max_length)
        items, calib = items[:2 * args.pairs], [Item.of(p, r) for p, r in items[2 * args.pairs:]]
        eng_items = [Item.of(p, r) for p, r in items]
        int8_dir = export_onnx(hf_dir, tmp / "int8", quant="int8", calibration=calib)
        dyn_dir = export_onnx(hf_dir, tmp / "int8-dynamic", quant="int8", activations="dynamic")
        rm8, rm8d = engine.load(int8_dir, **opts), engine.load(dyn_dir, **opts)
        rm8_uncapped = engine.load(int8_dir, **opts)
        rm8_uncapped.batch_tokens = None  # batches of batch_size rows whatever their length (before)
        n_tokens = sum(len(rm32.encode(it).ids) for it in eng_items)

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        hf = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()

        def run_hf():
            out = []
            with torch.no_grad():
                for i in range(0, len(items), args.batch_size):
                    chunk = items[i:i + args.batch_size]
                    enc = tok([p for p, _ in chunk], [r for _, r in chunk], padding=True, truncation="only_first",
                              max_length=args.max_length, return_tensors="pt")
                    out.append(hf(**enc).logits[:, 0])
            return torch.cat(out)

        encoded = [rm32.encode(it) for it in eng_items]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        batches = [rm32._feeds(pad_batch([encoded[i] for i in order[s:s + args.batch_size]], rm32.encoder.pad_token_id))
                   for s in range(0, len(order), args.batch_size)]
        session = rm32.session

        def run_bare():
            return [session.run(None, feeds) for feeds in batches]

        results = interleaved({
            "HF transformers fp32 (eager)": run_hf,
            "bare InferenceSession.run fp32": run_bare,
            "engine ONNX fp32": lambda: rm32.score(eng_items),
            "engine ONNX int8 (static)": lambda: rm8.score(eng_items),
            "engine ONNX int8 (static, no token cap)": lambda: rm8_uncapped.score(eng_items),
            "engine ONNX int8 (dynamic, before)": lambda: rm8d.score(eng_items),
        }, args.repeat)
        # the same scores, or the comparison means nothing
        hf_scores = run_hf().numpy()
        eng_scores = np.array([s.value for s in rm32.score(eng_items)])
        agree = float(np.mean(np.abs(hf_scores - eng_scores) < 1e-3))
        moved = {name: float(np.abs(np.array([s.value for s in rm.score(eng_items, batch_size=1)])
                                    - np.array([s.value for s in rm.score(eng_items)])).max())
                 for name, rm in (("static", rm8), ("dynamic", rm8d))}

    n_pairs = len(items) / 2
    hf_t = results["HF transformers fp32 (eager)"]
    print(f"model: all-MiniLM-L6-v2 cross-encoder (22.7M params); data: {source}")
    print(f"{len(items)} items, {n_tokens} tokens, batch {args.batch_size}, {args.threads} threads, "
          f"best of {args.repeat}; engine fp32 == HF on {agree:.0%} of items (|diff| < 1e-3)\n")
    print(f"{'runtime':<40} {'seconds':>8} {'pairs/s':>9} {'vs HF fp32':>11}")
    for name, t in results.items():
        print(f"{name:<40} {t:>8.2f} {n_pairs / t:>9.1f} {hf_t / t:>10.2f}x")
    overhead = results["engine ONNX fp32"] / results["bare InferenceSession.run fp32"] - 1
    int8_ratio = hf_t / results["engine ONNX int8 (static)"]
    print(f"\nengine overhead over the bare session: {overhead:+.1%} (goal <= +10%)")
    print(f"engine int8 (static) vs HF fp32: {int8_ratio:.2f}x (goal >= 4x)")
    print(f"int8 max |score at batch 1 - at batch {args.batch_size}|: static {moved['static']:.2g}, "
          f"dynamic {moved['dynamic']:.2g} (goal: static <= 1e-4)")


if __name__ == "__main__":
    main()
