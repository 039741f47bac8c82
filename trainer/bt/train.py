"""The Bradley-Terry training loop (accelerate: one CPU, one GPU, many GPUs, many nodes).

Runbook::

    # one CPU or GPU
    arbiter train --base MODEL --train train.jsonl --gold gold.jsonl --out runs/rm
    # two CPU processes (gloo), the same result as one with the same global batch. accelerate
    # 1.15's --cpu launcher starts one process unless MPI is set up; torchrun's does the job:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m app.cli.main train ...
    # 8 GPUs, DeepSpeed ZeRO-1 (as Skywork-V2 trained), or FSDP
    accelerate launch --config_file trainer/configs/deepspeed_zero1.yaml -m app.cli.main train ...
    accelerate launch --config_file trainer/configs/fsdp.yaml -m app.cli.main train ...

Every ``eval_every`` optimizer steps the gold (human-labelled) set is scored; the best
model by gold accuracy (the paper's checkpoint selection; ``select_on: length_balanced``
picks on the mean of chosen-longer and chosen-shorter accuracy instead) is kept in ``OUT/best`` and
a resumable checkpoint in ``OUT/last``. ``resume=True`` continues from ``OUT/last``
and reaches the same weights an uninterrupted run reaches.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.store import Store
from trainer.bt import length_head
from trainer.bt.batches import (
    EncodedPairs,
    collate,
    encode_pairs,
    epoch_order,
    eval_batches,
    micro_batches,
)
from trainer.bt.checkpoint import drop_interrupted_writes, load_state, save_state
from trainer.bt.config import TrainConfig
from trainer.bt.length_penalty import covariance_penalty
from trainer.bt.loss import bt_loss
from trainer.bt.metrics import pair_metrics
from trainer.bt.model import Base, heads, load_base, resolve_precision, save_reward_model
from trainer.bt.packing import PackedBatch, pack, packed_rewards
from trainer.bt.runlog import RunLog
from trainer.data.record import PreferencePair

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    out: Path
    steps: int
    best_step: int | None
    best_gold: dict[str, Any] | None
    last_gold: dict[str, Any] | None
    step_losses: list[float] = field(default_factory=list)  # mean BT loss of each optimizer step, this session
    data: dict[str, Any] = field(default_factory=dict)


def _rewards(model: Any, batch: Any, device: Any, *, n_outputs: int = 1) -> torch.Tensor:
    """[2 * pairs] rewards (output 0, the one saved), or [2 * pairs, n_outputs] with every output."""
    if isinstance(batch, PackedBatch):
        return packed_rewards(model, batch, device, n_outputs=n_outputs)
    logits = model(**batch.model_inputs(device)).logits
    return logits[:, 0] if n_outputs == 1 else logits[:, :n_outputs]


def evaluate(model: Any, data: EncodedPairs, pad_id: int, cfg: TrainConfig, accelerator: Any) -> dict[str, Any]:
    """Gold metrics over all processes (each scores its share; the main process sums up)."""
    from accelerate.utils import gather_object

    was_training = model.training
    model.eval()
    rows: list[tuple[float, float, bool | None, float, float]] = []  # r_c, r_r, chosen longer, chars c, chars r
    with torch.no_grad():
        for idx in eval_batches(data, cfg.eval_batch, accelerator.process_index, accelerator.num_processes):
            b = collate(idx, data, pad_id)
            r = _rewards(model, b, accelerator.device).float().cpu()
            n = b.pairs
            rows += zip(r[:n].tolist(), r[n:].tolist(), b.chosen_longer, b.response_chars[:n].tolist(),
                        b.response_chars[n:].tolist(), strict=True)
    model.train(was_training)
    rows = [x for part in gather_object([rows]) for x in part]
    losses = bt_loss(torch.tensor([x[0] for x in rows]), torch.tensor([x[1] for x in rows])).tolist()
    return pair_metrics([x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows], losses,
                        response_chars=([x[3] for x in rows], [x[4] for x in rows]))


def train(base: str | Path, train_pairs: Iterable[PreferencePair], gold_pairs: Iterable[PreferencePair],
          out: str | Path, cfg: TrainConfig | None = None, *, resume: bool = False,
          store: Store | None = None, accelerator: Any = None, notes: dict[str, Any] | None = None) -> TrainResult:
    """Train a one-label reward model from ``base``; see the module docstring."""
    from tqdm.auto import tqdm

    run = _setup(base, train_pairs, gold_pairs, Path(out), cfg or TrainConfig(), resume=resume, store=store,
                 accelerator=accelerator, notes=notes)
    state = run.trainer_state
    result = TrainResult(state["run_id"], run.out, run.total, state["best_step"], state["best_gold"], None,
                         data=run.data_info)
    bar = tqdm(total=run.total, initial=state["step"], disable=not (run.main and run.cfg.progress),
               desc="train", unit="step", dynamic_ncols=True)
    window = _Window()
    order: list[list[int]] = []
    order_epoch = -1
    for step in range(state["step"], run.total):
        if run.cfg.stop_after and step >= run.cfg.stop_after:
            break  # the budget cut (gold is scored at the cut): the best checkpoint so far stands
        epoch, k = divmod(step, run.steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(run.data, run.cfg, epoch), epoch
        rows, lr = _optimizer_step(run, order[k], step, window)
        result.step_losses.append(sum(x[2] for x in rows) / len(rows))
        window.rows += rows
        bar.update(1)
        _log_and_evaluate(run, result, window, step + 1, lr, bar)
    bar.close()
    _finish(run)
    return result


@dataclass
class _Run:
    """What one training run sets up once (``_setup``) and every step then uses."""

    cfg: TrainConfig
    accelerator: Any
    base: Base
    model: Any  # prepared by accelerate (may be a DDP / DeepSpeed / FSDP wrapper)
    optimizer: Any
    data: EncodedPairs
    gold: EncodedPairs
    out: Path
    total: int  # optimizer steps of the whole run
    steps_per_epoch: int
    trainer_state: dict[str, Any]  # step, best_step, best_gold, run_id: what a resume restores
    runlog: RunLog | None  # the main process's only
    data_info: dict[str, Any]

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int:
        return self.base.encoder.pad_token_id


@dataclass
class _Window:
    """What the next train log line averages: per-pair rows, tokens, and when it began (monotonic s)."""

    rows: list[tuple[float, float, float, bool | None]] = field(default_factory=list)  # r_c, r_r, loss, longer
    tokens: int = 0
    t0: float = field(default_factory=time.monotonic)

    def restart(self) -> None:
        self.rows, self.tokens, self.t0 = [], 0, time.monotonic()


def _make_accelerator(cfg: TrainConfig, precision: str) -> Any:
    """An Accelerator for this process, its gradient accumulation set from the global batch."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState alone ignores ACCELERATE_USE_CPU (only AcceleratorState reads it): without
    # cpu=True a torchrun-launched CPU process would see no process group and run alone
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no",
                       gradient_accumulation_steps=cfg.accumulation(state.num_processes))


