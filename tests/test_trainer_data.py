"""Preference data: the record, every importer (inline fixtures and the real files), hygiene."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import InputError
from trainer.data import load, pair, read_pairs, write_pairs
from trainer.data.hygiene import HygieneReport, clean
from trainer.data.importers import ImportReport, detect_format
from trainer.data.record import PreferencePair

ROOT = Path(__file__).resolve().parents[1]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trainer_data_imports_no_torch():
    code = ("import sys, trainer.data, trainer.data.hygiene, trainer.data.importers;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, "trainer.data imported torch: " + proc.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_record_round_trip(tmp_path, suffix):
    pairs = [pair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "Hello", "Go away",
                  id="a", source="s", label_origin="human", labellers=("x", "y"), attributes={"k": [1, 2]}),
             pair("2+2?", "4", "5", id="b", tie=True, split="gold")]
    path = tmp_path / f"pairs{suffix}"
    assert write_pairs(pairs, path) == 2
    assert list(read_pairs(path)) == pairs
    assert detect_format(path) == "arbiter"


def test_prompt_format_and_located_errors(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad", "extra": 1},
                                     {"prompt": "Q2", "chosen": "good", "rejected": 3}])
    it = load(f, label_origin="human")
    first = next(it)
    assert (first.conversation[0].content, first.chosen, first.rejected, first.label_origin) == ("Q", "good", "bad", "human")
    assert first.attributes == {"extra": 1}
    with pytest.raises(InputError) as e:
        next(it)
    assert (e.value.source, e.value.line, e.value.field) == (str(f), 2, "rejected")
    assert f"{f}:2: field 'rejected'" in str(e.value)


def test_bad_json_and_unknown_format(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        list(load(f))
    g = jsonl(tmp_path / "odd.jsonl", [{"question": "a"}])
    with pytest.raises(InputError, match="unrecognised preference format"):
        list(load(g))


def test_messages_format_trl_and_skywork(tmp_path):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a prime."}]
    f = jsonl(tmp_path / "m.jsonl", [
        {"chosen": conv + [{"role": "assistant", "content": "7"}], "rejected": conv + [{"role": "assistant", "content": "8"}]},
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
        {"chosen": conv + [{"role": "assistant", "content": "7"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "8"}]},
    ])
    assert detect_format(f) == "messages"
    it = load(f)
    a, b = next(it), next(it)
    assert [m.content for m in a.conversation] == ["Hi", "Hello!", "Name a prime."]
    assert (a.chosen, a.rejected, b.chosen, b.rejected) == ("7", "8", "a", "b")
    with pytest.raises(InputError) as e:
        next(it)
    assert e.value.line == 3 and e.value.field == "rejected[0]"


def test_hh_rlhf_transcripts(tmp_path):
    f = tmp_path / "hh.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: A pun.",
                            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."}) + "\n")
        g.write(json.dumps({"chosen": "no transcript", "rejected": "x"}) + "\n")
    assert detect_format(f) == "hh-rlhf"
    report = ImportReport()
    pairs = list(load(f, errors="skip", report=report))
    assert len(pairs) == 1 and pairs[0].label_origin == "human"
    assert [m.role for m in pairs[0].conversation] == ["user", "assistant", "user"]
    assert (pairs[0].chosen, pairs[0].rejected) == ("A pun.", "No.")
    assert report.read == 2 and report.skipped[0]["line"] == 2 and report.skipped[0]["field"] == "chosen"


def test_oasst_pairs(tmp_path):
    f = jsonl(tmp_path / "o.jsonl", [{"tree_id": "t", "context": [{"role": "user", "content": "Q"}],
                                      "chosen_role": "assistant", "chosen": "A", "rejected": "B",
                                      "chosen_rank": 0, "rejected_rank": 2}])
    (p,) = load(f)
    assert (p.chosen, p.rejected, p.attributes["rejected_rank"], p.label_origin) == ("A", "B", 2, "human")


def test_pandalm_majority_and_ties(tmp_path):
    rows = [
        {"idx": 0, "instruction": "Fix", "input": "teh", "response1": "the", "response2": "teh",
         "annotator1": 1, "annotator2": 1, "annotator3": 2},
        {"idx": 1, "instruction": "Say hi", "input": "", "response1": "hi", "response2": "hello",
         "annotator1": 2, "annotator2": 0, "annotator3": 2},
        {"idx": 2, "instruction": "Tie", "input": "", "response1": "a", "response2": "b",
         "annotator1": 0, "annotator2": 0, "annotator3": 1},
        {"idx": 3, "instruction": "Split", "input": "", "response1": "a", "response2": "b",
         "annotator1": 0, "annotator2": 1, "annotator3": 2},
    ]
    f = tmp_path / "pandalm.json"
    f.write_text(json.dumps(rows, indent=4))
    kept = list(load(f))
    assert [(p.chosen, p.tie) for p in kept] == [("the", False), ("hello", False), ("a", True), ("a", True)]
    assert kept[0].conversation[0].content == "Fix\n\nteh" and kept[0].attributes["votes"] == [1, 1, 2]
    assert [p.id for p in load(f, ties="drop")] == ["pandalm/0", "pandalm/1"]
    rows[1]["annotator2"] = 7
    f.write_text(json.dumps(rows, indent=4))
    with pytest.raises(InputError) as e:
        list(load(f))
    start = f.read_text().splitlines().index('        "idx": 1,')  # 0-based line of the key = the "{" line
    assert e.value.field == "annotator2" and e.value.line == start  # the line the object starts on


def test_auto_j_labels(tmp_path):
    f = jsonl(tmp_path / "aj.jsonl", [
        {"scenario": "s", "label": 0, "prompt": "P", "response 1": "one", "response 2": "two"},
        {"scenario": "s", "label": 1, "prompt": "P", "response 1": "one", "response 2": "two"},
        {"scenario": "s", "label": 2, "prompt": "P", "response 1": "one", "response 2": "two"},
    ])
    got = [(p.chosen, p.rejected, p.tie) for p in load(f)]
    assert got == [("one", "two", False), ("two", "one", False), ("one", "two", True)]
    assert len(list(load(f, ties="drop"))) == 2


def test_alpacaeval_is_llm_labelled(tmp_path):
    f = jsonl(tmp_path / "ae.jsonl", [{"prompt": "P", "chosen": "long answer", "rejected": "short",
                                       "chosen_generator": "g1", "rejected_generator": "g2",
                                       "annotator": "alpaca_eval_gpt4", "preference": 2.0, "source_dataset": "x",
                                       "source_file": "f"}])
    (p,) = load(f)
    assert p.label_origin == "llm" and p.labellers == ("alpaca_eval_gpt4",) and p.chosen_longer is True


# -- hygiene ---------------------------------------------------------------------

BENCH_PROMPT = ("Write a short story about a lighthouse keeper who discovers a message in a bottle "
                "that was written by her grandmother fifty years ago.")


def test_hygiene_empty_duplicate_and_planted_contamination(tmp_path):
    bench = jsonl(tmp_path / "bench.jsonl", [{"question": BENCH_PROMPT}, {"turns": ["unrelated mt-bench turn"]}])
    planted = "Please help. " + " ".join(BENCH_PROMPT.split()[3:17]) + " Thanks."  # 14 shared words
    near = "Please help. " + " ".join(BENCH_PROMPT.split()[3:15]) + " Thanks."  # 12 shared words only
    pairs = [
        pair("Q1", "good", "bad", id="keep"),
        pair("Q1", "good", "bad", id="dup"),
        pair("Q2", "   ", "bad", id="empty"),
        pair("Q3", "same", "same", id="same"),
        pair(planted, "a", "b", id="planted"),
        pair(near, "a", "b", id="near"),
    ]
    report = HygieneReport()
    kept = [p.id for p in clean(pairs, benchmarks=[bench], report=report)]
    assert kept == ["keep", "near"]
    assert dict(report.removed) == {"duplicate": 1, "empty_response": 1, "identical_responses": 1, "contaminated": 1}
    hit = report.examples["contaminated"][0]
    assert hit["id"] == "planted" and hit["benchmark"] == str(bench) and len(hit["ngram"].split()) == 13
    assert report.benchmarks == {str(bench): 2} and report.kept == 2


# -- the real files ----------------------------------------------------------------

REAL = {  # file -> (format, pairs imported with errors="skip" and ties kept, rows skipped)
    "alpacaeval-gpt4-prefs/train.jsonl.gz": ("alpacaeval", 14482, 0),
    "alpacaeval-gpt4-prefs/test.jsonl.gz": ("alpacaeval", 1600, 0),
    "hh-rlhf/harmless-base-test.jsonl.gz": ("hh-rlhf", 2307, 5),
    "oasst-en100/pairs_from_ranks.jsonl": ("oasst", 754, 0),
    "pandalm/testset-v1.json": ("pandalm", 999, 0),  # six answers stored as JSON true: read as "true"
    "auto-j/testdata_pairwise.jsonl": ("auto-j", 1392, 0),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_files_import(shared_data, name):
    fmt, count, skipped = REAL[name]
    path = shared_data / name
    assert detect_format(path) == fmt
    report = ImportReport()
    pairs = list(load(path, errors="skip", report=report))
    assert len(pairs) == count and len(report.skipped) == skipped
    assert all(p.chosen != "" or p.rejected != "" for p in pairs)
    if skipped:  # the strict default stops at the first malformed row and says where
        with pytest.raises(InputError) as e:
            list(load(path))
        assert e.value.line == report.skipped[0]["line"] and e.value.source == str(path)
    decided = [p.chosen_longer for p in pairs if not p.tie and p.chosen_longer is not None]
    share = sum(decided) / len(decided)
    if fmt == "alpacaeval":  # the measured length bias of GPT-4 judges (86% train, 84% test)
        assert share > 0.8
    else:  # human labels prefer the longer response far less often
        assert 0.4 < share < 0.75


def test_real_decontamination_against_benchmarks(shared_data):
    """RM-Bench's chat prompts come from AlpacaEval: decontamination must find them."""
    report = HygieneReport()
    src = load(shared_data / "alpacaeval-gpt4-prefs/test.jsonl.gz")
    kept = sum(1 for _ in clean(src, benchmarks=[shared_data / "rm-bench/chat_filtered.json"], report=report))
    assert report.removed["contaminated"] > 0 and kept + sum(report.removed.values()) == 1600
    assert report.benchmarks[str(shared_data / "rm-bench/chat_filtered.json")] == 129


