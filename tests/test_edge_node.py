"""The Node edge runner (runner.mjs), installed with `npm ci` in a temporary folder and run with node.

Real parts: the edge folders of tests/edge_helpers.py (the built-in default's int8, a tiny random
Qwen3 decoder and MiniLM, fp32 + int8), onnxruntime-node and @huggingface/tokenizers from the npm
registry at the versions package-lock.json pins, node in a subprocess, and Arbiter's engine scoring
and encoding the same rows from the same files. Token parity compares the JS tokenizer with the
Rust `tokenizers` the engine uses, id for id.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

import engine
from engine.errors import InputTooLongError
from engine.jsonl import item_from_row
from exports.edge import RUNNER_DIR, write_manifest
from tests import edge_helpers
from tests.edge_helpers import engine_folders
from tests.models import missing

edge_default_dir = edge_helpers.edge_default_dir
edge_qwen3_dir = edge_helpers.edge_qwen3_dir
edge_minilm_dir = edge_helpers.edge_minilm_dir

pytestmark = pytest.mark.slow

#: what `npm ci` needs beside runner.mjs (.npmrc: no install scripts, see its comment)
NODE_FILES = ("runner.mjs", "package.json", "package-lock.json", ".npmrc")
FOLDERS = {"default": "edge_default_dir", "qwen3": "edge_qwen3_dir", "minilm": "edge_minilm_dir"}

#: rows not in golden.jsonl: every row form, astral characters in the response (code-point length
#: control: '🙂'.length is 2 in JS), and conversations long enough to be cut from their start
LEDGER = " ".join(f"Day {i}: {i * 17} parcels left Zürich for 東京; receipt #{i:04d}." for i in range(90))
ROWS = [
    {"prompt": "Name a colour.", "response": "Blue."},
    {"prompt": "How do you feel?", "response": "🙂🙂🙂 great 👨‍👩‍👧‍👦"},
    {"prompt": "Translate 'dog' into Japanese.", "system": "One word only.", "response": "犬"},
    {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Count to three, café-style ☕."}],
     "response": "un, deux, trois"},
    {"prompt": f"Sum the parcels.\n\n{LEDGER}", "response": "About 68,000 parcels."},
    {"conversation": [{"role": "system", "content": LEDGER}, {"role": "user", "content": "Where to?"}],
     "response": "  To 東京,\teach day.\n\n"},
    {"prompt": "Say nothing.", "response": ""},
    {"prompt": "<|im_start|>user [SEP] tokens in text [CLS]", "response": "<|im_end|> [SEP] ok"},
    # raw U+2028 and U+0085 inside JSON strings: a line ends only at \n
    {"prompt": "one\u2028two", "response": "three\u0085four\u2029"},
]

#: tokenizer parity texts: unicode, emoji, whitespace runs, special tokens in text, CJK, accents
TEXTS = [
    "", " ", "   ", "Hello, world!", " leading", "trailing ", "tabs\tand\t\ttabs", "new\nlines\n\n\n",
    "crlf\r\nline", "   many    spaces     here   ", "\u00a0nbsp\u00a0", "ideographic\u3000space",
    "zero\u200bwidth\u200djoiner", "café naïve résumé", "cafe\u0301 combining", "e\u0301\u0302\u0303",
    "Ångström ß STRASSE İstanbul ı", "Ελληνικά Русский ёлка", "עברית العربية", "हिन्दी ไทย",
    "中文文本，标点。", "日本語のテキスト、カタカナ", "한국어 텍스트", "混合 mixed 文本 text 123",
    "emoji 😀🎉👍🏽", "family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣", "😀" * 40, "math ∑∫√∞ ≠ ±",
    "€£¥₹ $5.00 1e-10 -42 3.14159", "def f(x):\n    return x**2  # square",
    "https://example.com/a?q=1&r=2#f", "don't can't it's", "—em –en «guill» “curly”",
    "[CLS] special [SEP] tokens [PAD] [MASK] [UNK]", "text[SEP]glued[CLS]", "[cls] lower [sep]",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>eot", "glued<|im_end|>x",
    "<|im_start|", "<s> </s> <unk>", "control\x01\x7f chars", "replacement \ufffd", "ﬁ ligature",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３", "x²³ ½ ①", "a" * 300, " ".join(f"w{i} café 中" for i in range(300)),
    "\ue000 private use \U000f0000", "Ǆ ǅ ǆ",
]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory) -> Path:
    """`npm ci` of the runner's package files in a temporary folder, once per session."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing("node and npm are not on PATH (the Node edge runner needs Node.js 20+)")
    work = tmp_path_factory.mktemp("npm")
    for name in NODE_FILES:
        shutil.copy2(RUNNER_DIR / name, work / name)
    done = _run([npm, "ci", "--no-audit", "--no-fund"], work)
    if done.returncode != 0:
        missing(f"npm ci failed (no registry and no npm cache?): {done.stderr[-800:]}")
    return work / "node_modules"


