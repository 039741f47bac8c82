"""Curation stage 2 (trainer/curate/stage2.py): the decision table, the band, shards, real runs.

The runs score with the built-in default model's two real copies (ONNX int8 as the gold RM,
GGUF q8_0 as the current RM) and judge with tests/judge_helpers.RuleJudge, a deterministic
judge that reads the prompt (the marker word "indeed" wins; "unsure" makes it answer
nothing usable, so it abstains). Every pool question comes twice, once with the right answer
as chosen and once mirrored, so whatever the models' exact scores, exactly one of the two has
gold_p > 0.5 (the same two items, swapped).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import InputError
from trainer.curate.stage2 import (
    BAND_GRID,
    Decision,
    Shard,
    Stage2Config,
    decide,
    local_scored_chunks,
    measure_band,
    needs_judges,
    run_stage2,
    shards_of,
)
from trainer.curate.stage2_store import Stage2Store
from trainer.data import pair, read_pairs, write_pairs

# -- the decision table (pure) -------------------------------------------------------------------

BAND = 0.25  # exact in binary, so 0.5 + BAND is exactly 0.75
GOLD = {"agrees": 0.8, "disagrees": 0.3, "at_half": 0.5, "unscored": None}
CURRENT = {"confident": 0.9, "band_edge": 0.75, "in_band": 0.6, "below": 0.2, "unscored": None}
JUDGE = ("1", "2", "tie", None)


def _expected(gold: str, current: str, label: str | None, judged: bool) -> tuple[str, str, bool]:
    """(decision, reason, judges asked) written out from the contract, case by case."""
    if gold == "unscored" or current == "unscored":
        return "unscored", "too_long", False
    if gold in ("disagrees", "at_half"):  # gold_p <= 0.5: discarded, judges never asked
        return "discarded", "gold_disagrees", False
    if current == "confident":
        return "kept", "gold+current", False
    # gold agrees, current unconfident (in the band, on its edge, or below 0.5)
    if not judged:
        return "discarded", "no_judge", True
    return {"1": ("kept", "gold+judges", True), "2": ("discarded", "judges_disagree", True),
            "tie": ("discarded", "judges_tie", True), None: ("discarded", "judges_abstain", True)}[label]


@pytest.mark.parametrize("judged", [True, False], ids=["judges", "no_judge"])
@pytest.mark.parametrize("label", JUDGE, ids=["j1", "j2", "jtie", "jnone"])
@pytest.mark.parametrize("current", list(CURRENT))
@pytest.mark.parametrize("gold", list(GOLD))
def test_the_decision_table(gold, current, label, judged):
    decision, reason, _ = _expected(gold, current, label, judged)
    got = decide(GOLD[gold], CURRENT[current], label, band=BAND, judged=judged)
    assert got == Decision(decision, reason)


@pytest.mark.parametrize("gold", list(GOLD))
@pytest.mark.parametrize("current", list(CURRENT))
def test_judges_are_asked_exactly_where_filter_a_sends_the_pair(gold, current):
    asked = _expected(gold, current, None, True)[2]
    assert needs_judges(GOLD[gold], CURRENT[current], BAND) is asked


def test_the_band_edges():
    """Confident means strictly above 0.5 + band; band 0 makes every p > 0.5 confident."""
    assert decide(0.9, 0.5, None, band=0.0, judged=False) == Decision("discarded", "no_judge")
    assert decide(0.9, 0.5000001, None, band=0.0, judged=False) == Decision("kept", "gold+current")
    assert decide(0.9, 0.75, "2", band=0.25, judged=True).reason == "judges_disagree"
    assert decide(0.9, 0.7500001, "2", band=0.25, judged=True).reason == "gold+current"
    assert decide(0.5000001, 0.9, None, band=0.25, judged=True).reason == "gold+current"
    with pytest.raises(ValueError, match="judge_label"):
        decide(0.9, 0.6, "both_bad", band=0.25, judged=True)


# -- the band ------------------------------------------------------------------------------------

def test_measure_band_picks_the_smallest_band_that_reaches_the_target():
    # 8 right and sure (0.875), 2 wrong close to 0.5 (0.4375: 0.0625 from it, exact in binary)
    ps = [0.875] * 8 + [0.4375] * 2
    choice = measure_band(ps, target=0.9, min_pairs=1)
    table = {r["band"]: r for r in choice.table}
    assert [r["band"] for r in choice.table] == list(BAND_GRID) and len(BAND_GRID) == 13
    assert BAND_GRID[0] == 0.0 and BAND_GRID[1] == 0.025 and BAND_GRID[-1] == 0.3
    assert table[0.0]["accuracy"] == pytest.approx(0.8) and table[0.0]["coverage"] == 1.0
    assert table[0.05]["accuracy"] == pytest.approx(0.8)  # 0.0625 > 0.05: the wrong ones still outside
    assert (choice.band, choice.accuracy, choice.coverage, choice.reached) == (0.075, 1.0, 0.8, True)
    assert measure_band(ps, target=0.8, min_pairs=1).band == 0.0  # reached at once
    # by default a band needs MIN_BAND_PAIRS (30) gold pairs outside it: 8 are too few to measure
    assert measure_band(ps, target=0.9).reached is False
    many = measure_band(ps * 4, target=0.9)  # 32 outside from band 0.075 on
    assert (many.band, many.reached, table[0.075]["pairs"]) == (0.075, True, 8)
    assert table[0.3]["accuracy"] == 1.0 and table[0.3]["coverage"] == pytest.approx(0.8)


def test_measure_band_when_no_band_reaches_the_target():
    wrong = measure_band([0.125] * 5 + [0.875], target=0.9, min_pairs=1)
    assert (wrong.band, wrong.reached) == (0.3, False)
    assert wrong.accuracy == pytest.approx(1 / 6) and wrong.coverage == 1.0
    # nothing outside any band: no accuracy anywhere, never reached
    near = measure_band([0.5, 0.51, 0.49], target=0.9, min_pairs=1)  # band 0: accuracy 0.5; above: none outside
    assert near.reached is False and near.band == 0.3 and near.accuracy is None and near.coverage == 0.0
    empty = measure_band([], target=0.9)
    assert empty.reached is False and all(r["accuracy"] is None for r in empty.table)
    with pytest.raises(InputError, match="probability"):
        measure_band([0.5, 1.5])
    with pytest.raises(InputError, match="probability"):
        measure_band([float("nan")])


# -- shards ----------------------------------------------------------------------------------------

def _pairs(prefix: str, n: int) -> list:
    return [pair(f"Question {prefix}{i}?", f"answer {i}", f"other {i}", id=f"{prefix}{i}") for i in range(n)]


def test_shards_of_files_and_folders(tmp_path):
    d = tmp_path / "pool"
    for name in ("b.parquet", "a.jsonl", "c.jsonl.gz"):
        write_pairs(_pairs(name[0], 2), d / name)
    (d / "notes.txt").write_text("not a shard")
    extra = tmp_path / "z.jsonl"
    write_pairs(_pairs("z", 1), extra)
    got = shards_of([extra, d, d / "a.jsonl"])  # a file named again counts once
    assert got == [Shard("00000-z", extra), Shard("00001-a", d / "a.jsonl"), Shard("00002-b", d / "b.parquet"),
                   Shard("00003-c", d / "c.jsonl.gz")]
    assert shards_of([extra, d]) == got  # stable
    with pytest.raises(InputError, match="no such file"):
        shards_of([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .jsonl"):
        shards_of([tmp_path / "empty"])


# -- real runs -------------------------------------------------------------------------------------

QUESTIONS = [  # (question, right answer, wrong answer); "indeed" is the judge's marker
    ("What is 2+2?", "2+2 is indeed 4.", "2+2 is 5."),
    ("What is the capital of France?", "The capital of France is indeed Paris.", "I think it is Berlin."),
    ("Name a prime number.", "7 is a prime number.", "8 is a prime number."),
    ("Say hello politely.", "Hello! How can I help you today?", "Go away."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs, unsure."),
    ("What colour is the sky on a clear day?", "It is indeed blue.", "It is green."),
    ("Translate 'gracias' to English.", "'Gracias' means 'thank you'.", "It means 'goodbye'."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "50 degrees Celsius, unsure."),
    ("Who wrote Hamlet?", "William Shakespeare indeed wrote Hamlet.", "Charles Dickens wrote Hamlet."),
    ("What is 10 divided by 2?", "10 divided by 2 is 5.", "It is 3."),
    ("Give me a synonym for happy.", "Joyful is indeed a synonym for happy.", "Sad."),
    ("What is H2O?", "H2O is water.", "H2O is salt."),
]


def pool_pairs() -> list:
    """Each question right-way-round (a) and mirrored (b), and one pair too long to score."""
    out = []
    for i, (q, right, wrong) in enumerate(QUESTIONS):
        out += [pair(q, right, wrong, id=f"a{i}", source="test", label_origin="llm"),
                pair(q, wrong, right, id=f"b{i}", source="test", label_origin="llm")]
    out.insert(5, pair("Write a long essay.", "word " * 3000, "short", id="long"))
    return out


def gold_pairs() -> list:
    return [pair(q, right, wrong, id=f"g{i}", label_origin="human") for i, (q, right, wrong) in enumerate(QUESTIONS)]


def judge_rule(one: str, two: str, seed: int) -> str:
    from tests.judge_helpers import verdict

    if "unsure" in one or "unsure" in two:
        return "no answer"
    a, b = "indeed" in one, "indeed" in two
    return verdict("1" if a and not b else "2" if b and not a else "tie")


def write_pool(folder: Path) -> list[Path]:
    """Three shards: JSONL, gzipped JSONL (a blank line in it), Parquet."""
    pairs = pool_pairs()
    write_pairs(pairs[:9], folder / "s1.jsonl")
    lines = [json.dumps(p.to_dict()) for p in pairs[9:17]]
    with gzip.open(folder / "s2.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    write_pairs(pairs[17:], folder / "s3.parquet")
    return [folder / "s1.jsonl", folder / "s2.jsonl.gz", folder / "s3.parquet"]


def models() -> tuple[Path, Path]:
    from engine.registry import default_model_path

    gold, current = default_model_path("onnx"), default_model_path("gguf")
    if gold is None or current is None:
        pytest.fail("the built-in default model (ONNX and GGUF) is part of the package")
    return gold, current


def config(tmp_path: Path, out: Path, **kw) -> Stage2Config:
    gold_rm, current_rm = models()
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_pool(data)
        write_pairs(gold_pairs(), data / "gold.jsonl")
    opts = {"band": 0.01, "chunk_rows": 3, "batch_size": 8, "threads": 1, **kw}
    return Stage2Config(pool=[data / "s1.jsonl", data / "s2.jsonl.gz", data / "s3.parquet"],
                        gold=[data / "gold.jsonl"], gold_rm=gold_rm, current_rm=current_rm, out=out, **opts)


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*")) if p.parent.name != "tmp"}


def decisions(out: Path) -> list[tuple]:
    store = Stage2Store(out)
    try:
        return store.db.execute("select * from decisions order by shard, row").fetchall()
    finally:
        store.close()


def test_scored_chunks_stream_the_shard(tmp_path):
    """The first chunk comes before the reader reaches a bad last row: never a whole shard held."""
    import engine

    gold_rm, current_rm = models()
    path = tmp_path / "big.jsonl"
    write_pairs(pool_pairs()[:7], path)
    with path.open("a") as f:
        f.write('{"id": "broken", "chosen": "x"}\n')
    with engine.load(gold_rm) as g, engine.load(current_rm, threads=1) as c:
        chunks = local_scored_chunks(Shard("00000-big", path), 2, g, c, 2, 4)
        first = next(chunks)
        assert [s.row for s in first] == [3, 4]  # the rows after start_row 2
        assert all(s.shard == "00000-big" for s in first)
        assert all(0.0 < s.gold_p < 1.0 and 0.0 < s.current_p < 1.0 for s in first)
        assert [s.row for s in next(chunks)] == [5, 6]
        with pytest.raises(InputError, match=r"big\.jsonl:8: field 'rejected'"):
            list(chunks)


def test_a_run_over_jsonl_and_parquet_shards(tmp_path, embedder_dir):
    from tests.judge_helpers import RuleJudge

    out = tmp_path / "out"
    judge = RuleJudge("rule", judge_rule)
    cfg = config(tmp_path, out, judges=[judge], embedder=embedder_dir)
    summary = run_stage2(cfg)
    pool = {p.id: p for p in pool_pairs()}
    rows = decisions(out)
    assert len(rows) == len(pool) == summary.rows == 25
    by_id = {r[2]: r for r in rows}
    assert by_id["long"][3:5] == ("unscored", "too_long") and by_id["long"][5] is None
    for _shard, _row, pid, dec, reason, gold_p, current_p, label, votes, rnd in rows:
        judged = needs_judges(gold_p, current_p, cfg.band)
        assert (votes is not None) == judged, pid  # the judges were asked exactly where Filter A says
        assert decide(gold_p, current_p, label, band=cfg.band, judged=True) == Decision(dec, reason), pid
        assert rnd == 1
    for i in range(len(QUESTIONS)):  # the mirror: exactly one of a/b has the gold RM's agreement
        a, b = by_id[f"a{i}"][5], by_id[f"b{i}"][5]
        assert a == pytest.approx(1 - b, abs=1e-6)
    reasons = summary.reasons
    assert sum(reasons.values()) == 25 and reasons["too_long"] == 1 and reasons["gold_disagrees"] >= 11
    assert summary.judged == sum(1 for r in rows if r[8] is not None)
    kept = [p for f in sorted((out / "kept").iterdir()) for p in read_pairs(f)]
    flipped = [p for f in sorted((out / "flipped").iterdir()) for p in read_pairs(f)]
    assert [f.name for f in sorted((out / "kept").iterdir())] == ["00000-s1.jsonl", "00001-s2.jsonl",
                                                                  "00002-s3.jsonl"]
    assert [p.id for p in kept] == [r[2] for r in rows if r[3] == "kept"]  # input order, shard by shard
    assert [p.id for p in flipped] == [r[2] for r in rows if r[3] == "discarded"]
    assert not {p.id for p in kept} & {p.id for p in flipped}
    assert (summary.kept, summary.discarded, summary.flipped, summary.unscored) == (
        len(kept), len(flipped), len(flipped), 1)
    for p in kept:
        src, info = pool[p.id], p.attributes["curation"]
        assert (p.chosen, p.rejected, p.label_origin) == (src.chosen, src.rejected, "llm")
        assert info["stage"] == 2 and info["decision"] == "kept" and info["round"] == 1
        assert info["reason"] == by_id[p.id][4] and info["gold_p"] == by_id[p.id][5]
    for p in flipped:
        src, info = pool[p.id], p.attributes["curation"]
        assert (p.chosen, p.rejected, p.label_origin) == (src.rejected, src.chosen, "flipped")
        assert info["decision"] == "discarded" and info["current_p"] == by_id[p.id][6]
        if info["votes"] is not None:
            assert {v["judge"] for v in info["votes"]} == {"rule"} and {v["order"] for v in info["votes"]} == {
                "ab", "ba"}
    store = Stage2Store(out)
    try:
        shards = store.shards()
        meta = store.all_meta()
    finally:
        store.close()
    assert [(s["name"], s["state"], s["rows"]) for s in shards] == [
        ("00000-s1", "done", 9), ("00001-s2", "done", 8), ("00002-s3", "done", 8)]
    assert shards[1]["position"] == 9  # the gzipped shard's last line: the blank line counts as a line
    assert sum(s["flipped"] for s in shards) == summary.flipped
    assert meta["judges"] == ["rule"] and meta["round"] == 1 and meta["band"]["band"] == 0.01
    assert len(meta["band"]["table"]) == 13 and meta["band"]["measured_on"]["pairs"] == len(QUESTIONS)
    assert set(meta["models"]) == {"gold_rm", "current_rm"} and len(meta["models"]["gold_rm"]["sha256"]) == 64
    # a rerun of the finished run asks nothing, changes nothing
    before = outputs(out)
    again = run_stage2(config(tmp_path, out, judges=[RuleJudge("rule", judge_rule)], embedder=embedder_dir))
    assert again.calls_made == 0 and again.judged == 0 and outputs(out) == before and decisions(out) == rows


def test_no_judges_no_recycling_parquet_and_auto_band(tmp_path):
    """Without judges an unconfident pair is discarded (no_judge) and no embedder is needed; with
    --no-recycle nothing is flipped; band auto is measured on gold and stored with its table."""
    out = tmp_path / "out"
    logs: list[str] = []
    summary = run_stage2(config(tmp_path, out, band="auto", recycle=False, output_format="parquet"),
                         progress=logs.append)
    assert not (out / "flipped").exists() and not (out / "embeddings.db").exists()
    assert sorted(f.name for f in (out / "kept").iterdir()) == ["00000-s1.parquet", "00001-s2.parquet",
                                                                "00002-s3.parquet"]
    assert summary.flipped == 0 and summary.judged == 0
    assert not {"gold+judges", "judges_disagree", "judges_tie", "judges_abstain"} & set(summary.reasons)
    store = Stage2Store(out)
    try:
        band = store.meta("band")
    finally:
        store.close()
    assert band["band"] == summary.band and band["setting"] == "auto" and band["target"] == 0.9
    assert [r["band"] for r in band["table"]] == list(BAND_GRID)
    chosen = next(r for r in band["table"] if r["band"] == band["band"])
    if band["reached"]:
        assert chosen["accuracy"] >= 0.9
    else:  # said so, and the largest grid value used
        assert band["band"] == 0.3 and any("no band up to 0.3" in x for x in logs)
    kept = [p for f in sorted((out / "kept").iterdir()) for p in read_pairs(f)]
    assert len(kept) == summary.kept and all(p.attributes["curation"]["decision"] == "kept" for p in kept)


def test_the_scored_chunks_seam_gives_the_local_outputs(tmp_path):
    """What the Ray path plugs into: the driver asks for each shard's chunks from position 0 and
    decides, writes and measures the band (on the driver) exactly as the local path does."""
    import engine

    ref_out, seam_out = tmp_path / "ref", tmp_path / "seam"
    run_stage2(config(tmp_path, ref_out, band="auto"))
    gold_rm, current_rm = models()
    asked: list[tuple[str, int, int]] = []
    with engine.load(gold_rm, threads=1) as g, engine.load(current_rm, threads=1) as c:
        def chunks(shard, start, rows):
            asked.append((shard.name, start, rows))
            return local_scored_chunks(shard, start, g, c, rows, 8)

        run_stage2(config(tmp_path, seam_out, band="auto"), scored_chunks=chunks)
    assert asked == [("00000-s1", 0, 3), ("00001-s2", 0, 3), ("00002-s3", 0, 3)]
    assert outputs(seam_out) == outputs(ref_out) and decisions(seam_out) == decisions(ref_out)
    bands = []
    for out in (ref_out, seam_out):
        store = Stage2Store(out)
        try:
            bands.append(store.meta("band"))
        finally:
            store.close()
    assert bands[0] == bands[1] and bands[0]["measured_on"]["pairs"] == len(QUESTIONS)


def test_a_resumed_run_must_be_the_same_run(tmp_path):
    out = tmp_path / "out"
    run_stage2(config(tmp_path, out))
    with pytest.raises(InputError, match=r"other settings \(band, recycle differ\)"):
        run_stage2(config(tmp_path, out, band=0.2, recycle=False))


def test_a_bad_pool_row_stops_the_run_before_anything_is_written(tmp_path):
    cfg = config(tmp_path, tmp_path / "out")
    bad = tmp_path / "data" / "s1.jsonl"
    text = bad.read_text().splitlines()
    text[3] = text[3].replace('"chosen"', '"chosen_"')
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"s1\.jsonl:4: field 'chosen'"):
        run_stage2(cfg)
    assert not (tmp_path / "out").exists()


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    """A writer killed mid-file leaves its temp file; the next run removes it (its pid is dead)."""
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / "tmp" / f"kept-00000-s1.{dead.pid}.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"half a line')
    run_stage2(config(tmp_path, out))
    assert not stale.exists() and list((out / "tmp").iterdir()) == []

