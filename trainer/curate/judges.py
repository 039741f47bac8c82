"""LLM judges behind one interface: a local GGUF chat model, or any OpenAI-compatible endpoint.

A judge turns chat messages and a JSON schema into raw text (``Judge.complete``); parsing,
validation, retries on bad answers and caching are the caller's (``trainer.curate.cache``),
so every judge is held to the same rules.

* :class:`LocalJudge` runs a GGUF file in-process with llama-cpp-python's high-level
  ``Llama``; the answer is constrained by a grammar built from the schema, so it parses
  unless it is cut off at ``max_tokens``. ``Llama`` has no switch for llama.cpp's extra CPU
  buffers (AMX tiles, repacked weights), which crash some machines (SIGSEGV/SIGILL: see
  ``engine.backends.gguf_probe``), so the load runs with llama.cpp's default model params
  patched to the probe's decision.
* :class:`HTTPJudge` speaks ``/v1/chat/completions`` to llama-server, vLLM, a hosted API or
  llama-cpp-python's own server. Retries only what can succeed later (connection errors,
  timeouts, 429, 5xx), with exponential backoff and full jitter; a refused key (401/403) or an
  endpoint still down after the retries raises :class:`JudgeUnavailable` naming the endpoint.
  The API key is read from an environment variable the user names and never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.errors import ArbiterError, InputError, ModelError

log = logging.getLogger(__name__)
_load_lock = threading.Lock()  # serialises the patched loads of llama.cpp models


class JudgeUnavailable(ArbiterError):
    """A judge cannot be reached or refuses us (down, wrong key): nothing was answered."""


class PromptTooLong(InputError):
    """The prompt does not fit the judge's context: this question cannot be asked of it."""


class JudgeAnswerError(ArbiterError):
    """A judge answered something that is not a completion (e.g. a 4xx on a bad request)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one call; part of the cache key (a change is a new question)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256  # completion tokens
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed}


@runtime_checkable
class Judge(Protocol):
    """Anything that answers chat messages under a JSON schema with raw text."""

    identity: str  # gguf:<sha256 of the file> or http:<endpoint>|<model>: the cache's key
    name: str  # short, for logs and tables

    def complete(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> str: ...


@dataclass
class Usage:
    """Token counts a judge reported, summed over its calls (for throughput figures)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: dict | None) -> None:
        self.calls += 1
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)


# ---------------------------------------------------------------------------------- local


def _gguf_file_type(path: Path) -> int | str:
    from engine.gguf_file import read_header

    return read_header(path, keep_arrays=()).metadata.get("general.file_type", "?")


def apply_extra_bufts_decision(path: Path) -> tuple[bool, Callable[[], None]]:
    """Make llama.cpp's default model params carry the probe's extra-buffers decision for ``path``.

    ``llama_cpp.Llama`` (and so ``llama_cpp.server``) builds its model params from
    ``llama_cpp.llama_cpp.llama_model_default_params()`` with no way to turn the extra CPU
    buffers off; patching that function is the only switch it has. Returns (the decision,
    a function that undoes the patch).
    """
    import llama_cpp.llama_cpp as ll

    from engine.backends.gguf_probe import extra_bufts_allowed

    allowed = extra_bufts_allowed(path, _gguf_file_type(path))
    original = ll.llama_model_default_params

    def patched():  # the same struct, one field decided by the probe
        params = original()
        params.use_extra_bufts = allowed
        return params

    ll.llama_model_default_params = patched

    def restore() -> None:
        ll.llama_model_default_params = original

    return allowed, restore


@contextlib.contextmanager
def extra_bufts_decided(path: Path) -> Iterator[bool]:
    """While inside, ``Llama`` loads with the probe's decision (see apply_extra_bufts_decision)."""
    with _load_lock:  # two judges loading at once must not restore each other's patch
        allowed, restore = apply_extra_bufts_decision(path)
        try:
            yield allowed
        finally:
            restore()


def gguf_identity(path: Path) -> str:
    """``gguf:<sha256>`` of the file (hashed once per path, size and mtime: engine.files)."""
    from engine.files import file_info

    return f"gguf:{file_info(Path(path)).sha256}"


