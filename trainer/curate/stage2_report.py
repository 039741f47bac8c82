"""`arbiter curate report RUN`: what curation stage 2 decided, from ``RUN/stage2.db`` alone.

The report reads the run's database and nothing else (no model, no input shard), so it can be
run on a copy, while the run is still going (it reads one consistent snapshot), or long after
the pool is gone. It writes ``report.json`` (every number), ``report.md`` (the same, for a
reader) and two PNGs (``gold_p_hist.png``, ``current_p_hist.png``: the p histograms by
decision).

What it holds, and why each piece is there:

* counts per decision and per (decision, reason): the filter's outcome;
* the flipped pairs counted apart and marked **unverified**: the paper recycles discarded pairs
  by swapping chosen and rejected and calls the gain "purely empirical" (nobody checked the
  flipped labels), so they are never summed into the kept count;
* the band and how it was chosen (the table of band, accuracy, coverage on gold when it was
  measured), since the paper gives no number for "close to 0.5";
* pairwise agreement between four raters of each pair: the original label (always "chosen
  better"), the gold RM and the current RM (the side of 0.5 their p is on) and the judges (their
  label where they were asked and did not abstain), with the counts each rate is over. The
  judges are asked only about pairs the gold RM accepts and the current RM is unsure of, so
  their rates are over that selection, which the report says;
* p histograms (20 bins of 0.05) per decision, in numbers and as PNGs.

Everything is aggregated in SQLite (``GROUP BY``), so memory does not grow with the pool.
An empty class (no judges, no pair kept) is reported as 0 pairs with a rate of null, never a
division by zero. matplotlib is imported only in :func:`write_plots` (the Agg backend).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.store import BUSY_TIMEOUT_S, damaged

DB_NAME = "stage2.db"
FORMAT = "arbiter-stage2-report/1"
#: histogram bins over p in [0, 1] (each 0.05 wide; p = 1.0 falls in the last)
BINS = 20
#: the decisions in report order (any other value a database holds is reported after them)
DECISIONS = ("kept", "discarded", "unscored")
#: reasons whose pairs went to the judges (Filter A: the current RM was not confident)
JUDGED_REASONS = ("gold+judges", "judges_disagree", "judges_tie", "judges_abstain", "no_judge")
#: the tables and columns the report reads (the contract's schema, Part A)
COLUMNS = {
    "meta": ("key", "value"),
    "shards": ("name", "state", "rows", "kept", "discarded", "flipped", "unscored"),
    "decisions": ("decision", "reason", "gold_p", "current_p", "judge_label"),
}
#: the raters compared pairwise, and the SQL that gives each one's label of a decisions row
RATERS: dict[str, str] = {
    "original": "'1'",
    "gold_rm": "CASE WHEN gold_p > 0.5 THEN '1' WHEN gold_p < 0.5 THEN '2' WHEN gold_p = 0.5 THEN 'tie' END",
    "current_rm": ("CASE WHEN current_p > 0.5 THEN '1' WHEN current_p < 0.5 THEN '2' "
                   "WHEN current_p = 0.5 THEN 'tie' END"),
    "judges": "CASE WHEN judge_label IN ('1', '2', 'tie') THEN judge_label END",
}
FLIPPED_NOTE = ("Flipped pairs are discarded pairs with chosen and rejected swapped (label_origin "
                "'flipped'). They are UNVERIFIED: nobody checked the swapped label, and the paper "
                "calls their gain purely empirical (Skywork-Reward-V2, App. A). They are written "
                "apart (flipped/) and never counted as kept.")
AGREEMENT_NOTE = ("Agreement: the original label is always '1' (chosen better, as read); an RM's "
                  "label is the side of 0.5 its p is on (p > 0.5: '1', p < 0.5: '2', 0.5: 'tie'), "
                  "not the band test; the judges' label counts where they were asked and answered. "
                  "Each rate is over the pairs both raters labelled ('both'); null where there are "
                  "none. The judges are asked only about pairs the gold RM accepts and the current "
                  "RM is not confident of, so every rate with the judges is over that selection.")


# ---- reading the database ------------------------------------------------------------------

def db_path(run: str | Path) -> Path:
    """``RUN/stage2.db`` (or RUN itself when it is that file); an InputError naming RUN if the
    folder is missing or holds no stage-2 run (a stage-1 run is recognised and said so)."""
    run = Path(run)
    if run.is_file() and run.name == DB_NAME:
        return run
    if not run.exists():
        raise InputError("no such folder; give the --out folder of `arbiter curate stage2`", source=str(run))
    if not run.is_dir():
        raise InputError(f"not a stage-2 run: give its folder (the one holding {DB_NAME})", source=str(run))
    path = run / DB_NAME
    if not path.is_file():
        hint = " (it holds curation.db: a stage-1 run)" if (run / "curation.db").exists() else ""
        raise InputError(f"not a stage-2 run: no {DB_NAME} in it{hint}; give the --out folder of "
                         "`arbiter curate stage2`", source=str(run))
    return path


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (never creates or migrates anything) with the stores' busy timeout;
    a file that is no SQLite database is a StoreError naming it."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")  # milliseconds
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        if "unable to open" in str(e):  # permissions (a read-only WAL file needs its -shm), not damage
            raise InputError(f"cannot be opened for reading ({e}); check that the file and its folder "
                             "are readable (and the folder writable: SQLite's WAL needs its -shm file)",
                             source=str(path)) from None
        raise damaged(path, e) from None
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Every table and column the report reads is there, else an InputError naming the file."""
    for table, cols in COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise InputError(f"not a stage-2 run database: it has no table '{table}'", source=str(path))
        missing = [c for c in cols if c not in have]
        if missing:
            raise InputError(f"not a stage-2 run database: table '{table}' lacks column(s) "
                             f"{', '.join(missing)}", source=str(path))


