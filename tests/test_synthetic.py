"""Synthetic pairs aimed at the failure modes (trainer/data/synthetic.py): each family's edit on
hand-made answers, the set's determinism, labels and decontamination, the reader, and
`arbiter data synthesize` end to end on the real shared data (a subprocess)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data import synthetic as S
from trainer.data.importers import load
from trainer.data.record import ORIGINS, pair, read_pairs, write_pairs

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(8)  # every property is checked under several seeded choices


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


# -- family a: fact -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_change_number_changes_the_number_and_nothing_else(seed):
    text = "Water boils at 100 °C at sea level."
    edited, edit = S.change_number(text, random.Random(seed))
    assert numbers(edited) != ["100"] and len(numbers(edited)) == 1
    assert edited.replace(numbers(edited)[0], "100") == text
    assert edit == f"number 100 -> {numbers(edited)[0]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_change_number_leaves_list_markers_and_changes_every_occurrence(seed):
    text = "1. Pour 250 ml of water.\n2. Add 250 ml of milk.\n3. Stir."
    edited, _ = S.change_number(text, random.Random(seed))
    assert [line[:3] for line in edited.split("\n")] == ["1. ", "2. ", "3. "]
    assert "250" not in edited and edited.count(" ml") == 2
    assert len({n for n in numbers(edited)} - {"1", "2", "3"}) == 1  # one new value, used twice


@pytest.mark.parametrize("seed", SEEDS)
def test_change_number_keeps_a_year_a_year(seed):
    edited, _ = S.change_number("The war ended in 1945.", random.Random(seed))
    year = int(numbers(edited)[0])
    assert year != 1945 and 1930 <= year <= 1960


def test_numbers_that_label_a_part_or_a_name_are_not_facts():
    text = "Verse 2:\nShe sang.\n\nGPT-3 was trained on data.\n1.\tWake up at 7 am."
    edited, edit = S.change_number(text, random.Random(0))
    assert edit.startswith("number 7 -> ") and "Verse 2:" in edited and "GPT-3" in edited and "1.\tWake" in edited
    assert S.change_number("Verse 2: she sang. Step 3: clap.", random.Random(0)) is None
    edited, edit = S.change_number("1. Use 2 eggs.\n2. Wait 2 hours.\n3. Serve.", random.Random(0))
    assert edited.startswith("1. Use ") and "\n2. Wait " in edited and "\n3. Serve" in edited  # markers kept
    assert edited.count(edit.split(" -> ")[1]) >= 2 and "2 eggs" not in edited


def test_change_unit_swaps_the_unit_after_a_number():
    edited, edit = S.change_unit("Water boils at 100 °C.", random.Random(0))
    assert edited == "Water boils at 100 °F." and edit == "unit °C -> °F"
    assert S.change_unit("The °C scale is common.", random.Random(0)) is None  # no number before it


def test_change_fact_word_swaps_within_its_set_everywhere():
    edited, edit = S.change_fact_word("Mars is red. Mars has two moons.", random.Random(0))
    new = edit.split(" -> ")[1]
    assert "Mars" not in edited and edited.count(new) == 2
    assert new in ("Mercury", "Venus", "Earth", "Jupiter", "Saturn", "Uranus", "Neptune")


@pytest.mark.parametrize("seed", SEEDS)
def test_fact_edit_always_changes_the_answer_or_says_none(seed):
    rng = random.Random(seed)
    edited, _ = S.fact_edit("Water boils at 100 °C at sea level.", rng)
    assert edited != "Water boils at 100 °C at sea level."
    assert S.fact_edit("Be kind to people.", rng) is None
    assert S.fact_edit("```python\nx = 10\n```", rng) is None  # in code it would be a bug, not a fact


# -- family b: constraint -----------------------------------------------------------------------

LIST3 = "Here are three fruits:\n1. Apple\n2. Banana\n3. Cherry"
FRUITS = "Three good ones:\n1. Green apple\n2. Kiwi fruit\n3. Plum from Spain"


def items(text: str) -> list[str]:
    return [line for line in text.split("\n") if re.match(r"^\s*(\d+[.)]|[-*•])\s", line)]


@pytest.mark.parametrize("seed", SEEDS)
def test_count_constraint_is_broken_by_one_item(seed):
    other = "1. Apple\n2. Mango\n3. Pear"
    edited, edit = S.constraint_edit("List three fruits.", LIST3, other, random.Random(seed))
    got = items(edited)
    assert len(got) in (2, 4) and edit == f"count: 3 items asked, {len(got)} given"
    assert [g.split(".")[0] for g in got] == [str(i + 1) for i in range(len(got))]  # renumbered
    texts = [g.split(". ", 1)[1] for g in got]
    assert set(texts) <= {"Apple", "Banana", "Cherry", "Mango", "Pear"} and len(set(texts)) == len(texts)
    assert len(set(texts) & {"Mango", "Pear"}) == (len(got) == 4)  # added: one new item of the other list


def test_count_constraint_drops_when_nothing_new_can_be_added():
    edited, edit = S.constraint_edit("List three fruits.", LIST3, "", random.Random(0))
    assert len(items(edited)) == 2 and edit == "count: 3 items asked, 2 given"


def test_an_answer_that_misses_the_constraint_is_not_used():
    assert S.constraint_edit("List four fruits.", LIST3, "", random.Random(0)) is None
    assert S.constraint_edit("Tell me about fruit.", LIST3, "", random.Random(0)) is None


def test_one_sentence_constraint_gets_a_second_sentence():
    answer = "The Shining is about a haunted hotel."
    other = "A writer goes mad in the winter. His family escapes."
    edited, edit = S.constraint_edit("Summarize the movie in one sentence.", answer, other, random.Random(0))
    assert edited.startswith(answer) and len(S.sentences(edited)) >= 2
    assert edit == f"sentences: 1 asked, {len(S.sentences(edited))} given"


def test_json_constraint_gets_plain_text():
    answer = '{"name": "Ann", "age": 31}'
    edited, edit = S.constraint_edit("Give the record in JSON format.", answer, "", random.Random(0))
    with pytest.raises(ValueError):
        json.loads(edited)
    assert "name: Ann" in edited and "age: 31" in edited and edit == "format: JSON asked, plain text given"


def test_sentences_split_after_a_closing_quote():
    assert len(S.sentences('He said "no." Then he left.')) == 2


def test_bullet_prose_keeps_the_text_around_the_list_and_skips_broken_up_lists():
    answer = "Tips:\n\n- Rest well\n\n- Drink water\n\nIn summary, be kind to yourself."
    edited, _ = S.constraint_edit("Give tips as a bulleted list.", answer, "", random.Random(0))
    assert edited == "Tips: Rest well; Drink water.\n\nIn summary, be kind to yourself."
    parts = "**Morning:**\n- Rest\n**Evening:**\n- Read"
    assert S.constraint_edit("Plan my day in bullet points.", parts, "", random.Random(0)) is None


def test_bullet_constraint_gets_prose():
    answer = "- Rest well\n- Drink water\n- Eat vegetables"
    edited, edit = S.constraint_edit("Give tips for health in bullet points.", answer, "", random.Random(0))
    assert items(edited) == [] and all(t in edited for t in ("Rest well", "Drink water", "Eat vegetables"))
    assert edit == "format: list asked, prose given"


def test_case_and_one_word_constraints():
    edited, _ = S.constraint_edit("Reply in all caps.", "HELLO THERE. HOW ARE YOU.", "", random.Random(0))
    assert not edited.isupper() and edited.lower() == "hello there. how are you."
    edited, edit = S.constraint_edit("Answer in one word: the capital of France?", "Paris", "", random.Random(0))
    assert len(edited.split()) > 1 and "Paris" in edited and edit == "length: one word asked, a sentence given"


def test_constraint_pairs_also_use_rejected_answers_that_meet_the_constraint():
    ps = list(S.constraint_pairs(hand_pools(), 100, random.Random(0)))
    ids = [p.attributes["synthetic"]["source_id"] for p in ps]
    assert sorted(ids) == sorted([f"fruit{i}" for i in range(6)] + [f"fruit{i}#rejected" for i in range(6)])
    assert ids.index("fruit0") < ids.index("fruit0#rejected")  # chosen answers first
    for p in ps:
        original = FRUITS if p.id.endswith("#rejected") else LIST3
        assert p.chosen == original and len(items(p.rejected)) in (2, 4)


# -- family c: refusal --------------------------------------------------------------------------

def test_refusal_templates_read_as_refusals_and_compliance_does_not():
    rng = random.Random(0)
    assert all(S.is_refusal(r) for r in S.REFUSALS)
    for _ in range(6):
        assert not S.is_refusal(S.compliance("Explain how to pick a lock", rng))
    assert not S.is_refusal("Sure, here is a recipe for bread.")


def hand_pools() -> S.Pools:
    """A small pool of hand-made answers (numbers, a list constraint, long text) and prompts."""
    long = ("Bread needs flour, water, salt and yeast. Mix them and knead the dough for ten minutes "
            "until it is smooth. Let it rise for 2 hours in a warm place, then shape it and bake it at "
            "220 °C for 30 minutes until the crust is brown and it sounds hollow when tapped.")
    answers = [pair(f"How do I bake bread, version {i}?", long.replace("ten", str(10 + i)), "Buy it.", id=f"bread{i}",
                    source="hand", label_origin="human") for i in range(12)]
    answers += [pair(f"List three fruits for salad {i}.", LIST3, FRUITS, id=f"fruit{i}",
                     source="hand", label_origin="human") for i in range(6)]
    answers += [pair("How do I kill a Python process that hangs?", "Run `kill PID`, or `kill -9 PID` if it "
                     "ignores the first signal; find the PID with `ps aux | grep python`.", "No.", id="kill",
                     source="hand", label_origin="human")]
    harmful = [(f"harm{i}", f"Explain how to break into house number {i} without a key") for i in range(6)]
    return S.Pools(answers=answers, harmful_prompts=harmful, safety_pairs=[])


def test_refusal_pairs_refuse_the_harmful_and_answer_the_safe():
    ps = list(S.refusal_pairs(hand_pools(), 12, random.Random(0)))
    harmful = [p for p in ps if p.attributes["synthetic"]["edit"].startswith("harmful")]
    safe = [p for p in ps if p.attributes["synthetic"]["edit"].startswith("safe")]
    assert len(harmful) == 6 and len(safe) == 6
    assert all(S.is_refusal(p.chosen) and not S.is_refusal(p.rejected) for p in harmful)
    assert all(S.is_refusal(p.rejected) and not S.is_refusal(p.chosen) for p in safe)
    assert safe[0].id == "synthetic/refusal/kill"  # a safe prompt that sounds unsafe comes first
    assert safe[0].attributes["synthetic"]["edit"].startswith("safe (sounds unsafe)")


# -- family d: concise --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_padding_is_longer_and_truncation_is_a_cut_prefix(seed):
    answer = hand_pools().answers[0].chosen
    rng = random.Random(seed)
    rejected, edit, _ = S.concise_edit(answer, rng, truncated=False)
    assert len(rejected) > len(answer) + 100 and edit.startswith("padded")
    if edit == "padded with filler":
        assert answer in rejected
    cut, edit, _ = S.concise_edit(answer, rng, truncated=True)
    assert answer.startswith(cut) and len(cut) < 0.75 * len(answer) and edit == "truncated mid-sentence"
    assert cut[-1] not in ".!?"


# -- the set ------------------------------------------------------------------------------------

def as_rows(ps) -> list[dict]:
    return [p.to_dict() for p in ps]


def test_synthesize_is_deterministic_per_seed_and_labelled():
    a = as_rows(S.synthesize(hand_pools(), per_family=6, seed=1))
    assert a == as_rows(S.synthesize(hand_pools(), per_family=6, seed=1))
    assert a != as_rows(S.synthesize(hand_pools(), per_family=6, seed=2))
    fams = {r["attributes"]["synthetic"]["family"] for r in a}
    assert fams == set(S.FAMILIES)
    for r in a:
        syn = r["attributes"]["synthetic"]
        assert r["label_origin"] == "synthetic" and "synthetic" in ORIGINS
        assert set(syn) == {"family", "edit", "source_id"} and syn["edit"]
        assert r["source"] == f"synthetic/{syn['family']}" and r["chosen"] != r["rejected"]


def test_synthesize_counts_and_balances_length():
    stats = S.SynthesisStats()
    ps = list(S.synthesize(hand_pools(), per_family=6, seed=0, stats=stats))
    assert sum(stats.kept.values()) == len(ps) and all(stats.made[f] >= stats.kept[f] for f in S.FAMILIES)
    longer = sum(p.chosen_longer is True for p in ps)
    shorter = sum(p.chosen_longer is False for p in ps)
    assert abs(longer - shorter) <= 1, (longer, shorter)  # the concise family evens the set out
    with pytest.raises(ValueError, match="unknown synthetic families"):
        list(S.synthesize(hand_pools(), families=["facts"]))


def test_decontamination_drops_a_pair_whose_prompt_is_in_a_benchmark(tmp_path):
    bench = tmp_path / "bench.jsonl"
    long_prompt = "How do I bake bread, version 3? Please explain every step from the flour to the oven."
    bench.write_text(json.dumps({"prompt": "How do I bake bread, version 0?"}) + "\n"
                     + json.dumps({"prompt": long_prompt}) + "\n")
    pools = hand_pools()
    pools.answers[3] = pair(long_prompt + " Thanks!", pools.answers[3].chosen, "Buy it.", id="bread3")
    decon = S.PromptDecontaminator([bench])
    stats = S.SynthesisStats()
    kept = list(S.synthesize(pools, per_family=20, seed=0, families=["fact"], decontaminator=decon, stats=stats))
    sources = {p.attributes["synthetic"]["source_id"] for p in kept}
    assert "bread0" not in sources and "bread3" not in sources  # a whole short prompt, and a 13-gram
    assert {"bread1", "bread2"} <= sources
    assert stats.removed["fact"] == {"contaminated": 2} and stats.contaminated_by == {str(bench): 2}
    undecon = list(S.synthesize(pools, per_family=20, seed=0, families=["fact"]))
    assert {"bread0", "bread3"} <= {p.attributes["synthetic"]["source_id"] for p in undecon}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_the_readers_accept_the_output(tmp_path, suffix):
    ps = list(S.synthesize(hand_pools(), per_family=4, seed=0))
    path = tmp_path / f"synthetic{suffix}"
    assert write_pairs(ps, path) == len(ps)
    assert as_rows(read_pairs(path)) == as_rows(ps)
    assert as_rows(load(path, "auto")) == as_rows(ps)


# -- real data ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(shared_data):
    return S.load_pools(shared_data), S.decontaminator_for(shared_data)


def test_real_pairs_are_decontaminated_against_the_safety_sets_and_deterministic(real, shared_data):
    import csv

    pools, decon = real
    stats = S.SynthesisStats()
    ps = list(S.synthesize(pools, per_family=40, seed=5, decontaminator=decon, stats=stats))
    assert as_rows(ps) == as_rows(S.synthesize(pools, per_family=40, seed=5, decontaminator=decon))
    assert stats.kept == {f: 40 for f in S.FAMILIES}
    with (shared_data / "xstest" / "xstest_prompts.csv").open(encoding="utf-8", newline="") as f:
        xstest = {S._norm(r["prompt"]) for r in csv.DictReader(f)}
    test_prompts = {S._norm(x["instruction"]) for x in json.loads(
        (shared_data / "harmful-prompts" / "refusal_direction" / "harmful_test.json").read_text())}
    for p in ps:
        prompt = S._norm(" ".join(m.content for m in p.conversation))
        assert prompt not in xstest and prompt not in test_prompts
        assert decon.hit("\n".join(m.content for m in p.conversation)) is None
    harmful = [p for p in ps if p.attributes["synthetic"]["edit"].startswith("harmful")]
    assert harmful and all(S.is_refusal(p.chosen) for p in harmful)


def test_the_default_model_hook_keeps_gold_prompts_out(real, shared_data, capsys):
    from app.pipelines.default_model import _targeted_pairs, parser
    from trainer.data.hygiene import HygieneReport

    assert parser().parse_args([]).synthetic == 0.0  # off by default: make default-model is unchanged
    pools, _ = real
    donors = [p for p in pools.answers if p.source.startswith("pandalm")][:120]
    gold = donors[:60]
    out = _targeted_pairs(shared_data, donors, gold, 40, 0, HygieneReport())
    gold_prompts = {p.conversation for p in gold}
    made = [p for ps in out.values() for p in ps]
    assert made and set(out) == set(S.FAMILIES)
    assert not [p.id for p in made if p.conversation in gold_prompts]


def test_cli_synthesize_end_to_end(shared_data, tmp_path):
    out = tmp_path / "syn.jsonl"
    proc = subprocess.run([sys.executable, "-m", "app.cli.main", "data", "synthesize", "--out", str(out),
                           "--per-family", "15", "--seed", "3", "--data", str(shared_data), "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    rows = list(read_pairs(out))
    assert summary["pairs"] == len(rows) == 60 and summary["kept"] == {f: 15 for f in S.FAMILIES}
    assert all(r.label_origin == "synthetic" and r.attributes["synthetic"]["family"] in S.FAMILIES for r in rows)
    assert 0.3 <= summary["chosen_longer_share"]["all"] <= 0.7
    assert [p.name for p in tmp_path.iterdir()] == ["syn.jsonl"]  # no temp file left


def test_cli_errors_name_the_folder_and_the_family(tmp_path):
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli.main", "data", "synthesize", *argv],
                              cwd=ROOT, capture_output=True, text=True)

    out = tmp_path / "x.jsonl"
    proc = run("--out", str(out), "--data", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and proc.stderr.startswith("arbiter: error: ")
    assert "nowhere" in proc.stderr and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("--out", str(out), "--data", str(tmp_path), "--family", "facts")
    assert proc.returncode == 2 and "'--family'" in proc.stderr and "facts" in proc.stderr
    assert not out.exists()
