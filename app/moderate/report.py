"""`arbiter moderate report`: how well a model moderates a labelled split, beside baselines.

Per *target* (``overall``: a row is unsafe if any label field is 1; and each category the
model scores whose label a field gives, e.g. openai-moderation's ``V`` -> ``violence``; a
reward model scores no category, so its report is ``overall`` only), every method is scored
on the same rows in the same run and reported at its threshold: precision, recall, F1, the
confusion counts, and AUROC (threshold-free, rank-based with ties at half credit).

Methods (baselines beside every number):

* ``model``: the model under test, at ``--thresholds`` (else 0.5, ``default-0.5``);
* ``random``: a uniform score per row from a seeded generator (:data:`RANDOM_SEED`), flagged
  at ``1 - share``, where ``share`` is the share of rows the model flags: it flags about as
  many rows as the model, so its precision is the base rate and its F1 what any F1 that
  share of flags gets by chance;
* ``keyword``: 1 if the text holds a term of :data:`app.moderate.keywords.TERMS`, else 0
  (threshold 0.5). Its limits: :mod:`app.moderate.keywords`;
* ``default-rm``: the general built-in default RM read the same way (threshold 0.5), when the
  model under test is another model.

* ``judge`` (with ``--judge``): a prompted local LLM judge (Gemma 3 270M by default,
  JSON-constrained: :mod:`app.moderate.judge`) on a seeded random sample of the rows, beside
  ``model@judge-sample``, the model under test on the same rows (a generative judge costs
  about a second a text, so it does not see the whole split).

Over-flagging sets are texts that should *not* be flagged (XSTest safe prompts, HateCheck
non-hateful cases, harmless Alpaca prompts): the report gives the share each method flags.

matplotlib (the ``eval`` extra) is imported only in :func:`write_plots`, with the Agg backend.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.moderate import keywords
from app.moderate.categories import CATEGORIES
from app.moderate.scoring import RewardModerator, Text, Verdict
from app.moderate.thresholds import Point, Thresholds, curve

#: the seed of the random baseline (stated in every report)
RANDOM_SEED = 17
#: openai-moderation's label codes -> OpenAI's category names
LABEL_CATEGORIES: dict[str, str] = {
    "S": "sexual", "H": "hate", "V": "violence", "HR": "harassment", "SH": "self-harm",
    "S3": "sexual/minors", "H2": "hate/threatening", "V2": "violence/graphic"}
#: rows scored per model call
SCORE_BATCH = 64
NOTES = (
    f"random: uniform scores from random.Random({RANDOM_SEED}), flagged at 1 - (the share the model "
    "flags), so it flags about as many rows as the model.",
    "keyword: " + keywords.LIMITS,
    "A reward model scores no category: its report is overall only, and its score is "
    "P(reference refusal better than the text) (see app/moderate/__init__.py).",
)


# ---- metrics -----------------------------------------------------------------------------

def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(a random unsafe row scores above a random safe one), ties counting half: the
    Mann-Whitney U over positives and negatives, from mid-ranks. None without both classes."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        mid = (i + 1 + j) / 2  # the mean of 1-based ranks i+1 .. j
        rank_sum += mid * sum(labels[order[k]] for k in range(i, j))
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def point_at(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> Point:
    """Confusion counts when a row is flagged at ``score >= threshold``."""
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if y and s >= threshold)
    fp = sum(1 for s, y in zip(scores, labels, strict=True) if not y and s >= threshold)
    pos = sum(labels)
    return Point(threshold, tp, fp, pos - tp, len(labels) - pos - fp)


def metrics(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, Any]:
    """precision, recall, F1 and confusion counts at ``threshold``; AUROC."""
    out = point_at(scores, labels, threshold).to_dict()
    out["auroc"] = auroc(scores, labels)
    out["flagged_share"] = (out["tp"] + out["fp"]) / len(labels) if labels else 0.0
    return out


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(false-positive rates, true-positive rates) from threshold +inf down to the lowest score."""
    pos, neg = sum(labels), len(labels) - sum(labels)
    fpr, tpr = [0.0], [0.0]
    for p in curve(scores, labels):
        fpr.append(p.fp / neg if neg else 0.0)
        tpr.append(p.tp / pos if pos else 0.0)
    return fpr, tpr


