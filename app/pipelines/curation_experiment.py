"""The curation experiment (issue 15, "the proof"): does curated data make a better reward model?

``make curation-experiment`` (``python -m app.pipelines.curation_experiment``) trains four
reward models from the same base (all-MiniLM-L6-v2 as a cross-encoder), with the same
training settings and the **same number of training pairs**, and evaluates each as users run
it (exported to ONNX fp32, scored through the engine by ``trainer.eval``, as ``arbiter eval``
does):

* (a) **uncurated silver**: a seeded sample of the AlpacaEval GPT-4 pool, labels as recorded;
* (b) **stage-1 curated**: one stage-1 round (``trainer.curate.stage1.run_stage1``) whose RM is
  (a)'s model; the pool pairs the judge relabelled (ties left out) replace (a)'s pairs;
* (c) **stage-2 filtered**: a seeded sample of the pairs stage 2 (``trainer.curate.stage2``)
  keeps, out of the whole pool (gold RM + current RM = (a)'s model + the judge);
* (d) **filtered + flipped**: a seeded sample of stage 2's kept and flipped pairs together.

Which signal plays which role (the issue asks for it to be stated exactly):

* **silver** = the AlpacaEval train pool (``alpacaeval-gpt4-prefs/train.jsonl.gz``), each label
  from its one recorded GPT-4-family annotator;
* **gold** = human labels: PandaLM (majority of 3 annotators, ties dropped) and OASST (rank
  pairs), split seeded into ``gold_train`` (trains the gold RM; stage 2's band and examples),
  ``gold_select`` (picks every model's checkpoint; stage 1's gold) and ``gold_eval`` (held
  out: the table's gold columns only). Silver is decontaminated against the benchmarks and
  the held-out gold prompts (13-grams, as the built-in model's recipe does);
* **judge** = :class:`trainer.curate.recorded.RecordedJudge`: the pool's own recorded
  annotator vote. AlpacaEval pairs have one annotator each, so this judge is the same source
  as the label and never contradicts it; what it adds is the soft ``preference`` of
  ``weighted_alpaca_eval_gpt4_turbo`` as a confidence: below ``--judge-threshold`` it says tie.
  The local Gemma 3 270M is not used (too weak to label well).

Resumable: every step leaves its output in ``--work`` and is skipped when that is there
(training resumes its own checkpoint, stage 1 and stage 2 resume their stores, evaluation
reuses scores from its store). The table goes to ``--results`` (markdown) and
``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "curation_experiment.md"
ARMS = ("a", "b", "c", "d")
ARM_NAMES = {"a": "(a) uncurated silver", "b": "(b) stage-1 curated", "c": "(c) stage-2 filtered",
             "d": "(d) filtered + flipped", "gold": "gold RM (human pairs only; reference)"}
#: the table's columns: (title, benchmark key in ``_bench_specs``, metric path in its result)
COLUMNS = (("LLMBar", "llmbar", ("accuracy",)), ("RM-Bench", "rm-bench", ("avg",)),
           ("JudgeBench", "judgebench", ("accuracy",)), ("RMB", "rmb", ("pairwise", "accuracy")),
           ("Auto-J", "auto-j", ("accuracy",)), ("gold", "gold", ("accuracy",)),
           ("gold length-balanced", "gold", ("length_balanced",)))


@dataclass(frozen=True)
class Budget:
    """What one run costs: pairs per arm, tokens, steps, pool sizes, benchmark records."""

    pairs: int  # training pairs per arm (the same for every arm)
    max_length: int  # tokens per (conversation, response)
    epochs: float
    max_steps: int | None  # overrides epochs when set
    gold_epochs: float  # the gold RM's passes over gold_train (it has fewer pairs)
    batch: int  # pairs per optimizer step
    stage1_pool: int  # pool pairs stage 1 may retrieve from (they are embedded)
    stage2_pool: int | None  # pool pairs stage 2 curates (None: all of the silver)
    gold_cap: int | None  # at most this many pairs per gold split
    bench_limit: int | None  # records per benchmark (None: all)
    rmb_limit: int | None  # RMB is large: its first records only
    eval_every: int
    silver_read: int | None = None  # AlpacaEval rows read before hygiene (None: all)
    gold_eval_limit: int | None = None  # held-out gold pairs evaluated (None: all)
    # RMB's pairwise set (helpfulness), relative to the data folder; loading all of it takes
    # ~20 s per model here, so --quick reads one file
    rmb: str = "rmb/RMB_dataset/Pairwise_set"
    # tokens the exported arms read when scored: MiniLM's 512 positions. Training cuts at
    # max_length for time; scoring at that length would drop most benchmark records as too long
    eval_length: int = 512


#: the smallest budget at which every model learns something here (2026-12-03: 100 optimizer steps of
#: 16 pairs per arm, about 3 s each at 128 tokens on the 2 cores); the 2026-12-01 budget (200 pairs,
#: one epoch: 12 steps) left every model at chance. Stage 2 curates all the silver that fits
FULL = Budget(pairs=800, max_length=128, epochs=2.0, max_steps=None, gold_epochs=4.0, batch=16,
              stage1_pool=300, stage2_pool=None, gold_cap=None, bench_limit=300, rmb_limit=300, eval_every=10,
              gold_eval_limit=250)
QUICK = Budget(pairs=16, max_length=128, epochs=1.0, max_steps=2, gold_epochs=1.0, batch=4,
               stage1_pool=24, stage2_pool=80, gold_cap=24, bench_limit=4, rmb_limit=4, eval_every=2,
               silver_read=800, rmb="rmb/RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json")
#: the budget fields WORK/data depends on (a rerun with others must not reuse it)
DATA_FIELDS = ("pairs", "max_length", "stage1_pool", "stage2_pool", "gold_cap", "silver_read")


# -- data ----------------------------------------------------------------------------------

def prepare(data: Path, work: Path, budget: Budget, seed: int, base: Path) -> dict[str, Any]:
    """The splits (JSONL, trainer format) under WORK/data; reused when its report exists.

    Training pairs (pool, gold_train, gold_select) are only those whose responses fit
    ``max_length`` under the base's tokenizer: the trainer skips the others, and every arm must
    train on the same number of pairs. The held-out gold is not filtered (evaluation counts
    what it cannot score).
    """
    folder = work / "data"
    report_file = folder / "report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        made = report.get("budget", {})
        if any(made.get(k) != getattr(budget, k) for k in DATA_FIELDS) or report.get("seed") != seed:
            from engine.errors import InputError

            raise InputError("this work folder was made with another budget or seed; give another --work "
                             "or delete it", source=str(report_file))
        return report
    from app.pipelines.default_model import BENCHMARKS, _files
    from trainer.data.hygiene import Decontaminator, HygieneReport, clean
    from trainer.data.importers import load
    from trainer.data.record import write_pairs

    rng = random.Random(seed)
    hygiene = HygieneReport()
    decon = Decontaminator([p for b in BENCHMARKS for p in _files(data / b)], 13, hygiene)
    human = (list(clean(load(data / "pandalm" / "testset-v1.json", "pandalm", ties="drop", errors="skip"),
                        report=hygiene, decontaminator=decon))
             + list(clean(load(data / "oasst-en100" / "pairs_from_ranks.jsonl", "oasst", errors="skip"),
                          report=hygiene, decontaminator=decon)))
    held, select_raw, train_raw = split_by_prompt(human, (0.3, 0.2), rng)
    gold_eval = [replace(p, split="gold") for p in held]
    # nothing that trains or selects may share a 13-gram with a held-out gold prompt
    decon.add_texts((_user_text(p) for p in gold_eval), "gold_eval")
    fits = Fits(base, budget.max_length)
    gold_select = [replace(p, split="gold") for p in clean(select_raw, report=hygiene, decontaminator=decon)
                   if fits(p)]
    gold_train = [replace(p, split="gold") for p in clean(train_raw, report=hygiene, decontaminator=decon)
                  if fits(p)]
    rows = islice(load(data / "alpacaeval-gpt4-prefs" / "train.jsonl.gz", "alpacaeval", errors="skip"),
                  budget.silver_read)
    silver = list(clean(rows, report=hygiene, decontaminator=decon))
    n_silver = len(silver)
    rng.shuffle(silver)
    pool = []
    for p in silver:  # the shuffled silver that fits, up to the pool's size
        if budget.stage2_pool is not None and len(pool) >= budget.stage2_pool:
            break
        if fits(p):
            pool.append(p)
    cap = budget.gold_cap
    sets = {"gold_train": gold_train[:cap], "gold_select": gold_select[:cap], "gold_eval": gold_eval[:cap],
            "pool": pool}
    pool = sets["pool"]
    if len(pool) < budget.pairs + budget.stage1_pool:
        from engine.errors import InputError

        raise InputError(f"the pool has {len(pool)} pairs; the budget needs {budget.pairs} + "
                         f"{budget.stage1_pool} (arm a + the stage-1 pool)", field="pairs")
    sets["arm_a"] = pool[:budget.pairs]  # the pool is shuffled: its head is a seeded random sample
    sets["stage1_pool"] = pool[budget.pairs:budget.pairs + budget.stage1_pool]
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in sets.items():
        write_pairs(pairs, folder / f"{name}.jsonl")
    report = {"sizes": {k: len(v) for k, v in sets.items()}, "silver_after_hygiene": n_silver,
              "silver_tested_for_fit": fits.tested, "silver_fit": fits.passed, "seed": seed, "budget": asdict(budget),
              "chosen_longer_share": {k: _longer_share(v) for k, v in sets.items()},
              "hygiene": hygiene.to_dict() if hasattr(hygiene, "to_dict") else str(hygiene)}
    report_file.write_text(json.dumps(report, indent=2, default=str))
    return report


def split_by_prompt(pairs: Sequence[Any], shares: Sequence[float], rng: random.Random) -> list[list[Any]]:
    """Seeded split whose parts share no prompt (PandaLM has 702 pairs on 143 prompts, OASST 747
    on 209: a pair-level split would put the same prompt on both sides, and decontamination
    would then throw most of the training side away). ``shares`` of the pairs go to the first
    parts, the rest to the last."""
    groups: dict[str, list[Any]] = {}
    for p in pairs:
        groups.setdefault(_user_text(p), []).append(p)
    order = list(groups)
    rng.shuffle(order)
    parts: list[list[Any]] = [[] for _ in range(len(shares) + 1)]
    bounds = [sum(shares[:i + 1]) * len(pairs) for i in range(len(shares))]
    done = 0
    for key in order:
        k = next((i for i, b in enumerate(bounds) if done < b), len(shares))
        parts[k] += groups[key]
        done += len(groups[key])
    return parts


class Fits:
    """Whether both responses of a pair fit ``max_length`` tokens of the base's tokenizer
    (with room for the special tokens and a little of the conversation)."""

    ROOM = 16  # tokens kept free for [CLS]/[SEP] and the conversation's tail

    def __init__(self, base: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(base / "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()
        self.limit = max_length - self.ROOM
        self.tested = self.passed = 0

    def __call__(self, p: Any) -> bool:
        self.tested += 1
        ok = all(len(e.ids) <= self.limit for e in self.tok.encode_batch([p.chosen, p.rejected]))
        self.passed += ok
        return ok


def _user_text(p: Any) -> str:
    return " ".join(m.content for m in p.conversation if m.role == "user")


def _longer_share(pairs: Sequence[Any]) -> float | None:
    flags = [p.chosen_longer for p in pairs if p.chosen_longer is not None]
    return round(sum(flags) / len(flags), 3) if flags else None


def _read(work: Path, name: str) -> list[Any]:
    from trainer.data.record import read_pairs

    return list(read_pairs(work / "data" / f"{name}.jsonl"))


# -- training and export ---------------------------------------------------------------------

def train_config(budget: Budget, seed: int, *, epochs: float | None = None) -> Any:
    """The built-in model's recipe (``default_model.recipe_config``) at this budget, with the
    trainer's length balancing off: it would change how many pairs each arm sees."""
    from app.pipelines.default_model import recipe_config

    args = argparse.Namespace(max_length=budget.max_length, lr=1e-4, length_head=0.0, length_ortho=1.0,
                              length_penalty=0.0, epochs=epochs or budget.epochs, seed=seed)
    return recipe_config(args, length_balance=False, global_batch=budget.batch,
                         per_device_batch=min(16, budget.batch), max_steps=budget.max_steps,
                         eval_every=budget.eval_every, warmup_steps=min(20, budget.eval_every),
                         progress=False)


