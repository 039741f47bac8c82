"""Score (conversation, response) rows with the reward model in this folder, without Arbiter.

Needs only onnxruntime, tokenizers, numpy (and jinja2 for a chat template):

    pip install onnxruntime tokenizers numpy jinja2
    python runner.py IN.jsonl [-o OUT.jsonl] [--model fp32|int8]
    python runner.py --check        # manifest (sha256 + size), then golden.jsonl

Rows are {"prompt": str} or {"conversation": [{"role", "content"}, ...]}, plus "response"
(and optionally "system"); each is written back with "score" added: a Bradley-Terry logit,
so only differences mean something (P(A better than B) = sigmoid(score_A - score_B)).
Everything about the input comes from arbiter.json; the rules are Arbiter's engine's
(engine/encoding.py), so the scores equal the engine's (golden.jsonl says how closely).
Bad input is a one-line message and exit status 2; --check exits 1 on a score mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROLES = ("system", "user", "assistant")
#: arbiter.json keys every runner reads (the pair- or chat-only ones are checked by use)
REQUIRED = ("edge_version", "files", "inputs", "output", "max_length", "encoding", "length_correction",
            "tolerance")


class RunnerError(Exception):
    """Bad input or a bad folder: printed as one line, exit status 2."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunnerError(f"{path}: missing file (copy the whole edge folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunnerError(f"{path}: not readable JSON ({e})") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):  # 1 MiB at a time: model files are large
            h.update(chunk)
    return h.hexdigest()


def verify(names: list[str] | None = None) -> None:
    """Every file of manifest.json (or only ``names``) has its size and sha256."""
    files = read_json(HERE / "manifest.json").get("files", {})
    for name in names if names is not None else sorted(files):
        path, want = HERE / name, files.get(name)
        if want is None:
            raise RunnerError(f"manifest.json does not list {name}")
        if not path.is_file():
            raise RunnerError(f"{path}: missing file (manifest.json lists it)")
        if path.stat().st_size != want["size"] or sha256(path) != want["sha256"]:
            raise RunnerError(f"manifest mismatch: {name} is not the file that was exported "
                              "(size or sha256 differs); copy it again")


