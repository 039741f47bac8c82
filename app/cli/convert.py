"""`arbiter export` and `arbiter verify` (exports/ is imported inside the commands)."""

from __future__ import annotations

import argparse

from app.cli.common import add_json, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="HF reward model -> ONNX (fp32, int8)")
    add_json(p)
    p.add_argument("src", help="Hugging Face folder of a *ForSequenceClassification reward model")
    p.add_argument("out", help="new folder for the exported model")
    p.add_argument("--format", choices=["onnx", "gguf"], required=True)
    p.add_argument("--quant", default=None, help="onnx: int8 (default fp32)")
    p.add_argument("--verify", action="store_true", help="run `arbiter verify` against SRC afterwards")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="check an export against its source on a fixed probe set")
    add_json(p)
    p.add_argument("model", help="exported model (path or registered name)")
    p.add_argument("--reference", required=True, help="the HF source folder (scored with torch)")
    p.set_defaults(func=cmd_verify)


def cmd_export(args: argparse.Namespace) -> int:
    from engine.errors import ModelError

    if args.format == "gguf":
        raise ModelError("GGUF export is not in this build yet (it lands with the GGUF runtime); "
                         "use --format onnx")
    from exports.onnx import export_onnx

    out = export_onnx(args.src, args.out, quant=args.quant)
    data = {"output": str(out), "format": args.format, "quant": args.quant or "fp32"}
    human = f"exported {args.src} -> {out} (onnx {args.quant or 'fp32'})"
    rc = 0
    if args.verify:
        from exports.verify import verify

        report = verify(out, args.src)
        data["verify"] = report.to_dict()
        human += "\n" + report.summary()
        rc = 0 if report.passed else 1
    emit(args, data, human)
    return rc


def cmd_verify(args: argparse.Namespace) -> int:
    from exports.verify import verify

    report = verify(args.model, args.reference)
    emit(args, report.to_dict(), report.summary())
    return 0 if report.passed else 1
