"""The built-in moderation model's extra evaluation sets, derived from ``../shared/data`` in place.

``python -m app.pipelines.moderation_sets`` writes JSONL files ``{"text", "label"}`` (label 1 =
unsafe) under ``build/moderation-eval/`` that ``arbiter moderate report`` reads: the sources use
labels the report does not take ("Toxic", "hate", "hateful"), or a harmful set has no benign
half to measure over-flagging against.

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
    mix: dict[str, int] = {}
    for e in examples:
        mix[e.source] = mix.get(e.source, 0) + 1
    mix["hh-rlhf pairs"] = len(pairs)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=mm.DATA)
    ap.add_argument("--out", type=Path, default=OUT, help="the folder for the sets (default build/moderation-eval)")
    args = ap.parse_args(argv)
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
    harmless = json.loads((d / "harmful-prompts" / "refusal_direction" / "harmless_test.json").read_text())
    benign = [x["instruction"] for x in random.Random(f"harmless:{SEED}").sample(harmless, HARMLESS_ROWS)]
    sets = harmful_sets(d)
    for name, prompts in sets.items():
        write_set(out, name, [(p, 1) for p in prompts] + [(p, 0) for p in benign], held, stats)
    write_set(out, "harmful-all", [(p, 1) for ps in sets.values() for p in ps] + [(p, 0) for p in benign], held, stats)
    (out / "sets.json").write_text(json.dumps({"seed": SEED, "harmless_rows": HARMLESS_ROWS, "sets": stats},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
