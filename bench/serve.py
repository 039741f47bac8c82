"""`arbiter serve` throughput and latency, against in-process ``Scorer.score`` of the same rows.

One model (``--model``, the built-in default unless told), one set of real preference pairs
(AlpacaEval GPT-4 test split from ../shared/data; generated text when it is absent). Each
round, in turn (so load from other processes hits every variant alike; best of ``--repeat``):

* in-process: ``Scorer.score`` of every row at once (the engine's batching, batch ``--batch-size``);
* the server (one ``arbiter serve`` subprocess, same threads and batch size) at 1, 8 and 32
  concurrent clients: threads with one httpx client each, sharing the pairs, one pair per
  request, so the server's dynamic batching is what gathers rows from concurrent requests.
  Two endpoints: ``POST /get_reward`` (OpenRLHF: the pair's two rendered texts and their
  prompts; texts from concurrent requests are merged into one engine call) and ``POST
  /v1/score`` (the prompt and the two responses; scored per request as a ranking).

Throughput is rows (responses) scored per second of wall time; the ratio is server / in-process
in the same round. Latency: one client, one pair per request, sequential (light load): p50 and
p99 over ``--latency-requests`` requests. Every server score is checked against in-process
(max |diff| printed). Goal (issue 19): >= 0.8x at 32 clients.

Run: ``.venv/bin/python bench/serve.py [--model default] [--pairs 128] [--repeat 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import load_pairs  # noqa: E402  (the same real pairs as the throughput bench)

_LISTENING = re.compile(r"arbiter serve: listening on (http://\S+)")
CLIENTS = (1, 8, 32)
ENDPOINTS = ("/get_reward", "/v1/score")


class Server:
    """A server in a subprocess on a free port (``arbiter serve`` unless ``cmd`` is given; it
    must print ``listening`` with its URL on stderr once bound); stopped with SIGTERM."""

    def __init__(self, args: list[str], *, cmd: list[str] | None = None,
                 listening: re.Pattern[str] = _LISTENING) -> None:
        cmd = cmd or [sys.executable, "-m", "app.cli.main", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # the announcement comes once the socket is bound
            self.lines.append(line)
            if m := listening.search(line):
                self.url = m.group(1)
                break
        else:
            raise SystemExit(f"{cmd[2:4]} did not start:\n{''.join(self.lines)}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pairs_of(items: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(prompt, response A, response B): load_pairs yields chosen and rejected one after the other."""
    return [(items[i][0], items[i][1], items[i + 1][1]) for i in range(0, len(items), 2)]


def request_body(endpoint: str, pair: tuple[str, str, str], rm) -> dict:
    """One pair as the endpoint takes it. /get_reward: a decoder's chat-template render (what a
    trainer's policy produced) or, for a cross-encoder, prompt + response split on ``prompts``."""
    prompt, a, b = pair
    if endpoint == "/v1/score":
        return {"prompt": prompt, "responses": [a, b]}
    from engine.types import Item

    items = [Item.of(prompt, r) for r in (a, b)]
    if rm.encoder.kind == "chat":
        return {"query": [rm.encoder.render(it) for it in items],
                "prompts": [rm.encoder.render_prompt(it) for it in items]}
    return {"query": [prompt + a, prompt + b], "prompts": [prompt, prompt]}


def read_scores(endpoint: str, body: dict) -> list[float]:
    return body["rewards"] if endpoint == "/get_reward" else [s["score"] for s in body["scores"]]


def run_clients(url: str, bodies: list[dict], clients: int, endpoint: str) -> tuple[float, list[float]]:
    """Seconds to send every request through ``clients`` concurrent clients; scores in order."""
    import httpx

    scores: list[list[float] | None] = [None] * len(bodies)
    next_pair = iter(range(len(bodies)))
    lock = threading.Lock()
    failed: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, trust_env=False, timeout=600) as c:
            while True:
                with lock:
                    k = next(next_pair, None)
                if k is None:
                    return
                r = c.post(endpoint, json=bodies[k])
                if r.status_code != 200:
                    failed.append(f"{r.status_code}: {r.text[:200]}")
                    return
                scores[k] = read_scores(endpoint, r.json())

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"server errors at {clients} clients: {failed[:3]}")
    return seconds, [v for s in scores for v in s]  # type: ignore[union-attr]


