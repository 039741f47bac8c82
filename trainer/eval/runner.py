"""Running an evaluation: benchmark specs -> records -> scores (resumable) -> results on disk.

A spec is ``FORMAT:PATH`` or just ``PATH``. A file is read in the given format (or the
one its first row shows); a folder contributes every file it recognises (only those of
FORMAT when one is given), all files of one format in a folder forming one benchmark.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import InputError, InputTooLongError
from engine.files import file_info
from engine.output import write_text
from engine.scorer import WINDOW_AGG, CancelToken, Scorer
from engine.types import Item, Score
from trainer.data.importers import canonical_format
from trainer.eval.benchmarks import METRICS, evaluate
from trainer.eval.items import Record, Scored
from trainer.eval.loaders import LOADERS, detect, load
from trainer.eval.precomputed import SCORE_LOADERS, SCORE_METRICS
from trainer.eval.report import jsonable, markdown, write_plots
from trainer.eval.runs import EvalStore, model_identity

#: (benchmark name, items done, items to do)
Progress = Callable[[str, int, int | None], None]
#: scores are committed to the store (and progress reported) every this many items: a kill -9
#: loses at most this many, and a few seconds of work on any CPU (items are scored this many at a time)
COMMIT_EVERY = 32
#: ... or sooner, once this many seconds have passed since the last commit
COMMIT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    format: str
    files: tuple[Path, ...]


@dataclass(slots=True)
class Outcome:
    """What a run produced: the result dict, the files written, and the scoring counts."""

    result: dict[str, Any]
    paths: dict[str, Any] = field(default_factory=dict)
    items_scored: int = 0
    items_reused: int = 0


def parse_spec(spec: str, known: Sequence[str]) -> tuple[str | None, Path]:
    head, sep, rest = spec.partition(":")
    head = canonical_format(head)  # an old name (autoj) means the one name (auto-j)
    if sep and head in known:
        return head, Path(rest).expanduser()
    return None, Path(spec).expanduser()


def resolve(specs: Sequence[str], *, precomputed: bool = False) -> tuple[list[Benchmark], list[str]]:
    """Benchmarks named by the specs, and the files in given folders that were not recognised."""
    known = list(SCORE_LOADERS if precomputed else LOADERS)
    benches: list[Benchmark] = []
    ignored: list[str] = []
    for spec in specs:
        fmt, path = parse_spec(spec, known)
        if not path.exists():
            raise InputError("no such file or folder", source=str(path))
        if path.is_file():
            fmt = fmt or detect(path)
            if fmt not in known:
                raise InputError(f"cannot tell which benchmark this is; name it as FORMAT:PATH "
                                 f"(formats: {', '.join(known)})", source=str(path))
            benches.append(Benchmark(path.name, fmt, (path,)))
            continue
        groups: dict[str, list[Path]] = {}
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")):
            found = detect(f)
            if found in known and (fmt is None or found == fmt):
                groups.setdefault(found, []).append(f)
            else:
                ignored.append(str(f))
        if not groups:
            raise InputError(f"no {fmt or 'benchmark'} files recognised in this folder", source=str(path))
        for found, files in groups.items():
            if precomputed:  # each file is one model's outputs
                benches += [Benchmark(f.stem, found, (f,)) for f in files]
            else:
                benches.append(Benchmark(f"{path.name}" + (f" [{found}]" if len(groups) > 1 else ""),
                                         found, tuple(files)))
    return benches, ignored


def load_records(bench: Benchmark, limit: int | None, sample: int | None = None) -> list[tuple[str, str, Record]]:
    """(file sha256, key within the file, record) for every record: the first ``limit``, or
    ``sample`` of them spread evenly (:func:`spread`).

    Record keys are made unique within the benchmark: files of one folder share a
    benchmark (LLMBar's sets are all called dataset.json), so their keys get the file's
    folder and name in front. The store keeps the key within the file.
    """
    out: list[tuple[str, str, Record]] = []
    for f in bench.files:
        sha = file_info(f).sha256
        seen: dict[str, int] = {}
        for rec in load(bench.format, f):
            k = rec.key
            seen[k] = seen.get(k, 0) + 1
            if seen[k] > 1:
                k = f"{k}~{seen[k]}"
            shown = f"{f.parent.name}/{f.stem}/{k}" if len(bench.files) > 1 else k
            out.append((sha, k, replace(rec, key=shown)))
    if sample is not None:
        return spread(out, sample)
    return out[:limit] if limit is not None else out


def spread(records: Sequence, n: int) -> list:
    """``n`` records evenly spaced through the benchmark (every len/n-th, from the first), so a
    subset of a benchmark stored one category per file (RMB) covers every file and category in
    proportion, where the first ``n`` would cover the first few. Deterministic: the same files
    give the same subset."""
    if n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


def policy_identity(model_id: str, policy: str | None) -> str:
    """The store's model identity under a long-input policy: the model's own without windows
    (skip, as before), else one per policy, so windowed scores never mix with skipped ones."""
    if policy is None:
        return model_id
    return hashlib.sha256(json.dumps([model_id, policy]).encode()).hexdigest()


def _windowed(scorer: Scorer, rec: Record) -> bool:
    """Whether a record has a response over the context (scored in windows under a policy)."""
    for resp in rec.responses:
        try:
            scorer.encode(Item(rec.conversation, resp))
        except InputTooLongError:
            return True
    return False


def score_benchmark(scorer: Scorer, bench: Benchmark, store: EvalStore, model_id: str, *,
                    limit: int | None = None, batch_size: int | None = None,
                    progress: Progress | None = None, cancel: CancelToken | None = None,
                    commit_every: int = COMMIT_EVERY, on_too_long: str = "skip",
                    window_agg: str = WINDOW_AGG, sample: int | None = None) -> tuple[list[Scored], int, int]:
    """Score every response not already in the store; returns (scored records, new, reused).

    New scores are committed every ``commit_every`` items and on any interruption
    (cancel, Ctrl-C, an error), so the next run starts from there. ``on_too_long``: "skip"
    (a record with a response over the context is left out of the metrics) or "window"
    (:meth:`Scorer.iter_scores`); ``model_id`` must then be :func:`policy_identity`'s.
    """
    records = load_records(bench, limit, sample)
    done = {sha: store.scores(model_id, sha) for sha in {sha for sha, _, _ in records}}
    pending: list[tuple[str, str, Item]] = []
    for sha, base, rec in records:
        for i, resp in enumerate(rec.responses):
            if f"{base}#{i}" not in done[sha]:
                pending.append((sha, f"{base}#{i}", Item(rec.conversation, resp)))
    fresh: dict[tuple[str, str], Score] = {}
    buffer: list[tuple[str, str, Score]] = []
    last_commit = time.monotonic()
    try:
        stream = scorer.iter_scores((it for _, _, it in pending), batch_size=batch_size, cancel=cancel,
                                    total=len(pending), on_too_long=on_too_long, window_agg=window_agg,
                                    window=commit_every,
                                    progress=(lambda d, t: progress(bench.name, d, t)) if progress else None)
        for (sha, key, _), s in zip(pending, stream, strict=False):
            fresh[sha, key] = s
            buffer.append((sha, key, s))
            if len(buffer) >= commit_every or time.monotonic() - last_commit >= COMMIT_SECONDS:
                store.save_scores(model_id, buffer)
                buffer, last_commit = [], time.monotonic()
    finally:
        store.save_scores(model_id, buffer)
    scored = []
    for sha, base, rec in records:
        values = []
        for i in range(len(rec.responses)):
            k = f"{base}#{i}"
            values.append(fresh[sha, k].value if (sha, k) in fresh else done[sha][k].value)
        scored.append(Scored(rec, tuple(values)))
    return scored, len(fresh), sum(len(r.responses) for _, _, r in records) - len(fresh)


def _bench_entry(bench: Benchmark, scored: Sequence[Scored], fmt_metrics: str,
                 policy: dict[str, Any] | None = None) -> dict[str, Any]:
    entry = {"name": bench.name, **evaluate(fmt_metrics, scored), **(policy or {})}
    entry["format"] = bench.format
    entry["files"] = [{"path": str(f), "sha256": file_info(f).sha256} for f in bench.files]
    return entry


def _write(result: dict[str, Any], out_dir: Path | None, stem: str, plots: bool) -> dict[str, Any]:
    if out_dir is None:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    # atomically (engine.output): a killed run leaves the previous file or none, never half of one
    js = write_text(out_dir / f"{stem}.json",
                    json.dumps(jsonable(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    md = write_text(out_dir / f"{stem}.md", markdown(result))
    paths: dict[str, Any] = {"json": str(js), "markdown": str(md)}
    if plots:
        paths["plots"] = [str(p) for p in write_plots(result, out_dir)]
    return paths


def run_model(scorer: Scorer, specs: Sequence[str], *, out_dir: Path | None = None,
              limit: int | None = None, batch_size: int | None = None,
              progress: Progress | None = None, cancel: CancelToken | None = None,
              store: EvalStore | None = None, plots: bool = True,
              commit_every: int = COMMIT_EVERY, on_too_long: str = "skip",
              window_agg: str = WINDOW_AGG, sample: int | None = None) -> Outcome:
    """Evaluate a loaded model on benchmarks; resumable, recorded in the store.

    ``limit``: the first N records of each benchmark; ``sample``: N spread evenly through it
    (:func:`spread`); not both. Either is a run of its own in the store.

    ``on_too_long``: "skip" (records with a response over the context are left out, counted
    in ``skipped``) or "window" (scored in windows combined by ``window_agg``; each benchmark
    records ``policy`` and how many records were ``windowed``)."""
    if on_too_long not in ("skip", "window"):
        raise InputError(f"{on_too_long!r}: expected skip or window", field="on_too_long")
    if limit is not None and sample is not None:
        raise InputError("give a limit (the first N records) or a sample (N spread evenly), not both",
                         field="sample")
    if sample is not None and sample < 1:
        raise InputError(f"{sample}: a sample needs at least one record", field="sample")
    policy = scorer.window_policy(window_agg).name if on_too_long == "window" else None
    store = store or EvalStore()
    benches, ignored = resolve(specs)
    info = scorer.info
    model_id = policy_identity(model_identity(info), policy)
    files_meta = [{"name": b.name, "format": b.format,
                   "files": [{"path": str(f), "sha256": file_info(f).sha256} for f in b.files]}
                  for b in benches]
    run_id = store.run_id(model_id, files_meta, limit, sample)
    options = {"limit": limit, "batch_size": batch_size}
    if sample is not None:  # absent without one, as older versions wrote the options
        options["sample"] = sample
    if policy:  # without one the options (and the run id's inputs) stay what older versions wrote
        options["policy"] = policy
    store.start_run(run_id, info, model_id, files_meta, options)
    started = time.time()
    outcome = Outcome({})
    entries = []
    try:
        for bench in benches:
            scored, new, reused = score_benchmark(scorer, bench, store, model_id, limit=limit,
                                                  batch_size=batch_size, progress=progress, cancel=cancel,
                                                  commit_every=commit_every, on_too_long=on_too_long,
                                                  window_agg=window_agg, sample=sample)
            outcome.items_scored += new
            outcome.items_reused += reused
            windows = {"policy": policy, "windowed": sum(_windowed(scorer, s.record) for s in scored)}
            entries.append(_bench_entry(bench, scored, bench.format, windows if policy else None))
    except BaseException:
        store.finish_run(run_id, None, status="interrupted")
        raise
    result = {"run_id": run_id, "model": {**info.to_dict(), "model_id": model_id},
              "started": started, "finished": time.time(), "options": options,
              "scoring": {"items_scored": outcome.items_scored, "items_reused": outcome.items_reused},
              "ignored_files": ignored, "benchmarks": entries}
    store.finish_run(run_id, [{"name": e["name"], "format": e["format"], "metrics": e["metrics"]}
                              for e in entries])
    outcome.result = result
    outcome.paths = _write(result, out_dir, f"eval-{run_id}", plots)
    return outcome


def run_scores(specs: Sequence[str], *, out_dir: Path | None = None, plots: bool = True) -> Outcome:
    """Evaluate precomputed scores (published outputs, scored pairs): same metrics, no model."""
    benches, ignored = resolve(specs, precomputed=True)
    entries = []
    for bench in benches:
        scored = [s for f in bench.files for s in SCORE_LOADERS[bench.format](f)]
        entries.append(_bench_entry(bench, scored, SCORE_METRICS[bench.format]))
    result = {"model": {"name": "precomputed scores", "format": "", "dtype": ""},
              "finished": time.time(), "ignored_files": ignored, "benchmarks": entries}
    outcome = Outcome(result)
    outcome.paths = _write(result, out_dir, "eval-scores", plots)
    return outcome


__all__ = ["METRICS", "Benchmark", "Outcome", "resolve", "run_model", "run_scores", "score_benchmark"]
