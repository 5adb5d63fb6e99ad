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
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_sweep.errors import UserError, error_line
from mlp_sweep.job import train_trial, train_trials
from mlp_sweep.sweeping.trial_spec import TrialSpec
from mlp_sweep.training import run_dirs
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
    run_dir = run_dir if run_dir is not None else _hydra_output_dir()
    spec = TrialSpec.of_this_job()  # set when an mlp_optuna sweep runs this job
    return train_run(cfg, run_dir) if spec is None else train_trial(cfg, spec, run_dir)


def _hydra_output_dir() -> Path | None:
    """The folder Hydra made for this job; None without one: outside Hydra, or in a config
    composed from Python (`compose(..., return_hydra_config=True)`), where it is left unset."""
    if not HydraConfig.initialized():
        return None
    output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    return Path(output_dir) if output_dir else None


run_dirs.register()


@hydra.main(config_path="pkg://mlp_sweep.conf", config_name="train")
def main(cfg: DictConfig) -> float | optuna.TrialPruned | dict[int, object]:
    try:
        spec = TrialSpec.of_this_job()
        if spec is not None and spec.fused:  # hydra.sweeper.fuse: the job's trials, trained together
            return train_trials(cfg, spec, _hydra_output_dir())
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