def train_arm(base: Path, pairs: Sequence[Any], select: Sequence[Any], run: Path, cfg: Any,
              log: Callable[[str], None]) -> Path:
    """Train (or resume, or reuse) one model; returns its best checkpoint."""
    from trainer.bt.train import train

    best = run / "best"
    if (run / "done").is_file():
        return best
    resume = (run / "last" / "state" / "trainer.json").is_file()
    log(f"training {run.name}: {len(pairs)} pairs, {cfg.max_length} tokens" + (" (resumed)" if resume else ""))
    train(base, pairs, select, run, cfg, resume=resume, notes={"recipe": "app/pipelines/curation_experiment.py"})
    (run / "done").write_text("")
    return best


def export(best: Path, out: Path, max_length: int) -> Path:
    """ONNX fp32, as a user exports it (``arbiter export --format onnx``), reading up to
    ``max_length`` tokens (``Budget.eval_length``); reused when there."""
    import shutil

    from exports.onnx import export_onnx

    if (out / "model.onnx").is_file() or (out / "done").is_file():
        return out
    stage = out.with_name(out.name + ".part")
    if stage.exists():
        shutil.rmtree(stage)
    export_onnx(best, stage, max_length=max_length)
    (stage / "done").write_text("")
    stage.rename(out)
    return out


