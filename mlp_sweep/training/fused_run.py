"""Several runs in one process, those that can be stacked trained as one computation
(fused_fit.py), each still a whole run: its own folder with status.json, metrics.json and a
model.pt that loads as a single run's, its own trackers, its own callback, its own end.

Members stack when they share the data they see and the layers they have: the dataset, the
trainer (seed, batch size, epochs, precision, device), the augmentation, and the model's layer
sizes, norms and activation. Their optimizers (any class), schedules, learning rates, weight
decay, dropout and label smoothing are their own. A member that shares them with no other trains
alone, as `train_run` trains it, in turn.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError
from mlp_sweep.training.build import Training, build_training
from mlp_sweep.training.data import Splits, load_splits
from mlp_sweep.training.engine import EpochMetrics, best_epoch
from mlp_sweep.training.fused_fit import Member, fit_stacked
from mlp_sweep.training.loggers import Trackers
from mlp_sweep.training.precision import precision_name, training_dtype
from mlp_sweep.training.run import end_state, metrics_summary, on_device, set_up, train_run
from mlp_sweep.training.run_record import RunRecord
from mlp_sweep.training.stacked import StackedMLP, shape_of, unstackable_reason

log = logging.getLogger(__name__)

# A member's outcome: its objective, or what ended it (optuna.TrialPruned, an error).
Outcome = float | BaseException


@dataclass
class GroupMember:
    """One run of a group: its config, folder, epoch callback and tracker identity."""

    name: int  # the key of its outcome (a trial number)
    cfg: DictConfig
    run_dir: Path | None
    on_epoch: Callable[[EpochMetrics], None] | None = None
    tracker_identity: tuple[str | None, int | None] = (None, None)


@dataclass
class _Built:
    member: GroupMember
    record: RunRecord | None
    training: Training
    splits: Splits
    device: torch.device
    rng_state: torch.Tensor  # the global generator after building: what a single run trains from
    trackers: Trackers


def train_group(members: list[GroupMember]) -> dict[int, Outcome]:
    """Train every member; each one's objective (as `train_run` returns it) or what ended it."""
    outcomes: dict[int, Outcome] = {}
    stacks: dict[tuple, list[_Built]] = {}
    data: dict[str, Splits] = {}
    for member in members:
        try:
            built = _build(member, data)
        except Exception as error:
            outcomes[member.name] = _ended_before_training(member, error)
            continue
        reason = unstackable_reason(built.training.model)
        if reason:
            log.info(f"trial {member.name} trains alone: {reason}")
        stacks.setdefault(_stack_key(built) if not reason else ("alone", member.name),
                          []).append(built)
    for group in stacks.values():
        if len(group) == 1:
            outcomes[group[0].member.name] = _train_alone(group[0].member)
        else:
            outcomes.update(_train_stack(group))
    return outcomes


def _build(member: GroupMember, data: dict[str, Splits]) -> _Built:
    """The member's model, optimizer and the rest, built as `train_run` builds them (the same
    seed gives the same initial weights); its data loaded once per group."""
    cfg = member.cfg
    record = RunRecord(member.run_dir) if member.run_dir is not None else None
    if record:
        record.running()
    device = set_up(cfg)
    trackers = Trackers.from_config(cfg, member.run_dir, *member.tracker_identity)
    key = OmegaConf.to_yaml(cfg.dataset) + str(device)
    if key not in data:
        data[key] = on_device(load_splits(cfg.dataset), device)
    splits = data[key]
    training = build_training(cfg, len(splits.train), device)
    return _Built(member, record, training, splits, device, torch.get_rng_state(), trackers)


def _stack_key(built: _Built) -> tuple:
    """What members must share to train as one stack."""
    cfg, training = built.member.cfg, built.training
    return (OmegaConf.to_yaml(cfg.dataset), OmegaConf.to_yaml(cfg.trainer),
            OmegaConf.to_yaml(cfg.augment), str(built.device), shape_of(training.model))


