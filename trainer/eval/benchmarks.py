"""Which metric each benchmark format uses, and one benchmark's full evaluation:
the model's metric, the same metric for every baseline, and the diagnostics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trainer.eval.baselines import baseline_scores, has_text
from trainer.eval.diagnostics import distributions, length_bias, score_length_correlation, style_gap
from trainer.eval.items import Scored, complete
from trainer.eval.metrics import accuracy, best_of_k, judgebench, rm_bench, rmb
from trainer.eval.rewardbench import rewardbench_v1, rewardbench_v2

METRICS: dict[str, Callable[[Sequence[Scored]], dict[str, Any]]] = {
    "pairwise": accuracy,
    "llmbar": accuracy,
    "pandalm": accuracy,
    "auto-j": accuracy,
    "rewardbench": rewardbench_v1,
    "rewardbench2": rewardbench_v2,
    "rm-bench": rm_bench,
    "judgebench": judgebench,
    "rmb": rmb,
    "ppe": best_of_k,
}


def evaluate(fmt: str, scored: Sequence[Scored]) -> dict[str, Any]:
    """Metrics for the model and the baselines on the same records, plus diagnostics.

    Records with a response the model could not score (too long for its context) are
    left out of every column, baselines included, and counted in ``skipped``.
    """
    metric = METRICS[fmt]
    usable = complete(scored)
    records = [s.record for s in usable]
    out: dict[str, Any] = {
        "format": fmt, "records": len(scored), "skipped": len(scored) - len(usable),
        "ties": sum(r.tie for r in records),
        "metrics": {"model": metric(usable), **{name: metric(b) for name, b in baseline_scores(records).items()}},
    }
    diag: dict[str, Any] = {"distributions": distributions(usable)}
    if has_text(records):
        diag["length_bias"] = length_bias(usable)
        diag["score_length_correlation"] = score_length_correlation(usable)
    if fmt == "rm-bench" and usable:
        diag["style_gap"] = style_gap(out["metrics"]["model"])
    out["diagnostics"] = diag
    return out
