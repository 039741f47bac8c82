"""Parity of ONNX exports with the torch reference on the probe set (the README's table).

The reference models of ``trainer/reference_models.py`` (tiny random Qwen3 and Llama, the
real MiniLM with a random head), each exported as fp32 and int8 (static activation scales,
and onnxruntime's dynamic int8 beside it), checked by ``arbiter verify``'s own code.
Run: ``.venv/bin/python bench/parity.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from exports.onnx import export_onnx
    from exports.verify import verify
    from trainer import reference_models as refs

    print("| model | fp32 max abs diff | int8 static: same winner (max abs diff) "
          "| int8 dynamic: same winner (max abs diff) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = refs.save_gguf_tokenizer(refs.smollm2_gguf(), work / "tok")
        sources = {
            "tiny random Qwen3ForSequenceClassification": lambda d: refs.tiny_decoder("qwen3", d, tok),
            "tiny random LlamaForSequenceClassification": lambda d: refs.tiny_decoder("llama", d, tok),
            "all-MiniLM-L6-v2 + random one-label head": refs.minilm_reward_model,
        }
        for i, (name, build) in enumerate(sources.items()):
            src = build(work / f"src{i}")
            fp32 = verify(export_onnx(src, work / f"fp32-{i}", prefix=False), src)
            static = verify(export_onnx(src, work / f"int8-{i}", quant="int8", prefix=False), src)
            dynamic = verify(export_onnx(src, work / f"dyn-{i}", quant="int8", prefix=False,
                                         activations="dynamic"), src)
            print(f"| {name} | {fp32.max_abs_diff:.1e} | {static.pair_agreement:.1%} ({static.max_abs_diff:.2g}) "
                  f"| {dynamic.pair_agreement:.1%} ({dynamic.max_abs_diff:.2g}) |", flush=True)


if __name__ == "__main__":
    main()
