"""`arbiter score`, `arbiter compare`, `arbiter bon`: the everyday commands."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.cli.common import (
    ProgressBar,
    add_json,
    add_model_options,
    check_input_file,
    emit,
    load_model,
    positive_int,
    read_utf8,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score every row of a JSONL file")
    add_model_options(p)
    add_json(p)
    p.add_argument("input", help="JSONL: {conversation|prompt, response} per line; '-' for stdin")
    p.add_argument("-o", "--output", required=True,
                   help="JSONL out: each row plus score fields. Written beside it and renamed when "
                        "every row is scored; a symlink is followed, a device or FIFO streamed to")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--on-too-long", choices=["error", "skip", "window"], default="error",
                   help="a response longer than the model's context: stop with an error naming "
                        "its line (default), write the row with score null and the reason, or score "
                        "it in overlapping windows (cross-encoders; rows record windows and policy)")
    _window_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("compare", help="score two responses: margin and P(A better than B)")
    add_model_options(p)
    p.add_argument("--no-prompt-sharing", action="store_true",
                   help="score every candidate in full (default: the conversation is computed once "
                        "where the model's format allows)")
    add_json(p)
    _conversation_options(p)
    _too_long_options(p)
    p.add_argument("a", help="response A")
    p.add_argument("b", help="response B")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bon", help="Best-of-N: rank candidate responses, best first")
    add_model_options(p)
    p.add_argument("--no-prompt-sharing", action="store_true",
                   help="score every candidate in full (default: the conversation is computed once "
                        "where the model's format allows)")
    add_json(p)
    _conversation_options(p)
    _too_long_options(p)
    p.add_argument("--candidates", required=True,
                   help="JSON list, JSONL (strings or {response}), or text with candidates "
                        "separated by lines of '---' (one per line when there are none)")
    p.set_defaults(func=cmd_bon)


def _window_options(p: argparse.ArgumentParser) -> None:
    from engine.scorer import WINDOW_AGG, WINDOW_AGGS

    p.add_argument("--window-agg", choices=list(WINDOW_AGGS), default=WINDOW_AGG,
                   help="with --on-too-long window: how the windows' scores make one "
                        f"(default {WINDOW_AGG}, the best measured: bench/results/long_inputs.md)")


def _too_long_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-too-long", choices=["error", "window"], default="error",
                   help="a response longer than the model's context: an error (default), or "
                        "scored in overlapping windows (cross-encoders)")
    _window_options(p)


def _too_long(args: argparse.Namespace) -> dict[str, str]:
    """``Scorer.compare``/``rank``'s long-input options from the command line."""
    return {"on_too_long": args.on_too_long, "window_agg": args.window_agg}


def _conversation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", "-p", help="a single user turn")
    g.add_argument("--conversation", help="JSON file: a list of {role, content} messages")
    p.add_argument("--system", help="a system prompt placed first")


def _conversation(args: argparse.Namespace):
    import engine
    from engine.errors import InputError

    if args.prompt is not None:
        return engine.conversation(args.prompt, system=args.system)
    text = read_utf8(args.conversation)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not a JSON conversation ({e.msg} at column {e.colno})",
                         source=args.conversation, line=e.lineno) from None
    except RecursionError:
        raise InputError("nested too deeply to be a conversation", source=args.conversation) from None
    try:
        return engine.conversation(raw, system=args.system)
    except InputError as e:
        raise InputError(e.reason, source=args.conversation, field=e.field) from None