def read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The ``meta`` table, each value parsed from JSON; a value that is not JSON names its key."""
    out: dict[str, Any] = {}
    for key, value in conn.execute("SELECT key, value FROM meta"):
        try:
            out[key] = json.loads(value) if isinstance(value, str | bytes) else value
        except json.JSONDecodeError as e:
            raise InputError(f"damaged: meta '{key}' is not JSON ({e.msg})", source=str(path)) from None
    return out


def finite(obj: Any) -> Any:
    """NaN and infinities -> None, recursively (JSON has none; a meta value may hold one)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# ---- the numbers -----------------------------------------------------------------------------

def decision_counts(conn: sqlite3.Connection) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(pairs per decision, [{decision, reason, pairs, share}] per reason), in report order."""
    rows = conn.execute("SELECT decision, reason, COUNT(*) FROM decisions GROUP BY decision, reason").fetchall()
    total = sum(n for _, _, n in rows)
    per: dict[str, int] = dict.fromkeys(DECISIONS, 0)
    for d, _, n in rows:
        per[str(d)] = per.get(str(d), 0) + n
    order = {d: i for i, d in enumerate(per)}
    rows.sort(key=lambda r: (order[str(r[0])], -r[2], str(r[1])))
    reasons = [{"decision": str(d), "reason": str(r), "pairs": n, "share": _rate(n, total)} for d, r, n in rows]
    return per, reasons


def shard_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Per shard its state and output counts, and the totals (flipped is what was written)."""
    cols = ("name", "state", "rows", "kept", "discarded", "flipped", "unscored")
    shards = [dict(zip(cols, r, strict=True))
              for r in conn.execute(f"SELECT {', '.join(cols)} FROM shards ORDER BY name")]
    done = [s for s in shards if s["state"] == "done"]
    return {"total": len(shards), "done": len(done), "unfinished": len(shards) - len(done),
            "flipped_written": sum(s["flipped"] or 0 for s in done), "list": shards}


def judge_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """How many pairs went to the judges (Filter A) and what they answered."""
    marks = ", ".join("?" * len(JUDGED_REASONS))
    rows = conn.execute(f"SELECT reason, judge_label, COUNT(*) FROM decisions WHERE reason IN ({marks}) "
                        "GROUP BY reason, judge_label", JUDGED_REASONS).fetchall()
    labels = {"1": 0, "2": 0, "tie": 0, "abstain": 0}
    no_judge = 0
    for reason, label, n in rows:
        if reason == "no_judge":
            no_judge += n
        else:
            key = label if label in labels else "abstain"
            labels[key] += n
    asked = sum(labels.values())
    return {"needed": asked + no_judge, "asked": asked, "no_judge": no_judge, "labels": labels,
            "agree_with_original": _rate(labels["1"], asked)}


