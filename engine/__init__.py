"""Arbiter's engine: score conversations with reward models in any format.

>>> import engine                                          # doctest: +SKIP
>>> with engine.load("default") as rm:                     # doctest: +SKIP
...     c = rm.compare("What is 2+2?", "4", "5")
...     print(f"{c.margin:+.2f}  P(A better) = {c.p_a_better:.0%}")

``engine`` imports neither torch nor Qt: the torch backend imports torch when a
model of that format is opened.
"""

from engine.errors import ArbiterError, Cancelled, InputError, InputTooLongError, ModelError
from engine.registry import load
from engine.scorer import CancelToken, Scorer
from engine.types import (
    Comparison,
    Conversation,
    Item,
    Message,
    ModelInfo,
    Ranking,
    Score,
    conversation,
    sigmoid,
)

__all__ = [
    "ArbiterError", "Cancelled", "CancelToken", "Comparison", "Conversation", "InputError",
    "InputTooLongError", "Item", "Message", "ModelError", "ModelInfo", "Ranking", "Score",
    "Scorer", "conversation", "load", "sigmoid",
]