@pytest.fixture(scope="session")
def node_edge(request, node_modules, tmp_path_factory):
    """name -> a copy of that edge folder with node_modules linked in (tests may damage it)."""

    def make(name: str) -> Path:
        edge = request.getfixturevalue(FOLDERS[name])
        dst = Path(shutil.copytree(edge, tmp_path_factory.mktemp(f"node-{name}") / "edge"))
        (dst / "node_modules").symlink_to(node_modules, target_is_directory=True)
        _ORIGIN[dst] = edge
        return dst

    return make


_ORIGIN: dict[Path, Path] = {}  # copy -> the session's edge folder


def engine_dirs(copy: Path) -> dict[str, Path]:
    """The engine ONNX folders whose files a copied edge folder ships (fp32/int8)."""
    return engine_folders(_ORIGIN[copy])


def node(edge: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(["node", str(edge / "runner.mjs"), *args], edge.parent)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def jsonl(text: str) -> list:
    """JSONL rows; lines end at \\n only (str.splitlines would also split at a raw U+2028 in a string)."""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    err = done.stderr.strip()
    assert "Error:" not in err and "    at " not in done.stderr and len(err.splitlines()) == 1, done.stderr
    assert err.startswith("runner: error: "), err
    for f in fragments:
        assert f in err, (f, err)
    return err


# -- the folder ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FOLDERS))
def test_edge_folder_ships_the_node_runner_tested_here(name, request):
    edge = request.getfixturevalue(FOLDERS[name])
    for f in NODE_FILES:
        assert (edge / f).read_bytes() == (RUNNER_DIR / f).read_bytes(), f
    manifest = json.loads((edge / "manifest.json").read_text())["files"]
    assert set(NODE_FILES) <= set(manifest)
    lock = json.loads((RUNNER_DIR / "package-lock.json").read_text())
    pins = json.loads((RUNNER_DIR / "package.json").read_text())["dependencies"]
    for pkg, pin in pins.items():  # exact versions, and the lock agrees
        assert pin[0].isdigit(), (pkg, pin)
        assert lock["packages"][f"node_modules/{pkg}"]["version"] == pin


# -- --check ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FOLDERS))
def test_check_passes(name, node_edge):
    edge = node_edge(name)
    done = node(edge, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((edge / "arbiter.json").read_text())
    lines = done.stdout.splitlines()
    files = [f for k, f in meta["files"].items() if f]
    assert len(lines) == len(files) and all(ln.endswith(": ok") for ln in lines), done.stdout
    assert [ln.split(":")[0] for ln in lines] == files


def test_check_fails_on_a_score_off_by_more_than_the_tolerance(node_edge):
    edge = node_edge("qwen3")
    rows = jsonl((edge / "golden.jsonl").read_text(encoding="utf-8"))
    rows[2]["scores"]["fp32"] += 3e-5  # tolerance 1e-5
    rows[5]["n_tokens"] += 1  # a tokenizer that differs
    write_rows(edge / "golden.jsonl", rows)
    write_manifest(edge)
    done = node(edge, "--check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "onnx/model.onnx: " in done.stdout and "FAIL (2 rows)" in done.stdout
    assert "onnx/model_int8.onnx: " in done.stdout and "FAIL (1 rows)" in done.stdout  # n_tokens
    assert "golden.jsonl:3: fp32 score" in done.stderr and "golden.jsonl:6: " in done.stderr


# -- scores and token ids equal the engine's ------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), [("default", "int8"), ("qwen3", "fp32"), ("qwen3", "int8"),
                                            ("minilm", "fp32"), ("minilm", "int8")])
def test_scores_equal_the_engine(name, kind, node_edge, tmp_path):
    edge = node_edge(name)
    out = tmp_path / "out.jsonl"
    done = node(edge, str(write_rows(tmp_path / "in.jsonl", ROWS)), "-o", str(out), "--model", kind)
    assert done.returncode == 0, done.stderr
    got = jsonl(out.read_text(encoding="utf-8"))
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == ROWS  # rows come back whole
    with engine.load(engine_dirs(edge)[kind], format="onnx") as rm:
        want = [s.value for s in rm.score([item_from_row(r) for r in ROWS])]
    tol = {"fp32": 1e-5, "int8": 1e-4}[kind]
    diffs = [abs(r["score"] - w) for r, w in zip(got, want, strict=True)]
    assert max(diffs) <= tol, diffs


def test_length_control_counts_code_points(node_edge, tmp_path):
    """The default has a length correction: '🙂' is one character, as in Python, not two."""
    edge = node_edge("default")
    beta = json.loads((edge / "arbiter.json").read_text())["length_correction"]
    assert beta > 0
    rows = [{"prompt": "Mood?", "response": "🙂" * 12}]
    done = node(edge, str(write_rows(tmp_path / "in.jsonl", rows)))
    assert done.returncode == 0, done.stderr
    with engine.load(engine_dirs(edge)["int8"], format="onnx") as rm:
        want = rm.score([item_from_row(rows[0])])[0].value
    assert abs(json.loads(done.stdout)["score"] - want) <= 1e-4
    # counting UTF-16 units would subtract beta * (log 25 - log 13) more: far outside the tolerance
    assert beta * math.log(25 / 13) > 100 * 1e-4


ENCODE_SCRIPT = """
import { fileURLToPath } from 'node:url';
import { Model, readJson, readRows } from './runner.mjs';
const meta = readJson(fileURLToPath(new URL('arbiter.json', import.meta.url)));
const model = await Model.open(process.argv[2], meta);
const out = readRows(process.argv[3]).map(([, , messages, response]) => {
  try { const [ids, types] = model.encode(messages, response); return { ids, types }; }
  catch (e) { return { error: e.message }; }
});
console.log(JSON.stringify(out));
"""


@pytest.mark.parametrize("name", list(FOLDERS))
def test_token_ids_equal_the_engines_encoder(name, node_edge, tmp_path):
    """Every id and token type the runner feeds, on golden + extra rows (cut ones included)."""
    edge = node_edge(name)
    (edge / "encode.mjs").write_text(ENCODE_SCRIPT)
    golden = jsonl((edge / "golden.jsonl").read_text(encoding="utf-8"))
    rows = [{"conversation": g["conversation"], "response": g["response"]} for g in golden] + ROWS
    rows.append({"prompt": "Hi", "response": "word " * 600})  # refused by both
    kind = next(k for k, f in json.loads((edge / "arbiter.json").read_text())["files"].items() if f)
    done = _run(["node", str(edge / "encode.mjs"), kind, str(write_rows(tmp_path / "in.jsonl", rows))], edge)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    cut = 0
    with engine.load(engine_dirs(edge)[kind], format="onnx") as rm:
        for row, js in zip(rows, got, strict=True):
            try:
                enc = rm.encoder.encode(item_from_row(row))
            except InputTooLongError as e:
                assert js.get("error") == str(e), row
                continue
            assert js.get("ids") == list(enc.ids), row
            if enc.type_ids is not None:
                assert js["types"] == list(enc.type_ids), row
            cut += enc.cut_tokens > 0
    assert cut >= 2  # the truncation rule was exercised, not only the short path


@pytest.mark.parametrize("which", ["minilm", "smollm2"])
def test_js_tokenizer_matches_rust_tokenizers(which, node_modules, edge_qwen3_dir, tmp_path):
    """@huggingface/tokenizers against the Rust `tokenizers` the engine uses: BERT WordPiece
    (the default's tokenizer.json) and SmolLM2 byte-level BPE with special tokens."""
    from engine.encoding import load_tokenizer

    folder = {"minilm": engine.__path__[0] + "/builtin/default/onnx", "smollm2": str(edge_qwen3_dir)}[which]
    tok = load_tokenizer(Path(folder) / "tokenizer.json")  # padding and truncation off, as the engine
    script = node_modules.parent / "tokenize.mjs"
    script.write_text(
        "import { readFileSync } from 'node:fs';\n"
        "import { Tokenizer } from '@huggingface/tokenizers';\n"
        "const [dir, texts] = process.argv.slice(2), read = (p) => JSON.parse(readFileSync(p, 'utf8'));\n"
        "const tok = new Tokenizer(read(dir + '/tokenizer.json'), read(dir + '/tokenizer_config.json'));\n"
        "console.log(JSON.stringify(read(texts).map((t) =>\n"
        "  [false, true].map((s) => tok.encode(t, { add_special_tokens: s }).ids))));\n")
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS, ensure_ascii=False), encoding="utf-8")
    done = _run(["node", str(script), folder, str(texts)], tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = [[tok.encode(t, add_special_tokens=s).ids for s in (False, True)] for t in TEXTS]
    bad = [(t, g, w) for t, g, w in zip(TEXTS, got, want, strict=True) if g != w]
    assert not bad, bad[:3]
    specials = {"minilm": 101, "smollm2": 1}[which]  # [CLS] / <|im_start|> parsed from the text
    assert any(specials in ids[0] for ids in want)


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["onnx/model_int8.onnx", "tokenizer.json"])
def test_manifest_catches_a_flipped_byte(victim, node_edge, tmp_path):
    edge = node_edge("default")
    path = edge / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_one_line_error(node(edge, "--check"), f"manifest mismatch: {victim} is not the file")
    rows = write_rows(tmp_path / "in.jsonl", ROWS[:1])
    assert_one_line_error(node(edge, str(rows)), f"manifest mismatch: {victim}")  # scoring checks too


