"""Curation stage 2 (Skywork-Reward-V2 §4.3): filter the pool with a gold RM, the current RM and judges.

For each pool pair with original label "chosen > rejected" (the contract,
/work/notes/s4/stage2_contract.md)::

    gold_p    = sigmoid(r_gold(chosen) - r_gold(rejected))      the RM trained on human pairs only
    current_p = the same from the current best RM
    Filter A: current confident iff current_p > 0.5 + band; otherwise the judges re-label it
              (retrieval-augmented: up to 8 nearest gold pairs as examples, as in stage 1)
    Filter B: keep iff gold_p > 0.5 and (current confident or judge_label == "1")
    recycle:  every discarded pair is also written flipped (label_origin "flipped")

At pool scale (millions of rows, many shards) nothing is held whole: each shard is streamed
in chunks of ``chunk_rows`` rows, scored by both RMs, judged where Filter A asks, decided,
and each chunk's decisions are committed with the shard's position in one SQLite transaction
(``OUT/stage2.db``, :mod:`trainer.curate.stage2_store`). At a shard's end its outputs are
written by streaming the input again and joining the stored decisions by row, each file
through a temp file and a rename, and only then is the shard marked done. A kill -9 anywhere
leaves whole chunks; the same command resumes at the next chunk (judges answer from the call
cache ``OUT/calls.db``) and ends with byte-identical outputs.

Rows are numbered as the readers number them (1-based: the JSONL line, the Parquet row); a
shard's ``position`` is its last committed row, and ``scored_chunks(shard, start_row, ...)``
yields the rows AFTER ``start_row`` (0 = from the top).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InputError, ModelError
from trainer.curate.cache import cached_judges
from trainer.data.record import PreferencePair, decode_parquet_row, is_parquet, iter_rows

#: what the log lines go to (the CLI prints them on stderr)
Progress = Callable[[str], None]
#: the band grid of ``--band auto``: 0.00, 0.025, ..., 0.30
BAND_GRID: tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(13))
#: the current RM's accuracy on gold pairs outside the band that ``auto`` asks for
DEFAULT_BAND_TARGET = 0.9
#: gold pairs that must lie outside a band for its accuracy to count: 10 pairs at 0.9 (a real
#: run's auto band, 1.4% of 705 gold pairs) is one wrong pair away from 0.8
MIN_BAND_PAIRS = 30
#: gold examples shown in one judge prompt (the paper's limit, as in stage 1)
MAX_EXAMPLES = 8
#: input shard suffixes a folder is searched for
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
OUTPUT_FORMATS = ("jsonl", "parquet")
DECISIONS = ("kept", "discarded", "unscored")
REASONS = ("gold+current", "gold+judges", "gold_disagrees", "judges_disagree", "judges_tie",
           "judges_abstain", "no_judge", "too_long")


# -- the decision table -----------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    decision: str  # kept | discarded | unscored
    reason: str  # one of REASONS


def _confident(current_p: float, band: float) -> bool:
    return current_p > 0.5 + band


def needs_judges(gold_p: float | None, current_p: float | None, band: float) -> bool:
    """Filter A asks the judges only where their answer can change the decision: both RMs
    scored the pair, the gold RM agrees (a pair it rejects is discarded whatever the judges
    say, so asking would waste calls) and the current RM is not confident."""
    if gold_p is None or current_p is None:
        return False
    return gold_p > 0.5 and not _confident(current_p, band)


def decide(gold_p: float | None, current_p: float | None, judge_label: str | None, *, band: float,
           judged: bool) -> Decision:
    """The pair's decision and reason (pure; the contract's table).

    ``judged``: judges were configured (and so asked, where :func:`needs_judges` says); without
    them an unconfident pair is discarded with reason ``no_judge`` whatever ``judge_label`` is.
    """
    if gold_p is None or current_p is None:
        return Decision("unscored", "too_long")
    if not gold_p > 0.5:
        return Decision("discarded", "gold_disagrees")
    if _confident(current_p, band):
        return Decision("kept", "gold+current")
    if not judged:
        return Decision("discarded", "no_judge")
    if judge_label == "1":
        return Decision("kept", "gold+judges")
    if judge_label == "2":
        return Decision("discarded", "judges_disagree")
    if judge_label == "tie":
        return Decision("discarded", "judges_tie")
    if judge_label is None:
        return Decision("discarded", "judges_abstain")
    raise ValueError(f"judge_label must be '1', '2', 'tie' or None, not {judge_label!r}")


# -- the band ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BandChoice:
    band: float
    accuracy: float | None  # the current RM's accuracy on gold pairs with |p - 0.5| > band
    coverage: float  # the share of gold pairs with |p - 0.5| > band
    table: list[dict[str, Any]]  # [{band, accuracy, coverage}] over the grid
    reached: bool  # False: no band reached the target; band is the largest grid value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_band(ps: Sequence[float], target: float = DEFAULT_BAND_TARGET,
                 grid: Sequence[float] = BAND_GRID, min_pairs: int = MIN_BAND_PAIRS) -> BandChoice:
    """The smallest band on ``grid`` at which the current RM is right (p > 0.5) on at least
    ``target`` of the gold pairs outside the band; ``ps`` are its p on gold pairs (chosen =
    the human's pick). A band with fewer than ``min_pairs`` pairs outside it (none, at least)
    has too few to measure and never qualifies."""
    if not grid:
        raise ValueError("measure_band needs a non-empty grid")
    ps = [float(p) for p in ps]
    bad = next((p for p in ps if not math.isfinite(p) or not 0.0 <= p <= 1.0), None)
    if bad is not None:
        raise InputError(f"{bad!r}, expected a probability in [0, 1]", field="p")
    table = []
    for b in sorted(grid):
        outside = [p for p in ps if abs(p - 0.5) > b]
        acc = sum(p > 0.5 for p in outside) / len(outside) if outside else None
        table.append({"band": b, "accuracy": acc, "coverage": len(outside) / len(ps) if ps else 0.0,
                      "pairs": len(outside)})
    for row in table:
        if row["accuracy"] is not None and row["pairs"] >= max(1, min_pairs) and row["accuracy"] >= target:
            return BandChoice(row["band"], row["accuracy"], row["coverage"], table, True)
    last = table[-1]
    return BandChoice(last["band"], last["accuracy"], last["coverage"], table, False)


# -- shards and scored chunks ------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    name: str  # NNNNN-<stem>: unique and stable (the position in the sorted list, then the stem)
    path: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def shards_of(inputs: Sequence[Path]) -> list[Shard]:
    """Input files and folders (their *.jsonl, *.jsonl.gz, *.parquet, sorted) as named shards,
    in the order given (each folder's files sorted by name); a file named twice counts once."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SHARD_SUFFIXES))
            if not found:
                raise InputError(f"no {', '.join(SHARD_SUFFIXES)} files in this folder", source=str(path))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("no such file or folder", source=str(path))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return [Shard(f"{i:05d}-{_stem(f)}", f) for i, f in enumerate(unique)]


def read_rows(path: Path, start_row: int = 0) -> Iterator[tuple[int, PreferencePair]]:
    """(row, pair) for the rows after ``start_row`` of a pair file in the trainer's format
    (:func:`trainer.data.read_pairs`' reading, with the row numbers); a bad row is an
    InputError naming the file, the row and the field."""
    parquet = is_parquet(Path(path))
    for n, row in iter_rows(Path(path)):
        if n <= start_row:
            continue
        try:
            yield n, PreferencePair.from_dict(decode_parquet_row(row) if parquet else row)
        except InputError as e:
            raise e.located(str(path), n) from None


@dataclass
class ScoredPair:
    shard: str
    row: int  # 1-based, as the readers number rows
    pair: PreferencePair
    gold_p: float | None  # None: the gold RM could not score it (too long)
    current_p: float | None


def _chunks(rows: Iterator[tuple[int, PreferencePair]], size: int) -> Iterator[list[tuple[int, PreferencePair]]]:
    buf: list[tuple[int, PreferencePair]] = []
    for r in rows:
        buf.append(r)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def pair_ps(rm: Any, pairs: Sequence[PreferencePair], batch_size: int) -> list[float | None]:
    """sigmoid(r(chosen) - r(rejected)) per pair under the open Scorer ``rm``; None where a
    response does not fit the model."""
    from engine.types import Item, sigmoid

    items = [Item(p.conversation, x) for p in pairs for x in (p.chosen, p.rejected)]
    scores = rm.score(items, batch_size=batch_size, on_too_long="skip")
    out: list[float | None] = []
    for i in range(len(pairs)):
        c, w = scores[2 * i], scores[2 * i + 1]
        if c.skipped or w.skipped:
            out.append(None)
            continue
        if not (math.isfinite(c.value) and math.isfinite(w.value)):
            raise ModelError(f"{getattr(rm, 'name', 'the model')} gave a non-finite score for pair "
                             f"{pairs[i].id!r}")
        out.append(sigmoid(c.value - w.value))
    return out


def local_scored_chunks(shard: Shard, start_row: int, gold_rm: Any, current_rm: Any, chunk_rows: int,
                        batch_size: int) -> Iterator[list[ScoredPair]]:
    """The shard's rows after ``start_row``, ``chunk_rows`` at a time, scored by both open
    Scorers (``engine.load``): one chunk in memory at a time."""
    for chunk in _chunks(read_rows(shard.path, start_row), chunk_rows):
        pairs = [p for _, p in chunk]
        gold = pair_ps(gold_rm, pairs, batch_size)
        current = pair_ps(current_rm, pairs, batch_size)
        yield [ScoredPair(shard.name, n, p, g, c) for (n, p), g, c in zip(chunk, gold, current, strict=True)]


ScoredChunks = Callable[[Shard, int, int], Iterator[list[ScoredPair]]]


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Stage2Config:
    pool: list[Path]
    gold: list[Path]  # human gold pairs: the band and the judges' examples
    gold_rm: Path
    current_rm: Path
    out: Path
    band: float | str = "auto"
    judges: list[Any] = field(default_factory=list)  # Judge or CachedJudge objects; may be empty
    embedder: Path | None = None  # an exported embedder folder; needed with judges only
    samples: int = 1
    recycle: bool = True
    round: int = 1
    chunk_rows: int = 1024
    batch_size: int = 32
    output_format: str = "jsonl"
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    band_target: float = DEFAULT_BAND_TARGET
    concurrency: int = 4  # pairs judged at once
    gold_format: str = "auto"  # how the gold files are read (trainer.data.load)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (outputs depend on it)."""
        return {"pool": [str(Path(p).resolve()) for p in self.pool], "gold": [str(Path(p).resolve()) for p in self.gold],
                "band": self.band, "band_target": self.band_target, "samples": self.samples,
                "recycle": self.recycle, "round": self.round, "output_format": self.output_format,
                "seed": self.seed, "chunk_rows": self.chunk_rows}

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "gold_rm": str(self.gold_rm), "current_rm": str(self.current_rm),
                "out": str(self.out), "embedder": None if self.embedder is None else str(self.embedder),
                "batch_size": self.batch_size, "threads": self.threads, "device": self.device,
                "concurrency": self.concurrency, "judges": len(self.judges)}


@dataclass
class Stage2Summary:
    out: Path
    band: float
    band_reached: bool
    shards: int = 0
    rows: int = 0
    kept: int = 0
    discarded: int = 0
    flipped: int = 0
    unscored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    judged: int = 0  # pairs sent to the judges this invocation
    calls_made: int = 0  # judge requests this invocation (cache misses)
    cache_hits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}


