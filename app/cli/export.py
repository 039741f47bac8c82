"""`arbiter export` and `arbiter verify` (exports/ is imported inside the commands)."""

from __future__ import annotations

import argparse
import json

from app.cli.common import add_json, emit

#: calibration items read from --calibration: ranges settle within a few hundred, and each
#: item is one fp32 run of the model at export time
CALIBRATION_LIMIT = 500


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="HF reward model -> ONNX (fp32, int8) or GGUF (f32, f16, q8_0, q4_k_m)")
    add_json(p)
    p.add_argument("src", help="Hugging Face folder of a *ForSequenceClassification reward model "
                                "(--edge: also an Arbiter ONNX folder, or default; onnx and --edge: also "
                                "a GGUF LoRA adapter, merged over its base first)")
    p.add_argument("out", help="new folder for the exported model")
    p.add_argument("--format", choices=["onnx", "gguf", "gguf-lora"],
                   help="required unless --edge; gguf-lora: a LoRA run (trainer lora_rank > 0) as a "
                        "GGUF adapter over the GGUF base it was trained on (OUT/model-lora-f16.gguf)")
    p.add_argument("--base", default=None,
                   help="gguf-lora: the base GGUF (default: the .gguf the run was trained from)")
    p.add_argument("--quant", default=None,
                   help="onnx: fp32 (default) or int8; gguf: comma-separated f32,f16,q8_0,q4_k_m "
                        "(default f16), one file each; --edge: fp32 (fp32 only) or int8 (int8 as "
                        "well, made from an fp32 ONNX folder); default: what the source has (a "
                        "checkpoint: both)")
    g = p.add_argument_group("onnx int8", "how static int8 is calibrated (exports/onnx.py, Int8Settings)")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="items JSONL (as `arbiter score` reads) whose activations set the int8 ranges, "
                        f"beside the probe set; the first {CALIBRATION_LIMIT} rows are used (default: "
                        "the probes only; real text of the kind you will score calibrates better)")
    g.add_argument("--int8-calibration", choices=["minmax", "percentile"], default=None,
                   help="minmax: each activation's full range (default); percentile: clipped at "
                        "--int8-percentile, finer steps for the bulk of the values")
    g.add_argument("--int8-percentile", type=float, default=None, help="with percentile (default 99.999)")
    g.add_argument("--int8-float", action="append", default=[], metavar="REGEX",
                   help="keep the weighted matmuls whose node name matches REGEX in float (repeatable; "
                        "bench/int8_calibration.py measures which layers carry the error)")
    g.add_argument("--int8-smooth", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant first: move activation outliers into the weights (0.5 meets "
                        "halfway; exports/smoothquant.py)")
    g.add_argument("--int8-smooth-skip", action="append", default=[], metavar="REGEX",
                   help="with --int8-smooth: matmuls left unsmoothed (repeatable)")
    p.add_argument("--edge", action="store_true",
                   help="a self-contained ONNX folder with Python and Node runners (SRC: an HF "
                        "checkpoint, an ONNX export, or default)")
    p.add_argument("--verify", action="store_true", help="run `arbiter verify` against SRC afterwards")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="check an export against its source on a fixed probe set")
    add_json(p)
    p.add_argument("model", help="exported model (path or registered name)")
    p.add_argument("--reference", required=True, help="the HF source folder (scored with torch)")
    p.set_defaults(func=cmd_verify)


def _adapter_source(args: argparse.Namespace, stack) -> None:
    """A GGUF LoRA adapter as SRC of an ONNX or edge export: merged into a temporary HF folder first."""
    import tempfile
    from pathlib import Path

    src = Path(args.src)
    if not (src.is_file() and src.suffix == ".gguf") or args.format in ("gguf", "gguf-lora"):
        return
    from engine.gguf_adapter import is_adapter
    from engine.gguf_file import read_header

    if not is_adapter(read_header(src)):
        return
    from app.lora_merge import merge_adapter

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-merge-")))
    args.src = str(merge_adapter(src, tmp / "merged"))
    args.merged_from = str(src)


