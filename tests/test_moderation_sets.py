"""The moderation model's extra evaluation sets (app/pipelines/moderation_sets.py) on the real data:
every row held out from what the model trained on, labels 0/1, the same harmless rows beside each
harmful set, and the same files on a second run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.pipelines import moderation_model as mm
from app.pipelines import moderation_sets as ms


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sets_are_held_out_labelled_and_reproducible(shared_data, tmp_path):
    assert ms.main(["--data", str(shared_data), "--out", str(tmp_path / "a")]) == 0
    stats = json.loads((tmp_path / "a" / "sets.json").read_text())["sets"]
    train = {mm._norm(t) for t in ms.training_texts(shared_data)}
    held = ms.Held(ms.training_texts(shared_data))
    for name, s in stats.items():
        rows = _rows(Path(s["path"]))
        assert len(rows) == s["rows"] and sum(r["label"] for r in rows) == s["unsafe"]
        assert {r["label"] for r in rows} <= {0, 1}
        assert not any(mm._norm(r["text"]) in train or held.trained_on(r["text"]) for r in rows), name
    # the check has teeth: TDC 2023's training behaviours include some of HarmBench's test ones,
    # and every training text is caught
    assert stats["harmbench"]["dropped_trained_on"] >= 1
    texts = ms.training_texts(shared_data)
    assert all(held.trained_on(t) for t in texts[:: max(1, len(texts) // 50)])
    assert stats["xstest"]["rows"] > 150  # XSTest's held-out half, not the whole file
    benign = [sorted(r["text"] for r in _rows(Path(stats[n]["path"])) if r["label"] == 0)
              for n in ("harmbench", "advbench", "strongreject", "maliciousinstruct", "harmful-all")]
    assert all(b == benign[0] for b in benign) and len(benign[0]) == ms.HARMLESS_ROWS
    assert ms.main(["--data", str(shared_data), "--out", str(tmp_path / "b")]) == 0
    for name in stats:
        a, b = (hashlib.sha256((tmp_path / d / f"{name}.jsonl").read_bytes()).hexdigest() for d in "ab")
        assert a == b, name
