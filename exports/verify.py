"""Parity of an exported model against its reference (the HF checkpoint in torch).

Same probe set, same token ids (the engine encodes for both), two runtimes. Reports
the largest absolute score difference and how often both agree on the winner of a
pair of responses to the same conversation. Tolerances per precision:

=========  ===========================================
fp32, f32  max |diff| <= 1e-4 (ONNX) / 1e-2 (GGUF)
f16        max |diff| <= 1e-2
int8, q8_0 same winner on >= 98% of probe pairs
q4_k_m     reported, not gated
=========  ===========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from exports.probes import probe_items

MAX_DIFF = {("onnx", "fp32"): 1e-4, ("gguf", "f32"): 1e-2, ("gguf", "f16"): 1e-2}
MIN_AGREEMENT = {"int8": 0.98, "q8_0": 0.98}


@dataclass(frozen=True)
class VerifyReport:
    model: str
    reference: str
    format: str
    dtype: str
    n_items: int
    n_pairs: int
    max_abs_diff: float
    mean_abs_diff: float
    pair_agreement: float  # share of pairs with the same winner
    max_diff_allowed: float | None
    min_agreement: float | None
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        gate = (f"max |diff| <= {self.max_diff_allowed:g}" if self.max_diff_allowed is not None
                else f"same winner >= {self.min_agreement:.0%}" if self.min_agreement is not None
                else "reported only")
        return (f"{self.model} ({self.format} {self.dtype}) vs {self.reference}: "
                f"max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g}, "
                f"same winner on {self.pair_agreement:.1%} of {self.n_pairs} pairs "
                f"[{gate}: {'PASS' if self.passed else 'FAIL'}]")


def verify(model: str | Path, reference: str | Path, **load_options) -> VerifyReport:
    import engine

    items, pairs = probe_items()
    with engine.load(model, **load_options) as rm, engine.load(reference, format="torch") as ref:
        got = np.array([s.value for s in rm.score(items)])
        want = np.array([s.value for s in ref.score(items)])
        info = rm.info
    diff = np.abs(got - want)
    agree = np.mean([np.sign(got[i] - got[j]) == np.sign(want[i] - want[j]) for i, j in pairs])
    max_allowed = MAX_DIFF.get((info.format, info.dtype))
    min_agree = MIN_AGREEMENT.get(info.dtype)
    passed = ((max_allowed is None or diff.max() <= max_allowed)
              and (min_agree is None or agree >= min_agree))
    return VerifyReport(str(model), str(reference), info.format, info.dtype, len(items), len(pairs),
                        float(diff.max()), float(diff.mean()), float(agree), max_allowed, min_agree,
                        bool(passed))