def agreement(conn: sqlite3.Connection) -> dict[str, Any]:
    """Pairwise agreement of :data:`RATERS`: for each two, the pairs both labelled, how many of
    those they gave the same label, and the rate; and per rater the pairs it labelled."""
    names = list(RATERS)
    cols = [f"SUM(({RATERS[n]}) IS NOT NULL)" for n in names]
    duos = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for a, b in duos:
        cols.append(f"SUM(({RATERS[a]}) IS NOT NULL AND ({RATERS[b]}) IS NOT NULL)")
        cols.append(f"SUM(({RATERS[a]}) = ({RATERS[b]}))")
    row = [v or 0 for v in conn.execute(f"SELECT {', '.join(cols)} FROM decisions").fetchone()]
    labelled = dict(zip(names, row[:len(names)], strict=True))
    pairs = []
    for k, (a, b) in enumerate(duos):
        both, same = row[len(names) + 2 * k], row[len(names) + 2 * k + 1]
        pairs.append({"a": a, "b": b, "both": both, "agree": same, "rate": _rate(same, both)})
    return {"labelled": labelled, "pairs": pairs}


def histograms(conn: sqlite3.Connection, decisions: Sequence[str]) -> dict[str, Any]:
    """Counts of gold_p and current_p per decision in :data:`BINS` equal bins over [0, 1]
    (a p outside [0, 1] is counted in the end bin; a missing p is not counted)."""
    edges = [round(i / BINS, 4) for i in range(BINS + 1)]
    out: dict[str, Any] = {"edges": edges}
    for col in ("gold_p", "current_p"):
        per = {d: [0] * BINS for d in decisions}
        q = (f"SELECT decision, MAX(0, MIN(CAST({col} * {BINS} AS INTEGER), {BINS - 1})) AS bin, COUNT(*) "
             f"FROM decisions WHERE {col} IS NOT NULL GROUP BY decision, bin")
        for d, b, n in conn.execute(q):
            per.setdefault(str(d), [0] * BINS)[int(b)] += n
        out[col] = per
    return out


def settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings from ``meta['config']``: the driver stores ``{identity, settings}``; a
    flat dict is read as it is."""
    config = meta.get("config")
    if not isinstance(config, Mapping):
        return {}
    out: dict[str, Any] = {}
    for part in (config, config.get("settings"), config.get("identity")):
        if isinstance(part, Mapping):
            out.update({k: v for k, v in part.items() if not isinstance(v, Mapping)})
    return out


def band_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The band, its setting (``auto`` or a number), the target and the gold table; ``how`` is
    ``measured`` (auto: chosen from the table), ``set`` (by --band; the table is for reference)
    or ``unknown`` (the database records none)."""
    band = meta.get("band")
    if not isinstance(band, Mapping):
        band = {"band": band} if isinstance(band, int | float) else {}
    table = [dict(r) for r in band.get("table") or [] if isinstance(r, Mapping)]
    setting = band.get("setting", settings(meta).get("band"))
    if band.get("band") is None:
        how = "unknown"
    elif setting == "auto" or (setting is None and table):
        how = "measured"
    else:
        how = "set"
    return {"band": band.get("band"), "how": how, "setting": setting, "target": band.get("target"),
            "reached": band.get("reached"), "accuracy": band.get("accuracy"), "coverage": band.get("coverage"),
            "measured_on": band.get("measured_on"), "table": table}


def build(run: str | Path) -> dict[str, Any]:
    """report.json's content for the run at ``run`` (read in one snapshot, read-only)."""
    path = db_path(run)
    conn = connect_ro(path)
    try:
        conn.execute("BEGIN")  # one read transaction: a snapshot, even while the run writes
        check_schema(conn, path)
        meta = read_meta(conn, path)
        per, reasons = decision_counts(conn)
        report = _assemble(conn, meta, per, reasons)
        conn.rollback()
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    finally:
        conn.close()
    report["db"] = str(path)
    return finite(report)