def _check_config(cfg: Stage2Config) -> None:
    if cfg.output_format not in OUTPUT_FORMATS:
        raise InputError(f"must be one of {', '.join(OUTPUT_FORMATS)}; got {cfg.output_format!r}", field="format")
    if cfg.band != "auto" and not (isinstance(cfg.band, (int, float)) and 0.0 <= float(cfg.band) < 0.5):
        raise InputError(f"must be 'auto' or a number in [0, 0.5); got {cfg.band!r}", field="band")
    for name in ("samples", "round", "chunk_rows", "batch_size", "concurrency"):
        if int(getattr(cfg, name)) < 1:
            raise InputError(f"must be at least 1; got {getattr(cfg, name)}", field=name)
    if not 0.0 < cfg.band_target <= 1.0:
        raise InputError(f"must be in (0, 1]; got {cfg.band_target}", field="band_target")
    if not cfg.gold:
        raise InputError("give the human gold pairs (--gold): the band and the judges' examples", field="gold")
    for what, path in (("gold RM", cfg.gold_rm), ("current RM", cfg.current_rm)):
        if not Path(path).exists():
            raise ModelError(f"{path}: no such model ({what})")
    if cfg.judges and cfg.embedder is None:
        raise InputError("judges need an embedder folder for their examples "
                         "(exports.embedder.default_embedder() makes one)", field="embedder")
    if cfg.embedder is not None and not (Path(cfg.embedder) / "arbiter.json").is_file():
        raise InputError("not an exported embedder folder (no arbiter.json)", source=str(cfg.embedder))


