"""A Hydra app that knows nothing of mlp_sweep but its sweeper: the stock Optuna sweeper's
sphere example, with the cases the stock sweeper's own tests try (errors, several objectives, a
custom search space), a curve to prune, a result file of its own, and a step counter kept for a
retry, which goes on after the last step its earlier attempt finished.

    python sphere.py --multirun hydra/sweeper=mlp_optuna hydra.sweeper.storage=sqlite:///s.db
"""

import math
import time
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mlp_sweep.sweeping.trial_link import earlier_attempts, keep_for_retry, report

STEPS_FILE = "steps_done.txt"  # how many steps this trial has finished, for its retry


@hydra.main(config_path="conf", config_name="sphere")
def sphere(cfg: DictConfig):
    if cfg.error:
        raise RuntimeError("cfg.error is True")
    value = cfg.x ** 2 + cfg.y ** 2
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for step in range(steps_done_before(), cfg.steps):  # a value that improves per step
        time.sleep(cfg.step_seconds)
        report(value + 1 / (step + 1), step)
        (run_dir / STEPS_FILE).write_text(f"{step + 1}\n")
        keep_for_retry(run_dir / STEPS_FILE)
    (run_dir / "result.txt").write_text(f"{value}\n")
    if cfg.nan_above is not None and cfg.x > cfg.nan_above:
        return math.nan
    if cfg.objectives == 2:
        return value, (cfg.x - 2) ** 2 + cfg.y ** 2
    return value


def steps_done_before() -> int:
    """The steps an earlier attempt of this trial finished (a retry: it was killed); else 0."""
    for attempt in earlier_attempts():
        with attempt.files() as folder:
            if folder is not None and (folder / STEPS_FILE).is_file():
                return int((folder / STEPS_FILE).read_text())
    return 0


def z_near_x(cfg: DictConfig, trial: optuna.Trial) -> None:
    """A custom search space: z within `max_z_difference_from_x` of the suggested x."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    sphere()