def cmd_export(args: argparse.Namespace) -> int:
    import contextlib

    with contextlib.ExitStack() as stack:
        _adapter_source(args, stack)
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    if args.edge:
        return cmd_export_edge(args)
    if args.format is None:
        from engine.errors import InputError

        raise InputError("give --format onnx or --format gguf (or --edge for an edge folder)")
    if args.format != "onnx":
        _refuse_int8_flags(args, "only an ONNX int8 export is calibrated")
    if args.format == "gguf-lora":
        outputs = [_export_lora(args)]
    elif args.format == "gguf":
        from exports.gguf import export_gguf

        quants = tuple(q.strip() for q in (args.quant or "f16").split(",") if q.strip())
        outputs = export_gguf(args.src, args.out, quants=quants)
    else:
        from exports.onnx import export_onnx

        outputs = [export_onnx(args.src, args.out, quant=args.quant, **_int8_options(args))]
    data: dict = {"outputs": [str(p) for p in outputs], "format": args.format}
    if getattr(args, "merged_from", None):  # an adapter: SRC was its merge, which --verify checks against
        data["merged_from"] = args.merged_from
    shown = getattr(args, "merged_from", None) or args.src
    human = "\n".join(f"exported {shown} -> {p}" for p in outputs)
    rc = 0
    if args.verify:
        from exports.verify import verify

        reports = [verify(p, args.src) for p in outputs]
        data["verify"] = [r.to_dict() for r in reports]
        human += "\n" + "\n".join(r.summary() for r in reports)
        rc = 0 if all(r.passed for r in reports) else 1
    emit(args, data, human)
    return rc


#: the onnx int8 flags: argparse dest -> the Int8Settings field it sets (None: not a setting)
INT8_FLAGS = {"calibration": None, "int8_calibration": "method", "int8_percentile": "percentile",
              "int8_float": "keep_float", "int8_smooth": "smooth", "int8_smooth_skip": "smooth_skip"}


def _int8_flags_given(args: argparse.Namespace) -> list[str]:
    return [dest for dest in INT8_FLAGS if getattr(args, dest) not in (None, [])]


def _refuse_int8_flags(args: argparse.Namespace, why: str) -> None:
    """An InputError naming the onnx int8 flags given where they would be ignored."""
    from engine.errors import InputError

    if given := ["--" + d.replace("_", "-") for d in _int8_flags_given(args)]:
        raise InputError(f"{', '.join(given)}: {why}", field=given[0])


def _int8_options(args: argparse.Namespace) -> dict:
    """``export_onnx``'s ``calibration`` and ``int8`` from the onnx int8 flags; {} when none is given.

    Refused unless int8 is made: ``--quant int8``, or ``--edge`` without ``--quant fp32``."""
    from itertools import islice

    from engine.errors import InputError
    from exports.onnx import Int8Settings

    given = _int8_flags_given(args)
    if not given:
        return {}
    if args.quant != "int8" and not (args.edge and args.quant is None):
        _refuse_int8_flags(args, "they set how int8 is made; add --quant int8")
    if args.int8_percentile is not None and args.int8_calibration != "percentile":
        raise InputError("--int8-percentile applies to --int8-calibration percentile", field="--int8-percentile")
    settings = Int8Settings(**{INT8_FLAGS[d]: tuple(v) if isinstance(v := getattr(args, d), list) else v
                               for d in given if INT8_FLAGS[d]})
    calibration = []
    if args.calibration is not None:
        from engine.jsonl import read_items

        calibration = [item for _, _, item in islice(read_items(args.calibration), CALIBRATION_LIMIT)]
        if not calibration:
            raise InputError(f"{args.calibration}: no items to calibrate on", field="--calibration")
    return {"calibration": calibration, "int8": settings}


def _export_lora(args: argparse.Namespace):
    """``--format gguf-lora``: the adapter file in a new OUT folder."""
    from pathlib import Path

    from engine.errors import InputError
    from engine.modelmeta import read_meta
    from exports.lora_gguf import export_lora_gguf

    src, out = Path(args.src), Path(args.out)
    base = args.base or read_meta(src).get("source")
    if not base or not str(base).endswith(".gguf"):
        raise InputError(f"{src} was not trained from a .gguf base; give the base with --base", field="--base")
    dtype = args.quant or "f16"
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; choose a new folder", field="out")
    out.mkdir(parents=True, exist_ok=True)
    return export_lora_gguf(src, Path(base), out / f"model-lora-{dtype}.gguf", dtype=dtype)


def cmd_export_edge(args: argparse.Namespace) -> int:
    """`export --edge`: ONNX files, runners, golden scores and a manifest (exports/edge.py)."""
    from engine.errors import InputError
    from exports.edge import export_edge

    if args.format == "gguf" or args.verify:
        raise InputError("--edge makes ONNX files and checks them itself (golden.jsonl, runner.py "
                         "--check); drop --format gguf / --verify")
    out = export_edge(args.src, args.out, quant=args.quant, int8=_int8_options(args) or None)
    files = json.loads((out / "arbiter.json").read_text(encoding="utf-8"))["files"]
    shipped = [f for f in files.values() if f]
    emit(args, {"outputs": [str(out)], "format": "edge", "files": files},
         f"exported {getattr(args, 'merged_from', None) or args.src} -> {out} (edge: {', '.join(shipped)}); "
         f"check it with "
         f"`python {out / 'runner.py'} --check`")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from exports.verify import verify

    report = verify(args.model, args.reference)
    emit(args, report.to_dict(), report.summary())
    return 0 if report.passed else 1