def model_digest(path: Path) -> str:
    """sha256 of a model file, or of a folder's files (relative name and sha256 of each, sorted)."""
    from engine.files import file_info

    path = Path(path)
    if path.is_file():
        return file_info(path).sha256
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\x00{file_info(f).sha256}\n".encode())
    return h.hexdigest()


def _shard_sizes(shards: Sequence[Shard]) -> list[list[Any]]:
    return [[s.name, str(s.path.resolve()), s.path.stat().st_size] for s in shards]


def _read_gold(cfg: Stage2Config) -> list[PreferencePair]:
    from trainer.data import load

    gold: list[PreferencePair] = []
    for path in cfg.gold:
        gold += list(load(path, cfg.gold_format, split="gold"))
    if not gold:
        raise InputError("the gold files hold no pairs", field="gold")
    return gold


def _check_shards(shards: Sequence[Shard], store: Any, log: Progress) -> dict[str, int]:
    """Every row of every unfinished shard parses, before a model loads: a bad row stops the
    run at once with FILE:LINE: field, not hours in. Returns rows per shard (for progress)."""
    totals: dict[str, int] = {}
    for s in shards:
        row = None if store is None else store.shard(s.name)
        if row is not None and row["state"] == "done":
            continue
        n = totals[s.name] = sum(1 for _ in read_rows(s.path))
        log(f"{s.name}: {n} rows read")
    return totals