def _encode(b: Base, train_pairs: Iterable[PreferencePair], gold_pairs: Iterable[PreferencePair],
            cfg: TrainConfig) -> tuple[EncodedPairs, EncodedPairs]:
    """The training and gold pairs as token ids; too few training pairs is the user's error."""
    data = encode_pairs(train_pairs, b.encoder, margin_field=cfg.margin_field)
    gold = encode_pairs(gold_pairs, b.encoder)
    if len(data) < cfg.global_batch:
        from engine.errors import InputError

        raise InputError(f"{len(data)} usable training pairs, fewer than one global batch ({cfg.global_batch})")
    return data, gold


def _setup(base: str | Path, train_pairs: Iterable[PreferencePair], gold_pairs: Iterable[PreferencePair],
           out: Path, cfg: TrainConfig, *, resume: bool, store: Store | None, accelerator: Any,
           notes: dict[str, Any] | None) -> _Run:
    """Load the base, encode the data, build (or restore) the optimizer, and open the run log."""
    from accelerate.utils import gather_object

    precision = resolve_precision(cfg.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if accelerator is None:
        accelerator = _make_accelerator(cfg, precision)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    torch.manual_seed(cfg.seed)  # the same fresh head on every process
    out.mkdir(parents=True, exist_ok=True)
    if main:  # a killed run's half-written safetensors; no process of this run writes yet
        drop_interrupted_writes(out / "best", out / "last", out / "last" / "state")
    b: Base = load_base(base, cfg, work_dir=out)
    data, gold = _encode(b, train_pairs, gold_pairs, cfg)
    steps_per_epoch = len(epoch_order(data, cfg, 0))
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    model = b.model
    if cfg.lora_rank:  # the body frozen, low-rank updates and the head trained (trainer/bt/lora.py)
        from trainer.bt.lora import apply_lora

        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if cfg.gradient_checkpointing:  # frozen embeddings: checkpointed blocks need an input that asks for grads
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainer_state: dict[str, Any] = {"step": 0, "best_step": None, "best_gold": None, "run_id": None}
    if resume:
        trainer_state = load_state(out / "last" / "state", model, optimizer, rank=rank)
    model, optimizer = accelerator.prepare(model, optimizer)
    runlog = RunLog(store or Store.default(), trainer_state["run_id"]) if main else None
    trainer_state["run_id"] = runlog.run_id if runlog else None
    trainer_state["run_id"] = gather_object([trainer_state["run_id"]])[0]
    data_info = {"train_pairs": len(data), "gold_pairs": len(gold), "train_skipped": data.skipped,
                 "gold_skipped": gold.skipped, "steps_per_epoch": steps_per_epoch, "world_size": world,
                 "accumulation": cfg.accumulation(world), "max_length": b.encoder.max_length,
                 "train_chosen_longer_share": _longer_share(data.chosen_longer), **(notes or {})}
    if runlog:
        runlog.start(base=str(base), out=str(out), config=cfg.to_dict(), world_size=world,
                     train_pairs=len(data), gold_pairs=len(gold), steps=total)
    return _Run(cfg, accelerator, b, model, optimizer, data, gold, out, total, steps_per_epoch, trainer_state,
                runlog, data_info)


def _loss(run: _Run, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to minimize, chosen rewards, rejected rewards, per-pair BT loss) of one micro-batch."""
    cfg = run.cfg
    outputs = _rewards(run.model, batch, run.accelerator.device, n_outputs=heads(cfg))
    # with the length head, Bradley-Terry fits quality + length; only quality is saved
    r = outputs.sum(dim=1) if outputs.dim() == 2 else outputs
    rc, rr = r[: batch.pairs], r[batch.pairs:]
    per_pair = bt_loss(rc, rr, margin=batch.margin.to(r) if cfg.margin_field else None, center=cfg.center)
    # equal micro-batches: mean here, / accumulation in backward, mean over processes in DDP
    loss = per_pair.mean()
    if cfg.length_head:
        loss = loss + cfg.length_head * length_head.disentangle_loss(
            outputs[:, length_head.QUALITY], outputs[:, length_head.LENGTH], batch.response_chars)
        if cfg.length_ortho:
            loss = loss + cfg.length_ortho * length_head.orthogonality_loss(run.model)
    if cfg.length_penalty:
        quality = outputs[:, length_head.QUALITY] if outputs.dim() == 2 else outputs
        loss = loss + cfg.length_penalty * covariance_penalty(quality, batch.response_chars)
    return loss, rc, rr, per_pair


def _optimizer_step(run: _Run, pair_ids: list[int], step: int,
                    window: _Window) -> tuple[list[tuple[float, float, float, bool | None]], float]:
    """One optimizer step over one global batch: (every process's per-pair rows, the learning rate)."""
    from accelerate.utils import gather_object

    cfg, accelerator = run.cfg, run.accelerator
    step_rows: list[tuple[float, float, float, bool | None]] = []
    for idx in micro_batches(pair_ids, run.data, cfg.per_device_batch, accelerator.process_index,
                             accelerator.num_processes):
        batch = (pack(idx, run.data, run.pad_id, cfg.max_length, causal=run.base.kind == "chat") if cfg.packing
                 else collate(idx, run.data, run.pad_id))
        with accelerator.accumulate(run.model):
            loss, rc, rr, per_pair = _loss(run, batch)
            accelerator.backward(loss)
        window.tokens += batch.n_tokens
        step_rows += list(zip(rc.detach().float().tolist(), rr.detach().float().tolist(),
                              per_pair.detach().float().tolist(), batch.chosen_longer, strict=True))
    lr = cfg.lr_at(step, run.total)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    if cfg.max_grad_norm:
        accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return [x for part in gather_object([step_rows]) for x in part], lr


def _log_and_evaluate(run: _Run, result: TrainResult, window: _Window, done: int, lr: float, bar: Any) -> None:
    """After optimizer step ``done``: the train log line every ``log_every``, gold every ``eval_every``."""
    from accelerate.utils import gather_object

    cfg = run.cfg
    if done % cfg.log_every == 0 or done == run.total:
        tokens_all = sum(gather_object([window.tokens]))
        dt = max(time.monotonic() - window.t0, 1e-9)  # seconds
        rows = window.rows
        m = pair_metrics([x[0] for x in rows], [x[1] for x in rows], [x[3] for x in rows], [x[2] for x in rows])
        m.update(lr=lr, pairs_per_s=len(rows) / dt, tokens_per_s=tokens_all / dt)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.3f}", lr=f"{lr:.2e}")
        if run.runlog:
            run.runlog.log(done, "train", m)
        window.restart()
    if done % cfg.eval_every == 0 or done in (run.total, cfg.stop_after):
        result.last_gold = _eval_and_save(run.model, run.base, run.gold, cfg, run.accelerator, run.optimizer,
                                          run.out, done, run.trainer_state, run.runlog, run.data_info,
                                          run.pad_id)
        result.best_step, result.best_gold = run.trainer_state["best_step"], run.trainer_state["best_gold"]
        window.t0 = time.monotonic()  # evaluation time is not training throughput


def _finish(run: _Run) -> None:
    """Mark the run done in the log and wait for every process."""
    state = run.trainer_state
    if run.runlog:
        run.runlog.update(status="done", finished=time.time(), best_step=state["best_step"],
                          best_gold_accuracy=(state["best_gold"] or {}).get("accuracy"))
    run.accelerator.wait_for_everyone()


def _longer_share(flags: list[bool | None]) -> float | None:
    decided = [f for f in flags if f is not None]
    return sum(decided) / len(decided) if decided else None


def _eval_and_save(model: Any, b: Base, gold: EncodedPairs, cfg: TrainConfig, accelerator: Any,
                   optimizer: Any, out: Path, step: int, trainer_state: dict[str, Any],
                   runlog: RunLog | None, data_info: dict[str, Any], pad_id: int) -> dict[str, Any] | None:
    """Score gold, keep the best model by the gold metric ``cfg.select_on`` names, write the resumable checkpoint."""
    main = accelerator.is_main_process
    metrics = evaluate(model, gold, pad_id, cfg, accelerator) if len(gold) else None
    full_sd = accelerator.get_state_dict(model)  # a collective under ZeRO-3/FSDP: every process calls it
    unwrapped = accelerator.unwrap_model(model)
    best = trainer_state["best_gold"]
    key = cfg.select_metric
    improved = metrics is not None and (best is None or metrics[key] > best.get(key, best["accuracy"]))
    if metrics is None and best is None:
        improved = True  # no gold set: the last model is the one kept
    if improved:
        trainer_state["best_step"], trainer_state["best_gold"] = step, metrics
    trainer_state["step"] = step
    summary = {"run_id": trainer_state["run_id"], "best_step": trainer_state["best_step"],
               "best_gold": trainer_state["best_gold"], "config": cfg.to_dict(), "data": data_info}
    if main:
        if metrics is not None and runlog:
            runlog.log(step, "gold", metrics)
            runlog.update(best_step=trainer_state["best_step"],
                          best_gold_accuracy=trainer_state["best_gold"]["accuracy"])
        if improved:
            save_reward_model(unwrapped, b, out / "best", state_dict=full_sd)
            (out / "best" / "training.json").write_text(json.dumps({**summary, "step": step}, indent=2))
        save_reward_model(unwrapped, b, out / "last", state_dict=full_sd)
    accelerator.wait_for_everyone()
    save_state(out / "last" / "state", unwrapped, optimizer.optimizer if hasattr(optimizer, "optimizer")
               else optimizer, trainer_state, rank=accelerator.process_index, is_main=main)
    accelerator.wait_for_everyone()
    return metrics
