"""A Hydra app that knows nothing of mlp_sweep but its sweeper: the stock Optuna sweeper's
sphere example, with the cases the stock sweeper's own tests try (errors, several objectives, a
custom search space) and a curve to prune.

    python sphere.py --multirun hydra/sweeper=mlp_optuna hydra.sweeper.storage=sqlite:///s.db
"""

import math
import time

import hydra
import optuna
from omegaconf import DictConfig

from mlp_sweep.sweeping.trial_link import report


@hydra.main(config_path="conf", config_name="sphere")
def sphere(cfg: DictConfig):
    if cfg.error:
        raise RuntimeError("cfg.error is True")
    value = cfg.x ** 2 + cfg.y ** 2
    for step in range(cfg.steps):  # a value that improves per step, for the pruner to watch
        time.sleep(cfg.step_seconds)
        report(value + 1 / (step + 1), step)
    if cfg.nan_above is not None and cfg.x > cfg.nan_above:
        return math.nan
    if cfg.objectives == 2:
        return value, (cfg.x - 2) ** 2 + cfg.y ** 2
    return value


def z_near_x(cfg: DictConfig, trial: optuna.Trial) -> None:
    """A custom search space: z within `max_z_difference_from_x` of the suggested x."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    sphere()
