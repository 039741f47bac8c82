"""Edge export: a self-contained folder that scores without Arbiter (issue 18).

``arbiter export SRC OUT --edge [--quant fp32|int8]`` writes, in the layout Optimum and
transformers.js users know (the format is /work/notes/s2/edge_contract.md's):

    onnx/model.onnx, onnx/model_int8.onnx   the classifier graph (no with-past graph)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, config.json
    arbiter.json    how the input is built and the score read, for any runtime
    golden.jsonl    probe rows with the engine's own final scores, per file
    manifest.json   sha256 and size of every other file
    MODEL_CARD.md   the source's card plus an "Edge" section
    runner.py       Python runner (onnxruntime, tokenizers, numpy, jinja2)
    runner.mjs, package.json, package-lock.json, .npmrc   Node runner

Which files ship: an HF checkpoint gives fp32 and static int8 (``--quant fp32`` only fp32);
an Arbiter ONNX folder gives what it holds, plus int8 made from its fp32 with ``--quant
int8``; the built-in ``default`` ships only its static int8 file, because its trained fp32
checkpoint is not in the package: arbiter.json says so and how to get it. No fp32 is ever
made up from int8 weights. Golden scores come from the engine opening each shipped file's
own export folder, as users open it (``engine.load(folder)``: batch 16, length control on).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelError
from engine.files import sha256_file
from engine.int8_weights import rewrite_file
from engine.modelmeta import read_meta
from engine.types import Item, conversation

log = logging.getLogger(__name__)

EDGE_VERSION = 1
RUNNER_DIR = Path(__file__).with_name("edge_runner")
#: runner files copied into every edge folder (the Node ones when they are in the package)
RUNNER_FILES = ("runner.py", "runner.mjs", "package.json", "package-lock.json", ".npmrc")
MODEL_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_int8.onnx"}
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
#: absolute score tolerance of each file against the engine (what ``--check`` enforces)
TOLERANCE = {"fp32": 1e-5, "int8": 1e-4}
QUANTS = (None, "fp32", "int8")
SCORE_MEANING = "Bradley-Terry logit; P(A better than B) = sigmoid(score_A - score_B)"
DEFAULT_FP32_ABSENT = (
    "the built-in default model ships only its static int8 ONNX file; its trained fp32 checkpoint "
    "is not in the package. `make default-model` rebuilds the checkpoint (bit for bit), then "
    "`arbiter export CHECKPOINT OUT --edge` exports fp32 and int8 from it")


@dataclass
class EdgeSources:
    """The engine export folders whose model files ship, by kind, and what the card says."""

    folders: dict[str, Path] = field(default_factory=dict)
    fp32_absent_reason: str | None = None
    card: Path | None = None
    origin: str = ""


def export_edge(src: str | Path, out: Path, *, quant: str | None = None, int8: dict | None = None) -> Path:
    """Write the edge folder ``out`` for ``src`` (a spec the engine opens); returns ``out``.

    ``int8``: ``int8_from_fp32``'s ``calibration`` and ``int8`` (settings) for the int8 file made here
    (refused where the source's int8 is already made: the default, an int8 export)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="arbiter-edge-") as tmp:
        work = Path(tmp)
        build_edge(edge_sources(src, quant, work, int8), out)
    return out


def build_edge(sources: EdgeSources, out: Path) -> Path:
    """Write the edge folder in a hidden temp folder beside ``out``, then rename it to ``out``
    (absent or empty): a killed export never leaves half a folder at ``out``."""
    from engine.output import temp_name

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = temp_name(out)
    try:
        _build(sources, stage)
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


# -- where the model files come from ------------------------------------------------------------
def edge_sources(src: str | Path, quant: str | None, work: Path, int8: dict | None = None) -> EdgeSources:
    """The engine ONNX folders (made under ``work`` when exported) whose files ship for ``src``."""
    from engine.registry import DEFAULT, default_model_path, resolve

    if quant not in QUANTS:
        raise ModelError(f"unknown edge quantization {quant!r}; choose fp32 or int8 (or neither: both "
                         "where the source allows)")
    if str(src) == DEFAULT:
        folder = default_model_path("onnx")
        if folder is None:
            raise ModelError("this build of Arbiter ships no ONNX default model to export")
        if quant == "fp32":
            raise ModelError(f"--quant fp32: {DEFAULT_FP32_ABSENT}")
        _no_int8_settings(int8, "the built-in default ships its int8 file as built")
        card = folder.parent / "MODEL_CARD.md"
        return EdgeSources({"int8": _static_int8(folder)}, DEFAULT_FP32_ABSENT,
                           card if card.is_file() else None, "the built-in default model")
    entry = resolve(src)
    if entry.format == "torch":
        return _from_checkpoint(entry.path, quant, work, int8 or {})
    if entry.format == "onnx":
        return _from_onnx(entry.path if entry.path.is_dir() else entry.path.parent, quant, work, int8)
    raise ModelError(f"{entry.path}: a GGUF file cannot become an edge (ONNX) folder; export the "
                     "Hugging Face checkpoint it came from: `arbiter export CHECKPOINT OUT --edge`")


def _card_of(folder: Path) -> Path | None:
    return next((p for n in ("MODEL_CARD.md", "README.md") if (p := folder / n).is_file()), None)


def _no_int8_settings(int8: dict | None, why: str) -> None:
    if int8:
        raise ModelError(f"int8 calibration settings do not apply here: {why}")


def _from_checkpoint(src: Path, quant: str | None, work: Path, int8: dict) -> EdgeSources:
    from exports.onnx import export_onnx, int8_from_fp32

    fp32 = export_onnx(src, work / "fp32", prefix=False)
    folders = {"fp32": fp32}
    if quant != "fp32":
        folders["int8"] = int8_from_fp32(fp32, work / "int8", prefix=False, **int8)
    else:
        _no_int8_settings(int8, "--quant fp32 makes no int8 file")
    return EdgeSources(folders, None, _card_of(src), f"the Hugging Face checkpoint `{src.resolve().name}`")


def _from_onnx(folder: Path, quant: str | None, work: Path, int8: dict | None) -> EdgeSources:
    dtype = str(read_meta(folder).get("dtype", "fp32"))
    card, origin = _card_of(folder), f"the Arbiter ONNX export `{folder.resolve().name}`"
    if dtype == "int8":
        if quant == "fp32":
            raise ModelError(f"{folder}: is an int8 export, so it has no fp32 weights to ship; export "
                             "the Hugging Face checkpoint it came from with --edge")
        _no_int8_settings(int8, f"{folder} is an int8 export; its settings were fixed when it was made")
        why = (f"{folder} is an int8 export: it has no fp32 weights. `arbiter export CHECKPOINT OUT "
               "--edge` on the Hugging Face checkpoint it came from ships both")
        return EdgeSources({"int8": _static_int8(folder)}, why, card, origin)
    if dtype != "fp32":
        raise ModelError(f"{folder}: arbiter.json dtype {dtype!r}; an edge folder ships fp32 or int8")
    folders = {"fp32": folder}
    if quant == "int8":
        from exports.onnx import int8_from_fp32

        folders["int8"] = int8_from_fp32(folder, work / "int8", prefix=False, **(int8 or {}))
    else:
        _no_int8_settings(int8, "an fp32 export's edge folder gets int8 only with --quant int8")
    return EdgeSources(folders, None, card, origin)


def _static_int8(folder: Path) -> Path:
    """``folder``, when its int8 has fixed activation scales (dynamic int8 depends on the batch)."""
    if read_meta(folder).get("activation_quant") != "static":
        raise ModelError(f"{folder}: a dynamic int8 export (scores depend on the batch, so no runner "
                         "can reproduce them); re-export it with `arbiter export CHECKPOINT OUT --format "
                         "onnx --quant int8`, or use --edge on the checkpoint")
    return folder


# -- the folder -----------------------------------------------------------------------------------
def _build(sources: EdgeSources, stage: Path) -> None:
    import engine

    (stage / "onnx").mkdir(parents=True)
    first = sources.folders.get("fp32") or sources.folders["int8"]
    for kind, folder in sources.folders.items():
        _copy_model(folder, stage / MODEL_FILES[kind])
        if kind == "int8":  # plain onnxruntime on the device: U8U8, so no CPU clips (engine/int8_weights.py)
            rewrite_file(stage / MODEL_FILES[kind])
    _copy_text_files(first, stage)
    with engine.load(first, format="onnx") as rm:
        meta = edge_meta(rm, sources)
    (stage / "arbiter.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    _write_golden(sources, stage / "golden.jsonl")
    missing = [name for name in RUNNER_FILES if not (RUNNER_DIR / name).is_file()]
    if "runner.py" in missing:
        raise ModelError(f"{RUNNER_DIR / 'runner.py'}: missing from this install of Arbiter")
    for name in RUNNER_FILES:
        if name not in missing:
            shutil.copy2(RUNNER_DIR / name, stage / name)
    if missing:
        log.warning("%s: %s not in this install; the edge folder has no Node runner", RUNNER_DIR,
                    ", ".join(missing))
    (stage / "MODEL_CARD.md").write_text(_card(sources, meta, stage), encoding="utf-8")
    write_manifest(stage)


def _copy_model(folder: Path, dst: Path) -> None:
    from engine.backends.onnx import find_onnx_file

    model = find_onnx_file(folder)
    shutil.copy2(model, dst)
    data = model.with_name(model.name + "_data")  # external weights (above 2 GB) keep their name
    if data.is_file():
        shutil.copy2(data, dst.with_name(data.name))


def _copy_text_files(folder: Path, stage: Path) -> None:
    for name in TEXT_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, stage / name)
    if not (stage / "special_tokens_map.json").is_file():  # transformers.js reads it
        from engine.encoding import TokenizerFiles

        specials = {k: v for k, v in TokenizerFiles.from_folder(folder).special_tokens.items() if v}
        (stage / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def edge_meta(rm, sources: EdgeSources) -> dict:
    """arbiter.json for the edge folder, read off the engine's own encoder and session."""
    from engine.templates import _TEXT_ROLES

    enc = rm.encoder
    meta = {
        "edge_version": EDGE_VERSION,
        "architecture": rm.info.architecture,
        "files": {k: (MODEL_FILES[k] if k in sources.folders else None) for k in ("fp32", "int8")},
        "inputs": [i.name for i in rm.session.get_inputs()],
        "output": rm.session.get_outputs()[0].name,
        "max_length": enc.max_length,
        "pad_token_id": enc.pad_token_id,
        "padding_side": "right",
        "encoding": enc.kind,
        "length_correction": float(rm.info.length_correction or 0.0),
        "score": {"meaning": SCORE_MEANING, "normalisation": "none"},
        "moderation_thresholds": None,
        "tolerance": TOLERANCE,
        "int8_weights": "uint8 (zero point 128): the same integers on every CPU" if "int8" in sources.folders else None,
    }
    if sources.fp32_absent_reason and "fp32" not in sources.folders:
        meta["fp32_absent_reason"] = sources.fp32_absent_reason
    unknown = set(meta["inputs"]) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ModelError(f"the ONNX graph has inputs {sorted(unknown)} that the runners do not feed")
    if enc.kind == "pair":
        lay = enc._pair_layout
        meta |= {
            "pair_layout": {"prefix": list(lay.prefix), "middle": list(lay.middle), "suffix": list(lay.suffix),
                            "types": [list(lay.types[0]), lay.types[1], list(lay.types[2]), lay.types[3],
                                      list(lay.types[4])]},
            "token_types": enc.files.token_types,
            "role_names": dict(_TEXT_ROLES),
        }
    else:
        meta |= {
            "chat_template": enc.template.source,
            "special_tokens": enc.template.special_tokens,
            "strip_bos": enc._strip_bos,
        }
    return meta


# -- golden scores ----------------------------------------------------------------------------------
def golden_items() -> list[Item]:
    """The probe set, plus rows the truncation rule acts on (a long multi-turn conversation)."""
    from exports.probes import probe_items

    turns = []
    for i in range(30):
        turns += [{"role": "user", "content": f"Question {i}: what did line {i * 11} of the ledger say?"},
                  {"role": "assistant", "content": f"Line {i * 11} recorded a payment of {i * 37} euros."}]
    long_chat = conversation([{"role": "system", "content": "Answer from the ledger."}, *turns,
                              {"role": "user", "content": "So what was the total?"}])
    extra = [Item(long_chat, "The payments add up to 16,095 euros."),
             Item(long_chat, "I cannot tell."),
             Item(conversation("Réponds en une phrase : qu'est-ce qu'un reward model ?"),
                  "Un modèle qui note une réponse ; seules les différences de score comptent. ✓")]
    return [*probe_items()[0], *extra]


def _write_golden(sources: EdgeSources, path: Path) -> None:
    import engine

    items = golden_items()
    scores: dict[str, list] = {}
    n_tokens: list[int] = []
    for kind, folder in sources.folders.items():
        with engine.load(folder, format="onnx") as rm:  # as users open it: batch 16, length control
            result = rm.score(items)
        scores[kind] = [s.value for s in result]
        n_tokens = [s.n_tokens for s in result]
    with open(path, "w", encoding="utf-8") as f:
        for i, item in enumerate(items):
            row = {"id": i, "conversation": [m.to_dict() for m in item.conversation], "response": item.response,
                   "scores": {k: scores[k][i] if k in scores else None for k in ("fp32", "int8")},
                   "n_tokens": n_tokens[i]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_manifest(folder: Path) -> dict:
    """manifest.json: sha256 and size of every file in ``folder`` but itself."""
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest = {"edge_version": EDGE_VERSION, "algorithm": "sha256", "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- the card ---------------------------------------------------------------------------------------
def _runner_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for pkg in ("onnxruntime", "tokenizers", "numpy", "jinja2"):
        try:
            pins.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pins.append(pkg)
    return " ".join(pins)


def _card(sources: EdgeSources, meta: dict, stage: Path) -> str:
    src_card = sources.card.read_text(encoding="utf-8").rstrip() if sources.card else (
        f"# Reward model\n\nNo model card came with {sources.origin}.")
    rows = "\n".join(f"| `{name}` | {kind} | {(stage / name).stat().st_size:,} | {TOLERANCE[kind]:g} |"
                     for kind, name in MODEL_FILES.items() if kind in sources.folders)
    absent = f"\nNo fp32 file: {sources.fp32_absent_reason}.\n" if "fp32" not in sources.folders else ""
    node = ("# Node: the versions pinned in package.json\nnpm ci\nnode runner.mjs --check\n"
            "node runner.mjs IN.jsonl -o OUT.jsonl [--model fp32|int8]\n") if (stage / "runner.mjs").is_file() else ""
    beta = meta["length_correction"]
    length = (f"score = output - {beta:.6g} x log(1 + response length in Unicode code points) (length "
              "control, fitted on the model's training pairs)" if beta else "score = the model's output")
    rule = ("the response is never cut; when the conversation and the response together exceed "
            f"{meta['max_length']} tokens the conversation is cut from its start (after the BOS token "
            "for chat models), and a response that alone does not fit is refused: `IN.jsonl:LINE: the "
            f"response alone is N tokens; this model reads at most {meta['max_length']}` (exit status 2)")
    return f"""{src_card}

## Edge

Exported with `arbiter export ... --edge` from {sources.origin}: this folder scores without
Arbiter. Scores are Bradley-Terry logits (P(A better than B) = sigmoid(score_A - score_B));
{length}.

| file | type | bytes | tolerance vs Arbiter's engine (absolute) |
|---|---|---|---|
{rows}
{absent}
Input: `{meta['encoding']}` encoding ({'the chat template in arbiter.json' if meta['encoding'] == 'chat'
else 'the text pair [conversation, response]'}), at most {meta['max_length']} tokens. Too long:
{rule}.

`golden.jsonl` holds {len(golden_items())} probe rows with the engine's final scores for each file;
`manifest.json` the sha256 and size of every file; `--check` verifies both.

```sh
# Python: onnxruntime, tokenizers, numpy (jinja2 for chat templates); the versions tested:
python -m venv .venv && .venv/bin/pip install {_runner_versions()}
.venv/bin/python runner.py --check
.venv/bin/python runner.py IN.jsonl -o OUT.jsonl [--model fp32|int8]
{node}```

Rows are `{{"prompt": "..."}}` or `{{"conversation": [{{"role", "content"}}, ...]}}` plus `"response"`;
each comes back with `"score"`. Bad input is one line and exit status 2 (a missing file, a file
that does not match `manifest.json`, a bad row `IN.jsonl:LINE: field 'NAME': ...`, a row too long);
`--check` exits 1 when a score is off by more than the tolerance.
"""
