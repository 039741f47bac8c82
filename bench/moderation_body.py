"""Which moderation body pays: frozen (head only) or the top layers fine-tuned, measured side by side.

Each variant is trained by the recipe's own functions (app/pipelines/moderation_model.py) on the
same seeded training texts, then scored with torch (first 128 tokens of a text; no windows) on:

Texts are cut to the recipe's first 600 characters (``TRAIN_CHARS``), as training cuts them; no
windows, so this compares bodies, not the shipped pipeline (the reports do that).

* openai-moderation's calibration split: AUROC of ``overall`` and the mean AUROC of the eight
  categories; the ``overall`` threshold is fitted here, at the F1-best point;
* XSTest's held-out half (app/pipelines/moderation_xstest.py): AUROC, and the share of its safe
  prompts flagged at that threshold (over-flagging);
* HateCheck (600 seeded cases): AUROC, and the share of non-hateful cases flagged.

    .venv/bin/python bench/moderation_body.py [--variants frozen,tune2,tune4] [--epochs 2]
        [--reuse tune2=build/moderation-model/hf]

Writes bench/results/moderation_body.md. It trains every variant (5-30 minutes each on 2 shared
cores) but those given as ``--reuse NAME=HF_FOLDER``: a model already trained by the same recipe
(``make moderation-model`` trains ``tune2``), which is then only evaluated.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

from app.pipelines import moderation_model as mm
from app.pipelines.moderation_xstest import heldout_rows

OUT = mm.ROOT / "bench" / "results" / "moderation_body.md"


def logits(hf: Path, texts: list[tuple[str, str | None]]):
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(hf).eval()
    # framed as the recipe frames its training texts: the first TRAIN_CHARS characters (a text
    # that still tokenizes past 128 tokens is scored as the recipe's stand-in, counted below)
    ids = mm.token_ids(hf, [(mm._cut(t), c) for t, c in texts])
    out = np.zeros((len(ids), len(mm.OUTPUTS)), dtype=np.float64)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.inference_mode():
        for k in range(0, len(order), 64):
            rows = order[k:k + 64]
            x, m = mm.padded(ids, rows)
            out[rows] = model(input_ids=x, attention_mask=m, token_type_ids=torch.zeros_like(x)).logits.numpy()
    return out


def evaluate(hf: Path, work: Path, data: Path) -> dict[str, float]:
    from app.moderate.report import auroc
    from app.moderate.thresholds import curve

    texts, labels = mm.labelled_texts(work / "openai-moderation-calibration.jsonl")
    z = logits(hf, [(t, None) for t in texts])
    res: dict[str, float] = {}
    keep = [i for i, v in enumerate(labels["overall"]) if v is not None]
    ys = [bool(labels["overall"][i]) for i in keep]
    scores = [float(z[i, 0]) for i in keep]
    res["openai overall AUROC"] = auroc(scores, ys)
    cats = []
    for k, name in enumerate(mm.OUTPUTS[1:], 1):
        kk = [i for i, v in enumerate(labels[name]) if v is not None]
        yy = [bool(labels[name][i]) for i in kk]
        if any(yy) and not all(yy):
            cats.append(auroc([float(z[i, k]) for i in kk], yy))
    res["openai mean category AUROC"] = sum(cats) / len(cats)
    best = max(curve(scores, ys), key=lambda p: (p.to_dict()["f1"], -p.threshold))
    thr = best.threshold
    res["openai overall F1 (fitted)"] = best.to_dict()["f1"]
    xs = heldout_rows(data)
    zx = logits(hf, [(r["text"], None) for r in xs])[:, 0]
    res["XSTest held-out AUROC"] = auroc(list(zx), [bool(r["label"]) for r in xs])
    safe = [float(v) for v, r in zip(zx, xs, strict=True) if not r["label"]]
    res["XSTest held-out safe flagged"] = sum(v >= thr for v in safe) / len(safe)
    with (data / "hatecheck" / "test_suite_cases.csv").open(encoding="utf-8", newline="") as f:
        hc = [(r["test_case"], r["label_gold"] == "hateful") for r in csv.DictReader(f)]
    hc = random.Random("hatecheck:0").sample(hc, 600)
    zh = logits(hf, [(t, None) for t, _ in hc])[:, 0]
    res["HateCheck AUROC"] = auroc(list(zh), [y for _, y in hc])
    benign = [float(v) for v, (_, y) in zip(zh, hc, strict=True) if not y]
    res["HateCheck non-hateful flagged"] = sum(v >= thr for v in benign) / len(benign)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="frozen,tune2,tune4")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=mm.ROOT / "build" / "moderation-body")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=HF_FOLDER",
                    help="evaluate this already-trained variant instead of training it")
    args = ap.parse_args()
    from trainer.reference_models import minilm_dir

    data, work, base = mm.DATA, args.work, minilm_dir()
    work.mkdir(parents=True, exist_ok=True)
    splits = mm.split_moderation(mm.moderation_rows(data), 0)
    with (work / "openai-moderation-calibration.jsonl").open("w", encoding="utf-8") as f:
        for r in splits["calibration"]:
            f.write(json.dumps(r) + "\n")
    decon = mm.Decon(mm.eval_texts(data, splits["calibration"] + splits["test"], 0))
    ex, pairs = mm.build_examples(data, splits["train"], decon, seed=0, dia=2500, harmful=800,
                                  harmless=1500, hh=800)
    rows = {}
    reuse = dict(r.split("=", 1) for r in args.reuse)
    for v in args.variants.split(","):
        t0 = time.time()
        hf = Path(reuse.get(v, work / v))
        if v in reuse:
            pass
        elif v == "frozen":
            ns = argparse.Namespace(skip_features=False, features_only=False, steps=400, lr=3e-3, seed=0)
            mm.frozen_head(base, ex, pairs, hf, work, ns)
        else:
            mm.tune(base, ex, pairs, hf, layers=int(v.removeprefix("tune")), epochs=args.epochs, seed=0)
        train_s = time.time() - t0
        trained = "reused" if v in reuse else str(round(train_s))
        rows[v] = evaluate(hf, work, data) | {"train seconds": trained}
        print(v, json.dumps(rows[v]), flush=True)
    names = list(next(iter(rows.values())))
    lines = ["# Moderation body: frozen vs fine-tuned top layers", "",
             f"`.venv/bin/python bench/moderation_body.py --variants {args.variants} --epochs {args.epochs}"
             + "".join(f" --reuse {r}" for r in args.reuse) + "` "
             f"({time.strftime('%Y-%m-%d')}; training mix {json.dumps(mm.mix_of(ex, pairs))}; scores from torch, "
             "each text cut to its first 600 characters as training cuts them, no windows; thresholds fitted on the calibration split's `overall`, F1-best).", "",
             "| metric | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{rows[v][n]:.3f}" if isinstance(rows[v][n], float)
                                              else str(rows[v][n]) for v in rows) + " |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
