"""One training run from a composed config: data, model, the loop, the run's files and trackers.

`train_run(cfg, run_dir, on_epoch=...)` is the whole run as an ordinary function. The Hydra
command (`mlp_sweep.train`) wires an Optuna trial to `on_epoch`; a benchmark or another tuner
(Ray Tune, SMAC) passes its own, so every caller trains with the same code.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mlp_sweep.errors import UserError
from mlp_sweep.training.build import build_training
from mlp_sweep.training.checkpoint import (CheckpointCopy, Checkpoints, check_same_model,
                                           checkpoint_of)
from mlp_sweep.training.config import validate
from mlp_sweep.training.data import Split, Splits, load_splits
from mlp_sweep.training.devices import cpu_threads, resolve_device
from mlp_sweep.training.engine import EpochMetrics, best_epoch, fit
from mlp_sweep.training.loggers import Trackers
from mlp_sweep.training.model import parameter_count
from mlp_sweep.training.precision import precision_name, training_dtype
from mlp_sweep.training.run_record import RunRecord

log = logging.getLogger(__name__)

# Gets each epoch's metrics; may raise (optuna.TrialPruned, say) to stop the run there.
EpochCallback = Callable[[EpochMetrics], None]


def train_run(cfg: DictConfig, run_dir: Path | None = None,
              on_epoch: EpochCallback | None = None,
              tracker_identity: tuple[str | None, int | None] = (None, None),
              resume: tuple[str, dict] | None = None,
              checkpoint_copy: CheckpointCopy | None = None) -> float:
    """Train the model `cfg` describes and return `cfg.objective` at the epoch whose weights
    it keeps (the best validation accuracy; the last epoch without a validation split).

    `run_dir`, when given, receives status.json, metrics.json (after every epoch, each epoch
    with the time it ended), model.pt, and checkpoint.pt while it runs (trainer.checkpoint).
    `tracker_identity` is the (study, trial number) that experiment trackers file the run under.
    `resume`, (folder, its checkpoint), continues an earlier run as `trainer.resume` does.
    `checkpoint_copy` is told of each checkpoint, and of their removal when the run ends.
    """
    record = RunRecord(run_dir) if run_dir is not None else None
    checkpoints = Checkpoints(run_dir, checkpoint_copy) \
        if record and cfg.trainer.get("checkpoint", True) else None
    if record:
        record.running()
    try:
        objective = _train(cfg, record, on_epoch, tracker_identity, resume, checkpoints)
    except BaseException as error:
        if record:
            record.ended(end_state(error), error)
        if checkpoints and isinstance(error, Exception):  # an interrupted run keeps them
            checkpoints.remove()
        # A UserError gets its one line from the command; a pruned run is no failure.
        if not isinstance(error, (optuna.TrialPruned, UserError)):
            log.error(f"Run failed: {type(error).__name__}: {error} (traceback in status.json)")
        raise
    if checkpoints:
        checkpoints.remove()
    return objective


def _train(cfg: DictConfig, record: RunRecord | None, on_epoch: EpochCallback | None,
           tracker_identity: tuple[str | None, int | None],
           resume: tuple[str, dict] | None, checkpoints: Checkpoints | None) -> float:
    device = set_up(cfg)
    # Before the data is read: a tracker whose extra is missing stops the run here, unwritten.
    trackers = Trackers.from_config(cfg, record and record.run_dir, *tracker_identity)

    if resume is None and cfg.trainer.get("resume"):  # before the data is read
        resume = (cfg.trainer.resume, checkpoint_of(cfg.trainer.resume))
    splits = on_device(load_splits(cfg.dataset), device)
    model, optimizer, loss_fn, augment, schedule = build_training(cfg, len(splits.train), device)
    state = resume[1] if resume else None
    if resume is not None:
        check_same_model(state, model, resume[0])
        dtype = getattr(torch, state["dtype"])  # the precision it trained in, not a new probe
        log.info(f"resumed: going on from {resume[0]} after its epoch {state['epoch']}")
    else:
        dtype = training_dtype(cfg.trainer.get("precision", "fp32"), device, model,
                               cfg.trainer.batch_size, tuple(cfg.dataset.input_shape))
    # In a sweep the console shows the search, not each trial's model: that goes to its log file.
    (_log_to_files_only if in_sweep() else log.info)(f"Model: {model}")
    log.info(f"{parameter_count(model):,} parameters; optimizer {optimizer.__class__.__name__}; "
             f"schedule {type(schedule.scheduler).__name__ if schedule else 'none'}; "
             f"augment {type(augment).__name__ if augment else 'none'}; "
             f"{len(splits.train)} training samples; device {device} "
             f"with {torch.get_num_threads()} threads <trainer.device={cfg.trainer.device}>; "
             f"training in {precision_name(dtype)}")
    ended_at: list[float] = []  # each epoch's end, as Unix time: when a search knew its result

    def after_epoch(history: list[EpochMetrics]) -> None:
        metrics = history[-1]
        ended_at.append(time.time())
        val = "" if metrics.val_accuracy is None else f"  val_acc {metrics.val_accuracy:.2%}"
        log.info(f"epoch {metrics.epoch}/{cfg.trainer.epochs}  train_loss {metrics.train_loss:.4f}"
                 f"  train_acc {metrics.train_accuracy:.2%}{val}  test_acc {metrics.test_accuracy:.2%}"
                 f"  {metrics.epoch_time_s:.2f} s")
        if record:
            record.metrics(metrics_summary(cfg, model, device, dtype, history, ended_at,
                                            len(splits.train)))
        trackers.log_epoch(metrics)
        if on_epoch:
            on_epoch(metrics)

    trackers.start(cfg)
    try:
        history = fit(model, optimizer, splits, cfg.trainer.epochs, cfg.trainer.batch_size,
                      torch.Generator().manual_seed(cfg.trainer.seed), on_epoch=after_epoch,
                      progress=show_bars(cfg.trainer.get("progress", "auto")), loss_fn=loss_fn,
                      augment=augment, schedule=schedule,
                      patience=cfg.trainer.get("early_stopping") or 0, dtype=dtype,
                      checkpoints=checkpoints, resume=state)
        if record:
            record.completed(model)
    except BaseException as error:
        trackers.finish(None, end_state(error))
        raise
    kept = best_epoch(history)
    objective = float(getattr(kept, cfg.objective))
    trackers.finish(objective, "completed")
    if len(history) < cfg.trainer.epochs:
        log.info(f"early stop after epoch {len(history)}: no better validation accuracy for "
                 f"{cfg.trainer.early_stopping} epochs <trainer.early_stopping>")
    if kept is not history[-1]:
        log.info(f"kept the weights of epoch {kept.epoch}, the best validation accuracy "
                 f"({kept.val_accuracy:.2%})")
    log.info(f"test accuracy: {kept.test_accuracy:.2%}")
    return objective


def set_up(cfg: DictConfig) -> torch.device:
    """What every run does before it builds anything: the config checked, its device, torch's
    threads, and the seed its initialisation and random streams start from. The device."""
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    threads = cpu_threads(cfg.trainer.threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.trainer.seed)
    return device


def in_sweep() -> bool:
    """True in a job of a Hydra multirun (a grid or a search), False in a single run or outside
    Hydra."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_to_files_only(message: str) -> None:
    """An INFO record for the log files of the root logger (Hydra's job log), not the console."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def show_bars(progress: bool | str) -> bool:
    """`trainer.progress`: true, false, or auto (bars in a single run; a sweep shows its own)."""
    return not in_sweep() if progress == "auto" else bool(progress)


def end_state(error: BaseException) -> str:
    """How a run that raised `error` ended: pruned or failed."""
    return "pruned" if isinstance(error, optuna.TrialPruned) else "failed"


def on_device(splits: Splits, device: torch.device) -> Splits:
    def move(split: Split | None) -> Split | None:
        return split and Split(split.inputs.to(device), split.labels.to(device))

    return Splits(move(splits.train), move(splits.val), move(splits.test))


def metrics_summary(cfg: DictConfig, model, device: torch.device, dtype: torch.dtype,
                    history: list[EpochMetrics], ended_at: list[float], train_size: int,
                    trained_with: list[int] | None = None) -> dict:
    """metrics.json: the kept epoch's metrics, how the run trained, and every epoch.
    `trained_with`: the runs trained in the same stack (fused_run.py), whose epochs took the
    same seconds."""
    kept = best_epoch(history)  # model.pt holds this epoch's weights
    return {
        "objective": cfg.objective,
        "test_accuracy": kept.test_accuracy,
        "val_accuracy": kept.val_accuracy,
        "train_loss": kept.train_loss,
        "best_epoch": kept.epoch,
        "epochs_done": len(history),
        "train_size": train_size,
        "train_time_s": sum(m.epoch_time_s for m in history),
        "parameter_count": parameter_count(model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": precision_name(dtype),
        **({"trained_with": trained_with} if trained_with else {}),
        "epochs": [{**vars(m), "ended_at": t} for m, t in zip(history, ended_at)],
    }
