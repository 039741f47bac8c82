"""`arbiter export` and `arbiter verify` (exports/ is imported inside the commands)."""

from __future__ import annotations

import argparse

from app.cli.common import add_json, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="HF reward model -> ONNX (fp32, int8) or GGUF (f32, f16, q8_0, q4_k_m)")
    add_json(p)
    p.add_argument("src", help="Hugging Face folder of a *ForSequenceClassification reward model")
    p.add_argument("out", help="new folder for the exported model")
    p.add_argument("--format", choices=["onnx", "gguf"], required=True)
    p.add_argument("--quant", default=None,
                   help="onnx: fp32 (default) or int8; gguf: comma-separated f32,f16,q8_0,q4_k_m "
                        "(default f16), one file each")
    p.add_argument("--verify", action="store_true", help="run `arbiter verify` against SRC afterwards")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="check an export against its source on a fixed probe set")
    add_json(p)
    p.add_argument("model", help="exported model (path or registered name)")
    p.add_argument("--reference", required=True, help="the HF source folder (scored with torch)")
    p.set_defaults(func=cmd_verify)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        from exports.gguf import export_gguf

        quants = tuple(q.strip() for q in (args.quant or "f16").split(",") if q.strip())
        outputs = export_gguf(args.src, args.out, quants=quants)
    else:
        from exports.onnx import export_onnx

        outputs = [export_onnx(args.src, args.out, quant=args.quant)]
    data: dict = {"outputs": [str(p) for p in outputs], "format": args.format}
    human = "\n".join(f"exported {args.src} -> {p}" for p in outputs)
    rc = 0
    if args.verify:
        from exports.verify import verify

        reports = [verify(p, args.src) for p in outputs]
        data["verify"] = [r.to_dict() for r in reports]
        human += "\n" + "\n".join(r.summary() for r in reports)
        rc = 0 if all(r.passed for r in reports) else 1
    emit(args, data, human)
    return rc


def cmd_verify(args: argparse.Namespace) -> int:
    from exports.verify import verify

    report = verify(args.model, args.reference)
    emit(args, report.to_dict(), report.summary())
    return 0 if report.passed else 1
