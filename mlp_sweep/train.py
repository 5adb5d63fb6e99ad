"""Train one MLP from the Hydra config and return the objective (test accuracy by default).

    python -m mlp_sweep.train optimizer=sgd activation=leaky_relu trainer.epochs=2
    python -m mlp_sweep.train --multirun optimizer=adam,sgd,rmsprop activation=relu,sigmoid
    python -m mlp_sweep.train --multirun hparams_search=optuna
"""

import logging
import sys
from pathlib import Path

import hydra
import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mlp_sweep.errors import UserError
from mlp_sweep.sweeping.trial_link import TrialLink, trial_identity
from mlp_sweep.training import run_dirs
from mlp_sweep.training.build import build_training
from mlp_sweep.training.config import validate
from mlp_sweep.training.data import Split, Splits, load_splits
from mlp_sweep.training.devices import cpu_threads, resolve_device
from mlp_sweep.training.engine import EpochMetrics, best_epoch, fit
from mlp_sweep.training.loggers import Trackers
from mlp_sweep.training.model import parameter_count
from mlp_sweep.training.run_record import RunRecord

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def train(cfg: DictConfig, run_dir: Path | None = None) -> float:
    """Train the model `cfg` describes and return `cfg.objective` at the epoch whose weights
    it keeps (the best validation accuracy; the last epoch without a validation split).

    `run_dir` receives status.json, metrics.json and model.pt; with Hydra it defaults to the
    run's output folder, without Hydra nothing is written.
    """
    if run_dir is None and HydraConfig.initialized():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = RunRecord(run_dir) if run_dir is not None else None
    if record:
        record.running()
    try:
        return _train(cfg, record)
    except BaseException as error:
        if record:
            record.ended(_end_state(error), error)
        # A UserError gets its one line in main(); a pruned run is no failure.
        if not isinstance(error, (optuna.TrialPruned, UserError)):
            log.error(f"Run failed: {type(error).__name__}: {error} (traceback in status.json)")
        raise


def _train(cfg: DictConfig, record: RunRecord | None) -> float:
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    threads = cpu_threads(cfg.trainer.threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.trainer.seed)
    trial = TrialLink.from_environment()  # set when an Optuna sweep runs this job
    # Before the data is read: a tracker whose extra is missing stops the run here, unwritten.
    trackers = Trackers.from_config(cfg, record and record.run_dir, *trial_identity(trial))

    splits = _on_device(load_splits(cfg.dataset), device)
    model, optimizer, loss_fn, augment, schedule = build_training(cfg, len(splits.train), device)
    log.info(f"Model: {model}")
    log.info(f"{parameter_count(model):,} parameters; optimizer {optimizer.__class__.__name__}; "
             f"schedule {type(schedule.scheduler).__name__ if schedule else 'none'}; "
             f"augment {type(augment).__name__ if augment else 'none'}; "
             f"{len(splits.train)} training samples; device {device} "
             f"with {torch.get_num_threads()} threads <trainer.device={cfg.trainer.device}>")

    def after_epoch(history: list[EpochMetrics]) -> None:
        metrics = history[-1]
        val = "" if metrics.val_accuracy is None else f"  val_acc {metrics.val_accuracy:.2%}"
        log.info(f"epoch {metrics.epoch}/{cfg.trainer.epochs}  train_loss {metrics.train_loss:.4f}"
                 f"  train_acc {metrics.train_accuracy:.2%}{val}  test_acc {metrics.test_accuracy:.2%}"
                 f"  {metrics.epoch_time_s:.2f} s")
        if record:
            record.metrics(_metrics_summary(cfg, model, device, history, len(splits.train)))
        trackers.log_epoch(metrics)
        if trial:
            trial.report(getattr(metrics, cfg.objective), metrics.epoch,
                         last=metrics.epoch == cfg.trainer.epochs)

    trackers.start(cfg)
    try:
        history = fit(model, optimizer, splits, cfg.trainer.epochs, cfg.trainer.batch_size,
                      torch.Generator().manual_seed(cfg.trainer.seed), on_epoch=after_epoch,
                      progress=cfg.trainer.progress, loss_fn=loss_fn, augment=augment,
                      schedule=schedule, patience=cfg.trainer.get("early_stopping") or 0)
        if record:
            record.completed(model)
    except BaseException as error:
        trackers.finish(None, _end_state(error))
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


def _end_state(error: BaseException) -> str:
    return "pruned" if isinstance(error, optuna.TrialPruned) else "failed"


def _on_device(splits: Splits, device: torch.device) -> Splits:
    def move(split: Split | None) -> Split | None:
        return split and Split(split.inputs.to(device), split.labels.to(device))

    return Splits(move(splits.train), move(splits.val), move(splits.test))


def _metrics_summary(cfg: DictConfig, model, device: torch.device,
                     history: list[EpochMetrics], train_size: int) -> dict:
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
        "epochs": [vars(m) for m in history],
    }


run_dirs.register()


@hydra.main(config_path="pkg://mlp_sweep.conf", config_name="train")
def main(cfg: DictConfig) -> float | optuna.TrialPruned:
    try:
        return train(cfg)
    except optuna.TrialPruned as pruned:
        return pruned  # an outcome for the sweeper to record, not an error to print
    except UserError as error:
        log.error(f"Error: {error}")
        # A single run or a grid stops here with that one line (the basic sweeper would only
        # re-raise it with a traceback); a sweeper that records failed trials gets the exception.
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.RUN or hydra_cfg.sweeper._target_ == BASIC_SWEEPER:
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