@dataclass
class _Run:
    cfg: Stage2Config
    store: Any  # Stage2Store
    band: float
    judges: list[Any]  # CachedJudge
    gold: list[PreferencePair]
    log: Progress
    index: Any = None  # NeighbourIndex over the gold pairs, built on first need
    embedder: Any = None
    embed_cache: Any = None
    totals: dict[str, int] = field(default_factory=dict)  # rows per unfinished shard
    judged: int = 0
    own: list[Any] = field(default_factory=list)  # opened here, closed here


def run_stage2(cfg: Stage2Config, *, progress: Progress | None = None,
               scored_chunks: ScoredChunks | None = None) -> Stage2Summary:
    """Run (or resume) stage 2 into ``cfg.out``; see the module docstring.

    ``scored_chunks(shard, start_row, chunk_rows)`` yields the shard's rows after
    ``start_row`` as scored chunks; the default opens both RMs here (``engine.load``) and
    scores locally; the Ray path passes its own.
    """
    from trainer.curate.stage2_store import DB_NAME, Stage2Store

    log = progress or (lambda _: None)
    _check_config(cfg)
    shards = shards_of(cfg.pool)
    gold = _read_gold(cfg)
    out = Path(cfg.out)
    fresh = not (out / DB_NAME).exists()
    totals = {}
    if fresh:  # a bad row leaves nothing behind, not even the database
        totals = _check_shards(shards, None, log)
    store = Stage2Store(out)
    run: _Run | None = None
    rms: list[Any] = []
    try:
        if not fresh:
            totals = _check_shards(shards, store, log)
        _check_identity(cfg, store, shards)
        judges = cached_judges(cfg.judges, out)
        todo = [s for s in shards if (store.shard(s.name) or {}).get("state") != "done"]
        if scored_chunks is None and todo:
            rms = _open_rms(cfg)
        band = _band(cfg, store, gold, rms[1] if rms else None, log)
        run = _Run(cfg, store, band.band, judges, gold, log, totals=totals)
        if scored_chunks is None and rms:  # none opened: every shard is done, nothing to score
            gold_rm, current_rm = rms

            def scored_chunks(shard: Shard, start: int, rows: int) -> Iterator[list[ScoredPair]]:
                return local_scored_chunks(shard, start, gold_rm, current_rm, rows, cfg.batch_size)

        calls0 = _counters(judges)
        for shard in shards:
            _run_shard(run, shard, scored_chunks)
        calls1 = _counters(judges)
        return _summary(run, shards, band, calls0, calls1)
    finally:
        for rm in rms:
            rm.close()
        if run is not None:
            _close_run(run)
        store.close()