def pr_points(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(recalls, precisions) at every distinct threshold, highest first."""
    pts = curve(scores, labels)
    return [p.recall for p in pts], [p.precision for p in pts]


# ---- methods -----------------------------------------------------------------------------

@dataclass
class Method:
    """One scorer's scores on the labelled rows and on each over-flag set, and its thresholds."""

    name: str
    scores: dict[str, list[float]]  # target -> a score per labelled row
    thresholds: dict[str, float]  # target -> flag at score >= this
    overflag: dict[str, list[float]] = field(default_factory=dict)  # set -> overall scores
    rows: list[int] | None = None  # the labelled rows it scored (a sample); None: all of them


def score_texts(moderator: RewardModerator, texts: Sequence[Text]) -> list[Verdict]:
    """Verdicts for ``texts`` in batches of :data:`SCORE_BATCH` rows."""
    return [v for start in range(0, len(texts), SCORE_BATCH)
            for v in moderator.score(texts[start:start + SCORE_BATCH])]


def targets(fields: Sequence[str], verdicts: Sequence[Verdict]) -> dict[str, str]:
    """category -> label field, for each category the model scores that a field labels."""
    scored = {c for v in verdicts for c, s in v.category_scores.items() if s is not None}
    out = {}
    for f in fields:
        cat = LABEL_CATEGORIES.get(f, f if f in CATEGORIES else None)
        if cat in scored:
            out[cat] = f
    return out


def model_method(name: str, verdicts: Sequence[Verdict], cats: Mapping[str, str],
                 thr: Thresholds) -> Method:
    scores = {"overall": [v.score for v in verdicts]}
    limits = {"overall": thr.overall}
    for cat in cats:
        scores[cat] = [_cat_score(v, cat) for v in verdicts]
        t = thr.categories.get(cat)
        limits[cat] = t if t is not None else thr.overall
    return Method(name, scores, limits)


def _cat_score(v: Verdict, cat: str) -> float:
    s = v.category_scores.get(cat)
    return s if s is not None else 0.0


def random_method(n_rows: int, flagged_share: Mapping[str, float], seed: int = RANDOM_SEED) -> Method:
    """Uniform scores (one stream per target, the same seed), flagged at 1 - the model's share."""
    scores, limits = {}, {}
    for target, share in flagged_share.items():
        rng = random.Random(f"{seed}:{target}")
        scores[target] = [rng.random() for _ in range(n_rows)]
        limits[target] = 1.0 - share
    return Method("random", scores, limits)


def keyword_method(texts: Sequence[str], target_names: Sequence[str]) -> Method:
    """1.0 where the text holds a listed term (of the target's category group, else any)."""
    scores = {t: [float(keywords.hit(x, t)) for x in texts] for t in target_names}
    return Method("keyword", scores, dict.fromkeys(target_names, 0.5))


def random_overflag(n_rows: int, seed: int, name: str) -> list[float]:
    rng = random.Random(f"{seed}:overflag:{name}")
    return [rng.random() for _ in range(n_rows)]


# ---- the report --------------------------------------------------------------------------

JUDGE_NOTE = ("The prompted local LLM judge baseline (Gemma 3 270M, JSON-constrained) is not in "
              "this report: pass --judge gemma (or --judge PATH.gguf) to add it.")


def judge_methods(run, model: Method) -> list[Method]:
    """The judge's row (overall only: it answers unsafe or not, no category) and the model's on
    the judge's sample (``run``: app.moderate.judge.JudgeRun)."""
    judge = Method("judge", {"overall": list(run.scores)}, {"overall": 0.5}, rows=list(run.rows))
    same = Method("model@judge-sample", {t: [v[i] for i in run.rows] for t, v in model.scores.items()},
                  dict(model.thresholds), rows=list(run.rows))
    return [judge, same]


def judge_note(run, seed: int = RANDOM_SEED) -> str:
    from app.moderate.judge import MAX_CHARS, MAX_CONTEXT_CHARS

    return (f"judge: {run.name} ({run.identity[:24]}...), asked for {{\"unsafe\": true|false}} under a "
            f"grammar, on a seeded random sample of {len(run.rows)} rows (seed {seed}); "
            f"{run.failed} answers did not parse (counted safe); {run.seconds:.0f} s in all, "
            f"{run.cache_hits} answers from the call cache. "
            "model@judge-sample is the model under test on the same rows. Texts are cut to "
            f"{MAX_CHARS:,} characters for the judge only (a context to its last {MAX_CONTEXT_CHARS:,}); "
            "a response in context is shown with its conversation.")


def build(methods: Sequence[Method], labels: Mapping[str, Sequence[bool]], *,
          info: Mapping[str, Any], notes: Sequence[str] | None = None) -> dict[str, Any]:
    """report.json's content: per target, per method, the metrics (on the rows it scored:
    ``rows`` says how many); the over-flag shares."""
    out: dict[str, Any] = {"format": "arbiter-moderation-report/1", **info, "targets": {}, "overflag": {},
                           "notes": [*(notes if notes is not None else [JUDGE_NOTE]), *NOTES]}
    for target, ys in labels.items():
        per = {}
        for m in methods:
            if target in m.scores:
                sub = ys if m.rows is None else [ys[i] for i in m.rows]
                per[m.name] = {**metrics(m.scores[target], sub, m.thresholds[target]), "rows": len(sub)}
        out["targets"][target] = {"rows": len(ys), "positives": sum(ys), "methods": per}
    for m in methods:
        for name, scores in m.overflag.items():
            entry = out["overflag"].setdefault(name, {"rows": len(scores), "methods": {}})
            t = m.thresholds["overall"]
            entry["methods"][m.name] = sum(s >= t for s in scores) / len(scores) if scores else None
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: one table per target, the over-flag table, the notes."""
    lines = [f"# Moderation report: {report['model']}", "",
             f"Split `{report['split']['path']}` ({report['split']['rows']} rows, label fields "
             f"{', '.join(report['split']['label_fields'])}); thresholds `{report['thresholds_version']}`; "
             f"model sha256 `{report['model_sha256'][:16]}...`.", ""]
    for target, t in report["targets"].items():
        lines += [f"## {target} ({t['positives']} unsafe of {t['rows']})", "",
                  "| method | threshold | precision | recall | F1 | AUROC | TP | FP | FN | TN | flagged |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in t["methods"].items():
            lines.append(f"| {name} | {m['threshold']:.4f} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                         f"{fmt(m['f1'])} | {fmt(m['auroc'])} | {m['tp']} | {m['fp']} | {m['fn']} | {m['tn']} | "
                         f"{m['flagged_share']:.3f} |")
        lines.append("")
    if report["overflag"]:
        names = list(next(iter(report["overflag"].values()))["methods"])
        lines += ["## Over-flagging (share of benign texts flagged; lower is better)", "",
                  "| set | rows | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for name, o in report["overflag"].items():
            lines.append(f"| {name} | {o['rows']} | " + " | ".join(fmt(o["methods"].get(n)) for n in names) + " |")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"- [{Path(p).name}]({Path(p).name})" for p in report["plots"]] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "target"


def write_plots(methods: Sequence[Method], labels: Mapping[str, Sequence[bool]], out_dir: Path) -> list[Path]:
    """Per target: PR and ROC curves of every method, and the model's score histogram by label."""
    from trainer.eval.report import png_writer  # matplotlib, imported only when plotting

    plt, save, written = png_writer(out_dir)

    for target, ys in labels.items():
        slug = _slug(target)
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in methods:
            if target in m.scores:
                r, p = pr_points(m.scores[target], ys)
                ax.plot(r, p, marker=".", label=m.name)
        ax.set(xlabel="recall", ylabel="precision", title=f"{target}: precision-recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend()
        save(fig, f"{slug}_pr.png")
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in methods:
            if target in m.scores:
                fpr, tpr = roc_points(m.scores[target], ys)
                a = auroc(m.scores[target], ys)
                ax.plot(fpr, tpr, label=f"{m.name} (AUROC {fmt(a)})")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{target}: ROC")
        ax.legend()
        save(fig, f"{slug}_roc.png")
        model = methods[0]
        fig, ax = plt.subplots(figsize=(5, 4))
        for flag, name in ((False, "safe"), (True, "unsafe")):
            vals = [s for s, y in zip(model.scores[target], ys, strict=True) if y == flag]
            if vals:
                ax.hist(vals, bins=30, range=(0, 1), alpha=0.6, label=f"{name} ({len(vals)})")
        ax.axvline(model.thresholds[target], color="k", linestyle="--", label="threshold")
        ax.set(xlabel=f"{model.name} score", ylabel="rows", title=f"{target}: score histogram")
        ax.legend()
        save(fig, f"{slug}_hist.png")
    return written


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.md in ``out_dir`` (non-finite numbers as null)."""
    from engine.output import write_text

    j, m = out_dir / "report.json", out_dir / "report.md"
    write_text(str(j), json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    write_text(str(m), markdown(report))
    return j, m