def tiny_base(out: Path, seed: int = 0) -> Path:
    """A seeded, random 2-layer BERT with MiniLM's tokenizer: ``--quick``'s base (fast to train
    and export; it shows the pipeline works, not what curation does)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainer.reference_models import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# -- the curation steps ------------------------------------------------------------------------

def recorded_judge(work: Path, threshold: float) -> Any:
    from trainer.curate.recorded import RecordedJudge

    return RecordedJudge(_read(work, "pool"), threshold=threshold)


def stage1(work: Path, base: Path, cfg: Any, embedder: Path, judge: Any, seed: int,
           log: Callable[[str], None]) -> dict[str, Any]:
    """One stage-1 round: its RM (trained on arm a, picked on gold_select) is arm (a)'s model."""
    from trainer.curate.stage1 import run_stage1

    out = work / "stage1"
    metrics = run_stage1(_read(work, "stage1_pool"), _read(work, "gold_select"), _read(work, "arm_a"), [judge],
                         1, out, base=base, train_config=cfg, embedder=embedder, human_share=0.0, seed=seed,
                         concurrency=1, progress=log)
    return metrics[0].to_dict()


def arm_b_pairs(work: Path, n: int) -> tuple[list[Any], dict[str, int]]:
    """Stage 1's relabelled pool pairs (ties out), then arm (a)'s pairs, to n pairs."""
    from trainer.data.record import read_pairs

    labelled = [p for p in read_pairs(work / "stage1" / "silver.jsonl") if not p.tie]
    fill = _read(work, "arm_a")
    out = (labelled + fill)[:n]
    return out, {"stage1_labelled": min(len(labelled), n), "from_arm_a": max(0, n - len(labelled))}


