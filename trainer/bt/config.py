"""The training recipe: one dataclass, read from a YAML or JSON file, overridable per key.

Defaults suit a small cross-encoder on a CPU. The Skywork-Reward-V2 recipe maps to:

* final runs: ``schedule: constant``, ``lr: 3e-6``, ``global_batch: 10240``;
* development runs: ``schedule: linear`` (warmup then linear decay), ``lr: 4e-6``
  (1e-6 for 8B), ``global_batch: 256``, ``epochs: 1``;
* both: ``max_length: 16384``, bf16 on GPU, plain BT loss (no margin, no centering).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from engine.errors import InputError


@dataclass
class TrainConfig:
    # data
    max_length: int = 512  # tokens per (conversation, response); the conversation is cut from its start
    length_balance: bool = False  # each epoch: equal shares of chosen-longer and chosen-shorter pairs
    length_grouped: bool = True  # batch pairs of similar length together (less padding, CPU time)
    packing: bool = False  # padding-free: sequences end to end in rows of max_length (trainer/bt/packing.py)
    token_types: Literal["zeros", "segment"] = "zeros"  # cross-encoders: zeros agree with GGUF/ONNX
    margin_field: str | None = None  # attributes[margin_field] is a per-pair target margin
    # optimisation
    lr: float = 2e-5  # peak learning rate
    schedule: Literal["constant", "linear"] = "constant"  # linear: warmup then decay to 0
    warmup_steps: int = 0  # optimizer steps of linear warmup (both schedules)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    center: float = 0.0  # reward-centering coefficient
    # the length head (trainer/bt/length_head.py, ODIN): a second output trained to carry
    # length, dropped on save. length_head weighs |corr(quality, length)| - corr(length head,
    # length); length_ortho weighs |cos| of the two head rows. 0 = off (one output)
    length_head: float = 0.0
    length_ortho: float = 1.0
    # weight of |cov(reward, standardized log response length)| over each micro-batch
    # (trainer/bt/length_penalty.py): a length-decorrelation term in reward units; works with
    # or without the length head
    length_penalty: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    # optimizer steps after which the run stops, the LR schedule keeping its full length: a budget
    # cut that a rerun reproduces exactly (max_steps would shorten the schedule instead)
    stop_after: int | None = None
    per_device_batch: int = 16  # pairs per forward pass per process (2x sequences)
    global_batch: int = 32  # pairs per optimizer step, all processes; accumulation fills the gap
    # evaluation and checkpoints
    eval_every: int = 50  # optimizer steps between gold evaluations (and resumable checkpoints)
    log_every: int = 10  # optimizer steps between log rows
    eval_batch: int = 32  # pairs per forward pass when evaluating
    # the gold metric that picks the best checkpoint: "accuracy" (the paper's), or
    # "length_balanced" (mean of chosen-longer and chosen-shorter accuracy; "longer wins" = 0.5)
    select_on: Literal["accuracy", "length_balanced"] = "accuracy"
    # runtime
    # LoRA (trainer/bt/lora.py): rank 0 trains every weight; > 0 freezes the body and trains
    # rank-r updates of the lora_targets projections plus the score head (a decoder then ships
    # as an adapter over its base GGUF: exports/lora_gguf.py)
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    gradient_checkpointing: bool = False
    dropout: float | None = None  # override every dropout probability of the base (0 for exact tests)
    threads: int | None = None  # torch CPU threads per process
    seed: int = 0
    progress: bool = True  # a progress bar on the console

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(why, field=name)

        if self.max_length < 8:
            raise bad("max_length", "must be at least 8 tokens")
        if self.per_device_batch < 1 or self.global_batch < 1:
            raise bad("global_batch", "batch sizes must be positive")
        if self.global_batch % self.per_device_batch:
            raise bad("global_batch", f"must be a multiple of per_device_batch ({self.per_device_batch})")
        if self.schedule not in ("constant", "linear"):
            raise bad("schedule", "must be 'constant' or 'linear'")
        if self.precision not in ("auto", "fp32", "bf16", "fp64"):
            raise bad("precision", "must be auto, fp32, bf16 or fp64")
        if self.token_types not in ("zeros", "segment"):
            raise bad("token_types", "must be 'zeros' or 'segment'")
        if self.select_on not in ("accuracy", "length_balanced"):
            raise bad("select_on", "must be 'accuracy' or 'length_balanced'")
        if self.length_head < 0 or self.length_ortho < 0 or self.length_penalty < 0:
            raise bad("length_head", "length_head, length_ortho and length_penalty are weights: 0 or more")
        if self.stop_after is not None and self.stop_after < 1:
            raise bad("stop_after", "must be a positive number of optimizer steps, or unset")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise bad("lora_rank", "lora_rank is 0 (off) or a positive rank, and lora_alpha is positive")
        if isinstance(self.lora_targets, str) or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise bad("lora_targets", "must be a list of module names, e.g. [q_proj, v_proj]")
        self.lora_targets = tuple(self.lora_targets)
        if self.lr <= 0 or self.eval_every < 1 or self.log_every < 1:
            raise bad("lr", "lr, eval_every and log_every must be positive")

    @property
    def select_metric(self) -> str:
        """The key of the gold metrics dict that ``select_on`` names."""
        return "accuracy" if self.select_on == "accuracy" else "accuracy_length_balanced"

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per process per optimizer step."""
        per_step = self.per_device_batch * world_size
        if self.global_batch % per_step:
            raise InputError(f"global_batch {self.global_batch} is not a multiple of per_device_batch x "
                             f"processes = {per_step}", field="global_batch")
        return self.global_batch // per_step

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        decay_steps = max(1, total_steps - self.warmup_steps)
        return self.lr * max(0.0, 1.0 - (step - self.warmup_steps) / decay_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any], source: str | None = None) -> TrainConfig:
        known = {f.name for f in fields(TrainConfig)}
        for k in d:
            if k not in known:
                raise InputError(f"unknown setting; known: {', '.join(sorted(known))}", source=source, field=k)
        try:
            return TrainConfig(**d)
        except InputError as e:
            raise InputError(e.reason, source=source, field=e.field) from None

    @staticmethod
    def from_file(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """A YAML (``.yaml``/``.yml``) or JSON file; ``overrides`` win."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read ({e.strerror})", source=str(path)) from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise InputError("expected a mapping of settings", source=str(path))
        return TrainConfig.from_dict({**data, **(overrides or {})}, source=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it parses."""
    if "=" not in text:
        raise InputError(f"expected key=value, got {text!r}", field="--set")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
