"""`arbiter curate report RUN`: the stage-2 report (trainer/curate/stage2_report.py).

    arbiter curate report RUN [--out DIR] [--no-plots] [--json]

Reads only ``RUN/stage2.db`` (read-only: a run still going is reported as it stands) and writes
``report.md``, ``report.json`` and the p histograms (PNG) into ``RUN/report/`` or ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.common import add_json, emit


def register_report(stages: argparse._SubParsersAction) -> None:
    """Add ``report`` to ``arbiter curate``'s stages."""
    s = stages.add_parser("report", help="a stage-2 run's counts, band, agreement and p histograms",
                          description="arbiter curate report RUN [--out DIR]: reads RUN/stage2.db only")
    add_json(s)
    s.add_argument("run", metavar="RUN", help="the --out folder of `arbiter curate stage2`")
    s.add_argument("--out", default=None, help="where to write the report (default: RUN/report)")
    s.add_argument("--no-plots", dest="plots", action="store_false",
                   help="no PNG histograms (they need matplotlib, the eval extra)")
    s.set_defaults(func=cmd_report)


def _human(report: dict, paths: dict[str, Path]) -> str:
    d, f = report["decisions"], report["flipped"]
    kept, disc, uns = (d.get(k, {}).get("pairs", 0) for k in ("kept", "discarded", "unscored"))
    flipped = f"{f['pairs']} flipped (unverified, apart)" if f["recycle"] else "no flipped (recycling off)"
    return (f"{report['pairs']} pairs: {kept} kept, {disc} discarded, {uns} unscored; {flipped}; "
            f"band {report['band']['band']} ({report['band']['how']})\n"
            f"report: {paths['md']} (and {paths['json'].name}"
            + (", PNG histograms" if len(paths) > 2 else "") + ")")


def cmd_report(args: argparse.Namespace) -> int:
    from trainer.curate.stage2_report import build, write

    report = build(args.run)
    out = Path(args.out) if args.out else Path(report["db"]).parent / "report"
    paths = write(report, out, plots=args.plots)
    emit(args, {**report, "written": {k: str(v) for k, v in paths.items()}}, _human(report, paths))
    return 0