def test_synthetic_negatives_make_the_longer_answer_the_worse_one():
    import random

    from trainer.data import negatives

    real = [pair(f"Question number {i} about topic {i}?", f"Short answer {i}." + " word" * (i % 7),
                 "rejected", id=f"r{i}", label_origin="human") for i in range(30)]
    off = negatives.off_topic(real, 12, random.Random(0))
    assert len(off) == 12
    by_id = {p.id: p for p in real}
    for p in off:
        a, b = by_id[p.attributes["chosen_from"]], by_id[p.attributes["rejected_from"]]
        assert p.conversation == a.conversation and p.chosen == a.chosen  # a real answer to this prompt
        assert p.rejected == b.chosen and b.conversation != a.conversation  # another prompt's answer
        assert p.chosen_longer is False and p.label_origin == "synthetic" and p.source == "synthetic/off-topic"
    assert [p.id for p in off] == [p.id for p in negatives.off_topic(real, 12, random.Random(0))]  # seeded
    pad = negatives.padded(real, 10, random.Random(1))
    assert 0 < len(pad) <= 10
    for p in pad:
        extra = by_id[p.attributes["rejected_from"]].chosen
        assert p.rejected.startswith(p.chosen) and p.rejected.endswith(extra.strip())
        assert p.chosen_longer is False
    # round trip through the JSONL record keeps the origin
    assert PreferencePair.from_dict(off[0].to_dict()).label_origin == "synthetic"
    assert negatives.off_topic(real[:1], 5, random.Random(0)) == []  # nobody to borrow from
