"""Safety prompts the trainers may learn from: one reader, with the licence of each source.

``../shared/data/README.md``: a folder without a licence file is evaluation-only. The
refusal-direction prompts (``harmful-prompts/refusal_direction``) have none, so they are
evaluation sets here (harmful/harmless *test* prompts, the over-flagging share), never training
data. What trains instead is below; the moderation model (app/pipelines/moderation_model.py) and
the synthetic refusal pairs (trainer/data/synthetic.py) both read it.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def harmful_train_prompts(data: Path) -> list[str]:
    """Harmful requests we may train on: HarmBench's *validation* behaviours (standard and
    contextual), its adversarial-training behaviours and TDC 2023's, all under
    ``behavior_datasets/LICENSE.txt`` (MIT). Not the refusal-direction files: that folder states
    no licence, so it is evaluation-only (../shared/data/README.md). HarmBench's test split,
    AdvBench, StrongREJECT and MaliciousInstruct are the evaluation sets."""
    b = data / "harmful-prompts" / "behavior_datasets"

    val = [r["Behavior"] for r in _csv(b / "harmbench_behaviors_text_val.csv")
           if r["FunctionalCategory"] in ("standard", "contextual")]
    extra = b / "extra_behavior_datasets"
    return val + [r["Behavior"] for f in ("adv_training_behaviors.csv", "tdc2023_test_phase_behaviors.csv")
                  for r in _csv(extra / f)]


def harmless_train_prompts(data: Path) -> list[str]:
    """Benign requests we may train on: PandaLM's instructions (with their input) and OASST's
    conversation openers (Apache-2.0 both), and the AlpacaEval preference pool's prompts (CC BY-NC
    4.0, as the default model uses them). The harmless Alpaca prompts of the refusal-direction
    folder state no licence: they are evaluation-only (the over-flagging share)."""
    panda = [(x["instruction"] + ("\n" + x["input"] if x.get("input") else "")).strip()
             for x in json.loads((data / "pandalm" / "testset-v1.json").read_text(encoding="utf-8"))]
    seen, oasst = set(), []
    with (data / "oasst-en100" / "pairs_from_ranks.jsonl").open(encoding="utf-8") as f:
        for line in f:
            ctx = json.loads(line)["context"]
            first = ctx[0]["content"] if ctx else ""
            if first and first not in seen:
                seen.add(first)
                oasst.append(first)
    with gzip.open(data / "alpacaeval-gpt4-prefs" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        alpaca = sorted({json.loads(line)["prompt"] for line in f if line.strip()})
    return sorted(set(panda)) + oasst + alpaca