def latency(url: str, bodies: list[dict], n: int, endpoint: str) -> list[float]:
    """Milliseconds per request, one client, one pair at a time (the first few warm up, not kept)."""
    import httpx

    out = []
    with httpx.Client(base_url=url, trust_env=False, timeout=600) as c:
        for k in range(n + 5):
            t0 = time.perf_counter()
            r = c.post(endpoint, json=bodies[k % len(bodies)])
            ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            if k >= 5:
                out.append(ms)
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--latency-requests", type=int, default=200)
    args = ap.parse_args()

    import numpy as np

    import engine
    from engine.types import Item

    rm = engine.load(args.model, threads=args.threads, batch_size=args.batch_size)
    def fits(prompt: str, response: str) -> bool:  # whole, uncut: the same rows on every path
        try:
            return rm.encode(Item.of(prompt, response)).cut_tokens == 0
        except engine.InputTooLongError:
            return False

    items, source = load_pairs(args.pairs, fits)
    pairs = pairs_of(items)
    rows = [Item.of(p, r) for p, a, b in pairs for r in (a, b)]
    print(f"model {args.model}: {rm.info.format} {rm.info.dtype} {rm.info.architecture}; "
          f"{len(pairs)} pairs = {len(rows)} rows from {source}; threads {args.threads}, "
          f"batch {args.batch_size}")
    server = Server(["--model", args.model, "--threads", str(args.threads),
                     "--batch-size", str(args.batch_size)])
    try:
        want = np.array([s.value for s in rm.score(rows)])  # warm-up, and the reference scores
        bodies = {ep: [request_body(ep, p, rm) for p in pairs] for ep in ENDPOINTS}
        for ep in ENDPOINTS:
            run_clients(server.url, bodies[ep][:8], 8, ep)  # warm-up
        best: dict[str, float] = {}
        diff = 0.0
        for rnd in range(args.repeat):
            t0 = time.perf_counter()
            rm.score(rows)
            t = {"in-process": time.perf_counter() - t0}
            for c in CLIENTS:  # the endpoints take turns at each client count
                for ep in ENDPOINTS:
                    t[f"{ep} {c}"], got = run_clients(server.url, bodies[ep], c, ep)
                    diff = max(diff, float(np.abs(np.array(got) - want).max()))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {len(rows) / v:.1f}" for k, v in t.items())
                  + " rows/s", flush=True)
            for k, v in t.items():
                best[k] = min(best.get(k, v), v)
        ms = {ep: latency(server.url, bodies[ep], args.latency_requests, ep) for ep in ENDPOINTS}
    finally:
        server.stop()
        rm.close()

    base = len(rows) / best["in-process"]
    print(f"\nbest of {args.repeat} (max |server - in-process| = {diff:.1e})\n")
    print("| variant | rows/s | vs in-process |\n|---|---|---|")
    print(f"| in-process `Scorer.score` (batch {args.batch_size}) | {base:.1f} | 1.00x |")
    for ep in ENDPOINTS:
        for c in CLIENTS:
            r = len(rows) / best[f"{ep} {c}"]
            print(f"| `{ep}`, {c} client{'s' if c > 1 else ''}, one pair per request | {r:.1f} | "
                  f"{r / base:.2f}x |")
    for ep in ENDPOINTS:
        print(f"\nlatency of one pair via {ep}, one client ({len(ms[ep])} requests): "
              f"p50 {percentile(ms[ep], 50):.1f} ms, p99 {percentile(ms[ep], 99):.1f} ms")


if __name__ == "__main__":
    main()