def stage2(work: Path, gold_rm: Path, current_rm: Path, embedder: Path, judge: Any, budget: Budget,
           seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Stage 2 over the whole pool (resumes its own store); returns its summary as a dict."""
    from trainer.curate.stage2 import Stage2Config, run_stage2

    cfg = Stage2Config(pool=[work / "data" / "pool.jsonl"], gold=[work / "data" / "gold_train.jsonl"],
                       gold_rm=gold_rm, current_rm=current_rm, out=work / "stage2", band="auto",
                       judges=[judge], embedder=embedder, samples=1, recycle=True, round=1,
                       batch_size=32, output_format="jsonl", threads=2, device="cpu", seed=seed)
    summary = run_stage2(cfg, progress=log)
    return _plain(summary)


def _plain(obj: Any) -> Any:
    """A summary object as JSON-able data (dataclass, dict or anything with to_dict)."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    try:
        return asdict(obj)
    except TypeError:
        return obj if isinstance(obj, dict) else {"summary": str(obj)}


def stage2_outputs(work: Path) -> tuple[list[Any], list[Any]]:
    """(kept, flipped) pairs stage 2 wrote, in shard order."""
    from trainer.data.record import read_pairs

    def folder(name: str) -> list[Any]:
        files = sorted(p for p in (work / "stage2" / name).glob("*") if p.suffix in (".jsonl", ".parquet"))
        return [x for f in files for x in read_pairs(f)]

    return folder("kept"), folder("flipped")


def sample(pairs: Sequence[Any], n: int, seed: int, what: str) -> list[Any]:
    """A seeded sample of n pairs; fewer than n is an error (every arm trains on n)."""
    if len(pairs) < n:
        from engine.errors import InputError

        raise InputError(f"stage 2 gave {len(pairs)} {what} pairs; every arm trains on {n} "
                         f"(lower --pairs or use a larger pool)", field="pairs")
    pick = list(pairs)
    random.Random(seed).shuffle(pick)
    return pick[:n]


# -- evaluation ----------------------------------------------------------------------------------

def _bench_specs(data: Path, work: Path, budget: Budget) -> dict[str, str]:
    """The built-in model card's benchmarks (RMB: its pairwise set), and the held-out gold."""
    from app.pipelines.card_summary import CARD_BENCHMARKS

    specs = {fmt: f"{fmt}:{data / rel}" for fmt, rel, _ in CARD_BENCHMARKS}  # RMB: set just below
    specs["auto-j"] = specs.pop("autoj")
    specs["rmb"] = f"rmb:{data / budget.rmb}"
    specs["gold"] = f"pairwise:{work / 'data' / 'gold_eval.jsonl'}"
    return specs


def evaluate(model: Path, data: Path, work: Path, budget: Budget, name: str) -> dict[str, Any]:
    """Every benchmark and the held-out gold, for the model and the baselines; cached as JSON."""
    out = work / "eval" / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    import engine
    from engine.store import Store
    from trainer.eval.runs import EvalStore

    store = EvalStore(Store(work / "eval" / "scores.db"))
    results: dict[str, Any] = {}
    with engine.load(model, threads=2) as rm:
        for key, spec in _bench_specs(data, work, budget).items():
            # the held-out gold has its own limit; RMB is large: its first records
            limit = budget.gold_eval_limit if key == "gold" else budget.rmb_limit if key == "rmb" \
                else budget.bench_limit
            results[key] = _one_benchmark(rm, spec, store, limit)
    store.store.db.conn.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    return results


def _one_benchmark(rm: Any, spec: str, store: Any, limit: int | None) -> dict[str, Any]:
    """{who: {metric: value}} for the model and each baseline; gold adds length_balanced."""
    from trainer.eval.baselines import baseline_scores
    from trainer.eval.benchmarks import evaluate as evaluate_scored
    from trainer.eval.diagnostics import length_bias
    from trainer.eval.items import complete
    from trainer.eval.runner import resolve, score_benchmark
    from trainer.eval.runs import model_identity

    benches, _ = resolve([spec])
    scored = []
    for bench in benches:
        scored += score_benchmark(rm, bench, store, model_identity(rm.info), limit=limit)[0]
    fmt = benches[0].format
    res = evaluate_scored(fmt, scored)
    out: dict[str, Any] = {"records": res["records"], "skipped": res["skipped"], **res["metrics"]}
    usable = complete(scored)
    lists = {"model": usable, **baseline_scores([s.record for s in usable])}
    for who, items in lists.items():
        lb = length_bias(items)
        lo, sh = lb["chosen_longer"]["accuracy"], lb["chosen_shorter"]["accuracy"]
        out[who] = {**out[who], "length_balanced": (lo + sh) / 2, "chosen_longer": lo, "chosen_shorter": sh}
    return out


def _metric(result: dict[str, Any], who: str, path: Sequence[str]) -> float | None:
    v: Any = result.get(who)
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return float(v) if isinstance(v, int | float) and not math.isnan(float(v)) else None


def table(evals: dict[str, dict[str, Any]]) -> str:
    """The markdown table: one row per model, then the baselines (from the first model's records)."""
    head = "| model | " + " | ".join(c[0] for c in COLUMNS) + " | mean of the 5 benchmarks |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]

    def row(label: str, res: dict[str, Any], who: str) -> str:
        vals = [_metric(res.get(key, {}), who, path) for _, key, path in COLUMNS]
        bench = [v for v in vals[:5] if v is not None]
        cells = ["n/a" if v is None else f"{v:.1f}" for v in vals]
        mean = f"{sum(bench) / len(bench):.1f}" if len(bench) == 5 else "n/a"
        return f"| {label} | " + " | ".join(cells) + f" | {mean} |"

    for name, res in evals.items():
        rows.append(row(ARM_NAMES.get(name, name), res, "model"))
    first = next(iter(evals.values()), None)
    if first is not None:
        for who in ("random", "longer", "shorter"):
            rows.append(row(f"baseline: {who} wins" if who != "random" else "baseline: random", first, who))
    return "\n".join(rows)


def records_line(evals: dict[str, dict[str, Any]]) -> str:
    first = next(iter(evals.values()), {})
    return ", ".join(f"{key} {first[key]['records']} records ({first[key]['skipped']} too long)"
                     for _, key, _ in COLUMNS[:6] if key in first)


# -- the whole run ---------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "curation-experiment")
    ap.add_argument("--results", type=Path, default=None,
                    help=f"the markdown table (default: {RESULTS.relative_to(ROOT)}; --quick: WORK/results.md)")
    ap.add_argument("--quick", action="store_true", help="a tiny budget and a tiny random base (the test's)")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs per arm")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--stage2-pool", type=int, default=None, help="pool pairs stage 2 curates (0: all the silver that fits)")
    ap.add_argument("--stage1-pool", type=int, default=None, help="pool pairs stage 1 may retrieve from")
    ap.add_argument("--epochs", type=float, default=None, help="passes over each arm's pairs")
    ap.add_argument("--gold-epochs", type=float, default=None, help="the gold RM's passes over gold_train")
    ap.add_argument("--batch", type=int, default=None, help="pairs per optimizer step")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between gold_select evaluations")
    ap.add_argument("--bench-limit", type=int, default=None,
                    help="records per benchmark, RMB's pairwise set included (0: all, RMB's first 600)")
    ap.add_argument("--base", type=Path, default=None, help="default: all-MiniLM-L6-v2 (--quick: a tiny BERT)")
    ap.add_argument("--embedder", type=Path, default=None,
                    help="sentence embedder folder for retrieval (default: exports.embedder.default_embedder())")
    ap.add_argument("--judge-threshold", type=float, default=0.75,
                    help="the recorded judge says tie below this P(chosen better)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the markdown from WORK/results.json")
    return ap


