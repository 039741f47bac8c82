"""Long inputs: how a window policy scores responses longer than the model's context.

Every response of every record is encoded once. One that fits is one row, as ``Scorer.score``
scores it; one that does not is cut into windows (``Encoder.encode_windows``, the policy's size
and stride) and every window is a row. All rows go through the engine's batched forward path
(``Scorer._score_encoded``, fitting rows and window rows in separate calls, as ``iter_scores``
does), so one scoring pass gives every aggregation: mean, min, max, first, last of the raw
window outputs, then length control once on the whole response, exactly what
``Scorer.score(on_too_long="window", window_agg=A)`` returns (checked below on some records).

Per benchmark, beside ``skip`` (today: a record with a response too long is left out) and the
random / longer-wins / shorter-wins baselines (``trainer.eval.baselines``) on the same records:
the share of records scored, the metric on all records and on the windowed records only.
Then GGUF q8_0 against ONNX int8 on windowed responses, and records/s with and without windows.

    .venv/bin/python bench/long_inputs.py --out bench/results/long_inputs.md

Sizes: LLMBar (Natural, Adversarial), RM-Bench, JudgeBench in full; Auto-J and RMB as seeded
subsets (``--max-records``, seed ``--seed``), as 2 shared CPU cores allow.
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.encoding import Encoded  # noqa: E402
from engine.errors import InputTooLongError  # noqa: E402
from engine.scorer import WINDOW_AGGS, Scorer, WindowPolicy  # noqa: E402
from engine.types import Item  # noqa: E402
from trainer.eval.benchmarks import evaluate  # noqa: E402
from trainer.eval.items import Record, Scored  # noqa: E402
from trainer.eval.runner import load_records, resolve  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: (label, spec relative to DATA, subset size or None for all)
BENCHES = (
    ("LLMBar Natural", "llmbar:llmbar/Dataset/LLMBar/Natural", None),
    ("LLMBar Adversarial", "llmbar:llmbar/Dataset/LLMBar/Adversarial", None),
    ("RM-Bench", "rm-bench:rm-bench", None),
    ("JudgeBench", "judgebench:judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl", None),
    ("Auto-J", "auto-j:auto-j/testdata_pairwise.jsonl", "subset"),
    ("RMB", "rmb:rmb/RMB_dataset", "subset"),
)


@dataclass
class Response:
    """One response's raw outputs: one value when it fits, one per window otherwise."""

    raw: list[float]
    windowed: bool
    length_term: float


def records_of(spec: str, limit: int | None, seed: int) -> tuple[str, list[Record]]:
    (bench,), _ = resolve([spec])
    recs = [r for _, _, r in load_records(bench, None)]
    if limit is not None and len(recs) > limit:
        recs = random.Random(seed).sample(recs, limit)
    return bench.format, recs


def score_responses(rm: Scorer, recs: Sequence[Record], policy: WindowPolicy,
                    batch_size: int) -> list[list[Response]]:
    """Raw outputs of every response (windows for the long ones), one forward pass for all."""
    fit: list[Encoded] = []
    win: list[Encoded] = []
    plan: list[list[tuple[bool, int, int]]] = []  # per response: (windowed, first row, rows)
    for rec in recs:
        row = []
        for resp in rec.responses:
            item = Item(rec.conversation, resp)
            try:
                fit.append(rm.encode(item))
                row.append((False, len(fit) - 1, 1))
            except InputTooLongError:
                parts = rm.encoder.encode_windows(item, policy.size, policy.stride)
                row.append((True, len(win), len(parts)))
                win += parts
        plan.append(row)
    vf = rm._score_encoded(fit, batch_size, None)
    vw = rm._score_encoded(win, batch_size, None) if win else []
    out = []
    for rec, row in zip(recs, plan, strict=True):
        out.append([Response((vw if w else vf)[a:a + n], w, rm.length_term(resp))
                    for (w, a, n), resp in zip(row, rec.responses, strict=True)])
    return out


def aggregate(responses: list[list[Response]], agg: str | None) -> list[tuple[float, ...]]:
    """Record scores under ``agg`` (None: skip, NaN for a windowed response)."""
    out = []
    for row in responses:
        vals = []
        for r in row:
            if r.windowed and agg is None:
                vals.append(math.nan)
            else:
                vals.append((WINDOW_AGGS[agg](r.raw) if r.windowed else r.raw[0]) - r.length_term)
        out.append(tuple(vals))
    return out


def headline(fmt: str, metrics: dict) -> dict[str, float]:
    """The numbers each benchmark is read by."""
    if fmt == "rm-bench":
        return {k: metrics[k] for k in ("easy", "normal", "hard")}
    if fmt == "rmb":
        return {f"{k} acc": metrics[k]["accuracy"] for k in ("pairwise", "bon") if k in metrics}
    return {"acc": metrics["accuracy"]}


