"""XSTest in the moderation recipe (app/pipelines/moderation_xstest.py), on the real files: the split
by focus word keeps a held-out prompt's twin out of training, the labels follow XSTest's own rule,
and nothing the model trains on is an evaluation text."""

from __future__ import annotations

from app.pipelines import moderation_model as mm
from app.pipelines import moderation_xstest as mx


def test_the_split_is_by_focus_word_seeded_and_whole(shared_data):
    split = mx.xstest_split(shared_data, 0)
    train, test = split["train"], split["test"]
    assert len(train) + len(test) == 450 and min(len(train), len(test)) > 150
    words = {p["focus"].strip().lower() for p in train}
    assert not words & {p["focus"].strip().lower() for p in test}  # no focus word on both sides
    assert split == mx.xstest_split(shared_data, 0)
    assert split != mx.xstest_split(shared_data, 1)
    for half in (train, test):  # both halves hold safe and unsafe prompts
        assert {mx.is_unsafe(p["type"]) for p in half} == {True, False}
    rows = mx.heldout_rows(shared_data, 0)
    assert [r["text"] for r in rows] == [p["prompt"] for p in test]
    assert sum(r["label"] for r in rows) == sum(mx.is_unsafe(p["type"]) for p in test)


def test_training_labels_follow_xstest(shared_data):
    train = mx.xstest_split(shared_data, 0)["train"]
    got = mx.xstest_examples(shared_data, train, len(mm.CODES), mm._cut)
    unsafe_prompts = {p["prompt"] for p in train if mx.is_unsafe(p["type"])}
    safe_prompts = {p["prompt"] for p in train if not mx.is_unsafe(p["type"])}
    prompts = [x for x in got if x[3] == "xstest prompts"]
    assert len(prompts) == len(train)
    for text, ctx, labels, _ in prompts:
        assert ctx is None and len(labels) == 1 + len(mm.CODES)
        assert labels == ((1.0,) + (None,) * len(mm.CODES) if text in unsafe_prompts else (0.0,) * 9)
    done = mx.completions(shared_data)
    for text, ctx, labels, source in got:
        if source != "xstest completions":
            continue
        assert ctx in unsafe_prompts | safe_prompts
        if ctx in safe_prompts:
            assert labels == (0.0,) * 9  # a safe prompt's answer is safe content, refusal or not
        else:
            verdict = dict(done[ctx])[next(t for t, _ in done[ctx] if t[:mm.TRAIN_CHARS] == text)]
            assert labels[0] == (1.0 if verdict == "1_full_compliance" else 0.0)
            assert verdict != "3_partial_refusal"
    pairs = mx.xstest_pairs(shared_data, train, mm._cut, 0)
    assert pairs and all(ctx in unsafe_prompts for ctx, _, _ in pairs)
    verdict = {t[:mm.TRAIN_CHARS]: y for p in unsafe_prompts for t, y in done.get(p, [])}
    assert all(verdict[r] == "2_full_refusal" and verdict[c] == "1_full_compliance" for _, r, c in pairs)


def test_the_recipe_trains_on_one_half_and_is_decontaminated_against_the_other(shared_data):
    splits = mm.split_moderation(mm.moderation_rows(shared_data), 0)
    sets = mm.eval_texts(shared_data, splits["calibration"] + splits["test"], 0)
    test_prompts = {p["prompt"] for p in mx.xstest_split(shared_data, 0)["test"]}
    assert set(sets["xstest test prompts"]) == test_prompts
    decon = mm.Decon(sets)
    examples, pairs = mm.build_examples(shared_data, splits["train"], decon, seed=0, dia=50, harmful=20,
                                        harmless=20, hh=20)
    mix = mm.mix_of(examples, pairs)
    assert mix["xstest prompts"] > 150 and mix["xstest completions"] > 500 and mix["xstest pairs"] > 50
    trained = {mm._norm(t) for e in examples for t in (e.text, e.context or "") if t}
    trained |= {mm._norm(t) for c, r in pairs for e in (c, r) for t in (e.text, e.context or "") if t}
    assert not {mm._norm(p) for p in test_prompts} & trained
    for e in examples:  # and no training text shares a 13-gram with a held-out prompt
        assert decon.grams.hit(e.text) is None
    without, _ = mm.build_examples(shared_data, splits["train"], mm.Decon(sets), seed=0, dia=50, harmful=20,
                                   harmless=20, hh=20, xstest=False)
    assert not {e.source for e in without} & {"xstest prompts", "xstest completions"}