def budget_of(args: argparse.Namespace) -> Budget:
    b = QUICK if args.quick else FULL
    given = {"pairs": args.pairs, "max_length": args.max_length, "stage2_pool": args.stage2_pool,
             "stage1_pool": args.stage1_pool, "epochs": args.epochs, "gold_epochs": args.gold_epochs,
             "batch": args.batch, "eval_every": args.eval_every, "bench_limit": args.bench_limit}
    over = {k: v for k, v in given.items() if v is not None}
    for k, v in over.items():  # before any data is read: a bad budget is refused at once
        if v < 0 or (v == 0 and k not in ("stage2_pool", "bench_limit")):
            flag = "--" + k.replace("_", "-")
            raise SystemExit(f"curation-experiment: {flag} {v}: expected a positive number"
                             + (" (or 0: all)" if k in ("stage2_pool", "bench_limit") else ""))
    if over.get("stage2_pool") == 0:
        over["stage2_pool"] = None
    if "bench_limit" in over:  # RMB is large: 0 reads its first 600 records, as the model card does
        over["rmb_limit"] = over["bench_limit"] or 600
        over["bench_limit"] = over["bench_limit"] or None
    return replace(b, **over)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the shared data folder is needed for the curation experiment")
    budget = budget_of(args)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_md = args.results or (work / "results.md" if args.quick else RESULTS)
    if args.render_only:
        return render_only(work, results_md, args.quick)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    base = args.base or (tiny_base(work / "tiny-base", args.seed) if args.quick else _minilm())
    report = prepare(args.data, work, budget, args.seed, base)
    log(f"data: {report['sizes']}")
    embedder = args.embedder or _default_embedder()
    cfg = train_config(budget, args.seed)
    judge = recorded_judge(work, args.judge_threshold)
    select = _read(work, "gold_select")
    facts: dict[str, Any] = {"data": report, "judge": {"threshold": args.judge_threshold, "records": len(judge)},
                             "command": command_line(argv)}

    gold_best = train_arm(base, _read(work, "gold_train"), select, work / "gold-rm",
                          train_config(budget, args.seed, epochs=budget.gold_epochs), log)
    gold_onnx = export(gold_best, work / "models" / "gold", budget.eval_length)
    facts["stage1"] = stage1(work, base, cfg, embedder, judge, args.seed, log)
    models = {"a": export(work / "stage1" / "round-1" / "rm" / "best", work / "models" / "a", budget.eval_length)}
    facts["stage2"] = stage2(work, gold_onnx, models["a"], embedder, judge, budget, args.seed, log)
    sets = arm_sets(work, budget.pairs, args.seed, facts)
    for arm in ("b", "c", "d"):
        best = train_arm(base, sets[arm], select, work / f"arm-{arm}", cfg, log)
        models[arm] = export(best, work / "models" / arm, budget.eval_length)
    profile(work, facts, sets, judge.threshold)
    evals = {}
    for name in (*ARMS, "gold"):
        log(f"evaluating {name}")
        evals[name] = evaluate(models[name] if name != "gold" else gold_onnx, args.data, work, budget, name)
    facts["minutes"] = round((time.time() - t0) / 60, 1)
    (work / "results.json").write_text(json.dumps({"facts": facts, "evals": evals}, indent=2, default=str))
    md = render(evals, facts, quick=args.quick)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(md)
    print(md)
    log(f"table written to {results_md}")
    return 0


