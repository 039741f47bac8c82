"""A real llama-cpp-python OpenAI-compatible server in a subprocess, for the judge tests.

``start_llama_server(gguf)`` runs ``python -m trainer.curate.llama_server --port 0`` (a free
port, printed by the server: none is guessed), waits for that line and for
``GET /v1/models``, and returns a :class:`LlamaServerHandle` (``url``, ``stop()``).
Tests that talk to it need ``@pytest.mark.enable_socket`` (pytest-socket).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import httpx

from tests.serve_helpers import ServerHandle, start_listening

#: llama.cpp threads for the test judges: one. On a busy 2-core machine two threads wait on
#: each other at every barrier; one answered a verdict in 2.5 s where two took 31.5 s (best
#: of 3, side by side, this project's VM, load average 2.5-5)
JUDGE_THREADS = 1
_LISTENING = re.compile(r"llama_server: listening on (http://\S+)")
#: generous bounds on a hang (a model load on 2 busy cores): failures, not speed checks (seconds)
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0


LlamaServerHandle = ServerHandle  # the same handle as `arbiter serve`'s (url, stop(), stderr())


def start_llama_server(gguf: Path, *, api_key_env: str | None = None, env: dict[str, str] | None = None,
                       n_ctx: int = 4096, threads: int | None = JUDGE_THREADS) -> LlamaServerHandle:
    """Serve ``gguf`` on 127.0.0.1 and a free port; return when it answers /v1/models."""
    cmd = [sys.executable, "-m", "trainer.curate.llama_server", "--model", str(gguf), "--port", "0",
           "--n-ctx", str(n_ctx)]
    if api_key_env:
        cmd += ["--api-key-env", api_key_env]
    if threads:
        cmd += ["--threads", str(threads)]
    full_env = {**os.environ, **(env or {})}
    handle = start_listening(cmd, _LISTENING, "llama_server", env=env, start_timeout=START_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {full_env[api_key_env]}"} if api_key_env else {}
    with httpx.Client(base_url=handle.url, trust_env=False, timeout=START_TIMEOUT_S) as c:
        r = c.get("/v1/models", headers=headers)
    if r.status_code != 200:
        handle.stop()
        raise AssertionError(f"llama_server /v1/models: HTTP {r.status_code}: {r.text}\n{handle.stderr()}")
    return handle


def gemma() -> Path:
    """The Gemma 3 270M GGUF, or a skip (a failure under CI) when its package is absent."""
    from tests.models import missing
    from trainer.reference_models import ReferenceModelMissing, gemma_gguf

    try:
        return gemma_gguf()
    except ReferenceModelMissing as e:
        missing(str(e))
        raise


class RuleJudge:
    """A deterministic, real Judge (no model): it reads the prompt and answers by a rule.

    ``rule(candidate_1_text, candidate_2_text, seed) -> str`` returns the raw answer text, so a
    test can make a judge that prefers a marker word, one that always says "1" (pure position
    bias), one whose answers fail the schema for some seeds, and so on. Records every call.
    """

    def __init__(self, name: str, rule, identity: str | None = None) -> None:
        self.name = name
        self.identity = identity or f"rule:{name}"
        self.rule = rule
        self.calls: list[tuple[str, str, int]] = []
        self.temperatures: list[float] = []
        self._lock = threading.Lock()

    @staticmethod
    def candidates(messages: list[dict[str, str]]) -> tuple[str, str]:
        text = messages[-1]["content"]
        tail = text.rsplit("Candidate 1:\n", 1)[1]
        first, rest = tail.split("\n\nCandidate 2:\n", 1)
        return first, rest.split("\n\n", 1)[0]

    def complete(self, messages, schema, params) -> str:
        one, two = self.candidates(messages)
        with self._lock:
            self.calls.append((one, two, params.seed))
            self.temperatures.append(params.temperature)
        return self.rule(one, two, params.seed)


def verdict(better: str) -> str:
    return f'{{"better": "{better}", "reason": "rule"}}'


def prefers(word: str):
    """A rule: the candidate containing ``word`` is better; neither or both: tie."""
    def rule(one: str, two: str, seed: int) -> str:
        a, b = word in one, word in two
        return verdict("1" if a and not b else "2" if b and not a else "tie")
    return rule


def always(better: str):
    return lambda one, two, seed: verdict(better)