@pytest.mark.parametrize("name", ["default", "qwen3"])
def test_too_long_response_is_refused_with_the_engines_rule(name, node_edge, tmp_path):
    edge = node_edge(name)
    rows = [ROWS[0], {"prompt": "Hi", "response": "word " * 600}]
    out = tmp_path / "out.jsonl"
    done = node(edge, str(write_rows(tmp_path / "in.jsonl", rows)), "-o", str(out))
    with engine.load(next(iter(engine_dirs(edge).values())), format="onnx") as rm, \
            pytest.raises(InputTooLongError) as e:
        rm.encoder.encode(item_from_row(rows[1]))
    assert_one_line_error(done, f"in.jsonl:2: {e.value}", "this model reads at most 512")
    assert not out.exists()  # nothing is written unless every row is scored


@pytest.mark.parametrize(("line", "fragments"), [
    ('{"prompt": "a"}', ["in.jsonl:2: field 'response': missing"]),
    ('{"prompt": "a", "response": 5}', ["in.jsonl:2: field 'response': must be a string; got int"]),
    ('{"conversation": "a", "response": "b"}', ["field 'conversation': must be a list"]),
    ('{"conversation": [{"role": "bot", "content": "x"}], "response": "b"}',
     ["field 'conversation[0].role': role must be one of system, user, assistant; got 'bot'"]),
    ('{"conversation": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], '
     '"response": "b"}', ["field 'conversation[1].role': the last message is an assistant turn"]),
    ('{"response": "b"}', ["field 'conversation': missing"]),
    ('{"prompt": "a", "response": "\\ud800"}', ["field 'response': not valid Unicode (a lone surrogate)"]),
    ('{"conversation": [{"role": "user", "content": "\\udfff"}], "response": "b"}',
     ["field 'conversation[0].content': not valid Unicode"]),
    ('[1, 2]', ["in.jsonl:2: expected a JSON object, got list"]),
    ('{"prompt": "a", "response": ', ["in.jsonl:2: not valid JSON"]),
])
def test_bad_row_names_file_line_and_field(line, fragments, node_edge, tmp_path):
    edge = node_edge("default")
    done = node(edge, str(write_rows(tmp_path / "in.jsonl", [ROWS[0], line])))
    assert_one_line_error(done, *fragments)


