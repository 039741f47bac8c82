"""`arbiter models list|add|info|remove`."""

from __future__ import annotations

import argparse

from app.cli.common import add_json, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the model registry")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    q = msub.add_parser("list", help="every registered model and the built-in default")
    add_json(q)
    q.set_defaults(func=cmd_list)
    q = msub.add_parser("add", help="copy a model (.gguf file, ONNX or HF folder) into the registry")
    add_json(q)
    q.add_argument("path")
    q.add_argument("--name", help="registry name (default: the file or folder name)")
    q.set_defaults(func=cmd_add)
    q = msub.add_parser("info", help="open a model and show what it is")
    add_json(q)
    q.add_argument("model", help="registered name, path, or 'default'")
    q.add_argument("--device", default="cpu")
    q.add_argument("--format", dest="model_format", choices=["onnx", "gguf", "torch"], default=None,
                   help="for 'default': which shipped copy (default: the fastest measured)")
    q.set_defaults(func=cmd_info)
    q = msub.add_parser("remove", help="delete a registered model")
    add_json(q)
    q.add_argument("name")
    q.set_defaults(func=cmd_remove)


def cmd_list(args: argparse.Namespace) -> int:
    from engine import registry

    entries = registry.list_models()
    data = [{"name": e.name, "format": e.format, "path": str(e.path), "builtin": e.builtin} for e in entries]
    if not entries:
        human = "no models yet: `arbiter models add PATH` (a .gguf file, an ONNX or HF folder)"
    else:
        human = "\n".join(f"{e.name:<28} {e.format:<6} {e.path}" + ("  (built-in)" if e.builtin else "")
                          for e in entries)
    emit(args, data, human)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from engine import registry

    e = registry.add(args.path, args.name)
    emit(args, {"name": e.name, "format": e.format, "path": str(e.path)},
         f"added {e.name} ({e.format}) -> {e.path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import engine
    from engine import registry

    fmt = getattr(args, "model_format", None)
    with engine.load(args.model, device=args.device, format=fmt) as rm:
        info = rm.info
    d = info.to_dict()
    lines = [f"{k:<14} {d[k]}" for k in ("name", "format", "architecture", "pooling", "max_length",
                                          "dtype", "provider")]
    if args.model == registry.DEFAULT:
        choice = registry.default_choice(fmt)
        assert choice is not None  # the load above found it
        d["default_choice"] = {"format": choice.format, "path": str(choice.path), "why": choice.reason}
        lines.append(f"{'runtime':<14} {choice.format}, because {choice.reason} "
                     "(--format onnx|gguf opens the other copy)")
    lines.append(f"{'chat_template':<14} {'yes' if info.chat_template else 'no (text-pair encoding)'}")
    if info.format == "onnx" and info.dtype == "int8":  # engine/int8_weights.py: by CPU
        lines.append(f"{'int8 weights':<14} {info.extra.get('int8_weights', 'as stored')}")
        lines.append(f"{'int8 made':<14} {_int8_made(info.extra)}")
    if "lora_base" in info.extra:  # a GGUF LoRA adapter over a base found by sha256 (engine/gguf_adapter.py)
        lines.append(f"{'adapter':<14} LoRA rank {info.extra['lora_rank']} on {info.extra['lora_modules']} "
                     f"projections, applied by llama.cpp over {info.extra['lora_base']}")
    if info.length_correction:
        lines.append(f"{'length control':<14} score = output - {info.length_correction:.4f} x log(1 + response chars)")
    lines += [f"  {f.path}  {f.size / 1e6:.1f} MB  sha256 {f.sha256}" for f in info.files]
    emit(args, d, "\n".join(lines))
    return 0


def _int8_made(extra: dict) -> str:
    """One line on how an int8 ONNX file was quantized (its arbiter.json)."""
    if extra.get("activation_quant", "dynamic") in (None, "dynamic"):
        return "dynamic activation ranges (per batch)"
    settings = extra.get("int8") or {"method": "minmax"}  # exports before Int8Settings were min/max
    parts = [f"static, {settings['method']}" + (f" {settings['percentile']}" if settings["method"] == "percentile" else "")]
    if settings.get("smooth"):
        parts.append(f"SmoothQuant alpha {settings['smooth']}")
    parts.append(f"{extra.get('kept_float', 0)} matmuls float")
    return "; ".join(parts)


def cmd_remove(args: argparse.Namespace) -> int:
    from engine import registry

    registry.remove(args.name)
    emit(args, {"removed": args.name}, f"removed {args.name}")
    return 0