def table(label: str, fmt: str, recs: list[Record], responses: list[list[Response]]) -> list[str]:
    windowed = [any(r.windowed for r in row) for row in responses]
    n_win = sum(windowed)
    lines = [f"### {label} ({fmt}): {len(recs)} records, {n_win} with a response over the context "
             f"({sum(len(r.raw) for row in responses for r in row if r.windowed)} windows for "
             f"{sum(r.windowed for row in responses for r in row)} responses)", ""]
    variants: list[tuple[str, str | None]] = [("skip (today)", None)] + [(f"window-{a}", a) for a in WINDOW_AGGS]
    cols: list[str] | None = None
    for name, agg in variants:
        scores = aggregate(responses, agg)
        scored = [Scored(r, s) for r, s in zip(recs, scores, strict=True)]
        ev = evaluate(fmt, scored)
        sub = [s for s, w in zip(scored, windowed, strict=True) if w]
        ev_w = evaluate(fmt, sub) if sub and agg is not None else None
        share = 100 * (ev["records"] - ev["skipped"]) / ev["records"]
        h_all = headline(fmt, ev["metrics"]["model"])
        h_w = headline(fmt, ev_w["metrics"]["model"]) if ev_w else {k: math.nan for k in h_all}
        if cols is None:
            cols = list(h_all)
            lines.append("| policy | scored % | " + " | ".join(f"{c} (all scored)" for c in cols)
                         + " | " + " | ".join(f"{c} (windowed only)" for c in cols) + " |")
            lines.append("|---|---|" + "---|" * (2 * len(cols)))
        lines.append(f"| {name} | {share:.1f} | " + " | ".join(_f(h_all[c]) for c in cols) + " | "
                     + " | ".join(_f(h_w[c]) for c in cols) + " |")
        if agg == "mean":  # baselines: on every record (a window policy scores them all)
            base_all = {b: headline(fmt, m) for b, m in ev["metrics"].items() if b != "model"}
            base_w = ({b: headline(fmt, m) for b, m in ev_w["metrics"].items() if b != "model"}
                      if ev_w else {})
    for b, h in base_all.items():
        hw = base_w.get(b, {k: math.nan for k in h})
        lines.append(f"| baseline {b} | 100.0 | " + " | ".join(_f(h[c]) for c in cols) + " | "
                     + " | ".join(_f(hw[c]) for c in cols) + " |")
    return lines + [""]


def _f(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1f}"


def check_engine(rm: Scorer, recs: list[Record], responses: list[list[Response]], agg: str) -> float:
    """Max |bench - Scorer.score(on_too_long="window")| on up to 8 windowed responses."""
    picks = [(rec, i) for rec, row in zip(recs, responses, strict=True)
             for i, r in enumerate(row) if r.windowed][:8]
    if not picks:
        return 0.0
    want = [WINDOW_AGGS[agg](responses[recs.index(rec)][i].raw) - responses[recs.index(rec)][i].length_term
            for rec, i in picks]
    got = rm.score([Item(rec.conversation, rec.responses[i]) for rec, i in picks],
                   on_too_long="window", window_agg=agg)
    return max(abs(g.value - w) for g, w in zip(got, want, strict=True))


def gguf_parity(onnx: Scorer, recs: list[Record], n: int, policy: WindowPolicy, bs: int) -> list[str]:
    """GGUF q8_0 against ONNX int8 on the first ``n`` records with a windowed response."""
    picks = [r for r in recs if any(_too_long(onnx, Item(r.conversation, x)) for x in r.responses)][:n]
    with engine.load("default", format="gguf", threads=2) as gg:
        a = score_responses(onnx, picks, policy, bs)
        b = score_responses(gg, picks, policy, bs)
    win_diff = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for p, q in zip(ra, rb, strict=True)
                   if p.windowed for x, y in zip(p.raw, q.raw, strict=True))
    lines = [f"GGUF q8_0 vs ONNX int8 on {len(picks)} JudgeBench pairs with a windowed response "
             f"({sum(p.windowed for row in a for p in row)} windowed responses): max |diff| of a "
             f"window's raw output {win_diff:.3g}", ""]
    lines += ["| policy | max \\|diff\\| of a response's score | same winner |", "|---|---|---|"]
    for agg in WINDOW_AGGS:
        sa, sb = aggregate(a, agg), aggregate(b, agg)
        d = max(abs(x - y) for ra, rb in zip(sa, sb, strict=True) for x, y in zip(ra, rb, strict=True))
        same = sum((ra[0] > ra[1]) == (rb[0] > rb[1]) for ra, rb in zip(sa, sb, strict=True))
        lines.append(f"| window-{agg} | {d:.3g} | {same}/{len(picks)} |")
    return lines + [""]


