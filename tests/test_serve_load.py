"""`arbiter serve` under load, as RLHF trainers use it: a real server in a subprocess, real models.

* OpenRLHF's client request, field for field as ``openrlhf/utils/agent.py`` (``--remote_rm_url``)
  builds it: ``{"query", "prompts", "labels"}``, the query decoded from prompt ids + generated
  ids with special tokens kept; older OpenRLHF sent ``{"query"}`` alone. It reads ``rewards``.
* 32 concurrent clients x 20 requests: every request answered, every score equal to what
  `arbiter score` (the CLI, on the same rows) writes, nothing lost, duplicated or swapped.
* SIGTERM during load: requests in flight complete; later ones are refused or their
  connection closed; the server exits with 143 (128 + SIGTERM, every Arbiter command's code).

Tolerance between the server and the CLI: 1e-5, the batch-invariance bound of ONNX fp32 (the
server batches rows from different requests together; the CLI batches a file).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.modelmeta import read_meta, write_meta
from engine.types import Item
from exports.probes import probe_items
from tests.serve_helpers import ROOT, start_server

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.slow]

TOL = 1e-5  # ONNX fp32 scores, any batch composition
BETA = 0.5  # a length correction, so the server's corrected path is the one compared
CLIENTS, REQUESTS = 32, 20
LONG_ROWS = 2048  # the SIGTERM test's long request


@pytest.fixture(scope="module")
def decoder_onnx(hf_models, tmp_path_factory) -> Path:
    """The tiny Qwen3 reward model (SmolLM2's ChatML template) as ONNX fp32, length-controlled."""
    from exports.onnx import export_onnx

    root = tmp_path_factory.mktemp("serve-load")
    src = root / "qwen3"
    shutil.copytree(hf_models["qwen3"], src)
    write_meta(src, {**read_meta(src), "length_correction": BETA})
    return export_onnx(src, root / "qwen3-onnx")


def _rows(n: int) -> list[Item]:
    """n distinct items: the probe conversations, each response given a numbered variant."""
    items, _ = probe_items()
    # short enough that no model here cuts them (512 tokens): the CLI would cut, the server refuse
    items = [it for it in items if len(it.response) + sum(len(m.content) for m in it.conversation) < 400]
    return [Item(items[k % len(items)].conversation, f"{items[k % len(items)].response} (take {k})")
            for k in range(n)]


def _cli_scores(model: Path | str, items: list[Item], tmp: Path) -> list[float]:
    """`arbiter score` on the items, as a user runs it: JSONL in, JSONL out."""
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({"conversation": [m.to_dict() for m in it.conversation],
                                        "response": it.response}) + "\n" for it in items),
                    encoding="utf-8")
    out = tmp / "scored.jsonl"
    subprocess.run([sys.executable, "-m", "app.cli.main", "score", "--model", str(model), str(rows),
                    "-o", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    return [json.loads(line)["score"] for line in out.read_text(encoding="utf-8").splitlines()]


def _openrlhf_queries(rm, items: list[Item]) -> tuple[list[str], list[str]]:
    """What OpenRLHF's agent sends: ``prompt`` is the chat-templated prompt text; the policy's
    tokens are ``tokenizer(prompt, add_special_tokens=False)`` + the generated ids, which end
    with EOS; ``query = tokenizer.decode(those, skip_special_tokens=False)``."""
    tok = rm.encoder.tokenizer.tokenizer  # the model's tokenizer.json (HF tokenizers)
    eos = tok.token_to_id("<|im_end|>")  # ChatML's end of turn: what SmolLM2-Instruct stops on
    prompts, queries = [], []
    for it in items:
        prompt = rm.encoder.render_prompt(it)
        ids = tok.encode(prompt, add_special_tokens=False).ids
        ids += tok.encode(it.response, add_special_tokens=False).ids + [eos]
        prompts.append(prompt)
        queries.append(tok.decode(ids, skip_special_tokens=False))
    return queries, prompts


def _post_like_openrlhf(client, data: dict, score_key: str = "rewards") -> list[float]:
    """OpenRLHF's ``request_api_wrapper``: POST JSON, raise on an HTTP error, read ``score_key``."""
    response = client.post("/get_reward", json=data, headers={"Content-Type": "application/json"})
    response.raise_for_status()
    body = response.json()
    assert score_key in body, f"{score_key} not in {body}"
    return body.get(score_key)


def test_openrlhf_client_on_a_decoder(decoder_onnx):
    items = _rows(12)
    with engine.load(decoder_onnx) as rm:
        queries, prompts = _openrlhf_queries(rm, items)
        assert all(q.startswith(p) and q.endswith("<|im_end|>") for q, p in zip(queries, prompts, strict=True))
        want = np.array([s.value for s in rm.score_texts(queries, prompts)])
        rm.length_control = False
        want_raw = np.array([s.value for s in rm.score_texts(queries)])
    with start_server(["--model", str(decoder_onnx)]) as server, server.client() as c:
        got = _post_like_openrlhf(c, {"query": queries, "prompts": prompts, "labels": [None] * len(queries)})
        assert np.abs(np.array(got) - want).max() <= TOL
        # the prompts let the server apply the length correction to the response's characters
        terms = np.array([BETA * np.log1p(len(it.response)) for it in items])
        assert np.abs(np.array(got) - (want_raw - terms)).max() <= TOL
        assert _post_like_openrlhf(c, {"query": queries, "prompts": prompts}, "scores") == got
        # older OpenRLHF (remote_rm_fn(api_url, queries)) sends the query alone: the raw output
        old = _post_like_openrlhf(c, {"query": queries})
        assert np.abs(np.array(old) - want_raw).max() <= TOL


def test_openrlhf_client_on_the_default_cross_encoder(tmp_path):
    """The built-in default (MiniLM cross-encoder, ONNX int8, length-controlled): the query is
    split on its prompt, and the rewards equal `arbiter score` of (prompt, response) rows."""
    items = [Item.of(it.conversation[-1].content, it.response) for it in _rows(16)]
    want = _cli_scores("default", items, tmp_path)
    prompts = [it.conversation[0].content for it in items]
    queries = [p + it.response for p, it in zip(prompts, items, strict=True)]
    with start_server(["--model", "default"]) as server, server.client() as c:
        got = _post_like_openrlhf(c, {"query": queries, "prompts": prompts, "labels": ["x"] * len(items)})
        assert np.abs(np.array(got) - np.array(want)).max() <= 1e-4  # static int8: the README's bound
        r = c.post("/get_reward", json={"query": queries[:2]})  # a cross-encoder needs the prompts
        assert r.status_code == 422 and r.json()["error_type"], r.text
        assert "prompts" in r.json()["error"]


def test_32_clients_x_20_requests_all_answered_equal_to_the_cli(decoder_onnx, tmp_path):
    sizes = [1 + (k % 3) for k in range(CLIENTS * REQUESTS)]  # 1-3 rows a request: batches mix
    items = _rows(sum(sizes))
    want = np.array(_cli_scores(decoder_onnx, items, tmp_path))
    with engine.load(decoder_onnx) as rm:
        texts = [rm.encoder.render(it) for it in items]
        prompts = [rm.encoder.render_prompt(it) for it in items]
    starts = np.cumsum([0, *sizes])
    requests = [(int(starts[k]), int(starts[k + 1])) for k in range(len(sizes))]
    answers: dict[int, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(c_id: int, server) -> None:
        with server.client() as c:
            for r in range(REQUESTS):
                k = c_id * REQUESTS + r
                lo, hi = requests[k]
                resp = c.post("/get_reward", json={"query": texts[lo:hi], "prompts": prompts[lo:hi],
                                                   "labels": [None] * (hi - lo)},
                              headers={"X-Request-Id": f"load-{k}"})
                with lock:
                    if resp.status_code != 200 or resp.headers.get("x-request-id") != f"load-{k}":
                        errors.append(f"request {k}: {resp.status_code} {resp.text[:200]}")
                    elif k in answers:
                        errors.append(f"request {k} answered twice")
                    else:
                        answers[k] = resp.json()["rewards"]

    with start_server(["--model", str(decoder_onnx), "--max-queue", str(4 * sum(sizes))]) as server:
        threads = [threading.Thread(target=client, args=(i, server)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with server.client() as c:
            metrics = c.get("/metrics").text
    assert not errors, errors[:5]
    assert sorted(answers) == list(range(len(requests)))  # every request, once
    got = np.full(len(items), np.nan)
    for k, (lo, hi) in enumerate(requests):
        assert len(answers[k]) == hi - lo, k
        got[lo:hi] = answers[k]
    assert np.abs(got - want).max() <= TOL
    # a swapped answer would show: no two rows score within the tolerance of each other
    gaps = np.diff(np.sort(want))
    assert (gaps > 2 * TOL).mean() >= 0.99
    # the server counted exactly this load, and merged rows from concurrent requests
    assert _metric(metrics, "arbiter_requests_total", 'endpoint="/get_reward"', 'status="200"') == len(requests)
    assert _metric(metrics, "arbiter_items_scored_total") == len(items)
    assert _metric(metrics, "arbiter_batch_items_count") < len(requests)


def _metric(text: str, name: str, *labels: str) -> float:
    """One sample of a Prometheus text exposition: the line of ``name`` carrying every label."""
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(name + "{") or line.startswith(name + " ")
             if all(lab in line for lab in labels)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_sigterm_during_load_completes_in_flight_requests(decoder_onnx):
    """Clients keep sending while the server gets SIGTERM: a request sent well before the signal
    (0.2 s: the event loop has read it) is answered in full; one sent later is answered or
    refused at the connection, never a 5xx or a cut body; the server exits 143.

    The signal goes out only while some request has been outstanding for 0.3 s, so the test
    always has an in-flight request to check, however fast the machine: seven clients send
    64 rows each (about 0.1 s a request here), an eighth sends 2048 (a second or more)."""
    items = _rows(LONG_ROWS)
    with engine.load(decoder_onnx) as rm:
        texts = [rm.encoder.render(it) for it in items]
        prompts = [rm.encoder.render_prompt(it) for it in items]
        want = np.array([s.value for s in rm.score_texts(texts, prompts)])
    import httpx

    log: list[tuple[float, float, str]] = []  # (sent, ended, outcome)
    outstanding: dict[int, float] = {}  # client -> when its current request was sent
    lock = threading.Lock()
    stop = threading.Event()
    bad: list[str] = []

    def client(server, k: int, rows: int) -> None:
        with server.client() as c:
            while not stop.is_set():
                sent = time.monotonic()
                with lock:
                    outstanding[k] = sent
                try:
                    resp = c.post("/get_reward", json={"query": texts[:rows], "prompts": prompts[:rows]})
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                    outcome = f"closed: {type(e).__name__}"
                else:
                    if resp.status_code != 200:
                        outcome = f"status {resp.status_code}"
                        bad.append(f"{resp.status_code}: {resp.text[:200]}")
                    elif np.abs(np.array(resp.json()["rewards"]) - want[:rows]).max() > TOL:
                        outcome = "wrong"
                        bad.append("wrong scores")
                    else:
                        outcome = "ok"
                with lock:
                    del outstanding[k]
                    log.append((sent, time.monotonic(), outcome))
                if outcome.startswith("closed"):
                    return

    def oldest_age() -> float:
        with lock:
            return time.monotonic() - min(outstanding.values(), default=time.monotonic())

    server = start_server(["--model", str(decoder_onnx), "--max-queue", "100000",
                           "--max-items-per-request", str(LONG_ROWS)])
    threads = [threading.Thread(target=client, args=(server, k, LONG_ROWS if k == 0 else 64))
               for k in range(8)]
    for t in threads:
        t.start()
    while sum(o == "ok" for _, _, o in list(log)) < 16 or oldest_age() < 0.3:  # the load is on
        time.sleep(0.01)
        assert server.proc.poll() is None, server.stderr()
    term = time.monotonic()
    server.signal()
    code = server.stop()  # waits for the exit (SIGKILL and a failure only on a hang)
    stop.set()
    for t in threads:
        t.join()
    assert code == 143, server.stderr()
    assert not bad, bad[:5]
    in_flight = [o for s, e, o in log if s < term - 0.2 and e > term]
    assert in_flight and all(o == "ok" for o in in_flight), [(s - term, e - term, o) for s, e, o in log]
    assert all(o == "ok" for s, _, o in log if s < term - 0.2)
    assert any(o.startswith("closed") for _, _, o in log)  # new requests were refused
    assert "Traceback" not in server.stderr()