def _load_opts(cfg: Stage2Config) -> dict[str, Any]:
    opts: dict[str, Any] = {"device": cfg.device, "batch_size": cfg.batch_size}
    if cfg.threads:
        opts["threads"] = cfg.threads
    return opts


def _open_rms(cfg: Stage2Config) -> list[Any]:
    import engine

    opts = _load_opts(cfg)
    rms = [engine.load(Path(cfg.gold_rm), **opts)]
    try:
        rms.append(engine.load(Path(cfg.current_rm), **opts))
    except BaseException:
        rms[0].close()
        raise
    return rms


def _check_identity(cfg: Stage2Config, store: Any, shards: Sequence[Shard]) -> None:
    """A resumed run continues the same run: same inputs, models and settings, else an error."""
    ident = {**cfg.identity(), "shards": _shard_sizes(shards)}
    models = {"gold_rm": {"path": str(cfg.gold_rm), "sha256": model_digest(Path(cfg.gold_rm))},
              "current_rm": {"path": str(cfg.current_rm), "sha256": model_digest(Path(cfg.current_rm))}}
    names = [getattr(j, "name", str(j)) for j in cfg.judges]
    held = store.meta("config")
    if held is not None:
        before = held.get("identity", {})
        diff = sorted(k for k in set(before) | set(ident) if before.get(k) != ident.get(k))
        held_models = store.meta("models") or {}
        diff += [k for k in ("gold_rm", "current_rm")
                 if (held_models.get(k) or {}).get("sha256") != models[k]["sha256"]]
        if (store.meta("judges") or []) != names:
            diff.append("judges")
        if diff:
            raise InputError(f"{store.path}: this run was started with other settings ({', '.join(diff)} "
                             "differ); rerun with the original ones or use a new --out folder")
        return
    store.set_meta("models", models)
    store.set_meta("judges", names)
    store.set_meta("round", cfg.round)
    store.set_meta("config", {"identity": ident, "settings": cfg.to_dict()})


def _band(cfg: Stage2Config, store: Any, gold: Sequence[PreferencePair], current_rm: Any,
          log: Progress) -> BandChoice:
    """The band: stored by an earlier invocation, else measured on gold with the current RM
    (``current_rm`` open, or opened here for the Ray path, whose RMs live in its actors); for a
    fixed ``--band`` the table is measured and stored too, for the report."""
    held = store.meta("band")
    if held is not None:
        return BandChoice(held["band"], held.get("accuracy"), held.get("coverage", 0.0), held["table"],
                          held.get("reached", True))
    rows = [p for p in gold if not p.tie]
    if current_rm is None:
        import engine

        with engine.load(Path(cfg.current_rm), **_load_opts(cfg)) as rm:
            ps = [p for p in pair_ps(rm, rows, cfg.batch_size) if p is not None]
    else:
        ps = [p for p in pair_ps(current_rm, rows, cfg.batch_size) if p is not None]
    measured = measure_band(ps, cfg.band_target)
    if cfg.band == "auto":
        choice = measured
        if not choice.reached:
            log(f"band: no band up to {BAND_GRID[-1]} reaches gold accuracy {cfg.band_target:.3f} on at "
                f"least {MIN_BAND_PAIRS} gold pairs outside it; using {choice.band}")
    else:
        b = float(cfg.band)
        row = next((r for r in measured.table if r["band"] == b), None)
        choice = BandChoice(b, row["accuracy"] if row else None, row["coverage"] if row else 0.0,
                            measured.table, True)
    store.set_meta("band", {**choice.to_dict(), "target": cfg.band_target, "setting": cfg.band,
                            "measured_on": {"files": [str(p) for p in cfg.gold], "pairs": len(ps)}})
    log(f"band {choice.band} (current RM gold accuracy outside it "
        f"{'n/a' if choice.accuracy is None else f'{choice.accuracy:.3f}'}, coverage {choice.coverage:.3f}, "
        f"{len(ps)} gold pairs)")
    return choice


