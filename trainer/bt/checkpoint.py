"""Exact resume: weights in the training dtype, optimizer moments, RNG, position.

No pickles, here either: tensors go to safetensors files and everything else to
JSON. The data position needs no state: epoch order is a pure function of (seed,
epoch), so step ``s`` alone says where the run was.

Layout of ``DIR/state``::

    model.safetensors       weights as trained (fp64 stays fp64)
    optimizer.safetensors   AdamW moments, "<param index>.<name>"
    optimizer.json          param groups (lr, betas, ...) and which state entries exist
    rng-<rank>.safetensors  torch CPU (and CUDA) generator state of each process
    trainer.json            step, best gold accuracy and step, run id
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from engine.errors import ModelError

#: beside each file while a checkpoint is written; renamed over it once all of them are complete
_NEXT = ".next"
#: present while the renames run: a resume finishes them (a kill -9 mid-save loses nothing)
_COMMIT = "COMMITTING"
#: safetensors (Rust ``tempfile``) writes ``.tmpXXXXXX`` beside its target and renames it; a kill
#: mid-write leaves one behind, with no pid in its name to tell a live writer from a dead one
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")


def drop_interrupted_writes(*folders: Path) -> list[Path]:
    """Delete what killed safetensors writes left in ``folders``; returns what was deleted.

    Call it at the start of a run, before any process of it writes there: only then is every
    such file a dead writer's (two runs on one output folder are not supported anyway).
    """
    dropped = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if _SAFETENSORS_TEMP.match(f.name) and f.is_file():
                f.unlink(missing_ok=True)
                dropped.append(f)
    return dropped


def _commit(state_dir: Path) -> None:
    """Move every ``*.next`` file over its name: all of the new checkpoint, or none of it."""
    for f in state_dir.glob(f"*{_NEXT}"):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    marker = state_dir / _COMMIT
    marker.write_text("")  # from here on a resume rolls forward
    for f in sorted(state_dir.glob(f"*{_NEXT}")):
        os.replace(f, f.with_name(f.name.removesuffix(_NEXT)))
    marker.unlink()


def _recover(state_dir: Path) -> None:
    """Finish a commit that a kill interrupted, or drop the files of one that never began."""
    if (state_dir / _COMMIT).exists():
        _commit(state_dir)
    else:
        for f in state_dir.glob(f"*{_NEXT}"):
            f.unlink()


def save_state(state_dir: Path, model: Any, optimizer: torch.optim.Optimizer, trainer: dict[str, Any],
               *, rank: int, is_main: bool) -> None:
    """Write a checkpoint atomically: a kill at any moment leaves the previous one or this one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    rng_file = state_dir / f"rng-{rank}.safetensors"
    if not is_main:  # the main process's commit does not wait for other ranks: theirs lands now
        tmp = f"{rng_file}.tmp-{os.getpid()}"  # not *.next: the main process's commit is not ours
        save_file(rng, tmp)
        os.replace(tmp, rng_file)
        return
    _recover(state_dir)  # leftovers of a killed save are not part of this one
    save_file(rng, str(rng_file) + _NEXT)
    save_model(model, str(state_dir / f"model.safetensors{_NEXT}"))  # handles tied weights
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, list[str]] = {}
    for idx, entry in sd["state"].items():
        layout[str(idx)] = []
        for name, value in entry.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().reshape(-1).contiguous().cpu()
            layout[str(idx)].append(name)
    save_file(tensors, str(state_dir / f"optimizer.safetensors{_NEXT}"))
    (state_dir / f"optimizer.json{_NEXT}").write_text(
        json.dumps({"param_groups": sd["param_groups"], "state": layout}))
    (state_dir / f"trainer.json{_NEXT}").write_text(json.dumps(trainer, indent=2))
    _commit(state_dir)


def load_state(state_dir: Path, model: Any, optimizer: torch.optim.Optimizer, *, rank: int) -> dict[str, Any]:
    """Restore everything :func:`save_state` wrote; returns the trainer dict."""
    if state_dir.is_dir():
        _recover(state_dir)
    if not (state_dir / "trainer.json").is_file():
        raise ModelError(f"{state_dir}: no resumable checkpoint (trainer.json missing)")
    missing, unexpected = load_model(model, str(state_dir / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ModelError(f"{state_dir}: checkpoint does not fit the base (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); resume with the same --base")
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    meta = json.loads((state_dir / "optimizer.json").read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    current = optimizer.state_dict()["param_groups"]
    for idx, names in meta["state"].items():
        state[int(idx)] = {}
        for name in names:
            t = tensors[f"{idx}.{name}"]
            shape = () if name == "step" else None
            state[int(idx)][name] = t.reshape(shape) if shape is not None else t
    # moments must have their parameter's shape
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for idx, entry in state.items():
        for name, t in entry.items():
            if name != "step":
                entry[name] = t.reshape(params[idx].shape).to(params[idx].dtype)
    groups = meta["param_groups"]
    for g, cur in zip(groups, current, strict=True):
        g["params"] = cur["params"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng_file = state_dir / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((state_dir / "trainer.json").read_text())