def _ended_before_training(member: GroupMember, error: Exception) -> Exception:
    if member.run_dir is not None:
        RunRecord(member.run_dir).ended(end_state(error), error)
    if not isinstance(error, UserError):
        log.error(f"trial {member.name} failed: {type(error).__name__}: {error}")
    return error


def _train_alone(member: GroupMember) -> Outcome:
    try:
        return train_run(member.cfg, member.run_dir, on_epoch=member.on_epoch,
                         tracker_identity=member.tracker_identity)
    except Exception as error:  # pruned or failed: this member's outcome, not the group's
        return error


def _train_stack(group: list[_Built]) -> dict[int, Outcome]:
    first = group[0]
    cfg = first.member.cfg
    torch.set_rng_state(first.rng_state)  # every member's single run would train from this
    # auto times the stack, not one member: K course-sized layers side by side are a wide one,
    # where bf16 pays (precision.py)
    dtype = training_dtype(cfg.trainer.get("precision", "fp32"), first.device,
                           StackedMLP([b.training.model for b in group]),
                           cfg.trainer.batch_size, tuple(cfg.dataset.input_shape))
    names = [b.member.name for b in group]
    log.info(f"trials {', '.join(map(str, names))} train as one stack of {len(group)}: "
             f"{first.training.model}; {len(first.splits.train)} training samples; device "
             f"{first.device} with {torch.get_num_threads()} threads; training in "
             f"{precision_name(dtype)}")
    members = [_member(built, dtype, [n for n in names if n != built.member.name])
               for built in group]
    for built in group:
        built.trackers.start(built.member.cfg)
    try:
        fit_stacked(members, first.splits, cfg.trainer.epochs, cfg.trainer.batch_size,
                    torch.Generator().manual_seed(cfg.trainer.seed),
                    augment=first.training.augment,
                    patience=cfg.trainer.get("early_stopping") or 0, dtype=dtype)
    except BaseException as error:  # the stack itself failed (or was interrupted): every run did
        for built, member in zip(group, members):
            if not member.finished:
                member.ended = member.ended or error
            _ended(built, member)
        raise
    return {built.member.name: _ended(built, member) for built, member in zip(group, members)}


def _member(built: _Built, dtype: torch.dtype, trained_with: list[int]) -> Member:
    cfg, training = built.member.cfg, built.training
    ended_at: list[float] = []

    def after_epoch(history: list[EpochMetrics]) -> None:
        metrics = history[-1]
        ended_at.append(time.time())
        val = "" if metrics.val_accuracy is None else f"  val_acc {metrics.val_accuracy:.2%}"
        log.info(f"trial {built.member.name} epoch {metrics.epoch}/{cfg.trainer.epochs}  "
                 f"train_loss {metrics.train_loss:.4f}{val}  test_acc {metrics.test_accuracy:.2%}")
        if built.record:
            built.record.metrics(metrics_summary(
                cfg, training.model, built.device, dtype, history, ended_at,
                len(built.splits.train), trained_with=trained_with))
        built.trackers.log_epoch(metrics)
        if built.member.on_epoch:
            built.member.on_epoch(metrics)

    return Member(training.model, training.optimizer, training.schedule,
                  float(training.loss_fn.label_smoothing), after_epoch)


def _ended(built: _Built, member: Member) -> Outcome:
    """Record how the member ended in its folder and trackers; its outcome."""
    if member.ended is not None:
        state = end_state(member.ended)
        if built.record:
            built.record.ended(state, member.ended)
        built.trackers.finish(None, state)
        if not isinstance(member.ended, optuna.TrialPruned):
            log.error(f"trial {built.member.name} failed: {type(member.ended).__name__}: "
                      f"{member.ended}")
        return member.ended
    if built.record:
        built.record.completed(built.training.model)
    objective = float(getattr(best_epoch(member.history), built.member.cfg.objective))
    built.trackers.finish(objective, "completed")
    return objective
