"""Reference models for tests: ``trainer.reference_models``, with a missing weights package
turned into a skip on a user's machine and a failure in CI (where `make install` must have
provided it). The builders themselves live in the package so that ``bench/`` can use them
without importing ``tests``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from trainer import reference_models as ref
from trainer.reference_models import save_gguf_tokenizer

__all__ = ["minilm_dir", "minilm_reward_model", "missing", "save_gguf_tokenizer", "smollm2_gguf",
           "tiny_decoder"]

T = TypeVar("T")


def missing(reason: str):
    """Skip on a user's machine; fail in CI, where `make install` must have provided it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: a missing install step)")
    pytest.skip(reason)


def _skip_if_missing(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ref.ReferenceModelMissing as e:
            missing(str(e))
            raise  # unreachable: missing() always raises

    return wrapper


smollm2_gguf: Callable[[], Path] = _skip_if_missing(ref.smollm2_gguf)
minilm_dir: Callable[[], Path] = _skip_if_missing(ref.minilm_dir)
tiny_decoder = _skip_if_missing(ref.tiny_decoder)
minilm_reward_model = _skip_if_missing(ref.minilm_reward_model)
