"""`arbiter export --edge` and its Python runner, run in a fresh venv with only the runner's packages.

Real parts: the built-in default's int8 file, tiny random Qwen3 / Llama decoders and MiniLM
exported by the real exporter, the runner in a subprocess of a bare venv, and the engine
scoring the same rows from the same files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import engine
from engine.files import sha256_file
from engine.int8_weights import rewrite_file
from exports.edge import MODEL_FILES, TOLERANCE, golden_items, write_manifest
from tests import edge_helpers
from tests.edge_helpers import copy_edge, engine_folders

# the session fixtures (tests/test_edge_node.py uses the same folders)
runner_python = edge_helpers.runner_python
edge_default_dir = edge_helpers.edge_default_dir
edge_qwen3_dir = edge_helpers.edge_qwen3_dir
edge_minilm_dir = edge_helpers.edge_minilm_dir

pytestmark = pytest.mark.slow

#: rows that are not in golden.jsonl: every row form, non-ASCII, and conversations long enough to be cut
LEDGER = " ".join(f"Entry {i}: {i * 13} crates of apples shipped to Köln on day {i}." for i in range(80))
EXTRA_ROWS = [
    {"prompt": "Name a prime number.", "response": "7"},
    {"prompt": "Name a prime number.", "response": "Nine is prime."},
    {"prompt": "Translate 'cat' into Japanese.", "system": "Answer with one word.", "response": "猫"},
    {"conversation": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "Tell me a fact about owls 🦉."}],
     "response": "Owls can turn their heads about 270 degrees."},
    {"prompt": f"Total the crates.\n\n{LEDGER}", "response": "About 41,000 crates."},
    {"conversation": [{"role": "system", "content": LEDGER}, {"role": "user", "content": "Where to?"}],
     "response": "   Köln, every day.\n\n"},
    {"prompt": "Say nothing.", "response": ""},
    # raw U+2028 / U+0085 inside JSON strings: a line ends only at \n (str.splitlines splits there)
    {"prompt": "one\u2028two", "response": "three\u0085four"},
]


def run(python: Path, edge: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(edge / "runner.py"), *args], capture_output=True, text=True,
                          cwd=cwd)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def engine_scores(folder: Path, rows: list[dict]) -> list[float]:
    from engine.jsonl import item_from_row

    with engine.load(folder, format="onnx") as rm:
        return [s.value for s in rm.score([item_from_row(r) for r in rows])]


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, done.stderr
    assert err.startswith("runner: error: "), err
    for f in fragments:
        assert f in err, (f, err)


# -- the folders --------------------------------------------------------------------------------
def test_default_edge_folder_is_int8_only_and_says_why(edge_default_dir, tmp_path):
    edge = edge_default_dir
    meta = json.loads((edge / "arbiter.json").read_text())
    assert meta["files"] == {"fp32": None, "int8": "onnx/model_int8.onnx"}
    assert "make default-model" in meta["fp32_absent_reason"]
    assert not (edge / "onnx" / "model.onnx").exists()  # never an fp32 that is not the trained weights
    builtin = engine_folders(edge)["int8"]
    # the built-in file with its int8 weights stored as uint8 (plain onnxruntime on any CPU)
    same = Path(shutil.copy2(builtin / "model.onnx", tmp_path / "model.onnx"))
    assert rewrite_file(same) > 0 and meta["int8_weights"].startswith("uint8")
    assert sha256_file(edge / "onnx/model_int8.onnx") == sha256_file(same)
    assert meta["encoding"] == "pair" and meta["token_types"] == "zeros"
    assert meta["length_correction"] == pytest.approx(0.13357765972614288)
    card = (edge / "MODEL_CARD.md").read_text()
    assert "## Edge" in card and "runner.py --check" in card and "No fp32 file" in card


@pytest.mark.parametrize("name", ["default", "qwen3", "minilm"])
def test_manifest_and_golden_cover_the_folder(name, request):
    edge = request.getfixturevalue(f"edge_{name}_dir")
    manifest = json.loads((edge / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(edge).as_posix() for p in edge.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest) == on_disk
    for rel, entry in manifest.items():
        assert entry == {"sha256": sha256_file(edge / rel), "size": (edge / rel).stat().st_size}
    golden = [json.loads(line) for line in (edge / "golden.jsonl").read_text().splitlines()]
    assert len(golden) >= 40 and len(golden) == len(golden_items())
    shipped = {k for k, f in json.loads((edge / "arbiter.json").read_text())["files"].items() if f}
    for kind, folder in engine_folders(edge).items():  # golden = the engine's final scores per file
        assert [r["scores"][kind] for r in golden] == engine_scores(folder, golden)
        assert sha256_file(edge / MODEL_FILES[kind]) == manifest[MODEL_FILES[kind]]["sha256"]
    assert shipped == set(engine_folders(edge))
    assert not list(edge.rglob("*with_past*"))  # the sequence-classification graph only


def test_decoder_edge_folder_has_the_chat_rules(edge_qwen3_dir):
    meta = json.loads((edge_qwen3_dir / "arbiter.json").read_text())
    assert meta["files"] == MODEL_FILES and meta["encoding"] == "chat"
    assert meta["chat_template"] and "<|im_start|>" in meta["chat_template"]
    assert meta["inputs"] == ["input_ids", "attention_mask"] and meta["padding_side"] == "right"
    golden = [json.loads(line) for line in (edge_qwen3_dir / "golden.jsonl").read_text().splitlines()]
    assert max(r["n_tokens"] for r in golden) == meta["max_length"]  # a row was cut to fit


# -- the runner, in a venv that has only its packages ---------------------------------------------
@pytest.mark.parametrize("name", ["default", "qwen3", "minilm"])
def test_runner_check_passes_in_a_bare_venv(name, request, runner_python):
    edge = request.getfixturevalue(f"edge_{name}_dir")
    done = run(runner_python, edge, "--check", cwd=edge.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    files = [f for f in json.loads((edge / "arbiter.json").read_text())["files"].values() if f]
    for f in files:
        assert f"{f}: {len(golden_items())} rows" in done.stdout and "ok" in done.stdout
    assert "FAIL" not in done.stdout


@pytest.mark.parametrize(("name", "kind"), [("default", "int8"), ("qwen3", "fp32"), ("qwen3", "int8"),
                                            ("minilm", "fp32"), ("minilm", "int8")])
def test_runner_scores_equal_the_engine(name, kind, request, runner_python, tmp_path):
    edge = request.getfixturevalue(f"edge_{name}_dir")
    rows = write_rows(tmp_path / "in.jsonl", EXTRA_ROWS)
    done = run(runner_python, edge, str(rows), "-o", str(tmp_path / "out.jsonl"), "--model", kind)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().split("\n") if line]
    assert [{k: v for k, v in r.items() if k != "score"} for r in out] == EXTRA_ROWS  # rows come back whole
    want = engine_scores(engine_folders(edge)[kind], EXTRA_ROWS)
    diffs = [abs(r["score"] - w) for r, w in zip(out, want, strict=True)]
    assert max(diffs) <= TOLERANCE[kind], diffs


def test_runner_default_model_is_int8_and_stdout(edge_qwen3_dir, runner_python, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", EXTRA_ROWS[:2])
    done = run(runner_python, edge_qwen3_dir, str(rows))
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["score"] for line in done.stdout.splitlines()]
    want = engine_scores(engine_folders(edge_qwen3_dir)["int8"], EXTRA_ROWS[:2])
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= TOLERANCE["int8"]


# -- what goes wrong, said in one line ------------------------------------------------------------
@pytest.mark.parametrize("victim", ["onnx/model_int8.onnx", "tokenizer.json", "golden.jsonl"])
def test_manifest_catches_a_flipped_byte(victim, edge_default_dir, runner_python, tmp_path):
    edge = copy_edge(edge_default_dir, tmp_path / "edge")
    data = bytearray((edge / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (edge / victim).write_bytes(bytes(data))
    assert_one_line_error(run(runner_python, edge, "--check"), f"manifest mismatch: {victim}")
    if victim != "golden.jsonl":  # a scoring run checks the files it reads, so no silent wrong score
        rows = write_rows(tmp_path / "in.jsonl", EXTRA_ROWS[:1])
        assert_one_line_error(run(runner_python, edge, str(rows)), f"manifest mismatch: {victim}")


def test_check_fails_on_a_score_off_by_more_than_the_tolerance(edge_default_dir, runner_python, tmp_path):
    edge = copy_edge(edge_default_dir, tmp_path / "edge")
    lines = (edge / "golden.jsonl").read_text().splitlines()
    row = json.loads(lines[4])
    row["scores"]["int8"] += 2 * TOLERANCE["int8"]
    lines[4] = json.dumps(row, ensure_ascii=False)
    (edge / "golden.jsonl").write_text("\n".join(lines) + "\n")
    write_manifest(edge)  # a consistent folder whose golden score is wrong
    done = run(runner_python, edge, "--check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "golden.jsonl:5:" in done.stderr and "FAIL (1 rows)" in done.stdout


@pytest.mark.parametrize("name", ["default", "qwen3"])
def test_too_long_response_is_refused_with_the_engines_rule(name, request, runner_python, tmp_path):
    edge = request.getfixturevalue(f"edge_{name}_dir")
    long_row = {"prompt": "Write a long story.", "response": "once upon a time " * 300}
    rows = write_rows(tmp_path / "in.jsonl", [EXTRA_ROWS[0], long_row])
    done = run(runner_python, edge, str(rows), "-o", str(tmp_path / "out.jsonl"))
    from engine.jsonl import item_from_row

    with engine.load(engine_folders(edge)["int8"], format="onnx") as rm, \
            pytest.raises(engine.InputTooLongError) as refused:
        rm.encode(item_from_row(long_row))
    assert_one_line_error(done, f"{rows}:2: {refused.value}")
    assert not (tmp_path / "out.jsonl").exists()  # nothing is written unless every row is scored


@pytest.mark.parametrize(("line", "fragments"), [
    ('{"prompt": "hi"', ["in.jsonl:2: not valid JSON"]),
    ('{"prompt": "hi"}', ["in.jsonl:2: field 'response': missing"]),
    ('{"prompt": "hi", "response": 3}', ["in.jsonl:2: field 'response': must be a string"]),
    ('{"conversation": [{"role": "bot", "content": "x"}], "response": "y"}',
     ["in.jsonl:2: field 'conversation[0].role'"]),
    ('{"conversation": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], '
     '"response": "z"}', ["in.jsonl:2: field 'conversation[1].role'", "assistant turn"]),
    ('[1, 2]', ["in.jsonl:2: expected a JSON object"]),
    ('{"prompt": "hi", "response": "a\\ud800b"}', ["in.jsonl:2: field 'response': not valid Unicode"]),
])
def test_bad_row_names_file_line_and_field(line, fragments, edge_default_dir, runner_python, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", [EXTRA_ROWS[0], line])
    done = run(runner_python, edge_default_dir, str(rows), "-o", str(tmp_path / "out.jsonl"))
    assert_one_line_error(done, *fragments)
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_files_are_named(edge_default_dir, runner_python, tmp_path):
    assert_one_line_error(run(runner_python, edge_default_dir, str(tmp_path / "nope.jsonl")),
                          "nope.jsonl: missing file")
    edge = copy_edge(edge_default_dir, tmp_path / "edge")
    (edge / "tokenizer.json").unlink()
    rows = write_rows(tmp_path / "in.jsonl", EXTRA_ROWS[:1])
    assert_one_line_error(run(runner_python, edge, str(rows)), "tokenizer.json: missing file")
    assert_one_line_error(run(runner_python, edge, "--check"), "tokenizer.json: missing file")
    assert_one_line_error(run(runner_python, edge, str(rows), "--model", "fp32"),
                          "no fp32 model", "make default-model")
    assert_one_line_error(run(runner_python, edge_default_dir, str(rows), "-o", str(tmp_path / "no" / "o.jsonl")),
                          "o.jsonl: cannot write")


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_edge_from_an_fp32_onnx_folder_adds_int8(hf_models, runner_python, tmp_path, capsys):
    from app.cli.main import main
    from exports.onnx import export_onnx

    onnx_dir = export_onnx(hf_models["llama"], tmp_path / "llama-onnx", prefix=False)
    assert main(["export", str(onnx_dir), str(tmp_path / "plain"), "--edge", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == {"fp32": "onnx/model.onnx", "int8": None}
    assert main(["export", str(onnx_dir), str(tmp_path / "edge"), "--edge", "--quant", "int8"]) == 0
    edge = tmp_path / "edge"
    assert sha256_file(edge / "onnx/model.onnx") == sha256_file(onnx_dir / "model.onnx")
    assert (edge / "onnx/model_int8.onnx").is_file()
    done = run(runner_python, edge, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "onnx/model_int8.onnx: " in done.stdout and "onnx/model.onnx: " in done.stdout


def test_cli_edge_int8_takes_the_calibration_settings(hf_models, runner_python, tmp_path, capsys):
    import onnx

    from app.cli.main import main

    edge = tmp_path / "edge"
    assert main(["export", str(hf_models["minilm"]), str(edge), "--edge", "--int8-smooth", "0.5",
                 "--int8-float", "/intermediate/dense/"]) == 0
    graph = onnx.load(str(edge / "onnx/model_int8.onnx")).graph
    assert sum(n.name.startswith("/smooth") for n in graph.node) == 6 * 3  # ffn-in float: not smoothed
    done = run(runner_python, edge, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    capsys.readouterr()
    assert main(["export", "default", str(tmp_path / "d"), "--edge", "--int8-smooth", "0.5"]) == 2
    assert "ships its int8 file as built" in capsys.readouterr().err
    assert main(["export", str(hf_models["minilm"]), str(tmp_path / "f"), "--edge", "--quant", "fp32",
                 "--int8-smooth", "0.5"]) == 2
    assert "add --quant int8" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "f").exists()


def test_cli_refuses_what_it_cannot_ship(tmp_path, capsys):
    from app.cli.main import main

    assert main(["export", "default", str(tmp_path / "a"), "--edge", "--quant", "fp32"]) == 2
    assert "make default-model" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", "default", str(tmp_path / "full"), "--edge"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "default", str(tmp_path / "b")]) == 2  # neither --format nor --edge
    assert "--format" in capsys.readouterr().err


def test_a_failed_export_leaves_no_folder_behind(hf_models, tmp_path):
    """The edge folder is built beside OUT under a hidden temp name and renamed at the end; a
    build that fails after copying the model (here: the golden rows cannot be scored, the
    tokenizer is garbage) leaves neither OUT nor the temp folder."""
    import shutil

    from exports.edge import export_edge
    from exports.onnx import export_onnx

    src = export_onnx(hf_models["minilm"], tmp_path / "src", prefix=False)
    (src / "tokenizer.json").write_text("{not json", encoding="utf-8")
    out = tmp_path / "parent" / "edge"
    with pytest.raises(engine.ModelError):
        export_edge(src, out)
    assert not out.exists() and list(out.parent.iterdir()) == []
    shutil.rmtree(src)
