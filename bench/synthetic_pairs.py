"""How the built-in default model does on each family of synthetic pairs (issue 16, lever "Data").

    .venv/bin/python bench/synthetic_pairs.py --per-family 300 --seed 0 [--out bench/results/synthetic_pairs.md]

Makes the pairs exactly as ``arbiter data synthesize`` does (trainer/data/synthetic.py), scores
both answers with ``--model default`` as ONNX (raw output, and length-controlled as shipped),
and prints a Markdown table: pairs per family and edit kind, accuracy (chosen scored above
rejected; ties count half), the longer-wins baseline (= the share where chosen is longer),
and what decontamination dropped. No training: this shows which failure modes the shipped
model has, before any run trains on these pairs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def accuracy(pairs: list[tuple[float, float]]) -> float:
    """Percent of pairs whose chosen score is higher (a tie counts half)."""
    return 100.0 * sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / max(1, len(pairs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-family", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)

    import engine
    from engine.types import Item
    from trainer.data import synthetic

    t0 = time.perf_counter()
    stats = synthetic.SynthesisStats()
    pairs = list(synthetic.synthesize(synthetic.load_pools(args.data), per_family=args.per_family, seed=args.seed,
                                      decontaminator=synthetic.decontaminator_for(args.data), stats=stats))
    t_make = time.perf_counter() - t0
    items = [Item(p.conversation, r) for p in pairs for r in (p.chosen, p.rejected)]
    scores: dict[str, list[float]] = {}
    t1 = time.perf_counter()
    with engine.load("default", format="onnx", threads=args.threads) as rm:
        model = f"{rm.info.format} {rm.info.dtype}"
        for name, control in (("raw", False), ("controlled", True)):
            rm.length_control = control
            scores[name] = [s.value for s in rm.score(items, batch_size=16, on_too_long="skip")]
    t_score = time.perf_counter() - t1

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    too_long = 0
    for k, p in enumerate(pairs):
        if any(math.isnan(scores["raw"][2 * k + j]) for j in (0, 1)):
            too_long += 1
            continue
        fam = p.attributes["synthetic"]["family"]
        kind = synthetic._edit_kind(p.attributes["synthetic"]["edit"])
        for key in ((fam, "all"), (fam, kind), ("all", "all")):
            groups[key].append(k)

    def row(key: tuple[str, str]) -> str:
        ks = groups[key]
        acc = {n: accuracy([(s[2 * k], s[2 * k + 1]) for k in ks]) for n, s in scores.items()}
        flags = [pairs[k].chosen_longer for k in ks if pairs[k].chosen_longer is not None]
        longer = 100.0 * sum(flags) / max(1, len(flags))
        label = f"**{key[0]}**" if key[1] == "all" else f"{key[0]}: {key[1]}"
        return f"| {label} | {len(ks)} | {acc['raw']:.1f} | {acc['controlled']:.1f} | {longer:.1f} |"

    fams = [f for f in synthetic.FAMILIES if (f, "all") in groups]
    lines = ["| family: edit | pairs | accuracy raw % | accuracy length-controlled % | chosen longer % "
             "(= longer-wins accuracy) |", "|---|---|---|---|---|"]
    for f in fams:
        lines.append(row((f, "all")))
        lines += [row(key) for key in sorted(groups) if key[0] == f and key[1] != "all"]
    lines.append(row(("all", "all")))
    summary = stats.to_dict()
    dropped = "; ".join(f"{f}: {sum(r.values())} ({', '.join(f'{k} {v}' for k, v in r.items())})"
                        for f, r in summary["removed"].items() if r) or "none"
    by_bench = ", ".join(f"{Path(k).relative_to(args.data) if k.startswith(str(args.data)) else k} {v}"
                         for k, v in summary["contaminated_by"].items())
    text = "\n".join([
        f"Model: `--model default` ({model}), {args.threads} threads. Pairs: `--per-family {args.per_family} "
        f"--seed {args.seed}`; made {sum(stats.made.values())}, kept {sum(stats.kept.values())} "
        f"({', '.join(f'{f} {stats.kept[f]}' for f in fams)}); {too_long} pairs over 512 tokens left out of "
        "the accuracies.", "",
        *lines, "",
        f"Dropped by hygiene: {dropped}. Decontamination hits by benchmark: {by_bench or 'none'}.",
        f"Chosen longer, whole set: {100 * (stats.share_longer() or 0):.1f}%. Making took {t_make:.0f} s, "
        f"scoring {len(items)} responses twice {t_score:.0f} s.",
    ])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
