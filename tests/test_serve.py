"""`arbiter serve`: a real server in a subprocess, real models, a real HTTP client.

Shapes are checked against the documented examples of the tools each dialect imitates
(OpenRLHF's serve_rm and remote_rm_fn, vLLM's /classify and /rerank, Cohere/Jina rerank);
the scores against the engine in this process. Batching, overload and SIGTERM are made
deterministic through the batcher's own limits (a batch starts when ``--max-batch-items`` are
waiting) and the queue-depth gauge, never through sleeps.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading

import pytest

import engine
from tests.serve_helpers import ROOT, ServerHandle, serve_command, start_server

pytestmark = pytest.mark.enable_socket

PROMPT = "What is the capital of France?"
ANSWERS = ["Paris.", "The capital of France is Paris, a city on the Seine.", "Lyon.",
           "I think it might be Marseille, but I am not sure at all."]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return {"ARBITER_HOME": str(tmp_path_factory.mktemp("serve-home"))}


@pytest.fixture(scope="module")
def server(home):
    """The built-in default model (an ONNX int8 cross-encoder) with small limits to test."""
    h = start_server(["--max-items-per-request", "8", "--max-request-bytes", "65536"], env=home)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def rm():
    with engine.load("default") as scorer:
        yield scorer


@pytest.fixture(scope="module")
def decoder_server(hf_models, home):
    """A tiny Qwen3 decoder (torch reference backend) beside the default: two models in one server."""
    h = start_server(["--model", "default", "--model", str(hf_models["qwen3"])], env=home)
    yield h
    h.stop()


def metric(h: ServerHandle, name: str, **labels: str) -> float:
    with h.client() as c:
        text = c.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for_metric(h: ServerHandle, name: str, value: float, **labels: str) -> None:
    """Poll until a gauge reads ``value`` (no sleep: each poll is a request the server answers)."""
    for _ in range(100_000):
        if metric(h, name, **labels) >= value:
            return
    raise AssertionError(f"{name} never reached {value}")


def post_in_thread(h: ServerHandle, path: str, body: dict, out: list) -> threading.Thread:
    def run() -> None:
        with h.client() as c:
            out.append(c.post(path, json=body))

    t = threading.Thread(target=run)
    t.start()
    return t


# ---- each dialect's shape ----------------------------------------------------------------------
def test_get_reward_as_openrlhf_sends_it(server, rm):
    """openrlhf/utils/remote_rm_utils.py: requests.post(url, json={"query", "prompts", "labels"},
    headers={"Content-Type": "application/json"}), then response.json()["rewards"]."""
    queries = [PROMPT + a for a in ANSWERS]
    with server.client() as c:
        r = c.post("/get_reward", json={"query": queries, "prompts": [PROMPT] * 4, "labels": [None] * 4},
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}  # openrlhf.cli.serve_rm's answer
    assert body["extra_logs"] == {}
    assert body["rewards"] == body["scores"]
    expected = [s.value for s in rm.score_texts(queries, [PROMPT] * 4)]
    assert body["rewards"] == pytest.approx(expected, abs=1e-6)
    # the cross-encoder's split on the prompt is scoring (prompt, response) as an item
    assert body["rewards"] == pytest.approx([s.value for s in rm.score([(PROMPT, a) for a in ANSWERS])],
                                            abs=1e-6)


def test_get_reward_old_client_without_prompts_is_a_clear_422_for_a_cross_encoder(server):
    with server.client() as c:
        r = c.post("/get_reward", json={"query": [PROMPT + "Paris."]})
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation_error" and r.json()["field"] == "prompts"
    assert "cross-encoder" in r.json()["error"]


def test_rerank_in_the_cohere_jina_vllm_shape(server, rm):
    """vLLM's RerankResponse: {id, model, usage {prompt_tokens, total_tokens}, results [{index,
    document {text}, relevance_score}]}, best first; top_n limits; the raw logit by default."""
    body = {"model": "default", "query": PROMPT, "documents": ANSWERS, "top_n": 3}
    with server.client() as c:
        a, b = c.post("/v1/rerank", json=body), c.post("/rerank", json=body)
        sig = c.post("/rerank", json={**body, "use_activation": True, "top_n": 0})
        objs = c.post("/rerank", json={**body, "documents": [{"text": t} for t in ANSWERS],
                                        "return_documents": False})
    assert a.status_code == b.status_code == sig.status_code == objs.status_code == 200, a.text
    ra = a.json()
    assert set(ra) == {"id", "model", "usage", "results"}
    assert ra["id"].startswith("rerank-") and ra["model"] == "default"
    assert set(ra["usage"]) == {"prompt_tokens", "total_tokens"} and ra["usage"]["total_tokens"] > 0
    raw = [s.value for s in rm.score([(PROMPT, t) for t in ANSWERS])]
    order = sorted(range(4), key=lambda i: -raw[i])
    assert [x["index"] for x in ra["results"]] == order[:3]
    for x in ra["results"]:
        assert set(x) == {"index", "relevance_score", "document"}
        assert x["document"] == {"text": ANSWERS[x["index"]]}
        assert x["relevance_score"] == pytest.approx(raw[x["index"]], abs=1e-6)
    assert [x["index"] for x in b.json()["results"]] == order[:3]  # /rerank is the same endpoint
    rs = sig.json()["results"]
    assert len(rs) == 4  # top_n 0: all, as vLLM
    assert [x["relevance_score"] for x in rs] == pytest.approx([engine.sigmoid(raw[i]) for i in order], abs=1e-6)
    assert all("document" not in x for x in objs.json()["results"])
    assert [x["index"] for x in objs.json()["results"]] == order[:3]


def test_classify_in_the_vllm_shape_raw_logits_by_default(server, rm):
    """vLLM's /classify: {id, object "list", created, model, data [{index, label, probs,
    num_classes}], usage}; the chat form takes messages (the last one the response)."""
    msgs = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Paris."}]
    with server.client() as c:
        raw = c.post("/classify", json={"model": "default", "messages": msgs})
        act = c.post("/v1/classify", json={"messages": msgs, "use_activation": True})
        text = c.post("/classify", json={"input": PROMPT + "Paris."})
        both = c.post("/classify", json={"input": "x", "messages": msgs})
    assert raw.status_code == act.status_code == 200, raw.text
    body = raw.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"].startswith("classify-") and body["object"] == "list"
    assert isinstance(body["created"], int) and body["model"] == "default"
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"}
    (row,) = body["data"]
    assert set(row) == {"index", "label", "probs", "num_classes"}
    assert row["index"] == 0 and row["num_classes"] == 1
    expected = rm.score([(PROMPT, "Paris.")])[0].value
    assert row["probs"] == pytest.approx([expected], abs=1e-6)
    assert act.json()["data"][0]["probs"] == pytest.approx([engine.sigmoid(expected)], abs=1e-6)
    # one rendered text cannot be split for a cross-encoder: a clear 422, not a guess
    assert text.status_code == 422 and text.json()["field"] == "input"
    assert both.status_code == 422 and both.json()["error_type"] == "validation_error"


def test_score_is_compare_and_rank(server, rm):
    with server.client() as c:
        two = c.post("/v1/score", json={"prompt": PROMPT, "responses": ANSWERS[:2]})
        four = c.post("/v1/score", json={"conversation": [{"role": "user", "content": PROMPT}],
                                         "responses": ANSWERS, "prompt_sharing": False})
    assert two.status_code == four.status_code == 200, two.text
    cmp = rm.compare(PROMPT, ANSWERS[0], ANSWERS[1])
    t = two.json()
    assert t["margin"] == pytest.approx(cmp.margin, abs=1e-6)
    assert t["p_a_better"] == pytest.approx(cmp.p_a_better, abs=1e-6)
    assert t["winner"] == cmp.winner and t["model"] == "default"
    ranking = rm.rank(PROMPT, ANSWERS)
    f = four.json()
    assert "margin" not in f  # only a pair has A and B
    assert f["ranking"] == [c.index for c in ranking.candidates]
    assert f["best_index"] == ranking.best.index
    for c in ranking.candidates:
        row = f["scores"][c.index]
        assert row["index"] == c.index
        assert row["score"] == pytest.approx(c.score.value, abs=1e-6)
        assert row["p_best_better"] == pytest.approx(c.p_best_vs_this, abs=1e-6)
        assert row["margin_to_best"] == pytest.approx(c.score.value - ranking.best.score.value, abs=1e-6)
        assert row["n_tokens"] == c.score.n_tokens and row["cut_tokens"] == 0


def test_health_info_models_and_metrics(server, rm):
    with server.client() as c:
        c.post("/v1/score", json={"prompt": PROMPT, "responses": ANSWERS[:2]})
        health, info, models = c.get("/health").json(), c.get("/info").json(), c.get("/v1/models").json()
        text = c.get("/metrics")
    assert health == {"status": "ok", "models": ["default"]}
    (m,) = info["models"]
    assert m["name"] == "default" and m["format"] == rm.info.format and m["max_length"] == rm.info.max_length
    assert {f["sha256"] for f in m["files"]} == {f.sha256 for f in rm.info.files}
    assert info["limits"]["max_items_per_request"] == 8 and info["limits"]["max_request_bytes"] == 65536
    assert info["version"] and info["auth"] is False
    assert models["object"] == "list" and models["data"][0]["id"] == "default"
    assert text.headers["content-type"].startswith("text/plain")
    for name in ("arbiter_requests_total", "arbiter_request_latency_seconds_bucket", "arbiter_items_scored_total",
                 "arbiter_queue_depth", "arbiter_batch_items_bucket", "arbiter_batch_latency_seconds_bucket"):
        assert name in text.text, name
    assert metric(server, "arbiter_requests_total", endpoint="/v1/score", status="200") >= 1


# ---- errors -----------------------------------------------------------------------------------
def test_typed_errors(server):
    long_answer = "word " * 2000  # over the default model's 512 tokens
    with server.client() as c:
        cases = {
            "missing": c.post("/get_reward", json={"prompts": ["x"]}),
            "wrong type": c.post("/get_reward", json={"query": ["ok", 3], "prompts": ["o", "o"]}),
            "not json": c.post("/v1/score", content=b"{not json", headers={"Content-Type": "application/json"}),
            "bad role": c.post("/v1/score", json={"conversation": [{"role": "robot", "content": "hi"}],
                                                  "responses": ["a"]}),
            "too long": c.post("/v1/score", json={"prompt": PROMPT, "responses": ["ok", long_answer]}),
            "too long text": c.post("/get_reward", json={"query": [PROMPT + long_answer], "prompts": [PROMPT]}),
            "unknown model": c.post("/rerank", json={"model": "nope", "query": "q", "documents": ["d"]}),
            "surrogate": c.post("/get_reward", content=b'{"query": ["a\\ud800"], "prompts": ["a"]}'),
            "deep": c.post("/get_reward", content=b"[" * 60_000),
            "not utf-8": c.post("/get_reward", content=b"\xff\xfe{"),
            "no route": c.get("/v2/nothing"),
            "method": c.get("/get_reward"),
        }
    want = {"missing": (422, "validation_error"), "wrong type": (422, "validation_error"),
            "not json": (422, "validation_error"), "bad role": (422, "validation_error"),
            "too long": (422, "input_too_long"), "too long text": (422, "input_too_long"),
            "unknown model": (404, "model_not_found"), "no route": (404, "not_found"),
            "surrogate": (422, "validation_error"), "deep": (422, "validation_error"),
            "not utf-8": (422, "validation_error"),
            "method": (405, "method_not_allowed")}
    for name, r in cases.items():
        assert (r.status_code, r.json()["error_type"]) == want[name], (name, r.text)
        assert r.json()["error"], name
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), name
    assert cases["missing"].json()["field"] == "query"
    assert cases["wrong type"].json()["field"] == "query[1]"
    assert cases["bad role"].json()["field"] == "conversation[0].role"
    assert cases["surrogate"].json()["field"] == "query[0]"
    assert cases["too long"].json()["item_index"] == 1
    assert cases["too long text"].json()["item_index"] == 0
    assert "default" in cases["unknown model"].json()["error"]  # says what is served


def test_curl_without_a_content_type_is_read_as_json(server):
    with server.client() as c:
        r = c.post("/v1/score", content=json.dumps({"prompt": PROMPT, "responses": ["a"]}),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # what `curl -d` sends
    assert r.status_code == 200, r.text


def test_request_size_and_item_limits(server):
    big = {"query": ["x" * 70_000], "prompts": ["x"]}
    def chunks():
        for _ in range(20):
            yield b" " * 4096  # JSON whitespace: only the size can be wrong
    with server.client() as c:
        sized = c.post("/get_reward", json=big)
        chunked = c.post("/get_reward", content=chunks(), headers={"Content-Type": "application/json"})
        nine = c.post("/get_reward", json={"query": ["a"] * 9, "prompts": ["a"] * 9})
        eight = c.post("/get_reward", json={"query": ["ab"] * 8, "prompts": ["a"] * 8})
        docs = c.post("/rerank", json={"query": "q", "documents": ["d"] * 9})
    assert sized.status_code == 413 and sized.json()["error_type"] == "request_too_large"
    assert "chunked" not in sized.headers.get("transfer-encoding", "")
    assert chunked.status_code == 413 and chunked.json()["error_type"] == "request_too_large"
    assert nine.status_code == 413 and nine.json()["error_type"] == "too_many_items"
    assert nine.json()["field"] == "query"
    assert docs.status_code == 413 and docs.json()["field"] == "documents"
    assert eight.status_code == 200 and len(eight.json()["rewards"]) == 8


def test_no_cors_unless_asked_for(server):
    with server.client() as c:
        r = c.post("/v1/score", json={"prompt": "q", "responses": ["a"]}, headers={"Origin": "http://app.example"})
        pre = c.options("/v1/score", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and not any(k.startswith("access-control-") for k in r.headers)
    assert pre.status_code == 405 and not any(k.startswith("access-control-") for k in pre.headers)


def test_empty_lists_score_nothing(server):
    with server.client() as c:
        rw = c.post("/get_reward", json={"query": [], "prompts": []})
        rr = c.post("/rerank", json={"query": "q", "documents": []})
        cl = c.post("/classify", json={"input": []})
        sc = c.post("/v1/score", json={"prompt": "q", "responses": []})
    assert rw.json()["rewards"] == [] and rr.json()["results"] == []
    assert cl.status_code == 422  # the default is a cross-encoder: text input is refused even when empty
    assert sc.status_code == 422 and sc.json()["field"] == "responses"


def test_request_id_is_echoed(server):
    with server.client() as c:
        given = c.get("/health", headers={"X-Request-Id": "trainer-7.step:42"})
        made = c.post("/v1/score", json={"prompt": "q", "responses": ["a"]})
        unsafe = c.get("/health", headers={"X-Request-Id": "x" * 129})
        on_error = c.post("/v1/score", json={}, headers={"X-Request-Id": "err-1"})
    assert given.headers["x-request-id"] == "trainer-7.step:42"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])  # replaced, not echoed
    assert on_error.status_code == 422 and on_error.headers["x-request-id"] == "err-1"


# ---- load: batching, backpressure ---------------------------------------------------------------
def test_scores_do_not_depend_on_the_batch(home, rm):
    """Six requests of different lengths, held until all are queued, are scored in one call
    (--max-batch-items = their items); each gets exactly the score it gets alone."""
    bodies = [{"query": [PROMPT + a] * k, "prompts": [PROMPT] * k} for k, a in zip((1, 2, 3, 1, 2, 3),
                                                                                   ANSWERS + ANSWERS[:2], strict=True)]
    total = sum(len(b["query"]) for b in bodies)
    with start_server(["--max-batch-items", str(total), "--max-wait-ms", "600000"], env=home) as h:
        out: list = []
        threads = [post_in_thread(h, "/get_reward", b, out) for b in bodies]
        for t in threads:
            t.join()
        assert metric(h, "arbiter_batch_items_count", model="default") == 1  # one scorer call
        assert metric(h, "arbiter_batch_items_sum", model="default") == total
    assert all(r.status_code == 200 for r in out), [r.text for r in out]
    for r in out:
        q = json.loads(r.request.content)["query"]
        alone = [rm.score_texts([t], [PROMPT])[0].value for t in q]
        assert r.json()["rewards"] == alone  # exactly: batching changes speed, not values


def test_overload_is_429_with_retry_after_and_nothing_is_dropped(home):
    """Queue of 4 items; a batch starts at 4. A (2 items) waits; B (3) cannot fit: 429 at once;
    C (2) fills the batch, so A and C are scored: every request gets an answer."""
    with start_server(["--max-queue", "4", "--max-batch-items", "4", "--max-wait-ms", "600000"], env=home) as h:
        a: list = []
        ta = post_in_thread(h, "/get_reward", {"query": ["q a"] * 2, "prompts": ["q"] * 2}, a)
        wait_for_metric(h, "arbiter_queue_depth", 2, model="default")
        with h.client() as c:
            b = c.post("/get_reward", json={"query": ["q b"] * 3, "prompts": ["q"] * 3})
        assert b.status_code == 429, b.text
        assert b.json()["error_type"] == "overloaded"
        assert int(b.headers["retry-after"]) >= 1
        c_out: list = []
        tc = post_in_thread(h, "/get_reward", {"query": ["q c"] * 2, "prompts": ["q"] * 2}, c_out)
        ta.join()
        tc.join()
        assert a[0].status_code == 200 and c_out[0].status_code == 200
        assert metric(h, "arbiter_rejected_total", model="default") == 1
        assert h.proc.poll() is None


# ---- security -----------------------------------------------------------------------------------
def test_bearer_auth(home):
    key = "s3cret-key-0123456789abcdef"
    args = ["--api-key-env", "ARBITER_TEST_KEY", "--cors-origin", "http://app.example"]
    with start_server(args, env={**home, "ARBITER_TEST_KEY": key}) as h:
        body = {"prompt": PROMPT, "responses": ["Paris."]}
        with h.client() as c:
            none = c.post("/v1/score", json=body)
            wrong = c.post("/v1/score", json=body, headers={"Authorization": "Bearer not-the-key"})
            basic = c.post("/v1/score", json=body, headers={"Authorization": f"Basic {key}"})
            prefix = c.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key[:-1]}"})
            info = c.get("/info")
            ok = c.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
            health = c.get("/health")
            # a browser's preflight carries no key; the origin asked for gets CORS headers
            preflight = c.options("/v1/score", headers={"Origin": "http://app.example",
                                                        "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "authorization"})
            other = c.options("/v1/score", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
        for r in (none, wrong, basic, prefix, info):
            assert r.status_code == 401, r.text
            assert r.json()["error_type"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            assert key not in r.text and "not-the-key" not in r.text
        assert ok.status_code == 200 and health.status_code == 200  # /health stays open for probes
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-origin" not in other.headers
        h.stop()
        assert key not in h.stderr()


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(serve_command(args), cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_non_loopback_bind_without_a_key_is_refused_before_anything_loads(home, host):
    # the model does not exist: the host error coming first shows nothing was loaded or bound
    r = run_cli(["--host", host, "--port", "0", "--model", "/no/such/model"], home)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("arbiter: error:") and "--api-key-env" in r.stderr and host in r.stderr
    assert "Traceback" not in r.stderr and "listening" not in r.stderr


@pytest.mark.parametrize("bad", [["--max-wait-ms", "nan"], ["--max-wait-ms", "-1"], ["--port", "70000"],
                                 ["--max-queue", "0"]])
def test_bad_limits_are_refused(home, bad):
    r = run_cli([*bad, "--model", "/no/such/model"], home)
    assert r.returncode == 2 and bad[0] in r.stderr and "Traceback" not in r.stderr


def test_a_key_variable_that_is_not_set_is_refused(home):
    env = {k: v for k, v in home.items()}
    r = run_cli(["--api-key-env", "ARBITER_UNSET_KEY_VAR", "--port", "0"], env)
    assert r.returncode == 2 and "ARBITER_UNSET_KEY_VAR is not set" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_port_in_use_is_a_clear_error(home):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli(["--port", str(s.getsockname()[1])], home)
    assert r.returncode == 2 and "arbiter: error: could not listen on 127.0.0.1" in r.stderr
    assert "address already in use" in r.stderr and "Traceback" not in r.stderr


def test_loopback_rule():
    from app.serve.security import bearer_ok, check_bind, is_loopback
    from engine.errors import InputError

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "127.0.0.1.nip.io"))
    check_bind("0.0.0.0", "a-key")  # any address, once a key is set
    check_bind("127.0.0.1", None)
    with pytest.raises(InputError, match="--api-key-env"):
        check_bind("0.0.0.0", None)
    assert bearer_ok("Bearer k", "k") and bearer_ok("bearer k", "k")
    assert not any(bearer_ok(a, "k") for a in (None, "", "k", "Bearer", "Bearer kk", "Token k", "Bearer  "))


# ---- shutdown -------------------------------------------------------------------------------------
def test_sigterm_lets_the_in_flight_request_finish(home, rm):
    """A request waits in the batcher (its 3 s batching window); SIGTERM arrives; the request
    is still answered, with the right score, and the process exits as a shell expects (143)."""
    with start_server(["--max-wait-ms", "3000"], env=home) as h:
        out: list = []
        t = post_in_thread(h, "/get_reward", {"query": [PROMPT + "Paris."], "prompts": [PROMPT]}, out)
        wait_for_metric(h, "arbiter_queue_depth", 1, model="default")
        h.signal()
        t.join()
        rc = h.stop()
    assert out[0].status_code == 200, out[0].text
    assert out[0].json()["rewards"] == pytest.approx([rm.score([(PROMPT, "Paris.")])[0].value], abs=1e-6)
    assert rc == 143, h.stderr()
    assert "Traceback" not in h.stderr()


# ---- a decoder beside the cross-encoder -------------------------------------------------------------
def test_decoder_scores_rendered_text_and_models_are_chosen_by_name(decoder_server, hf_models):
    qwen = str(hf_models["qwen3"])
    with engine.load(qwen) as dec:
        rendered = [dec.encoder.render(engine.Item.of(PROMPT, a)) for a in ANSWERS[:2]]
        expected = [s.value for s in dec.score_texts(rendered)]
        direct = [s.value for s in dec.score([(PROMPT, a) for a in ANSWERS[:2]])]
    with decoder_server.client() as c:
        rw = c.post("/get_reward", json={"model": qwen, "query": rendered})  # no prompts: fine for a decoder
        cl = c.post("/classify", json={"model": qwen, "input": rendered})
        sc = c.post("/v1/score", json={"model": qwen, "prompt": PROMPT, "responses": ANSWERS[:2]})
        first = c.post("/v1/score", json={"prompt": PROMPT, "responses": ANSWERS[:2]})
        info = c.get("/info").json()
    assert rw.status_code == cl.status_code == sc.status_code == 200, (rw.text, cl.text, sc.text)
    assert rw.json()["rewards"] == pytest.approx(expected, abs=1e-5)
    assert [d["probs"][0] for d in cl.json()["data"]] == pytest.approx(expected, abs=1e-5)
    assert [s["score"] for s in sc.json()["scores"]] == pytest.approx(direct, abs=1e-5)
    assert sc.json()["model"] == qwen and first.json()["model"] == "default"  # no model: the first
    assert [m["encoder"] for m in info["models"]] == ["cross-encoder", "decoder"]
    assert all(math.isfinite(x) for x in rw.json()["rewards"])


def test_serve_needs_no_fastapi_to_register():
    """`arbiter --help` and every other command work without the serve extra."""
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
            "from app.cli.main import build_parser; build_parser().parse_args(['serve', '--help'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--api-key-env" in r.stdout, r.stderr


def test_score_and_rerank_share_the_prompt_on_a_decoder_that_can(onnx_models, home):
    """ONNX decoders carry a with-past graph: /v1/score and /rerank go through ``rank``, the
    conversation computed once, and give the same scores as full scoring."""
    path = str(onnx_models["qwen3", "fp32"])
    with engine.load(path) as dec:
        full = [s.value for s in dec.score([(PROMPT, a) for a in ANSWERS])]
        assert dec.rank(PROMPT, ANSWERS).prompt_shared
    with start_server(["--model", path], env=home) as h, h.client() as c:
        shared = c.post("/v1/score", json={"prompt": PROMPT, "responses": ANSWERS})
        unshared = c.post("/v1/score", json={"prompt": PROMPT, "responses": ANSWERS, "prompt_sharing": False})
        rerank = c.post("/rerank", json={"query": PROMPT, "documents": ANSWERS})
    assert shared.json()["prompt_shared"] is True and unshared.json()["prompt_shared"] is False
    assert [s["score"] for s in shared.json()["scores"]] == pytest.approx(full, abs=1e-4)
    assert [s["score"] for s in unshared.json()["scores"]] == pytest.approx(full, abs=1e-5)
    by_index = {r["index"]: r["relevance_score"] for r in rerank.json()["results"]}
    assert [by_index[i] for i in range(4)] == pytest.approx(full, abs=1e-4)


def test_on_too_long_window_scores_long_responses_as_the_engine_does(home, rm):
    """`--on-too-long window`: /v1/score and /rerank score a response over the context in windows
    (the same values and policy as the engine's own windows); /get_reward's rendered text must fit."""
    from engine.types import Item, conversation

    long_answer = "Paris is the capital of France, on the Seine. " * 120  # ~1,300 tokens: several windows
    h = start_server(["--on-too-long", "window"], env=home)
    try:
        with h.client() as c:
            scored = c.post("/v1/score", json={"prompt": PROMPT, "responses": ["Paris.", long_answer]})
            reranked = c.post("/v1/rerank", json={"query": PROMPT, "documents": ["Paris.", long_answer]})
            text = c.post("/get_reward", json={"query": [PROMPT + long_answer], "prompts": [PROMPT]})
    finally:
        h.stop()
    assert scored.status_code == reranked.status_code == 200, (scored.text, reranked.text)
    want = rm.score([Item(conversation(PROMPT), "Paris."), Item(conversation(PROMPT), long_answer)],
                    on_too_long="window")
    assert want[1].windows > 1
    for row, w in zip(scored.json()["scores"], want, strict=True):
        assert row["score"] == pytest.approx(w.value, abs=1e-6)
        assert (row["windows"], row["policy"]) == (w.windows, w.policy)
    by_index = {r["index"]: r["relevance_score"] for r in reranked.json()["results"]}
    assert by_index[1] == pytest.approx(want[1].value, abs=1e-6)
    assert (text.status_code, text.json()["error_type"]) == (422, "input_too_long")


def test_on_too_long_window_refuses_a_decoder_before_binding(home, hf_models):
    r = run_cli(["--on-too-long", "window", "--model", str(hf_models["qwen3"]), "--port", "0"], home)
    assert r.returncode == 2, r.stderr
    assert "is a decoder" in r.stderr and "--on-too-long" in r.stderr
    assert "Traceback" not in r.stderr and "listening" not in r.stderr