def command_line(argv: list[str] | None) -> str:
    """The command as run, for the results file (paths inside the repository made relative)."""
    import shlex

    words = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "app.pipelines.curation_experiment",
                       *(w.replace(str(ROOT) + "/", "") for w in words)])


def arm_sets(work: Path, n: int, seed: int, facts: dict[str, Any]) -> dict[str, list[Any]]:
    """Each arm's n training pairs (deterministic: a rerun rebuilds the same sets); facts noted."""
    b_pairs, facts["arm_b"] = arm_b_pairs(work, n)
    kept, flipped = stage2_outputs(work)
    facts["stage2_outputs"] = {"kept": len(kept), "flipped": len(flipped)}
    facts["stage2_by_length"] = kept_by_length(kept, flipped)
    sets = {"a": _read(work, "arm_a"), "b": b_pairs, "c": sample(kept, n, seed, "kept"),
            "d": sample(kept + flipped, n, seed, "kept + flipped")}
    facts["arm_d"] = {"flipped": sum(p.label_origin == "flipped" for p in sets["d"])}
    facts["train_pairs"] = {arm: len(ps) for arm, ps in sets.items()}
    return sets


def profile(work: Path, facts: dict[str, Any], sets: dict[str, Sequence[Any]], threshold: float) -> None:
    """The facts that explain the table: what each arm's data looks like, the judge, the band."""
    facts["arm_profiles"] = arm_profiles(sets, threshold)
    facts["judge"]["pool_ties"] = _ties(_read(work, "pool"), threshold)
    facts["band"] = stage2_band(work)
    facts["learning"] = learning(work)