class LocalJudge:
    """A GGUF chat model in this process (llama-cpp-python ``Llama``), schema-constrained.

    ``Llama`` is not thread-safe, so calls are serialised by a lock: concurrency buys
    nothing in-process (llama.cpp already uses every thread it is given).
    """

    def __init__(self, path: Path, *, n_ctx: int = 4096, threads: int | None = None,
                 name: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such judge model file (a GGUF chat model)")
        self.path = path
        self.n_ctx = n_ctx
        self.identity = gguf_identity(path)
        self.name = name or path.stem
        self.usage = Usage()
        self._lock = threading.Lock()
        self._llama = self._load(path, n_ctx, threads or os.cpu_count() or 1)

    @staticmethod
    def _load(path: Path, n_ctx: int, threads: int):
        try:
            import llama_cpp
        except ImportError as e:
            raise ModelError(f"a local judge needs llama-cpp-python (pip install 'arbiter[curate]'): {e}") from None
        with extra_bufts_decided(path):
            try:
                return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, n_gpu_layers=0, verbose=False)
            except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
                raise ModelError(f"{path}: llama.cpp could not load this judge model ({e})") from None

    def complete(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> str:
        with self._lock:
            try:
                out = self._llama.create_chat_completion(
                    messages=messages, response_format={"type": "json_object", "schema": schema},
                    temperature=params.temperature, top_p=params.top_p,
                    max_tokens=params.max_tokens, seed=params.seed)
            except ValueError as e:
                if "context window" in str(e):  # llama-cpp-python: "Requested tokens (N) exceed context window of M"
                    raise PromptTooLong(f"judge {self.name}: {e} (n_ctx {self.n_ctx} tokens)") from None
                raise JudgeAnswerError(f"judge {self.name} ({self.path}): {e}") from None
            self.usage.add(out.get("usage"))
        return out["choices"][0]["message"]["content"] or ""

    def close(self) -> None:
        with self._lock:
            llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()

    def __enter__(self) -> LocalJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------- HTTP

def retryable_status(status: int) -> bool:
    """Worth asking again: rate limited (429) or the server's own failure (5xx)."""
    return status == 429 or 500 <= status < 600
#: backoff: base * 2**attempt seconds, capped, then a uniform draw below it ("full jitter")
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0


def backoff_s(attempt: int, rng: random.Random, *, base: float = BACKOFF_BASE_S,
              cap: float = BACKOFF_CAP_S) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)] seconds."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