def test_bad_bytes_and_missing_files_are_named(node_edge, tmp_path):
    edge = node_edge("default")
    bad = tmp_path / "in.jsonl"
    bad.write_bytes(json.dumps(ROWS[0]).encode() + b"\n{\"prompt\": \"\xff\"}\n")
    assert_one_line_error(node(edge, str(bad)), "in.jsonl:2: not UTF-8 text")
    assert_one_line_error(node(edge, str(tmp_path / "nope.jsonl")), "nope.jsonl: missing file")
    assert_one_line_error(node(edge, "--model", "fp32", str(bad)), "this folder has no fp32 model",
                          "make default-model")
    assert_one_line_error(node(edge), "give IN.jsonl to score, or --check")
    (edge / "onnx" / "model_int8.onnx").unlink()
    assert_one_line_error(node(edge, "--check"), "onnx/model_int8.onnx: missing file (manifest.json lists it)")
    (edge / "node_modules").unlink()
    (edge / "manifest.json").unlink()
    assert_one_line_error(node(edge, "--check"), "manifest.json: missing file")
    rows = write_rows(tmp_path / "ok.jsonl", ROWS[:1])
    assert_one_line_error(node(edge, str(rows), "--no-verify"), "is not installed: run `npm ci`")


def test_output_is_written_through_stdout_or_o(node_edge, tmp_path):
    edge = node_edge("qwen3")
    rows = write_rows(tmp_path / "in.jsonl", ROWS[:2])
    stdout = node(edge, str(rows))
    assert stdout.returncode == 0, stdout.stderr
    out = tmp_path / "out.jsonl"
    assert node(edge, str(rows), "-o", str(out)).returncode == 0
    assert out.read_text(encoding="utf-8") == stdout.stdout and len(jsonl(stdout.stdout)) == 2
    int8 = node(edge, str(rows), "--model", "int8").stdout
    fp32 = node(edge, str(rows), "--model", "fp32").stdout
    assert int8 == stdout.stdout != fp32  # int8 when the folder has it
