"""`arbiter moderate` rows/s against plain `arbiter score` of the same texts, peak RSS, windows.

Everything runs as real CLI subprocesses with the same model and threads (``--model``, the
built-in default unless told), each job in a fresh ``ARBITER_HOME`` (so no run resumes
another). Three measurements:

1. **Throughput.** ``--rows`` real texts that fit the model (openai-moderation prompts from
   ../shared/data, cut to those under ``FIT_CHARS``; generated sentences where absent):
   ``arbiter score`` of {prompt: the neutral prompt, response: text} against ``arbiter
   moderate`` of {text}. Each round runs, in turn, both commands on 1 row and on all rows
   (interleaved, so load from other processes hits both alike); rows/s is ``(rows - 1) /
   (t_all - t_1)`` with each time the best of ``--repeat`` rounds: the model load and
   interpreter start are taken out.
   Moderation scores one reference refusal per distinct context (one here) on top, commits
   every 64 rows with their audit rows, then writes the output. Goal (issue 17): >= 0.9x.
2. **Peak RSS** (the child's ``ru_maxrss`` from ``wait4``) of ``arbiter moderate`` over
   10k and 100k synthetic short rows (HateCheck cases cycled, each with its row number, so
   no two are alike; generated where absent). Memory must be flat: the job holds one batch,
   the store is SQLite on disk, the output is streamed from it. 1M rows only with
   ``--million``: at the default RM's ~440 short rows/s on a quiet 2-core CPU that is about
   40 minutes. ``--rss-model light`` runs these on a *light* reward model instead (the
   default's tokenizer and a one-node ONNX graph, built in the temp folder): everything the
   job holds but the model's own weights, at several times the rows/s, which is what makes
   1M rows affordable on a shared machine; the default model adds its fixed size on top.
3. **Windows.** ``arbiter moderate`` of ``--rows`` long texts (openai-moderation prompts
   joined to ``LONG_CHARS`` characters: several windows each) against the same count of the
   fitting texts, interleaved, best of ``--repeat``: rows/s of each and the windows per row.

Run: ``.venv/bin/python bench/moderate.py [--model default] [--rows 256] [--repeat 3]
[--threads 2] [--rss-rows 10000,100000] [--million] [--rss-model light]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.moderate.scoring import NEUTRAL_PROMPT  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FIT_CHARS = 1200  # texts this short fit the default RM's 512 tokens beside the prompt
LONG_CHARS = 6000  # about 1,500 tokens: 4 windows of the default RM
ARBITER = [sys.executable, "-c", "import sys; from app.cli.main import main; sys.exit(main())"]


def real_texts() -> list[str]:
    """openai-moderation prompts (real), or generated sentences where ../shared is absent."""
    path = DATA / "openai-moderation" / "samples-1680.jsonl.gz"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line)["prompt"] for line in f]
    return [f"Sentence {i} about the weather, the town library and the annual budget." for i in range(1680)]


def short_texts() -> list[str]:
    """HateCheck test cases (a few words each), or generated ones."""
    import csv

    path = DATA / "hatecheck" / "test_suite_cases.csv"
    if path.exists():
        with path.open(encoding="utf-8", newline="") as f:
            return [r["test_case"] for r in csv.DictReader(f)]
    return [f"A short post number {i}." for i in range(3728)]


def fitting(n: int) -> list[str]:
    texts = [t for t in real_texts() if t.strip() and len(t) <= FIT_CHARS]
    return [texts[i % len(texts)] for i in range(n)]


def long_texts(n: int) -> list[str]:
    pool, out, i = real_texts(), [], 0
    while len(out) < n:
        parts: list[str] = []
        while sum(map(len, parts)) < LONG_CHARS:
            parts.append(pool[i % len(pool)])
            i += 1
        out.append("\n\n".join(parts))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def run(argv: list[str], home: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one CLI subprocess; raises on a non-zero exit."""
    env = {**os.environ, "ARBITER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    # stderr to a file, not an unread pipe: a child that logs more than 64 KiB would block on it
    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen([*ARBITER, *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err_file)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
            raise SystemExit(f"`arbiter {' '.join(argv)}` exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_maxrss  # KiB on Linux


class Work:
    """Temporary input files and one fresh home per job."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0

    def home(self) -> Path:
        self.n += 1
        return self.root / f"home{self.n}"

    def out(self, suffix: str = ".jsonl") -> Path:
        self.n += 1
        return self.root / f"out{self.n}{suffix}"


def model_args(a: argparse.Namespace, model: str | None = None) -> list[str]:
    return ["--model", model or a.model, "--threads", str(a.threads)]


def light_model(root: Path) -> Path:
    """A light reward model: the built-in default's tokenizer and config, and an ONNX graph
    whose reward is the token count / 100 (one ReduceSum of the attention mask). Real files
    the engine opens like any ONNX model; only the weights are missing, on purpose."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    import engine

    src = Path(engine.registry.default_model_path("onnx"))
    src = src if src.is_dir() else src.parent
    out = root / "light-rm"
    out.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    meta = json.loads((src / "arbiter.json").read_text())
    for k in ("kept_float", "activation_quant", "calibration_items", "length_correction", "source_sha256"):
        meta.pop(k, None)
    meta.update(dtype="fp32", source="bench/moderate.py light model")
    (out / "arbiter.json").write_text(json.dumps(meta))
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("ax", TensorProto.INT64, [1], [1])),
             helper.make_node("ReduceSum", ["mask_f", "axes"], ["tokens"], keepdims=1),
             helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("sc", TensorProto.FLOAT, [], [0.01])),
             helper.make_node("Mul", ["tokens", "scale"], ["logits"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "light_rm", ins,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


def write_synthetic(path: Path, n: int, pool: list[str]) -> Path:
    """``n`` rows of short text, streamed to disk (row i: a pool text and its number)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"{pool[i % len(pool)]} (#{i})"}, ensure_ascii=False) + "\n")
    return path


def best_rate(a: argparse.Namespace, w: Work, variants: dict[str, tuple[Callable[[Path], list[str]], Path, Path, int]]
              ) -> dict[str, float]:
    """rows/s per variant: (rows - 1) / (best t_all - best t_1), each time the best (least
    disturbed) of a.repeat interleaved rounds, so startup and load noise do not enter twice."""
    t1 = dict.fromkeys(variants, float("inf"))
    tn = dict.fromkeys(variants, float("inf"))
    for _ in range(a.repeat):
        for name, (argv, one, full, _n) in variants.items():
            t1[name] = min(t1[name], run(argv(one), w.home())[0])
            tn[name] = min(tn[name], run(argv(full), w.home())[0])
    return {name: (v[3] - 1) / max(tn[name] - t1[name], 1e-9) for name, v in variants.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--rows", type=int, default=256, help="rows for throughput and windows")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss-rows", default="10000,100000", help="comma-separated row counts for peak RSS")
    p.add_argument("--million", action="store_true",
                   help="add 1,000,000 rows to the RSS runs (about 40 minutes with the default model)")
    p.add_argument("--rss-model", default=None,
                   help="the model of the RSS runs: a model, or 'light' (built here; see the docstring); "
                        "default: --model")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,rss,windows")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="bench-moderate-") as tmp:
        w = Work(Path(tmp))
        texts = fitting(a.rows)
        mod_one = write_jsonl(w.root / "m1.jsonl", [{"text": texts[0]}])
        mod_all = write_jsonl(w.root / "m.jsonl", [{"text": t} for t in texts])

        def moderate(src: Path) -> list[str]:
            return ["moderate", str(src), "--out", str(w.out()), *model_args(a)]

        print(f"model {a.model}, threads {a.threads}, best of {a.repeat} interleaved rounds")
        if "throughput" not in skip:
            sc_one = write_jsonl(w.root / "s1.jsonl", [{"prompt": NEUTRAL_PROMPT, "response": texts[0]}])
            sc_all = write_jsonl(w.root / "s.jsonl", [{"prompt": NEUTRAL_PROMPT, "response": t} for t in texts])

            def score(src: Path) -> list[str]:
                return ["score", str(src), "-o", str(w.out()), *model_args(a)]

            r = best_rate(a, w, {"score": (score, sc_one, sc_all, a.rows),
                                 "moderate": (moderate, mod_one, mod_all, a.rows)})
            print(f"\nthroughput, {a.rows} real texts that fit (<= {FIT_CHARS} chars), load time taken out")
            print(f"  arbiter score     {r['score']:8.1f} rows/s")
            print(f"  arbiter moderate  {r['moderate']:8.1f} rows/s   ratio {r['moderate'] / r['score']:.2f}x (goal >= 0.9x)")
        if "windows" not in skip:
            longs = long_texts(a.rows)
            long_one = write_jsonl(w.root / "l1.jsonl", [{"text": longs[0]}])
            long_all = write_jsonl(w.root / "l.jsonl", [{"text": t} for t in longs])
            r = best_rate(a, w, {"fit": (moderate, mod_one, mod_all, a.rows),
                                 "long": (moderate, long_one, long_all, a.rows)})
            out = w.out()
            run(["moderate", str(long_all), "--out", str(out), *model_args(a)], w.home())
            wins = [json.loads(x)["windows"] for x in out.read_text().splitlines()]
            fit_chars = sum(map(len, texts)) / len(texts)
            long_chars = sum(map(len, longs)) / len(longs)
            print(f"\nwindows: {a.rows} texts that fit against {a.rows} of ~{LONG_CHARS} chars")
            print(f"  fitting texts     {r['fit']:8.1f} rows/s   1 window each   "
                  f"{r['fit'] * fit_chars:9,.0f} chars/s (mean {fit_chars:,.0f} chars)")
            print(f"  long texts        {r['long']:8.1f} rows/s   {sum(wins) / len(wins):.2f} windows per row "
                  f"(max {max(wins)})   {r['long'] * long_chars:9,.0f} chars/s (mean {long_chars:,.0f} chars)")
            print(f"  ratio long / fit: {r['long'] / r['fit']:.2f}x rows/s, "
                  f"{r['long'] * long_chars / (r['fit'] * fit_chars):.2f}x chars/s (the overlap and padding)")
        if "rss" not in skip:
            counts = [int(x) for x in a.rss_rows.split(",") if x] + ([1_000_000] if a.million else [])
            pool = short_texts()
            rss_model = str(light_model(w.root)) if a.rss_model == "light" else a.rss_model
            print(f"\npeak RSS of arbiter moderate (synthetic short rows; model "
                  f"{'light (built here)' if a.rss_model == 'light' else rss_model or a.model})", flush=True)
            for n in counts:
                src = write_synthetic(w.root / f"rss{n}.jsonl", n, pool)
                out = w.out()
                wall, kib = run(["moderate", str(src), "--out", str(out), *model_args(a, rss_model)], w.home())
                rows = sum(1 for _ in out.open("rb"))
                print(f"  {n:>9,} rows  peak RSS {kib / 1024:7.1f} MiB   {wall:7.1f} s  ({n / wall:,.0f} rows/s)"
                      f"   output rows {rows:,}", flush=True)
                src.unlink()
                out.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
