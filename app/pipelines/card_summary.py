"""The default model card's summary: every dev benchmark's headline numbers in one table, beside
random / longer-wins / shorter-wins, with the obvious cases and the gold set, and their average.

Why one table: the issue that asks for a better default measures it by these rows (above random
and both length baselines on each, and the average against the previous build), so the card,
``bench/default_candidates.py`` and the README read the same rows from the same code.

Accuracies are in % (0-100). A benchmark's rows come from ``trainer.eval`` results as users run
the model (``arbiter eval``); the gold rows from the held-out human pairs, length-balanced (the
mean of the chosen-longer and chosen-shorter accuracies, on which either length baseline is 50).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COLUMNS = ("model", "random", "longer", "shorter")

#: per card benchmark: (row label, metric name as ``trainer.eval.report.flatten`` spells it)
HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "llmbar": (("LLMBar Natural", "by_category/LLMBar/Natural/accuracy"),
               ("LLMBar Adversarial (Neighbor)", "by_category/Adversarial/Neighbor/accuracy")),
    "rm-bench": (("RM-Bench easy", "easy"), ("RM-Bench normal", "normal"), ("RM-Bench hard", "hard")),
    "judgebench": (("JudgeBench", "accuracy"),),
    "autoj": (("Auto-J pairwise", "accuracy"),),
    "rmb": (("RMB pairwise", "pairwise/accuracy"), ("RMB Best-of-N", "bon/accuracy")),
    "obvious": (("Obvious cases (app/data/obvious_cases.jsonl)", "accuracy"),),
}

Row = tuple[str, dict[str, float], str]  # label, {column: accuracy %}, a note (n, skipped)


def headline_rows(name: str, result: dict[str, Any]) -> list[Row]:
    """The headline rows of one ``run_model`` result (one benchmark), those it has."""
    from trainer.eval.report import flatten

    out: list[Row] = []
    for b in result["benchmarks"]:
        flat = {c: dict(flatten(b["metrics"][c])) for c in COLUMNS if c in b["metrics"]}
        note = f"{b['records']} records, {b['skipped']} skipped"
        for label, metric in HEADLINES.get(name, ()):
            vals = {c: flat[c][metric] for c in flat if metric in flat[c]}
            if "model" in vals:
                out.append((label, vals, note))
    return out


def score_gold(rm, gold_file: Path) -> tuple[list, list[float], list[float], int] | None:
    """The held-out gold pairs scored as the model runs (length control on), scored once for every
    gold figure of the card: the pairs that fit, their chosen and rejected scores, and how many of
    all the pairs were skipped as too long. None without a gold file."""
    from engine.types import Item
    from trainer.data.record import read_pairs

    if not gold_file.is_file():
        return None
    pairs = [p for p in read_pairs(gold_file) if not p.tie]
    s = [x.value for x in rm.score([Item(p.conversation, r) for p in pairs for r in (p.chosen, p.rejected)],
                                   on_too_long="skip")]
    keep = [k for k in range(len(pairs)) if not (math.isnan(s[2 * k]) or math.isnan(s[2 * k + 1]))]
    return [pairs[k] for k in keep], [s[2 * k] for k in keep], [s[2 * k + 1] for k in keep], len(pairs) - len(keep)


def gold_row(scored: tuple[list, list[float], list[float], int] | None) -> Row | None:
    """Length-balanced accuracy on the gold pairs (:func:`score_gold`) beside the baselines scored on
    the same pairs."""
    import random

    from trainer.bt.metrics import pair_metrics

    if scored is None:
        return None
    pairs, chosen, rejected, skipped = scored
    longer = [p.chosen_longer for p in pairs]
    rng = random.Random(0)  # the random baseline: one seeded coin per pair
    scores = {
        "model": (chosen, rejected),
        "random": ([rng.random() for _ in pairs], [rng.random() for _ in pairs]),
        "longer": ([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs]),
        "shorter": ([-len(p.chosen) for p in pairs], [-len(p.rejected) for p in pairs]),
    }
    vals = {c: 100 * pair_metrics(a, b, longer)["accuracy_length_balanced"] for c, (a, b) in scores.items()}
    return ("Gold, human pairs held out (length-balanced)", vals, f"{len(pairs) + skipped} pairs, {skipped} skipped")


def obvious_result(rm, out_dir: Path) -> dict[str, Any]:
    """``arbiter eval pairwise:app/data/obvious_cases.jsonl`` for this model (41 pairs)."""
    from app.obvious import OBVIOUS_CASES
    from trainer.eval.runner import run_model

    return run_model(rm, [f"pairwise:{OBVIOUS_CASES}"], out_dir=out_dir, plots=False).result


def demo_probability(rm) -> float:
    """P(A better than B) for the app's demo pair, the screenshot's number."""
    from app.obvious import demo_pair
    from engine.types import Item

    d = demo_pair()
    a, b = (x.value for x in rm.score([Item.of(d.conversation, d.a), Item.of(d.conversation, d.b)]))
    return 1 / (1 + math.exp(-(a - b)))


def average(rows: list[Row]) -> dict[str, float]:
    """The unweighted mean of every row, per column (a column missing from a row is left out)."""
    out = {}
    for c in COLUMNS:
        vals = [v[c] for _, v, _ in rows if c in v]
        if len(vals) == len(rows):
            out[c] = sum(vals) / len(vals)
    return out


def markdown(rows: list[Row]) -> str:
    """The summary table: a row per headline, then the average, with the model's margin over the
    best baseline of each row."""
    lines = ["| benchmark | model | random | longer wins | shorter wins | model - best baseline | n |",
             "|---|---|---|---|---|---|---|"]
    for label, v, note in [*rows, ("**average**", average(rows), f"{len(rows)} rows")]:
        best = max(v.get(c, -math.inf) for c in COLUMNS[1:])
        cells = " | ".join(f"{v[c]:.1f}" if c in v else "" for c in COLUMNS)
        lines.append(f"| {label} | {cells} | {v['model'] - best:+.1f} | {note} |")
    return "\n".join(lines)


def weaknesses(rows: list[Row], obvious: dict[str, Any] | None = None) -> str:
    """The known weaknesses, in words, from the rows themselves: every row where a baseline does
    at least as well as the model, and the obvious-case categories it gets wrong."""
    from trainer.eval.report import flatten

    names = {"random": "random", "longer": "longer-wins", "shorter": "shorter-wins"}
    lines = []
    for label, v, _ in rows:
        beaten = [f"{names[c]} {v[c]:.1f}" for c in names if c in v and v[c] >= v["model"]]
        if beaten:
            lines.append(f"- {label}: {v['model']:.1f}, not above {', '.join(beaten)}.")
    if obvious is not None:
        flat = dict(flatten(obvious["benchmarks"][0]["metrics"]["model"]))
        wrong = [f"{k.split('/')[1]} {v:.0f}%" for k, v in flat.items()
                 if k.startswith("by_category/") and k.endswith("/accuracy") and v < 100]
        if wrong:
            lines.append(f"- Obvious cases it still gets wrong, by category (accuracy): {', '.join(wrong)}.")
    return "\n".join(lines) if lines else "- None of the rows above: the model beats every baseline on each."


def cache_file(cache: Path, model: Path, *, gold: Path | None, rmb_limit: int, data: Path) -> Path:
    """Where one model's summary rows are kept: keyed by the sha256 of every file of the model and
    the settings, so the card's own evaluation and ``bench/default_candidates.py`` share them."""
    import hashlib
    import json

    from engine.files import sha256_file

    files = sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() else [model]
    digest = [(str(p.relative_to(model)) if model.is_dir() else p.name, sha256_file(p)) for p in files]
    key = json.dumps([digest, str(Path(gold).resolve()) if gold else None, rmb_limit, str(Path(data).resolve())])
    return cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def save_rows(file: Path, rows: list[Row], demo: float, seconds: float) -> None:
    import json

    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps([rows, demo, seconds]))


def load_rows(file: Path) -> tuple[list[Row], float, float] | None:
    import json

    if not file.is_file():
        return None
    rows, demo, seconds = json.loads(file.read_text())
    return [tuple(r) for r in rows], demo, seconds
