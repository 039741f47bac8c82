"""Best-of-N with the prompt computed once vs full re-scoring, GGUF and ONNX, side by side.

Workload (the issue's): N=16 candidates of ~128 tokens each after a ~1k-token
conversation, scored by a decoder reward model of real size (SmolLM2-135M body,
random head; see bench/decoder_rm.py). Real text: the conversation is built from
AlpacaEval turns (../shared/data) and the candidates are real answers cut to 128
tokens; generated text when the data is absent.

For each export it times ``rank(conv, candidates, shared_prompt=False)`` (every
candidate decoded in full) against ``rank(conv, candidates)`` (the conversation
decoded once and shared), checks both give the same scores, and prints the ratio.
Goal: >= 5x. Run: ``.venv/bin/python bench/bon.py [--n 16] [--threads 2]``.
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


def workload(tok, n: int, prompt_tokens: int, response_tokens: int):
    """(conversation, candidates, source): real AlpacaEval text when present."""
    rows = []
    if DATA.is_file():
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(400), f, strict=False)]
        source = str(DATA.relative_to(ROOT.parent))
    else:
        import random

        rng = random.Random(0)
        words = ["the", "model", "answer", "question", "data", "reward", "score", "pair", "long", "short", "good", "bad", "clear"]
        rows = [{"prompt": " ".join(rng.choices(words, k=30)), "chosen": " ".join(rng.choices(words, k=400)),
                 "rejected": " ".join(rng.choices(words, k=400))} for _ in range(400)]
        source = "generated text (../shared/data absent)"

    def cut(text: str, k: int) -> str:
        return tok.decode(tok.encode(text, add_special_tokens=False).ids[:k])

    conv, used = [], 0
    for r in rows:  # earlier turns: user prompt, assistant answer, until ~prompt_tokens
        turn = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": cut(r["chosen"], 200)}]
        used += sum(len(tok.encode(m["content"], add_special_tokens=False).ids) + 5 for m in turn)
        conv += turn
        if used >= prompt_tokens - 60:
            break
    conv.append({"role": "user", "content": rows[-1]["prompt"]})
    long = [r[k] for r in rows[len(conv):] for k in ("chosen", "rejected")
            if len(tok.encode(r[k], add_special_tokens=False).ids) >= response_tokens]
    return conv, [cut(t, response_tokens) for t in long[:n]], source


def bench(label: str, rm, conv, cands, repeat: int) -> dict:
    rm.rank(conv, cands[:2])  # warm-up: context allocation, lazy sessions
    rm.rank(conv, cands[:2], shared_prompt=False)

    def best(**kw):
        t, out = float("inf"), None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = rm.rank(conv, cands, **kw)
            t = min(t, time.perf_counter() - t0)
        return t, out

    t_full, full = best(shared_prompt=False)
    # forced, so a legacy dynamic int8 export (which does not share by default) is timed too
    t_shared, shared = best(shared_prompt=True)
    want = {c.index: c.score.value for c in full.candidates}
    diff = max(abs(c.score.value - want[c.index]) for c in shared.candidates)
    return {"model": label, "full_s": t_full, "shared_s": t_shared, "speedup": t_full / t_shared,
            "prompt_shared": shared.prompt_shared, "max_abs_diff": diff,
            "same_best": full.best.index == shared.best.index}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--response-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="keep the exports here (default: a temp folder)")
    args = ap.parse_args()

    import engine
    from bench.decoder_rm import smollm2_reward_model
    from exports.gguf import export_gguf
    from exports.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        hf = work / "hf"
        if not (hf / "config.json").is_file():
            smollm2_reward_model(hf)
        exports = {}
        for quant in ("q8_0", "f16"):
            if not (work / "gguf" / f"model-{quant}.gguf").is_file():
                export_gguf(hf, work / f"gguf-{quant}", quants=(quant,))
                (work / "gguf").mkdir(exist_ok=True)
                (work / f"gguf-{quant}" / f"model-{quant}.gguf").rename(work / "gguf" / f"model-{quant}.gguf")
            exports[f"GGUF {quant}"] = work / "gguf" / f"model-{quant}.gguf"
        for quant in ("int8", "fp32"):
            if not (work / f"onnx-{quant}").is_dir():
                export_onnx(hf, work / f"onnx-{quant}", quant=None if quant == "fp32" else quant)
            exports[f"ONNX {quant}"] = work / f"onnx-{quant}"

        rows = []
        for label, path in exports.items():
            with engine.load(path, threads=args.threads, device="cpu") as rm:
                conv, cands, source = workload(rm_hf_tokenizer(hf), args.n, args.prompt_tokens,
                                               args.response_tokens)
                item = engine.Item.of(conv, cands[0])
                p_tokens = len(rm.encoder.prompt_ids(item))
                r_tokens = [len(rm.encode(engine.Item.of(conv, c)).ids) - p_tokens for c in cands]
                rows.append(bench(label, rm, conv, cands, args.repeat))
                print(f"{label}: done", file=sys.stderr)

    print(f"# Best-of-N, prompt shared vs full re-scoring ({args.threads} threads)\n")
    print(f"model: SmolLM2-135M body + random score head; text: {source}")
    print(f"workload: N={len(cands)} candidates of {min(r_tokens)}-{max(r_tokens)} tokens after a "
          f"{p_tokens}-token conversation (full: {len(cands) * p_tokens + sum(r_tokens)} tokens, "
          f"shared: {p_tokens + sum(r_tokens)})\n")
    print("| export | full (s) | prompt shared (s) | speed-up | shared? | max abs diff | same best |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['full_s']:.2f} | {r['shared_s']:.2f} | **{r['speedup']:.1f}x** | "
              f"{'yes' if r['prompt_shared'] else 'no'} | {r['max_abs_diff']:.1e} | {r['same_best']} |")
    print("\ngoal: >= 5x")


def rm_hf_tokenizer(folder: Path):
    from engine.encoding import load_tokenizer

    return load_tokenizer(folder / "tokenizer.json")


if __name__ == "__main__":
    main()
