"""The built-in moderation model's extra evaluation sets, derived from ``../shared/data`` in place.

``python -m app.pipelines.moderation_sets`` writes JSONL files ``{"text", "label"}`` (label 1 =
unsafe) under ``build/moderation-eval/`` that ``arbiter moderate report`` reads: the sources use
labels the report does not take ("Toxic", "hate", "hateful"), or a harmful set has no benign
half to measure over-flagging against. XSTest is its held-out half only
(:func:`app.pipelines.moderation_xstest.xstest_split`: the other half trains the model).
``--reports`` then runs every report (:data:`RUNS`, the real CLI, the Gemma judge on a seeded
sample of each: its answers are cached, so a rerun after the model changed asks it nothing
again) and ``--tables`` writes ``build/moderation-eval/tables.md``, which the model card and
the README show (``make moderation-eval`` does all three).

Why the decontamination step: the model trained on the refusal-direction harmful *train*
prompts, which are drawn from AdvBench, MaliciousInstruct, HarmBench and TDC 2023, and on
openai-moderation, DiaSafety and hh-rlhf texts. A row that shares its normalised whole text or a
13-gram with any text the model trained on is left out here (the counts are printed and kept in
``build/moderation-eval/sets.json``), so every reported row is held out. The training texts are
rebuilt with the recipe's own functions and defaults, and checked against ``build.json``'s mix.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from app.pipelines import moderation_model as mm

OUT = mm.ROOT / "build" / "moderation-eval"
HARMLESS_ROWS = 300  # harmless test prompts beside each harmful set (a seeded sample, the same rows)
SEED = 0


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def training_texts(data: Path) -> list[str]:
    """Every text and context the shipped model trained on (the recipe's defaults, seed 0)."""
    splits = mm.split_moderation(mm.moderation_rows(data), SEED)
    decon = mm.Decon(mm.eval_texts(data, splits["calibration"] + splits["test"]))
    examples, pairs = mm.build_examples(data, splits["train"], decon, seed=SEED, dia=2500, harmful=800,
                                        harmless=1500, hh=800)
    mix = mm.mix_of(examples, pairs)
    built = mm.ROOT / "build" / "moderation-model" / "build.json"
    if built.is_file() and json.loads(built.read_text())["mix"] != mix:
        sys.exit(f"the rebuilt training mix {mix} is not {built}'s: the recipe changed since the build")
    texts = [t for e in examples for t in (e.text, e.context) if t]
    return texts + [t for c, r in pairs for e in (c, r) for t in (e.text, e.context) if t]


class Held:
    """Drops rows that share a whole normalised text or a 13-gram with the training texts."""

    def __init__(self, train: Iterable[str]) -> None:
        from trainer.data.hygiene import Decontaminator

        texts = list(train)
        self.grams = Decontaminator([], 13)
        self.grams.add_texts(texts, "moderation-model train")
        self.whole = {mm._norm(t) for t in texts}

    def trained_on(self, text: str) -> bool:
        return mm._norm(text) in self.whole or self.grams.hit(text) is not None


def write_set(out: Path, name: str, rows: Sequence[tuple[str, int]], held: Held, stats: dict[str, Any]) -> None:
    """Write the held-out rows of one set; record how many were dropped as trained on."""
    kept = [(t, y) for t, y in rows if t.strip() and not held.trained_on(t)]
    path = out / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for t, y in kept:
            f.write(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n")
    stats[name] = {"rows": len(kept), "unsafe": sum(y for _, y in kept), "dropped_trained_on": len(rows) - len(kept),
                   "path": str(path)}
    print(f"{name}: {len(kept)} rows ({sum(y for _, y in kept)} unsafe), {len(rows) - len(kept)} dropped "
          "(shared with the training texts)", flush=True)


def harmful_sets(data: Path) -> dict[str, list[str]]:
    """The harmful-prompt sets (HarmBench: the test split's standard and contextual behaviours)."""
    b = data / "harmful-prompts" / "behavior_datasets"
    harmbench = [r["Behavior"] for r in _csv(b / "harmbench_behaviors_text_test.csv")
                 if r["FunctionalCategory"] in ("standard", "contextual")]
    return {
        "harmbench": harmbench,
        "advbench": [r["Behavior"] for r in _csv(b / "extra_behavior_datasets" / "advbench_behaviors.csv")],
        "strongreject": [r["forbidden_prompt"] for r in _csv(b / "strongreject_dataset.csv")],
        "maliciousinstruct": [x for x in (b / "malicious_instruct.txt").read_text(encoding="utf-8").splitlines()
                              if x.strip()],
    }


#: every report: (name, input, label fields, context field, judge sample rows or 0 for none)
RUNS: tuple[tuple[str, str, str, str | None, int], ...] = (
    ("surge", "build/moderation-eval/surge.jsonl", "label", None, 20),
    ("toxigen", "build/moderation-eval/toxigen.jsonl", "label", None, 20),
    ("xstest", "build/moderation-eval/xstest.jsonl", "label", None, 40),
    ("hatecheck", "build/moderation-eval/hatecheck.jsonl", "label", None, 20),
    ("harmful-all", "build/moderation-eval/harmful-all.jsonl", "label", None, 20),
    ("openai-judge", "build/moderation-model/openai-moderation-test.jsonl", "S,H,V,HR,SH,S3,H2,V2", None, 20),
    ("diasafety-judge", "build/moderation-model/diasafety-test.jsonl", "label", "context", 20),
    ("harmbench", "build/moderation-eval/harmbench.jsonl", "label", None, 0),
    ("advbench", "build/moderation-eval/advbench.jsonl", "label", None, 0),
    ("strongreject", "build/moderation-eval/strongreject.jsonl", "label", None, 0),
    ("maliciousinstruct", "build/moderation-eval/maliciousinstruct.jsonl", "label", None, 0),
)
TITLES = {"surge": "Surge toxicity", "toxigen": "ToxiGen hate / neutral",
          "xstest": "XSTest held-out half, unsafe / safe prompts", "hatecheck": "HateCheck hateful / non-hateful",
          "harmful-all": "harmful prompts, the four sets / harmless test",
          "openai-judge": "openai-moderation test split", "diasafety-judge": "DiaSafety test, response in context",
          "harmbench": "HarmBench test, standard + contextual", "advbench": "AdvBench",
          "strongreject": "StrongREJECT", "maliciousinstruct": "MaliciousInstruct"}


def command(name: str, src: str, labels: str, context: str | None, judge: int) -> list[str]:
    """The `arbiter moderate report` arguments of one run (also what the tables print)."""
    text = {"openai-judge": "prompt", "diasafety-judge": "response"}.get(name, "text")
    argv = ["moderate", "report", src, "--model", "moderation", "--text-field", text, "--label-field", labels]
    argv += ["--context-field", context] if context else []
    argv += ["--judge", "gemma", "--judge-sample", str(judge)] if judge else []
    return argv + ["--no-plots", "--out", f"build/moderation-eval/report-{name}"]


def run_reports(only: Sequence[str] | None = None) -> None:
    """Every report of :data:`RUNS` (or those named): the real CLI, from the project root."""
    import subprocess

    for run in RUNS:
        if only and run[0] not in only:
            continue
        argv = command(*run)
        print("arbiter " + " ".join(argv[:2]) + f" {run[0]} ...", flush=True)
        if subprocess.run([sys.executable, "-m", "app.cli.main", *argv], cwd=mm.ROOT).returncode:
            sys.exit(f"report {run[0]} failed: arbiter {' '.join(argv)}")


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def tables(root: Path = OUT) -> list[str]:
    """Markdown: per set, the model beside every baseline (F1 / AUROC at the shipped thresholds),
    then recall and the share of safe rows flagged; from the report.json files."""
    lines = ["| set (unsafe / safe rows) | model F1 / AUROC | keyword F1 / AUROC | random F1 | default RM F1 / AUROC "
             "| Gemma judge F1 / AUROC (sample) | model, same sample |", "|---|---|---|---|---|---|---|"]
    rates = ["| recall (unsafe rows) / share of safe rows flagged | model | keyword | random | default RM |",
             "|---|---|---|---|---|"]
    for name, *_ in RUNS:
        f = root / f"report-{name}" / "report.json"
        if not f.is_file():
            continue
        t = json.loads(f.read_text())["targets"]["overall"]
        m, pos = t["methods"], t["positives"]
        j, mj = m.get("judge"), m.get("model@judge-sample")
        judge = f"{_f(j['f1'])} / {_f(j['auroc'])} ({j['rows']}, {j['tp'] + j['fn']} unsafe)" if j else "-"
        same = f"{_f(mj['f1'])} / {_f(mj['auroc'])}" if mj else "-"
        lines.append(f"| {TITLES[name]} ({pos:,} / {t['rows'] - pos:,}) | {_f(m['model']['f1'])} / "
                     f"{_f(m['model']['auroc'])} | {_f(m['keyword']['f1'])} / {_f(m['keyword']['auroc'])} | "
                     f"{_f(m['random']['f1'])} | {_f(m['default-rm']['f1'])} / {_f(m['default-rm']['auroc'])} | "
                     f"{judge} | {same} |")
        cells = []
        for k in ("model", "keyword", "random", "default-rm"):
            x = m[k]
            safe = x["fp"] + x["tn"]
            cells.append(f"{_f(x['recall'])} / {_f(x['fp'] / safe) if safe else '-'}")
        rates.append(f"| {TITLES[name]} | " + " | ".join(cells) + " |")
    cmds = ["```sh", ".venv/bin/python -m app.pipelines.moderation_sets --reports --tables   # make moderation-eval",
            "# which runs, for each set:"]
    cmds += ["arbiter " + " ".join(command(*r)) for r in RUNS]
    return [*lines, "", *rates, "", *cmds, "```"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=mm.DATA)
    ap.add_argument("--out", type=Path, default=OUT, help="the folder for the sets (default build/moderation-eval)")
    ap.add_argument("--reports", action="store_true", help="then run every report (RUNS)")
    ap.add_argument("--only", action="append", default=None, help="with --reports: only this report (repeatable)")
    ap.add_argument("--tables", action="store_true", help="then write OUT/tables.md from the reports")
    ap.add_argument("--no-sets", action="store_true", help="reuse the sets already in OUT")
    args = ap.parse_args(argv)
    if not args.no_sets:
        write_sets(args)
    if args.reports:
        run_reports(args.only)
    if args.tables:
        (args.out / "tables.md").write_text("\n".join(tables(args.out)) + "\n")
        print(f"wrote {args.out / 'tables.md'}")
    return 0


def write_sets(args: argparse.Namespace) -> None:
    """Derive every set from the shared data, held out against the model's training texts."""
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the shared data folder is needed")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    held = Held(training_texts(args.data))
    stats: dict[str, Any] = {}
    d = args.data
    write_set(out, "surge", [(r["text"], int(r["is_toxic"] == "Toxic"))
                        for r in _csv(d / "surge-toxicity" / "toxicity_en.csv")], held, stats)
    write_set(out, "toxigen", [(r["text"], int(r["label"] == "hate"))
                          for r in _csv(d / "toxigen-prompts" / "toxigen_seed_sentences.csv")], held, stats)
    hc = [(r["test_case"], int(r["label_gold"] == "hateful")) for r in _csv(d / "hatecheck" / "test_suite_cases.csv")]
    random.Random(f"hatecheck:{SEED}").shuffle(hc)  # the file is ordered by functionality: --limit takes a fair share
    write_set(out, "hatecheck", hc, held, stats)
    from app.pipelines.moderation_xstest import heldout_rows

    write_set(out, "xstest", [(r["text"], r["label"]) for r in heldout_rows(d, SEED)], held, stats)
    harmless = json.loads((d / "harmful-prompts" / "refusal_direction" / "harmless_test.json").read_text())
    benign = [x["instruction"] for x in random.Random(f"harmless:{SEED}").sample(harmless, HARMLESS_ROWS)]
    sets = harmful_sets(d)
    for name, prompts in sets.items():
        write_set(out, name, [(p, 1) for p in prompts] + [(p, 0) for p in benign], held, stats)
    write_set(out, "harmful-all", [(p, 1) for ps in sets.values() for p in ps] + [(p, 0) for p in benign], held, stats)
    (out / "sets.json").write_text(json.dumps({"seed": SEED, "harmless_rows": HARMLESS_ROWS, "sets": stats},
                                              indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