def _counters(judges: Sequence[Any]) -> tuple[int, int]:
    return sum(j.calls_made for j in judges), sum(j.cache_hits for j in judges)


def _close_run(run: _Run) -> None:
    for x in run.own:
        x.close()
    for cache in {id(j.cache): j.cache for j in run.judges if j not in run.cfg.judges}.values():
        cache.close()  # the call cache opened here (a caller's CachedJudge keeps its own)


# -- one shard ---------------------------------------------------------------------------------

def _run_shard(run: _Run, shard: Shard, scored_chunks: ScoredChunks) -> None:
    store = run.store
    row = store.shard(shard.name)
    if row is not None and row["state"] == "done":
        run.log(f"{shard.name}: done before")
        return
    position = store.start_shard(shard.name, shard.path)
    for chunk in scored_chunks(shard, position, run.cfg.chunk_rows):
        if not chunk:
            continue
        rows = _decide_chunk(run, chunk)
        store.commit_chunk(shard.name, rows, chunk[-1].row)
        run.log(f"{shard.name}: decided to row {chunk[-1].row} ({run.totals.get(shard.name, '?')} rows in all)")
    counts = _write_outputs(run, shard)
    store.finish_shard(shard.name, counts)
    run.log(f"{shard.name}: {counts['rows']} rows, {counts['kept']} kept, {counts['discarded']} discarded, "
            f"{counts['flipped']} flipped, {counts['unscored']} unscored")


def _decide_chunk(run: _Run, chunk: Sequence[ScoredPair]) -> list[dict[str, Any]]:
    """Ask the judges where Filter A says, then decide every pair of the chunk."""
    judged = bool(run.judges)
    ask = [i for i, s in enumerate(chunk) if judged and needs_judges(s.gold_p, s.current_p, run.band)]
    verdicts: dict[int, Any] = {}
    if ask:
        from trainer.curate.verdicts import judge_pairs

        examples = _examples(run, [chunk[i].pair for i in ask])
        items = [(chunk[i].pair, None, ex) for i, ex in zip(ask, examples, strict=True)]
        found = judge_pairs(run.judges, items, samples=run.cfg.samples, seed=run.cfg.seed,
                            concurrency=run.cfg.concurrency)
        verdicts = dict(zip(ask, found, strict=True))
        run.judged += len(ask)
    rows = []
    for i, s in enumerate(chunk):
        v = verdicts.get(i)
        label = v.label if v is not None else None
        d = decide(s.gold_p, s.current_p, label, band=run.band, judged=judged)
        rows.append({"row": s.row, "pair_id": s.pair.id, "decision": d.decision, "reason": d.reason,
                     "gold_p": s.gold_p, "current_p": s.current_p, "judge_label": label,
                     "votes": None if v is None else [asdict(x) for x in v.votes], "round": run.cfg.round})
    return rows


def _examples(run: _Run, pairs: Sequence[PreferencePair]) -> list[list[Any]]:
    """Up to MAX_EXAMPLES nearest gold pairs per pool pair (cosine of the stage-1 embedding
    text, no attributes: stage 2 asks the judges for no attributes, to keep calls per pair at
    two per sample), as labelled examples in stored order."""
    from trainer.curate.prompts import Example
    from trainer.curate.retrieval import embedding_text

    _gold_index(run)
    # pool texts are not cached: at pool scale the cache would grow by 1.5 kB a pair (384 float32),
    # and a resumed chunk re-embeds at most chunk_rows texts
    vecs = run.embedder.embed([embedding_text(p, None) for p in pairs])
    found = run.index.search(vecs, MAX_EXAMPLES)
    return [[Example(run.gold[int(gid)], None, "tie" if run.gold[int(gid)].tie else "1") for gid, _ in hits]
            for hits in found]


