"""ONNX prompt sharing: Best-of-N and compare run the conversation once (model_with_past.onnx).

fp32: the prompt-shared scores equal full scoring within 1e-3 (measured: equal to the
last bit on the tiny models) and torch within 1e-4. int8 (static: fixed activation
scales) shares by default too and equals int8 full scoring within 1e-4; it is held to
rankings against torch. Legacy dynamic int8 exports (one scale per tensor over whatever
runs together, so the prompt run alone is another tensor) do not share by default.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engine
from engine.types import Item
from exports.onnx import PREFIX_MODEL
from exports.probes import probe_items

DECODERS = ["qwen3", "llama"]


def _groups(items: list[Item]) -> list[tuple[int, list[str]]]:
    """(first index, responses) of each probe conversation (4 responses each)."""
    return [(k, [items[j].response for j in range(k, k + 4)]) for k in range(0, len(items), 4)]


def _by_index(ranking) -> list[float]:
    return [c.score.value for c in sorted(ranking.candidates, key=lambda c: c.index)]


@pytest.fixture(scope="module")
def torch_scores(hf_models) -> dict[str, np.ndarray]:
    items, _ = probe_items()
    out = {}
    for arch in DECODERS:
        with engine.load(hf_models[arch]) as rm:
            out[arch] = np.array([s.value for s in rm.score(items)])
    return out


@pytest.mark.parametrize("arch", DECODERS)
def test_prompt_shared_equals_full_scoring_fp32(arch, onnx_models, torch_scores):
    items, _ = probe_items()
    shared_all, full_all, flags = [], [], []
    with engine.load(onnx_models[arch, "fp32"]) as rm:
        assert rm.info.extra["prompt_sharing"] is True
        for k, cands in _groups(items):
            full = rm.rank(items[k].conversation, cands, shared_prompt=False)
            shared = rm.rank(items[k].conversation, cands)
            assert not full.prompt_shared
            flags.append(shared.prompt_shared)
            shared_all += _by_index(shared)
            full_all += _by_index(full)
    shared_all, full_all = np.array(shared_all), np.array(full_all)
    assert np.abs(shared_all - full_all).max() <= 1e-3
    assert np.abs(shared_all - torch_scores[arch]).max() <= 1e-4
    # every group shares but the long-context one, which the tiny 512-token context cuts
    assert sum(flags) >= len(flags) - 1, flags


@pytest.mark.parametrize("arch", DECODERS)
def test_prompt_shared_int8_equals_full_int8_scoring(arch, onnx_models, torch_scores):
    items, pairs = probe_items()
    with engine.load(onnx_models[arch, "int8"]) as rm:
        assert rm.info.extra["prompt_sharing"] is True and rm.info.extra["prompt_sharing_by_default"] is True
        got, flags = [], []
        for k, cands in _groups(items):
            r = rm.rank(items[k].conversation, cands)  # shared by default: static scales
            flags.append(r.prompt_shared)
            got += _by_index(r)
        full = np.array([s.value for s in rm.score(items)])
    got, want = np.array(got), torch_scores[arch]
    agree = np.mean([np.sign(got[i] - got[j]) == np.sign(want[i] - want[j]) for i, j in pairs])
    assert agree >= 0.95  # the gate tests/test_parity.py holds full int8 scoring to
    assert np.abs(got - full).max() <= 1e-4  # the same int8 scores, prompt computed once
    assert np.abs(got - want).max() > 0  # and still a quantized graph
    assert sum(flags) >= len(flags) - 1, flags


def test_legacy_dynamic_int8_does_not_share_by_default(onnx_models, tmp_path):
    """An int8 export without ``activation_quant`` predates static int8: it is dynamic."""
    legacy = tmp_path / "legacy-int8"
    shutil.copytree(onnx_models["qwen3", "int8"], legacy)
    meta = json.loads((legacy / "arbiter.json").read_text())
    del meta["activation_quant"]
    (legacy / "arbiter.json").write_text(json.dumps(meta))
    with engine.load(legacy) as rm:
        assert rm.info.extra["prompt_sharing"] is True and rm.info.extra["prompt_sharing_by_default"] is False
        assert not rm.rank("Capital of France?", ["Paris.", "Lyon."]).prompt_shared
        assert rm.rank("Capital of France?", ["Paris.", "Lyon."], shared_prompt=True).prompt_shared


def test_compare_shares_the_prompt(onnx_models):
    with engine.load(onnx_models["qwen3", "fp32"]) as rm:
        c = rm.compare("What is 2+2?", "4", "Five.")
        full = rm.compare("What is 2+2?", "4", "Five.", shared_prompt=False)
    assert c.prompt_shared and not full.prompt_shared
    assert abs(c.margin - full.margin) <= 1e-3


def test_prompt_boundary_that_does_not_hold_falls_back_per_candidate(onnx_models):
    # "\n\n\n" merges with the template's "assistant\n" in BPE: the prompt's tokens do not
    # prefix that candidate's tokenization, so it alone is scored in full
    with engine.load(onnx_models["qwen3", "fp32"]) as rm:
        conv = [{"role": "user", "content": "Say something."}]
        cands = ["Hello there.", "\n\n\n", "Hi!"]
        item = Item.of(conv, "\n\n\n")
        prompt = rm.encoder.prompt_ids(item)
        assert list(rm.encode(item).ids[:len(prompt)]) != prompt
        shared = rm.rank(conv, cands)
        full = rm.rank(conv, cands, shared_prompt=False)
        assert shared.prompt_shared
        assert np.abs(np.array(_by_index(shared)) - _by_index(full)).max() <= 1e-4
        # only the merged one: the sharing path scores it, not the caller's fallback
        assert rm._score_shared_prompt(item.conversation, ["\n\n\n"]) is None


def test_cross_encoder_never_shares(onnx_models):
    folder = onnx_models["minilm", "fp32"]
    meta = json.loads((folder / "arbiter.json").read_text())
    assert meta["prefix_model"] is None and not (folder / PREFIX_MODEL).exists()
    with engine.load(folder) as rm:
        r = rm.rank("What is 2+2?", ["4", "5", "four"])
        assert not r.prompt_shared and rm.info.extra["prompt_sharing"] is False
        # asking for sharing where nothing can be shared scores in full and says so
        assert rm.rank("What is 2+2?", ["4", "5"], shared_prompt=True).prompt_shared is False


def test_folder_without_the_prefix_model_scores_in_full(onnx_models, tmp_path):
    copy = tmp_path / "no-prefix"
    shutil.copytree(onnx_models["llama", "fp32"], copy)
    (copy / PREFIX_MODEL).unlink()
    with engine.load(copy) as rm, engine.load(onnx_models["llama", "fp32"]) as ref:
        assert rm.info.extra["prompt_sharing"] is False
        r = rm.rank("Capital of France?", ["Paris.", "Lyon."])
        want = ref.rank("Capital of France?", ["Paris.", "Lyon."])
        assert not r.prompt_shared and want.prompt_shared
        assert np.abs(np.array(_by_index(r)) - _by_index(want)).max() <= 1e-3


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_arbiter_json_records_the_prefix_model(quant, onnx_models, hf_models):
    folder = onnx_models["qwen3", quant]
    meta = json.loads((folder / "arbiter.json").read_text())
    cfg = json.loads((hf_models["qwen3"] / "config.json").read_text())
    assert meta["prefix_model"] == PREFIX_MODEL and (folder / PREFIX_MODEL).is_file()
    p = meta["prefix"]
    assert p["num_layers"] == cfg["num_hidden_layers"]
    assert p["num_kv_heads"] == cfg["num_key_value_heads"] and p["head_dim"] == cfg["head_dim"]
    assert len(p["past_inputs"]) == 2 * cfg["num_hidden_layers"]
    assert p["kept_float"] == (["/lm_head/MatMul"] if quant == "int8" else [])
    with engine.load(folder) as rm:  # the classifier is still the model that loads; both are hashed
        assert rm.session.get_outputs()[0].shape[-1] == 1
        assert {f.path for f in rm.info.files} >= {"model.onnx", PREFIX_MODEL}


def test_export_without_prefix(hf_models, tmp_path):
    from exports.onnx import export_onnx

    out = export_onnx(hf_models["llama"], tmp_path / "plain", prefix=False)
    assert json.loads((out / "arbiter.json").read_text())["prefix_model"] is None
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]


def test_cli_bon_and_compare_say_the_prompt_was_shared(onnx_models, tmp_path, capsys):
    from app.cli.main import main

    folder = str(onnx_models["llama", "fp32"])
    cands = tmp_path / "c.txt"
    cands.write_text("Paris.\nLyon, I think.\nThe capital of France is Paris.\n")
    rc = main(["bon", "-m", folder, "--prompt", "Capital of France?", "--candidates", str(cands), "--json"])
    bon = json.loads(capsys.readouterr().out)
    assert rc == 0 and bon["prompt_shared"] is True and bon["format"] == "onnx"
    rc = main(["compare", "-m", folder, "--prompt", "Capital of France?", "--json",
               "Paris.", "Lyon."])
    cmp_ = json.loads(capsys.readouterr().out)
    assert rc == 0 and cmp_["prompt_shared"] is True