def _assemble(conn: sqlite3.Connection, meta: Mapping[str, Any], per: dict[str, int],
              reasons: list[dict[str, Any]]) -> dict[str, Any]:
    shards = shard_summary(conn)
    total = sum(per.values())
    recycle = bool(settings(meta).get("recycle", True))
    notes = [FLIPPED_NOTE, AGREEMENT_NOTE]
    if shards["unfinished"]:
        notes.append(f"{shards['unfinished']} of {shards['total']} shards are not finished: their decisions "
                     "are counted, their outputs (kept/, flipped/) are not written yet. Rerun the same "
                     "`arbiter curate stage2` command to finish them.")
    if not total:
        notes.append("The run has decided no pair yet: every count is 0 and every rate null.")
    return {
        "format": FORMAT, "round": meta.get("round"), "models": meta.get("models"),
        "judges": [str(j) for j in meta.get("judges") or [] if isinstance(meta.get("judges"), list)],
        "pairs": total,
        "decisions": {d: {"pairs": n, "share": _rate(n, total)} for d, n in per.items()},
        "reasons": reasons,
        "flipped": {"recycle": recycle, "pairs": per.get("discarded", 0) if recycle else 0,
                    "written": shards["flipped_written"], "verified": False},
        "band": band_summary(meta), "judging": judge_summary(conn), "agreement": agreement(conn),
        "histograms": histograms(conn, list(per)), "shards": shards, "notes": notes,
    }


# ---- writing ---------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _measured_on(m: Any) -> str:
    if isinstance(m, Mapping):
        files = ", ".join(f"`{f}`" for f in m.get("files") or [])
        return f"{m.get('pairs', '?')} gold pairs" + (f" of {files}" if files else "")
    return "gold" if m is None else str(m)


def _band_lines(b: Mapping[str, Any]) -> list[str]:
    lines = ["## Band (Filter A)", ""]
    rule = "A pair's current RM is confident when current_p > 0.5 + band; otherwise the judges are asked."
    if b["how"] == "measured":
        reached = {True: "reached", False: "NOT reached by any band on the grid, so the largest was taken",
                   None: "whether it was reached is not recorded"}[b["reached"]]
        lines += [f"Band **{fmt(b['band'])}**, chosen by `--band auto` on {_measured_on(b['measured_on'])}: the "
                  "smallest band on the grid at which the current RM's accuracy on the gold pairs with "
                  f"|p - 0.5| > band reaches the target {fmt(b['target'], 2)} ({reached}). {rule}", ""]
    elif b["how"] == "set":
        lines += [f"Band **{fmt(b['band'])}**, set by hand (`--band {b['band']}`), not chosen from the table. "
                  + rule + (f" The table, measured on {_measured_on(b['measured_on'])}, is for reference."
                            if b["table"] else ""), ""]
    else:
        lines += ["The run's database records no band.", ""]
    if b["table"]:
        counted = all("pairs" in r for r in b["table"])  # gold pairs outside the band, where recorded
        lines += ["| band | accuracy | coverage |" + (" gold pairs outside |" if counted else ""),
                  "|---|---|---|" + ("---|" if counted else "")]
        lines += [f"| {fmt(r.get('band'))}{' (chosen)' if r.get('band') == b['band'] else ''} | "
                  f"{fmt(r.get('accuracy'))} | {fmt(r.get('coverage'))} |" + (f" {r['pairs']} |" if counted else "")
                  for r in b["table"]]
        lines.append("")
    return lines