def read_candidates(path: str) -> list[str]:
    """Candidates from a JSON list, JSONL (strings or ``{response}``) or ``---``-separated
    text, read by the engine's one JSON reader (errors name the file, line and field)."""
    from engine.errors import InputError
    from engine.jsonl import is_json_array, read_array, read_rows, read_text

    p = Path(path)
    if p.suffix == ".json" or is_json_array(path):
        rows = list(read_array(path))
        if not rows:
            raise InputError("expected a non-empty JSON list of candidates", source=path)
    elif p.suffix == ".jsonl":
        rows = list(read_rows(path))
    else:
        lines = read_text(path).splitlines()
        if any(line.strip() == "---" for line in lines):
            blocks, cur = [], []
            for line in lines:
                if line.strip() == "---":
                    blocks.append("\n".join(cur).strip("\n"))
                    cur = []
                else:
                    cur.append(line)
            blocks.append("\n".join(cur).strip("\n"))
            return [b for b in blocks if b.strip()]
        return [line for line in lines if line.strip()]
    out = []
    for n, row in rows:
        value = row.get("response", row.get("text")) if isinstance(row, dict) else row
        if not isinstance(value, str):
            raise InputError("a candidate must be a string or an object with 'response'",
                             source=path, line=n, field="response")
        out.append(value)
    return out


def cmd_score(args: argparse.Namespace) -> int:
    from engine.output import atomic_output, resolve_target

    check_input_file(args.input)
    resolve_target(args.output)  # a folder as -o fails before the model loads
    bar = ProgressBar("scoring")
    try:
        with load_model(args) as rm:
            info = rm.info
            # written beside the target and renamed at the end: a failed run leaves no half file
            with atomic_output(args.output) as f:
                n, cut, skipped, windowed, policy = _score_rows(args, rm, f, bar)
    finally:
        bar.close()
    summary = {"rows": n, "rows_cut": cut, "rows_skipped": skipped, "output": str(args.output),
               "model": info.name, "format": info.format, "dtype": info.dtype}
    if policy:
        summary |= {"rows_windowed": windowed, "policy": policy}
    human = f"scored {n} rows with {info.name} ({info.format} {info.dtype}) -> {args.output}"
    if cut:
        human += f"\n{cut} rows had their conversation cut from the start to fit (see cut_tokens)"
    if skipped:
        human += f"\n{skipped} rows not scored: the response alone exceeds the context (score null)"
    if windowed:
        human += f"\n{windowed} rows scored in windows: the response alone exceeds the context ({policy})"
    emit(args, summary, human)
    return 0


def _score_rows(args: argparse.Namespace, rm, f, bar: ProgressBar | None = None
                ) -> tuple[int, int, int, int, str | None]:
    """Score every input row into ``f``; returns (rows, rows cut, rows skipped, rows windowed,
    the window policy's name or None)."""
    from engine.errors import InputError, InputTooLongError, ModelError
    from engine.jsonl import read_items
    from engine.output import json_line

    source = "<stdin>" if args.input == "-" else args.input
    rows: deque[tuple[int, dict]] = deque()  # (line, row) read but not yet written

    def items():
        try:
            for line, row, item in read_items(args.input):
                rows.append((line, row))
                yield item
        except UnicodeDecodeError as e:  # the reader names the line where it can; this is the fallback
            raise InputError(f"not valid UTF-8 ({e.reason})", source=source) from None

    n = cut = skipped = windowed = 0
    policy = None
    try:
        for s in rm.iter_scores(items(), batch_size=args.batch_size, progress=bar,
                                on_too_long=args.on_too_long, window_agg=args.window_agg):
            line, row = rows.popleft()
            if s.skipped:
                row.update(score=None, skipped=s.skipped, model=rm.info.name)
            elif not math.isfinite(s.value):
                raise ModelError(f"{source}:{line}: the model gave a non-finite score ({s.value}); "
                                 "nothing was written. The model file may be damaged: check it with "
                                 "`arbiter verify`")
            else:
                row.update(score=s.value, n_tokens=s.n_tokens, cut_tokens=s.cut_tokens,
                           model=rm.info.name)
                if s.policy:
                    row.update(windows=s.windows, policy=s.policy)
            f.write(json_line(row, source=source, line=line))
            n += 1
            cut += s.cut_tokens > 0
            skipped += s.skipped is not None
            windowed += s.windows > 1
            policy = policy or s.policy
    except InputTooLongError as e:
        line = rows[e.item_index - n][0] if e.item_index is not None else None
        raise InputTooLongError(f"{source}:{line}: field 'response': {e}{_window_hint(rm, args)}") from None
    return n, cut, skipped, windowed, policy