def _retry_after_s(headers: Any) -> float | None:
    """A numeric ``Retry-After`` header in seconds (HTTP-dates are ignored), else None."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class HTTPJudge:
    """An OpenAI-compatible chat-completions endpoint.

    ``url`` is the server's base (``http://host:port`` or ``.../v1``); the call goes to
    ``<base>/v1/chat/completions``. ``concurrency`` bounds the requests in flight from all
    threads together; ``timeout_s`` is the hard limit of one request (seconds, the whole
    answer: see ``_post``), ``retries`` how many times a retryable failure is asked again.

    The answer is requested with OpenAI's ``response_format`` ``json_schema``; with
    ``response_format="auto"``, a server that rejects that form (llama-cpp-python's own server
    knows only ``json_object`` with a ``schema``, and answers the other with a 500) is asked
    once more in that form, which is remembered for the judge's life.
    """

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None,
                 concurrency: int = 4, timeout_s: float = 60.0, retries: int = 4,
                 name: str | None = None, backoff_base_s: float = BACKOFF_BASE_S,
                 response_format: str = "auto") -> None:
        import httpx

        if concurrency < 1:
            raise InputError(f"judge concurrency must be at least 1, not {concurrency}")
        base = url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        if not base.startswith(("http://", "https://")):
            raise InputError(f"judge url {url!r}: expected http://HOST[:PORT] or https://...")
        self.url, self.model = base, model
        self.endpoint = f"{base}/v1/chat/completions"
        self.identity = f"http:{self.endpoint}|{model}"
        self.name = name or model
        self.retries, self.timeout_s = retries, timeout_s
        self.backoff_base_s = backoff_base_s
        self.usage = Usage()
        self.retried = 0  # requests asked again (for logs and tests)
        if response_format not in ("auto", "json_schema", "json_object"):
            raise InputError(f"response_format must be auto, json_schema or json_object, not {response_format!r}")
        self._form = "json_schema" if response_format == "auto" else response_format
        self._auto_form = response_format == "auto"
        self._rng = random.Random()
        self._sem = threading.BoundedSemaphore(concurrency)
        self._usage_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise JudgeUnavailable(f"{self.endpoint}: the API key variable {api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers, trust_env=False,
                                    limits=httpx.Limits(max_connections=concurrency,
                                                        max_keepalive_connections=concurrency))

    def check(self) -> None:
        """Fail in seconds, before a run trains anything, when the endpoint is down or refuses the
        key: ``GET /v1/models``. Any other answer (a server without that route says 404) passes;
        the first real call tells the rest."""
        import httpx

        try:
            r = self._client.get(f"{self.url}/v1/models", timeout=min(self.timeout_s, 10.0))
        except (httpx.HTTPError, OSError) as e:
            raise JudgeUnavailable(f"{self.endpoint}: cannot reach the judge ({type(e).__name__}: {e}); "
                                   "is the server up?") from None
        if r.status_code in (401, 403):
            raise JudgeUnavailable(f"{self.endpoint}: the server refused the API key (HTTP {r.status_code})")

    def _body(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> dict:
        if self._form == "json_schema":
            fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        else:
            fmt = {"type": "json_object", "schema": schema}
        return {"model": self.model, "messages": messages, "response_format": fmt, **params.to_dict()}

    def complete(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> str:
        with self._sem:
            data = self._post_with_retries(messages, schema, params)
        with self._usage_lock:
            self.usage.add(data.get("usage"))
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeAnswerError(f"{self.endpoint}: the answer has no choices[0].message.content") from None

    def _post_with_retries(self, messages: list[dict[str, str]], schema: dict, params: Sampling) -> dict:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._usage_lock:
                    self.retried += 1
            wait = None
            try:
                status, text, headers = self._post(self._body(messages, schema, params))
            except (httpx.TimeoutException, httpx.TransportError, TimeoutError) as e:
                last = f"{type(e).__name__}"  # no message: it may quote the request
            else:
                if status == 200:
                    return self._json(text)
                if status in (401, 403):
                    raise JudgeUnavailable(f"{self.endpoint}: the server refused the API key "
                                           f"(HTTP {status}); check the key variable")
                # llama-cpp-python's server rejects the form with a 500 (its validation error)
                if (status in (400, 422, 500) and self._form == "json_schema" and self._auto_form
                        and "response_format" in text):
                    self._form = "json_object"  # a server without OpenAI's json_schema form
                    log.info("%s: no json_schema response_format; using json_object with a schema", self.endpoint)
                    return self._post_with_retries(messages, schema, params)
                if status == 400 and "context" in text.lower() and "exceed" in text.lower():
                    raise PromptTooLong(f"{self.endpoint}: the prompt does not fit the model's context "
                                        f"(HTTP 400: {text[:200]})")
                if not retryable_status(status):
                    raise JudgeAnswerError(f"{self.endpoint}: HTTP {status}: {text[:300]}")
                last = f"HTTP {status}"
                wait = _retry_after_s(headers)
            if attempt < self.retries:
                delay = backoff_s(attempt, self._rng, base=self.backoff_base_s)
                time.sleep(min(BACKOFF_CAP_S, wait) if wait is not None else delay)
        raise JudgeUnavailable(f"{self.endpoint}: no answer after {self.retries + 1} attempts ({last}); "
                               "is the server up? A rerun resumes from the cache")

    def _post(self, body: dict) -> tuple[int, str, Any]:
        """One request under the hard limit: (status, text, headers).

        httpx's timeouts bound each connect/read/write, not the whole call, so a server that
        drips bytes could hold a call for ever: the answer is streamed and the deadline
        (``timeout_s``) checked after every chunk. A stalled read ends at ``timeout_s`` too.
        """
        deadline = time.monotonic() + self.timeout_s
        with self._client.stream("POST", self.endpoint, json=body) as r:
            chunks = []
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole answer in {self.timeout_s} s")
            return r.status_code, b"".join(chunks).decode("utf-8", errors="replace"), r.headers

    def _json(self, text: str) -> dict:
        try:
            data = json.loads(text)
        except ValueError:
            raise JudgeAnswerError(f"{self.endpoint}: the answer is not JSON: {text[:200]!r}") from None
        if not isinstance(data, dict):
            raise JudgeAnswerError(f"{self.endpoint}: the answer is not a JSON object")
        return data

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HTTPJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_answer(text: str, schema: dict) -> dict | None:
    """``text`` as a JSON object valid under ``schema``, else None (a failed answer)."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return None
    return value