def _too_long(rm: Scorer, item: Item) -> bool:
    try:
        rm.encode(item)
    except InputTooLongError:
        return True
    return False


def speed(rm: Scorer, pools: list[list[Record]], n: int, repeats: int, seed: int, agg: str) -> list[str]:
    """Records/s of ``Scorer.score`` with ``skip`` and with windows, on the same seeded records,
    the two taking turns in each round, best of ``repeats``."""
    rng = random.Random(seed)
    recs = [r for pool in pools for r in rng.sample(pool, min(n, len(pool)))]
    items = [Item(r.conversation, x) for r in recs for x in r.responses]
    n_long = sum(_too_long(rm, it) for it in items)
    best = {"skip": math.inf, "window": math.inf}
    for _ in range(repeats):
        for mode in best:
            t0 = time.perf_counter()
            rm.score(items, on_too_long=mode, window_agg=agg)
            best[mode] = min(best[mode], time.perf_counter() - t0)
    fitting = sum(1 for r in recs if not any(_too_long(rm, Item(r.conversation, x)) for x in r.responses))
    return [f"{len(recs)} records ({len(items)} responses, {n_long} over the context) drawn with seed "
            f"{seed} from each benchmark above ({n} each at most); `Scorer.score`, batch {rm.batch_size}, "
            f"2 threads; the two modes take turns, best of {repeats}:", "",
            "| mode | best s | records scored | records scored / s | responses / s |", "|---|---|---|---|---|",
            f"| skip (today) | {best['skip']:.1f} | {fitting} | {fitting / best['skip']:.2f} | "
            f"{(len(items) - n_long) / best['skip']:.1f} |",
            f"| window-{agg} | {best['window']:.1f} | {len(recs)} | {len(recs) / best['window']:.2f} | "
            f"{len(items) / best['window']:.1f} |",
            "", f"Time ratio window / skip: {best['window'] / best['skip']:.2f}x.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write (else stdout)")
    ap.add_argument("--max-records", type=int, default=300, help="seeded subset size for Auto-J and RMB")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gguf-pairs", type=int, default=24)
    ap.add_argument("--speed-records", type=int, default=8, help="records per benchmark in the speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated labels (default: all)")
    ap.add_argument("--window-tokens", type=int, default=None)
    ap.add_argument("--window-stride", type=int, default=None)
    args = ap.parse_args(argv)
    cmd = "    .venv/bin/python bench/long_inputs.py " + shlex.join(sys.argv[1:])
    lines: list[str] = []
    pools: list[list[Record]] = []
    t_start = time.time()
    with engine.load("default", threads=2) as rm:
        policy = rm.window_policy("mean", args.window_tokens, args.window_stride)
        lines += [f"Model: the built-in default, `--model default` ({rm.info.format} {rm.info.dtype}, "
                  f"{rm.info.max_length} tokens of context, length control beta {rm.info.length_correction}). "
                  f"Windows: {policy.size} response tokens every {policy.stride} "
                  f"(policy `{policy.name.replace('mean', 'AGG')}`), each beside the conversation cut from "
                  "its start. Accuracies in %; the baselines are scored on every record. RM-Bench "
                  "columns are its easy / normal / hard accuracies, RMB's its pairwise and Best-of-N.", ""]
        judge = None
        for label, spec, sub in BENCHES:
            if args.only and label not in args.only.split(","):
                continue
            fmt_spec, _, rel = spec.partition(":")
            fmt, recs = records_of(f"{fmt_spec}:{DATA / rel}", args.max_records if sub else None, args.seed)
            t0 = time.perf_counter()
            responses = score_responses(rm, recs, policy, args.batch_size)
            dt = time.perf_counter() - t0
            print(f"{label}: {len(recs)} records in {dt:.0f} s", file=sys.stderr, flush=True)
            lines += table(label + (f" (seeded subset of {len(recs)})" if sub else ""), fmt, recs, responses)
            d = check_engine(rm, recs, responses, "mean")
            lines += [f"Scored in {dt:.0f} s. Check: these values against `Scorer.score(on_too_long=\"window\")` "
                      f"on up to 8 windowed responses: max |diff| {d:.3g}.", ""]
            pools.append(recs)
            if fmt == "judgebench":
                judge = recs
        if args.speed_records:
            lines += ["## Speed", ""] + speed(rm, pools, args.speed_records, args.repeats, args.seed, "mean")
        if judge is not None and args.gguf_pairs:
            lines += ["## GGUF parity", ""] + gguf_parity(rm, judge, args.gguf_pairs, policy, args.batch_size)
    lines += [f"Total {time.time() - t_start:.0f} s on 2 cores shared with other jobs.", "",
              "Command:", "", cmd, ""]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text("# Long inputs: windows over the response\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