def _window_hint(rm, args: argparse.Namespace) -> str:
    """What to add to a "too long" error where windows would have scored the response."""
    if getattr(args, "on_too_long", "error") == "error" and rm.windows_long_responses:
        return " --on-too-long window scores it in overlapping windows."
    return ""


@contextmanager
def _too_long_hint(rm, args: argparse.Namespace) -> Iterator[None]:
    from engine.errors import InputTooLongError

    try:
        yield
    except InputTooLongError as e:
        raise InputTooLongError(f"{e}{_window_hint(rm, args)}") from None


def _sharing(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_prompt_sharing", False) else None


def _shared_note(shared: bool) -> str:
    return "; prompt computed once" if shared else ""


def _require_finite(scores: dict[str, float]) -> None:
    """A NaN or infinite score is a broken model, never a result to print or rank by."""
    from engine.errors import ModelError

    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise ModelError(f"the model gave a non-finite score ({shown}); the model file may be "
                         "damaged: check it with `arbiter verify`")


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.types import window_fields

    conv = _conversation(args)
    with load_model(args) as rm:
        with _too_long_hint(rm, args):
            c = rm.compare(conv, args.a, args.b, shared_prompt=_sharing(args), **_too_long(args))
        info = rm.info
    _require_finite({"A": c.score_a.value, "B": c.score_b.value})
    data = {**c.to_dict(), **window_fields([c.score_a, c.score_b]), "model": info.name,
            "format": info.format, "dtype": info.dtype}
    star = {"A": ("*", " "), "B": (" ", "*"), "tie": (" ", " ")}[c.winner]
    human = (f"{star[0]} A  {c.score_a.value:+.4f}\n{star[1]} B  {c.score_b.value:+.4f}\n"
             f"margin (A-B) {c.margin:+.4f}   P(A better than B) = {c.p_a_better:.1%}\n"
             f"model {info.name} ({info.format} {info.dtype}){_shared_note(c.prompt_shared)}")
    for label, s in (("A", c.score_a), ("B", c.score_b)):
        if s.cut_tokens:
            human += f"\nnote: {s.cut_tokens} conversation tokens cut from the start for {label}"
        if s.windows > 1:
            human += f"\nnote: {label} scored in {s.windows} windows ({s.policy})"
    emit(args, data, human)
    return 0


def cmd_bon(args: argparse.Namespace) -> int:
    from engine.types import window_fields

    conv = _conversation(args)
    candidates = read_candidates(args.candidates)
    with load_model(args) as rm:
        with _too_long_hint(rm, args):
            r = rm.rank(conv, candidates, shared_prompt=_sharing(args), **_too_long(args))
        info = rm.info
    _require_finite({f"candidate {c.index}": c.score.value for c in r.candidates})
    data = {**r.to_dict(), "model": info.name, "format": info.format, "dtype": info.dtype}
    by_index = sorted(r.candidates, key=lambda c: c.index)
    if fields := window_fields([c.score for c in by_index]):  # in input order, like "index"
        data |= fields
    lines = [f"{'rank':>4}  {'score':>9}  {'P(best>this)':>12}  response"]
    for k, c in enumerate(r.candidates, start=1):
        preview = c.response.replace("\n", " ")
        preview = preview[:60] + ("..." if len(preview) > 60 else "")
        lines.append(f"{k:>4}  {c.score.value:+9.4f}  {c.p_best_vs_this:>12.1%}  [{c.index}] {preview}")
    lines.append(f"best: candidate {r.best.index}   model {info.name} ({info.format} {info.dtype})"
                 f"{_shared_note(r.prompt_shared)}")
    if n_win := sum(c.score.windows > 1 for c in r.candidates):
        lines.append(f"{n_win} candidate(s) scored in windows ({r.best.score.policy})")
    emit(args, data, "\n".join(lines))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `arbiter`")