def _gold_index(run: _Run) -> None:
    """The embedder and the gold index, opened on first need (a run without judges needs neither)."""
    if run.index is not None:
        return
    from engine.embed import Embedder, EmbeddingCache, cached_embed
    from trainer.curate.retrieval import NeighbourIndex, embedding_text

    run.embedder = Embedder.open(Path(run.cfg.embedder), threads=run.cfg.threads)  # type: ignore[arg-type]
    run.own.append(run.embedder)
    run.embed_cache = EmbeddingCache(Path(run.cfg.out) / "embeddings.db")
    run.own.append(run.embed_cache)
    vecs = cached_embed(run.embedder, [embedding_text(p, None) for p in run.gold], run.embed_cache)
    run.index = NeighbourIndex.build(vecs, [str(i) for i in range(len(run.gold))], method="exact")


# -- outputs -----------------------------------------------------------------------------------

def _curated(p: PreferencePair, d: Any, flipped: bool) -> PreferencePair:
    from dataclasses import replace

    info = {"stage": 2, "round": d.round, "decision": d.decision, "reason": d.reason, "gold_p": d.gold_p,
            "current_p": d.current_p, "judge_label": d.judge_label, "votes": d.votes}
    attrs = {**p.attributes, "curation": info}
    if not flipped:
        return replace(p, attributes=attrs)
    return replace(p, chosen=p.rejected, rejected=p.chosen, label_origin="flipped", attributes=attrs)


def _joined(run: _Run, shard: Shard, want: str) -> Iterator[PreferencePair]:
    """The shard's pairs whose decision is ``want`` (``kept``; ``discarded`` -> flipped), in row
    order: the input re-streamed beside the stored decisions (both ascending by row)."""
    decisions = run.store.decisions(shard.name)
    for n, p in read_rows(shard.path):
        d = next(decisions, None)
        if d is None or d.row != n:
            raise RuntimeError(f"{shard.path}: row {n} has no stored decision (the store and the file differ)")
        if d.decision == want:
            yield _curated(p, d, flipped=want == "discarded")


def _write_outputs(run: _Run, shard: Shard) -> dict[str, int]:
    """kept/<shard> and (recycling) flipped/<shard>, each whole or not at all; the counts."""
    ext = ".parquet" if run.cfg.output_format == "parquet" else ".jsonl"
    out = Path(run.cfg.out)
    kinds = [("kept", "kept")] + ([("flipped", "discarded")] if run.cfg.recycle else [])
    written = {}
    for folder, want in kinds:
        written[folder] = _atomic_pairs(_joined(run, shard, want), out / folder / f"{shard.name}{ext}", out / "tmp")
    counts = run.store.counts(shard.name)
    return {"rows": sum(counts.values()), "kept": counts.get("kept", 0), "discarded": counts.get("discarded", 0),
            "flipped": written.get("flipped", 0), "unscored": counts.get("unscored", 0)}


def _atomic_pairs(pairs: Iterator[PreferencePair], target: Path, tmp_dir: Path) -> int:
    """``write_pairs`` into a temp file (same suffix, so the format is the same), then rename;
    temp files of dead writers are removed first."""
    from engine.output import pid_alive
    from trainer.data.record import write_pairs

    tmp_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in tmp_dir.glob(f"{target.parent.name}-{target.stem}.*"):
        pid = old.name.split(".")[-2] if old.name.count(".") >= 2 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            old.unlink(missing_ok=True)
    tmp = tmp_dir / f"{target.parent.name}-{target.stem}.{os.getpid()}{target.suffix}"
    try:
        n = write_pairs(pairs, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _summary(run: _Run, shards: Sequence[Shard], band: BandChoice, calls0: tuple[int, int],
             calls1: tuple[int, int]) -> Stage2Summary:
    s = Stage2Summary(Path(run.cfg.out), band.band, band.reached, shards=len(shards), judged=run.judged,
                      calls_made=calls1[0] - calls0[0], cache_hits=calls1[1] - calls0[1])
    names = {sh.name for sh in shards}
    for row in run.store.shards():
        if row["name"] not in names:
            continue
        s.rows += row["rows"] or 0
        s.kept += row["kept"] or 0
        s.discarded += row["discarded"] or 0
        s.flipped += row["flipped"] or 0
        s.unscored += row["unscored"] or 0
    s.reasons = dict(Counter(run.store.reason_counts()))
    return s