# -- rows -------------------------------------------------------------------------------------
def lone_surrogate(value: object, at: str = "") -> str | None:
    """The dotted path of the first string in ``value`` that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return at or "(value)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        key = f"{at}[{k}]" if isinstance(k, int) else f"{at}.{k}" if at else str(k)
        if (found := lone_surrogate(k, key) if isinstance(k, str) else None) or \
                (found := lone_surrogate(v, key)):
            return found
    return None


def parse_row(row: object) -> tuple[list[dict], str]:
    """(messages, response) of one input row; ValueError("field 'X': why") when it is bad."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if (where := lone_surrogate(row)) is not None:  # "\ud800" is not text: no tokenizer reads it
        raise ValueError(f"field '{where}': not valid Unicode (a lone surrogate)")
    if "response" not in row:
        raise ValueError("field 'response': missing (every row needs the response to score)")
    if not isinstance(row["response"], str):
        raise ValueError(f"field 'response': must be a string; got {type(row['response']).__name__}")
    if "conversation" in row:
        if not isinstance(row["conversation"], list):
            raise ValueError("field 'conversation': must be a list of {role, content} messages")
        messages = row["conversation"]
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError("field 'prompt': must be a string")
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise ValueError("field 'conversation': missing: give 'conversation' (a list of messages) "
                         "or 'prompt' (a string)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"field 'conversation[{i}]': expected an object with role and content")
        if m.get("role") not in ROLES:
            raise ValueError(f"field 'conversation[{i}].role': role must be one of {', '.join(ROLES)}; "
                             f"got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"field 'conversation[{i}].content': content must be a string")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if "system" in row:
        if not isinstance(row["system"], str):
            raise ValueError("field 'system': must be a string")
        messages.insert(0, {"role": "system", "content": row["system"]})
    if not messages:
        raise ValueError("field 'conversation': a conversation needs at least one message")
    if messages[-1]["role"] == "assistant":
        raise ValueError(f"field 'conversation[{len(messages) - 1}].role': the last message is an "
                         "assistant turn; the response to score goes in 'response'")
    return messages, row["response"]


def read_rows(path: Path) -> list[tuple[int, dict, list[dict], str]]:
    """(line number, row, messages, response) of every non-blank line of a JSONL file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise RunnerError(f"{path}: missing file") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise RunnerError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as e:
        raise RunnerError(f"{path}: cannot read ({e.strerror or e})") from None
    rows = []
    # lines end at "\n" only, as in the engine: str.splitlines() would also split at a raw
    # U+2028 or U+0085 inside a JSON string
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((n, row, *parse_row(row)))
        except json.JSONDecodeError as e:
            raise RunnerError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
        except ValueError as e:
            raise RunnerError(f"{path}:{n}: {e}") from None
    return rows


# -- the model ----------------------------------------------------------------------------------
class TooLong(Exception):
    """The response alone does not fit: refused, never cut (a cut response is another response)."""


class Model:
    """One ONNX file of this folder, with the tokenizer and the input rules of arbiter.json."""

    def __init__(self, kind: str, meta: dict, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.meta, self.kind = meta, kind
        self.file = HERE / meta["files"][kind]
        try:
            self.tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception
            raise RunnerError(f"{HERE / 'tokenizer.json'}: not a readable tokenizer ({str(e)[:200]})") from None
        self.tokenizer.no_truncation()  # truncation follows arbiter.json's rule, below
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.file), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes
            raise RunnerError(f"{self.file}: onnxruntime cannot load it ({str(e)[:200]}); "
                              "run `python runner.py --check`") from None
        self.max_length = meta["max_length"]
        self.template = chat_template(meta) if meta["encoding"] == "chat" else None

    def ids(self, text: str, special: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=special).ids

    def encode(self, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
        """(input ids, token type ids) exactly as Arbiter's engine builds them."""
        return self.encode_chat(messages, response) if self.template else self.encode_pair(messages, response)

    def too_long(self, n: int) -> TooLong:
        return TooLong(f"the response alone is {n} tokens; this model reads at most {self.max_length}. "
                       "A cut response would be a different response, so it is not scored.")

    def encode_pair(self, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
        lay, names = self.meta["pair_layout"], self.meta["role_names"]
        if len(messages) == 1 and messages[0]["role"] == "user":
            text = messages[0]["content"]
        else:
            text = "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)
        first, second = self.ids(text, False), self.ids(response, False)
        budget = self.max_length - len(lay["prefix"]) - len(lay["middle"]) - len(lay["suffix"]) - len(second)
        if budget < 1:
            raise self.too_long(len(second))
        first = first[max(0, len(first) - budget):]  # the conversation is cut from its start
        ids = [*lay["prefix"], *first, *lay["middle"], *second, *lay["suffix"]]
        tp, ta, tm, tb, ts = lay["types"]
        types = [*tp, *[ta] * len(first), *tm, *[tb] * len(second), *ts]
        return ids, types if self.meta["token_types"] == "segment" else [0] * len(ids)

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            text = self.template.render(messages=messages, add_generation_prompt=generation_prompt,
                                        **self.meta["special_tokens"])
        except RunnerError:
            raise
        except Exception as e:  # the template is the model's code: whatever it raises is its failure
            raise RunnerError(f"the model's chat template failed on this conversation: {e}") from None
        bos = self.meta["strip_bos"]  # the tokenizer adds BOS itself: never twice
        return text[len(bos):] if bos and text.startswith(bos) else text

    def encode_chat(self, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
        full = self.ids(self.render([*messages, {"role": "assistant", "content": response}], False), True)
        prompt = self.ids(self.render(messages, True), True)
        p = 0  # the response starts after the longest common prefix of the two
        while p < min(len(prompt), len(full)) and prompt[p] == full[p]:
            p += 1
        if len(full) <= self.max_length:
            return full, [0] * len(full)
        head = 1 if self.meta["strip_bos"] else 0  # keep the tokenizer's BOS
        budget = self.max_length - head - (len(full) - p)
        if budget < 1:
            raise self.too_long(len(full) - p)
        ids = full[:head] + full[head:p][-budget:] + full[p:]
        return ids, [0] * len(ids)

    def score(self, messages: list[dict], response: str) -> tuple[float, int]:
        """(final score, tokens read): the output minus the length correction, beta * log1p(chars)."""
        ids, types = self.encode(messages, response)
        arrays = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": types}
        feeds = {name: np.array([arrays[name]], dtype=np.int64) for name in self.meta["inputs"]}
        (out,) = self.session.run([self.meta["output"]], feeds)
        raw = float(np.asarray(out, dtype=np.float64).reshape(-1)[0])
        beta = self.meta["length_correction"]
        return (raw - beta * math.log1p(len(response)) if beta else raw), len(ids)


def chat_template(meta: dict):
    """The model's chat template in Jinja's immutable sandbox, with Hugging Face's helpers."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise RunnerError(f"the chat template refused this conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda v, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(v, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(meta["chat_template"])


def open_model(meta: dict, kind: str | None, threads: int, check_files: bool) -> Model:
    present = [k for k in ("int8", "fp32") if meta["files"].get(k)]
    kind = kind or present[0]
    if kind not in present:
        why = meta.get("fp32_absent_reason") if kind == "fp32" else None
        raise RunnerError(f"this folder has no {kind} model{': ' + why if why else ''}")
    if check_files:  # a corrupted file would give wrong scores silently
        verify([meta["files"][kind], "tokenizer.json", "arbiter.json"])
    return Model(kind, meta, threads)


def score_file(path: Path, out: Path | None, model: Model) -> int:
    rows = read_rows(path)
    lines = []
    for n, row, messages, response in rows:
        try:
            lines.append(json.dumps({**row, "score": model.score(messages, response)[0]}, ensure_ascii=False))
        except (TooLong, RunnerError) as e:
            raise RunnerError(f"{path}:{n}: {e}") from None
    text = "".join(line + "\n" for line in lines)  # written only when every row is scored
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise RunnerError(f"{out}: cannot write ({e.strerror or e})") from None
    return 0


def check(meta: dict, threads: int) -> int:
    """Manifest first (exit 2 naming the file), then every model file on golden.jsonl (exit 1)."""
    verify()
    golden = read_rows(HERE / "golden.jsonl")
    failed = False
    for kind in ("fp32", "int8"):
        if not meta["files"].get(kind):
            continue
        model, tol, worst, bad = Model(kind, meta, threads), meta["tolerance"][kind], 0.0, 0
        for n, row, messages, response in golden:
            want = (row.get("scores") or {}).get(kind)
            try:
                got, n_tokens = model.score(messages, response)
            except TooLong as e:
                raise RunnerError(f"{HERE / 'golden.jsonl'}:{n}: {e}") from None
            if not isinstance(want, float | int):
                raise RunnerError(f"{HERE / 'golden.jsonl'}:{n}: field 'scores.{kind}': no score for {kind}")
            if row.get("n_tokens", n_tokens) != n_tokens:  # a tokenizer that differs: say so first
                bad += 1
                print(f"golden.jsonl:{n}: {n_tokens} tokens, the engine read {row['n_tokens']}", file=sys.stderr)
            worst = max(worst, abs(got - want))
            if not abs(got - want) <= tol:  # NaN fails too
                bad += 1
                print(f"golden.jsonl:{n}: {kind} score {got:.7f}, the engine's {want:.7f}", file=sys.stderr)
        print(f"{meta['files'][kind]}: {len(golden)} rows, max |diff| {worst:.2e} (tolerance {tol:g}): "
              f"{f'FAIL ({bad} rows)' if bad else 'ok'}")
        failed = failed or bad > 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="?", type=Path, help="JSONL rows to score")
    ap.add_argument("-o", "--output", type=Path, help="write scored rows here (default: stdout)")
    ap.add_argument("--model", choices=["fp32", "int8"], help="which file (default: int8 if present)")
    ap.add_argument("--check", action="store_true", help="verify manifest.json, then golden.jsonl")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 of the files a run reads")
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error(f"--threads {args.threads}: expected 0 or more")
    try:
        meta = read_json(HERE / "arbiter.json")
        missing = [k for k in REQUIRED if k not in meta]
        if missing or meta.get("edge_version") != 1:
            raise RunnerError(f"{HERE / 'arbiter.json'}: not an edge_version 1 file (missing {missing})")
        if args.check:
            return check(meta, args.threads)
        if args.input is None:
            raise RunnerError("give IN.jsonl to score, or --check")
        model = open_model(meta, args.model, args.threads, not args.no_verify)
        return score_file(args.input, args.output, model)
    except RunnerError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
