"""Writing results: a JSON file, a markdown table, and PNG plots.

matplotlib is imported only inside :func:`write_plots` (with the Agg backend), so the
rest of evaluation works on a machine without it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: leaves left out of the markdown table (counts, matrices, curves shown elsewhere)
_HIDDEN = re.compile(r"^(n|n_.*|matrix|oracle|detail|unknown_subsets|edges|.*_hist)$")
COLUMNS = ("model", "random", "longer", "shorter")


def jsonable(obj: Any) -> Any:
    """NaN and infinities -> null (JSON has no NaN); tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(jsonable(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def flatten(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Numeric leaves as ('by_category/math/accuracy', 83.9); a best-of-K curve as curve@K."""
    for k, v in metrics.items():
        if _HIDDEN.match(str(k)):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, name + "/")
        elif k == "curve" and isinstance(v, list):
            for i, x in enumerate(v, start=1):
                yield f"{prefix}best_of_{i}", x
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield name, float(v)


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """One table per benchmark: rows are metrics, columns the model and the baselines."""
    model = result["model"]
    kind = " ".join(x for x in (model.get("format"), model.get("dtype")) if x)
    lines = [f"# Evaluation: {model['name']}" + (f" ({kind})" if kind else ""), ""]
    for b in result["benchmarks"]:
        cols = [c for c in COLUMNS if c in b["metrics"]]
        lines.append(f"## {b['name']} ({b['format']})")
        lines.append("")
        note = f"{b['records']} records, {b['skipped']} skipped (too long for the model)"
        if b.get("policy"):  # a window policy scores long responses instead of skipping them
            note += f"; policy: {b['policy']}, {b['windowed']} windowed (a response over the context)"
        if b.get("ties"):
            note += f", {b['ties']} ties excluded from accuracy"
        lines += [note, ""]
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        rows: dict[str, dict[str, float]] = {}
        for c in cols:
            for name, v in flatten(b["metrics"][c]):
                rows.setdefault(name, {})[c] = v
        for name, vals in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(vals.get(c)) for c in cols) + " |")
        diag = b.get("diagnostics", {})
        if "length_bias" in diag:
            lb = diag["length_bias"]
            lines += ["", f"Length bias: accuracy {_fmt(lb['chosen_longer']['accuracy'])} when the chosen "
                      f"response is longer (n={lb['chosen_longer']['n']}), "
                      f"{_fmt(lb['chosen_shorter']['accuracy'])} when shorter (n={lb['chosen_shorter']['n']}); "
                      f"score-length Spearman {diag['score_length_correlation']['spearman']:.3f}."]
        if "style_gap" in diag:
            lines += ["", f"Style bias (RM-Bench hard - normal): {_fmt(diag['style_gap']['overall'])} points."]
        lines.append("")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "bench"


def png_writer(out_dir: Path) -> tuple[Any, Callable[[Any, str], None], list[Path]]:
    """pyplot on the Agg backend (no display), and ``save(fig, name)`` that writes a PNG into
    ``out_dir``, closes the figure and records the path in the returned list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    return plt, save, written


def write_plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG plots per benchmark: Best-of-K curves, per-category bars, score histograms."""
    plt, save, written = png_writer(out_dir)

    for b in result["benchmarks"]:
        slug = _slug(b["name"])
        metrics = b["metrics"]
        if "curve" in metrics["model"]:
            fig, ax = plt.subplots(figsize=(6, 4))
            for col, m in metrics.items():
                ax.plot(range(1, len(m["curve"]) + 1), m["curve"], marker="o", label=col)
            ax.plot(range(1, len(metrics["model"]["oracle"]) + 1), metrics["model"]["oracle"], "k--",
                    label="oracle (any correct)")
            ax.set(xlabel="K samples", ylabel="best-of-K accuracy (%)", title=f"{b['name']}: Best-of-K")
            ax.legend()
            save(fig, f"{slug}_best_of_k.png")
        cats = metrics["model"].get("by_category") or metrics["model"].get("pairwise_by_category")
        if cats:
            names = list(cats)
            fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
            width = 0.8 / len(metrics)
            key = "avg" if "avg" in next(iter(cats.values())) else "accuracy"
            for i, (col, m) in enumerate(metrics.items()):
                mc = m.get("by_category") or m.get("pairwise_by_category") or {}
                vals = [(mc.get(n) or {}).get(key, math.nan) for n in names]
                ax.bar([x + i * width for x in range(len(names))], vals, width, label=col)
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))])
            ax.set_xticklabels([n[-30:] for n in names], rotation=60, ha="right", fontsize=7)
            ax.set(ylabel=f"{key} (%)", title=f"{b['name']}: per category")
            ax.legend(fontsize=7)
            save(fig, f"{slug}_categories.png")
        dist = b.get("diagnostics", {}).get("distributions")
        if dist and dist.get("edges"):
            fig, ax = plt.subplots(figsize=(6, 4))
            edges = dist["edges"]
            for label in ("chosen", "rejected"):
                ax.stairs(dist[f"{label}_hist"], edges, label=label, fill=False)
            ax.set(xlabel="score (model)", ylabel="responses", title=f"{b['name']}: score distribution")
            ax.legend()
            save(fig, f"{slug}_scores.png")
    return written
