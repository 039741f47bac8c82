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

#: RMB is large (2,109 Best-of-N and 8,456 pairwise records): this many of each set, spread evenly
#: through its files (``trainer.eval.runner.spread``), so every category is in the card
RMB_SAMPLE = 300

#: the benchmarks the card reports: (format, path under ../shared/data, a sample size or None = all)
CARD_BENCHMARKS: tuple[tuple[str, str, int | None], ...] = (
    ("llmbar", "llmbar/Dataset/LLMBar", None), ("rm-bench", "rm-bench", None),
    ("judgebench", "judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl", None),
    ("autoj", "auto-j/testdata_pairwise.jsonl", None),
    ("rmb", "rmb/RMB_dataset/Pairwise_set", RMB_SAMPLE), ("rmb", "rmb/RMB_dataset/BoN_set", RMB_SAMPLE))


def card_policy(rm) -> str:
    """How the card treats a response longer than the model reads: as the desktop app does
    (``app/gui/state/session.py::long_response_options``), windows for a cross-encoder, so every
    record is scored; a decoder cuts nothing and skips what exceeds its context."""
    return "window" if rm.windows_long_responses else "skip"


def bench_name(fmt: str, rel: str) -> str:
    """A card benchmark's name in the card's tables: its format, and RMB's set (two entries)."""
    return f"{fmt} ({Path(rel).name})" if fmt == "rmb" else fmt


def card_results(rm, data: Path, out_dir: Path, **run_options: Any):
    """``(format, name, heading, run_model result)`` for each card benchmark, scored under
    :func:`card_policy`; ``name`` is :func:`bench_name`'s; ``run_options`` go to ``run_model`` (a
    store, plots)."""
    from trainer.eval.runner import run_model

    policy = card_policy(rm)
    for fmt, rel, sample in CARD_BENCHMARKS:
        out = run_model(rm, [f"{fmt}:{data / rel}"], out_dir=out_dir / fmt, sample=sample, on_too_long=policy,
                        **{"plots": False, **run_options})
        name = bench_name(fmt, rel)
        yield fmt, name, name + (f": {sample} records spread through it" if sample else ""), out.result


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
        note = (f"{b['records']} records, {b['windowed']} in windows" if b.get("policy")
                else f"{b['records']} records, {b['skipped']} skipped")
        for label, metric in HEADLINES.get(name, ()):
            vals = {c: flat[c][metric] for c in flat if metric in flat[c]}
            if "model" in vals:
                out.append((label, vals, note))
    return out


def coverage(results: list[dict[str, Any]]) -> str:
    """How many of the benchmarks' records fit the model's context, how many needed windows and
    how many were skipped, in words, from ``run_model`` results."""
    benches = [b for r in results for b in r["benchmarks"]]
    records = sum(b["records"] for b in benches)
    windowed = sum(b.get("windowed", 0) for b in benches)
    skipped = sum(b["skipped"] for b in benches)
    return (f"of {records:,} benchmark records, {records - windowed - skipped:,} fit whole, {windowed:,} were "
            f"scored in windows, {skipped:,} skipped")


def prompt_overlap(train_file: Path, data: Path) -> list[tuple[str, int, int]]:
    """For each card benchmark, ``(name, records whose prompt a training pair shares, records)``:
    the same test as the recipe's decontamination (a shared 13-gram, or the whole prompt for one
    too short to hold 13 words), run from the benchmark's side over the records the card scores.
    A clean build gives zeros; a build from before a check existed shows what it let through."""
    from app.obvious import OBVIOUS_CASES
    from trainer.data.record import read_pairs
    from trainer.data.synthetic import PromptDecontaminator
    from trainer.eval.runner import load_records, resolve

    seen = PromptDecontaminator([], 13)
    seen.add_texts((" ".join(m.content for m in p.conversation if m.role == "user") for p in read_pairs(train_file)),
                   "train")
    out = []
    for fmt, rel, sample in (*CARD_BENCHMARKS, ("pairwise", str(OBVIOUS_CASES), None)):
        for bench in resolve([f"{fmt}:{data / rel}"])[0]:
            records = [r for _, _, r in load_records(bench, None, sample)]
            hits = sum(seen.hit(" ".join(m.content for m in r.conversation if m.role == "user")) is not None
                       for r in records)
            name = "obvious cases" if fmt == "pairwise" else bench_name(fmt, rel)
            out.append((name, hits, len(records)))
    return out


def score_gold(rm, gold_file: Path) -> tuple[list, list[float], list[float], int] | None:
    """The held-out gold pairs scored as the model runs (length control on, long responses under
    :func:`card_policy`), scored once for every gold figure of the card: the pairs scored, their
    chosen and rejected scores, and how many of all the pairs were skipped as too long (none when
    the policy is windows). None without a gold file."""
    from engine.types import Item
    from trainer.data.record import read_pairs

    if not gold_file.is_file():
        return None
    pairs = [p for p in read_pairs(gold_file) if not p.tie]
    s = [x.value for x in rm.score([Item(p.conversation, r) for p in pairs for r in (p.chosen, p.rejected)],
                                   on_too_long=card_policy(rm))]
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

    return run_model(rm, [f"pairwise:{OBVIOUS_CASES}"], out_dir=out_dir, plots=False,
                     on_too_long=card_policy(rm)).result


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


def cache_file(cache: Path, model: Path, *, gold: Path | None, data: Path) -> Path:
    """Where one model's summary rows are kept: keyed by the sha256 of every file of the model and
    the settings (the card's benchmarks and samples), so the card's own evaluation and
    ``bench/default_candidates.py`` share them."""
    import hashlib
    import json

    from engine.files import sha256_file

    files = sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() else [model]
    digest = [(str(p.relative_to(model)) if model.is_dir() else p.name, sha256_file(p)) for p in files]
    key = json.dumps([digest, str(Path(gold).resolve()) if gold else None, CARD_BENCHMARKS,
                      str(Path(data).resolve())])
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
