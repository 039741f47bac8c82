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
    # why pairs flipped: a flip where the reference itself is near a tie (|margin| small)
    # moves P(A better) by little; one at a wide margin is a real ranking error
    flipped_pairs: int = 0
    largest_flipped_margin: float | None = None  # the reference's |margin| of the widest flip
    max_p_shift: float = 0.0  # largest |P(A better than B) - the reference's P| over the pairs

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        gate = (f"max |diff| <= {self.max_diff_allowed:g}" if self.max_diff_allowed is not None
                else f"same winner >= {self.min_agreement:.0%}" if self.min_agreement is not None
                else "reported only")
        flips = (f"; {self.flipped_pairs} flipped, the reference's |margin| at most "
                 f"{self.largest_flipped_margin:.3g}" if self.flipped_pairs else "")
        return (f"{self.model} ({self.format} {self.dtype}) vs {self.reference}: "
                f"max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g}, "
                f"same winner on {self.pair_agreement:.1%} of {self.n_pairs} pairs{flips}; "
                f"P(A better) moved at most {100 * self.max_p_shift:.1f} points "
                f"[{gate}: {'PASS' if self.passed else 'FAIL'}]")


def verify(model: str | Path, reference: str | Path, **load_options) -> VerifyReport:
    import engine

    items, pairs = probe_items()
    with engine.load(model, **load_options) as rm, engine.load(reference, format="torch") as ref:
        got = np.array([s.value for s in rm.score(items)])
        want = np.array([s.value for s in ref.score(items)])
        info = rm.info
    diff = np.abs(got - want)
    ranking = compare_pairs(got, want, pairs)
    max_allowed = MAX_DIFF.get((info.format, info.dtype))
    min_agree = MIN_AGREEMENT.get(info.dtype)
    passed = ((max_allowed is None or diff.max() <= max_allowed)
              and (min_agree is None or ranking.agreement >= min_agree))
    return VerifyReport(str(model), str(reference), info.format, info.dtype, len(items), len(pairs),
                        float(diff.max()), float(diff.mean()), ranking.agreement, max_allowed, min_agree,
                        bool(passed), ranking.flipped, ranking.largest_flipped_margin, ranking.max_p_shift)


@dataclass(frozen=True)
class PairComparison:
    agreement: float  # share of pairs with the reference's winner
    flipped: int
    largest_flipped_margin: float | None  # the reference's |margin| of the widest flip
    max_p_shift: float  # largest |P(A better than B) - the reference's P|


def compare_pairs(got: np.ndarray, want: np.ndarray, pairs: list[tuple[int, int]]) -> PairComparison:
    """How the scores ``got`` rank the index ``pairs`` against the reference scores ``want``."""
    from engine.types import sigmoid

    i, j = np.array(pairs).T
    margin_got, margin_want = got[i] - got[j], want[i] - want[j]
    same = np.sign(margin_got) == np.sign(margin_want)
    flipped = np.abs(margin_want[~same])
    p_shift = max(abs(sigmoid(a) - sigmoid(b)) for a, b in zip(margin_got, margin_want, strict=True))
    return PairComparison(float(np.mean(same)), int(flipped.size),
                          float(flipped.max()) if flipped.size else None, float(p_shift))
