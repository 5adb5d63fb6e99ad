"""Train one MLP from the Hydra config and return the objective (test accuracy by default).

    python -m mlp_sweep.train optimizer=sgd activation=leaky_relu trainer.epochs=2
    python -m mlp_sweep.train --multirun optimizer=adam,sgd,rmsprop activation=relu,sigmoid
    python -m mlp_sweep.train --multirun hparams_search=optuna
"""

import logging
import sys
import time
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError, error_line
from mlp_sweep.sweeping.trial_link import TrialLink
from mlp_sweep.training import run_dirs
from mlp_sweep.training.engine import EpochMetrics, run_ends_after
from mlp_sweep.training.run import train_run

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def train(cfg: DictConfig, run_dir: Path | None = None) -> float:
    """Train the model `cfg` describes and return `cfg.objective` at the epoch whose weights
    it keeps (the best validation accuracy; the last epoch without a validation split).

    `run_dir` receives status.json, metrics.json and model.pt; with Hydra it defaults to the
    run's output folder, without Hydra nothing is written. In an mlp_optuna sweep every epoch's
    objective goes to the job's Optuna trial, which may prune it, except the epoch the run ends
    on (its last, or the one early stopping stops after).
    """
    if run_dir is None:
        run_dir = _hydra_output_dir()
    trial = TrialLink.of_this_job()  # set when an mlp_optuna sweep runs this job
    patience = cfg.trainer.get("early_stopping") or 0
    history: list[EpochMetrics] = []
    first_epoch_began: list[float] = []  # when epoch 1 started: the pace leaves out the start-up

    def report(metrics: EpochMetrics) -> None:
        history.append(metrics)
        if not trial:
            return
        if not first_epoch_began:
            first_epoch_began.append(time.monotonic() - metrics.epoch_time_s)
        seconds_per_epoch = (time.monotonic() - first_epoch_began[0]) / metrics.epoch
        trial.report(getattr(metrics, cfg.objective), metrics.epoch,
                     last=run_ends_after(history, cfg.trainer.epochs, patience),
                     seconds_to_finish=seconds_per_epoch * (cfg.trainer.epochs - metrics.epoch))

    return train_run(cfg, run_dir, on_epoch=report,
                     tracker_identity=trial.identity if trial else (None, None))


def _hydra_output_dir() -> Path | None:
    """The folder Hydra made for this job; None without one: outside Hydra, or in a config
    composed from Python (`compose(..., return_hydra_config=True)`), where it is left unset."""
    if not HydraConfig.initialized():
        return None
    output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    return Path(output_dir) if output_dir else None


run_dirs.register()


@hydra.main(config_path="pkg://mlp_sweep.conf", config_name="train")
def main(cfg: DictConfig) -> float | optuna.TrialPruned:
    try:
        return train(cfg)
    except optuna.TrialPruned as pruned:
        return pruned  # an outcome for the sweeper to record, not an error to print
    except UserError as error:
        log.error(error_line(error))
        # A single run or a grid stops here with that one line (the basic sweeper would only
        # re-raise it with a traceback); a sweeper that records failed trials gets the exception.
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.RUN or hydra_cfg.sweeper._target_ == BASIC_SWEEPER:
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
