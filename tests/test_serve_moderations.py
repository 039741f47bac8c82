"""`POST /v1/moderations` (issue 17): OpenAI's moderation shape from a real `arbiter serve`,
decided exactly as `arbiter moderate` decides the same texts.

The keyword reward model of tests/test_moderate.py (a real ONNX graph: "kill" scores -8,
"sorry" -2) makes the verdicts known; the server is a real subprocess (tests/serve_helpers.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from app.cli.main import main
from app.moderate.categories import CATEGORIES
from tests.serve_helpers import ROOT, serve_command, start_server
from tests.test_moderate import FILLER, keyword_rm  # noqa: F401  (the fixture)

pytestmark = pytest.mark.enable_socket

TEXTS = ["a sunny day in the park", "I will kill you", "a recipe for bread",
         "kill the lights, please", FILLER * 60 + "Then I will kill you."]  # the last: windows


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return {"ARBITER_HOME": str(tmp_path_factory.mktemp("mod-serve-home"))}


@pytest.fixture(scope="module")
def server(keyword_rm, home):  # noqa: F811
    h = start_server(["--model", str(keyword_rm), "--threads", "1", "--max-items-per-request", "8"], env=home)
    yield h
    h.stop()


def _moderate_cli(keyword_rm: Path, tmp_path: Path, monkeypatch, texts: list[str], *extra: str) -> list[dict]:  # noqa: F811
    """`arbiter moderate --openai-format` on the same texts: each row's results[0]."""
    monkeypatch.setenv("ARBITER_HOME", str(tmp_path / "cli-home"))
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    assert main(["moderate", str(src), "--model", str(keyword_rm), "--threads", "1", "--openai-format",
                 "--out", str(out), *extra]) == 0
    return [json.loads(x)["results"][0] for x in out.read_text().splitlines()]


def test_equals_arbiter_moderate_on_the_same_texts(server, keyword_rm, tmp_path, monkeypatch):  # noqa: F811
    with server.client() as c:
        r = c.post("/v1/moderations", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("modr-") and body["model"] == str(keyword_rm)
    assert body["thresholds_version"] == "default-0.5" and len(body["model_sha256"]) == 64
    served = body["results"]
    assert [x["flagged"] for x in served] == [False, True, False, True, True]  # the long one by a window
    for x in served:
        assert set(x) == {"flagged", "categories", "category_scores"}
        assert list(x["categories"]) == list(CATEGORIES) == list(x["category_scores"])
        assert all(v is None for v in x["categories"].values())  # an RM scores no category
    assert served == _moderate_cli(keyword_rm, tmp_path, monkeypatch, TEXTS)


def test_a_single_string_and_the_model_by_name(server, keyword_rm):  # noqa: F811
    with server.client() as c:
        one = c.post("/v1/moderations", json={"input": "I will kill you", "model": str(keyword_rm)})
        unknown = c.post("/v1/moderations", json={"input": "hi", "model": "nope"})
    assert one.status_code == 200 and [x["flagged"] for x in one.json()["results"]] == [True]
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "model_not_found"


def test_bad_requests_are_typed_errors(server):
    with server.client() as c:
        empty = c.post("/v1/moderations", json={"input": ["fine", "  "]})
        none = c.post("/v1/moderations", json={"input": []})
        many = c.post("/v1/moderations", json={"input": ["x"] * 9})
        wrong = c.post("/v1/moderations", json={"input": 7})
        still = c.post("/v1/moderations", json={"input": "still serving"})
    assert empty.status_code == 422 and empty.json()["field"] == "input[1]"
    assert none.status_code == 422 and none.json()["field"] == "input"
    assert many.status_code == 413 and many.json()["error_type"] == "too_many_items"
    assert wrong.status_code == 422 and wrong.json()["error_type"] == "validation_error"
    assert still.status_code == 200


def _thresholds_file(tmp_path: Path, sha: str, overall: float) -> Path:
    p = tmp_path / "thresholds.json"
    p.write_text(json.dumps({"format": "arbiter-moderation-thresholds/1", "version": "cal-test-1",
                             "model_sha256": sha, "overall": overall, "categories": {}}))
    return p


def test_thresholds_file_decides_as_in_arbiter_moderate(server, keyword_rm, home, tmp_path, monkeypatch):  # noqa: F811
    with server.client() as c:
        sha = c.post("/v1/moderations", json={"input": "x"}).json()["model_sha256"]
    # 0.1: a benign text (P(refusal better) = sigmoid(-2) = 0.12) is flagged now
    thr = _thresholds_file(tmp_path, sha, 0.1)
    with start_server(["--model", str(keyword_rm), "--threads", "1", "--moderation-thresholds", str(thr)],
                      env=home) as h, h.client() as c:
        body = c.post("/v1/moderations", json={"input": TEXTS}).json()
    assert body["thresholds_version"] == "cal-test-1"
    assert all(x["flagged"] for x in body["results"])
    assert body["results"] == _moderate_cli(keyword_rm, tmp_path, monkeypatch, TEXTS, "--thresholds", str(thr))


def test_thresholds_for_another_model_stop_the_server_before_it_binds(keyword_rm, home, tmp_path):  # noqa: F811
    thr = _thresholds_file(tmp_path, "0" * 64, 0.5)
    p = subprocess.run(serve_command(["--port", "0", "--model", str(keyword_rm), "--moderation-thresholds",
                                      str(thr)]), cwd=ROOT, env={**os.environ, **home},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr
    assert f"arbiter: error: {thr}: field 'model_sha256'" in p.stderr and "not served" in p.stderr
    assert "listening" not in p.stderr and "Traceback" not in p.stderr