def _hist_lines(report: Mapping[str, Any]) -> list[str]:
    h = report["histograms"]
    lines = []
    for col in ("gold_p", "current_p"):
        names = [d for d, c in h[col].items() if any(c)]
        lines += [f"### {col}", ""]
        if not names:
            lines += ["No pair has this p.", ""]
            continue
        lines += ["| p | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i in range(BINS):
            lines.append(f"| {h['edges'][i]:.2f}-{h['edges'][i + 1]:.2f} | "
                         + " | ".join(str(h[col][d][i]) for d in names) + " |")
        lines.append("")
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: the counts, the flipped pairs apart, the band, the judges, agreement, histograms."""
    total, sh = report["pairs"], report["shards"]
    lines = ["# Curation stage 2 report", "",
             f"Run database `{report.get('db', DB_NAME)}`; round {fmt(report['round'])}; {total} pairs decided; "
             f"{sh['done']} of {sh['total']} shards done; judges: {', '.join(report['judges']) or 'none'}.", ""]
    models = report.get("models") or {}
    for role in ("gold_rm", "current_rm"):
        m = models.get(role) if isinstance(models, Mapping) else None
        if isinstance(m, Mapping):
            lines.append(f"- {role}: `{m.get('path')}` (sha256 `{str(m.get('sha256', ''))[:16]}...`)")
    lines += ["", "## Decisions", "", "| decision | pairs | share |", "|---|---|---|"]
    lines += [f"| {d} | {v['pairs']} | {pct(v['share'])} |" for d, v in report["decisions"].items()]
    lines += ["", "| decision | reason | pairs | share |", "|---|---|---|---|"]
    lines += [f"| {r['decision']} | {r['reason']} | {r['pairs']} | {pct(r['share'])} |" for r in report["reasons"]]
    f = report["flipped"]
    lines += ["", "## Flipped (UNVERIFIED, counted apart)", "",
              (f"{f['pairs']} discarded pairs recycled as flipped ({f['written']} written to flipped/ so far). "
               if f["recycle"] else "Recycling was off (--no-recycle): no flipped pairs. ") + FLIPPED_NOTE, ""]
    lines += _band_lines(report["band"])
    j = report["judging"]
    lines += ["## Judges", ""]
    if not j["needed"]:
        lines += ["No pair needed the judges.", ""]
    else:
        lines += [f"{j['needed']} pairs needed the judges (gold RM agrees, current RM not confident); "
                  f"{j['asked']} asked, {j['no_judge']} not (no judge configured).", ""]
        if j["asked"]:
            lines += ["| label | pairs |", "|---|---|"] + [f"| {k} | {v} |" for k, v in j["labels"].items()] + [""]
    lines += ["## Agreement (pairwise)", "", "| a | b | both labelled | agree | rate |", "|---|---|---|---|---|"]
    lines += [f"| {p['a']} | {p['b']} | {p['both']} | {p['agree']} | {pct(p['rate'])} |"
              for p in report["agreement"]["pairs"]]
    lines += ["", "## p histograms (pairs per bin, by decision)", ""] + _hist_lines(report)
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"- [{Path(p).name}]({Path(p).name})" for p in report["plots"]] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """gold_p_hist.png and current_p_hist.png: one step histogram per decision (from the binned
    counts, so nothing is re-read), the band's edge drawn on current_p."""
    from trainer.eval.report import png_writer  # matplotlib, imported only when plotting

    plt, save, written = png_writer(out_dir)
    h, band = report["histograms"], report["band"]["band"]
    for col in ("gold_p", "current_p"):
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = 0
        for d, counts in h[col].items():
            if any(counts):
                ax.stairs(counts, h["edges"], label=f"{d} ({sum(counts)})", linewidth=1.5)
                drawn += 1
        ax.axvline(0.5, color="k", linestyle=":", linewidth=0.8)
        if col == "current_p" and isinstance(band, int | float) and band > 0:
            ax.axvline(0.5 + band, color="k", linestyle="--", linewidth=0.8, label=f"0.5 + band ({band:g})")
        if not drawn:
            ax.text(0.5, 0.5, "no scored pairs", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=col, ylabel="pairs", xlim=(0, 1), title=f"{col} by decision")
        if drawn:
            ax.legend()
        save(fig, f"{col}_hist.png")
    return written


def write(report: dict[str, Any], out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """report.json, report.md and (unless ``plots`` is off) the PNGs in ``out_dir``, each atomic."""
    from engine.output import write_text

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("is a file; give a folder for the report (--out)", source=str(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the report folder ({e.strerror})", source=str(out_dir)) from None
    paths: dict[str, Path] = {}
    if plots:
        try:
            pngs = write_plots(report, out_dir)
        except ImportError:
            raise InputError("the PNG histograms need matplotlib: pip install 'arbiter[eval]', "
                             "or pass --no-plots") from None
        report["plots"] = [str(p) for p in pngs]
        paths.update({p.stem: p for p in pngs})
    paths["json"] = write_text(out_dir / "report.json",
                               json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    paths["md"] = write_text(out_dir / "report.md", markdown(report))
    return paths
