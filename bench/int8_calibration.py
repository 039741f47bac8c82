"""How static int8 is calibrated, and which layers stay float: error, ranking and speed, side by side.

One trained checkpoint (an HF folder, e.g. a ``default_model --candidate`` build's
``WORK/run/best``) is exported to fp32 ONNX once; then each variant makes its int8 twin
from that fp32 graph with the same calibration items (the probes plus the recipe's
training-pair sample, as ``make default-model`` does). Every variant is scored against
the torch reference on two sets:

* the probe set that ``arbiter export verify`` gates on (40 items, 60 pairs);
* the first ``--gold`` pairs of ``WORK/gold.jsonl`` that fit the model (human-labelled, never
  trained on).

It prints max and mean |score diff|, how often the winner of a pair matches torch's and
the size of ``model.onnx``; then items/s on the gold items on ``--threads`` threads, the
variants and fp32 taking turns (best of ``--repeat``). ``smooth A`` is SmoothQuant with alpha A (exports/smoothquant.py);
``+ K float`` keeps matmuls of kind K float. The ``only-*`` rows keep every weighted matmul float except
one kind: they say which kind carries the int8 error.
Run: ``.venv/bin/python bench/int8_calibration.py --work build/dm-syn20 [--gold 200]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from app.pipelines.default_model import calibration_pairs  # noqa: E402
from engine.types import Item  # noqa: E402
from exports.onnx import Int8Settings, export_onnx, int8_from_fp32  # noqa: E402
from exports.probes import probe_items  # noqa: E402
from exports.verify import compare_pairs  # noqa: E402
from trainer.data.record import read_pairs  # noqa: E402

# the weighted matmuls of a BERT layer, by node name in optimum's export
KINDS = {
    "qkv": r"/attention/self/(query|key|value)/",
    "attn-out": r"/attention/output/dense/",
    "ffn-in": r"/intermediate/dense/",
    "ffn-out": r"layer\.\d+/output/dense/",
}
VARIANTS: dict[str, Int8Settings] = {
    "minmax": Int8Settings(),
    "smooth 0.5": Int8Settings(smooth=0.5),
    "smooth 0.6": Int8Settings(smooth=0.6),
    "smooth 0.7": Int8Settings(smooth=0.7),
    "smooth 0.5 + ffn-out float": Int8Settings(smooth=0.5, keep_float=(KINDS["ffn-out"],)),
    "smooth 0.6 + ffn-out float": Int8Settings(smooth=0.6, keep_float=(KINDS["ffn-out"],)),
    "smooth 0.4 + ffn-out float": Int8Settings(smooth=0.4, keep_float=(KINDS["ffn-out"],)),
    "smooth 0.5 (ffn-out unsmoothed)": Int8Settings(smooth=0.5, smooth_skip=(KINDS["ffn-out"],)),
    "smooth 0.5 + ffn-out float (400 pairs)": Int8Settings(smooth=0.5, keep_float=(KINDS["ffn-out"],)),
    "percentile 99.999": Int8Settings(method="percentile", percentile=99.999),
    "percentile 99.99": Int8Settings(method="percentile", percentile=99.99),
    **{f"minmax + {k} float": Int8Settings(keep_float=(v,)) for k, v in KINDS.items()},
    **{f"only-{k} int8": Int8Settings(keep_float=tuple(p for j, p in KINDS.items() if j != k)) for k in KINDS},
}

#: variants calibrated on more training pairs than the recipe's CALIBRATION_PAIRS
CALIBRATION_PAIRS = {"smooth 0.5 + ffn-out float (400 pairs)": 400}


def _gold_items(work: Path, ckpt: Path, n: int) -> tuple[list[Item], list[tuple[int, int]]]:
    """The first ``n`` gold pairs whose responses both fit the model (a longer one is not scored)."""
    from engine.errors import InputTooLongError

    items: list[Item] = []
    pairs: list[tuple[int, int]] = []
    with engine.load(ckpt, format="torch") as rm:
        for p in read_pairs(work / "gold.jsonl"):
            pair = [Item(p.conversation, p.chosen), Item(p.conversation, p.rejected)]
            try:
                for item in pair:
                    rm.encode(item)
            except InputTooLongError:
                continue
            pairs.append((len(items), len(items) + 1))
            items += pair
            if len(pairs) == n:
                break
    return items, pairs


def _scores(model: Path, items: list[Item], **load) -> np.ndarray:
    with engine.load(model, **load) as rm:
        return np.array([s.value for s in rm.score(items)])


def _rate(model: Path, items: list[Item], threads: int, repeat: int) -> float:
    with engine.load(model, threads=threads) as rm:
        rm.score(items[:16])  # warm-up: allocations, thread pool
        best = 0.0
        for _ in range(repeat):
            start = time.perf_counter()
            rm.score(items)
            best = max(best, len(items) / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a default_model WORK folder (run/best, gold.jsonl)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: WORK/run/best")
    ap.add_argument("--gold", type=int, default=200, help="gold pairs scored beside the probes")
    ap.add_argument("--variants", default="all", help="comma-separated names, or all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ckpt = args.checkpoint or args.work / "run" / "best"
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    if unknown := [n for n in names if n not in VARIANTS]:
        ap.error(f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}")
    probes, probe_pairs = probe_items()
    gold, gold_pairs = _gold_items(args.work, ckpt, args.gold)
    want_p, want_g = _scores(ckpt, probes, format="torch"), _scores(ckpt, gold, format="torch")
    spread = float(np.std(want_g))
    calibration = calibration_pairs(args.work)
    print(f"{ckpt}: {len(gold_pairs)} gold pairs; torch score std on gold {spread:.3f}; reference |margin| < 0.02 on "
          f"{np.mean([abs(want_p[i] - want_p[j]) < 0.02 for i, j in probe_pairs]):.0%} of probe pairs")
    print("| variant | probes max / mean abs diff | probes same winner | gold max / mean abs diff "
          "| gold same winner | MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="arbiter-int8-bench-") as tmp:
        fp32 = export_onnx(ckpt, Path(tmp) / "fp32", prefix=False)
        rows = [("fp32", fp32)]
        for name in names:
            calib = calibration_pairs(args.work, CALIBRATION_PAIRS[name]) if name in CALIBRATION_PAIRS else calibration
            rows.append((name, int8_from_fp32(fp32, Path(tmp) / f"v{len(rows)}", calibration=calib,
                                              prefix=False, int8=VARIANTS[name])))
            _print_row(*rows[-1], probes, probe_pairs, want_p, gold, gold_pairs, want_g)
        _print_row(*rows[0], probes, probe_pairs, want_p, gold, gold_pairs, want_g)
        _print_speeds(rows, gold, args)


def _print_row(name: str, folder: Path, probes, probe_pairs, want_p, gold, gold_pairs, want_g) -> None:
    got_p, got_g = _scores(folder, probes), _scores(folder, gold)
    dp, dg = np.abs(got_p - want_p), np.abs(got_g - want_g)
    mb = (folder / "model.onnx").stat().st_size / 2**20
    print(f"| {name} | {dp.max():.3f} / {dp.mean():.4f} | {compare_pairs(got_p, want_p, probe_pairs).agreement:.1%} "
          f"| {dg.max():.3f} / {dg.mean():.4f} | {compare_pairs(got_g, want_g, gold_pairs).agreement:.1%} | {mb:.1f} |",
          flush=True)


def _print_speeds(rows: list[tuple[str, Path]], items: list[Item], args) -> None:
    """items/s on the gold items, the variants taking turns (best of ``--repeat`` each)."""
    best = dict.fromkeys((name for name, _ in rows), 0.0)
    for _ in range(args.repeat):
        for name, folder in rows:
            best[name] = max(best[name], _rate(folder, items, args.threads, 1))
    print(f"\nspeed: {len(items)} gold items, {args.threads} threads, turns, best of {args.repeat}")
    print("| variant | items/s | vs fp32 |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} | {rate / best['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
