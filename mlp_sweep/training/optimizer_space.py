"""Optimizer-specific parameters, searched only when their optimizer is the trial's choice: this
app's knowledge of its optimizers, kept beside them, not in the sweeper any app can use.

Named in the optuna_course preset as `hydra.sweeper.custom_search_space`; the sweeper calls it after the
`params:` space is suggested, so `trial.params["optimizer"]` is already known. Suggesting momentum
for an Adam trial would feed TPE a parameter that does nothing.
"""

import optuna
from omegaconf import DictConfig


def optimizer_specific(cfg: DictConfig, trial: optuna.Trial) -> None:
    optimizer = trial.params.get("optimizer")
    if optimizer == "sgd":
        trial.suggest_float("optimizer.momentum", 0.5, 0.99)
        trial.suggest_categorical("optimizer.nesterov", [False, True])
    elif optimizer in ("adam", "adamw"):
        trial.suggest_float("optimizer.betas.0", 0.8, 0.95)
        trial.suggest_float("optimizer.betas.1", 0.99, 0.9999, log=True)
    elif optimizer == "rmsprop":
        trial.suggest_float("optimizer.alpha", 0.9, 0.999)