def kept_by_length(kept: Sequence[Any], flipped: Sequence[Any]) -> dict[str, Any]:
    """Stage 2's keep rate by whether the original label chose the longer response: a filter that
    keeps one side far more often filters by length. A flipped pair's original label is its
    reverse; pairs of equal length (``chosen_longer`` None) are left out."""
    decided = [(p.chosen_longer, True) for p in kept] + [
        (None if p.chosen_longer is None else not p.chosen_longer, False) for p in flipped]
    out: dict[str, Any] = {}
    for side, longer in (("longer", True), ("shorter", False)):
        was_kept = [k for lo, k in decided if lo is longer]
        out[f"chosen_{side}"] = len(was_kept)
        out[f"kept_if_chosen_{side}"] = round(sum(was_kept) / len(was_kept), 3) if was_kept else None
    return out


#: each model's training run, by the table's name
RUNS = {"gold": "gold-rm", "a": "stage1/round-1/rm", "b": "arm-b", "c": "arm-c", "d": "arm-d"}


def learning(work: Path) -> dict[str, dict[str, Any]]:
    """Whether each model learnt anything: its steps, best step and gold_select accuracy there,
    and the spread of its rewards (a model that learnt nothing scores every response alike)."""
    out = {}
    for name, run in RUNS.items():
        state = work / run / "last" / "state" / "trainer.json"
        if not state.is_file():
            continue
        t = json.loads(state.read_text())
        g = t.get("best_gold") or {}
        out[name] = {"steps": t.get("step"), "best_step": t.get("best_step"), "gold_select": g.get("accuracy"),
                     "gold_select_length_balanced": g.get("accuracy_length_balanced"),
                     "gold_select_loss": g.get("loss"), "reward_std": g.get("reward_std")}
    return out


def arm_profiles(sets: dict[str, Sequence[Any]], threshold: float) -> dict[str, dict[str, Any]]:
    """Per arm: the chosen-longer share, flipped pairs, pairs shared with arm (a), recorded-judge ties."""
    a_ids = {p.id for p in sets["a"]}
    return {arm: {"pairs": len(ps), "chosen_longer": _longer_share(ps),
                  "flipped": sum(p.label_origin == "flipped" for p in ps),
                  "shared_with_a": sum(p.id in a_ids for p in ps),
                  "judge_would_tie": _ties(ps, threshold)} for arm, ps in sets.items()}


def _ties(pairs: Sequence[Any], threshold: float) -> int:
    from trainer.curate.recorded import chosen_confidence

    return sum(chosen_confidence(p) < threshold for p in pairs)


def stage2_band(work: Path) -> Any:
    """Stage 2's band choice as it stored it (meta ``band``), read without taking a lock."""
    import sqlite3

    db = work / "stage2" / "stage2.db"
    if not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("select value from meta where key = 'band'").fetchone()
    finally:
        con.close()
    return json.loads(row[0]) if row else None


def half_width(n: int, p: float = 0.65) -> float:
    """95% binomial half-width in points for an accuracy near p on n records (how far apart two
    arms must be before the difference means anything)."""
    return 196 * math.sqrt(p * (1 - p) / n) if n else math.nan


def render_only(work: Path, results_md: Path, quick: bool) -> int:
    """Rewrite the markdown from WORK/results.json (no model is loaded)."""
    if not (work / "results.json").is_file():
        sys.exit(f"{work / 'results.json'}: no finished run to render in this work folder")
    out = json.loads((work / "results.json").read_text())
    facts = out["facts"]
    if not {"arm_profiles", "learning", "stage2_by_length"} <= set(facts):  # from before they were recorded
        budget = facts["data"]["budget"]
        profile(work, facts, arm_sets(work, budget["pairs"], facts["data"]["seed"], facts),
                facts["judge"]["threshold"])
        (work / "results.json").write_text(json.dumps(out, indent=2, default=str))
    md = render(out["evals"], facts, quick=quick)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(md)
    print(md)
    return 0


def render(evals: dict[str, dict[str, Any]], facts: dict[str, Any], *, quick: bool) -> str:
    """The results file: the table, what produced it, and the facts needed to read it."""
    budget = facts["data"]["budget"]
    cmd = facts.get("command") or ("python -m app.pipelines.curation_experiment" + (" --quick" if quick else ""))
    s2 = facts.get("stage2", {})
    lines = [
        "# The curation experiment (issue 15)", "",
        f"`{cmd}`, {time.strftime('%Y-%m-%d')}, "
        f"{facts['minutes']} min on this machine. Accuracy in %, each model exported to ONNX fp32 and "
        "scored through the engine (`trainer.eval`, as `arbiter eval` runs it).", "",
        table(evals), "",
        f"Records: {records_line(evals)}; RM-Bench is the mean of hard/normal/easy; gold = the held-out "
        "human pairs (PandaLM + OASST), length-balanced = mean of chosen-longer and chosen-shorter accuracy.",
        "",
        f"Budget: {budget['pairs']} training pairs per arm, {budget['max_length']} tokens, "
        f"{budget['epochs']} epoch(s) (max steps {budget['max_steps']}; the gold RM "
        f"{budget.get('gold_epochs')} over gold_train), batch {budget['batch']}, gold_select every "
        f"{budget.get('eval_every')} steps; "
        f"the same base, settings and checkpoint selection (gold_select) for every arm.", "",
        "Roles: silver = AlpacaEval GPT-4-family annotations (one annotator per pair); gold = human "
        "PandaLM + OASST pairs; judge = the pool's recorded annotator vote (`trainer/curate/recorded.py`): "
        "the label's own source, with only the soft preference of weighted_alpaca_eval_gpt4_turbo as a "
        f"confidence (tie below P = {facts['judge']['threshold']}).", "",
        *reading(evals, facts), "",
        "## Facts", "",
        "```json", json.dumps({"sizes": facts["data"]["sizes"], "stage1": _short(facts.get("stage1")),
                               "arm_b": facts.get("arm_b"), "stage2": _short(s2),
                               "stage2_outputs": facts.get("stage2_outputs"), "arm_d": facts.get("arm_d"),
                               "train_pairs": facts.get("train_pairs"), "judge": facts.get("judge")},
                              indent=1, default=str), "```", "",
    ]
    return "\n".join(lines)


