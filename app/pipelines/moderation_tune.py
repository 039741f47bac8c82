"""Fine-tune the moderation model's top encoder layers, not only its head, on 2 CPU cores.

Why: a frozen all-MiniLM-L6-v2 body gives the head its [CLS] state, and that model was trained
for *mean* pooling: its [CLS] barely separates "kill a Python process" from "kill a person", so
the head over-flagged benign-but-edgy texts (XSTest safe prompts 53%, HateCheck non-hateful 73%).
Training the top ``layers`` of the six lets [CLS] learn what the outputs need.

How it stays affordable: the frozen lower layers run once per text (``lower_states``, stored
unpadded in fp16: about 50 KB a text at 64 tokens), and each step runs only the top layers,
the pooler and the classifier on those states. The losses are the head recipe's: binary
cross-entropy per labelled output (a missing label is masked), weighted toward rare positives,
plus Bradley-Terry on ``overall`` for (safer, more unsafe) pairs. The result is a full
``BertForSequenceClassification``: export, parity and thresholds do not change.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOWER_BATCH = 32  # texts per forward when caching the lower layers


def load_model(base: Path, outputs: Sequence[str]):
    """MiniLM as a 9-output classifier (eager attention: the top layers run on cached states)."""
    from transformers import BertForSequenceClassification

    labels = dict(enumerate(outputs))
    return BertForSequenceClassification.from_pretrained(
        base, num_labels=len(outputs), id2label=labels, label2id={v: k for k, v in labels.items()},
        problem_type="multi_label_classification", attn_implementation="eager")


def _mask(lengths: Sequence[int]):
    import torch

    n = max(lengths)
    m = torch.zeros((len(lengths), n), dtype=torch.float32)
    for j, k in enumerate(lengths):
        m[j, :k] = 1
    return m


def _additive(mask):
    """[B, T] 1/0 mask -> the additive [B, 1, 1, T] mask eager BERT attention takes."""
    return (1.0 - mask[:, None, None, :]) * -1e4


def lower_states(model: Any, ids: Sequence[Sequence[int]], frozen: int, *, progress: bool = True) -> list[Any]:
    """Hidden states after the embeddings and the first ``frozen`` layers, one fp16 [len, H] each."""
    import torch

    out: list[Any] = [None] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    bert = model.bert.eval()
    t0 = time.time()
    with torch.inference_mode():
        for k in range(0, len(order), LOWER_BATCH):
            rows = order[k:k + LOWER_BATCH]
            lens = [len(ids[i]) for i in rows]
            x = torch.zeros((len(rows), max(lens)), dtype=torch.long)
            for j, i in enumerate(rows):
                x[j, :lens[j]] = torch.tensor(ids[i])
            mask = _mask(lens)
            h = bert.embeddings(input_ids=x, token_type_ids=torch.zeros_like(x))
            for layer in bert.encoder.layer[:frozen]:
                h = layer(h, attention_mask=_additive(mask))[0]
            for j, i in enumerate(rows):
                out[i] = h[j, :lens[j]].to(torch.float16).clone()
            if progress and (k // LOWER_BATCH) % 40 == 0:
                print(f"lower layers {k + len(rows)}/{len(ids)} ({time.time() - t0:.0f} s)", flush=True)
    return out


def top_logits(model: Any, states: Sequence[Any], frozen: int):
    """Logits [B, outputs] from cached lower states through the trainable top of the model."""
    import torch

    lens = [s.shape[0] for s in states]
    mask = _mask(lens)
    h = torch.zeros((len(states), max(lens), states[0].shape[1]), dtype=torch.float32)
    for j, s in enumerate(states):
        h[j, :lens[j]] = s.float()
    for layer in model.bert.encoder.layer[frozen:]:
        h = layer(h, attention_mask=_additive(mask))[0]
    return model.classifier(model.dropout(model.bert.pooler(h)))


def train_top(model: Any, states: Sequence[Any], labels: Any, pairs: Sequence[tuple[int, int]], *,
              layers: int, epochs: int, seed: int, batch: int = 32, pair_batch: int = 8,
              lr_body: float = 5e-5, lr_head: float = 1e-3) -> dict[str, Any]:
    """Train the top ``layers``, the pooler and the classifier; ``pairs`` index ``states``
    as (safer, more unsafe); ``labels`` is float [N_labelled, outputs] with NaN = unknown for
    the first ``len(labels)`` states."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    rng = random.Random(f"moderation-tune:{seed}")
    frozen = len(model.bert.encoder.layer) - layers
    for p in model.parameters():
        p.requires_grad_(False)
    body = [p for layer in model.bert.encoder.layer[frozen:] for p in layer.parameters()]
    head = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    for p in body + head:
        p.requires_grad_(True)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.02)
        model.classifier.bias.zero_()
    y_all = torch.from_numpy(np.nan_to_num(labels, nan=0.0)).float()
    m_all = torch.from_numpy(~np.isnan(labels)).float()
    pos = (y_all * m_all).sum(0)
    neg = ((1 - y_all) * m_all).sum(0)
    pos_weight = torch.clamp(neg / torch.clamp(pos, min=1.0), max=20.0)  # rare categories count more
    n = len(labels)
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW([{"params": body, "lr": lr_body}, {"params": head, "lr": lr_head}],
                            weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / total))
    model.train()
    log, t0, step = [], time.time(), 0
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        for k in range(0, n, batch):
            rows = order[k:k + batch]
            pb = [pairs[rng.randrange(len(pairs))] for _ in range(pair_batch)] if pairs else []
            flat = rows + [a for a, _ in pb] + [b for _, b in pb]
            logits = top_logits(model, [states[i] for i in flat], frozen)
            z, y, m = logits[:len(rows)], y_all[rows], m_all[rows]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none", pos_weight=pos_weight)
            loss = ((bce * m).sum(0) / torch.clamp(m.sum(0), min=1.0)).mean()
            if pb:
                safer = logits[len(rows):len(rows) + len(pb), 0]
                worse = logits[len(rows) + len(pb):, 0]
                loss = loss - torch.nn.functional.logsigmoid(worse - safer).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(body + head, 1.0)
            opt.step()
            sched.step()
            if step % 25 == 0 or step == total - 1:
                log.append({"step": step, "loss": round(float(loss.detach()), 4), "s": round(time.time() - t0)})
                print(f"step {step}/{total} loss {float(loss.detach()):.4f} ({time.time() - t0:.0f} s)", flush=True)
            step += 1
    model.eval()
    return {"log": log, "pos_weight": [round(float(v), 2) for v in pos_weight], "layers": layers,
            "epochs": epochs, "steps": total, "batch": batch, "pair_batch": pair_batch,
            "lr_body": lr_body, "lr_head": lr_head, "seconds": round(time.time() - t0)}