def reading(evals: dict[str, dict[str, Any]], facts: dict[str, Any]) -> list[str]:
    """What is needed to read the table: noise per column, each arm's data, the band."""
    first = next(iter(evals.values()), {})
    noise = ", ".join(f"{title} +/-{half_width(_n(first.get(key, {}))):.1f} (n={_n(first.get(key, {}))})"
                      for title, key, _ in COLUMNS[:6] if key in first)
    out = ["## Reading it", "",
           f"95% binomial half-width of one accuracy near 65%, in points: {noise}. Two arms closer "
           "than about that are not told apart by this run.", ""]
    prof = facts.get("arm_profiles")
    if prof:
        out += ["| arm | training pairs | chosen longer | flipped | shared with (a) | recorded judge would tie |",
                "|---|---|---|---|---|---|"]
        out += [f"| {ARM_NAMES[a]} | {v['pairs']} | {v['chosen_longer']} | {v['flipped']} | {v['shared_with_a']} "
                f"| {v['judge_would_tie']} |" for a, v in prof.items()]
        out.append("")
    learnt = facts.get("learning")
    if learnt:
        out += ["Did each model learn? Its run's best checkpoint on gold_select (which picks it; "
                "P(chosen better) 0.5 everywhere gives loss 0.693):", "",
                "| model | steps | best step | gold_select accuracy | length-balanced | loss | reward std |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {ARM_NAMES[k]} | {v['steps']} | {v['best_step']} | {_fmt(v['gold_select'])} "
                f"| {_fmt(v['gold_select_length_balanced'])} | {_fmt(v['gold_select_loss'])} "
                f"| {_fmt(v['reward_std'])} |" for k, v in learnt.items()]
        out.append("")
    by_len = facts.get("stage2_by_length")
    if by_len and by_len.get("kept_if_chosen_longer") is not None:
        out += [f"Stage 2 kept {_pct(by_len['kept_if_chosen_longer'])} of the pool pairs whose label chose the "
                f"longer response (n={by_len['chosen_longer']}) and {_pct(by_len['kept_if_chosen_shorter'])} of "
                f"those whose label chose the shorter one (n={by_len['chosen_shorter']}).", ""]
    band = facts.get("band")
    if isinstance(band, dict) and band.get("table"):
        on = band.get("measured_on")
        on = f"{on.get('pairs')} gold_train pairs" if isinstance(on, dict) else on
        out += [f"Stage 2's band (auto, target {band.get('target')}): {band.get('band')} "
                f"(measured on {on}); the current RM (= arm a) on gold, by band:", "",
                "| band | accuracy | coverage |", "|---|---|---|"]
        out += [f"| {r.get('band')} | {_fmt(r.get('accuracy'))} | {_fmt(r.get('coverage'))} |"
                for r in band["table"]]
        out.append("")
    return out


def _n(result: dict[str, Any]) -> int:
    m = result.get("model", {})
    m = m.get("pairwise", m) if isinstance(m.get("pairwise"), dict) else m
    return int(m.get("n", result.get("records", 0)) or 0)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else str(x)


def _short(d: Any) -> Any:
    """A summary without its long lists (band tables are kept)."""
    if not isinstance(d, dict):
        return d
    return {k: v for k, v in d.items() if not (isinstance(v, list) and len(v) > 40)}


def _minilm() -> Path:
    from app.pipelines.default_model import minilm_dir

    return minilm_dir()


def _default_embedder() -> Path:
    from exports.embedder import default_embedder

    return default_embedder()


def cli() -> int:
    """``main`` with the CLI's manners: a bad input or model is one line and exit code 2."""
    from engine.errors import ArbiterError

    try:
        return main()
    except ArbiterError as e:
        print(f"curation-experiment: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(cli())
